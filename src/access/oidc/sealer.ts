/**
 * Seals small JSON values for cookies: encrypted and authenticated in one step (JWE compact,
 * `dir` + A256GCM, RFC 7516), so a cookie can be neither read nor altered by the browser.
 *
 * Key rotation: every configured key opens, the first seals. Each key is stretched with
 * HKDF-SHA256 to the 256-bit content key; the JWE header names it by a fingerprint (`kid`)
 * that reveals nothing of the key, so opening tries the one key that fits. A new key put
 * first signs nobody out: cookies sealed with the old one still open until it is removed.
 *
 * Every sealed value carries its purpose (`p`): a sign-in transaction can never be presented
 * as a session, nor a session reference as a transaction.
 */
import { createHash, hkdfSync } from 'node:crypto';
import { compactDecrypt, CompactEncrypt } from 'jose';

interface SealKey {
  readonly kid: string;
  readonly key: Uint8Array;
}

const INFO = 'smart-proxy cookie sealing v1';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class Sealer {
  readonly #keys: readonly SealKey[];
  readonly #byKid: ReadonlyMap<string, SealKey>;

  constructor(secrets: readonly string[]) {
    if (secrets.length === 0) throw new Error('at least one session key is needed');
    this.#keys = secrets.map((s) => {
      const key = new Uint8Array(hkdfSync('sha256', s, '', INFO, 32));
      const kid = createHash('sha256').update(key).digest('base64url').slice(0, 12);
      return { kid, key };
    });
    this.#byKid = new Map(this.#keys.map((k) => [k.kid, k]));
  }

  /** Seals `value` (a JSON object) for `purpose`. */
  async seal(purpose: string, value: Record<string, unknown>): Promise<string> {
    const k = this.#keys[0] as SealKey;
    return new CompactEncrypt(encoder.encode(JSON.stringify({ ...value, p: purpose })))
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid: k.kid })
      .encrypt(k.key);
  }

  /** Opens a sealed value of `purpose`; undefined for anything tampered, foreign, or of another purpose. */
  async open(purpose: string, sealed: string): Promise<Record<string, unknown> | undefined> {
    if (sealed.length > 16_384 || sealed.split('.').length !== 5) return undefined;
    let kid: unknown;
    try {
      kid = (JSON.parse(Buffer.from(sealed.slice(0, sealed.indexOf('.')), 'base64url').toString('utf8')) as { kid?: unknown }).kid;
    } catch {
      return undefined;
    }
    const k = typeof kid === 'string' ? this.#byKid.get(kid) : undefined;
    if (k === undefined) return undefined;
    try {
      const { plaintext } = await compactDecrypt(sealed, k.key, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] });
      const value = JSON.parse(decoder.decode(plaintext)) as unknown;
      if (value === null || typeof value !== 'object' || (value as { p?: unknown }).p !== purpose) return undefined;
      return value as Record<string, unknown>;
    } catch {
      return undefined;
    }
  }
}

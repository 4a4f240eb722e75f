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
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';

interface SealKey {
  readonly kid: string;
  readonly key: Buffer;
}

const INFO = 'smart-proxy cookie sealing v1';

/**
 * JWE compact with `dir` + A256GCM written with node:crypto directly (RFC 7516 §7.1: header .
 * empty key . IV . ciphertext . tag; the protected header is the AAD): synchronous and a few
 * microseconds, where WebCrypto's per-call key import cost most of a millisecond on every
 * request. jose opens these (a test checks the interoperability).
 */
export class Sealer {
  readonly #keys: readonly SealKey[];
  readonly #byKid: ReadonlyMap<string, SealKey>;
  /** Protected header per kid, already encoded (it is also the AAD). */
  readonly #headers: ReadonlyMap<string, string>;

  constructor(secrets: readonly string[]) {
    if (secrets.length === 0) throw new Error('at least one session key is needed');
    this.#keys = secrets.map((s) => {
      const key = Buffer.from(hkdfSync('sha256', s, '', INFO, 32));
      const kid = createHash('sha256').update(key).digest('base64url').slice(0, 12);
      return { kid, key };
    });
    this.#byKid = new Map(this.#keys.map((k) => [k.kid, k]));
    this.#headers = new Map(this.#keys.map((k) => [k.kid, Buffer.from(JSON.stringify({ alg: 'dir', enc: 'A256GCM', kid: k.kid })).toString('base64url')]));
  }

  /** Seals `value` (a JSON object) for `purpose`. */
  seal(purpose: string, value: Record<string, unknown>): Promise<string> {
    const k = this.#keys[0] as SealKey;
    const header = this.#headers.get(k.kid) as string;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', k.key, iv);
    cipher.setAAD(Buffer.from(header, 'ascii'));
    const ct = Buffer.concat([cipher.update(JSON.stringify({ ...value, p: purpose }), 'utf8'), cipher.final()]);
    return Promise.resolve(`${header}..${iv.toString('base64url')}.${ct.toString('base64url')}.${cipher.getAuthTag().toString('base64url')}`);
  }

  /** Opens a sealed value of `purpose`; undefined for anything tampered, foreign, or of another purpose. */
  open(purpose: string, sealed: string): Promise<Record<string, unknown> | undefined> {
    return Promise.resolve(this.#open(purpose, sealed));
  }

  #open(purpose: string, sealed: string): Record<string, unknown> | undefined {
    if (sealed.length > 16_384) return undefined;
    const parts = sealed.split('.');
    if (parts.length !== 5 || parts[1] !== '') return undefined;
    const [header, , ivB64, ctB64, tagB64] = parts as [string, string, string, string, string];
    let k: SealKey | undefined;
    try {
      const h = JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as { alg?: unknown; enc?: unknown; kid?: unknown };
      if (h.alg !== 'dir' || h.enc !== 'A256GCM' || typeof h.kid !== 'string') return undefined;
      k = this.#byKid.get(h.kid);
    } catch {
      return undefined;
    }
    if (k === undefined) return undefined;
    const iv = Buffer.from(ivB64, 'base64url');
    const tag = Buffer.from(tagB64, 'base64url');
    if (iv.length !== 12 || tag.length !== 16) return undefined;
    try {
      const decipher = createDecipheriv('aes-256-gcm', k.key, iv, { authTagLength: 16 });
      decipher.setAAD(Buffer.from(header, 'ascii'));
      decipher.setAuthTag(tag);
      const plain = Buffer.concat([decipher.update(Buffer.from(ctB64, 'base64url')), decipher.final()]).toString('utf8');
      const value = JSON.parse(plain) as unknown;
      if (value === null || typeof value !== 'object' || (value as { p?: unknown }).p !== purpose) return undefined;
      return value as Record<string, unknown>;
    } catch {
      return undefined;
    }
  }
}

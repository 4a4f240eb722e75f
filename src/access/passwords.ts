/**
 * Hashes for the secrets the config holds: passwords (HTTP Basic) and static API tokens.
 * The config never holds a secret in clear.
 *
 * - `sha256:<64 hex>`: for API tokens only. Tokens are generated at random with 256 bits of
 *   entropy (`smart-proxy hash-password --token`), so a fast hash is safe and lets every
 *   request be checked in microseconds.
 * - `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>` (PHC string format, base64 without
 *   padding): for passwords, which people choose and which must be slow to guess. scrypt is
 *   in node:crypto, so no native dependency is needed.
 *
 * Every comparison is constant-time (crypto.timingSafeEqual) over equal-length digests.
 */
import { createHash, hash, randomBytes, scrypt as scryptCb, timingSafeEqual, type BinaryToTextEncoding, type ScryptOptions } from 'node:crypto';
import type { ParsedScrypt, ScryptParams } from '../config/secret-format.ts';

// The formats are checked by the config schema too, so they live on the config's side.
export { hashFormatProblem, parseScrypt, type ParsedScrypt, type ScryptParams } from '../config/secret-format.ts';

/** 2^15 × 8 × 128 B = 32 MiB per hash: slow enough to guess, cheap enough for a login. */
export const DEFAULT_SCRYPT: ScryptParams = { ln: 15, r: 8, p: 1 };
const KEY_BYTES = 32;
const SALT_BYTES = 16;

function scryptOptions(p: ScryptParams): ScryptOptions {
  const n = 2 ** p.ln;
  // Node refuses above maxmem (32 MiB by default); allow exactly what the params need.
  return { N: n, r: p.r, p: p.p, maxmem: 128 * n * p.r * p.p + 1024 * 1024 };
}

function scrypt(secret: string, salt: Buffer, keyLen: number, p: ScryptParams): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCb(secret.normalize('NFC'), salt, keyLen, scryptOptions(p), (err, key) => (err ? reject(err) : resolve(key)));
  });
}

const b64 = (b: Buffer): string => b.toString('base64').replace(/=+$/, '');

/** Hashes a password into a `$scrypt$…` string. */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const hash = await scrypt(password, salt, KEY_BYTES, params);
  return `$scrypt$ln=${params.ln},r=${params.r},p=${params.p}$${b64(salt)}$${b64(hash)}`;
}

/** Checks a password against a parsed `$scrypt$…` hash, in constant time. */
export async function verifyScrypt(secret: string, stored: ParsedScrypt): Promise<boolean> {
  const got = await scrypt(secret, stored.salt, stored.hash.length, stored.params);
  return got.length === stored.hash.length && timingSafeEqual(got, stored.hash);
}

/** The SHA-256 digest of a token, as stored in the config after `sha256:`. */
export function sha256Digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/**
 * SHA-256 of a token as a 16-code-unit string (the 32 digest bytes read as UTF-16LE): what the
 * token verifier compares on every request. One-shot `crypto.hash` into a string costs about
 * a third of `createHash()…digest()` (and a Buffer output is no cheaper than the Hash object);
 * 16 code units instead of base64url's 43 characters: the constant-time comparison
 * (`keysEqual`, one `charCodeAt` pair per unit) runs 16 rounds instead of 43, and no base64
 * encoding is done. The string is a key for comparison only: never printed, never stored.
 */
export function sha256Key(token: string): string {
  return hash('sha256', token, UTF16_DIGEST);
}

/**
 * `crypto.hash` encodes its digest with any Buffer encoding; @types/node lists only the
 * binary-to-text ones. test/access/verifiers.test.ts checks the 16-unit form.
 */
export const UTF16_DIGEST = 'utf16le' as BinaryToTextEncoding;

/** The sha256Key text of a `sha256:<hex>` config hash. */
export function sha256KeyOfHex(hex: string): string {
  return Buffer.from(hex, 'hex').toString('utf16le');
}

/**
 * Constant-time equality of two keys of equal length (sha256Key): the time taken does not
 * depend on where they differ. Different lengths are unequal at once (lengths are public).
 */
export function keysEqual(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** The config form of a token's hash. */
export function hashToken(token: string): string {
  return `sha256:${sha256Digest(token).toString('hex')}`;
}

/** A new random API token: 32 bytes, base64url, with a recognisable prefix. */
export function generateToken(): string {
  return `spt_${randomBytes(32).toString('base64url')}`;
}

/** Constant-time equality of two digests of the same length. */
export function digestsEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

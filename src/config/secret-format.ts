/**
 * The formats of the secret hashes the configuration holds (see src/access/passwords.ts for
 * hashing and checking). Here, on the config's side, so that the schema checks them without
 * importing the access layer (which imports the schema's types).
 */

export interface ScryptParams {
  /** log2 of the CPU/memory cost N. */
  readonly ln: number;
  readonly r: number;
  readonly p: number;
}

/** Bounds on params read from a config, so a typo cannot make each login allocate gigabytes. */
const MAX_LN = 20;
const MAX_R = 32;
const MAX_P = 16;

export interface ParsedScrypt {
  readonly params: ScryptParams;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

const SCRYPT_RE = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,})\$([A-Za-z0-9+/]{32,})$/;
const SHA256_RE = /^sha256:[0-9a-f]{64}$/;

/** Parses a `$scrypt$…` string; returns the reason it is unusable as a string otherwise. */
export function parseScrypt(text: string): ParsedScrypt | string {
  const m = SCRYPT_RE.exec(text);
  if (m === null) return 'expected "$scrypt$ln=N,r=R,p=P$<salt>$<hash>" (use `smart-proxy hash-password`)';
  const params = { ln: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (params.ln < 1 || params.ln > MAX_LN || params.r < 1 || params.r > MAX_R || params.p < 1 || params.p > MAX_P) {
    return `scrypt parameters out of range (ln 1-${MAX_LN}, r 1-${MAX_R}, p 1-${MAX_P})`;
  }
  return { params, salt: Buffer.from(m[4] as string, 'base64'), hash: Buffer.from(m[5] as string, 'base64') };
}

/** True when `text` is a hash this module can check (config validation uses it). */
export function hashFormatProblem(text: string, allowSha256: boolean): string | undefined {
  if (SHA256_RE.test(text)) return allowSha256 ? undefined : 'sha256 hashes are for random API tokens; passwords need "$scrypt$…"';
  const parsed = parseScrypt(text);
  return typeof parsed === 'string' ? parsed : undefined;
}

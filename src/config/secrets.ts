/**
 * Credentials for providers, from the environment or a file (the environment is
 * read in src/config/ only). An environment variable is checked at start-up, so a
 * missing token stops the proxy with a clear message; a file is re-read on each use, so a
 * rotated secret (a mounted Kubernetes secret, say) is picked up without a restart.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { MIN_JWT_SECRET_CHARS, type IdentityConfig } from './access-schema.ts';
import { ConfigError } from './load.ts';

export type SecretSpec = { readonly env: string } | { readonly file: string };

export function secretReaders(specs: Readonly<Record<string, SecretSpec>>, where: string): Record<string, () => Promise<string>> {
  const out: Record<string, () => Promise<string>> = {};
  for (const [name, spec] of Object.entries(specs)) {
    if ('env' in spec) {
      const value = process.env[spec.env];
      if (value === undefined || value === '') {
        throw new ConfigError(where, [`credentials.${name}: environment variable ${spec.env} is not set`]);
      }
      out[name] = () => Promise.resolve(value);
    } else {
      out[name] = async () => (await readFile(spec.file, 'utf8')).replace(/\r?\n$/, '');
    }
  }
  return out;
}

/** The proxy's environment, which a `process` provider's children start from. */
export function inheritedEnv(): Readonly<Record<string, string | undefined>> {
  return { ...process.env };
}

/** A secret value from the config (inline, `{ env }` or `{ file }`), read once at start-up. */
export function resolveSecretValue(value: string | { readonly env: string } | { readonly file: string }, where: string): string {
  if (typeof value === 'string') return value;
  if ('env' in value) {
    const v = process.env[value.env];
    if (v === undefined || v === '') throw new ConfigError(where, [`environment variable ${value.env} is not set`]);
    return v;
  }
  try {
    return readFileSync(value.file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new ConfigError(where, [`cannot read ${value.file}: ${err instanceof Error ? err.message : String(err)}`]);
  }
}

/**
 * The identities with each JWT verifier's `secret` read when it is `{ env }` or `{ file }`
 * (an unset variable or an unreadable file is a ConfigError naming `identities[i].secret`),
 * and held to the length an inline one is. The verifiers get the text only.
 */
export function resolveIdentitySecrets(identities: readonly IdentityConfig[]): IdentityConfig[] {
  return identities.map((identity, i) => {
    if (identity.kind !== 'jwt' || identity.secret === undefined || typeof identity.secret === 'string') return identity;
    const where = `identities[${i}].secret`;
    const secret = resolveSecretValue(identity.secret, where);
    if (secret.length < MIN_JWT_SECRET_CHARS) {
      const from = 'env' in identity.secret ? `environment variable ${identity.secret.env}` : identity.secret.file;
      throw new ConfigError(where, [`the secret from ${from} is too short: ${secret.length} characters, at least ${MIN_JWT_SECRET_CHARS}`]);
    }
    return { ...identity, secret };
  });
}

/** Every `{ env: NAME }` secret reference in `config` whose variable is unset or empty, with its path. */
export function unsetEnvReferences(config: unknown): Array<{ path: string; name: string }> {
  return envReferences(config, '').filter(({ name }) => process.env[name] === undefined || process.env[name] === '');
}

function envReferences(value: unknown, path: string): Array<{ path: string; name: string }> {
  if (Array.isArray(value)) return value.flatMap((v, i) => envReferences(v, `${path}[${i}]`));
  if (typeof value !== 'object' || value === null) return [];
  const entries = Object.entries(value);
  if (entries.length === 1 && entries[0]![0] === 'env' && typeof entries[0]![1] === 'string') return [{ path, name: entries[0]![1] }];
  return entries.flatMap(([k, v]) => envReferences(v, path === '' ? k : `${path}.${k}`));
}

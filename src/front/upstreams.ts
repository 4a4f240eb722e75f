/**
 * Backends whose address is known from the config (static endpoints, process resources on
 * a fixed port) get a named upstream block in the generated nginx config, with keep-alive
 * connections; nginx cannot keep connections to an address that only a variable names. The
 * decision server hands out the block's name for those, and the plain address otherwise.
 */
import { createHash } from 'node:crypto';
import type { ProviderConfig } from '../config/schema.ts';

export interface UpstreamBlock {
  readonly name: string;
  /** `host:port` as nginx's `server` takes it. */
  readonly server: string;
  readonly scheme: 'http' | 'https';
}

export interface ForwardTarget {
  /** `http://name` or `http://host:port`. */
  readonly upstream: string;
  /** `host:port` of the backend (HAProxy routes by address). */
  readonly address: string;
  readonly basePath: string;
}

/** The origin (`scheme://host:port`) a provider's config fixes, if any. */
export function fixedOrigin(p: ProviderConfig): string | undefined {
  switch (p.kind) {
    case 'static':
      return new URL(p.endpoint).origin;
    case 'process':
      if (p.port === 0) return undefined;
      return `http://${p.host.includes(':') ? `[${p.host}]` : p.host}:${p.port}`;
    default:
      return undefined;
  }
}

/**
 * An upstream block's name from its origin's SHA-256 (hex): `sp_` and 10 hex digits, longer
 * when that name is `taken` by another origin already; added to `taken`.
 */
export function upstreamName(hex: string, taken: Set<string>): string {
  let name = `sp_${hex.slice(0, 10)}`;
  for (let len = 16; taken.has(name) && len <= 64; len += 16) name = `sp_${hex.slice(0, len)}`;
  if (taken.has(name)) name = `sp_${hex}_${taken.size}`;
  taken.add(name);
  return name;
}

export class UpstreamNames {
  readonly blocks: readonly UpstreamBlock[];
  readonly #byOrigin = new Map<string, UpstreamBlock>();
  readonly #cache = new Map<string, ForwardTarget | undefined>();

  constructor(providers: Iterable<ProviderConfig>) {
    const names = new Set<string>();
    for (const p of providers) {
      const origin = fixedOrigin(p);
      if (origin === undefined || this.#byOrigin.has(origin)) continue;
      const url = new URL(origin);
      const scheme = url.protocol === 'https:' ? 'https' : 'http';
      const port = url.port === '' ? (scheme === 'https' ? '443' : '80') : url.port;
      // Short: nginx compares a variable upstream's name with each block's of the same length,
      // byte by byte, on every request. Two origins whose 40 bits of hash meet (unlikely, but a
      // shared name would send one's requests to the other) take a longer one.
      const name = upstreamName(createHash('sha256').update(origin).digest('hex'), names);
      this.#byOrigin.set(origin, { name, server: `${url.hostname}:${port}`, scheme });
    }
    this.blocks = [...this.#byOrigin.values()];
  }

  /** How a front proxy reaches `endpoint`; undefined when it is not an http(s) URL. */
  target(endpoint: string): ForwardTarget | undefined {
    if (this.#cache.has(endpoint)) return this.#cache.get(endpoint);
    let out: ForwardTarget | undefined;
    try {
      const url = new URL(endpoint);
      if (url.protocol === 'http:' || url.protocol === 'https:') {
        const block = this.#byOrigin.get(url.origin);
        const basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
        const port = url.port === '' ? (url.protocol === 'https:' ? '443' : '80') : url.port;
        out = {
          upstream: block === undefined ? url.origin : `${block.scheme}://${block.name}`,
          address: `${url.hostname}:${port}`,
          basePath,
        };
      }
    } catch {
      out = undefined;
    }
    // Endpoints are few (one per instance start); the cache is bounded anyway.
    if (this.#cache.size > 10_000) this.#cache.clear();
    this.#cache.set(endpoint, out);
    return out;
  }
}

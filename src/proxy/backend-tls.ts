/**
 * TLS towards backends whose endpoint is `https:` (a cloud VM serving TLS, a service behind
 * its own certificate). Per resource: a CA bundle to trust instead of the system's (a private
 * or self-signed CA), the name to check the certificate against and send as SNI (a backend
 * reached by IP address whose certificate names a host), or, explicitly, no verification at
 * all. The same settings serve the readiness probe (probe.ts), the forward pool
 * (forward-http.ts) and the WebSocket dial (forward-ws.ts), so a backend is never probed
 * one way and used another.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { checkServerIdentity, type ConnectionOptions } from 'node:tls';

/** What the TLS client checks; `key` tells pools with different settings apart. */
export interface BackendTls {
  /** PEM CA bundle; undefined: Node's default (system and bundled) roots. */
  readonly ca: string | undefined;
  /** SNI and the name the certificate must carry; undefined: the endpoint's host name. */
  readonly servername: string | undefined;
  /** False only when the operator opted out of verification for this resource. */
  readonly rejectUnauthorized: boolean;
  /** Stable identity of these settings (pool key); '' for the defaults. */
  readonly key: string;
}

export interface BackendTlsConfig {
  readonly caFile?: string | undefined;
  readonly servername?: string | undefined;
  readonly insecureSkipVerify?: boolean | undefined;
}

/** The defaults: the endpoint's own host name, checked against the default roots. */
export const DEFAULT_BACKEND_TLS: BackendTls = { ca: undefined, servername: undefined, rejectUnauthorized: true, key: '' };

const loaded = new Map<string, BackendTls>();

/** Reads the CA file once per distinct setting (resources commonly share one). */
export function loadBackendTls(cfg: BackendTlsConfig | undefined): BackendTls {
  if (cfg === undefined) return DEFAULT_BACKEND_TLS;
  const key = JSON.stringify([cfg.caFile ?? null, cfg.servername ?? null, cfg.insecureSkipVerify === true]);
  let tls = loaded.get(key);
  if (tls === undefined) {
    let ca: string | undefined;
    if (cfg.caFile !== undefined) {
      try {
        ca = readFileSync(cfg.caFile, 'utf8');
      } catch (err) {
        throw new Error(`backendTls.caFile ${cfg.caFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
      }
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`backendTls.caFile ${cfg.caFile}: no PEM certificate in it`);
    }
    tls = { ca, servername: cfg.servername, rejectUnauthorized: cfg.insecureSkipVerify !== true, key };
    loaded.set(key, tls);
  }
  return tls;
}

/** node:tls / undici connect options for a connection to `hostname` under these settings. */
export function tlsConnectOptions(tls: BackendTls, hostname: string): ConnectionOptions {
  const bare = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  const opts: ConnectionOptions = { rejectUnauthorized: tls.rejectUnauthorized };
  if (tls.ca !== undefined) opts.ca = tls.ca;
  // RFC 6066 §3: SNI carries host names, never IP literals (Node warns on them).
  const sni = tls.servername ?? (isIpLiteral(bare) ? undefined : bare);
  if (sni !== undefined) opts.servername = sni;
  if (tls.servername !== undefined) {
    // Check the certificate against the configured name, whatever address was dialled.
    const name = tls.servername;
    opts.checkServerIdentity = (_host, cert) => checkServerIdentity(name, cert);
  }
  return opts;
}

function isIpLiteral(host: string): boolean {
  return isIP(host) !== 0;
}

/**
 * OIDC tests: the embedded `oidc-provider` issuer on port 0, the real composition (config
 * schema → startApp) with an oidc identity, a mimic backend, and a cookie jar to walk the
 * sign-in flow over plain HTTP (fetch with redirects handled by hand).
 */
import { MemoryAuditSink } from '../../src/access/audit.ts';
import { configSchema } from '../../src/config/schema.ts';
import type { Clock, KeyValueStore } from '../../src/core/ports.ts';
import { startApp, type App } from '../../src/main.ts';
import { startEmbeddedIssuer, type EmbeddedIssuer, type IssuerUser } from '../../src/mock-idp/embedded-issuer.ts';
import { MimicProvider } from '../helpers/mimic-provider.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';
export { freePort } from '../helpers/free-port.ts';

export const KEY_A = 'key-a-0123456789-0123456789-0123456789';
export const KEY_B = 'key-b-0123456789-0123456789-0123456789';
export const CLIENT = { id: 'smart-proxy', secret: 'client-secret-for-tests' };
export const USERS: IssuerUser[] = [
  { login: 'alice', password: 'alice-pw', groups: ['g1', 'staff'] },
  { login: 'bob', password: 'bob-pw', groups: ['g2'] },
];


export interface OidcApp {
  readonly app: App;
  readonly url: string;
  readonly provider: MimicProvider;
  readonly logs: Harness['logs'];
  readonly audit: MemoryAuditSink;
  close(): Promise<void>;
}

export interface OidcAppOptions {
  readonly port: number;
  readonly issuerUrl: string;
  readonly keys?: string[];
  readonly sessions?: Record<string, unknown>;
  readonly identity?: Record<string, unknown>;
  readonly resources?: Record<string, unknown>;
  readonly clock?: Clock;
  readonly keyValues?: KeyValueStore;
  readonly provider?: MimicProvider;
  readonly trustedProxies?: string[];
  /** Where the log lines go (a test may watch it); a fresh array otherwise. */
  readonly logs?: Harness['logs'];
}

export async function startOidcApp(o: OidcAppOptions): Promise<OidcApp> {
  const url = `http://127.0.0.1:${o.port}`;
  const parsed = configSchema.parse({
    listen: { host: '127.0.0.1', port: o.port },
    shutdown: { drainTimeoutMs: 0 },
    state: { kind: 'memory' },
    ...(o.trustedProxies === undefined ? {} : { trustedProxies: o.trustedProxies }),
    providers: { mimic: { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' } },
    identities: [{
      kind: 'oidc', name: 'test', issuer: o.issuerUrl, clientId: CLIENT.id, clientSecret: CLIENT.secret,
      scopes: ['openid', 'profile', 'groups'], discoveryTimeoutMs: 2_000, discoveryRetryMs: 0, ...o.identity,
    }],
    access: { sessions: { publicUrl: url, keys: o.keys ?? [KEY_A], ...o.sessions } },
    resourceDefaults: {
      bootTimeoutMs: 20_000, pollIntervalMinMs: 5, pollIntervalMaxMs: 20, probeIntervalMs: 5, failureCooldownMs: 0,
      probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 1000 },
    },
    resources: Object.fromEntries(Object.entries(o.resources ?? {
      r1: { access: { anyOf: ['g1'] } },
      tok: { access: { anyOf: ['g1'], passAccessToken: true } },
    }).map(([id, r]) => [id, { provider: 'mimic', ...(r as object) }])),
  });
  const provider = o.provider ?? new MimicProvider({ bootMs: 150 });
  const logs: Harness['logs'] = o.logs ?? [];
  const audit = new MemoryAuditSink();
  const app = await startApp(parsed, {
    logger: collectingLogger(logs), providers: new Map([['mimic', provider]]), audit,
    ...(o.clock === undefined ? {} : { clock: o.clock }), ...(o.keyValues === undefined ? {} : { keyValues: o.keyValues }),
  });
  return {
    app, url, provider, logs, audit,
    async close() {
      await app.close();
      await provider.close?.();
    },
  };
}

export async function startIssuer(proxyPort: number, extra: Partial<Parameters<typeof startEmbeddedIssuer>[0]> = {}): Promise<EmbeddedIssuer> {
  return startEmbeddedIssuer({
    users: USERS, clientId: CLIENT.id, clientSecret: CLIENT.secret, proxyUrl: `http://127.0.0.1:${proxyPort}`, identityName: 'test', ...extra,
  });
}

/** A minimal cookie jar per origin (name → value; Max-Age=0 deletes). */
export class CookieJar {
  readonly #byOrigin = new Map<string, Map<string, string>>();

  store(origin: string, res: Response): void {
    let jar = this.#byOrigin.get(origin);
    if (jar === undefined) this.#byOrigin.set(origin, jar = new Map<string, string>());
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const eq = (pair as string).indexOf('=');
      const name = (pair as string).slice(0, eq);
      const value = (pair as string).slice(eq + 1);
      if (/max-age=0/i.test(c) || value === '') jar.delete(name);
      else jar.set(name, value);
    }
  }

  header(origin: string): string {
    return [...(this.#byOrigin.get(origin) ?? new Map<string, string>())].map(([n, v]) => `${n}=${v}`).join('; ');
  }

  get(origin: string, name: string): string | undefined {
    return this.#byOrigin.get(origin)?.get(name);
  }

  set(origin: string, name: string, value: string): void {
    let jar = this.#byOrigin.get(origin);
    if (jar === undefined) this.#byOrigin.set(origin, jar = new Map<string, string>());
    jar.set(name, value);
  }

  names(origin: string): string[] {
    return [...(this.#byOrigin.get(origin)?.keys() ?? [])];
  }
}

export const BROWSER = { accept: 'text/html,application/xhtml+xml', 'sec-fetch-mode': 'navigate' } as const;

/** One request with the jar's cookies, redirects not followed; the jar takes the answer's cookies. */
export async function go(jar: CookieJar, url: string, init: RequestInit = {}): Promise<Response> {
  const origin = new URL(url).origin;
  const headers = new Headers(init.headers);
  const cookie = jar.header(origin);
  if (cookie !== '') headers.set('cookie', cookie);
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  jar.store(origin, res);
  return res;
}

export interface SignInTrip {
  readonly jar: CookieJar;
  /** The callback URL the issuer sent the browser to (code + state). */
  readonly callbackUrl: string;
  /** The tx cookie's name and value as it was at the callback. */
  readonly txCookie: readonly [string, string];
}

/**
 * Walks a browser's sign-in up to the proxy's callback, which it does not call: from the
 * proxy's sign-in route through the issuer's login form.
 */
export async function tripToCallback(proxyUrl: string, target: string, login: string, password: string, jar = new CookieJar()): Promise<SignInTrip> {
  const first = await go(jar, `${proxyUrl}${target}`, { headers: BROWSER });
  // 302 from a resource; 303 when `target` is the sign-in route itself.
  if (first.status !== 302 && first.status !== 303) throw new Error(`expected a redirect to sign in, got ${first.status}`);
  let next = first.headers.get('location') as string;
  for (let i = 0; i < 10; i++) {
    const res = await go(jar, next, { headers: BROWSER });
    const loc = res.headers.get('location');
    if (res.status === 200 && new URL(next).pathname.startsWith('/interaction/')) {
      await res.text();
      const post = await go(jar, `${next}/login`, {
        method: 'POST', headers: { ...BROWSER, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ login, password }).toString(),
      });
      if (post.status !== 303 && post.status !== 302) throw new Error(`login refused: ${post.status} ${await post.text()}`);
      next = new URL(post.headers.get('location') as string, next).href;
      continue;
    }
    await res.text();
    if (loc === null) throw new Error(`flow stopped at ${next}: ${res.status}`);
    next = new URL(loc, next).href;
    if (next.startsWith(`${proxyUrl}/_smart_proxy/auth/callback/`)) {
      const origin = new URL(proxyUrl).origin;
      const tx = jar.names(origin).find((n) => n.includes('_tx_')) as string;
      return { jar, callbackUrl: next, txCookie: [tx, jar.get(origin, tx) as string] };
    }
  }
  throw new Error('too many redirects');
}

/** The whole sign-in: returns the jar holding the session, and the callback's answer. */
export async function signIn(proxyUrl: string, target: string, login: string, password: string): Promise<{ jar: CookieJar; callback: Response; trip: SignInTrip }> {
  const trip = await tripToCallback(proxyUrl, target, login, password);
  const callback = await go(trip.jar, trip.callbackUrl, { headers: BROWSER });
  return { jar: trip.jar, callback, trip };
}

/**
 * Access tests run the real composition (config schema → startApp → ProxyServer) on
 * 127.0.0.1:0, with test providers injected by name and an in-memory audit sink.
 */
import { hashPassword, hashToken } from '../../src/access/passwords.ts';
import { MemoryAuditSink } from '../../src/access/audit.ts';
import { configSchema } from '../../src/config/schema.ts';
import type { InspectResult, InstanceRef, Provider, StartResult } from '../../src/core/ports.ts';
import { startApp, type App } from '../../src/main.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';

export const ALICE = { Authorization: 'Bearer alice-token' } as const; // g1, g2, staff
export const BOB = { Authorization: 'Bearer bob-token' } as const; // g1
export const CAROL = { Authorization: `Basic ${Buffer.from('carol:carol-pw').toString('base64')}` } as const; // g2

const carolHash = await hashPassword('carol-pw', { ln: 10, r: 8, p: 1 });

export function identities(): unknown[] {
  return [
    {
      kind: 'token', tokens: [
        { user: 'alice', groups: ['g1', 'g2', 'staff'], hash: hashToken('alice-token') },
        { user: 'bob', groups: ['g1'], hash: hashToken('bob-token') },
      ],
    },
    { kind: 'basic', users: [{ user: 'carol', groups: ['g2'], passwordHash: carolHash }] },
  ];
}

export interface AccessApp {
  readonly app: App;
  readonly url: string;
  readonly audit: MemoryAuditSink;
  readonly logs: Harness['logs'];
  close(): Promise<void>;
}

/** Starts the app on port 0; `providers` are injected under the names the config uses. */
export async function startAccessApp(config: Record<string, unknown>, providers: Record<string, Provider>): Promise<AccessApp> {
  const parsed = configSchema.parse({
    listen: { host: '127.0.0.1', port: 0 },
    shutdown: { drainTimeoutMs: 0 },
    state: { kind: 'memory' },
    providers: Object.fromEntries(Object.keys(providers).map((n) => [n, { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' }])),
    identities: identities(),
    ...config,
    resourceDefaults: {
      bootTimeoutMs: 20_000, pollIntervalMinMs: 5, pollIntervalMaxMs: 20, probeIntervalMs: 5, failureCooldownMs: 0,
      probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 1000 },
      ...(config.resourceDefaults as object | undefined),
    },
  });
  const logs: Harness['logs'] = [];
  const audit = new MemoryAuditSink();
  const app = await startApp(parsed, { logger: collectingLogger(logs), providers: new Map(Object.entries(providers)), audit });
  return {
    app, url: app.proxyUrl, audit, logs,
    async close() {
      await app.close();
      await Promise.all(Object.values(providers).map((p) => p.close?.() ?? Promise.resolve()));
    },
  };
}

/**
 * Counts starts per resource. Its instances stay "starting" until `readyEndpoint` is set,
 * then all report running there (one echo server can stand for every instance).
 */
export class CountingProvider implements Provider {
  readonly kind = 'counting';
  readonly starts = new Map<string, number>();
  readyEndpoint: string | undefined;
  #total = 0;
  #waiters: Array<{ n: number; resolve: () => void }> = [];

  get totalStarts(): number {
    return this.#total;
  }

  async start(ref: InstanceRef): Promise<StartResult> {
    this.starts.set(ref.resourceId, (this.starts.get(ref.resourceId) ?? 0) + 1);
    this.#total++;
    this.#waiters = this.#waiters.filter((w) => (this.#total >= w.n ? (w.resolve(), false) : true));
    return { handle: `${ref.resourceId}/${ref.instanceKey}` };
  }

  async inspect(): Promise<InspectResult> {
    return this.readyEndpoint === undefined ? { state: 'starting' } : { state: 'running', endpoint: this.readyEndpoint };
  }

  async stop(): Promise<void> {}

  /** Resolves once `n` starts have happened. */
  startsReached(n: number): Promise<void> {
    if (this.#total >= n) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ n, resolve }));
  }
}

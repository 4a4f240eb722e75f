/**
 * A real app (startApp, in-memory state) with its admin listener on 127.0.0.1:0, mimic
 * providers injected, and three callers: `ops` (token, admin), `dev` (token, not admin) and
 * `web` (Basic, admin: a browser's ambient credential).
 */
import { configSchema } from '../../src/config/schema.ts';
import { hashPassword, hashToken } from '../../src/access/passwords.ts';
import type { Provider } from '../../src/core/ports.ts';
import type { Config } from '../../src/config/schema.ts';
import { startApp, type App, type ReloadResult } from '../../src/main.ts';
import { collectingLogger, type Harness } from '../helpers/proxy-harness.ts';

export const OPS = { authorization: 'Bearer ops-token' };
export const DEV = { authorization: 'Bearer dev-token' };
export const WEB = { authorization: `Basic ${Buffer.from('web:web-password').toString('base64')}` };

const webHash = await hashPassword('web-password', { ln: 10, r: 8, p: 1 });

export interface AdminApp {
  readonly app: App;
  readonly admin: string;
  readonly logs: Harness['logs'];
  /**
   * Reloads the app with these resources instead (the rest of the configuration as it was).
   * Only with `reloadable` (an app without a file to reload from answers the admin reload 501).
   */
  reconfigure(resources: Record<string, unknown>): Promise<ReloadResult>;
  close(): Promise<void>;
}

export async function startAdminApp(resources: Record<string, unknown>, providers: Record<string, Provider>, over: Record<string, unknown> = {}, reloadable = false): Promise<AdminApp> {
  const build = (resources: Record<string, unknown>): Config => configSchema.parse({
    listen: { host: '127.0.0.1', port: 0 },
    shutdown: { drainTimeoutMs: 0 },
    state: { kind: 'memory', flushIntervalMs: 50 },
    admin: { listen: { host: '127.0.0.1', port: 0 }, groups: ['ops'] },
    providers: Object.fromEntries(Object.keys(providers).map((n) => [n, { kind: 'atmosphere', baseUrl: 'http://127.0.0.1:9' }])),
    identities: [
      { kind: 'token', tokens: [{ user: 'ops', groups: ['ops', 'g1'], hash: hashToken('ops-token') }, { user: 'dev', groups: ['g1'], hash: hashToken('dev-token') }] },
      { kind: 'basic', users: [{ user: 'web', groups: ['ops'], passwordHash: webHash }] },
    ],
    resourceDefaults: {
      bootTimeoutMs: 20_000, pollIntervalMinMs: 5, pollIntervalMaxMs: 20, probeIntervalMs: 5, failureCooldownMs: 0,
      probe: { kind: 'http', path: '/', expectStatus: [200], timeoutMs: 1000 },
      access: { anyOf: ['g1'] },
    },
    resources,
    ...over,
  });
  let next = build(resources);
  const logs: Harness['logs'] = [];
  const app = await startApp(next, { logger: collectingLogger(logs), providers: new Map(Object.entries(providers)), ...(reloadable ? { loadConfig: () => Promise.resolve(next) } : {}) });
  return {
    app, admin: app.adminUrl as string, logs,
    reconfigure(resources) {
      next = build(resources);
      return app.reload();
    },
    async close() {
      await app.close();
      await Promise.all(Object.values(providers).map((p) => p.close?.() ?? Promise.resolve()));
    },
  };
}

/** Reads an SSE response until `until(event, data)` says stop; returns every event seen. */
export async function readSse(res: Response, until: (event: string, data: unknown) => boolean): Promise<Array<{ event: string; data: unknown }>> {
  const seen: Array<{ event: string; data: unknown }> = [];
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return seen;
      buf += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buf.indexOf('\n\n')) !== -1) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (data === '') continue;
        const parsed: unknown = JSON.parse(data);
        seen.push({ event, data: parsed });
        if (until(event, parsed)) return seen;
      }
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

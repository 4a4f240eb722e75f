/**
 * Helpers for multi-replica tests: real proxy processes sharing one mock cloud (in the test
 * process) and one Redis, each test under its own key prefix; a private redis-server for
 * tests that kill Redis (the shared 6379 is used by others).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { startMockCloud, type MockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import { deleteByPrefix } from '../../src/state/redis/client.ts';
import { exitOf, requireBinary, testRedisUrl } from '../helpers/system.ts';
export { freePort } from '../helpers/free-port.ts';

/** SMART_PROXY_TEST_REDIS_URL, by default 127.0.0.1:6379. */
export const sharedRedisUrl = testRedisUrl;

export function uniquePrefix(name: string): string {
  return `sp-test:${name}:${randomUUID()}:`;
}

export async function cleanPrefix(url: string, prefix: string): Promise<void> {
  const admin = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    await deleteByPrefix(admin, prefix);
  } finally {
    admin.disconnect();
  }
}

export function newCloud(bootMs: number): Promise<MockCloud> {
  return startMockCloud({ host: '127.0.0.1', port: 0, bootTimeMinMs: bootMs, bootTimeMaxMs: bootMs, failureRate: 0, hangRate: 0, seedData: false, maxLiveVms: 1_000 });
}

export interface ReplicaOptions {
  readonly redisUrl: string;
  readonly prefix: string;
  readonly replicaId: string;
  readonly resources?: Record<string, object>;
  readonly cluster?: object;
}

export function replicaConfig(cloud: MockCloud, o: ReplicaOptions): object {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    log: { level: 'warn' },
    state: { kind: 'redis', url: o.redisUrl, keyPrefix: o.prefix, flushIntervalMs: 200 },
    cluster: { leaseMs: 1_500, pollIntervalMs: 200, activityFlushIntervalMs: 100, replicaId: o.replicaId, ...o.cluster },
    limits: { maxHeldRequests: 2_000, maxHeldRequestsPerResource: 2_000 },
    providers: { cloud: { kind: 'atmosphere', baseUrl: cloud.url, requestTimeoutMs: 5_000 } },
    resourceDefaults: { bootTimeoutMs: 30_000, healthCheckIntervalMs: 0, pollIntervalMinMs: 10, pollIntervalMaxMs: 50, access: { public: true } },
    resources: o.resources ?? { app: { provider: 'cloud' } },
  };
}


/** A private redis-server (no persistence) that a test may kill and start again on the same port. */
export class PrivateRedis {
  readonly port: number;
  #child: ChildProcess | undefined;

  constructor(port: number) {
    this.port = port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts it; resolves once it accepts connections. */
  async start(): Promise<void> {
    const child = spawn(requireBinary('redis-server', 'redis-server'), ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('Ready to accept connections')) resolve();
      });
      void exitOf(child).then(({ code, error }) => reject(new Error(`redis-server ${error === undefined ? `exited (${code})` : `did not start (${error.message})`}:\n${out}`)));
    });
  }

  /** kill -9; resolves once it has exited. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

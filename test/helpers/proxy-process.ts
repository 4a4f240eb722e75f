/**
 * Starts the proxy in a child process (test/fixtures/proxy-process.ts) so tests can send
 * it real signals and kill -9 it.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const fixture = fileURLToPath(new URL('../fixtures/proxy-process.ts', import.meta.url));

export interface InstanceView {
  resourceId: string;
  key: string;
  status: string;
  handle?: string;
  endpoint?: string;
  lastActivityAt: number;
  activeConnections: number;
}

export interface ProcessStatus {
  held: number;
  instances: InstanceView[];
  state: { flushes: number; failures: number };
}

export interface ProxyProcess {
  readonly child: ChildProcess;
  readonly url: string;
  /** Resolves when the child has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Everything the child wrote, for failure messages. */
  output(): string;
  status(): Promise<ProcessStatus>;
  /** Resolves with the next IPC message of this type. */
  next(type: string): Promise<Record<string, unknown>>;
  /** Polls the child's status (one IPC round trip each) until `cond` holds. */
  waitFor(cond: (s: ProcessStatus) => boolean): Promise<ProcessStatus>;
  /** kill -9 if still running; resolves when it has exited. */
  dispose(): Promise<void>;
}

export async function startProxyProcess(config: object): Promise<ProxyProcess> {
  const child = fork(fixture, [JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], execArgv: [] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const waiters: Array<{ type: string; resolve: (m: Record<string, unknown>) => void }> = [];
  child.on('message', (m: Record<string, unknown>) => {
    const i = waiters.findIndex((w) => w.type === m.type);
    if (i >= 0) waiters.splice(i, 1)[0]?.resolve(m);
  });
  const next = (type: string): Promise<Record<string, unknown>> => new Promise((resolve, reject) => {
    waiters.push({ type, resolve });
    void exited.then(({ code, signal }) => reject(new Error(`proxy process exited (${code ?? signal}) before "${type}":\n${out}`)));
  });
  const listening = await next('listening');
  const status = async (): Promise<ProcessStatus> => {
    const reply = next('status');
    child.send({ type: 'status' });
    return await reply as unknown as ProcessStatus;
  };
  return {
    child, exited, url: String(listening.url), output: () => out, status, next,
    async waitFor(cond) {
      for (;;) {
        const s = await status();
        if (cond(s)) return s;
        await new Promise((r) => setImmediate(r));
      }
    },
    async dispose() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

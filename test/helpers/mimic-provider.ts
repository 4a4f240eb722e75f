/**
 * A provider for the core's own tests whose backends are real HTTP servers in this process,
 * with start-up behaviour the test controls (like Sablier's "mimic"): boot on `release()`,
 * fail the first N starts, hang, accept TCP before answering HTTP, crash after ready.
 * Every call is counted, so tests can prove "no provider call on the warm path".
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ProviderError } from '../../src/core/errors.ts';
import type { InspectResult, InstanceRef, ListedInstance, Provider, StartResult } from '../../src/core/ports.ts';
import { startEchoServer, type EchoServer, type Handler } from './echo-server.ts';

export interface MimicOptions {
  /** Boot completes after this long (a real timer: the backend's behaviour, not a test sleep). */
  bootMs?: number;
  /** Boot completes only when the test calls `release(key)`. */
  manual?: boolean;
  /** The first N start calls fail with a retryable error (a 500 from a cloud API). */
  failStarts?: number;
  /** start() never resolves (until its signal aborts). */
  hangStart?: boolean;
  /** The server listens at once but answers HTTP only after `answer(key)`. */
  acceptBeforeHttp?: boolean;
  /** inspect() reports failed once booted. */
  bootFails?: boolean;
  /** The backends answer with this instead of the echo (SSE, a concurrency-limited app…). */
  handler?: Handler;
  /** Builds the backend a boot brings up (a WebSocket or SSE server…); default: the echo server. */
  backend?: (instanceKey: string) => Promise<EchoServer>;
}

interface MimicInstance {
  state: 'starting' | 'running' | 'failed';
  server?: EchoServer;
  answering: boolean;
  held: Array<() => void>;
  booted?: Promise<void>;
}

export class MimicProvider implements Provider {
  readonly kind = 'mimic';
  readonly calls = { start: 0, inspect: 0, stop: 0 };
  readonly instances = new Map<string, MimicInstance>();
  readonly options: MimicOptions;
  #failStartsLeft: number;
  readonly #releases = new Map<string, () => void>();
  readonly #startedWaiters: Array<() => void> = [];

  constructor(options: MimicOptions = {}) {
    this.options = options;
    this.#failStartsLeft = options.failStarts ?? 0;
  }

  async start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    this.calls.start++;
    if (this.options.hangStart) {
      await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new ProviderError('aborted', { retryable: true })), { once: true }));
    }
    if (this.#failStartsLeft > 0) {
      this.#failStartsLeft--;
      throw new ProviderError('cloud API answered 500', { retryable: true });
    }
    if (this.instances.has(ref.instanceKey)) return { handle: ref.instanceKey };
    const inst: MimicInstance = { state: 'starting', answering: !this.options.acceptBeforeHttp, held: [] };
    this.instances.set(ref.instanceKey, inst);
    const bootDone = new Promise<void>((resolve) => {
      if (this.options.manual) this.#releases.set(ref.instanceKey, resolve);
      else setTimeout(resolve, this.options.bootMs ?? 0);
    });
    if (this.options.acceptBeforeHttp) {
      // The port accepts at once, like QEMU's forwarder, but nothing answers yet.
      inst.server = await startEchoServer({ name: ref.instanceKey, handler: (req, res) => {
        if (inst.answering) return this.#echo(req, res);
        inst.held.push(() => this.#echo(req, res));
      } });
      inst.state = 'running';
    }
    inst.booted = bootDone.then(async () => {
      if (this.options.bootFails) {
        inst.state = 'failed';
        return;
      }
      inst.server ??= await (this.options.backend?.(ref.instanceKey)
        ?? startEchoServer({ name: ref.instanceKey, ...(this.options.handler ? { handler: this.options.handler } : {}) }));
      inst.state = 'running';
      // Stopped while it booted: the machine is gone, so is its backend.
      if (this.instances.get(ref.instanceKey) !== inst) await inst.server.close();
    });
    for (const w of this.#startedWaiters.splice(0)) w();
    return { handle: ref.instanceKey };
  }

  #echo(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`hello ${req.url}`);
  }

  async inspect(ref: InstanceRef): Promise<InspectResult> {
    this.calls.inspect++;
    const inst = this.instances.get(ref.instanceKey);
    if (inst === undefined) return { state: 'stopped' };
    if (inst.state === 'failed') return { state: 'failed', reason: 'mimic boot failed' };
    if (inst.state === 'running' && inst.server) return { state: 'running', endpoint: inst.server.url };
    return { state: 'starting' };
  }

  async stop(ref: InstanceRef): Promise<void> {
    this.calls.stop++;
    const inst = this.instances.get(ref.instanceKey);
    this.instances.delete(ref.instanceKey);
    await inst?.server?.close();
  }

  /** Instances that run or boot, for re-adoption after a restart. */
  async list(): Promise<ListedInstance[]> {
    const out: ListedInstance[] = [];
    for (const [key, inst] of this.instances) {
      if (inst.state === 'failed') continue;
      out.push({ resourceId: this.listAs ?? 'app', instanceKey: key, handle: key, state: inst.state, endpoint: inst.server?.url });
    }
    return out;
  }

  /** The resource id `list()` reports instances under. */
  listAs: string | undefined;

  /** Resolves once a start call has created an instance (to act right after). */
  started(): Promise<void> {
    if (this.instances.size > 0) return Promise.resolve();
    return new Promise((resolve) => this.#startedWaiters.push(resolve));
  }

  /** Completes a manual boot; resolves once the server listens. */
  async release(key: string): Promise<void> {
    if (!this.instances.has(key)) await this.started();
    const r = this.#releases.get(key);
    if (r === undefined) throw new Error(`no manual boot pending for ${key}`);
    this.#releases.delete(key);
    r();
    await this.instances.get(key)?.booted;
  }

  /** Lets an accept-before-HTTP server answer. */
  answer(key: string): void {
    const inst = this.instances.get(key);
    if (inst === undefined) throw new Error(`no instance ${key}`);
    inst.answering = true;
    for (const h of inst.held.splice(0)) h();
  }

  /** Kills the backend behind the provider's back (a crash): the provider forgets it too. */
  async crash(key: string): Promise<void> {
    const inst = this.instances.get(key);
    this.instances.delete(key);
    await inst?.server?.close();
  }

  async close(): Promise<void> {
    // A boot still under way ends first (its timer is short, or the test releases it), so that
    // no backend starts listening after close and keeps the test process alive.
    await Promise.all([...this.instances.values()].map(async (i) => {
      if (!this.options.manual) await i.booted;
      await i.server?.close();
    }));
    this.instances.clear();
  }
}

/** A mimic whose stops the cloud refuses while `refuse` is on (stops owed, retried, given up). */
export class StubbornProvider extends MimicProvider {
  refuse = false;
  refusals = 0;
  override async stop(ref: InstanceRef): Promise<void> {
    if (this.refuse) throw new ProviderError(`DELETE refused (#${++this.refusals})`, { retryable: false });
    return super.stop(ref);
  }
}

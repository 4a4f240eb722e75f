/**
 * A provider whose answers the test scripts call by call, and a manager on a ManualClock
 * around it: the control plane with no sockets and no sleeps.
 */
import { ManualClock } from '../../src/core/clock.ts';
import type { InspectResult, InstanceRef, Prober, Provider } from '../../src/core/ports.ts';
import { ResourceManager } from '../../src/core/resource-manager.ts';
import { collectingLogger, runtimeOf, type TestResource } from '../helpers/proxy-harness.ts';

export class ScriptedProvider implements Provider {
  readonly kind = 'scripted';
  starts: InstanceRef[] = [];
  stops: InstanceRef[] = [];
  inspects = 0;
  startErrors: Error[] = [];
  state: InspectResult = { state: 'starting' };
  /** When set, start never settles and ignores its signal (a badly behaved provider). */
  hangIgnoringSignal = false;
  /** When set, stop waits for this promise. */
  stopGate: Promise<void> | undefined;
  /** Thrown by the next stops, one each (after the gate). */
  stopErrors: Error[] = [];

  async start(ref: InstanceRef): Promise<{ handle: string }> {
    this.starts.push(ref);
    if (this.hangIgnoringSignal) await new Promise(() => undefined);
    const err = this.startErrors.shift();
    if (err) throw err;
    return { handle: `h-${this.starts.length}` };
  }

  async inspect(): Promise<InspectResult> {
    this.inspects++;
    return this.state;
  }

  async stop(ref: InstanceRef): Promise<void> {
    this.stops.push(ref);
    await this.stopGate;
    const err = this.stopErrors.shift();
    if (err) throw err;
  }
}

export function setup(overrides: Partial<TestResource> = {}, clock = new ManualClock()) {
  const provider = new ScriptedProvider();
  const probe = { ok: false };
  const prober: Prober = { probe: async () => (probe.ok ? { ok: true } : { ok: false, reason: 'refused' }) };
  const logs: Array<{ level: string; obj: object; msg?: string | undefined }> = [];
  const manager = new ResourceManager({ clock, prober, logger: collectingLogger(logs), maxHeldRequestsTotal: 10_000 });
  const resource = runtimeOf({ id: 'r', provider, bootTimeoutMs: 10_000, failureCooldownMs: 5_000, ...overrides });
  return { clock, provider, probe, manager, resource, logs };
}

/** Lets pending promise chains run (the manager's loops are async). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** Brings an instance to ready: provider says running, probe passes. */
export async function makeReady(s: ReturnType<typeof setup>, endpoint = 'http://127.0.0.1:1') {
  s.provider.state = { state: 'running', endpoint };
  s.probe.ok = true;
  const inst = s.manager.selectInstance(s.resource, [], undefined);
  const w = s.manager.waitUntilReady(inst, { timeoutMs: 10_000 });
  await s.clock.advance(50);
  await w;
  return inst;
}

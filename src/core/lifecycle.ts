/**
 * The lifecycle of one instance as a pure state machine. An instance's status changes only
 * through InstanceControl's transitions (instance.ts), each of which goes through
 * `transition` and throws on an edge that is not here: this table is the whole truth about
 * which moves exist. `docs/concepts/resource-lifecycle.md` draws it, a test checks the
 * drawing lists exactly these edges, and test/core/instance.test.ts that every other move
 * throws. (A failure cool-down is a time on the `failed` status, `failedUntil`, not a move.)
 */

export type InstanceStatus = 'stopped' | 'starting' | 'ready' | 'stopping' | 'failed';

export type LifecycleEvent =
  /** A request (or keep-warm) needs the instance and nothing is running. */
  | 'start'
  /** The provider says running and the readiness probe passed. */
  | 'ready'
  /** The start failed: provider error, failed state, or boot timeout. */
  | 'fail'
  /** A ready backend stopped answering, or the provider reports it gone. */
  | 'lost'
  /** Idle stop, shutdown, or an operator asked for a stop. */
  | 'stop'
  /** The provider confirmed the stop. */
  | 'stopped'
  /**
   * The provider no longer knows the instance and nobody uses it: re-adoption after a
   * restart found it gone, or a health check found a ready instance gone while idle.
   */
  | 'vanished';

const table: Readonly<Record<InstanceStatus, Partial<Record<LifecycleEvent, InstanceStatus>>>> = {
  stopped: { start: 'starting' },
  starting: { ready: 'ready', fail: 'failed', stop: 'stopping', vanished: 'stopped' },
  ready: { lost: 'starting', stop: 'stopping', vanished: 'stopped' },
  stopping: { stopped: 'stopped', fail: 'stopped' },
  failed: { start: 'starting', stop: 'stopping' },
};

/** Every edge of the machine, for docs and tests. */
export function lifecycleEdges(): Array<{ from: InstanceStatus; event: LifecycleEvent; to: InstanceStatus }> {
  const edges: Array<{ from: InstanceStatus; event: LifecycleEvent; to: InstanceStatus }> = [];
  for (const [from, events] of Object.entries(table) as Array<[InstanceStatus, Partial<Record<LifecycleEvent, InstanceStatus>>]>) {
    for (const [event, to] of Object.entries(events) as Array<[LifecycleEvent, InstanceStatus]>) {
      edges.push({ from, event, to });
    }
  }
  return edges;
}

/** The next status, or `undefined` when the event is not allowed in `from`. */
export function transition(from: InstanceStatus, event: LifecycleEvent): InstanceStatus | undefined {
  return table[from][event];
}

/**
 * Finer progress inside `starting`, shown to a waiting person: requested (the start call
 * is under way), booting (accepted; the provider says starting), probing (the provider says
 * running; the readiness probe has not passed yet).
 */
export type StartPhase = 'requested' | 'booting' | 'probing';

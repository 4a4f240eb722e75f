/**
 * One start of one instance, from the claim to the outcome: claim the start from the
 * coordinator (local: always granted; a cluster: this replica leads, or another one got it
 * ready), call the provider (or, re-adopting after a restart, only ask it), poll it until
 * running, probe until the probe passes, and settle: ready, or failed with a cool-down and a
 * cleanup stop. Exactly one flight runs per instance and generation; a flight whose
 * generation was superseded (a stop, a newer start, shutdown) ends at its next check.
 */
import type { BootHistory } from './boot-history.ts';
import type { Coordinator, StartClaim, StartLease } from './coordination.ts';
import { isSmartProxyError, ProviderError, SmartProxyError } from './errors.ts';
import type { Instance, InstanceControl } from './instance.ts';
import type { LeftoverStops } from './leftover-stops.ts';
import type { ManagerEvent } from './manager-events.ts';
import type { Clock, InspectResult, Logger, Prober } from './ports.ts';
import { nextPollDelayMs } from './poll-schedule.ts';
import { Aborted, deadlineSignal, errMessage, raceAbort, type FlightGuard, type ProviderCalls } from './provider-calls.ts';
import { isUnreachable } from './provider-circuit.ts';
import type { AdoptionRecord } from './resource-runtime.ts';

/** Consecutive failed starts double the cool-down, up to this factor (circuit breaker). */
const MAX_COOLDOWN_FACTOR = 16;

/** What every flight shares: the manager's collaborators and what it does with an outcome. */
export interface FlightContext {
  readonly clock: Clock;
  readonly logger: Logger;
  readonly prober: Prober;
  readonly calls: ProviderCalls;
  readonly coordinator: Coordinator;
  readonly history: BootHistory;
  /** Endpoints found unreachable, so the cluster's stale "ready" record is not believed. */
  readonly lostEndpoints: Map<Instance, string>;
  readonly emit: (event: ManagerEvent) => void;
  readonly setPhase: (ctl: InstanceControl, phase: NonNullable<Instance['phase']>) => void;
  /** The instance just became ready: release the held requests, arm idle and health. */
  readonly onReady: (inst: Instance) => void;
  readonly rejectWaiters: (inst: Instance, err: Error) => void;
  readonly failUnreachable: (ctl: InstanceControl, err: SmartProxyError) => void;
  /** Starts a new flight (a re-adoption found the instance gone while requests wait). */
  readonly restart: (ctl: InstanceControl) => void;
  /** Stops owed to the provider for instances no longer in service (leftover-stops.ts). */
  readonly leftovers: LeftoverStops;
}

export class StartFlight {
  readonly #c: FlightContext;
  readonly #ctl: InstanceControl;
  readonly #inst: Instance;
  readonly #adopting: AdoptionRecord | undefined;
  #g!: FlightGuard;
  #t0 = 0;
  #lease: StartLease | undefined;
  /**
   * Whether a machine may exist because of this flight: false while every start call failed
   * to connect (nothing was created, so there is nothing to clean up).
   */
  #mayHaveCreated: boolean;

  constructor(context: FlightContext, ctl: InstanceControl, adopting?: AdoptionRecord) {
    this.#c = context;
    this.#ctl = ctl;
    this.#inst = ctl.instance;
    this.#adopting = adopting;
    this.#mayHaveCreated = adopting !== undefined;
  }

  /** Runs the flight to its outcome; never rejects. */
  async run(): Promise<void> {
    const inst = this.#inst;
    const res = inst.resource;
    if (inst.status !== 'starting') this.#ctl.start(this.#adopting === undefined ? undefined : 'adopting after restart');
    this.#t0 = this.#c.clock.now();
    const gen = this.#ctl.beginFlight(this.#adopting?.startRequestedAt ?? this.#t0);
    this.#g = { inst, gen, deadline: this.#t0 + res.bootTimeoutMs };
    try {
      let endpointElsewhere: string | undefined;
      if (this.#adopting === undefined) {
        endpointElsewhere = await this.#claimAndStart();
      } else if (!(await this.#stillThere())) {
        return;
      }
      this.#c.setPhase(this.#ctl, 'booting');
      const endpoint = endpointElsewhere ?? await this.#awaitReady();
      this.#settleReady(endpoint);
    } catch (err) {
      this.#settleFailed(err);
    }
  }

  /** Claims the start and calls the provider; returns the endpoint when another replica got it ready. */
  async #claimAndStart(): Promise<string | undefined> {
    const inst = this.#inst;
    const res = inst.resource;
    this.#c.setPhase(this.#ctl, 'requested');
    this.#c.emit({ type: 'start-requested', instance: inst, at: this.#t0 });
    this.#c.logger.info({ resource: res.id, instance: inst.key, groups: inst.groups, user: inst.user }, 'start requested');
    // A stop of this machine still in flight (the clean-up of a failed start, the retry of a
    // failed stop) ends first: landing after this start, it would cut the new machine.
    const stopping = this.#c.leftovers.beforeStart(inst);
    if (stopping !== undefined) {
      await stopping;
      this.#c.calls.check(this.#g);
    }
    // Another replica may be starting it (then we wait for its readiness and only probe
    // here), or may have died while starting it (then ask the provider before starting: the
    // machine may already be booting).
    const first = this.#claim();
    let claim = first instanceof Promise ? await first : first;
    // A "ready" endpoint that does not answer from here is stale (stopped or crashed behind
    // the cluster's back): ask again, ignoring it, and lead if nobody else does.
    while (claim.kind === 'ready' && !(await this.#probeElsewhere(claim.endpoint))) {
      this.#c.logger.warn({ resource: res.id, instance: inst.key, endpoint: claim.endpoint }, 'cluster: the endpoint another replica reported does not answer here');
      this.#c.lostEndpoints.set(inst, claim.endpoint);
      claim = await this.#claim();
    }
    if (claim.kind === 'ready') {
      if (claim.handle !== undefined) this.#ctl.setHandle(claim.handle);
      return claim.endpoint;
    }
    this.#lease = claim.lease;
    const found = claim.lease.takeover ? await this.#inspect() : undefined;
    if (found !== undefined && found.handle !== undefined) this.#ctl.setHandle(found.handle);
    if (found !== undefined && found.state !== 'stopped') this.#mayHaveCreated = true;
    if (found === undefined || found.state === 'stopped' || found.state === 'failed') {
      const started = await this.#c.calls.withRetry(this.#g, (signal) => res.provider.start(inst.ref, signal).then((r) => {
        this.#mayHaveCreated = true;
        return r;
      }, (err: unknown) => {
        // An API that could not be reached, or that refused the call for its rate limit,
        // created nothing.
        if (!isUnreachable(err) && !isRateLimited(err)) this.#mayHaveCreated = true;
        throw err;
      }), 'start');
      if (started.handle !== undefined) this.#ctl.setHandle(started.handle);
    } else {
      this.#c.logger.info({ resource: res.id, instance: inst.key, state: found.state }, 'took over the start of another replica; not starting again');
    }
    claim.lease.started(inst.handle);
    return undefined;
  }

  /**
   * Asks the coordinator for the start, bounded by the boot deadline. A local coordinator
   * answers at once (no promise, no timer), so in one process the provider is called in the
   * same tick as the request that wanted the start.
   */
  #claim(): StartClaim | Promise<StartClaim> {
    const inst = this.#inst;
    const options = { notEndpoint: this.#c.lostEndpoints.get(inst), failureCooldownMs: inst.resource.failureCooldownMs };
    const { signal, done } = deadlineSignal(this.#c.clock, Math.max(1, this.#g.deadline - this.#c.clock.now()));
    let claim: StartClaim | Promise<StartClaim>;
    try {
      claim = this.#c.coordinator.claimStart(inst.ref, signal, options);
    } catch (err) {
      done();
      throw err;
    }
    if (!(claim instanceof Promise)) {
      done();
      this.#c.calls.check(this.#g);
      return claim;
    }
    return raceAbort(claim, signal).finally(() => {
      done();
      this.#c.calls.check(this.#g);
    });
  }

  /** Re-adoption: is the machine still there? If not, the flight ends (or a fresh one starts). */
  async #stillThere(): Promise<boolean> {
    const inst = this.#inst;
    this.#c.setPhase(this.#ctl, 'booting');
    const found = await this.#inspect();
    if (found.state !== 'stopped' && found.state !== 'stopping') return true;
    if (inst.waiters.size === 0) {
      this.#ctl.vanished(`provider says ${found.state}`, false);
      this.#c.logger.info({ resource: inst.resource.id, instance: inst.key, state: found.state }, 'not re-adopted: the provider no longer runs it');
      return false;
    }
    // Requests already wait for it: an ordinary start, in a new flight.
    this.#c.restart(this.#ctl);
    return false;
  }

  #inspect(): Promise<InspectResult> {
    const inst = this.#inst;
    return this.#c.calls.withRetry(this.#g, (signal) => inst.resource.provider.inspect(inst.ref, signal), 'inspect');
  }

  /** Another replica reported `endpoint` ready: probe it from here (up to 3 tries) before forwarding. */
  async #probeElsewhere(endpoint: string): Promise<boolean> {
    const res = this.#inst.resource;
    for (let attempt = 1; ; attempt++) {
      this.#c.calls.check(this.#g);
      this.#c.setPhase(this.#ctl, 'probing');
      const outcome = await this.#probeOnce(endpoint);
      this.#c.calls.check(this.#g);
      if (outcome.ok) return true;
      if (attempt >= 3) return false;
      await this.#c.calls.sleep(res.probeIntervalMs, this.#g);
    }
  }

  /** Polls the provider with backoff until running, then probes until the probe passes. */
  async #awaitReady(): Promise<string> {
    const inst = this.#inst;
    const res = inst.resource;
    let pollMs = res.pollIntervalMinMs;
    for (;;) {
      this.#c.calls.check(this.#g);
      const found = await this.#inspect();
      if (found.handle !== undefined) this.#ctl.setHandle(found.handle);
      if (found.state === 'failed') {
        const reason = found.reason === undefined ? undefined : providerText(found.reason);
        throw new SmartProxyError('SP_START_FAILED', `provider reports the instance failed: ${reason ?? 'no reason given'}`, {
          data: { resource: res.id, reason },
        });
      }
      if (found.state === 'running') {
        if (found.endpoint === undefined) {
          throw new SmartProxyError('SP_START_FAILED', 'provider reports running but gave no endpoint', { data: { resource: res.id } });
        }
        this.#c.setPhase(this.#ctl, 'probing');
        const outcome = await this.#probeOnce(found.endpoint);
        this.#c.calls.check(this.#g);
        if (outcome.ok) return found.endpoint;
        this.#c.logger.debug({ resource: res.id, instance: inst.key, reason: outcome.reason }, 'probe not yet passing');
        await this.#c.calls.sleep(res.probeIntervalMs, this.#g);
        continue;
      }
      if (found.state === 'stopped' && inst.phase === 'booting' && this.#c.clock.now() - inst.startRequestedAt > res.pollIntervalMaxMs * 4) {
        // An accepted start that the provider forgot (crashed at once, or removed): start again.
        await this.#c.calls.withRetry(this.#g, (signal) => res.provider.start(inst.ref, signal), 'start');
      }
      const elapsedMs = this.#c.clock.now() - inst.startRequestedAt;
      await this.#c.calls.sleep(nextPollDelayMs(elapsedMs, pollMs, res.pollIntervalMinMs, res.pollIntervalMaxMs, this.#c.history.estimate(res.id)), this.#g);
      pollMs = Math.min(res.pollIntervalMaxMs, Math.ceil(pollMs * 1.5));
    }
  }

  /** One probe, bounded by the probe timeout and the boot deadline; its timer ends with it. */
  async #probeOnce(endpoint: string): ReturnType<Prober['probe']> {
    const res = this.#inst.resource;
    const remaining = this.#g.deadline - this.#c.clock.now();
    const { signal, done } = deadlineSignal(this.#c.clock, Math.min(res.probe.timeoutMs, Math.max(1, remaining)));
    try {
      return await this.#c.prober.probe(endpoint, res.probe, signal);
    } finally {
      done();
    }
  }

  #settleReady(endpoint: string): void {
    const inst = this.#inst;
    const res = inst.resource;
    const adopting = this.#adopting;
    this.#c.lostEndpoints.delete(inst);
    if (this.#lease !== undefined) void this.#lease.ready(endpoint, inst.handle);
    const now = this.#c.clock.now();
    if (adopting === undefined) {
      const bootMs = now - this.#t0;
      this.#c.history.add(res.id, bootMs);
      this.#ctl.ready(endpoint, now, true);
      this.#c.emit({ type: 'boot-finished', instance: inst, at: now, bootMs });
      this.#c.logger.info({ resource: res.id, instance: inst.key, endpoint, bootMs }, 'instance ready');
    } else {
      this.#ctl.ready(endpoint, adopting.readyAt ?? now, false, 'adopted after restart');
      this.#c.emit({ type: 'instance-adopted', instance: inst, at: now });
      this.#c.logger.info({ resource: res.id, instance: inst.key, endpoint, lastActivityAt: inst.lastActivityAt }, 'instance re-adopted');
    }
    this.#c.onReady(inst);
  }

  #settleFailed(err: unknown): void {
    const inst = this.#inst;
    const res = inst.resource;
    const lease = this.#lease;
    if (err instanceof Aborted || inst.generation !== this.#g.gen) {
      // Not a failure of the start (shutdown, a stop): another replica may take over.
      if (lease !== undefined) void lease.release();
      return;
    }
    if (isSmartProxyError(err) && err.code === 'SP_PROVIDER_UNREACHABLE') {
      // The provider's failure, not this instance's: no cool-down of its own, no cleanup
      // stop (the API cannot be reached); the circuit answers requests until it half-opens.
      if (lease !== undefined) void lease.release();
      this.#c.failUnreachable(this.#ctl, err);
      return;
    }
    if (lease !== undefined) void lease.failed(errMessage(err));
    if (isSmartProxyError(err) && (err.code === 'SP_CLUSTER_UNAVAILABLE' || err.code === 'SP_RESOURCE_FAILED')) {
      // Nothing was started here: no local cool-down (a cluster one is the cluster's), the
      // next request asks the cluster again.
      this.#ctl.fail({ error: err, failedUntil: 0, counted: false });
      this.#c.rejectWaiters(inst, err);
      return;
    }
    const now = this.#c.clock.now();
    const factor = Math.min(MAX_COOLDOWN_FACTOR, 2 ** inst.consecutiveFailures);
    // A provider that asked for a longer wait (Retry-After) is not asked again sooner.
    const askedMs = isSmartProxyError(err) && err.code === 'SP_PROVIDER_THROTTLED' ? (err.retryAfterS ?? 0) * 1000 : 0;
    const failedUntil = now + Math.max(res.failureCooldownMs * factor, askedMs);
    // Held clients learn when a new try can succeed: not before the cool-down ends (a retry
    // before that gets 503 SP_RESOURCE_FAILED), nor before the usual boot time.
    const failure = toStartFailure(err, res.id, now - this.#t0, Math.max(1, Math.ceil((failedUntil - now) / 1000)));
    this.#ctl.fail({ error: failure, failedUntil, counted: true });
    this.#c.logger.warn({ resource: res.id, instance: inst.key, code: failure.code, reason: failure.message, consecutiveFailures: inst.consecutiveFailures, retryAfterS: failure.retryAfterS }, 'start failed');
    this.#c.rejectWaiters(inst, failure);
    if (!this.#mayHaveCreated) {
      this.#c.logger.debug({ resource: res.id, instance: inst.key }, 'no start reached the provider; nothing to clean up');
      return;
    }
    // A machine that never became ready must not linger and cost money: stopped now, and
    // again later if that fails, unless a new start comes first (leftover-stops.ts).
    // A cloud that asked for a wait (Retry-After) gets it before the clean-up call too.
    this.#c.leftovers.schedule(inst, 'clean-up after a failed start', askedMs);
  }
}

/** The provider's API refused the call for its rate limit (HTTP 429): nothing was done. */
function isRateLimited(err: unknown): boolean {
  return err instanceof ProviderError && err.data.status === 429;
}

/**
 * The error a failed start leaves on the instance and answers its held clients with: a
 * stable code, a bounded message, and a Retry-After of at least `minRetryAfterS`.
 */
function toStartFailure(err: unknown, resourceId: string, elapsedMs: number, minRetryAfterS: number): SmartProxyError {
  if (isSmartProxyError(err) && (err.code === 'SP_BOOT_TIMEOUT' || err.code === 'SP_START_FAILED' || err.code === 'SP_PROVIDER_THROTTLED')) {
    const retryAfterS = Math.max(err.retryAfterS ?? 0, minRetryAfterS);
    if (retryAfterS === err.retryAfterS) return err;
    return new SmartProxyError(err.code, err.message, { data: err.data, retryAfterS, cause: err.cause ?? err });
  }
  return new SmartProxyError('SP_START_FAILED', `start failed after ${elapsedMs} ms: ${providerText(errMessage(err))}`, {
    data: { resource: resourceId }, retryAfterS: minRetryAfterS, cause: err,
  });
}

/** The most characters of a provider's own words (a reason, an error) shown to clients and logs. */
const MAX_PROVIDER_TEXT = 500;

/**
 * A provider's text as clients, the status page and logs may show it: a cloud's `reason` or
 * an error message is data from outside, of any length and with any characters. Control
 * characters (a forged log line, a terminal escape) become spaces; past
 * {@link MAX_PROVIDER_TEXT} characters it is cut.
 */
export function providerText(text: string): string {
  // eslint-disable-next-line no-control-regex
  const flat = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, ' ').trim();
  return flat.length <= MAX_PROVIDER_TEXT ? flat : `${flat.slice(0, MAX_PROVIDER_TEXT)}…`;
}

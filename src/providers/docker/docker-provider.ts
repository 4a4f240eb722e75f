/**
 * The `docker` provider: containers through the Docker Engine API (Docker, or Podman's
 * compatible service), with `dockerode` as the client.
 *
 * Two modes:
 * - `existing`: containers that already exist, chosen by name or by labels (templates may use
 *   `{resourceId}` and `{instanceKey}`); start/stop/inspect only, never create or remove.
 * - `create`: one container per instance, created from an image on first start under a
 *   deterministic name derived from resourceId + instanceKey (the idempotency key: a second
 *   start finds the container the first one made), with the proxy's labels so that `list()`
 *   re-adopts it after a restart.
 *
 * Readiness stays the core's job: a running container is `running` only once its healthcheck
 * (if it has one) says healthy; the core then probes the endpoint.
 */
import { setTimeout as pause } from 'node:timers/promises';
import { createHash } from 'node:crypto';
import Docker from 'dockerode';
import { ProviderError } from '../../core/errors.ts';
import type { InspectResult, InstanceRef, ListedInstance, Logger, Provider, StartResult } from '../../core/ports.ts';
import { safePlaceholderValue } from '../safe-values.ts';
import { readContainerFacts, toInspectResult, type ContainerFacts, type EndpointRule, type HealthRule } from './container-state.ts';

/** Labels this provider puts on the containers it creates (and finds them by). */
export const labelKeys = {
  owner: 'io.smart-proxy.owner',
  resource: 'io.smart-proxy.resource',
  instanceKey: 'io.smart-proxy.instance-key',
} as const;

export type ContainerSelection =
  | {
      readonly mode: 'existing';
      /** Container name (template). Exactly one of name / labels. */
      readonly name?: string | undefined;
      /** Labels the container carries (values are templates); exactly one container must match. */
      readonly labels?: Readonly<Record<string, string>> | undefined;
    }
  | {
      readonly mode: 'create';
      readonly image: string;
      readonly cmd?: readonly string[] | undefined;
      readonly env?: Readonly<Record<string, string>> | undefined;
      /** Extra labels (values are templates). */
      readonly labels?: Readonly<Record<string, string>> | undefined;
      /** HostConfig.NetworkMode (`bridge`, `host`, `slirp4netns`, a network name); engine default when absent. */
      readonly networkMode?: string | undefined;
      /** A healthcheck for the container (Docker's `HEALTHCHECK`), when the image has none. */
      readonly healthcheck?: {
        /** `["CMD", "prog", "arg"]` or `["CMD-SHELL", "command"]`. */
        readonly test: readonly string[];
        readonly intervalMs: number;
        readonly timeoutMs: number;
        readonly retries: number;
        readonly startPeriodMs: number;
      } | undefined;
      /** Remove the container on stop (a fresh one next start) instead of keeping it stopped. */
      readonly removeOnStop: boolean;
      /** Prefix of the deterministic container name. */
      readonly namePrefix: string;
    };

export interface DockerProviderOptions {
  /** Unix socket of the engine API (`/var/run/docker.sock`, `/run/podman/podman.sock`). */
  readonly socketPath: string;
  /** API version prefix such as `v1.41`; absent: the engine's own current version. */
  readonly apiVersion?: string | undefined;
  /** Each engine call is cut after this long (and is then retryable). */
  readonly requestTimeoutMs: number;
  /** Value of the owner label: `list()` re-adopts only containers carrying it. */
  readonly owner: string;
  readonly container: ContainerSelection;
  readonly endpoint: EndpointRule;
  readonly health: HealthRule;
  /** Seconds the engine waits after SIGTERM before SIGKILL on stop. */
  readonly stopTimeoutS: number;
  readonly logger?: Logger | undefined;
}

export function createDockerProvider(options: DockerProviderOptions): DockerProvider {
  return new DockerProvider(options);
}

/** Docker container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. */
const containerNameRe = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/**
 * The deterministic name of the container for an instance in `create` mode. The hash covers
 * the owner and the exact pair, so the readable part may be lossy without risking a clash, and
 * two proxies with different owners on one engine never take each other's containers.
 */
export function containerNameFor(prefix: string, owner: string, ref: Pick<InstanceRef, 'resourceId' | 'instanceKey'>): string {
  const hash = createHash('sha256').update(`${owner}\0${ref.resourceId}\0${ref.instanceKey}`).digest('hex').slice(0, 12);
  const readable = ref.resourceId.replace(/[^a-zA-Z0-9_.-]/g, '_').slice(0, 40);
  return `${prefix}${readable}-${hash}`;
}

/** Fills a container-name template; `{instanceKey}` (from requests) in its safe form (safe-values.ts). */
export function expandTemplate(template: string, ref: Pick<InstanceRef, 'resourceId' | 'instanceKey'>): string {
  return template.replaceAll('{resourceId}', ref.resourceId).replaceAll('{instanceKey}', safePlaceholderValue(ref.instanceKey));
}

interface EngineError { statusCode?: number; code?: string; name?: string; message?: string; json?: unknown }

function engineErr(err: unknown): EngineError {
  return typeof err === 'object' && err !== null ? err : { message: String(err) };
}

function statusOf(err: unknown): number | undefined {
  const s = engineErr(err).statusCode;
  return typeof s === 'number' ? s : undefined;
}

/** The engine's own message (`{"message": …}`), else the client's. */
function messageOf(err: unknown): string {
  const e = engineErr(err);
  const json = e.json;
  if (typeof json === 'object' && json !== null && typeof (json as { message?: unknown }).message === 'string') {
    return (json as { message: string }).message;
  }
  return e.message ?? 'unknown error';
}

export class DockerProvider implements Provider {
  readonly kind = 'docker';
  readonly #docker: Docker;
  readonly #o: DockerProviderOptions;
  readonly #log: Logger | undefined;
  /**
   * Containers this provider started and has not stopped since, by id: one of them that has
   * exited has crashed (`failed`), where an exited container we stopped is just `stopped`.
   */
  readonly #startedByUs = new Set<string>();

  constructor(options: DockerProviderOptions) {
    this.#o = options;
    this.#log = options.logger;
    // docker-modem starts from DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CLIENT_TIMEOUT; unset what
    // they could set, so that the socket and timeout from the config are the only ones in force.
    this.#docker = new Docker({
      socketPath: options.socketPath, version: options.apiVersion,
      host: undefined, port: undefined, protocol: undefined, timeout: undefined, ca: undefined, cert: undefined, key: undefined,
    });
  }

  async start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    return this.#call('start', ref, signal, async (abortSignal) => {
      let facts = await this.#find(ref, abortSignal);
      if (facts === undefined) {
        if (this.#o.container.mode === 'existing') {
          throw new ProviderError(`docker: ${this.#describeSelection(ref)} does not exist; create it first or use create mode`, { retryable: false, data: { resource: ref.resourceId } });
        }
        facts = await this.#create(ref, this.#o.container, abortSignal);
      }
      const container = this.#docker.getContainer(facts.id);
      if (facts.status === 'paused') {
        await container.unpause({ abortSignal });
      } else if (facts.status !== 'running' && facts.status !== 'restarting') {
        // 304: already started (a concurrent start won the race), which is what we want.
        await container.start({ abortSignal }).catch((err: unknown) => {
          if (statusOf(err) !== 304) throw err;
        });
      }
      this.#startedByUs.add(facts.id);
      return { handle: facts.id };
    });
  }

  async inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
    return this.#call('inspect', ref, signal, async (abortSignal) => {
      const facts = await this.#find(ref, abortSignal);
      if (facts === undefined) return { state: 'stopped' };
      return toInspectResult(facts, this.#o.endpoint, this.#o.health, this.#startedByUs.has(facts.id));
    });
  }

  async stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
    return this.#call('stop', ref, signal, async (abortSignal) => {
      const facts = await this.#find(ref, abortSignal);
      if (facts === undefined) return;
      this.#startedByUs.delete(facts.id);
      const container = this.#docker.getContainer(facts.id);
      // 304 (already stopped) and 404 (gone meanwhile) are what we want: stop is idempotent.
      await container.stop({ t: this.#o.stopTimeoutS, abortSignal }).catch((err: unknown) => {
        const s = statusOf(err);
        if (s !== 304 && s !== 404) throw err;
      });
      if (this.#o.container.mode === 'create' && this.#o.container.removeOnStop) {
        await container.remove({ force: true, abortSignal }).catch((err: unknown) => {
          // 409: removal already in progress (a concurrent stop).
          const s = statusOf(err);
          if (s !== 404 && s !== 409) throw err;
        });
      }
    });
  }

  async list(signal: AbortSignal): Promise<ListedInstance[]> {
    return this.#call('list', undefined, signal, async (abortSignal) => {
      const summaries = await this.#docker.listContainers({
        all: false,
        filters: { label: [`${labelKeys.owner}=${this.#o.owner}`] },
        abortSignal,
      });
      const out: ListedInstance[] = [];
      for (const s of summaries) {
        const resourceId = s.Labels[labelKeys.resource];
        const instanceKey = s.Labels[labelKeys.instanceKey];
        if (resourceId === undefined || instanceKey === undefined) continue;
        // The summary lacks health and per-network addresses: inspect each (few containers).
        const facts = await this.#inspectById(s.Id, abortSignal);
        if (facts === undefined) continue;
        const result = toInspectResult(facts, this.#o.endpoint, this.#o.health, true);
        if (result.state !== 'running' && result.state !== 'starting') continue;
        this.#startedByUs.add(facts.id);
        out.push({ ...result, resourceId, instanceKey, handle: facts.id });
      }
      return out;
    });
  }

  async close(): Promise<void> {
    // dockerode opens a connection per call and keeps no pool: nothing to release.
    this.#startedByUs.clear();
  }

  /** The container of an instance, or undefined when there is none. */
  async #find(ref: InstanceRef, abortSignal: AbortSignal): Promise<ContainerFacts | undefined> {
    const sel = this.#o.container;
    if (sel.mode === 'create') {
      return this.#inspectByName(containerNameFor(sel.namePrefix, this.#o.owner, ref), abortSignal);
    }
    if (sel.name !== undefined) return this.#inspectByName(expandTemplate(sel.name, ref), abortSignal);
    const labels = Object.entries(sel.labels ?? {}).map(([k, v]) => `${k}=${expandTemplate(v, ref)}`);
    const found = await this.#docker.listContainers({ all: true, filters: { label: labels }, abortSignal });
    if (found.length === 0) return undefined;
    if (found.length > 1) {
      throw new ProviderError(`docker: labels ${labels.join(', ')} match ${found.length} containers (${found.map((c) => c.Names.join('|')).join(', ')}); exactly one must match`, {
        retryable: false, data: { resource: ref.resourceId },
      });
    }
    return this.#inspectById(found[0]!.Id, abortSignal);
  }

  async #inspectByName(name: string, abortSignal: AbortSignal): Promise<ContainerFacts | undefined> {
    if (!containerNameRe.test(name)) {
      throw new ProviderError(`docker: "${name}" is not a valid container name`, { retryable: false });
    }
    const facts = await this.#inspectById(name, abortSignal);
    // The engine also resolves ID prefixes: a container is ours only by its exact name.
    return facts !== undefined && facts.name === name ? facts : undefined;
  }

  async #inspectById(idOrName: string, abortSignal: AbortSignal): Promise<ContainerFacts | undefined> {
    let raw: unknown;
    try {
      raw = await this.#docker.getContainer(idOrName).inspect({ abortSignal });
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
    try {
      return readContainerFacts(raw);
    } catch (err) {
      throw new ProviderError(`docker: unexpected inspect answer for ${idOrName}: ${(err as Error).message}`, { retryable: true, cause: err });
    }
  }

  async #create(ref: InstanceRef, sel: Extract<ContainerSelection, { mode: 'create' }>, abortSignal: AbortSignal): Promise<ContainerFacts> {
    const name = containerNameFor(sel.namePrefix, this.#o.owner, ref);
    const port = `${this.#o.endpoint.containerPort}/tcp`;
    const labels: Record<string, string> = {};
    for (const [k, v] of Object.entries(sel.labels ?? {})) labels[k] = expandTemplate(v, ref);
    labels[labelKeys.owner] = this.#o.owner;
    labels[labelKeys.resource] = ref.resourceId;
    labels[labelKeys.instanceKey] = ref.instanceKey;
    const hostConfig: Docker.HostConfig = {};
    if (this.#o.endpoint.mode === 'published') {
      // HostPort "": the engine picks a free port, so instances never race for one.
      hostConfig.PortBindings = { [port]: [{ HostIp: this.#o.endpoint.hostIp, HostPort: '' }] };
    }
    if (sel.networkMode !== undefined) hostConfig.NetworkMode = sel.networkMode;
    try {
      await this.#docker.createContainer({
        name,
        Image: sel.image,
        ...(sel.cmd !== undefined ? { Cmd: [...sel.cmd] } : {}),
        ...(sel.env !== undefined ? { Env: Object.entries(sel.env).map(([k, v]) => `${k}=${v}`) } : {}),
        Labels: labels,
        ...(sel.healthcheck !== undefined ? { Healthcheck: {
          Test: [...sel.healthcheck.test],
          // The API counts in nanoseconds.
          Interval: sel.healthcheck.intervalMs * 1e6,
          Timeout: sel.healthcheck.timeoutMs * 1e6,
          Retries: sel.healthcheck.retries,
          StartPeriod: sel.healthcheck.startPeriodMs * 1e6,
        } } : {}),
        ExposedPorts: { [port]: {} },
        HostConfig: hostConfig,
        abortSignal,
      });
      this.#log?.info({ resource: ref.resourceId, instance: ref.instanceKey, container: name, image: sel.image }, 'container created');
    } catch (err) {
      if (statusOf(err) === 404) {
        throw new ProviderError(`docker: image "${sel.image}" is not present on the engine (this provider never pulls): ${messageOf(err)}`, {
          retryable: false, data: { resource: ref.resourceId, image: sel.image }, cause: err,
        });
      }
      // A concurrent start may have created it first: Docker says 409, Podman 500 "name is
      // already in use". Either way, if the container exists now, it is the one to use.
      // Podman reserves the name before the container can be inspected, so the winner may
      // still be mid-create: look again briefly before giving up.
      const nameTaken = statusOf(err) === 409 || /already in use/.test(messageOf(err));
      for (let attempt = 0; ; attempt++) {
        const existing = await this.#inspectByName(name, abortSignal).catch(() => undefined);
        if (existing !== undefined) return existing;
        if (!nameTaken || attempt >= 40 || abortSignal.aborted) throw err;
        await pause(50, undefined, { signal: abortSignal }).catch(() => undefined);
      }
    }
    const facts = await this.#inspectByName(name, abortSignal);
    if (facts === undefined) throw new ProviderError(`docker: container ${name} vanished right after it was created`, { retryable: true });
    return facts;
  }

  #describeSelection(ref: InstanceRef): string {
    const sel = this.#o.container;
    if (sel.mode === 'create') return `container ${containerNameFor(sel.namePrefix, this.#o.owner, ref)}`;
    if (sel.name !== undefined) return `container "${expandTemplate(sel.name, ref)}"`;
    return `a container with labels ${Object.entries(sel.labels ?? {}).map(([k, v]) => `${k}=${expandTemplate(v, ref)}`).join(', ')}`;
  }

  /**
   * Runs one provider call under the caller's signal and the per-call timeout, and turns
   * engine and socket failures into ProviderErrors: the engine unreachable, a timeout, 5xx or
   * 429 are retryable; other 4xx are not (the request itself is wrong).
   */
  async #call<T>(what: string, ref: InstanceRef | undefined, signal: AbortSignal, body: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    const timeout = AbortSignal.timeout(this.#o.requestTimeoutMs);
    const abortSignal = AbortSignal.any([signal, timeout]);
    const where = ref === undefined ? {} : { resource: ref.resourceId, instance: ref.instanceKey };
    try {
      if (abortSignal.aborted) throw abortSignal.reason as Error;
      return await body(abortSignal);
    } catch (err) {
      // The caller gave up: reject with its reason (ports.ts), whatever the client made of it.
      if (signal.aborted) throw signal.reason;
      if (err instanceof ProviderError) throw err;
      if (timeout.aborted) {
        throw new ProviderError(`docker ${what}: the engine did not answer within ${this.#o.requestTimeoutMs} ms`, { retryable: true, data: where, cause: err });
      }
      const status = statusOf(err);
      const e = engineErr(err);
      if (status === undefined) {
        // No HTTP answer: socket missing, refused, reset. The engine may be restarting.
        const hint = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? ` (is the engine running at ${this.#o.socketPath}?)` : '';
        throw new ProviderError(`docker ${what}: cannot reach the engine: ${e.code ?? messageOf(err)}${hint}`, { retryable: true, data: where, cause: err });
      }
      throw new ProviderError(`docker ${what}: engine answered ${status}: ${messageOf(err)}`, {
        retryable: status >= 500 || status === 429, data: { ...where, status }, cause: err,
      });
    }
  }
}

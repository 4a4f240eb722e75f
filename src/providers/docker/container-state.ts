/**
 * Turns a Docker Engine API `GET /containers/{id}/json` answer into the core's view of an
 * instance. Pure, so every branch is tested without an engine. The answer is external input:
 * it is read field by field and a missing or odd field gives a clear state, never a crash.
 */
import type { InspectResult } from '../../core/ports.ts';

/** How the endpoint is found (see docs/providers/docker.md). */
export interface EndpointRule {
  /** `published`: the host port the engine published for `containerPort`; `network`: the container's own address. */
  readonly mode: 'published' | 'network';
  /** The port the service listens on inside the container. */
  readonly containerPort: number;
  /** Host address used when the port is published on a wildcard address (0.0.0.0, ::, ""). */
  readonly hostIp: string;
  /** For `network`: the network whose address to use; default the first with an address. */
  readonly network?: string | undefined;
  readonly scheme: 'http' | 'https';
}

export interface HealthRule {
  /** `ignore`: running means running, whatever the healthcheck says (an engine that never runs it). */
  readonly use: boolean;
  /** What an `unhealthy` status means while the core waits for readiness. */
  readonly unhealthyAs: 'starting' | 'failed';
}

/** The few fields of a container inspect this provider reads. */
export interface ContainerFacts {
  readonly id: string;
  /** Without the leading "/". */
  readonly name: string;
  readonly status: string;
  readonly exitCode: number;
  readonly error: string;
  readonly oomKilled: boolean;
  readonly health: string | undefined;
  readonly healthOutput: string | undefined;
  readonly labels: Readonly<Record<string, string>>;
  /** `"80/tcp"` → bindings, as in `NetworkSettings.Ports`. */
  readonly ports: Readonly<Record<string, ReadonlyArray<{ readonly hostIp: string; readonly hostPort: string }>>>;
  /** Network name → IP address (non-empty ones only). */
  readonly networks: Readonly<Record<string, string>>;
  readonly ipAddress: string;
}

const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : {});
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/** Reads an inspect answer; throws a plain Error naming what is missing when it is not one. */
export function readContainerFacts(raw: unknown): ContainerFacts {
  const top = obj(raw);
  const id = str(top.Id);
  if (id === '') throw new Error('container inspect answer has no Id');
  const state = obj(top.State);
  const health = obj(state.Health);
  const log = Array.isArray(health.Log) ? health.Log : [];
  const lastLog = obj(log[log.length - 1]);
  const config = obj(top.Config);
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(config.Labels))) if (typeof v === 'string') labels[k] = v;
  const net = obj(top.NetworkSettings);
  const ports: Record<string, Array<{ hostIp: string; hostPort: string }>> = {};
  for (const [k, v] of Object.entries(obj(net.Ports))) {
    if (!Array.isArray(v)) continue;
    ports[k] = v.map((b) => ({ hostIp: str(obj(b).HostIp), hostPort: str(obj(b).HostPort) })).filter((b) => b.hostPort !== '');
  }
  const networks: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(net.Networks))) {
    const ip = str(obj(v).IPAddress);
    if (ip !== '') networks[k] = ip;
  }
  const healthStatus = str(health.Status);
  return {
    id,
    name: str(top.Name).replace(/^\//, ''),
    status: str(state.Status),
    exitCode: typeof state.ExitCode === 'number' ? state.ExitCode : 0,
    error: str(state.Error),
    oomKilled: state.OOMKilled === true,
    // Docker says "none" (or omits Health) when the image defines no healthcheck.
    health: healthStatus === '' || healthStatus === 'none' ? undefined : healthStatus,
    healthOutput: str(lastLog.Output).trim().slice(0, 200) || undefined,
    labels,
    ports,
    networks,
    ipAddress: str(net.IPAddress),
  };
}

/** `http://host:port` for the container, or a reason why there is none (yet). */
export function endpointOf(c: ContainerFacts, rule: EndpointRule): { url: string } | { missing: string } {
  if (rule.mode === 'network') {
    const ip = rule.network !== undefined ? c.networks[rule.network] : (Object.values(c.networks)[0] ?? (c.ipAddress || undefined));
    if (ip === undefined) {
      return { missing: rule.network !== undefined ? `the container has no address on network "${rule.network}"` : 'the container has no network address' };
    }
    return { url: `${rule.scheme}://${hostForUrl(ip)}:${rule.containerPort}` };
  }
  const bindings = c.ports[`${rule.containerPort}/tcp`] ?? [];
  // Prefer the binding on the configured address, then a wildcard one (reached through hostIp).
  const exact = bindings.find((b) => b.hostIp === rule.hostIp);
  const wildcard = bindings.find((b) => b.hostIp === '' || b.hostIp === '0.0.0.0' || b.hostIp === '::');
  const chosen = exact ?? wildcard ?? bindings[0];
  if (chosen === undefined) return { missing: `container port ${rule.containerPort}/tcp is not published on the host` };
  const host = chosen === exact || chosen === wildcard ? rule.hostIp : chosen.hostIp;
  return { url: `${rule.scheme}://${hostForUrl(host)}:${chosen.hostPort}` };
}

function hostForUrl(ip: string): string {
  return ip.includes(':') ? `[${ip}]` : ip;
}

/**
 * The core's view of a container.
 * @param startedByUs whether this provider started the container and has not stopped it since:
 *   a container that exits then has crashed (`failed`); otherwise an exited container is just `stopped`.
 */
export function toInspectResult(c: ContainerFacts, rule: EndpointRule, health: HealthRule, startedByUs: boolean): InspectResult {
  const handle = c.id;
  switch (c.status) {
    case 'running': {
      if (health.use && c.health !== undefined && c.health !== 'healthy') {
        if (c.health === 'unhealthy' && health.unhealthyAs === 'failed') {
          return { state: 'failed', handle, reason: `container ${c.name} is unhealthy${c.healthOutput ? `: ${c.healthOutput}` : ''}` };
        }
        return { state: 'starting', handle };
      }
      const ep = endpointOf(c, rule);
      // The engine sets ports and addresses as part of the start: missing now is a config error.
      if ('missing' in ep) return { state: 'failed', handle, reason: `container ${c.name}: ${ep.missing}` };
      return { state: 'running', endpoint: ep.url, handle };
    }
    case 'restarting':
      return { state: 'starting', handle };
    case 'removing':
    case 'stopping':
      return { state: 'stopping', handle };
    case 'created':
    case 'configured': // Podman's word for created
    case 'exited':
    case 'stopped': // Podman
    case 'dead': {
      if (c.error !== '') return { state: 'failed', handle, reason: `container ${c.name}: ${c.error}` };
      if (c.status === 'dead') return { state: 'failed', handle, reason: `container ${c.name} is dead` };
      if (startedByUs && c.status !== 'created' && c.status !== 'configured') {
        return { state: 'failed', handle, reason: `container ${c.name} exited with code ${c.exitCode}${c.oomKilled ? ' (out of memory)' : ''}` };
      }
      return { state: 'stopped', handle };
    }
    case 'paused':
      // Not answering; start() unpauses it.
      return { state: 'stopped', handle };
    default:
      return { state: 'failed', handle, reason: `container ${c.name} is in an unknown state "${c.status}"` };
  }
}

/**
 * Front-proxy mode, assembled: the decision listener and the busy checker, built by
 * main.ts when `front.enabled`. It talks to the core like the data plane does (admission,
 * instance selection, activity marks) and writes no field of the core's objects.
 */
import type { IncomingMessage } from 'node:http';
import type { Config } from '../config/schema.ts';
import type { Clock, Logger } from '../core/ports.ts';
import type { ResourceManager } from '../core/resource-manager.ts';
import type { Admission } from '../proxy/forward-ws.ts';
import type { BackendHeaders } from '../proxy/server.ts';
import { BusyChecker } from './busy-checker.ts';
import { DecisionServer } from './decision-server.ts';
import { UpstreamNames } from './upstreams.ts';

export interface FrontModeOptions {
  readonly config: Config;
  readonly manager: ResourceManager;
  readonly admit: (req: IncomingMessage) => Promise<Admission>;
  readonly backendHeaders: BackendHeaders | undefined;
  readonly clock: Clock;
  readonly logger: Logger;
}

export interface FrontMode {
  readonly decisionUrl: string;
  readonly decisions: DecisionServer;
  readonly busy: BusyChecker;
  /** Every later decision is "via Smart Proxy" (draining answers 503 there). */
  startDraining(): void;
  close(): Promise<void>;
}

export async function startFrontMode(o: FrontModeOptions): Promise<FrontMode> {
  const { config } = o;
  const busy = new BusyChecker({
    manager: o.manager, clock: o.clock, logger: o.logger,
    control: config.front.nginx.controlListen, intervalMs: config.front.busyCheckIntervalMs,
  });
  const providers = Object.values(config.resources).map((r) => (typeof r.provider === 'string' ? config.providers[r.provider] : r.provider));
  const decisions = new DecisionServer({
    manager: o.manager,
    admit: o.admit,
    backendHeaders: o.backendHeaders,
    identityHeaderNames: config.access.backendHeaders,
    upstreams: new UpstreamNames(providers.filter((p) => p !== undefined)),
    grantTtlMs: config.front.grantTtlMs,
    reachableTimeoutMs: config.upstream.connectTimeoutMs,
    clock: o.clock,
    logger: o.logger,
    onGrant: (id) => busy.watch(id),
  });
  const addr = await decisions.listen(config.front.decision.port, config.front.decision.host);
  busy.start();
  const decisionUrl = `http://${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`;
  o.logger.info({ decision: decisionUrl, grantTtlMs: config.front.grantTtlMs, control: config.front.nginx.controlListen }, 'front-proxy mode: decisions listening');
  return {
    decisionUrl,
    decisions,
    busy,
    startDraining: () => decisions.startDraining(),
    close: async () => {
      busy.close();
      await decisions.close();
    },
  };
}

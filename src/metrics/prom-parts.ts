/**
 * prom-client's registry and the three metric types Smart Proxy uses, loaded from their own
 * files rather than from prom-client's index. The index also loads the Pushgateway (http,
 * https), every default process metric (and with them @opentelemetry/api) and the cluster
 * aggregator: measured, about 200M instructions at every start-up, as much as
 * the rest of a one-resource start's metrics and more (docs/benchmarks.md, "Sixth pass on
 * issue 14"), for nothing used here.
 *
 * prom-client has no `exports` map, so these files are reachable as Node resolves any package
 * file; test/lifecycle/start-up-modules.test.ts checks that they are the very classes the
 * index exports (an upgrade that moves them fails there).
 */
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';

const requireCjs = createRequire(import.meta.url);

export const Registry = requireCjs('prom-client/lib/registry.js') as typeof PromClient.Registry;
export type Registry = PromClient.Registry;
export const Counter = requireCjs('prom-client/lib/counter.js') as typeof PromClient.Counter;
export type Counter<T extends string = string> = PromClient.Counter<T>;
export const Gauge = requireCjs('prom-client/lib/gauge.js') as typeof PromClient.Gauge;
export type Gauge<T extends string = string> = PromClient.Gauge<T>;
export const Histogram = requireCjs('prom-client/lib/histogram.js') as typeof PromClient.Histogram;
export type Histogram<T extends string = string> = PromClient.Histogram<T>;

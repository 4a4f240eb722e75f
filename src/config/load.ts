/**
 * Reads the configuration once: YAML → schema → typed `Config`. Errors name the field, the
 * value, what was expected and the line, so an operator can fix a file without reading code.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';
import type { Document, LineCounter } from 'yaml';
import type { z } from 'zod';
import { configSchema, resourceBuiltinDefaults, type Config, type KeepWarmConfig, type ProbeConfig, type ProviderConfig, type ResourceAccessConfig, type ResourceConfig } from './schema.ts';
import { SmartProxyError } from '../core/errors.ts';
import { defaultParseCache, type ParseCache } from './parse-cache.ts';
import { parsePlainYaml } from './plain-yaml.ts';
import { closestKey, knownKeysAt } from './suggest.ts';

/**
 * The yaml library, loaded on first use: a text in plain YAML never needs it (plain-yaml.ts),
 * and loading it is ~25 ms of start-up.
 */
let yamlLib: typeof Yaml | undefined;
const yaml = (): typeof Yaml => (yamlLib ??= createRequire(import.meta.url)('yaml') as typeof Yaml);

export class ConfigError extends SmartProxyError {
  readonly problems: readonly string[];

  constructor(source: string, problems: readonly string[]) {
    super('SP_CONFIG_INVALID', `invalid configuration in ${source}:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/**
 * Parses and validates YAML text. `source` names the file in messages. A text in plain YAML
 * is read by the fast path (plain-yaml.ts); with a `cache`, another text parsed before skips
 * the YAML parse (see parse-cache.ts). Validation always runs; a text that fails anywhere is
 * parsed again in full, so that errors always come from one place, with their lines.
 */
export function parseConfig(text: string, source = '<config>', cache?: ParseCache): Config {
  const plain = parsePlainYaml(text);
  const known = plain ?? cache?.get(text);
  if (known !== undefined) {
    const fast = configSchema.safeParse(known);
    if (fast.success) return fast.data;
    // Invalid under this schema: the full parse below reports it with line numbers.
  }
  const { LineCounter, parseDocument } = yaml();
  const lineCounter = new LineCounter();
  // yaml's own uniqueKeys check compares every key with every other (O(n²): 10 s for 10,000
  // resources); duplicateKeyErrors does the same check with a Set per map.
  const doc = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: false });
  const duplicates = duplicateKeyErrors(doc, lineCounter);
  if (duplicates.length > 0) throw new ConfigError(source, duplicates);
  if (doc.errors.length > 0) {
    throw new ConfigError(source, doc.errors.map((e) => {
      const pos = e.linePos?.[0];
      const message = (e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '');
      return `${pos ? `line ${pos.line}, column ${pos.col}: ` : ''}${message}`;
    }));
  }
  const raw: unknown = doc.toJS({ maxAliasCount: 100 }) ?? {};
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    throw new ConfigError(source, result.error.issues.flatMap((issue) => (issue.code === 'unrecognized_keys'
      ? unknownKeys(issue, doc, lineCounter)
      : [describeIssue(issue, raw, doc, lineCounter)])));
  }
  // A plain text is read fast anyway: caching it would only cost a write.
  if (plain === undefined) cache?.set(text, raw);
  return result.data;
}

/** Keys that appear twice in one mapping, as `line L, column C: …` messages. */
function duplicateKeyErrors(doc: Document, lines: LineCounter): string[] {
  const { isNode, isScalar, visit } = yaml();
  const problems: string[] = [];
  visit(doc, {
    Map(_key, map) {
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        const k: unknown = isScalar(pair.key) ? pair.key.value : pair.key;
        if (!seen.has(k)) {
          seen.add(k);
          continue;
        }
        const range = isNode(pair.key) ? pair.key.range : undefined;
        const pos = range ? lines.linePos(range[0]) : undefined;
        problems.push(`${pos ? `line ${pos.line}, column ${pos.col}: ` : ''}Map keys must be unique ("${String(k)}" appears twice)`);
      }
    },
  });
  return problems;
}

/**
 * Reads and validates a YAML file. Large files use the parse cache (`defaultParseCache`) unless
 * `cache` says otherwise (`null`: none).
 */
export async function loadConfigFile(file: string, cache: ParseCache | null | undefined = defaultParseCache()): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  return parseConfig(text, file, cache ?? undefined);
}

/** One problem per unknown key, at the key's own line, with the closest known key. */
function unknownKeys(issue: z.core.$ZodIssueUnrecognizedKeys, doc: Document, lines: LineCounter): string[] {
  const { isMap, isNode, isScalar } = yaml();
  const map = doc.getIn(issue.path, true);
  const known = knownKeysAt(configSchema, issue.path);
  return issue.keys.map((key) => {
    const pair = isMap(map) ? map.items.find((p) => isScalar(p.key) && String(p.key.value) === key) : undefined;
    const range = isScalar(pair?.key) ? pair.key.range : isNode(map) ? map.range : undefined;
    const where = range ? `line ${lines.linePos(range[0]).line}: ` : '';
    const field = [...issue.path.map(String), key].join('.');
    const guess = closestKey(key, known);
    return `${where}${field}: unknown field${guess === undefined ? '' : ` (did you mean "${guess}"?)`}`;
  });
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown, doc: Document, lines: LineCounter): string {
  const { isNode } = yaml();
  const path = issue.path.map(String);
  const field = path.length > 0 ? path.join('.') : '(top level)';
  let where = '';
  const node = doc.getIn(issue.path, true);
  const range = isNode(node) ? node.range : undefined;
  if (range) {
    const pos = lines.linePos(range[0]);
    where = `line ${pos.line}: `;
  }
  let valueText = '';
  const value = getPath(raw, issue.path);
  if (value !== undefined && issue.code !== 'unrecognized_keys') {
    valueText = ` (got ${truncate(JSON.stringify(value))})`;
  }
  let message = issue.message;
  if (issue.code === 'unrecognized_keys') message = `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  return `${where}${field}: ${message}${valueText}`;
}

function getPath(root: unknown, path: readonly PropertyKey[]): unknown {
  let cur = root;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

function truncate(s: string | undefined, max = 80): string {
  if (s === undefined) return 'undefined';
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/** A resource with the defaults merged in, every field present. */
export interface EffectiveResource {
  readonly id: string;
  readonly provider: ProviderConfig;
  readonly providerName: string;
  readonly serviceId: string;
  readonly sharing: 'shared' | 'groups' | 'user';
  readonly bootTimeoutMs: number;
  readonly holdTimeoutMs: number;
  readonly probe: ProbeConfig;
  readonly probeIntervalMs: number;
  readonly pollIntervalMinMs: number;
  readonly pollIntervalMaxMs: number;
  readonly providerCallTimeoutMs: number;
  readonly failureCooldownMs: number;
  readonly maxHeldRequests: number;
  readonly idleStopMs: number;
  /** Undefined: any origin may open WebSockets. */
  readonly websocketAllowedOrigins: readonly string[] | undefined;
  /** Cross-origin calls from pages; undefined: preflights go through the access steps. */
  readonly cors: ResourceConfig['cors'];
  readonly waiting: {
    readonly browserPage: boolean;
    /** Already capped at holdTimeoutMs. */
    readonly defaultWaitMs: number;
    readonly themeDir: string | undefined;
  };
  readonly releaseConcurrency: number;
  readonly healthCheckIntervalMs: number;
  readonly keepWarm: KeepWarmConfig | undefined;
  /** The resource's access policy; a resource-level `access` replaces the default as a whole. */
  readonly access: ResourceAccessConfig;
  /** TLS towards an https: endpoint; undefined: the defaults (system roots, host name checked). */
  readonly backendTls: ResourceConfig['backendTls'];
}

const defaultProbe: ProbeConfig = { kind: 'http', path: '/', expectStatus: ['2xx', '3xx', '4xx'], timeoutMs: 1000 };

const builtinDefaults = { ...resourceBuiltinDefaults, probe: defaultProbe };

/** Merges resource, resourceDefaults and built-in defaults, in that order of precedence. */
export function effectiveResources(cfg: Config): EffectiveResource[] {
  const d = cfg.resourceDefaults;
  return Object.entries(cfg.resources).map(([id, r]: [string, ResourceConfig]) => {
    const provider = typeof r.provider === 'string' ? cfg.providers[r.provider] : r.provider;
    if (provider === undefined) throw new ConfigError('<config>', [`resources.${id}.provider: unknown provider "${typeof r.provider === 'string' ? r.provider : r.provider.kind}"`]);
    const bootTimeoutMs = r.bootTimeoutMs ?? d.bootTimeoutMs ?? builtinDefaults.bootTimeoutMs;
    const holdTimeoutMs = r.holdTimeoutMs ?? d.holdTimeoutMs ?? bootTimeoutMs;
    return {
      id,
      provider,
      providerName: typeof r.provider === 'string' ? r.provider : `${id}:inline`,
      serviceId: r.serviceId ?? id,
      sharing: r.sharing ?? d.sharing ?? builtinDefaults.sharing,
      bootTimeoutMs,
      holdTimeoutMs,
      probe: r.probe ?? d.probe ?? builtinDefaults.probe,
      probeIntervalMs: r.probeIntervalMs ?? d.probeIntervalMs ?? builtinDefaults.probeIntervalMs,
      pollIntervalMinMs: r.pollIntervalMinMs ?? d.pollIntervalMinMs ?? builtinDefaults.pollIntervalMinMs,
      pollIntervalMaxMs: r.pollIntervalMaxMs ?? d.pollIntervalMaxMs ?? builtinDefaults.pollIntervalMaxMs,
      providerCallTimeoutMs: r.providerCallTimeoutMs ?? d.providerCallTimeoutMs ?? builtinDefaults.providerCallTimeoutMs,
      failureCooldownMs: r.failureCooldownMs ?? d.failureCooldownMs ?? builtinDefaults.failureCooldownMs,
      maxHeldRequests: r.maxHeldRequests ?? d.maxHeldRequests ?? cfg.limits.maxHeldRequestsPerResource,
      idleStopMs: r.idleStopMs ?? d.idleStopMs ?? builtinDefaults.idleStopMs,
      websocketAllowedOrigins: r.websocket?.allowedOrigins ?? d.websocket?.allowedOrigins,
      cors: r.cors ?? d.cors,
      waiting: {
        browserPage: r.waiting?.browserPage ?? d.waiting?.browserPage ?? true,
        defaultWaitMs: Math.min(holdTimeoutMs, r.waiting?.defaultWaitMs ?? d.waiting?.defaultWaitMs ?? holdTimeoutMs),
        themeDir: r.waiting?.themeDir ?? d.waiting?.themeDir,
      },
      releaseConcurrency: r.releaseConcurrency ?? d.releaseConcurrency ?? builtinDefaults.releaseConcurrency,
      healthCheckIntervalMs: r.healthCheckIntervalMs ?? d.healthCheckIntervalMs ?? builtinDefaults.healthCheckIntervalMs,
      keepWarm: r.keepWarm ?? d.keepWarm,
      access: r.access ?? d.access ?? { public: false, passCredentials: false, passAccessToken: false },
      backendTls: r.backendTls ?? d.backendTls,
    };
  });
}

/** Expands `["2xx", 404]` into the list of statuses. */
export function expandStatuses(spec: ReadonlyArray<number | string>): number[] {
  const out = new Set<number>();
  for (const s of spec) {
    if (typeof s === 'number') out.add(s);
    else {
      const base = Number(s[0]) * 100;
      for (let i = 0; i < 100; i++) out.add(base + i);
    }
  }
  return [...out].sort((a, b) => a - b);
}

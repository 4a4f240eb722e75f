/**
 * Reads the configuration once: YAML → schema → typed `Config`. Errors name the field, the
 * value, what was expected and the line, so an operator can fix a file without reading code.
 */
import { open } from 'node:fs/promises';
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
  /** What the problems are in: a file, a flag, or (past loading) a config path such as `providers.nova`. */
  readonly source: string;
  readonly problems: readonly string[];

  constructor(source: string, problems: readonly string[]) {
    super('SP_CONFIG_INVALID', `invalid configuration in ${source}:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
    this.source = source;
    this.problems = problems;
  }

  /**
   * The same problems told as being in `file`: a problem found past loading (a secret's
   * environment variable, say) names a config path, and the operator needs the file too.
   */
  inFile(file: string): ConfigError {
    if (this.source === file) return this;
    const path = this.source === '<config>' ? '' : this.source;
    return new ConfigError(file, this.problems.map((p) => (path === '' ? p : /^[\w.[\]-]+: /.test(p) ? `${path}.${p}` : `${path}: ${p}`)));
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
    // One mistake (a stray brace, a bad indent) makes the parser report every token after it:
    // the first few name the place, the rest only bury it.
    const shown = doc.errors.slice(0, maxSyntaxErrors).map((e) => {
      const pos = e.linePos?.[0];
      const message = truncate((e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, ''), 160);
      return `${pos ? `line ${pos.line}, column ${pos.col}: ` : ''}${message}`;
    });
    // The usual cause: a URL template or a list written inside a one-line { … } / [ … ], where
    // { } [ ] , are YAML's own punctuation unless quoted.
    if (/^Unexpected (?:flow-(?:map|seq)-(?:start|end)|comma)/.test(doc.errors[0]?.message ?? '')) shown.push('hint: inside { … } or [ … ], quote a value that holds { } [ ] or a comma: url: \'/servers/{serviceId}\'');
    if (doc.errors.length > maxSyntaxErrors) shown.push(`… and ${doc.errors.length - maxSyntaxErrors} more YAML errors, most likely following from the first`);
    throw new ConfigError(source, shown);
  }
  if (doc.contents === null) {
    throw new ConfigError(source, ['the file is empty (or holds only comments): a config needs at least `resources` (and the `providers` they name); examples/demo.yaml is a complete one']);
  }
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    // yaml refuses aliases that would expand past maxAliasCount (a "billion laughs" text).
    throw new ConfigError(source, [`YAML aliases expand too far (${(err as Error).message}): anchors and aliases (&name, *name) may share a few settings, not multiply a document`]);
  }
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
  return parseConfig(await readConfigText(file), file, cache ?? undefined);
}

/** A config larger than this is refused before it is read: 10,000 resources take about 0.6 MB. */
export const maxConfigBytes = 16 * 1024 * 1024;
/** Syntax errors listed for one text; the count of the rest follows them. */
const maxSyntaxErrors = 5;

/**
 * The file's text, or a ConfigError that says in plain words what is wrong with the file
 * itself: missing, a directory, too large (a wrong path can name a disk image or a log), or
 * not UTF-8 text (decoding would otherwise turn stray bytes into U+FFFD without a word).
 */
async function readConfigText(file: string): Promise<string> {
  let bytes: Buffer;
  try {
    const handle = await open(file, 'r');
    try {
      const stat = await handle.stat();
      if (stat.isDirectory()) throw new ConfigError(file, ['is a directory, not a config file: name the YAML file in it']);
      if (stat.size > maxConfigBytes) {
        throw new ConfigError(file, [`is ${(stat.size / 1024 / 1024).toFixed(1)} MiB; a config file may be at most ${maxConfigBytes / 1024 / 1024} MiB (is this the right file?)`]);
      }
      // Read at most one byte past the bound: a file that grows while read is still bounded.
      const buf = Buffer.alloc(Math.min(stat.size, maxConfigBytes) + 1);
      let length = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buf, length, buf.length - length, length);
        if (bytesRead === 0) break;
        length += bytesRead;
        if (length === buf.length) break;
      }
      if (length > maxConfigBytes) throw new ConfigError(file, [`grew past ${maxConfigBytes / 1024 / 1024} MiB while it was read; a config file may be at most that`]);
      bytes = buf.subarray(0, length);
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'EISDIR' ? 'is a directory, not a config file: name the YAML file in it'
      : e.code === 'ENOENT' ? 'cannot read the file: it does not exist'
        : e.code === 'EACCES' ? 'cannot read the file: permission denied'
          : `cannot read the file: ${e.message}`;
    throw new ConfigError(file, [why]);
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ConfigError(file, [`line ${lineOfFirstBadByte(bytes)}: not UTF-8 text: save the file as UTF-8 (is it a YAML file?)`]);
  }
}

/** The 1-based line of the first byte sequence that is not UTF-8. */
function lineOfFirstBadByte(bytes: Buffer): number {
  // Valid UTF-8 round-trips byte for byte; the first byte that differs is the first bad one.
  const good = Buffer.from(new TextDecoder('utf-8').decode(bytes), 'utf8');
  let i = 0;
  while (i < bytes.length && i < good.length && bytes[i] === good[i]) i++;
  let line = 1;
  for (let j = 0; j < i; j++) if (bytes[j] === 0x0a) line++;
  return line;
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
  // A missing field has no node: the line of the nearest enclosing one (the resource, the
  // provider, …) is where it belongs.
  let range: readonly number[] | undefined;
  for (let n = issue.path.length; n > 0 && range === undefined; n--) {
    const node = doc.getIn(issue.path.slice(0, n), true);
    range = isNode(node) ? node.range ?? undefined : undefined;
  }
  if (range) {
    const pos = lines.linePos(range[0]!);
    where = `line ${pos.line}: `;
  }
  let valueText = '';
  const value = getPath(raw, issue.path);
  if (value !== undefined && issue.code !== 'unrecognized_keys') {
    valueText = ` (got ${truncate(JSON.stringify(value))})`;
  }
  let message = issue.message;
  if (issue.code === 'unrecognized_keys') message = `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  // zod says "Invalid input" (or "expected record, received undefined") for a field that is
  // simply not there; an operator wants to read that it is missing.
  else if (value === undefined && getPath(raw, issue.path.slice(0, -1)) !== undefined && (issue.code === 'invalid_type' || issue.code === 'invalid_union')) {
    message = issue.code === 'invalid_type' ? `required, but missing (expected ${yamlTypeName(issue.expected)})` : 'required, but missing';
  }
  return `${where}${field}: ${message}${valueText}${misindented(issue.path)}`;
}

/**
 * A top-level section under a map of named entries (`resources:` indented under `providers:`)
 * reads as an entry named like the section: say what most likely happened.
 */
function misindented(path: readonly PropertyKey[]): string {
  const [section, name] = path;
  if (typeof section !== 'string' || typeof name !== 'string' || section === name || !['providers', 'resources'].includes(section)) return '';
  return knownKeysAt(configSchema, []).includes(name) ? ` (is \`${name}:\` indented under \`${section}:\` by mistake?)` : '';
}

/** zod's type names in YAML's words. */
function yamlTypeName(expected: string): string {
  return expected === 'record' || expected === 'object' ? 'a mapping' : expected === 'array' ? 'a list' : `a ${expected}`;
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
  /** The provider is defined in the resource itself (named `<id>:inline`), not under `providers:`. */
  readonly inlineProvider: boolean;
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
      inlineProvider: typeof r.provider !== 'string',
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

/**
 * The `http` provider: drives any REST cloud by configuration alone. `start`, `inspect` and
 * `stop` are each an HTTP request built from templates; `inspect` maps the answer to the
 * core's state (JSON Pointer + a value map), an endpoint and a handle. See
 * docs/providers/http.md for the semantics, examples/atmosphere-v1.yaml and
 * examples/openstack-nova.yaml for two real APIs.
 *
 * Errors: network failures, timeouts, 5xx, 408 and 429 are retryable ProviderErrors (the
 * core retries within the boot deadline); other unexpected statuses and answers that do not
 * match the mapping are non-retryable with a message that names the request and what was
 * expected. Credentials never appear in messages or logs: their values are redacted.
 */
import { Agent, errors as undiciErrors, request, type Dispatcher } from 'undici';
import { ProviderError } from '../../core/errors.ts';
import type { InspectResult, InstanceRef, Logger, Provider, ProviderState, StartResult } from '../../core/ports.ts';
import { parsePointer, resolvePointer } from './json-pointer.ts';
import { parseRetryAfter } from '../retry-after.ts';
import { safePlaceholderValue } from '../safe-values.ts';
import { fillTemplate, MissingHandle, parseTemplate, PointerNotFound, type FillContext, type Template } from './template.ts';

/** One HTTP request, as written in the config. All strings are templates. */
export interface HttpRequestSpec {
  readonly method: string;
  /** Absolute, or a path appended to `baseUrl`. Placeholder values are percent-encoded. */
  readonly url: string;
  readonly headers?: Readonly<Record<string, string>> | undefined;
  /** A JSON value sent as `application/json`; string leaves are templates (values are JSON-escaped by serialisation). */
  readonly body?: unknown;
  /** Statuses that mean success; default any 2xx. */
  readonly okStatus?: readonly number[] | undefined;
  /**
   * start/stop only: statuses meaning "not in a state for this action" (default [409]). The
   * provider then inspects: already where the action leads (start: starting/running; stop:
   * stopped) counts as success; a transition under way is waited out and the action retried
   * until the call's signal ends.
   */
  readonly conflictStatus?: readonly number[] | undefined;
}

/** Maps a value found in the answer to a provider state. */
export interface StateMapping {
  /** JSON Pointer (RFC 6901) to the state value. */
  readonly pointer: string;
  /** Answer value → state, e.g. `{ ACTIVE: running, BUILD: starting, SHUTOFF: stopped, ERROR: failed }`. */
  readonly values: Readonly<Record<string, ProviderState>>;
  /** State for a value not in `values`; absent: such an answer is an error naming the value. */
  readonly otherwise?: ProviderState | undefined;
  /** State when the pointer finds nothing (an empty list, say); absent: an error. */
  readonly missing?: ProviderState | undefined;
}

/** One request of `inspect`. Steps run in order; see {@link HttpProvider.inspect}. */
export interface InspectStep {
  readonly request: HttpRequestSpec;
  /** One mapping, or several over the same answer (checked in order, like steps). */
  readonly state?: StateMapping | readonly StateMapping[] | undefined;
  /** Endpoint template over the answer, e.g. `http://{/server/accessIPv4}:8080`. */
  readonly endpoint?: string | undefined;
  /** JSON Pointer to a handle (machine id) worth remembering. */
  readonly handle?: string | undefined;
  /** JSON Pointer to a human-readable reason, reported with `failed`. */
  readonly reason?: string | undefined;
  /** The state a 404 means; default `stopped` (the cloud does not know the machine). */
  readonly notFound?: ProviderState | undefined;
}

export interface HttpProviderOptions {
  /** Base of relative request URLs, e.g. `https://cloud.example/api/v1`. */
  readonly baseUrl: string;
  readonly start: { readonly request: HttpRequestSpec; readonly handle?: string | undefined };
  readonly inspect: readonly InspectStep[];
  /** A 404 to stop means "already gone" and succeeds. */
  readonly stop: { readonly request: HttpRequestSpec };
  /** Credentials by name, used as `{secret.NAME}`; read on each use (so a rotated file is picked up). */
  readonly secrets?: Readonly<Record<string, () => Promise<string>>> | undefined;
  /** Per-resource values, e.g. `{ serviceId }`. */
  readonly resourceVars?: ((resourceId: string) => Readonly<Record<string, string>>) | undefined;
  /** One call, connect to last body byte. Default 10 000. */
  readonly requestTimeoutMs?: number | undefined;
  /** Larger answers are refused as malformed. Default 1 MiB. */
  readonly maxResponseBytes?: number | undefined;
  readonly logger?: Logger | undefined;
  /** For tests: the undici dispatcher to use instead of an own Agent. */
  readonly dispatcher?: Dispatcher | undefined;
}

interface CompiledRequest {
  readonly method: string;
  readonly url: Template;
  readonly headers: ReadonlyArray<readonly [string, Template]>;
  readonly body: CompiledBody | undefined;
  readonly okStatus: readonly number[] | undefined;
  readonly conflictStatus: readonly number[];
}

type CompiledBody = { readonly kind: 'template'; readonly t: Template } | { readonly kind: 'array'; readonly items: CompiledBody[] }
  | { readonly kind: 'object'; readonly entries: Array<[string, CompiledBody]> } | { readonly kind: 'literal'; readonly value: unknown };

interface CompiledStep {
  readonly request: CompiledRequest;
  readonly state: ReadonlyArray<StateMapping & { readonly tokens: readonly string[] }>;
  readonly endpoint: Template | undefined;
  readonly handle: readonly string[] | undefined;
  readonly reason: readonly string[] | undefined;
  readonly notFound: ProviderState;
}

interface Answer {
  readonly status: number;
  readonly text: string;
  readonly what: string;
  json(): unknown;
}

const STATES: readonly ProviderState[] = ['stopped', 'starting', 'running', 'stopping', 'failed'];

export class HttpProvider implements Provider {
  readonly kind = 'http';
  readonly #opts: HttpProviderOptions;
  readonly #start: CompiledRequest;
  readonly #startHandle: readonly string[] | undefined;
  readonly #steps: readonly CompiledStep[];
  readonly #stop: CompiledRequest;
  readonly #timeoutMs: number;
  readonly #maxBytes: number;
  readonly #dispatcher: Dispatcher;
  readonly #ownDispatcher: Agent | undefined;
  /** Why per-user instances cannot be kept apart by these templates, if they cannot. */
  readonly #userProblem: string | undefined;

  constructor(options: HttpProviderOptions) {
    const base = new URL(options.baseUrl);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new Error(`http provider: baseUrl must be http(s), got ${options.baseUrl}`);
    const secrets = new Set(Object.keys(options.secrets ?? {}));
    this.#opts = options;
    this.#start = compileRequest(options.start.request, secrets, 'start.request');
    this.#startHandle = options.start.handle === undefined ? undefined : parsePointer(options.start.handle);
    this.#stop = compileRequest(options.stop.request, secrets, 'stop.request');
    if (options.inspect.length === 0) throw new Error('http provider: inspect needs at least one step');
    this.#steps = options.inspect.map((s, i) => compileStep(s, secrets, `inspect[${i}]`));
    if (!this.#steps.some((s) => s.state.length > 0)) throw new Error('http provider: no inspect step maps a state');
    if (!this.#steps.some((s) => s.endpoint !== undefined)) throw new Error('http provider: no inspect step maps an endpoint');
    this.#timeoutMs = options.requestTimeoutMs ?? 10_000;
    this.#maxBytes = options.maxResponseBytes ?? 1024 * 1024;
    this.#ownDispatcher = options.dispatcher === undefined ? new Agent({ connections: 16, keepAliveTimeout: 4_000 }) : undefined;
    this.#dispatcher = options.dispatcher ?? (this.#ownDispatcher as Agent);
    // `sharing: user`: each user's machine must be its own. A start that names neither {user}
    // nor {instanceKey} makes the same machine for everyone, and an inspect that names neither
    // (nor the {handle} the start returned) would report another user's machine as this one's.
    const names = (v: unknown, re: RegExp): boolean => re.test(JSON.stringify(v));
    const startDistinct = names(options.start.request, /\{(user|instanceKey)\}/);
    const inspectDistinct = options.inspect.every((s) => names(s.request, /\{(user|instanceKey|handle)\}/));
    this.#userProblem = startDistinct && inspectDistinct ? undefined
      : 'sharing: user needs start.request to name {user} or {instanceKey} and every inspect request to name {user}, {instanceKey} or {handle}; these templates would give every user the same machine';
  }

  async start(ref: InstanceRef, signal: AbortSignal): Promise<StartResult> {
    if (ref.user !== undefined && this.#userProblem !== undefined) throw new ProviderError(`http provider: ${this.#userProblem}`, { retryable: false });
    const ctx = await this.#context(ref, signal);
    let answer: Answer;
    for (let attempt = 0; ; attempt++) {
      try {
        answer = await this.#call(this.#start, ctx, signal, 'start');
      } catch (err) {
        if (err instanceof MissingHandle) throw new ProviderError('http provider: start.request uses {handle}, which is unknown before the first start', { retryable: false });
        throw err;
      }
      if (!this.#start.conflictStatus.includes(answer.status)) break;
      const now = await this.inspect(ref, signal);
      if (now.state === 'running' || now.state === 'starting') return now.handle === undefined ? {} : { handle: now.handle };
      await waitOrAbort(backoffMs(attempt), signal);
    }
    this.#expectOk(answer, this.#start, ctx);
    if (this.#startHandle === undefined) return {};
    const found = resolvePointer(this.#parse(answer, ctx), this.#startHandle);
    if (!found.found || !isScalar(found.value)) {
      throw this.#malformed(answer, ctx, `expected a handle at ${JSON.stringify(this.#opts.start.handle)}`);
    }
    return { handle: String(found.value) };
  }

  /**
   * Runs the steps in order. The first step whose mapped state is not `running` decides
   * (so "SHUTOFF" in step 1 never needs step 2). `running` is reported only when every step
   * that maps a state says running, with the endpoint (and handle) the steps found. A 404
   * ends the walk with the step's `notFound` state (default `stopped`).
   */
  async inspect(ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> {
    if (ref.user !== undefined && this.#userProblem !== undefined) {
      signal.throwIfAborted();
      return { state: 'failed', reason: this.#userProblem };
    }
    const ctx = await this.#context(ref, signal);
    let endpoint: string | undefined;
    let handle: string | undefined;
    let reason: string | undefined;
    for (const step of this.#steps) {
      let answer: Answer;
      try {
        answer = await this.#call(step.request, ctx, signal, 'inspect');
      } catch (err) {
        // No handle yet means the cloud cannot be asked about this machine: it is not running.
        if (err instanceof MissingHandle) return { state: 'stopped' };
        throw err;
      }
      if (answer.status === 404 && !(step.request.okStatus?.includes(404) ?? false)) return { state: step.notFound };
      this.#expectOk(answer, step.request, ctx);
      const doc = this.#parse(answer, ctx);
      if (step.handle !== undefined) {
        const h = resolvePointer(doc, step.handle);
        if (h.found && isScalar(h.value)) handle = String(h.value);
      }
      if (step.reason !== undefined) {
        const r = resolvePointer(doc, step.reason);
        if (r.found && isScalar(r.value)) reason = this.#redact(String(r.value), ctx);
      }
      for (const mapping of step.state) {
        const state = this.#mapState(mapping, doc, answer, ctx);
        if (state !== 'running') return { state, handle, reason: state === 'failed' ? reason ?? `the cloud reports ${describeValue(mapping, doc)}` : undefined };
      }
      if (step.endpoint !== undefined) endpoint = this.#mapEndpoint(step.endpoint, doc, answer, ctx);
    }
    return { state: 'running', endpoint, handle };
  }

  async stop(ref: InstanceRef, signal: AbortSignal): Promise<void> {
    // Never switch off the one machine these templates make for everyone on one user's behalf.
    if (ref.user !== undefined && this.#userProblem !== undefined) {
      signal.throwIfAborted();
      return;
    }
    const ctx = await this.#context(ref, signal);
    for (let attempt = 0; ; attempt++) {
      let answer: Answer;
      try {
        answer = await this.#call(this.#stop, ctx, signal, 'stop');
      } catch (err) {
        if (err instanceof MissingHandle) return; // never started by us: nothing to stop
        throw err;
      }
      if (answer.status === 404) return;
      if (!this.#stop.conflictStatus.includes(answer.status)) {
        this.#expectOk(answer, this.#stop, ctx);
        return;
      }
      // The cloud refuses the stop in the current state: done if already stopped, else wait out the transition.
      if ((await this.inspect(ref, signal)).state === 'stopped') return;
      await waitOrAbort(backoffMs(attempt), signal);
    }
  }

  async close(): Promise<void> {
    await this.#ownDispatcher?.close();
  }

  // -- internals ------------------------------------------------------------------------

  async #context(ref: InstanceRef, signal: AbortSignal): Promise<FillContext> {
    if (signal.aborted) throw aborted(signal);
    const secrets: Record<string, string> = {};
    for (const [name, read] of Object.entries(this.#opts.secrets ?? {})) {
      try {
        secrets[name] = await read();
      } catch (err) {
        throw new ProviderError(`http provider: cannot read credential "${name}": ${(err as Error).message}`, { retryable: false });
      }
    }
    const vars: Record<string, string | undefined> = {
      serviceId: ref.resourceId,
      ...this.#opts.resourceVars?.(ref.resourceId),
      // Values from requests in their safe form (safe-values.ts): percent-encoding leaves "."
      // and ".." as they are, which a cloud API would resolve as dot segments.
      resourceId: ref.resourceId, instanceKey: safePlaceholderValue(ref.instanceKey), handle: ref.handle,
      groups: ref.groups.length === 0 ? '' : safePlaceholderValue(ref.groups.join(',')), user: ref.user === undefined ? undefined : safePlaceholderValue(ref.user),
    };
    return { vars, secrets };
  }

  async #call(req: CompiledRequest, ctx: FillContext, signal: AbortSignal, op: string): Promise<Answer> {
    const urlText = fillTemplate(req.url, { ...ctx, encode: encodeURIComponent });
    // A relative URL is appended to baseUrl's path (not resolved against it: "/servers" under
    // ".../v2.1" means ".../v2.1/servers", as API docs write paths).
    const url = /^[a-z][a-z0-9+.-]*:/i.test(urlText) ? new URL(urlText)
      : new URL(`${this.#opts.baseUrl.replace(/\/+$/, '')}/${urlText.replace(/^\/+/, '')}`);
    const what = `${op}: ${req.method} ${this.#redact(url.origin + url.pathname, ctx)}`;
    const headers: Record<string, string> = {};
    for (const [name, t] of req.headers) {
      const v = fillTemplate(t, ctx);
      // A credential with a newline would split the header: refuse rather than send.
      if (/[\r\n]/.test(v)) throw new ProviderError(`${what}: header ${name} would contain a line break`, { retryable: false });
      headers[name.toLowerCase()] = v;
    }
    let body: string | undefined;
    if (req.body !== undefined) {
      body = JSON.stringify(fillBody(req.body, ctx));
      headers['content-type'] ??= 'application/json';
    }
    headers.accept ??= 'application/json';
    const combined = AbortSignal.any([signal, AbortSignal.timeout(this.#timeoutMs)]);
    try {
      const res = await request(url, {
        method: req.method, headers, body, signal: combined, dispatcher: this.#dispatcher,
        headersTimeout: this.#timeoutMs, bodyTimeout: this.#timeoutMs,
      });
      const chunks: Buffer[] = [];
      let bytes = 0;
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > this.#maxBytes) {
          res.body.destroy();
          throw new ProviderError(`${what}: answer larger than ${this.#maxBytes} bytes`, { retryable: false });
        }
        chunks.push(chunk);
      }
      const text = Buffer.concat(chunks).toString('utf8');
      let parsed: { ok: boolean; value?: unknown } | undefined;
      const retryAfter = res.headers['retry-after'];
      const answer: Answer & { retryAfterS?: number } = {
        status: res.statusCode, text, what,
        json: () => {
          parsed ??= (() => {
            try {
              return { ok: true, value: JSON.parse(text) as unknown };
            } catch {
              return { ok: false };
            }
          })();
          if (!parsed.ok) throw new SyntaxError('not JSON');
          return parsed.value;
        },
      };
      const retryAfterS = parseRetryAfter(retryAfter);
      if (retryAfterS !== undefined) answer.retryAfterS = retryAfterS;
      return answer;
    } catch (err) {
      if (err instanceof ProviderError || err instanceof MissingHandle) throw err;
      if (signal.aborted) throw aborted(signal);
      const timedOut = combined.aborted || err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError
        || err instanceof undiciErrors.ConnectTimeoutError;
      const msg = timedOut ? `no answer within ${this.#timeoutMs} ms` : this.#redact(errText(err), ctx);
      // Network trouble is transient from the core's point of view: it may retry within the deadline.
      throw new ProviderError(`${what}: ${msg}`, { retryable: true, cause: err });
    }
  }

  #expectOk(answer: Answer & { retryAfterS?: number }, req: CompiledRequest, ctx: FillContext): void {
    const ok = req.okStatus === undefined ? answer.status >= 200 && answer.status < 300 : req.okStatus.includes(answer.status);
    if (ok) return;
    const snippet = this.#redact(answer.text.slice(0, 200), ctx).replace(/\s+/g, ' ');
    const retryable = answer.status >= 500 || answer.status === 429 || answer.status === 408;
    const hint = answer.status === 401 || answer.status === 403 ? ' (check the credentials)' : '';
    throw new ProviderError(`${answer.what}: answered ${answer.status}${hint}${snippet === '' ? '' : `: ${snippet}`}`, {
      retryable, retryAfterS: answer.retryAfterS, data: { status: answer.status },
    });
  }

  #parse(answer: Answer, ctx: FillContext): unknown {
    try {
      return answer.json();
    } catch {
      throw this.#malformed(answer, ctx, 'expected a JSON body');
    }
  }

  #mapState(m: StateMapping & { readonly tokens: readonly string[] }, doc: unknown, answer: Answer, ctx: FillContext): ProviderState {
    const found = resolvePointer(doc, m.tokens);
    if (!found.found || found.value === null) {
      if (m.missing !== undefined) return m.missing;
      throw this.#malformed(answer, ctx, `expected a state at ${JSON.stringify(m.pointer)}`);
    }
    if (!isScalar(found.value)) throw this.#malformed(answer, ctx, `expected a string at ${JSON.stringify(m.pointer)}, found ${typeof found.value}`);
    const key = String(found.value);
    const mapped = Object.hasOwn(m.values, key) ? m.values[key] : m.otherwise;
    if (mapped === undefined) {
      throw this.#malformed(answer, ctx, `state ${JSON.stringify(key)} at ${JSON.stringify(m.pointer)} is not mapped (known: ${Object.keys(m.values).join(', ')}; add it or set "otherwise")`);
    }
    return mapped;
  }

  #mapEndpoint(t: Template, doc: unknown, answer: Answer, ctx: FillContext): string {
    let text: string;
    try {
      text = fillTemplate(t, { ...ctx, pointer: (tokens) => {
        const r = resolvePointer(doc, tokens);
        return r.found && isScalar(r.value) ? String(r.value) : undefined;
      } });
    } catch (err) {
      if (err instanceof PointerNotFound) throw this.#malformed(answer, ctx, `no endpoint: ${err.message}`);
      throw err;
    }
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw this.#malformed(answer, ctx, `endpoint ${JSON.stringify(this.#redact(text, ctx))} is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw this.#malformed(answer, ctx, `endpoint ${JSON.stringify(text)} is not http(s)`);
    return text.replace(/\/$/, '');
  }

  #malformed(answer: Answer, ctx: FillContext, expected: string): ProviderError {
    const snippet = this.#redact(answer.text.slice(0, 200), ctx).replace(/\s+/g, ' ');
    return new ProviderError(`${answer.what}: malformed answer (${answer.status}): ${expected}; got: ${snippet === '' ? '(empty body)' : snippet}`, { retryable: false });
  }

  /** Replaces every credential value in `text` (messages and logs never carry secrets). */
  #redact(text: string, ctx: FillContext): string {
    let out = text;
    for (const v of Object.values(ctx.secrets)) {
      if (v.length >= 4) out = out.replaceAll(v, '***').replaceAll(encodeURIComponent(v), '***');
    }
    return out;
  }
}

export function createHttpProvider(options: HttpProviderOptions): HttpProvider {
  return new HttpProvider(options);
}

function compileRequest(spec: HttpRequestSpec, secrets: ReadonlySet<string>, where: string): CompiledRequest {
  if (!/^[A-Z]+$/.test(spec.method)) throw new Error(`http provider: ${where}.method must be an upper-case HTTP method, got ${JSON.stringify(spec.method)}`);
  const url = parseTemplate(spec.url, { secrets, pointers: false, where: `${where}.url` });
  const headers = Object.entries(spec.headers ?? {}).map(([k, v]) => [k, parseTemplate(v, { secrets, pointers: false, where: `${where}.headers.${k}` })] as const);
  const body = spec.body === undefined ? undefined : compileBody(spec.body, secrets, `${where}.body`);
  return { method: spec.method, url, headers, body, okStatus: spec.okStatus, conflictStatus: spec.conflictStatus ?? [409] };
}

function compileBody(value: unknown, secrets: ReadonlySet<string>, where: string): CompiledBody {
  if (typeof value === 'string') return { kind: 'template', t: parseTemplate(value, { secrets, pointers: false, where }) };
  if (Array.isArray(value)) return { kind: 'array', items: value.map((v, i) => compileBody(v, secrets, `${where}[${i}]`)) };
  if (value !== null && typeof value === 'object') {
    return { kind: 'object', entries: Object.entries(value).map(([k, v]) => [k, compileBody(v, secrets, `${where}.${k}`)]) };
  }
  return { kind: 'literal', value };
}

function fillBody(b: CompiledBody, ctx: FillContext): unknown {
  switch (b.kind) {
    case 'template': return fillTemplate(b.t, ctx);
    case 'array': return b.items.map((i) => fillBody(i, ctx));
    case 'object': return Object.fromEntries(b.entries.map(([k, v]) => [k, fillBody(v, ctx)]));
    case 'literal': return b.value;
  }
}

function compileStep(s: InspectStep, secrets: ReadonlySet<string>, where: string): CompiledStep {
  const mappings: readonly StateMapping[] = s.state === undefined ? [] : Array.isArray(s.state) ? s.state as readonly StateMapping[] : [s.state as StateMapping];
  for (const st of [...mappings.flatMap((m) => [...Object.values(m.values), m.otherwise, m.missing]), s.notFound]) {
    if (st !== undefined && !STATES.includes(st)) throw new Error(`http provider: ${where}: unknown state ${JSON.stringify(st)} (known: ${STATES.join(', ')})`);
  }
  return {
    request: compileRequest(s.request, secrets, `${where}.request`),
    state: mappings.map((m) => ({ ...m, tokens: parsePointer(m.pointer) })),
    endpoint: s.endpoint === undefined ? undefined : parseTemplate(s.endpoint, { secrets: new Set(), pointers: true, where: `${where}.endpoint` }),
    handle: s.handle === undefined ? undefined : parsePointer(s.handle),
    reason: s.reason === undefined ? undefined : parsePointer(s.reason),
    notFound: s.notFound ?? 'stopped',
  };
}

function isScalar(v: unknown): v is string | number | boolean {
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
}

function describeValue(m: StateMapping & { readonly tokens: readonly string[] }, doc: unknown): string {
  const r = resolvePointer(doc, m.tokens);
  return r.found ? `${JSON.stringify(r.value)} at ${m.pointer}` : `nothing at ${m.pointer}`;
}

/** Pause between retries of a refused (409) action: 100 ms doubling to 1 s. */
function backoffMs(attempt: number): number {
  return Math.min(1000, 100 * 2 ** attempt);
}

function waitOrAbort(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(aborted(signal));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(t);
      reject(aborted(signal));
    };
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function aborted(signal: AbortSignal): ProviderError {
  return new ProviderError('http provider: call aborted', { retryable: true, cause: signal.reason });
}

function errText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return `${typeof code === 'string' ? `${code} ` : ''}${err.message}${cause}`;
  }
  return String(err);
}

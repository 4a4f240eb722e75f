/**
 * The operator commands: `smart-proxy status | start | stop | logs | audit | retry-stop |
 * abandon-stop`, all talking to
 * the admin API (docs/operations/cli.md). Human output by default, `--json` for scripts; the
 * exit codes are in client.ts (EXIT).
 */
import { parseArgs } from 'node:util';
import { adminCliEnv } from '../../config/admin-cli-env.ts';
import type { AuditEventView, InstanceView, ResourceView, StopRetryListView, StopRetryView } from '../schemas.ts';
import { AdminClient, CliError, EXIT } from './client.ts';
import { progressLine } from './progress.ts';

export interface CliIo {
  readonly out: NodeJS.WritableStream & { isTTY?: boolean };
  readonly err: NodeJS.WritableStream;
}

const DEFAULT_ADMIN_URL = 'http://127.0.0.1:9180';

export const adminUsage = `Operator commands (they talk to the admin listener):
  status [RESOURCE]                      resources and instances, as a table
  start RESOURCE [--instance KEY]        start an instance and show its progress until ready
        [--timeout-ms N] [--no-wait]
  stop RESOURCE [--instance KEY]         stop an instance
  retry-stop RESOURCE [--instance KEY]   try a stop owed for the instance now (status lists them)
  abandon-stop RESOURCE [--instance KEY] stop trying: you take care of the machine (it may still run)
  logs RESOURCE [--instance KEY]         the instance's captured output (process, qemu)
  audit [--resource R] [--type T] [--actor A] [--since TIME] [--until TIME] [--limit N] [--before ID]
Common options: --admin URL (or SMART_PROXY_ADMIN_URL; default ${DEFAULT_ADMIN_URL}),
  --token TOKEN (or SMART_PROXY_ADMIN_TOKEN), --json.
Exit codes: 0 done, 1 the action failed, 2 bad command line, 3 admin API unreachable, 4 not authorised.
`;

const common = {
  admin: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean', default: false },
  'timeout-ms': { type: 'string' },
} as const;

/** Runs one operator command; resolves with its exit code. */
export async function runAdminCommand(command: string, args: readonly string[], io: CliIo = { out: process.stdout, err: process.stderr }): Promise<number> {
  try {
    return await run(command, args, io);
  } catch (err) {
    if (err instanceof CliError) {
      io.err.write(`smart-proxy ${command}: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      io.err.write(`smart-proxy ${command}: ${err.message}\n\n${adminUsage}`);
      return EXIT.usage;
    }
    throw err;
  }
}

async function run(command: string, args: readonly string[], io: CliIo): Promise<number> {
  const env = adminCliEnv();
  const options = { ...common, instance: { type: 'string' }, 'no-wait': { type: 'boolean', default: false }, resource: { type: 'string' }, type: { type: 'string' }, actor: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, limit: { type: 'string' }, before: { type: 'string' } } as const;
  const { values, positionals } = parseArgs({ args: [...args], options, allowPositionals: true, strict: true });
  const timeoutMs = values['timeout-ms'] === undefined ? undefined : Number(values['timeout-ms']);
  if (timeoutMs !== undefined && (!Number.isInteger(timeoutMs) || timeoutMs <= 0)) throw new CliError('--timeout-ms: expected a positive integer', EXIT.usage);
  const baseUrl = values.admin ?? env.url ?? DEFAULT_ADMIN_URL;
  if (!/^https?:\/\//.test(baseUrl)) throw new CliError(`--admin: expected an http(s) URL, got "${baseUrl}"`, EXIT.usage);
  const client = new AdminClient({ baseUrl, token: values.token ?? env.token, timeoutMs: 10_000 });
  const json = values.json;
  const resource = positionals[0];
  if (positionals.length > 1) throw new CliError(`unexpected argument "${positionals[1]}"`, EXIT.usage);
  const needResource = (): string => {
    if (resource === undefined) throw new CliError(`${command} needs a RESOURCE`, EXIT.usage);
    return resource;
  };
  const instancePath = (r: string, key: string): string => `/api/v1/resources/${encodeURIComponent(r)}/instances/${encodeURIComponent(key)}`;
  const onlyFor: Record<string, readonly string[]> = {
    status: [], start: ['instance', 'no-wait', 'timeout-ms'], stop: ['instance'], logs: ['instance'], 'retry-stop': ['instance'], 'abandon-stop': ['instance'],
    audit: ['resource', 'type', 'actor', 'since', 'until', 'limit', 'before'],
  };
  for (const name of Object.keys(values)) {
    if (name in common) continue;
    if (name === 'no-wait' && values['no-wait'] === false) continue;
    if (!(onlyFor[command] ?? []).includes(name)) throw new CliError(`--${name} does not apply to ${command}`, EXIT.usage);
  }

  switch (command) {
    case 'status': {
      const list = resource === undefined
        ? (await client.call('GET', '/api/v1/resources') as { items: ResourceView[] }).items
        : [await client.call('GET', `/api/v1/resources/${encodeURIComponent(resource)}`) as ResourceView];
      // A stop still owed for a resource a reload removed is in no resource's view, yet its
      // machine may run on: the full status lists those from the owed-stop list.
      const removed = resource === undefined
        ? (await client.call('GET', '/api/v1/stop-retries') as StopRetryListView).items.filter((i) => i.resourceRemoved)
        : [];
      if (json) io.out.write(`${JSON.stringify({ items: list, ...(removed.length > 0 ? { removedResourceStops: removed } : {}) }, null, 2)}\n`);
      else io.out.write(statusTable(list, Date.now(), removed));
      return EXIT.ok;
    }
    case 'start': {
      const r = needResource();
      const started = await client.call('POST', `/api/v1/resources/${encodeURIComponent(r)}/start`, values.instance === undefined ? {} : { instanceKey: values.instance }) as { instance: InstanceView };
      const key = started.instance.instanceKey;
      if (values['no-wait'] || started.instance.state === 'ready') {
        if (json) io.out.write(`${JSON.stringify(started.instance)}\n`);
        else io.out.write(`${r} ${key}: ${started.instance.step}\n`);
        return EXIT.ok;
      }
      return await followStart(client, io, r, key, instancePath(r, key), json, timeoutMs ?? 15 * 60_000);
    }
    case 'stop': {
      const r = needResource();
      const key = values.instance ?? '*';
      const out = await client.call('POST', `${instancePath(r, key)}/stop`) as { instance: InstanceView };
      if (json) io.out.write(`${JSON.stringify(out.instance)}\n`);
      else io.out.write(`${r} ${key}: stopping (was ${out.instance.state === 'stopping' ? 'running' : out.instance.state})\n`);
      return EXIT.ok;
    }
    case 'retry-stop':
    case 'abandon-stop': {
      const r = needResource();
      const key = values.instance ?? '*';
      const out = await client.call('POST', `${instancePath(r, key)}/${command}`) as { instance: InstanceView };
      if (json) io.out.write(`${JSON.stringify(out.instance)}\n`);
      else io.out.write(`${r} ${key}: ${command === 'retry-stop' ? 'trying the stop now' : 'the owed stop is let go; the machine may still be running'}\n`);
      return EXIT.ok;
    }
    case 'logs': {
      const r = needResource();
      const out = await client.call('GET', `${instancePath(r, values.instance ?? '*')}/logs`) as { text: string; droppedBytes: number };
      if (json) {
        io.out.write(`${JSON.stringify(out)}\n`);
      } else {
        if (out.droppedBytes > 0) io.err.write(`(${out.droppedBytes} earlier bytes were not kept)\n`);
        io.out.write(out.text.endsWith('\n') || out.text === '' ? out.text : `${out.text}\n`);
      }
      return EXIT.ok;
    }
    case 'audit': {
      if (resource !== undefined) throw new CliError('audit takes no RESOURCE argument; use --resource', EXIT.usage);
      const q = new URLSearchParams();
      for (const name of ['resource', 'type', 'actor', 'since', 'until', 'limit', 'before'] as const) {
        const v = values[name];
        if (v !== undefined) q.set(name, v);
      }
      const page = await client.call('GET', `/api/v1/audit?${q.toString()}`) as { items: AuditEventView[]; nextBefore: number | null };
      if (json) {
        io.out.write(`${JSON.stringify(page, null, 2)}\n`);
      } else {
        io.out.write(table(['ID', 'TIME', 'TYPE', 'RESOURCE', 'INSTANCE', 'ACTOR', 'STATUS', 'REASON'],
          page.items.map((e) => [String(e.id), e.at, e.type, e.resource, e.instanceKey ?? '', e.actor ?? '', e.status ?? '', e.reason ?? ''])));
        if (page.nextBefore !== null) io.out.write(`(older: --before ${page.nextBefore})\n`);
      }
      return EXIT.ok;
    }
    default:
      throw new CliError(`unknown command "${command}"`, EXIT.usage);
  }
}

/** Follows the instance's progress stream (the waiting page's) until ready, failed or the time is up. */
async function followStart(client: AdminClient, io: CliIo, resource: string, key: string, path: string, json: boolean, timeoutMs: number): Promise<number> {
  const signal = AbortSignal.timeout(timeoutMs);
  const tty = io.out.isTTY === true && !json;
  let last = '';
  try {
    for await (const { event, data } of client.events(`${path}/events`, signal)) {
      const snap = data as { step: string; elapsedMs: number | null; eta: { remainingMs: number; p50Ms: number } | null; reason: string | null };
      if (json) {
        io.out.write(`${JSON.stringify({ event, ...snap })}\n`);
      } else {
        const line = `${resource} ${key}: ${progressLine(snap)}`;
        if (line !== last) io.out.write(tty ? `\r\x1b[2K${line}` : `${line}\n`);
        last = line;
      }
      if (event === 'ready') {
        if (tty) io.out.write('\n');
        return EXIT.ok;
      }
      if (event === 'failed') {
        if (tty) io.out.write('\n');
        io.err.write(`smart-proxy start: ${resource} ${key} failed: ${snap.reason ?? 'unknown reason'}\n`);
        return EXIT.failed;
      }
    }
  } catch (err) {
    if (signal.aborted) {
      if (tty) io.out.write('\n');
      io.err.write(`smart-proxy start: ${resource} ${key} not ready after ${timeoutMs} ms (it keeps starting)\n`);
      return EXIT.failed;
    }
    throw err;
  }
  if (tty) io.out.write('\n');
  io.err.write('smart-proxy start: the progress stream ended before the instance was ready\n');
  return EXIT.failed;
}

function ago(iso: string | null, now: number): string {
  if (iso === null) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

function until(iso: string | null, now: number): string {
  if (iso === null) return '-';
  const s = Math.max(0, Math.round((Date.parse(iso) - now) / 1000));
  return s < 60 ? `in ${s}s` : s < 3600 ? `in ${Math.round(s / 60)}m` : `in ${Math.round(s / 3600)}h`;
}

/** `removed`: stops owed for instances of resources a reload removed (from /api/v1/stop-retries). */
export function statusTable(resources: readonly ResourceView[], now: number, removed: StopRetryListView['items'] = []): string {
  const rows: string[][] = [];
  for (const r of resources) {
    const boot = r.boot.estimate === null ? '-' : `p50 ${(r.boot.estimate.p50Ms / 1000).toFixed(1)}s`;
    if (r.instances.length === 0) rows.push([r.id, '-', 'stopped', '-', '-', '-', '-', boot]);
    for (const i of r.instances) {
      rows.push([r.id, i.instanceKey, i.step, i.startedBy ?? '-', ago(i.startRequestedAt, now), ago(i.lastActivityAt, now), until(i.idleDeadline, now), boot]);
    }
  }
  return table(['RESOURCE', 'INSTANCE', 'STATE', 'STARTED BY', 'STARTED', 'LAST ACTIVITY', 'IDLE STOP', 'BOOT'], rows) + stopRetryTable(resources, now, removed);
}

/**
 * Stops owed for instances out of service, under the status table when there are any: each
 * may be a machine still running (and costing), a given-up one above all.
 */
function stopRetryTable(resources: readonly ResourceView[], now: number, removed: StopRetryListView['items']): string {
  const rows: string[][] = [];
  const add = (resource: string, key: string, s: StopRetryView): void => {
    const next = s.state === 'given-up' ? `gave up ${ago(s.gaveUpAt, now)}` : s.state === 'running' ? 'trying now' : until(s.nextAttemptAt, now);
    rows.push([resource, key, s.state, `${s.attempts}/${s.maxAttempts}`, next, s.lastError ?? '-', s.reason]);
  };
  for (const r of resources) {
    for (const i of r.instances) if (i.stopRetry !== null) add(r.id, i.instanceKey, i.stopRetry);
  }
  for (const i of removed) add(`${i.resource} (removed from config)`, i.instanceKey, i.stopRetry);
  if (rows.length === 0) return '';
  const givenUp = rows.filter((row) => row[2] === 'given-up').length;
  const head = `\nStops owed, tried again with backoff (the machine may still be running)${givenUp > 0 ? `: ${givenUp} given up, see the admin API's retry-stop / abandon-stop` : ''}:\n`;
  return head + table(['RESOURCE', 'INSTANCE', 'STOP', 'TRIES', 'NEXT TRY', 'LAST ERROR', 'REASON'], rows);
}

function table(head: readonly string[], rows: readonly string[][]): string {
  const clean = (s: string): string => s.replace(/[\u0000-\u001f\u007f]/g, ' '); // eslint-disable-line no-control-regex
  const all = [head, ...rows.map((r) => r.map(clean))];
  const widths = head.map((_, c) => Math.max(...all.map((r) => (r[c] ?? '').length)));
  return all.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c] ?? 0))).join('  ').trimEnd()).join('\n') + '\n';
}

/**
 * `smart-proxy status` lists stops owed for instances out of service under its table (the
 * machine may still run and cost): tries, next try or when it gave up, last error, reason.
 * The table is built from the admin API's resource views (checked against their schema).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resourceViewSchema, type InstanceView, type StopRetryView } from '../../src/admin/schemas.ts';
import { statusTable } from '../../src/admin/cli/commands.ts';

const NOW = Date.parse('2026-12-03T12:00:00Z');
const iso = (offsetS: number): string => new Date(NOW + offsetS * 1000).toISOString();

function instance(key: string, stopRetry: StopRetryView | null): InstanceView {
  return {
    resource: 'vm', instanceKey: key, groups: [], user: null, state: 'stopped', phase: null, step: 'stopped', endpoint: null, handle: 'h',
    startedBy: null, startRequestedAt: iso(-600), readyAt: null, lastActivityAt: iso(-300), idleDeadline: null, activeConnections: 0,
    heldRequests: 0, elapsedMs: null, eta: null, lastError: null, stopRetry, resourceRemoved: false,
  };
}

const resource = (instances: InstanceView[]) => resourceViewSchema.parse({
  id: 'vm', provider: 'atmosphere', sharing: 'groups', bootTimeoutMs: 1000, idleStopMs: 1000, capabilities: { suspend: false, logs: false },
  boot: { estimate: null, history: [] }, counts: { stopped: instances.length, starting: 0, ready: 0, stopping: 0, failed: 0 }, instances,
});

describe('smart-proxy status: stops owed', () => {
  it('lists scheduled and given-up stops under the table, with tries, next try and last error', () => {
    const out = statusTable([resource([
      instance('a', { state: 'scheduled', reason: 'idle for 60000 ms; the first stop failed', attempts: 2, maxAttempts: 6, nextAttemptAt: iso(45), lastError: 'DELETE answered 503', since: iso(-60), gaveUpAt: null }),
      instance('b', { state: 'given-up', reason: 'start failed: bad image', attempts: 6, maxAttempts: 6, nextAttemptAt: null, lastError: 'DELETE answered 403', since: iso(-3000), gaveUpAt: iso(-120) }),
      instance('c', null),
    ])], NOW);
    const lines = out.trimEnd().split('\n');
    const at = lines.findIndex((l) => l.startsWith('Stops owed'));
    assert.ok(at > 0, out);
    assert.match(lines[at] ?? '', /the machine may still be running\): 1 given up, see the admin API's retry-stop \/ abandon-stop:$/);
    assert.match(lines[at + 1] ?? '', /^RESOURCE\s+INSTANCE\s+STOP\s+TRIES\s+NEXT TRY\s+LAST ERROR\s+REASON$/);
    assert.match(lines[at + 2] ?? '', /^vm\s+a\s+scheduled\s+2\/6\s+in 45s\s+DELETE answered 503\s+idle for 60000 ms; the first stop failed$/);
    assert.match(lines[at + 3] ?? '', /^vm\s+b\s+given-up\s+6\/6\s+gave up 2m ago\s+DELETE answered 403\s+start failed: bad image$/);
    assert.equal(lines.length, at + 4, 'c owes no stop');
  });

  it('lists a stop owed for a resource a reload removed, marked as such', () => {
    const owed: StopRetryView = { state: 'given-up', reason: 'resource removed by a configuration reload; the first stop failed', attempts: 6, maxAttempts: 6, nextAttemptAt: null, lastError: 'DELETE answered 403', since: iso(-3000), gaveUpAt: iso(-60) };
    const out = statusTable([resource([instance('c', null)])], NOW, [{ resource: 'old', instanceKey: '*', instanceState: 'stopped', stopRetry: owed, resourceRemoved: true }]);
    assert.match(out, /: 1 given up, see the admin API's retry-stop \/ abandon-stop:\n/);
    assert.match(out, /\nold \(removed from config\)\s+\*\s+given-up\s+6\/6\s+gave up 1m ago\s+DELETE answered 403\s+resource removed by a configuration reload; the first stop failed\n$/);
  });

  it('prints nothing more when no stop is owed', () => {
    const out = statusTable([resource([instance('c', null)])], NOW);
    assert.doesNotMatch(out, /Stops owed/);
  });
});

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { after, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { startMockCloud } from '../../src/mock-cloud/mock-cloud.ts';
import type { MockCloud, MockCloudOptions } from '../../src/mock-cloud/mock-cloud.ts';
import type { VmEcho } from '../../src/mock-cloud/vm-server.ts';

const agent = new Agent({ keepAliveTimeout: 1000 });
after(() => agent.close());

const base: MockCloudOptions = {
  host: '127.0.0.1',
  port: 0,
  bootTimeMinMs: 0,
  bootTimeMaxMs: 5,
  seed: 1,
  failureRate: 0,
  hangRate: 0,
  seedData: false,
};

/** Starts a cloud for one test and closes it when the test ends. */
async function cloud(t: { after(fn: () => Promise<void>): void }, options: Partial<MockCloudOptions> = {}): Promise<MockCloud> {
  const c = await startMockCloud({ ...base, ...options });
  t.after(() => c.close());
  return c;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

async function call(url: string, method = 'GET', body?: string | Buffer, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await request(url, { method: method as 'GET', body, headers, dispatcher: agent });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

/** Sends raw bytes and returns the raw answer, for requests no client library would make. */
function raw(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      answer += d;
    });
    socket.on('end', () => resolve(answer));
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
    socket.write(bytes);
  });
}

/** Resolves with the connect error code, or 'connected'. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
}

void describe('original 2012 API', () => {
  void it('get_vm with seed data: 200, text/html, JSON array of URLs, subset rule', async (t) => {
    const c = await cloud(t, { seedData: true });
    const vm1 = c.vm('1')!;
    const vm2 = c.vm('2')!;
    const vm3 = c.vm('3')!;
    assert.deepEqual([vm1.asId, vm1.groups, vm1.state], ['as1', ['g1', 'g2'], 'running']);
    assert.deepEqual([vm2.asId, vm2.groups, vm2.state], ['as1', ['g2'], 'running']);
    assert.deepEqual([vm3.asId, vm3.groups, vm3.state], ['as2', ['group3'], 'running']);

    const both = await call(`${c.url}/get_vm/as1/for_user_with_groups/g1,g2`);
    assert.equal(both.status, 200);
    assert.equal(both.headers['content-type'], 'text/html; charset=utf-8');
    // Python's json.dumps layout, as the original sent it.
    assert.equal(both.text, `["${vm1.url}", "${vm2.url}"]`);

    const only2 = await call(`${c.url}/get_vm/as1/for_user_with_groups/g2`);
    assert.deepEqual(JSON.parse(only2.text), [vm2.url]);
    const superset = await call(`${c.url}/get_vm/as1/for_user_with_groups/g3,g2,g1`);
    assert.deepEqual(JSON.parse(superset.text), [vm1.url, vm2.url]);
    assert.deepEqual(JSON.parse((await call(`${c.url}/get_vm/as2/for_user_with_groups/group3`)).text), [vm3.url]);

    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g1`)).status, 404, 'no VM whose groups ⊆ {g1}');
    assert.equal((await call(`${c.url}/get_vm/as2/for_user_with_groups/g1,g2`)).status, 404);
    assert.equal((await call(`${c.url}/get_vm/nope/for_user_with_groups/g1`)).status, 404, 'unknown resource');
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g1,g2/`)).status, 404, 'no trailing slash');

    // The URLs are real servers.
    const echo = JSON.parse((await call(`${vm1.url}/x`)).text) as VmEcho;
    assert.equal(echo.vm, '1');
  });

  void it('GET /vm/<id>: "Hello from <id> vm" once booted, exact path only', async (t) => {
    const c = await cloud(t, { seedData: true });
    const hello = await call(`${c.url}/vm/1`);
    assert.equal(hello.status, 200);
    assert.equal(hello.text, 'Hello from 1 vm');
    assert.equal(hello.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal((await call(`${c.url}/vm/1/`)).status, 404);
    assert.equal((await call(`${c.url}/vm/1/sub`)).status, 404);
    assert.equal((await call(`${c.url}/vm/42`)).status, 404);

    const release = c.holdBoots();
    await call(`${c.url}/span_as/as1/for_user_with_groups/g9`, 'POST');
    assert.equal((await call(`${c.url}/vm/4`)).status, 404, 'not before boot');
    release();
    await c.waitForVm((v) => v.id === '4' && v.state === 'running');
    assert.equal((await call(`${c.url}/vm/4`)).text, 'Hello from 4 vm');
  });

  void it('span_as: 202 "booting" at once, any as id, and an immediate get_vm sees it (race fixed)', async (t) => {
    const c = await cloud(t, { seedData: true });
    const release = c.holdBoots();
    const span = await call(`${c.url}/span_as/brand-new/for_user_with_groups/g1,g2`, 'POST');
    assert.equal(span.status, 202);
    assert.equal(span.text, 'booting');
    assert.equal(span.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal(span.headers.location, '/vms/4');

    const now = await call(`${c.url}/get_vm/brand-new/for_user_with_groups/g1,g2`);
    assert.equal(now.status, 200);
    assert.equal(now.text, '["booting"]');
    // A booting VM sits beside running ones.
    await call(`${c.url}/span_as/as1/for_user_with_groups/g2`, 'POST');
    assert.deepEqual(JSON.parse((await call(`${c.url}/get_vm/as1/for_user_with_groups/g2`)).text), [c.vm('2')!.url, 'booting']);

    release();
    const vm = await c.waitForVm((v) => v.id === '4' && v.state === 'running');
    assert.deepEqual(JSON.parse((await call(`${c.url}/get_vm/brand-new/for_user_with_groups/g1,g2`)).text), [vm.url]);
    assert.equal(c.stats.spans, 2);
  });

  void it('allocates ids by counter: 10, 11, 12 are distinct VMs', async (t) => {
    const c = await cloud(t, { seedData: true });
    for (let i = 4; i <= 12; i++) {
      const r = await call(`${c.url}/span_as/as-${i}/for_user_with_groups/g${i}`, 'POST');
      assert.equal(r.headers.location, `/vms/${i}`);
    }
    const vms = JSON.parse((await call(`${c.url}/vms`)).text) as { id: string; asId: string }[];
    assert.deepEqual(vms.map((v) => v.id), ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12']);
    for (const id of ['10', '11', '12']) assert.equal(vms.find((v) => v.id === id)?.asId, `as-${id}`);
  });
});

void describe('VM servers', () => {
  void it('have no port before boot; after boot echo method, path, query, headers and body', async (t) => {
    const c = await cloud(t);
    const release = c.holdBoots();
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST');
    const booting = c.vm('1')!;
    assert.equal(booting.state, 'booting');
    assert.equal(booting.port, undefined);
    assert.equal(booting.url, undefined);
    release();
    const vm = await c.waitForVm((v) => v.id === '1' && v.state === 'running');
    assert.equal(await tryConnect(vm.port!), 'connected');

    const res = await call(`${vm.url}/some/path%20x?a=1&a=2&b=%zz`, 'PUT', 'héllo', { 'x-custom': 'yes', 'content-type': 'text/plain' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-mock-vm'], '1');
    const echo = JSON.parse(res.text) as VmEcho;
    assert.equal(echo.vm, '1');
    assert.equal(echo.asId, 'as1');
    assert.deepEqual(echo.groups, ['g1']);
    assert.equal(echo.method, 'PUT');
    assert.equal(echo.path, '/some/path%20x');
    assert.equal(echo.url, '/some/path%20x?a=1&a=2&b=%zz');
    assert.deepEqual(echo.query, { a: ['1', '2'], b: '%zz' });
    assert.equal(echo.headers['x-custom'], 'yes');
    assert.equal(echo.body, 'héllo');
    assert.equal(echo.bodyEncoding, 'utf8');
    assert.equal(echo.bodyBytes, Buffer.byteLength('héllo'));
    assert.equal(echo.bodySha256, createHash('sha256').update('héllo').digest('hex'));
  });

  void it('echo binary bodies as base64 and cap big ones while hashing every byte', async (t) => {
    const c = await cloud(t);
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST');
    const vm = await c.waitForVm((v) => v.state === 'running');

    const binary = Buffer.from([0xff, 0x00, 0xfe, 0x80]);
    const b = JSON.parse((await call(vm.url!, 'POST', binary)).text) as VmEcho;
    assert.equal(b.bodyEncoding, 'base64');
    assert.equal(Buffer.from(b.body, 'base64').equals(binary), true);

    const big = Buffer.alloc(3 * 1024 * 1024, 'a');
    const e = JSON.parse((await call(vm.url!, 'POST', big)).text) as VmEcho;
    assert.equal(e.bodyBytes, big.length);
    assert.equal(e.bodySha256, createHash('sha256').update(big).digest('hex'));
    assert.equal(e.bodyTruncated, true);
    assert.equal(e.body.length, 64 * 1024);
  });

  void it('stream server-sent events and chunked bodies piece by piece', async (t) => {
    const c = await cloud(t);
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST');
    const vm = await c.waitForVm((v) => v.state === 'running');

    const res = await request(`${vm.url}/__sse?n=3&intervalMs=5`, { dispatcher: agent });
    assert.equal(res.headers['content-type'], 'text/event-stream');
    const pieces: string[] = [];
    for await (const chunk of res.body) pieces.push(String(chunk));
    const text = pieces.join('');
    assert.equal(text.match(/^event: tick$/gm)?.length, 3);
    assert.match(text, /data: \{"vm":"1","i":2\}/);

    const chunked = await request(`${vm.url}/__stream?chunks=4&intervalMs=1`, { dispatcher: agent });
    assert.equal(chunked.headers['transfer-encoding'], 'chunked');
    assert.equal(await chunked.body.text(), 'chunk 0\nchunk 1\nchunk 2\nchunk 3\n');

    const status = await call(`${vm.url}/__status?code=503`);
    assert.equal(status.status, 503);
    assert.equal((JSON.parse(status.text) as VmEcho).path, '/__status');
  });
});

void describe('failure and hang modes', () => {
  void it('failureRate 1: the boot ends failed, the VM never listens, get_vm does not offer it', async (t) => {
    const c = await cloud(t, { failureRate: 1 });
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST');
    const vm = await c.waitForVm((v) => v.state !== 'booting');
    assert.equal(vm.state, 'failed');
    assert.equal(vm.url, undefined);
    assert.match(vm.reason ?? '', /failed/);
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g1`)).status, 404);
    const status = JSON.parse((await call(`${c.url}/vms/1`)).text) as { state: string; reason: string };
    assert.equal(status.state, 'failed');
  });

  void it('hangRate 1: the VM stays booting while later boots complete', async (t) => {
    const c = await cloud(t, { hangRate: 1, bootTimeMinMs: 0, bootTimeMaxMs: 0 });
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST');
    c.configure({ hangRate: 0 });
    await call(`${c.url}/span_as/as1/for_user_with_groups/g2`, 'POST');
    // Timers of equal delay fire in creation order: had VM 1 a boot timer, it would be done.
    await c.waitForVm((v) => v.id === '2' && v.state === 'running');
    assert.equal(c.vm('1')!.state, 'booting');
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g1`)).text, '["booting"]');
  });

  void it('a seed reproduces which boots fail, hang and run, and how long they take', async (t) => {
    const run = async (): Promise<string[]> => {
      const c = await cloud(t, { seed: 7, failureRate: 0.3, hangRate: 0.3, bootTimeMinMs: 0, bootTimeMaxMs: 3 });
      for (let i = 0; i < 12; i++) await call(`${c.url}/span_as/as1/for_user_with_groups/g${i}`, 'POST');
      const planned = c.vms();
      // Every boot that is not meant to hang settles as its fate says.
      await Promise.all(planned.filter((v) => v.fate !== 'hang').map((p) => c.waitForVm((v) => v.id === p.id && v.state !== 'booting')));
      const expected = { run: 'running', fail: 'failed', hang: 'booting' } as const;
      for (const v of c.vms()) assert.equal(v.state, expected[v.fate!], `VM ${v.id}`);
      return planned.map((v) => `${v.fate}:${v.bootMs}`);
    };
    const first = await run();
    assert.deepEqual(await run(), first);
    for (const fate of ['run', 'fail', 'hang']) assert.ok(first.some((f) => f.startsWith(`${fate}:`)), `${fate} in ${first.join()}`);
  });
});

void describe('stop and status (additions)', () => {
  void it('GET /vms/<id>, GET /vms, DELETE and POST stop are idempotent; a stopped VM refuses connections', async (t) => {
    const c = await cloud(t);
    await call(`${c.url}/span_as/as1/for_user_with_groups/g2,g1`, 'POST');
    const vm = await c.waitForVm((v) => v.state === 'running');

    const status = await call(`${c.url}/vms/1`);
    assert.equal(status.headers['content-type'], 'application/json');
    const body = JSON.parse(status.text) as Record<string, unknown>;
    assert.deepEqual(
      { id: body.id, asId: body.asId, groups: body.groups, state: body.state, url: body.url },
      { id: '1', asId: 'as1', groups: ['g2', 'g1'], state: 'running', url: vm.url },
    );
    assert.equal(typeof body.createdAt, 'string');
    assert.equal(typeof body.readyAt, 'string');
    assert.equal(body.fate, undefined, 'test-only fields stay out of the API');
    assert.equal((JSON.parse((await call(`${c.url}/vms`)).text) as unknown[]).length, 1);

    // An open stream is cut when the VM stops.
    const sse = await request(`${vm.url}/__sse?n=1000&intervalMs=5`, { dispatcher: agent });
    const streamEnded = (async () => {
      try {
        for await (const _ of sse.body) { /* drain */ }
        return 'ended';
      } catch {
        return 'cut';
      }
    })();

    assert.equal((await call(`${c.url}/vms/1`, 'DELETE')).status, 204);
    assert.equal(await streamEnded, 'cut');
    assert.equal(await tryConnect(vm.port!), 'ECONNREFUSED');
    assert.equal(c.vm('1')!.state, 'stopped');
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g1,g2`)).status, 404);
    assert.equal((await call(`${c.url}/vms/1`, 'DELETE')).status, 204, 'idempotent');
    const again = await call(`${c.url}/vms/1/stop`, 'POST');
    assert.equal(again.status, 200);
    assert.equal((JSON.parse(again.text) as { state: string }).state, 'stopped');
    assert.equal(c.stats.stops, 1);

    const unknown = await call(`${c.url}/vms/99`, 'DELETE');
    assert.equal(unknown.status, 404);
    assert.deepEqual(JSON.parse(unknown.text), { error: 'vm_not_found', id: '99' });
    assert.equal((await call(`${c.url}/vms/99`)).status, 404);
  });

  void it('a VM stopped while booting never starts', async (t) => {
    const c = await cloud(t);
    const release = c.holdBoots();
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST');
    assert.equal((await call(`${c.url}/vms/1`, 'DELETE')).status, 204);
    release();
    // A later VM's boot completing shows the held one had its chance.
    await call(`${c.url}/span_as/as1/for_user_with_groups/g2`, 'POST');
    await c.waitForVm((v) => v.id === '2' && v.state === 'running');
    assert.equal(c.vm('1')!.state, 'stopped');
  });

  void it('crash() kills the server; report running keeps the API saying running', async (t) => {
    const c = await cloud(t, { seedData: true });
    const port = c.vm('1')!.port!;
    await c.crash('1', { report: 'running' });
    assert.equal(await tryConnect(port), 'ECONNREFUSED');
    assert.equal(c.vm('1')!.state, 'running');
    await c.crash('2');
    assert.equal(c.vm('2')!.state, 'failed');
  });

  void it('answers 429 past maxLiveVms, and injected faults once', async (t) => {
    const c = await cloud(t, { maxLiveVms: 1, hangRate: 1 });
    assert.equal((await call(`${c.url}/span_as/a/for_user_with_groups/g`, 'POST')).status, 202);
    const over = await call(`${c.url}/span_as/a/for_user_with_groups/g`, 'POST');
    assert.equal(over.status, 429);
    assert.equal(over.headers['retry-after'], '1');

    c.failNextApiCalls(2, { kind: 'status', status: 503, retryAfterS: 2 });
    const f = await call(`${c.url}/vms`);
    assert.equal(f.status, 503);
    assert.equal(f.headers['retry-after'], '2');
    assert.equal((await call(`${c.url}/vms`)).status, 503);
    assert.equal((await call(`${c.url}/vms`)).status, 200);
  });
});

void describe('untrusted input', () => {
  void it('answers malformed requests with a clear 4xx and keeps serving', async (t) => {
    const c = await cloud(t, { seedData: true });
    const cases: [string, string, number, RegExp?][] = [
      ['GET', '/get_vm/as1/for_user_with_groups/%E0%A4%A', 400, /percent-encoding/],
      ['GET', '/get_vm/as%zz/for_user_with_groups/g1', 400, /percent-encoding/],
      ['GET', `/get_vm/as1/for_user_with_groups/${Array.from({ length: 65 }, (_, i) => `g${i}`).join(',')}`, 400, /too many groups/],
      ['GET', `/get_vm/as1/for_user_with_groups/${'g'.repeat(200)}`, 400, /longer than/],
      ['GET', `/get_vm/${'a'.repeat(200)}/for_user_with_groups/g1`, 400, /longer than/],
      ['GET', '/get_vm/as1/for_user_with_groups/g1%00', 400, /control character/],
      ['POST', '/span_as/as%0A1/for_user_with_groups/g1', 400, /control character/],
      ['GET', `/get_vm/as1/for_user_with_groups/${'g,'.repeat(3000)}`, 414],
      ['POST', '/get_vm/as1/for_user_with_groups/g1', 405],
      ['GET', '/span_as/as1/for_user_with_groups/g1', 405],
      ['PUT', '/vms/1', 405],
      ['GET', '/nothing/here', 404],
      ['GET', '/get_vm//for_user_with_groups/g1', 404],
    ];
    for (const [method, path, status, message] of cases) {
      const res = await call(`${c.url}${path}`, method);
      assert.equal(res.status, status, `${method} ${path.slice(0, 60)}`);
      if (message) assert.match(res.text, message);
      if (status === 405) assert.ok(res.headers.allow, 'a 405 names the allowed methods');
    }
    assert.match(await raw(c.port, 'GET http://evil.example/get_vm/as1/for_user_with_groups/g1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.match(await raw(c.port, 'NONSENSE\r\n\r\n'), /^HTTP\/1\.1 400/);
    assert.match(await raw(c.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`), /^HTTP\/1\.1 431/);
    assert.equal(c.stats.spans, 0, 'no malformed request created a VM');

    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g2`)).status, 200, 'still serving');
  });

  void it('an empty group list is the empty set (addition): it sees only VMs started without groups', async (t) => {
    const c = await cloud(t, { seedData: true });
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/`)).status, 404);
    c.holdBoots();
    assert.equal((await call(`${c.url}/span_as/as1/for_user_with_groups/`, 'POST')).status, 202);
    assert.deepEqual(c.vm('4')!.groups, []);
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/`)).text, '["booting"]');
    assert.equal((await call(`${c.url}/get_vm/as1/for_user_with_groups/g2`)).text.includes('booting'), true);
  });
});

void describe('close', () => {
  void it('stops every VM and closes every port; a second close resolves', async () => {
    const c = await startMockCloud({ ...base, seedData: true });
    const ports = [c.port, ...c.vms().map((v) => v.port!)];
    await call(`${c.url}/span_as/as1/for_user_with_groups/g1`, 'POST'); // one still booting
    await c.close();
    await c.close();
    for (const port of ports) assert.equal(await tryConnect(port), 'ECONNREFUSED');
    assert.ok(c.vms().every((v) => v.state === 'stopped'));
  });
});

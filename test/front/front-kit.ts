/**
 * A real nginx (or HAProxy) in front of a real Smart Proxy, for the front-proxy mode tests:
 * free ports picked by binding and closing (nginx cannot listen on port 0), a private prefix
 * in a temp dir, the process reaped on every path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { request, type Agent, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
export { freePort } from '../helpers/free-port.ts';


async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export interface FrontProcess {
  readonly dir: string;
  readonly output: () => string;
  close(): Promise<void>;
}

async function run(command: string, args: string[], dir: string, port: number): Promise<FrontProcess> {
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  let closing = false;
  const exited = new Promise<void>((r) => child.once('exit', (code, signal) => {
    // A front proxy that dies under a test fails every request after it with a bare ECONNREFUSED:
    // say why, with its error log, where the test run's output shows it.
    if (!closing) {
      let log = '';
      try {
        log = readFileSync(join(dir, 'error.log'), 'utf8').split('\n').slice(-30).join('\n');
      } catch { /* no log written */ }
      process.stderr.write(`${command} (${dir}) exited unexpectedly: code ${String(code)}, signal ${String(signal)}\n${out}\n${log}\n`);
    }
    r();
  }));
  const close = async (): Promise<void> => {
    closing = true;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    // Listening is the event; the loop yields to the event loop between connects.
    while (!(await accepts(port))) {
      if (child.exitCode !== null) throw new Error(`${command} exited: ${out}`);
      await new Promise((r) => setImmediate(r));
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { dir, output: () => out, close };
}

/**
 * nginx in the foreground with `snippet` (the generated config) inside `http { }` and `main`
 * (`load_module` lines) before everything. One process serves, unless `workers` asks for more
 * (then a master and that many workers).
 */
export async function startNginx(snippet: (dir: string) => string, port: number, main = '', workers = 1): Promise<FrontProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'sp-front-nginx-'));
  chmodSync(dir, 0o777); // workers may run as another user
  const conf = `${main}
daemon off;
master_process ${workers > 1 ? 'on' : 'off'};
worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${snippet(dir)}
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  return run('/usr/sbin/nginx', ['-e', join(dir, 'error.log'), '-p', dir, '-c', join(dir, 'nginx.conf')], dir, port);
}

/** HAProxy in the foreground with the generated config and Lua helper. */
export async function startHaproxy(config: (dir: string) => string, lua: string, port: number): Promise<FrontProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'sp-front-haproxy-'));
  writeFileSync(join(dir, 'smart-proxy.lua'), lua);
  writeFileSync(join(dir, 'haproxy.cfg'), config(dir));
  return run('/usr/sbin/haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], dir, port);
}

// Shared by the nginx and HAProxy suites: requests, the echo backend, credentials.

export const sha = (t: string): string => `sha256:${createHash('sha256').update(t).digest('hex')}`;

export interface Answer { status: number; headers: IncomingMessage['headers']; body: string }

/**
 * A raw request (node:http sends the path exactly as given, unlike fetch); on a connection of
 * its own, or on `agent`'s kept-alive one.
 */
export function get(port: number, path: string, headers: Record<string, string> = {}, agent?: Agent): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent, headers: agent === undefined ? { connection: 'close', ...headers } : headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** The echo backend's answer (what it received), with the body kept whole. */
export function echo(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    // remotePort: the connection it came on (a kept-alive one comes again on the same).
    const answer = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders, body, bodyBytes: body.length, remotePort: req.socket.remotePort });
    // A backend with CORS fields of its own, on request (a resource's cors policy replaces them).
    const cors = req.headers['x-echo-cors'] === undefined ? {} : { 'access-control-allow-origin': '*', 'access-control-expose-headers': 'x-backend-secret' };
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer), ...cors }).end(answer);
  });
}

export function send(port: number, path: string, method: string, body: string, headers: Record<string, string>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers: { connection: 'close', 'content-length': String(Buffer.byteLength(body)), ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export const bearer = (t: string): Record<string, string> => ({ authorization: `Bearer ${t}` });

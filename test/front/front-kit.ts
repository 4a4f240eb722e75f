/**
 * A real nginx (or HAProxy) in front of a real Smart Proxy, for the front-proxy mode tests:
 * free ports picked by binding and closing (nginx cannot listen on port 0), a private prefix
 * in a temp dir, the process reaped on every path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
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
 * (`load_module` lines) before everything.
 */
export async function startNginx(snippet: (dir: string) => string, port: number, main = ''): Promise<FrontProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'sp-front-nginx-'));
  chmodSync(dir, 0o777); // workers may run as another user
  const conf = `${main}
daemon off;
master_process off;
worker_processes 1;
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

/**
 * nginx for the benchmarks, in the foreground with one process (`master_process off`), so
 * the pid we hold is the one serving, and its CPU time is all of nginx's work.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnPinned, waitForHttp, type Spawned } from './procs.ts';

function common(dir: string, name: string, main = ''): string {
  mkdirSync(join(dir, `${name}-tmp`), { recursive: true });
  const tmp = join(dir, `${name}-tmp`);
  return `${main}
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
# The front-proxy config matches regexes per request (the others match none).
pcre_jit on;
pid ${join(dir, `${name}.pid`)};
error_log ${join(dir, `${name}-error.log`)} warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path ${tmp}/body;
  proxy_temp_path ${tmp}/proxy;
  fastcgi_temp_path ${tmp}/fastcgi;
  uwsgi_temp_path ${tmp}/uwsgi;
  scgi_temp_path ${tmp}/scgi;
`;
}

/** The upstream every contender forwards to: a fixed 2-byte answer, the cheapest backend there is. */
export async function startNginxUpstream(dir: string, port: number, cpu: string): Promise<Spawned> {
  const conf = `${common(dir, 'upstream')}
  default_type text/plain;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / { return 200 "ok"; }
  }
}
`;
  return start(dir, 'upstream', conf, port, cpu);
}

/**
 * The http-block contents of nginx as a reverse proxy with keep-alive to the upstream (how one
 * configures it for speed); the front-proxy A/B (bench/lib/front.ts) compares against the same.
 */
export function proxyPassHttp(port: number, upstreamPort: number): string {
  return `  upstream backend {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    # The same per-request memory as the front-proxy mode's generated server block, so that the
    # comparison with it measures what the mode does, not a tuning only one side has.
    request_pool_size 16k;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
    }
  }`;
}

/** nginx as a reverse proxy with keep-alive to the upstream. */
export async function startNginxProxy(dir: string, port: number, upstreamPort: number, cpu: string): Promise<Spawned> {
  const conf = `${common(dir, 'nginx-proxy')}
${proxyPassHttp(port, upstreamPort)}
}
`;
  return start(dir, 'nginx-proxy', conf, port, cpu);
}

/**
 * nginx in front-proxy mode: the config `smart-proxy nginx-config` generates (given as
 * `snippet`), inside the same http block as the other nginx contenders; `main` is put before
 * everything (the Lua variant's load_module lines).
 */
export async function startNginxFront(dir: string, port: number, snippet: string, cpu: string, name = 'nginx-front', main = ''): Promise<Spawned> {
  const conf = `${common(dir, name, main)}
  # The generated config writes no access log; the benchmark's nginx contenders log nothing.
${snippet}
}
`;
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, conf);
  const proc = spawnPinned(name, 'nginx', ['-e', join(dir, `${name}-error.log`), '-p', dir, '-c', file], { cpu, logFile: join(dir, `${name}.log`) });
  await waitForHttp(`http://127.0.0.1:${port}/smart_proxy/`);
  return proc;
}

async function start(dir: string, name: string, conf: string, port: number, cpu: string): Promise<Spawned> {
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, conf);
  const proc = spawnPinned(name, 'nginx', ['-e', join(dir, `${name}-error.log`), '-p', dir, '-c', file], { cpu, logFile: join(dir, `${name}.log`) });
  await waitForHttp(`http://127.0.0.1:${port}/`);
  return proc;
}

/**
 * nginx configured for `count` sites as an nginx user writes them: one `location` per site
 * (`/smart_proxy/rN/`, the paths the many suite's wrk script asks for). `perSiteUpstreams`:
 * each location proxies to an `upstream` block of its own (10,000 sites, 10,000 backends,
 * each with its keep-alive cache; here all at the one benchmark upstream); otherwise all
 * locations share one upstream block, as Smart Proxy's resources share one connection pool per
 * backend origin (like for like with the many suite's Smart Proxy configs).
 */
export async function startNginxMany(dir: string, name: string, port: number, upstreamPort: number, cpu: string, count: number, perSiteUpstreams: boolean): Promise<Spawned> {
  const upstream = (n: string): string => `  upstream ${n} { server 127.0.0.1:${upstreamPort}; keepalive 64; keepalive_requests 100000000; }`;
  const lines: string[] = [];
  if (perSiteUpstreams) for (let i = 1; i <= count; i++) lines.push(upstream(`site${i}`));
  else lines.push(upstream('backend'));
  lines.push('  server {', `    listen 127.0.0.1:${port} backlog=4096;`, '    request_pool_size 16k;',
    '    proxy_http_version 1.1;', '    proxy_set_header Connection "";', '    proxy_set_header X-Forwarded-For $remote_addr;',
    '    location = / { return 200 "up"; }');
  for (let i = 1; i <= count; i++) lines.push(`    location /smart_proxy/r${i}/ { proxy_pass http://${perSiteUpstreams ? `site${i}` : 'backend'}; }`);
  lines.push('  }');
  const conf = `${common(dir, name)}
${lines.join('\n')}
}
`;
  return start(dir, name, conf, port, cpu);
}

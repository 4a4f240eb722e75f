/**
 * Front-proxy mode for the benchmarks: Smart Proxy (deciding, behind) and nginx running the
 * config `smart-proxy nginx-config` generates (in front), both pinned to the proxy CPU, in
 * front of the shared upstream, with the bench token verified by Smart Proxy and the allow
 * cached for 5 s (docs/operations/front-proxy.md). Used by the throughput suite (its `front`
 * row) and by the paired front suite (suites/front.ts).
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.ts';
import { generateNginxConfig, type NginxCache } from '../../src/front/nginx-config.ts';
import { NGINX_LUA_MODULES } from '../../src/front/nginx-lua.ts';
import { startSmartProxy, type Context, type SmartChild } from './context.ts';
import { proxyPassHttp, startNginxFront } from './nginx.ts';
import { freePort, waitForHttp, type Spawned } from './procs.ts';

export interface FrontMode {
  /** The front nginx. */
  readonly nginx: Spawned;
  readonly port: number;
  /** Smart Proxy behind it (decisions and the data plane). */
  readonly smart: SmartChild;
  /** Another nginx with the same config on other ports and its own cache (callgrind runs it). */
  readonly snippetFor: (port: number, controlPort: number, cachePath: string) => string;
  /** What that nginx needs before its config's http block (load_module lines). */
  readonly main: string;
  stop(): Promise<void>;
}

/** A decision cache on a tmpfs, as docs/operations/front-proxy.md advises. */
function cacheDir(ctx: Context, name: string): string {
  return existsSync('/dev/shm') ? join('/dev/shm', `smart-proxy-bench-${process.pid}-${name}`) : join(ctx.workDir, `${name}-cache`);
}

/**
 * `decisions` picks the generated config's decision cache: `proxy` (proxy_cache, the default)
 * or `lua` (a lua_shared_dict; its nginx and Smart Proxy get names of their own).
 */
export async function startFrontMode(ctx: Context, baseYaml: string, probePath: string, headers: readonly string[], decisions: NginxCache = 'proxy'): Promise<FrontMode> {
  const [port, decisionPort, controlPort] = [await freePort(), await freePort(), await freePort()];
  const suffix = decisions === 'proxy' ? '' : `-${decisions}`;
  const cache = cacheDir(ctx, `nginx-front${suffix}`);
  const main = decisions === 'lua' ? NGINX_LUA_MODULES : '';
  const yamlFor = (listen: number, control: number, cachePath: string): string => `${baseYaml}front:
  enabled: true
  decision: { host: 127.0.0.1, port: ${decisionPort} }
  grantTtlMs: 5000
  nginx: { listen: "127.0.0.1:${listen}", controlListen: "127.0.0.1:${control}", cachePath: "${cachePath}" }
`;
  const smart = await startSmartProxy(ctx, `smart-proxy-behind-nginx${suffix}`, yamlFor(port, controlPort, cache));
  const dataPlane = new URL(smart.url).host;
  const snippetFor = (listen: number, control: number, cachePath: string): string =>
    generateNginxConfig(parseConfig(yamlFor(listen, control, cachePath)), { dataPlane, cache: decisions });
  const cleanup = (): void => {
    rmSync(cache, { recursive: true, force: true });
  };
  let nginx: Spawned;
  try {
    nginx = await startNginxFront(ctx.workDir, port, snippetFor(port, controlPort, cache), ctx.proxyCpu, `nginx-front${suffix}`, main);
  } catch (err) {
    await smart.stop();
    cleanup();
    throw err;
  }
  const url = `http://127.0.0.1:${port}${probePath}`;
  // The first request wakes nothing (a static backend) but makes the first decision.
  const res = await fetch(url, { headers: Object.fromEntries(headers.map((h) => [h.slice(0, h.indexOf(':')), h.slice(h.indexOf(':') + 1).trim()])) });
  await res.arrayBuffer();
  if (res.status !== 200) {
    await Promise.all([nginx.stop(), smart.stop()]);
    cleanup();
    throw new Error(`front-proxy mode answered ${res.status} for ${url}`);
  }
  await waitForHttp(url);
  return {
    nginx, port, smart, snippetFor, main,
    async stop() {
      await nginx.stop();
      await smart.stop();
      cleanup();
    },
  };
}

/** A fresh tmpfs folder for another nginx's decision cache. */
export function extraCacheDir(ctx: Context, name: string): string {
  const dir = cacheDir(ctx, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Whole nginx configs for a second nginx of each kind (the callgrind runs): one process in the
 * foreground, as bench/lib/nginx.ts runs them, the same http settings, files under `dir`.
 */
function wholeConf(dir: string, http: string, main = ''): string {
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  return `${main}
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pcre_jit on;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
${http}
}
`;
}

/** nginx's plain proxy_pass, exactly as startNginxProxy (bench/lib/nginx.ts) configures it. */
export function plainProxyConf(dir: string, port: number, upstreamPort: number): string {
  return wholeConf(dir, proxyPassHttp(port, upstreamPort));
}

/** nginx running a generated front-proxy snippet (`main`: its load_module lines, if any). */
export function frontConf(dir: string, snippet: string, main = ''): string {
  return wholeConf(dir, snippet, main);
}

/**
 * Readiness probes on fresh connections. A pooled keep-alive socket could make a backend
 * that just died look alive (or a forwarder's half-open socket look dead), so every probe
 * opens its own connection and closes it.
 */
import type { IncomingMessage } from 'node:http';
import { http, https } from './http-modules.ts';
import { connect } from 'node:net';
import type { ProbeOutcome, ProbeSpec, Prober } from '../core/ports.ts';
import { DEFAULT_BACKEND_TLS, tlsConnectOptions } from './backend-tls.ts';
import { joinUpstreamPath } from './route.ts';

export const netProber: Prober = {
  probe(endpoint: string, spec: ProbeSpec, signal: AbortSignal): Promise<ProbeOutcome> {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      return Promise.resolve({ ok: false, reason: `invalid endpoint ${endpoint}` });
    }
    return spec.kind === 'http' ? httpProbe(url, spec, signal) : tcpProbe(url, spec.timeoutMs, signal);
  },
};

function defaultPort(url: URL): number {
  return url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
}

function httpProbe(url: URL, spec: Extract<ProbeSpec, { kind: 'http' }>, signal: AbortSignal): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve({ ok: false, reason: 'aborted' });
      return;
    }
    let settled = false;
    const finish = (outcome: ProbeOutcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      req.destroy();
      resolve(outcome);
    };
    const options = {
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: defaultPort(url),
      method: 'GET',
      path: joinUpstreamPath(url.pathname, spec.path, ''),
      agent: false as const,
      headers: { 'user-agent': 'smart-proxy-probe', connection: 'close' },
    };
    const onResponse = (res: IncomingMessage): void => {
      const ok = spec.expectStatus.includes(res.statusCode ?? 0);
      res.resume();
      finish(ok ? { ok: true } : { ok: false, reason: `status ${res.statusCode}` });
    };
    // An https: endpoint is probed over TLS with the resource's settings, as it is forwarded.
    const req = url.protocol === 'https:'
      ? https.request({ ...options, ...tlsConnectOptions(spec.tls ?? DEFAULT_BACKEND_TLS, url.hostname) }, onResponse)
      : http.request(options, onResponse);
    const onAbort = (): void => finish({ ok: false, reason: 'aborted' });
    const timer = setTimeout(() => finish({ ok: false, reason: `no answer within ${spec.timeoutMs} ms` }), spec.timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    req.on('error', (err: NodeJS.ErrnoException) => finish({ ok: false, reason: err.code ?? err.message }));
    req.end();
  });
}

function tcpProbe(url: URL, timeoutMs: number, signal: AbortSignal): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve({ ok: false, reason: 'aborted' });
      return;
    }
    let settled = false;
    const socket = connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port: defaultPort(url) });
    const finish = (outcome: ProbeOutcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      resolve(outcome);
    };
    const onAbort = (): void => finish({ ok: false, reason: 'aborted' });
    const timer = setTimeout(() => finish({ ok: false, reason: `no connection within ${timeoutMs} ms` }), timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => finish({ ok: true }));
    socket.once('error', (err: NodeJS.ErrnoException) => finish({ ok: false, reason: err.code ?? err.message }));
  });
}

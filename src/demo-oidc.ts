/**
 * `npm start -- --oidc`: the demo with browser sign-in. Starts the embedded OpenID provider
 * (src/mock-idp/) with the demo's users, and adds an oidc identity and session settings to the
 * demo config, so that opening a resource link in a browser shows the whole flow: sign in,
 * waiting page, the resource. Demo values only.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import type { Config } from './config/schema.ts';
import { demoCredentials } from './demo-banner.ts';
import { startEmbeddedIssuer, type EmbeddedIssuer, type IssuerUser } from './mock-idp/embedded-issuer.ts';

/** The demo users at the embedded provider (the same people and groups as the demo tokens). */
export const demoIssuerUsers: readonly IssuerUser[] = [
  { login: 'alice', password: demoCredentials.alice.password, groups: demoCredentials.alice.groups },
  { login: 'bob', password: 'bob-demo-password', groups: demoCredentials.bob.groups },
  { login: 'carol', password: demoCredentials.carol.password, groups: demoCredentials.carol.groups },
];

const CLIENT_ID = 'smart-proxy-demo';

/** A port free on `host` now (the kernel's choice). */
function freePortOn(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen({ port: 0, host, exclusive: true }, () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts the provider and returns the config with sign-in added. The public URL names the
 * proxy's port, so `--port 0` is resolved to a free port first (a public URL with port 0
 * would send every browser nowhere); a taken `issuerPort` (another demo running) falls back
 * to a free one, which the banner prints.
 */
export async function withEmbeddedIssuer(config: Config, issuerPort: number): Promise<{ config: Config; issuer: EmbeddedIssuer; apply: (c: Config) => Config }> {
  const port = config.listen.port === 0 ? await freePortOn(config.listen.host) : config.listen.port;
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host;
  const publicUrl = `${config.tls === undefined ? 'http' : 'https'}://${host}:${port}`;
  const clientSecret = randomBytes(24).toString('base64url');
  const start = (p: number): Promise<EmbeddedIssuer> => startEmbeddedIssuer({
    users: demoIssuerUsers, clientId: CLIENT_ID, clientSecret, proxyUrl: publicUrl, identityName: 'demo',
    host: '127.0.0.1', port: p,
  });
  const issuer = await start(issuerPort).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || issuerPort === 0) throw err;
    return start(0);
  });
  const oidc = {
    kind: 'oidc' as const, name: 'demo', issuer: issuer.url, clientId: CLIENT_ID, clientSecret,
    scopes: ['openid', 'profile', 'groups'], algorithms: ['RS256'], userClaim: 'preferred_username', groupsClaim: 'groups',
    groupsMap: {}, userinfo: false, acceptBearer: true, endSession: true,
    discoveryTimeoutMs: 5_000, discoveryRetryMs: 1_000, clockToleranceMs: 30_000,
  };
  // Fresh keys per run: a restart signs everyone out, which suits a demo.
  const keys = [randomBytes(32).toString('base64url')];
  // Also what a reload (SIGHUP) applies to the re-read file: the same issuer, client and keys.
  const apply = (c: Config): Config => ({
    ...c,
    listen: { ...c.listen, port },
    identities: [...c.identities, oidc],
    access: { ...c.access, sessions: { ...c.access.sessions, publicUrl, keys } },
  });
  return { issuer, config: apply(config), apply };
}

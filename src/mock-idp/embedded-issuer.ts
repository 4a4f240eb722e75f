/**
 * An embedded OpenID provider for the demo and the tests: the certified `oidc-provider`
 * package (a development dependency, loaded only when asked for) on a port of its own, with
 * users who have passwords and groups, a `groups` claim in the ID token, refresh tokens, and
 * RP-initiated logout. Consent is implied for the proxy's client, so signing in is one form.
 *
 * It is a stand-in like the mock cloud: keys are generated per run and everything is held in
 * memory. Never a production identity provider.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair } from 'jose';

export interface IssuerUser {
  readonly login: string;
  readonly password: string;
  readonly groups: readonly string[];
  readonly name?: string;
}

export interface EmbeddedIssuerOptions {
  readonly users: readonly IssuerUser[];
  readonly clientId: string;
  readonly clientSecret: string;
  /** The proxy's public URL: callbacks and the post-logout page are under it. */
  readonly proxyUrl: string;
  /** oidc-provider client names the callback; one per proxy identity name. */
  readonly identityName: string;
  readonly host?: string;
  readonly port?: number;
  readonly accessTokenTtlS?: number;
  readonly idTokenTtlS?: number;
  /** Where the groups claim goes: `groups` (default) or a dot path like `realm_access.roles`. */
  readonly groupsClaimPath?: string;
  /**
   * The profile and groups claims at the userinfo endpoint only, the ID token carrying just
   * the subject (as OpenID Connect Core §5.4 has it for the code flow, and as some providers do).
   */
  readonly claimsAtUserinfoOnly?: boolean;
  /**
   * Tests: the key set at `/jwks` is not the one the tokens are signed with (a provider
   * misconfigured, or a token endpoint that is not the provider's): no ID token verifies.
   */
  readonly servesForeignKeys?: boolean;
  /**
   * Tests: sees every request first and answers it itself when it returns true (a token
   * endpoint that fails, a slow provider), the provider answering the others.
   */
  readonly intercept?: (req: IncomingMessage, res: ServerResponse) => boolean;
}

export interface EmbeddedIssuer {
  readonly url: string;
  /** Sign-ins that completed, by login (tests). */
  readonly signIns: Map<string, number>;
  /** Refresh grants served (tests). */
  refreshes: number;
  close(): Promise<void>;
}

/** What this file uses of oidc-provider (it ships no types). */
interface OidcProviderLike {
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
  interactionDetails(req: IncomingMessage, res: ServerResponse): Promise<{ uid: string; prompt: { name: string }; params: Record<string, unknown> }>;
  interactionFinished(req: IncomingMessage, res: ServerResponse, result: Record<string, unknown>, options?: Record<string, unknown>): Promise<void>;
  on(event: string, listener: (...args: unknown[]) => void): void;
  proxy?: boolean;
}
type ProviderCtor = new (issuer: string, config: Record<string, unknown>) => OidcProviderLike;
interface GrantLike { addOIDCScope(s: string): void; addOIDCClaims(c: string[]): void; save(): Promise<string> }
interface CtxLike {
  oidc: {
    client: { clientId: string };
    session: { accountId: string; grantIdFor(clientId: string): string | undefined };
    result?: { consent?: { grantId?: string } };
    provider: { Grant: { new (o: Record<string, unknown>): GrantLike; find(id: string): Promise<GrantLike | undefined> } };
  };
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let cur = target;
  for (const p of parts.slice(0, -1)) {
    cur[p] ??= {};
    cur = cur[p] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1] as string] = value;
}

function readBody(req: IncomingMessage, maxBytes = 16_384): Promise<URLSearchParams> {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
      if (body.length > maxBytes) reject(new Error('body too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

function loginPage(uid: string, error?: string): string {
  return '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title>'
    + '<meta name="viewport" content="width=device-width,initial-scale=1"></head>'
    + '<body style="font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem">'
    + '<h1>Demo identity provider</h1>'
    + (error === undefined ? '' : `<p role="alert" style="color:#b00">${esc(error)}</p>`)
    + `<form method="post" action="/interaction/${esc(uid)}/login">`
    + '<p><label>User <input name="login" autocomplete="username" required autofocus></label></p>'
    + '<p><label>Password <input name="password" type="password" autocomplete="current-password" required></label></p>'
    + '<p><button type="submit">Sign in</button></p></form></body></html>';
}

export async function startEmbeddedIssuer(options: EmbeddedIssuerOptions): Promise<EmbeddedIssuer> {
  let mod: { default: ProviderCtor };
  try {
    // A specifier in a variable: the package ships no types, and this file declares what it uses.
    const specifier = 'oidc-provider';
    mod = await import(specifier) as { default: ProviderCtor };
  } catch (err) {
    throw new Error('the embedded OpenID provider needs the development dependency "oidc-provider" (npm install)', { cause: err });
  }
  const Provider = mod.default;
  const server: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.address}:${addr.port}`;
  const users = new Map(options.users.map((u) => [u.login, u]));
  const proxyOrigin = new URL(options.proxyUrl).origin;
  // A signing key of its own per start, named by a fresh kid: a restarted provider has rotated
  // its keys, as a real one does (oidc-provider's development keys are the same every time).
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingKey = { ...await exportJWK(privateKey), kid: `k-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };
  const groupsPath = options.groupsClaimPath ?? 'groups';
  const provider = new Provider(url, {
    clients: [{
      client_id: options.clientId,
      client_secret: options.clientSecret,
      redirect_uris: [`${proxyOrigin}/_smart_proxy/auth/callback/${options.identityName}`],
      post_logout_redirect_uris: [`${proxyOrigin}/_smart_proxy/auth/signed-out`],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    }],
    async findAccount(_ctx: unknown, id: string) {
      const u = users.get(id);
      if (u === undefined) return undefined;
      return {
        accountId: id,
        claims() {
          const claims: Record<string, unknown> = { sub: id, preferred_username: id, name: u.name ?? id };
          setPath(claims, groupsPath, [...u.groups]);
          return claims;
        },
      };
    },
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: [groupsPath.split('.')[0]] },
    // Groups in the ID token itself, not only at userinfo (unless asked otherwise).
    conformIdTokenClaims: options.claimsAtUserinfoOnly === true,
    jwks: { keys: [signingKey] },
    pkce: { required: () => true },
    issueRefreshToken: () => true,
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource(ctx: { body: string }, form: string) {
          ctx.body = '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign out</title></head>'
            + '<body style="font-family:system-ui,sans-serif;max-width:24rem;margin:3rem auto;padding:0 1rem">'
            + `<h1>Sign out of the demo identity provider?</h1>${form}`
            + '<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button></body></html>';
        },
      },
    },
    interactions: { url: (_ctx: unknown, interaction: { uid: string }) => `/interaction/${interaction.uid}` },
    // The proxy's client needs no consent screen: the demo user signs in, and that is all.
    async loadExistingGrant(ctx: CtxLike) {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId ?? oidc.session.grantIdFor(oidc.client.clientId);
      if (grantId !== undefined) {
        const found = await oidc.provider.Grant.find(grantId);
        if (found !== undefined) return found;
      }
      const grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
      grant.addOIDCScope('openid profile email groups offline_access');
      grant.addOIDCClaims(['preferred_username', 'name', groupsPath.split('.')[0] as string]);
      await grant.save();
      return grant;
    },
    ttl: {
      AccessToken: options.accessTokenTtlS ?? 600,
      IdToken: options.idTokenTtlS ?? 3600,
      RefreshToken: 86_400,
      Session: 86_400,
      Grant: 86_400,
      Interaction: 600,
    },
    cookies: { keys: ['embedded-issuer-cookie-key-not-secret'] },
    renderError(ctx: { type: string; body: string }, out: Record<string, string>) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>Error</title><h1>Error</h1><pre>${esc(JSON.stringify(out, null, 2))}</pre>`;
    },
  });
  const signIns = new Map<string, number>();
  const issuer: EmbeddedIssuer = {
    url, signIns, refreshes: 0,
    close: () => new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
  provider.on('grant.success', (ctx: unknown) => {
    const grantType = (ctx as { oidc?: { params?: { grant_type?: string } } }).oidc?.params?.grant_type;
    if (grantType === 'refresh_token') issuer.refreshes++;
  });
  // oidc-provider logs server errors through events; a stand-in keeps quiet.
  provider.on('server_error', () => undefined);
  const handler = provider.callback();

  const interaction = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const details = await provider.interactionDetails(req, res);
    const send = (status: number, html: string): void => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(html);
    };
    if (req.method === 'GET') {
      send(200, loginPage(details.uid));
      return;
    }
    const form = await readBody(req);
    const user = users.get(form.get('login') ?? '');
    const given = Buffer.from(form.get('password') ?? '');
    const want = Buffer.from(user?.password ?? '\u0000');
    if (user === undefined || given.length !== want.length || !timingSafeEqual(given, want)) {
      send(200, loginPage(details.uid, 'Wrong user or password.'));
      return;
    }
    signIns.set(user.login, (signIns.get(user.login) ?? 0) + 1);
    await provider.interactionFinished(req, res, { login: { accountId: user.login } }, { mergeWithLastSubmission: false });
  };

  let foreignKeys: Promise<string> | undefined;
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (options.intercept?.(req, res) === true) return;
    if (options.servesForeignKeys === true && req.url === '/jwks') {
      foreignKeys ??= generateKeyPair('RS256', { extractable: true })
        .then(async ({ publicKey }) => JSON.stringify({ keys: [{ ...await exportJWK(publicKey), kid: 'foreign', alg: 'RS256', use: 'sig' }] }));
      foreignKeys.then((body) => res.writeHead(200, { 'content-type': 'application/json' }).end(body), () => res.writeHead(500).end());
      return;
    }
    if (req.url?.startsWith('/interaction/') === true) {
      interaction(req, res).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' });
        res.end(`sign-in failed: ${err instanceof Error ? err.message : String(err)}`);
      });
      return;
    }
    handler(req, res);
  });
  return issuer;
}

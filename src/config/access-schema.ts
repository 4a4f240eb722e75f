/**
 * The access part of the one configuration schema (composed into schema.ts): who may call
 * (`identities`), what each resource requires (`resources.*.access`), what the backend learns
 * and how much may be woken (`access`). See docs/concepts/access.md.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { GROUP_NAME_RE, isValidUserName } from './names.ts';
import { hashFormatProblem } from './secret-format.ts';

const ms = (description: string, dflt: number) => z.number().int().min(0).default(dflt).describe(description);

export const groupNameSchema = z.string().regex(GROUP_NAME_RE, 'a group name: 1-128 of A-Z a-z 0-9 . _ ~ @ + : = - (the URL grammar)');
const userNameSchema = z.string().refine(isValidUserName, 'a user name: 1-256 characters, no control characters');
/** RFC 9110 §5.1 token characters. */
export const headerNameSchema = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/, 'an HTTP header name');

export const cidrSchema = z.string().refine((e) => {
  const [addr, bits, extra] = e.split('/');
  const family = isIP(addr ?? '');
  if (family === 0 || extra !== undefined) return false;
  if (bits === undefined) return true;
  const n = Number(bits);
  return /^\d{1,3}$/.test(bits) && n <= (family === 6 ? 128 : 32);
}, 'an IP address or CIDR (10.0.0.0/8, ::1)');

const groupsField = z.array(groupNameSchema).default([]).describe('Groups this identity holds.');

export const tokenIdentitySchema = z.object({
  kind: z.literal('token'),
  tokens: z.array(z.object({
    user: userNameSchema,
    groups: groupsField,
    hash: z.string().superRefine((h, ctx) => {
      const problem = hashFormatProblem(h, true);
      if (problem !== undefined) ctx.addIssue({ code: 'custom', message: `${problem}; "sha256:<hex>" from \`smart-proxy hash-password --token\`` });
    }).describe('sha256:<hex> of the token (or a $scrypt$ hash). Never the token itself.'),
  }).strict()).min(1),
}).strict().describe('Static API tokens, sent as `Authorization: Bearer <token>`.');

export const basicIdentitySchema = z.object({
  kind: z.literal('basic'),
  users: z.array(z.object({
    user: userNameSchema.refine((u) => !u.includes(':'), 'a Basic user name cannot contain ":" (RFC 7617)'),
    groups: groupsField,
    passwordHash: z.string().superRefine((h, ctx) => {
      const problem = hashFormatProblem(h, false);
      if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
    }).describe('$scrypt$… from `smart-proxy hash-password`.'),
  }).strict()).min(1),
}).strict().describe('HTTP Basic (RFC 7617) with scrypt-hashed passwords. Use it over TLS only.');

/** A secret given inline, or read from the environment or a file once at start-up. */
export const secretValueSchema = z.union([
  z.string().min(1),
  z.object({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/) }).strict(),
  z.object({ file: z.string().min(1) }).strict(),
]);

/** An HS* secret shorter than this is guessable (RFC 7518 §3.2 asks for at least the hash size). */
export const MIN_JWT_SECRET_CHARS = 32;

export const jwtAlgorithms = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;
const stringOrList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

export const jwtIdentitySchema = z.object({
  kind: z.literal('jwt'),
  issuer: stringOrList.describe('Accepted "iss" value(s).'),
  audience: stringOrList.describe('Accepted "aud" value(s): the token must name one.'),
  algorithms: z.array(z.enum(jwtAlgorithms)).min(1).describe('Accepted "alg" values (never chosen by the token alone).'),
  secret: secretValueSchema.optional()
    .describe('HS* shared secret (at least 32 characters): inline, or { env: NAME } / { file: PATH }, read at start-up and at each reload.'),
  publicKeyPem: z.string().includes('-----BEGIN PUBLIC KEY-----').optional().describe('One RS/PS/ES/EdDSA public key (SPKI PEM).'),
  jwks: z.object({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional().describe('Inline public JWK set (selected by "kid").'),
  jwksUrl: z.url({ protocol: /^https?$/ }).optional().describe('JWKS endpoint: fetched on first use, cached, refetched on an unknown "kid".'),
  jwksCacheMaxAgeMs: ms('Refetch the JWKS when the cached copy is older than this.', 600_000),
  jwksCooldownMs: ms('An unknown "kid" refetches the JWKS at most this often.', 30_000),
  jwksTimeoutMs: ms('Timeout of one JWKS fetch.', 5_000),
  clockToleranceMs: ms('Clock skew allowed on exp / nbf / iat.', 30_000),
  userClaim: z.string().min(1).default('sub').describe('Claim holding the user name.'),
  groupsClaim: z.string().min(1).default('groups')
    .describe('Dot path of the claim holding the groups (array, or space/comma-separated string), e.g. realm_access.roles.'),
}).strict().superRefine((j, ctx) => {
  const sources = [j.secret, j.publicKeyPem, j.jwks, j.jwksUrl].filter((s) => s !== undefined).length;
  if (sources !== 1) ctx.addIssue({ code: 'custom', path: ['jwksUrl'], message: 'set exactly one of secret, publicKeyPem, jwks, jwksUrl' });
  // Checked here when inline; a secret from { env } or { file } is checked when it is read.
  if (typeof j.secret === 'string' && j.secret.length < MIN_JWT_SECRET_CHARS) {
    ctx.addIssue({ code: 'custom', path: ['secret'], message: `too short: at least ${MIN_JWT_SECRET_CHARS} characters` });
  }
  const hs = j.algorithms.filter((a) => a.startsWith('HS'));
  if (j.secret !== undefined && hs.length !== j.algorithms.length) {
    ctx.addIssue({ code: 'custom', path: ['algorithms'], message: 'a secret verifies HS* algorithms only' });
  }
  if (j.secret === undefined && hs.length > 0) {
    ctx.addIssue({ code: 'custom', path: ['algorithms'], message: 'HS* algorithms need a secret (public keys cannot verify them)' });
  }
}).describe('JWT bearer tokens verified with jose.');

export const headerIdentitySchema = z.object({
  kind: z.literal('header'),
  fromAddresses: z.array(cidrSchema).min(1).describe('Only connections from these addresses may assert an identity (your authenticating front proxy).'),
  userHeader: headerNameSchema.default('x-forwarded-user'),
  groupsHeader: headerNameSchema.default('x-forwarded-groups'),
  groupsSeparator: z.string().min(1).max(4).default(',').describe('Separator between groups in groupsHeader.'),
}).strict().describe('An identity asserted by a trusted authenticating proxy (oauth2-proxy style); ignored and stripped from anyone else.');

export const oidcIdentitySchema = z.object({
  kind: z.literal('oidc'),
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,31}$/, 'a provider name: 1-32 of a-z 0-9 - (it is part of the callback URL)')
    .describe('Names the provider in its callback URL: {publicUrl}/_smart_proxy/auth/callback/{name}.'),
  issuer: z.url({ protocol: /^https?$/ }).describe('The issuer URL; its /.well-known/openid-configuration is read on first use.'),
  clientId: z.string().min(1),
  clientSecret: secretValueSchema.optional().describe('Confidential clients: the secret, or { env } / { file }. Absent: a public client (PKCE only).'),
  scopes: z.array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/)).default(['openid', 'profile', 'email'])
    .describe('Scopes asked for; "openid" is added when missing. Some providers issue refresh tokens only for "offline_access".'),
  algorithms: z.array(z.enum(jwtAlgorithms.filter((a) => !a.startsWith('HS')) as [string, ...string[]])).min(1).default(['RS256'])
    .describe('Accepted ID token (and bearer token) "alg" values.'),
  userClaim: z.string().min(1).default('sub').describe('Claim holding the user name (preferred_username is friendlier but may change).'),
  groupsClaim: z.string().min(1).default('groups').describe('Dot path of the claim holding the groups, e.g. realm_access.roles.'),
  groupsPrefix: z.string().min(1).optional().describe('Stripped from claimed groups that start with it (Keycloak group paths: "/").'),
  groupsMap: z.record(z.string().min(1), groupNameSchema).default({})
    .describe('Claimed group (after prefix stripping) → proxy group; claimed groups not valid in a URL and not mapped are ignored.'),
  userinfo: z.boolean().default(false).describe('Also read the userinfo endpoint at sign-in; its claims complete the ID token\'s.'),
  acceptBearer: z.boolean().default(true).describe('API clients may send this issuer\'s access tokens (JWTs) as Bearer tokens.'),
  bearerAudience: stringOrList.optional().describe('Accepted "aud" of bearer tokens; default the clientId.'),
  endSession: z.boolean().default(true).describe('Sign-out also signs out at the provider (RP-initiated logout) when it offers an end_session_endpoint.'),
  discoveryTimeoutMs: ms('Timeout of one call to the provider (discovery, token, userinfo, keys).', 5_000),
  discoveryRetryMs: ms('After a failed discovery, the next attempt waits at least this long.', 5_000),
  clockToleranceMs: ms('Clock skew allowed on exp / iat of tokens.', 30_000),
}).strict().describe('Browser sign-in with OpenID Connect (authorization code + PKCE); see docs/how-to/sign-in-with-oidc.md.');

export const identitySchema = z.discriminatedUnion('kind', [tokenIdentitySchema, basicIdentitySchema, jwtIdentitySchema, headerIdentitySchema, oidcIdentitySchema]);

export const resourceAccessSchema = z.object({
  public: z.boolean().default(false).describe('Anyone may use it, with no identity.'),
  anyOf: z.array(groupNameSchema).min(1).optional().describe('The request must act with at least one of these groups.'),
  allOf: z.array(groupNameSchema).min(1).optional().describe('The request must act with all of these groups.'),
  passCredentials: z.boolean().default(false).describe('Forward the Authorization header to the backend (it is stripped otherwise).'),
  passAccessToken: z.boolean().default(false).describe('Send a signed-in user\'s OIDC access token to the backend (access.backendHeaders.accessToken).'),
  revealExistence: z.boolean().optional().describe('Answer 403 rather than 404 to callers who may not see this resource; defaults to access.revealExistence.'),
}).strict().refine((a) => !a.public || (a.anyOf === undefined && a.allOf === undefined), {
  message: 'a public resource has no group requirements (drop anyOf/allOf or public)',
}).describe('Who may use the resource. Without it: any verified identity.');

const limitScopes = z.object({
  total: z.number().int().min(1).optional(),
  perUser: z.number().int().min(1).optional(),
  perGroup: z.number().int().min(1).optional(),
}).strict();

export const accessSettingsSchema = z.object({
  realm: z.string().regex(/^[\x20-\x7e]{1,64}$/).refine((r) => !/["\\]/.test(r), 'no quotes or backslashes').default('smart-proxy')
    .describe('Realm named in WWW-Authenticate challenges.'),
  revealExistence: z.boolean().default(false)
    .describe('false: a resource the caller may not see answers exactly like one that does not exist (404).'),
  backendHeaders: z.object({
    user: headerNameSchema.default('X-Forwarded-User'),
    groups: headerNameSchema.default('X-Forwarded-Groups'),
    accessToken: headerNameSchema.default('X-Forwarded-Access-Token').describe('Carries the OIDC access token to resources with passAccessToken.'),
  }).strict().prefault({}).describe('Headers that tell the backend the verified user and the groups the request acts with.'),
  credentials: z.object({
    maxConcurrentHashes: z.number().int().min(1).max(64).default(2)
      .describe('Password (scrypt) checks running at once. They run on libuv\'s thread pool (4 threads unless UV_THREADPOOL_SIZE says otherwise), shared with file and DNS work: keep this below its size.'),
    maxQueuedHashes: z.number().int().min(0).default(64)
      .describe('Password checks waiting for a slot; past this a request is answered 503 SP_ACCESS_BUSY with Retry-After at once.'),
    verifiedTtlMs: ms('A verified password or scrypt-hashed token is trusted this long without hashing it again (memory only, keyed by a SHA-256 of the credential).', 300_000),
    refusedTtlMs: ms('A refused password, token or JWT is refused this long without checking it again, so repeating a bad credential costs no hash.', 60_000),
    cacheMaxEntries: z.number().int().min(1).default(10_000).describe('Entries of each verdict cache (least recently used dropped first).'),
    jwtRecheckMs: ms('A verified JWT is cached until its exp, but verified again after this long at the latest: the bound on how long a token signed by a key removed from the JWKS keeps working.', 60_000),
  }).strict().prefault({}).describe('Bounds on the work credentials cost: hashing concurrency and the verdict caches.'),
  limits: z.object({
    concurrentStarts: limitScopes.prefault({}).describe('Instances starting at once (like JupyterHub concurrent_spawn_limit).'),
    runningInstances: limitScopes.prefault({}).describe('Instances starting or running (like JupyterHub active_server_limit).'),
    runningRetryAfterMs: ms('Retry-After sent when a running-instances limit is hit.', 60_000),
  }).strict().prefault({}),
  sessions: z.object({
    publicUrl: z.url({ protocol: /^https?$/ }).optional()
      .describe('The proxy\'s URL as browsers see it (scheme, host, port): callback URLs and the only origin sign-in returns to. Required with an oidc identity.'),
    keys: z.array(secretValueSchema).default([])
      .describe('Session keys (at least 32 characters each): the first seals new cookies, all open them. Prepend a new key to rotate; drop the old one after absoluteTimeoutMs.'),
    cookieName: z.string().regex(/^[A-Za-z0-9_-]{1,40}$/).default('smart_proxy_session'),
    idleTimeoutMs: ms('A session unused this long ends.', 4 * 3_600_000),
    absoluteTimeoutMs: ms('A session ends this long after sign-in, used or not.', 24 * 3_600_000),
    touchIntervalMs: ms('A used session\'s cookie is renewed (idle timer) at most this often.', 60_000),
    refreshBeforeMs: ms('The access token is refreshed with the refresh token this long before it expires.', 60_000),
    signInTimeoutMs: ms('Longest time between leaving for the provider and coming back.', 600_000),
    maxCookieBytes: z.number().int().min(1_000).max(4_000).default(3_800)
      .describe('A session larger than this (many groups, big tokens) is kept in the state store; the cookie then holds its key.'),
    secure: z.enum(['auto', 'always', 'never']).default('auto').describe('The cookie\'s Secure attribute; auto: when publicUrl is https, the proxy terminates TLS, or a front proxy in trustedProxies sends X-Forwarded-Proto: https.'),
  }).strict().prefault({}).describe('Browser sessions after an OIDC sign-in (sealed cookies; see docs/how-to/sign-in-with-oidc.md).'),
}).strict().prefault({});

export type IdentityConfig = z.infer<typeof identitySchema>;
export type TokenIdentityConfig = z.infer<typeof tokenIdentitySchema>;
export type BasicIdentityConfig = z.infer<typeof basicIdentitySchema>;
export type JwtIdentityConfig = z.infer<typeof jwtIdentitySchema>;
export type HeaderIdentityConfig = z.infer<typeof headerIdentitySchema>;
export type OidcIdentityConfig = z.infer<typeof oidcIdentitySchema>;
export type SecretValue = z.infer<typeof secretValueSchema>;
export type SessionSettings = AccessSettings['sessions'];
export type ResourceAccessConfig = z.infer<typeof resourceAccessSchema>;
export type AccessSettings = z.infer<typeof accessSettingsSchema>;

/** OIDC needs where browsers come back to and keys to seal sessions; provider names are unique. */
export function checkOidcSettings(cfg: { identities: readonly IdentityConfig[]; access: AccessSettings }, ctx: z.RefinementCtx): void {
  const oidc = cfg.identities.filter((i): i is OidcIdentityConfig => i.kind === 'oidc');
  if (oidc.length === 0) return;
  const names = new Set<string>();
  oidc.forEach((o) => {
    if (names.has(o.name)) ctx.addIssue({ code: 'custom', path: ['identities'], message: `two oidc identities are named "${o.name}"` });
    names.add(o.name);
  });
  if (cfg.access.sessions.publicUrl === undefined) {
    ctx.addIssue({ code: 'custom', path: ['access', 'sessions', 'publicUrl'], message: 'is required with an oidc identity (the callback URL is built from it)' });
  }
  if (cfg.access.sessions.keys.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['access', 'sessions', 'keys'], message: 'needs at least one key (32+ characters, e.g. `openssl rand -base64 48`) with an oidc identity' });
  }
  cfg.access.sessions.keys.forEach((k, i) => {
    if (typeof k === 'string' && k.length < 32) ctx.addIssue({ code: 'custom', path: ['access', 'sessions', 'keys', i], message: 'a session key needs at least 32 characters' });
  });
}

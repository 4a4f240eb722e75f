/**
 * The access part of the one configuration schema (composed into schema.ts): who may call
 * (`identities`), what each resource requires (`resources.*.access`), what the backend learns
 * and how much may be woken (`access`). See docs/concepts/access.md.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { hashFormatProblem } from '../access/passwords.ts';
import { GROUP_NAME_RE, isValidUserName } from '../access/types.ts';

const ms = (description: string, dflt: number) => z.number().int().min(0).default(dflt).describe(description);

export const groupNameSchema = z.string().regex(GROUP_NAME_RE, 'a group name: 1-128 of A-Z a-z 0-9 . _ ~ @ + : = - (the URL grammar)');
const userNameSchema = z.string().refine(isValidUserName, 'a user name: 1-256 characters, no control characters');
/** RFC 9110 §5.1 token characters. */
const headerNameSchema = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/, 'an HTTP header name');

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

export const jwtAlgorithms = ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;
const stringOrList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

export const jwtIdentitySchema = z.object({
  kind: z.literal('jwt'),
  issuer: stringOrList.describe('Accepted "iss" value(s).'),
  audience: stringOrList.describe('Accepted "aud" value(s): the token must name one.'),
  algorithms: z.array(z.enum(jwtAlgorithms)).min(1).describe('Accepted "alg" values (never chosen by the token alone).'),
  secret: z.string().min(32).optional().describe('HS* shared secret (at least 32 characters).'),
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

export const identitySchema = z.discriminatedUnion('kind', [tokenIdentitySchema, basicIdentitySchema, jwtIdentitySchema, headerIdentitySchema]);

export const resourceAccessSchema = z.object({
  public: z.boolean().default(false).describe('Anyone may use it, with no identity.'),
  anyOf: z.array(groupNameSchema).min(1).optional().describe('The request must act with at least one of these groups.'),
  allOf: z.array(groupNameSchema).min(1).optional().describe('The request must act with all of these groups.'),
  passCredentials: z.boolean().default(false).describe('Forward the Authorization header to the backend (it is stripped otherwise).'),
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
}).strict().prefault({});

export type IdentityConfig = z.infer<typeof identitySchema>;
export type TokenIdentityConfig = z.infer<typeof tokenIdentitySchema>;
export type BasicIdentityConfig = z.infer<typeof basicIdentitySchema>;
export type JwtIdentityConfig = z.infer<typeof jwtIdentitySchema>;
export type HeaderIdentityConfig = z.infer<typeof headerIdentitySchema>;
export type ResourceAccessConfig = z.infer<typeof resourceAccessSchema>;
export type AccessSettings = z.infer<typeof accessSettingsSchema>;

import type { App } from './main.ts';

/**
 * The credentials of the bundled demo config (examples/demo.yaml holds only their hashes;
 * a test checks that these verify against it). Demo values: never use them elsewhere.
 */
export const demoCredentials = {
  alice: { token: 'alice-demo-token', password: 'alice-demo-password', groups: ['g1', 'g2', 'staff'] },
  bob: { token: 'bob-demo-token', groups: ['g1'] },
  carol: { password: 'carol-demo-password', groups: ['g2'] },
} as const;

export function printDemoBanner(app: App, issuerUrl?: string): void {
  process.stdout.write(demoBanner(app.proxyUrl, app.mockCloud?.url, app.adminUrl, app.config.admin?.groups ?? [], issuerUrl));
}

/**
 * Quoted for a POSIX shell, zsh and fish alike: always in single quotes (unquoted, `?` is a
 * glob that fails in zsh and `&` ends a command), where only a single quote needs care.
 */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

/** What `npm start` prints: where things are and what to try, every command copy-paste safe. */
export function demoBanner(proxyUrl: string, mockCloudUrl: string | undefined, adminUrl?: string, adminGroups: readonly string[] = [], issuerUrl?: string): string {
  const url = (path: string): string => shellQuote(`${proxyUrl}/smart_proxy/${path}`);
  const alice = `-H ${shellQuote(`Authorization: Bearer ${demoCredentials.alice.token}`)}`;
  const bob = `-H ${shellQuote(`Authorization: Bearer ${demoCredentials.bob.token}`)}`;
  const carol = `-u ${shellQuote(`carol:${demoCredentials.carol.password}`)}`;
  const tries: Array<[string, string]> = [
    [`curl -i ${url('hello/-/hi?x=1')}`, 'public: no credentials needed'],
    [`curl -i ${alice} ${url('reports/staff/2026?x=1')}`, 'group-protected: alice acts as staff'],
    [`curl -i ${bob} ${url('reports/-/')}`, '404: bob may not see it'],
    [`curl -i ${bob} ${url('as1/g2/')}`, '403: bob does not hold g2'],
    [`curl -i ${alice} ${url('as1/g1,g2/')}`, "the original's seed VM 1, already running"],
    [`curl -i ${carol} ${url('notebook/-/')}`, 'user-scoped: carol gets her own VM'],
    [`curl -i ${alice} ${url('notebook/-/')}`, '... and alice hers'],
    [`curl -i ${url('notebook/-/')}`, '401 with a challenge'],
  ];
  const width = Math.max(...tries.map(([c]) => c.length));
  const lines = [
    '',
    'Smart Proxy demo is up.',
    `  proxy:      ${proxyUrl}`,
    `  mock cloud: ${mockCloudUrl ?? '(disabled)'}`,
    ...(adminUrl === undefined ? [] : [`  admin:      ${adminUrl}/  (dashboard: sign in as alice / ${demoCredentials.alice.password}; API under /api/v1; metrics; admins: group ${adminGroups.join(', ')})`,
      `              SMART_PROXY_ADMIN_TOKEN=${demoCredentials.alice.token} node bin/smart-proxy.js status --admin ${shellQuote(adminUrl)}`]),
    '',
    'Callers (bundled demo config only):',
    `  alice  token ${demoCredentials.alice.token}     groups ${demoCredentials.alice.groups.join(', ')}   (or password ${demoCredentials.alice.password}, HTTP Basic)`,
    `  bob    token ${demoCredentials.bob.token}       groups ${demoCredentials.bob.groups.join(', ')}`,
    `  carol  password ${demoCredentials.carol.password} (HTTP Basic)   groups ${demoCredentials.carol.groups.join(', ')}`,
    '',
    'Try (the first request to a resource wakes a VM and waits until it answers; "-" = all my groups):',
    ...tries.map(([c, why]) => `  ${c.padEnd(width)}  # ${why}`),
    '',
    ...(issuerUrl === undefined ? ['Browser sign-in: npm start -- --oidc', ''] : [
      `Browser sign-in (OIDC, embedded provider at ${issuerUrl}): open in a browser`,
      `  ${proxyUrl}/smart_proxy/notebook/-/   # sign in, watch your VM wake, land on it`,
      `  ${proxyUrl}/smart_proxy/reports/staff/   # alice only`,
      `  ${proxyUrl}/_smart_proxy/auth/sign-out   # the sign-out button (here and at the provider)`,
      '  users: alice / alice-demo-password (g1, g2, staff), bob / bob-demo-password (g1),',
      `         carol / ${demoCredentials.carol.password} (g2)`,
      '',
    ]),
    'Ctrl-C stops the proxy and the VMs it started.',
    '',
  ];
  return lines.join('\n');
}

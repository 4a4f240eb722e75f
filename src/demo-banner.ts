import type { App } from './main.ts';

/**
 * The credentials of the bundled demo config (examples/demo.yaml holds only their hashes;
 * a test checks that these verify against it). Demo values: never use them elsewhere.
 */
export const demoCredentials = {
  alice: { token: 'alice-demo-token', groups: ['g1', 'g2', 'staff'] },
  bob: { token: 'bob-demo-token', groups: ['g1'] },
  carol: { password: 'carol-demo-password', groups: ['g2'] },
} as const;

/** What `npm start` prints: where things are and what to try. */
export function printDemoBanner(app: App, issuerUrl?: string): void {
  const p = `${app.proxyUrl}/smart_proxy`;
  const alice = `-H 'Authorization: Bearer ${demoCredentials.alice.token}'`;
  const bob = `-H 'Authorization: Bearer ${demoCredentials.bob.token}'`;
  const carol = `-u carol:${demoCredentials.carol.password}`;
  const lines = [
    '',
    'Smart Proxy demo is up.',
    `  proxy:      ${app.proxyUrl}`,
    `  mock cloud: ${app.mockCloud?.url ?? '(disabled)'}`,
    '',
    'Callers (bundled demo config only):',
    `  alice  token ${demoCredentials.alice.token}     groups ${demoCredentials.alice.groups.join(', ')}`,
    `  bob    token ${demoCredentials.bob.token}       groups ${demoCredentials.bob.groups.join(', ')}`,
    `  carol  password ${demoCredentials.carol.password} (HTTP Basic)   groups ${demoCredentials.carol.groups.join(', ')}`,
    '',
    'Try (the first request to a resource wakes a VM and waits until it answers; "-" = all my groups):',
    `  curl -i ${p}/hello/-/hi?x=1                          # public: no credentials needed`,
    `  curl -i ${alice} ${p}/reports/staff/2026   # group-protected: alice acts as staff`,
    `  curl -i ${bob} ${p}/reports/-/             # 404: bob may not see it`,
    `  curl -i ${bob} ${p}/as1/g2/                # 403: bob does not hold g2`,
    `  curl -i ${alice} ${p}/as1/g1,g2/           # the original's seed VM 1, already running`,
    `  curl -i ${carol} ${p}/notebook/-/         # user-scoped: carol gets her own VM`,
    `  curl -i ${alice} ${p}/notebook/-/          # ... and alice hers`,
    `  curl -i ${p}/notebook/-/                             # 401 with a challenge`,
    '',
    ...(issuerUrl === undefined ? ['Browser sign-in: npm start -- --oidc', ''] : [
      `Browser sign-in (OIDC, embedded provider at ${issuerUrl}): open in a browser`,
      `  ${p}/notebook/-/                 # sign in, watch your VM wake, land on it`,
      `  ${p}/reports/staff/              # alice only`,
      `  ${app.proxyUrl}/_smart_proxy/auth/sign-out      # sign out (here and at the provider)`,
      '  users: alice / alice-demo-password (g1, g2, staff), bob / bob-demo-password (g1),',
      `         carol / ${demoCredentials.carol.password} (g2)`,
      '',
    ]),
    'Ctrl-C stops the proxy and the VMs it started.',
    '',
  ];
  process.stdout.write(lines.join('\n'));
}

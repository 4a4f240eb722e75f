import type { App } from './main.ts';

/** What `npm start` prints: where things are and what to try. */
export function printDemoBanner(app: App): void {
  const p = app.proxyUrl;
  const lines = [
    '',
    'Smart Proxy demo is up.',
    `  proxy:      ${p}`,
    `  mock cloud: ${app.mockCloud?.url ?? '(disabled)'}`,
    '',
    'Try (the first request wakes a VM and waits until it answers):',
    `  curl -i ${p}/smart_proxy/notebook/g1/hello?x=1`,
    `  curl -i ${p}/smart_proxy/notebook/g1,g2/api/items -d '{"a":1}' -H 'content-type: application/json'`,
    `  curl -i ${p}/smart_proxy/as1/g1,g2/          # the original's seed VM 1, already running`,
    '',
    'Ctrl-C stops the proxy and the VMs it started.',
    '',
  ];
  process.stdout.write(lines.join('\n'));
}

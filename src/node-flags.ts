/**
 * The V8 flags Smart Proxy's own launchers start Node with: the `smart-proxy` bin
 * (bin/smart-proxy.js's first line), the Containerfile's ENTRYPOINT, `npm start`, the example systemd unit (a test
 * keeps them in step), and the benchmarks. V8 reads them when the heap is set up, so they
 * cannot be set from inside.
 *
 * `--max-semi-space-size=16` caps each half of the young generation at 16 MB. Without it V8
 * grows the young generation up to 64 MB per half (128 MB in all: Node is built without pointer
 * compression, which doubles V8's default) whenever many objects survive a scavenge, as they
 * do while thousands of requests arrive to be held: holding 10,000 requests then cost about
 * 4 KB more RSS per request (15.8 KB against 12.5 KB), memory that is not given back. A young
 * generation of 2 × 16 MB still fits a proxy's short-lived garbage; the release of 10,000 held
 * requests took 16 scavenges instead of 4, with no more time in them, one minor page fault
 * fewer per request and as many instructions (docs/benchmarks.md).
 */
export const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

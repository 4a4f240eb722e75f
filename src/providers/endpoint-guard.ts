/**
 * Endpoints a provider reports (a cloud's VM URL, an engine's published port, a template's
 * `{/json/pointer}`) are data from outside: a compromised or confused cloud could name the
 * instance metadata service (169.254.169.254, fd00:ec2::254), a link-local address, or the
 * proxy's own ports (its listener, its Redis), and the proxy would then send requests carrying
 * verified identity headers there. This decorator checks every endpoint a provider reports
 * before the core may probe or forward to it:
 *
 * - an address in `allow` passes; otherwise an address in `deny` is refused;
 * - an address of this host (loopback, unspecified, any of its interfaces', IPv4-mapped
 *   forms included) on one of the proxy's own ports is refused;
 * - a host name is resolved (all addresses) and each address is checked the same way.
 *
 * A refused endpoint makes the instance `failed` with a reason naming the address and the
 * rule (so the request gets a clear 502, the status page says why), and `onRefused` writes the
 * audit entry. The check runs when the provider says running (inspect, list), never on the
 * warm path. Known limit: a host name is resolved again when connecting, so a DNS answer that
 * changes in between (rebinding) is not caught here; report addresses, or allow-list names'
 * ranges, where that matters.
 */
import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { InspectResult, InstanceRef, ListedInstance, Provider } from '../core/ports.ts';

export interface EndpointPolicyOptions {
  /** CIDRs (or addresses) refused unless also in `allow`. */
  readonly deny: readonly string[];
  /** CIDRs (or addresses) always accepted. */
  readonly allow: readonly string[];
  /** The proxy's own ports (listener, Redis…), refused on loopback and unspecified addresses. */
  readonly ownPorts: () => Iterable<number>;
}

/** Link-local (cloud metadata services live there), and the metadata addresses outside it. */
export const DEFAULT_DENIED_ENDPOINTS: readonly string[] = ['169.254.0.0/16', '100.100.100.200/32', 'fe80::/10', 'fd00:ec2::254/128'];

export type EndpointVerdict = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export class EndpointPolicy {
  readonly #deny = new BlockList();
  readonly #allow = new BlockList();
  readonly #denyList: readonly string[];
  readonly #ownPorts: () => Iterable<number>;

  constructor(options: EndpointPolicyOptions) {
    for (const c of options.deny) addCidr(this.#deny, c);
    for (const c of options.allow) addCidr(this.#allow, c);
    this.#denyList = options.deny;
    this.#ownPorts = options.ownPorts;
  }

  async check(endpoint: string): Promise<EndpointVerdict> {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      return { ok: false, reason: 'not a URL' };
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return { ok: false, reason: `scheme ${url.protocol} is not http(s)` };
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
    let addresses: string[];
    if (isIP(host) !== 0) {
      addresses = [host];
    } else {
      try {
        addresses = (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);
      } catch {
        // A name that does not resolve cannot be reached either; the probe will say so.
        return { ok: true };
      }
    }
    for (const raw of addresses) {
      const address = unmapped(raw);
      const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
      if (this.#allow.check(address, family)) continue;
      if (this.#deny.check(address, family)) {
        return { ok: false, reason: `${address} is in a denied range (${this.#denyList.join(', ')}; backendEndpoints.deny)` };
      }
      if (isLocal(address, family) && [...this.#ownPorts()].includes(port)) {
        return { ok: false, reason: `${address}:${port} is one of the proxy's own ports` };
      }
    }
    return { ok: true };
  }
}

/**
 * Wraps a provider so that every endpoint it reports passes `policy` first (see the module
 * comment). Calls and everything else pass through unchanged.
 */
export function guardEndpoints(provider: Provider, policy: EndpointPolicy, onRefused: (ref: Pick<InstanceRef, 'resourceId' | 'instanceKey'>, endpoint: string, reason: string) => void): Provider {
  const vet = async <T extends InspectResult>(ref: Pick<InstanceRef, 'resourceId' | 'instanceKey'>, result: T): Promise<T> => {
    if (result.endpoint === undefined) return result;
    const verdict = await policy.check(result.endpoint);
    if (verdict.ok) return result;
    onRefused(ref, result.endpoint, verdict.reason);
    return { ...result, state: 'failed', endpoint: undefined, reason: `the endpoint the provider reported was refused: ${verdict.reason}` };
  };
  const inspect = async (ref: InstanceRef, signal: AbortSignal): Promise<InspectResult> => vet(ref, await provider.inspect(ref, signal));
  const list = provider.list === undefined ? undefined : provider.list.bind(provider);
  const listVetted = list === undefined ? undefined
    : async (signal: AbortSignal): Promise<ListedInstance[]> => Promise.all((await list(signal)).map((l) => vet(l, l)));
  // Every other member (start, stop, close, output, optional capabilities added later) passes
  // through unchanged, bound to the provider itself: its private fields do not exist on a proxy.
  // Made on first use: most providers of a large config never have most members called.
  let bound: Map<PropertyKey, unknown> | undefined;
  return new Proxy(provider, {
    get(target, prop) {
      if (prop === 'inspect') return inspect;
      if (prop === 'list') return listVetted;
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      let b = bound?.get(prop);
      if (b === undefined) {
        b = (value as (...a: unknown[]) => unknown).bind(target);
        (bound ??= new Map()).set(prop, b);
      }
      return b;
    },
  });
}

function addCidr(list: BlockList, cidr: string): void {
  const [addr = '', bits] = cidr.split('/');
  const family = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
  if (bits === undefined) list.addAddress(addr, family);
  else list.addSubnet(addr, Number(bits), family);
}

/**
 * An IPv4-mapped IPv6 address is its IPv4 address: `::ffff:169.254.169.254`, and the same
 * as the URL parser writes it, `::ffff:a9fe:a9fe` (a connection to either reaches the IPv4
 * host, so both must meet the IPv4 rules).
 */
export function unmapped(address: string): string {
  const dotted = /^(?:0{0,4}:){0,5}:?ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (dotted !== null) return dotted[1] as string;
  const hex = /^(?:0{0,4}:){0,5}:?ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (hex === null) return address;
  const hi = parseInt(hex[1] as string, 16);
  const lo = parseInt(hex[2] as string, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/**
 * Whether a connection to `address` reaches this host: loopback, unspecified, or one of its
 * own interfaces' addresses (a proxy listening on 0.0.0.0 answers on all of them).
 */
function isLocal(address: string, family: 'ipv4' | 'ipv6'): boolean {
  if (family === 'ipv4' ? address.startsWith('127.') || address === '0.0.0.0' : address === '::1' || address === '::') return true;
  const bare = address.replace(/%.*$/, '').toLowerCase();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.address.replace(/%.*$/, '').toLowerCase() === bare) return true;
    }
  }
  return false;
}

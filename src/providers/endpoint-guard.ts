/**
 * Endpoints a provider reports (a cloud's VM URL, an engine's published port, a template's
 * `{/json/pointer}`) are data from outside: a compromised or confused cloud could name the
 * instance metadata service (169.254.169.254, fd00:ec2::254), a link-local address, or the
 * proxy's own ports (its listener, its Redis), and the proxy would then send requests carrying
 * verified identity headers there. This decorator checks every endpoint a provider reports
 * before the core may probe or forward to it:
 *
 * - an address in `allow` passes; otherwise an address in `deny` is refused;
 * - an address on which one of the proxy's own listeners accepts connections, on that
 *   listener's port, is refused. Exactly, by the address the listener is bound to: a listener
 *   bound to 127.0.0.1 is reached at 127.0.0.1 (and `::ffff:127.0.0.1`) but not at 127.0.0.2
 *   (Linux routes all of 127/8 to this host, yet a socket bound to one address accepts only
 *   that one), so a backend on 127.1.2.3 that happens to use the proxy's port number is an
 *   ordinary backend. A listener bound to `0.0.0.0` or `::` (dual-stack) is reached at every
 *   address of this host (all of 127/8, `::1`, its interfaces', IPv4-mapped forms); an
 *   IPv6-only `::` at this host's IPv6 addresses. A port whose binding is not known (Redis,
 *   another program's) counts as bound to every address of this host;
 * - the unspecified address as a destination (`0.0.0.0`, `::`: Linux connects it to this
 *   host) is refused on every own port, whatever the listener's binding;
 * - a host name is resolved (all addresses) and each address is checked on the safe side: an
 *   address of this host on any own port is refused whatever the listener's binding, because
 *   the name may resolve to another of this host's addresses when connecting. `localhost` and
 *   `*.localhost` count as 127.0.0.1 and ::1 besides what the resolver says (RFC 6761).
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
  /** The proxy's own listeners (proxy, admin, front decisions) and ports (Redis): see the module comment. */
  readonly ownListeners: () => Iterable<OwnListener>;
}

/** A port of the proxy's own that no backend endpoint may reach. */
export interface OwnListener {
  readonly port: number;
  /**
   * The address the listener is bound to, as `server.address()` reports it (`0.0.0.0`, `::`,
   * `127.0.0.1`…). Absent when not known (a port another program listens on, a listener not
   * bound yet): the port then counts on every address of this host.
   */
  readonly host?: string | undefined;
  /** A `::` listener that does not accept IPv4 (Node's `ipv6Only`); dual-stack when absent. */
  readonly ipv6Only?: boolean | undefined;
}

/** Link-local (cloud metadata services live there), and the metadata addresses outside it. */
export const DEFAULT_DENIED_ENDPOINTS: readonly string[] = ['169.254.0.0/16', '100.100.100.200/32', 'fe80::/10', 'fd00:ec2::254/128'];

export type EndpointVerdict = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export class EndpointPolicy {
  readonly #deny = new BlockList();
  readonly #allow = new BlockList();
  readonly #denyList: readonly string[];
  readonly #ownListeners: () => Iterable<OwnListener>;

  constructor(options: EndpointPolicyOptions) {
    for (const c of options.deny) addCidr(this.#deny, c);
    for (const c of options.allow) addCidr(this.#allow, c);
    this.#denyList = options.deny;
    this.#ownListeners = options.ownListeners;
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
    const literal = isIP(host) !== 0;
    let addresses: string[];
    if (literal) {
      addresses = [host];
    } else {
      const named = isLocalhostName(host) ? ['127.0.0.1', '::1'] : [];
      try {
        addresses = [...named, ...(await lookup(host, { all: true, verbatim: true })).map((a) => a.address)];
      } catch {
        // A name that does not resolve cannot be reached either; the probe will say so.
        if (named.length === 0) return { ok: true };
        addresses = named;
      }
    }
    const listeners = [...this.#ownListeners()].filter((l) => l.port === port);
    for (const raw of addresses) {
      const address = unmapped(raw.replace(/%.*$/, '')).toLowerCase();
      const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
      if (this.#allow.check(address, family)) continue;
      if (this.#deny.check(address, family)) {
        return { ok: false, reason: `${address} is in a denied range (${this.#denyList.join(', ')}; backendEndpoints.deny)` };
      }
      // A name's answer may differ when connecting: any address of this host is refused then.
      const hit = listeners.find((l) => (literal ? reaches(address, l) : isLocal(address, family)));
      if (hit !== undefined) {
        return { ok: false, reason: `${address}:${port} is one of the proxy's own ports (a listener bound to ${hit.host ?? 'this host'})` };
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

/** Names that always mean this host (RFC 6761), whatever the resolver answers. */
function isLocalhostName(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return h === 'localhost' || h.endsWith('.localhost');
}

/** One spelling per IPv6 address (`0:0::1` and `::1` are the same host), without a zone. */
function canonical(address: string): string {
  const bare = unmapped(address.replace(/%.*$/, '')).toLowerCase();
  if (isIP(bare) !== 6) return bare;
  return new URL(`http://[${bare}]/`).hostname.slice(1, -1);
}

/**
 * Whether a connection to the IP address `address` reaches `listener` on its port:
 * the unspecified destination always (this host), a wildcard binding at every address of this
 * host (IPv6 ones only when ipv6Only), a specific binding at that address alone.
 */
export function reaches(address: string, listener: OwnListener): boolean {
  const dest = canonical(address);
  const family = isIP(dest) === 6 ? 'ipv6' : 'ipv4';
  if (dest === '0.0.0.0' || dest === '::') return true;
  if (listener.host === undefined) return isLocal(dest, family);
  const bound = canonical(listener.host);
  if (isIP(bound) === 0) return isLocal(dest, family); // a name: not known which address
  if (bound === '0.0.0.0') return isLocal(dest, family);
  if (bound === '::') return (family === 'ipv6' || listener.ipv6Only !== true) && isLocal(dest, family);
  return dest === bound;
}

/**
 * Whether a connection to `address` reaches this host: loopback, unspecified, or one of its
 * own interfaces' addresses (a proxy listening on 0.0.0.0 answers on all of them).
 */
function isLocal(address: string, family: 'ipv4' | 'ipv6'): boolean {
  if (family === 'ipv4' ? address.startsWith('127.') || address === '0.0.0.0' : address === '::1' || address === '::') return true;
  const bare = canonical(address);
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (canonical(a.address) === bare) return true;
    }
  }
  return false;
}

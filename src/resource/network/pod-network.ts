import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { errors, wrapError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import { isHostNetns, Netns, RTN_UNICAST, RTPROT_KERNEL, type NeighborInfo, type RouteInfo } from '../../platform/netlink.js';
import { IPFamily, type ARPNeighbor, type Interface, type IPAddress, type Route } from '../../protocol/gen/types.js';
import type { Endpoint, EndpointContext, InterworkingModel, NetFdDevice, PodLink } from './endpoint.js';
import { hasMacvtapMarker, MacvtapEndpoint, MACVTAP_NAME_RE, restoreMacvtap } from './macvtap-endpoint.js';
import { removeKataIngress, TAP_NAME_RE, TcFilterEndpoint } from './tc-filter-endpoint.js';

/** What the sandbox hands to the VM (devices) and to the agent (UpdateInterface, UpdateRoutes, AddARPNeighbors). */
export interface PodNetworkResult {
  /** Taps QEMU opens by name (tcfilter); cold-plug them and start QEMU in the netns. */
  devices: VmDevice[];
  /** Devices QEMU must be handed as open fds (macvtap); empty unless `fdPassing` was allowed. */
  fdDevices: NetFdDevice[];
  interfaces: Interface[];
  routes: Route[];
  neighbors: ARPNeighbor[];
}

export interface PodNetworkOptions {
  /**
   * The caller can pass fds to the VMM (needed by macvtap). Without it, the macvtap model fails with
   * NotImplemented before touching anything.
   */
  fdPassing?: boolean;
  /**
   * Private host directory for macvtap device nodes (`<runDir>/net`); the same value lets a fresh instance
   * find and remove them. Default: a new temporary directory.
   */
  runDir?: string;
}

/**
 * The pod's network namespace connected to the VM. `prepare()` runs before the VM starts; `cleanup()` after
 * it is gone. `cleanup()` is idempotent and also works on a fresh instance (after a runtime restart): it
 * removes kata-ts's taps, macvtaps, qdiscs and filters found by name and tc cookie.
 */
export interface PodNetwork {
  readonly model: InterworkingModel;
  readonly netnsPath: string;
  prepare(opts?: { signal?: AbortSignal }): Promise<PodNetworkResult>;
  cleanup(): Promise<void>;
}

/** rtnl link kinds of IP tunnels (the fallback devices gre0, sit0, tunl0, ... appear in every netns). */
const TUNNEL_KINDS = new Set(['ipip', 'gre', 'gretap', 'ip6gre', 'ip6gretap', 'sit', 'ip6tnl', 'vti', 'vti6', 'erspan', 'ip6erspan']);
const TUNNEL_LINK_TYPES = new Set(['ipip', 'gre', 'sit', 'tunnel6', 'gre6', 'ip6gre', 'erspan']);
/** Link kinds an endpoint can attach. */
const ATTACHABLE_KINDS = new Set(['veth']);

const IFF_NOARP = 0x80;
const RTNH_F_ONLINK = 0x4;
const NTF_ROUTER = 0x80;
const NUD: Record<string, number> = {
  INCOMPLETE: 0x01,
  REACHABLE: 0x02,
  STALE: 0x04,
  DELAY: 0x08,
  PROBE: 0x10,
  FAILED: 0x20,
  NOARP: 0x40,
  PERMANENT: 0x80,
};

export interface NetnsScan {
  /** Interfaces to connect, in ifindex order. */
  links: PodLink[];
  /** Interfaces no endpoint can attach: `{ name, kind }`. */
  unsupported: { name: string; kind: string }[];
  routes: RouteInfo[];
  neighbors: NeighborInfo[];
}

function displayKind(l: { kind: string; linkType: string }): string {
  if (l.kind) return l.kind;
  return l.linkType === 'ether' ? 'physical' : l.linkType;
}

/** Reads the netns as Kata's scan does: links but loopback and tunnels, their addresses, routes, neighbours. */
export async function scanNetns(netns: Netns): Promise<NetnsScan> {
  const { links, addresses } = await netns.linksAndAddresses();
  const routes = await netns.routes();
  const neighbors = await netns.neighbors();
  const scan: NetnsScan = { links: [], unsupported: [], routes, neighbors };
  for (const link of links.sort((a, b) => a.index - b.index)) {
    if (link.linkType === 'loopback' || link.flags.includes('LOOPBACK')) continue;
    if (TUNNEL_KINDS.has(link.kind) || TUNNEL_LINK_TYPES.has(link.linkType)) continue;
    if ((link.kind === 'tun' && TAP_NAME_RE.test(link.name)) || (link.kind === 'macvtap' && MACVTAP_NAME_RE.test(link.name))) continue;
    if (!ATTACHABLE_KINDS.has(link.kind)) {
      scan.unsupported.push({ name: link.name, kind: displayKind(link) });
      continue;
    }
    scan.links.push({ link, addresses: addresses.filter((a) => a.link === link.name) });
  }
  return scan;
}

const family = (f: 'inet' | 'inet6'): IPFamily => (f === 'inet' ? IPFamily.v4 : IPFamily.v6);

/** The guest's addresses: loopback and IPv6 link-local ones are left out (the guest makes its own). */
function guestAddresses(pod: PodLink): IPAddress[] {
  return pod.addresses
    .filter((a) => !(a.family === 'inet' && a.address.startsWith('127.')) && a.address !== '::1')
    .filter((a) => !(a.family === 'inet6' && /^fe[89ab][0-9a-f]:/i.test(a.address)))
    .map((a) => ({ family: family(a.family), address: a.address, mask: String(a.prefixLength) }));
}

export function guestInterface(pod: PodLink, ep: Endpoint): Interface {
  return {
    device: ep.name,
    name: ep.name,
    IPAddresses: guestAddresses(pod),
    mtu: pod.link.mtu,
    hwAddr: ep.guestMac,
    devicePath: '',
    type: pod.link.kind,
    rawFlags: pod.link.flags.includes('NOARP') ? IFF_NOARP : 0,
  };
}

/** Routes the guest needs: all but the kernel's own (the guest's kernel adds those with the addresses). */
export function guestRoutes(routes: RouteInfo[], devices: ReadonlySet<string>): Route[] {
  return routes
    .filter((r) => r.protocol !== RTPROT_KERNEL && r.type === RTN_UNICAST && r.dev !== undefined && devices.has(r.dev))
    .map((r) => ({
      dest: r.dst === 'default' ? '' : r.dst,
      gateway: r.gateway ?? '',
      device: r.dev!,
      source: r.prefsrc ?? '',
      scope: r.scope,
      family: family(r.family),
      flags: r.flags.includes('onlink') ? RTNH_F_ONLINK : 0,
      mtu: r.mtu ?? 0,
    }));
}

/**
 * Neighbours to pre-seed: permanent ones, and the IPv4 default gateways (many pods starting at once would
 * otherwise all ARP for it). IPv6 gateways are left to neighbour discovery.
 */
export function guestNeighbors(scan: Pick<NetnsScan, 'routes' | 'neighbors'>, devices: ReadonlySet<string>): ARPNeighbor[] {
  const gateways = new Set(scan.routes.filter((r) => r.dst === 'default' && r.gateway && r.family === 'inet').map((r) => `${r.dev} ${r.gateway}`));
  return scan.neighbors
    .filter((n) => n.lladdr && devices.has(n.dev))
    .filter((n) => n.state.includes('PERMANENT') || (n.family === 'inet' && gateways.has(`${n.dev} ${n.dst}`)))
    .map((n) => ({
      toIPAddress: { family: family(n.family), address: n.dst, mask: '' },
      device: n.dev,
      lladdr: n.lladdr!,
      state: n.state.reduce((acc, s) => acc | (NUD[s] ?? 0), 0),
      flags: n.router ? NTF_ROUTER : 0,
    }));
}

/**
 * Removes every kata-ts artefact from the netns, found by name (`tap<N>_kata`, `mvt<N>`), by the macvtap
 * marker alias on veths, and by the tc cookie on ingress filters. Returns how many things it removed.
 */
export async function sweepNetns(netns: Netns, log: Logger): Promise<number> {
  let removed = 0;
  let macvtaps = 0;
  const links = await netns.links();
  for (const l of links) {
    if (l.kind === 'tun' && TAP_NAME_RE.test(l.name)) {
      await netns.deleteLink(l.name);
      removed++;
    } else if (l.kind === 'macvtap' && MACVTAP_NAME_RE.test(l.name)) {
      await restoreMacvtap(netns, undefined, l.name, log);
      removed++;
      macvtaps++;
    }
  }
  // Veths whose macvtap is gone but whose MAC, ARP or alias were not put back yet.
  for (const l of macvtaps > 0 ? await netns.links() : links) {
    if (hasMacvtapMarker(l)) {
      await restoreMacvtap(netns, l.name, undefined, log);
      removed++;
    }
  }
  for (const dev of await netns.ingressQdiscDevices()) {
    if (await removeKataIngress(netns, dev, log)) removed++;
  }
  return removed;
}

class NoNetwork implements PodNetwork {
  readonly model = 'none' as const;
  constructor(readonly netnsPath: string) {}
  async prepare(): Promise<PodNetworkResult> {
    return { devices: [], fdDevices: [], interfaces: [], routes: [], neighbors: [] };
  }
  async cleanup(): Promise<void> {}
}

class ConnectedPodNetwork implements PodNetwork {
  private readonly netns: Netns;
  private readonly log: Logger;
  private endpoints: Endpoint[] = [];
  private netDir: string | undefined;
  private prepared = false;

  constructor(
    readonly netnsPath: string,
    readonly model: 'tcfilter' | 'macvtap',
    log: Logger,
    private readonly opts: PodNetworkOptions,
  ) {
    this.netns = new Netns(netnsPath);
    this.log = log.child({ subsystem: 'network', model, netns: netnsPath });
    if (opts.runDir !== undefined) {
      if (!path.isAbsolute(opts.runDir) || opts.runDir.includes('\0')) {
        throw errors.invalid('KATA_NET_BAD_PATH', `runDir ${JSON.stringify(opts.runDir)} must be an absolute path`);
      }
      this.netDir = path.join(opts.runDir, 'net');
    }
  }

  async prepare(opts: { signal?: AbortSignal } = {}): Promise<PodNetworkResult> {
    if (this.prepared) throw errors.precondition('KATA_NET_PREPARED', `network of ${this.netnsPath} is already prepared`);
    if (this.model === 'macvtap' && !this.opts.fdPassing) {
      throw errors.notImplemented(
        'KATA_NET_MACVTAP_FDS',
        'internetworking_model "macvtap" needs the VMM to receive tap fds, which the hypervisor driver does not support',
      );
    }
    if (await isHostNetns(this.netnsPath)) {
      throw errors.invalid('KATA_HOST_NETWORK', 'Host networking requested, not supported by runtime');
    }
    this.prepared = true;
    const checkAbort = () => {
      if (opts.signal?.aborted) throw errors.cancelled('KATA_CANCELLED', 'prepare network: cancelled');
    };
    try {
      const stale = await sweepNetns(this.netns, this.log);
      if (stale > 0) this.log.warn({ removed: stale }, 'removed kata-ts leftovers from an earlier sandbox in this netns');
      const scan = await scanNetns(this.netns);
      if (scan.unsupported.length > 0) {
        const what = scan.unsupported.map((u) => `${u.name} (${u.kind})`).join(', ');
        throw errors.invalid(
          'KATA_NET_UNSUPPORTED_LINK',
          `cannot connect interface${scan.unsupported.length > 1 ? 's' : ''} ${what} to the VM: only veth interfaces are supported`,
        );
      }
      checkAbort();
      if (this.model === 'macvtap' && scan.links.length > 0) {
        if (this.netDir) await mkdir(this.netDir, { recursive: true, mode: 0o700 });
        else this.netDir = await mkdtemp(path.join(tmpdir(), 'kata-ts-net-'));
      }
      const result: PodNetworkResult = { devices: [], fdDevices: [], interfaces: [], routes: [], neighbors: [] };
      for (const [index, pod] of scan.links.entries()) {
        checkAbort();
        const ctx: EndpointContext = { netns: this.netns, index, pod, runDir: this.netDir ?? '', log: this.log };
        const ep = this.model === 'tcfilter' ? new TcFilterEndpoint(ctx) : new MacvtapEndpoint(ctx);
        const device = await ep.attach();
        this.endpoints.push(ep);
        if (device.kind === 'net-tap-fd') result.fdDevices.push(device);
        else result.devices.push(device);
        result.interfaces.push(guestInterface(pod, ep));
        if (pod.link.flags.includes('UP') === false) this.log.warn({ endpoint: ep.name }, 'pod interface is down: no traffic will flow');
      }
      const names = new Set(this.endpoints.map((e) => e.name));
      result.routes = guestRoutes(scan.routes, names);
      result.neighbors = guestNeighbors(scan, names);
      this.log.info(
        { endpoints: this.endpoints.map((e) => e.name), routes: result.routes.length, neighbors: result.neighbors.length },
        'pod network connected',
      );
      return result;
    } catch (err) {
      await this.cleanup().catch((e: unknown) => this.log.warn({ err: e }, 'undo network setup failed'));
      throw wrapError(`prepare network (${this.model}) in ${this.netnsPath}`, err);
    }
  }

  async cleanup(): Promise<void> {
    const failures: unknown[] = [];
    const attempt = async (what: string, f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (err) {
        this.log.warn({ err, step: what }, 'network cleanup step failed');
        failures.push(err);
      }
    };
    if (await this.netns.exists()) {
      for (const ep of [...this.endpoints].reverse()) await attempt(`detach ${ep.name}`, () => ep.detach());
      // Whatever a crash or a failed detach left, recognised by name and marker.
      await attempt('sweep netns', () => sweepNetns(this.netns, this.log));
    }
    if (this.netDir) {
      const dir = this.netDir;
      await attempt(`remove ${dir}`, () => rm(dir, { recursive: true, force: true }));
    }
    if (failures.length > 0) {
      throw wrapError(`clean up pod network in ${this.netnsPath}`, failures[0]);
    }
    this.endpoints = [];
    if (!this.opts.runDir) this.netDir = undefined;
    this.prepared = false;
  }
}

/**
 * The pod network for `netnsPath` with Kata's `internetworking_model`. `none` connects nothing (the VM gets no
 * NIC) and touches nothing.
 */
export function createPodNetwork(netnsPath: string, model: InterworkingModel, log: Logger, opts: PodNetworkOptions = {}): PodNetwork {
  switch (model) {
    case 'none':
      return new NoNetwork(netnsPath);
    case 'tcfilter':
    case 'macvtap':
      return new ConnectedPodNetwork(netnsPath, model, log, opts);
    default:
      throw errors.invalid('KATA_CONFIG_INVALID', `internetworking_model ${JSON.stringify(model as string)} is not supported (tcfilter, macvtap, none)`);
  }
}

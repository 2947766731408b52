import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { errors, KataError } from '../base/errors.js';

/**
 * Links, addresses, routes, neighbours and tc inside a network namespace, through iproute2 (`ip -json`, `tc
 * -json`) run under util-linux `nsenter --net=PATH`: Node has no netlink sockets and no setns(2). Commands
 * run with execFile and argument arrays (no shell); names and addresses are validated before they reach a
 * command line, so nothing can be taken for an option or a second argument.
 *
 * sysfs is not namespaced by nsenter (the host's /sys shows the host's links): everything about links comes
 * from `ip -json`, except the macvtap character device, read from a sysfs mounted inside the namespace.
 */

const COMMAND_TIMEOUT_MS = 15_000;
const ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' };

/** Linux IFNAMSIZ minus the NUL; the alphabet of names this code creates or accepts. */
const IFNAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** tc action cookies are at most 16 bytes (32 hex digits). */
const COOKIE_RE = /^([0-9a-f]{2}){1,16}$/;

export interface LinkInfo {
  index: number;
  name: string;
  /** rtnl link kind (`veth`, `tun`, `macvtap`, `bridge`, ...); '' for a physical device. */
  kind: string;
  /** `ether`, `loopback`, `none` (tun, ip tunnels), ... */
  linkType: string;
  mac: string;
  mtu: number;
  /** IFF_* names as iproute2 prints them: UP, NOARP, LOOPBACK, ... */
  flags: string[];
  /** For veth, macvlan, macvtap: the peer or lower device, when it lives in the same namespace. */
  parent?: string;
  /** The interface alias (IFLA_IFALIAS), '' when unset. */
  alias: string;
  /** For `tun` links: `tun` or `tap`. */
  tunType?: string;
}

export interface AddressInfo {
  link: string;
  family: 'inet' | 'inet6';
  address: string;
  prefixLength: number;
  scope: string;
}

export interface RouteInfo {
  family: 'inet' | 'inet6';
  /** `default` or a prefix (`10.0.0.0/8`, `10.1.2.3` for a host route). */
  dst: string;
  gateway?: string;
  dev?: string;
  /** RTPROT_* number: 2 is the kernel, 3 boot, 4 static. */
  protocol: number;
  /** RT_SCOPE_* number: 0 universe, 253 link, 254 host. */
  scope: number;
  prefsrc?: string;
  /** RTN_* number: 1 unicast; the others (blackhole, unreachable, ...) have no device. */
  type: number;
  flags: string[];
  mtu?: number;
}

export interface NeighborInfo {
  family: 'inet' | 'inet6';
  dst: string;
  dev: string;
  lladdr?: string;
  /** NUD_* names: PERMANENT, REACHABLE, STALE, NOARP, ... */
  state: string[];
  router: boolean;
}

export interface IngressFilterInfo {
  pref: number;
  /** The device a mirred action redirects to ('*' when that device is gone). */
  redirectTo?: string;
  /** Action cookies, hex. */
  cookies: string[];
}

export const RTPROT_KERNEL = 2;
export const RTN_UNICAST = 1;

function fail(cmd: string, args: string[], err: Error, stderr: string): KataError {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return errors.unavailable('KATA_NET_TOOL_MISSING', `${cmd} not found`, err);
  return errors.internal('KATA_NET_COMMAND', `${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`, err);
}

function exec(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: COMMAND_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 << 20, env: ENV },
      (err, stdout, stderr) => (err ? reject(fail(cmd, input === undefined ? args : [...args, `<<< ${input.trim().replace(/\n/g, '; ')}`], err, stderr)) : resolve(stdout)),
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Tokens of `ip -batch` / `tc -batch` lines: the batch parser splits on blanks and reads quotes and `#`. */
const BATCH_TOKEN_RE = /^[A-Za-z0-9_.:/+-]+$/;

function batchText(commands: string[][]): string {
  for (const c of commands) {
    for (const t of c) {
      if (!BATCH_TOKEN_RE.test(t)) throw errors.invalid('KATA_NET_BAD_TOKEN', `unsafe token ${JSON.stringify(t)} in a batch command`);
    }
  }
  return commands.map((c) => c.join(' ')).join('\n') + '\n';
}

export function checkIfname(name: string, what = 'interface name'): string {
  if (typeof name !== 'string' || !IFNAME_RE.test(name) || name === '.' || name === '..') {
    throw errors.invalid('KATA_NET_BAD_NAME', `${what} ${JSON.stringify(name)} is not a valid interface name`);
  }
  return name;
}

export function checkMac(mac: string): string {
  const m = typeof mac === 'string' ? mac.toLowerCase() : '';
  if (!MAC_RE.test(m)) throw errors.invalid('KATA_NET_BAD_MAC', `MAC address ${JSON.stringify(mac)} is not valid`);
  return m;
}

function checkMtu(mtu: number): number {
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw errors.invalid('KATA_NET_BAD_MTU', `MTU ${mtu} is out of range`);
  return mtu;
}

function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text.trim() === '' ? '[]' : text) as T;
  } catch (err) {
    throw errors.internal('KATA_NET_PARSE', `${what}: unexpected output from iproute2`, err);
  }
}

/** A network namespace named by a path (`/var/run/netns/cni-...`, `/proc/<pid>/ns/net`). */
export class Netns {
  readonly path: string;

  constructor(netnsPath: string) {
    if (typeof netnsPath !== 'string' || netnsPath.includes('\0') || !path.isAbsolute(netnsPath)) {
      throw errors.invalid('KATA_NETNS_PATH', `network namespace path ${JSON.stringify(netnsPath)} must be absolute`);
    }
    this.path = netnsPath;
  }

  private run(cmd: 'ip' | 'tc', args: string[]): Promise<string> {
    return exec('nsenter', [`--net=${this.path}`, '--', cmd, ...args]);
  }

  /** Several commands in one process (each spawn costs tens of ms on a loaded host); stops at the first failure. */
  private batch(cmd: 'ip' | 'tc', commands: string[][]): Promise<string> {
    return exec('nsenter', [`--net=${this.path}`, '--', cmd, '-batch', '-'], batchText(commands));
  }

  /** Whether the path still names something (a deleted netns leaves nothing to clean). */
  async exists(): Promise<boolean> {
    try {
      await stat(this.path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw errors.internal('KATA_NETNS_PATH', `stat ${this.path}: ${(err as Error).message}`, err);
    }
  }

  async links(): Promise<LinkInfo[]> {
    return (await this.linksAndAddresses()).links;
  }

  async addresses(): Promise<AddressInfo[]> {
    return (await this.linksAndAddresses()).addresses;
  }

  /** Links (with their rtnl kind) and their addresses, from one `ip -json -details address show`. */
  async linksAndAddresses(): Promise<{ links: LinkInfo[]; addresses: AddressInfo[] }> {
    type Raw = {
      ifindex: number;
      ifname: string;
      link?: string;
      flags?: string[];
      mtu: number;
      link_type: string;
      address?: string;
      ifalias?: string;
      linkinfo?: { info_kind?: string; info_data?: { type?: string } };
      addr_info?: { family: string; local: string; prefixlen: number; scope: string }[];
    };
    const raw = parseJson<Raw[]>(await this.run('ip', ['-json', '-details', 'address', 'show']), 'ip address show');
    const links: LinkInfo[] = [];
    const addresses: AddressInfo[] = [];
    for (const l of raw) {
      links.push({
        index: l.ifindex,
        name: l.ifname,
        kind: l.linkinfo?.info_kind ?? '',
        linkType: l.link_type,
        mac: (l.address ?? '').toLowerCase(),
        mtu: l.mtu,
        flags: l.flags ?? [],
        parent: l.link,
        alias: l.ifalias ?? '',
        tunType: l.linkinfo?.info_kind === 'tun' ? l.linkinfo.info_data?.type : undefined,
      });
      for (const a of l.addr_info ?? []) {
        if (a.family !== 'inet' && a.family !== 'inet6') continue;
        addresses.push({ link: l.ifname, family: a.family, address: a.local, prefixLength: a.prefixlen, scope: a.scope });
      }
    }
    return { links, addresses };
  }

  /** Routes of the main table, both families, with numeric protocol, scope and type. */
  async routes(): Promise<RouteInfo[]> {
    type Raw = {
      type?: string;
      dst: string;
      gateway?: string;
      dev?: string;
      protocol?: string;
      scope?: string;
      prefsrc?: string;
      flags?: string[];
      metrics?: { mtu?: number }[];
    };
    const out: RouteInfo[] = [];
    for (const family of ['inet', 'inet6'] as const) {
      const args = ['-json', '-N', family === 'inet' ? '-4' : '-6', 'route', 'show', 'table', 'main'];
      for (const r of parseJson<Raw[]>(await this.run('ip', args), 'ip route show')) {
        out.push({
          family,
          dst: r.dst,
          gateway: r.gateway,
          dev: r.dev,
          // iproute2 omits the fields holding their most common value (boot, universe, unicast).
          protocol: r.protocol === undefined ? 3 : Number(r.protocol),
          scope: r.scope === undefined ? 0 : Number(r.scope),
          prefsrc: r.prefsrc,
          type: r.type === undefined ? RTN_UNICAST : Number(r.type),
          flags: r.flags ?? [],
          mtu: r.metrics?.find((m) => m.mtu !== undefined)?.mtu,
        });
      }
    }
    return out;
  }

  async neighbors(): Promise<NeighborInfo[]> {
    type Raw = { dst: string; dev: string; lladdr?: string; state?: string[]; router?: null | boolean };
    const raw = parseJson<Raw[]>(await this.run('ip', ['-json', 'neighbour', 'show']), 'ip neighbour show');
    return raw.map((n) => ({
      family: n.dst.includes(':') ? 'inet6' : 'inet',
      dst: n.dst,
      dev: n.dev,
      lladdr: n.lladdr?.toLowerCase(),
      state: n.state ?? [],
      router: n.router !== undefined,
    }));
  }

  /** A persistent single-queue tap (QEMU opens it by name with TUNSETIFF). */
  async addTap(name: string, opts: { mtu: number; up: boolean }): Promise<void> {
    checkIfname(name);
    await this.batch('ip', [
      ['tuntap', 'add', 'dev', name, 'mode', 'tap'],
      ['link', 'set', 'dev', name, 'mtu', String(checkMtu(opts.mtu)), ...(opts.up ? ['up'] : [])],
    ]);
  }

  async addMacvtap(opts: { parent: string; name: string; mac: string; mtu: number }): Promise<void> {
    await this.run('ip', [
      'link', 'add', 'link', checkIfname(opts.parent), 'name', checkIfname(opts.name),
      'mtu', String(checkMtu(opts.mtu)), 'address', checkMac(opts.mac), 'type', 'macvtap', 'mode', 'bridge',
    ]);
  }

  async setLink(name: string, change: { up?: boolean; mac?: string; arp?: boolean; alias?: string }): Promise<void> {
    const args = ['link', 'set', 'dev', checkIfname(name)];
    if (change.mac !== undefined) args.push('address', checkMac(change.mac));
    if (change.arp !== undefined) args.push('arp', change.arp ? 'on' : 'off');
    if (change.alias !== undefined) {
      if (change.alias.length > 255 || /[\0\n]/.test(change.alias)) throw errors.invalid('KATA_NET_BAD_ALIAS', 'bad interface alias');
      // An empty alias clears it (IFLA_IFALIAS of length 0).
      args.push('alias', change.alias);
    }
    if (change.up !== undefined) args.push(change.up ? 'up' : 'down');
    await this.run('ip', args);
  }

  async deleteLink(name: string): Promise<void> {
    await this.run('ip', ['link', 'delete', 'dev', checkIfname(name)]);
  }

  /** Devices holding an ingress qdisc. */
  async ingressQdiscDevices(): Promise<Set<string>> {
    type Raw = { kind: string; dev?: string };
    const raw = parseJson<Raw[]>(await this.run('tc', ['-json', 'qdisc', 'show']), 'tc qdisc show');
    return new Set(raw.filter((q) => q.kind === 'ingress' && q.dev).map((q) => q.dev!));
  }

  async deleteIngressQdisc(dev: string): Promise<void> {
    await this.run('tc', ['qdisc', 'del', 'dev', checkIfname(dev), 'ingress']);
  }

  /**
   * Joins two devices both ways: an ingress qdisc on each and the catch-all redirect to the other, in one
   * `tc -batch`. On failure some of it may exist: callers undo with deleteIngressQdisc.
   */
  async addRedirectPair(a: string, b: string, opts: { pref: number; cookie: string }): Promise<void> {
    checkIfname(a);
    checkIfname(b);
    if (!Number.isInteger(opts.pref) || opts.pref < 1 || opts.pref > 0xffff) throw errors.invalid('KATA_NET_BAD_PREF', `bad tc pref ${opts.pref}`);
    if (!COOKIE_RE.test(opts.cookie)) throw errors.invalid('KATA_NET_BAD_COOKIE', `bad tc cookie ${opts.cookie}`);
    const redirect = (from: string, to: string) => [
      'filter', 'add', 'dev', from, 'parent', 'ffff:', 'protocol', 'all', 'pref', String(opts.pref),
      'u32', 'match', 'u8', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev', to, 'cookie', opts.cookie,
    ];
    await this.batch('tc', [['qdisc', 'add', 'dev', a, 'ingress'], ['qdisc', 'add', 'dev', b, 'ingress'], redirect(a, b), redirect(b, a)]);
  }

  async ingressFilters(dev: string): Promise<IngressFilterInfo[]> {
    type Raw = {
      pref: number;
      options?: { actions?: { kind?: string; to_dev?: string; cookie?: string }[] };
    };
    const raw = parseJson<Raw[]>(await this.run('tc', ['-json', 'filter', 'show', 'dev', checkIfname(dev), 'ingress']), 'tc filter show');
    // u32 lists its hash table and the filter itself as separate entries with the same pref: merge them.
    const byPref = new Map<number, IngressFilterInfo>();
    for (const f of raw) {
      let info = byPref.get(f.pref);
      if (!info) byPref.set(f.pref, (info = { pref: f.pref, cookies: [] }));
      for (const a of f.options?.actions ?? []) {
        if (a.kind === 'mirred' && a.to_dev !== undefined) info.redirectTo = a.to_dev;
        if (a.cookie) info.cookies.push(a.cookie.toLowerCase());
      }
    }
    return [...byPref.values()];
  }

  async deleteIngressFilters(dev: string, pref: number): Promise<void> {
    await this.run('tc', ['filter', 'del', 'dev', checkIfname(dev), 'parent', 'ffff:', 'pref', String(pref)]);
  }

  /**
   * The character device of a macvtap (`major:minor` of /dev/tap<ifindex>). Read from a sysfs mounted in a
   * private mount namespace inside the netns: the host's /sys does not show the netns's links, and the
   * host-wide /sys/dev/char names are ambiguous across namespaces (same name and ifindex in two pods).
   */
  async macvtapCharDevice(name: string, ifindex: number): Promise<{ major: number; minor: number }> {
    checkIfname(name);
    if (!Number.isInteger(ifindex) || ifindex < 1) throw errors.invalid('KATA_NET_BAD_INDEX', `bad ifindex ${ifindex}`);
    // A constant script; the name and index come in as positional parameters, never as script text.
    const script = 'mount -t sysfs sysfs /sys && cat "/sys/class/net/$1/macvtap/tap$2/dev"';
    const out = await exec('nsenter', [
      `--net=${this.path}`, '--', 'unshare', '--mount', '--propagation', 'private', '--',
      'sh', '-c', script, 'sh', name, String(ifindex),
    ]);
    const m = /^(\d+):(\d+)\s*$/.exec(out);
    if (!m) throw errors.internal('KATA_NET_PARSE', `macvtap ${name}: unexpected device number ${JSON.stringify(out)}`);
    return { major: Number(m[1]), minor: Number(m[2]) };
  }
}

/** Identity (device and inode of the nsfs file) of a namespace; undefined when it cannot be read. */
async function nsIdentity(p: string): Promise<string | undefined> {
  try {
    const st = await stat(p);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * Whether `netnsPath` is the runtime's own network namespace or the init process's (the host's): a VM
 * there would take over the host's interfaces.
 */
export async function isHostNetns(netnsPath: string): Promise<boolean> {
  const target = await nsIdentity(netnsPath);
  if (target === undefined) {
    throw errors.notFound('KATA_NETNS_NOT_FOUND', `network namespace ${netnsPath} does not exist`);
  }
  for (const host of ['/proc/self/ns/net', '/proc/1/ns/net']) {
    // /proc/1 may be unreadable (pid namespaces, restricted procfs): then only our own counts.
    if ((await nsIdentity(host)) === target) return true;
  }
  return false;
}

/** Creates a character device node (mknod(2) via coreutils; Node has no mknod). */
export async function makeCharDevice(nodePath: string, major: number, minor: number, mode = 0o600): Promise<void> {
  if (!path.isAbsolute(nodePath) || nodePath.includes('\0')) throw errors.invalid('KATA_NET_BAD_PATH', `bad device path ${nodePath}`);
  for (const n of [major, minor]) {
    if (!Number.isInteger(n) || n < 0 || n > 0xfffff) throw errors.invalid('KATA_NET_BAD_DEVNUM', `bad device number ${n}`);
  }
  await exec('mknod', ['-m', mode.toString(8), '--', nodePath, 'c', String(major), String(minor)]);
}

import { readdir, readFile } from 'node:fs/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { errors } from '../base/errors.js';
import type { Logger } from '../base/logger.js';
import type { AgentHandlers } from '../protocol/agent-api.js';
import { IPFamily, type ARPNeighbor, type Interface, type IPAddress, type Route } from '../protocol/gen/types.js';
import { commandShell } from './command-shell.js';

/**
 * The guest side of the pod network: UpdateInterface, UpdateRoutes, AddARPNeighbors, ListInterfaces and
 * ListRoutes, through busybox `ip` and `arp` (the guest has no iproute2 and Node has no netlink).
 *
 * Everything the host sends is validated before it reaches a command line: interface names against the
 * kernel's alphabet, addresses with node:net, numbers by range. Arguments go through execFile (no shell).
 * Limits of busybox: `ip neigh` cannot add entries (IPv4 ones go through `arp -s`, IPv6 ones are refused),
 * and `ip route` prints neither the protocol nor the MTU of routes.
 */

const SYS_NET = '/sys/class/net';
const IFNAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const IFF_NOARP = 0x80;
const IFF_UP = 0x1;
const IFF_LOOPBACK = 0x8;
const NIC_WAIT_MS = 3_000;
/** Route types busybox prints before the destination; none of them belong in the pod's route list. */
const ROUTE_TYPES = new Set(['local', 'broadcast', 'multicast', 'anycast', 'unreachable', 'blackhole', 'prohibit', 'throw', 'nat']);
const SCOPE_NAMES: Record<number, string> = { 0: 'global', 200: 'site', 253: 'link', 254: 'host', 255: 'nowhere' };
const SCOPE_NUMBERS: Record<string, number> = { global: 0, universe: 0, site: 200, link: 253, host: 254, nowhere: 255 };
const RTNH_F_ONLINK = 0x4;

type NetworkHandlers = Required<Pick<AgentHandlers, 'UpdateInterface' | 'UpdateRoutes' | 'AddARPNeighbors' | 'ListInterfaces' | 'ListRoutes'>>;

// ---------------------------------------------------------------- validation

function bad(what: string, value: unknown): never {
  throw errors.invalid('KATA_NET_INVALID', `invalid ${what} ${JSON.stringify(value)}`);
}

function checkName(name: string, what: string): string {
  if (typeof name !== 'string' || !IFNAME_RE.test(name)) bad(what, name);
  return name;
}

function checkMac(mac: string): string {
  const m = typeof mac === 'string' ? mac.toLowerCase() : '';
  if (!MAC_RE.test(m) || m === '00:00:00:00:00:00' || (parseInt(m.slice(0, 2), 16) & 1) === 1) bad('MAC address', mac);
  return m;
}

function checkFamily(f: number): IPFamily {
  if (f !== IPFamily.v4 && f !== IPFamily.v6) bad('address family', f);
  return f;
}

function checkIp(address: string, family: IPFamily, what: string): string {
  if (typeof address !== 'string') bad(what, address);
  // No zone ids (fe80::1%eth0): a name inside an address is not worth the parsing risk.
  const ok = family === IPFamily.v4 ? isIPv4(address) : isIPv6(address) && !address.includes('%');
  if (!ok) bad(what, address);
  return address;
}

function checkPrefix(mask: string, family: IPFamily, what: string): number {
  const max = family === IPFamily.v4 ? 32 : 128;
  if (typeof mask !== 'string' || !/^\d{1,3}$/.test(mask) || Number(mask) > max) bad(what, mask);
  return Number(mask);
}

function checkMtu(mtu: number, what: string): number {
  if (!Number.isInteger(mtu) || (mtu !== 0 && (mtu < 68 || mtu > 65535))) bad(what, mtu);
  return mtu;
}

function checkAddress(a: IPAddress): string {
  const f = checkFamily(a.family);
  return `${checkIp(a.address, f, 'IP address')}/${checkPrefix(a.mask, f, 'prefix length')}`;
}

/** `''`, `default`, an address, or address/prefix; returned as busybox takes it. */
function checkDest(dest: string, family: IPFamily): string {
  if (dest === '' || dest === 'default') return 'default';
  const [ip, prefix, extra] = dest.split('/');
  if (extra !== undefined) bad('route destination', dest);
  checkIp(ip!, family, 'route destination');
  if (prefix !== undefined) checkPrefix(prefix, family, 'route destination prefix');
  return dest;
}

interface CheckedRoute {
  family: IPFamily;
  args: string[];
  device: string;
  hasGateway: boolean;
}

function checkRoute(r: Route): CheckedRoute {
  const family = checkFamily(r.family);
  const device = checkName(r.device, 'route device');
  const args = [checkDest(r.dest, family)];
  if (r.gateway) args.push('via', checkIp(r.gateway, family, 'route gateway'));
  args.push('dev', device);
  if (r.source) args.push('src', checkIp(r.source, family, 'route source'));
  if (!Number.isInteger(r.scope) || r.scope < 0 || r.scope > 255) bad('route scope', r.scope);
  if (r.scope !== 0) args.push('scope', SCOPE_NAMES[r.scope] ?? String(r.scope));
  if (!Number.isInteger(r.flags) || r.flags < 0) bad('route flags', r.flags);
  if (r.flags & RTNH_F_ONLINK) args.push('onlink');
  if (checkMtu(r.mtu, 'route MTU') > 0) args.push('mtu', String(r.mtu));
  return { family, args, device, hasGateway: r.gateway !== '' };
}

// ---------------------------------------------------------------- reading the guest's state

const ipArgs = (family: IPFamily, ...rest: string[]) => (family === IPFamily.v6 ? ['-6', ...rest] : ['-4', ...rest]);

async function linkNames(): Promise<string[]> {
  return (await readdir(SYS_NET)).filter((n) => IFNAME_RE.test(n)).sort();
}

async function sysAttr(name: string, attr: string): Promise<string> {
  return (await readFile(`${SYS_NET}/${name}/${attr}`, 'utf8')).trim();
}

/**
 * `Interface.devicePath` says where the NIC is when no NIC has `hwAddr` yet. Kata puts a PCI path there for
 * hot-plugged NICs; kata-ts has no PCI hotplug and uses `mac=<MAC>`: the NIC that has this address now (a
 * clone's NIC, which still has its template's). Returns that MAC, or undefined for an empty devicePath.
 */
function nicLocator(devicePath: string): string | undefined {
  if (devicePath === '') return undefined;
  const m = /^mac=(.*)$/.exec(devicePath);
  if (!m) bad('interface devicePath (only "mac=<MAC>" is supported)', devicePath);
  return checkMac(m[1]!);
}

async function findByMac(mac: string): Promise<string | undefined> {
  for (const n of await linkNames()) {
    if ((await sysAttr(n, 'address').catch(() => '')).toLowerCase() === mac) return n;
  }
  return undefined;
}

async function linkExists(name: string): Promise<boolean> {
  return (await linkNames()).includes(name);
}

/** Addresses of every link, from `ip -o addr show`. */
async function addressesByLink(): Promise<Map<string, IPAddress[]>> {
  const out = new Map<string, IPAddress[]>();
  for (const line of (await commandShell.run('ip', ['-o', 'addr', 'show'])).split('\n')) {
    // "3: eth0    inet 10.88.1.2/24 brd ... scope global eth0\ ..."
    const m = /^\d+:\s+(\S+?)(?:@\S+)?\s+(inet6?)\s+([0-9a-fA-F.:]+)\/(\d+)/.exec(line);
    if (!m) continue;
    const list = out.get(m[1]!) ?? [];
    list.push({ family: m[2] === 'inet' ? IPFamily.v4 : IPFamily.v6, address: m[3]!, mask: m[4]! });
    out.set(m[1]!, list);
  }
  return out;
}

async function describe(name: string, addrs: Map<string, IPAddress[]>): Promise<Interface> {
  const flags = parseInt(await sysAttr(name, 'flags').catch(() => '0'), 16) || 0;
  return {
    device: name,
    name,
    IPAddresses: addrs.get(name) ?? [],
    mtu: Number(await sysAttr(name, 'mtu').catch(() => '0')) || 0,
    hwAddr: (await sysAttr(name, 'address').catch(() => '')).toLowerCase(),
    devicePath: '',
    type: flags & IFF_LOOPBACK ? 'loopback' : '',
    rawFlags: flags,
  };
}

async function listInterfaces(): Promise<Interface[]> {
  const addrs = await addressesByLink();
  const out: Interface[] = [];
  for (const n of await linkNames()) out.push(await describe(n, addrs));
  return out;
}

/** Parses busybox `ip route list` lines ("10.0.0.0/8 via 10.88.1.1 dev eth0 scope link  src 10.88.1.2"). */
export function parseRoutes(text: string, family: IPFamily): Route[] {
  const routes: Route[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/).filter(Boolean);
    if (t.length === 0 || ROUTE_TYPES.has(t[0]!)) continue;
    if (t[0] === 'unicast') t.shift();
    const r: Route = { dest: t[0] === 'default' ? '' : t[0]!, gateway: '', device: '', source: '', scope: 0, family, flags: 0, mtu: 0 };
    for (let i = 1; i < t.length; i++) {
      const v = t[i + 1];
      switch (t[i]) {
        case 'via': r.gateway = v ?? ''; i++; break;
        case 'dev': r.device = v ?? ''; i++; break;
        case 'src': r.source = v ?? ''; i++; break;
        case 'scope': r.scope = SCOPE_NUMBERS[v ?? ''] ?? (Number(v) || 0); i++; break;
        case 'mtu': r.mtu = Number(v) || 0; i++; break;
        case 'onlink': r.flags |= RTNH_F_ONLINK; break;
        case 'proto': case 'metric': case 'table': case 'expires': case 'pref': case 'realm': case 'error': i++; break;
        default: break;
      }
    }
    routes.push(r);
  }
  return routes;
}

async function listRoutes(): Promise<Route[]> {
  const v4 = parseRoutes(await commandShell.run('ip', ipArgs(IPFamily.v4, 'route', 'list')), IPFamily.v4);
  const v6 = parseRoutes(await commandShell.run('ip', ipArgs(IPFamily.v6, 'route', 'list')), IPFamily.v6);
  return [...v4, ...v6];
}

function ipBits(address: string, family: IPFamily): bigint {
  if (family === IPFamily.v4) return address.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  // An embedded IPv4 tail (::ffff:1.2.3.4) counts as two groups.
  const groups = (part: string) =>
    part === ''
      ? []
      : part.split(':').flatMap((g) => {
          if (!g.includes('.')) return [g];
          const v4 = ipBits(g, IPFamily.v4);
          return [(v4 >> 16n).toString(16), (v4 & 0xffffn).toString(16)];
        });
  const [head, tail] = address.split('::') as [string, string | undefined];
  const hs = groups(head);
  const ts = tail === undefined ? [] : groups(tail);
  const all = tail === undefined ? hs : [...hs, ...Array<string>(8 - hs.length - ts.length).fill('0'), ...ts];
  return all.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || '0', 16)), 0n);
}

function network(address: string, prefix: number, family: IPFamily): bigint {
  const width = family === IPFamily.v4 ? 32 : 128;
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(width - prefix);
  return ipBits(address, family) & mask;
}

/**
 * Whether a route is one the guest kernel made for an address (busybox does not print the protocol): a
 * direct route to the prefix of an address on the same device, or an IPv6 link-local prefix.
 */
function isKernelRoute(r: Route, addrs: IPAddress[]): boolean {
  if (r.gateway !== '' || r.dest === '') return false;
  const [ip, p] = r.dest.split('/');
  const prefix = p === undefined ? (r.family === IPFamily.v4 ? 32 : 128) : Number(p);
  if (r.family === IPFamily.v6 && prefix === 64 && network(ip!, 64, IPFamily.v6) === network('fe80::', 64, IPFamily.v6)) return true;
  return addrs.some(
    (a) => a.family === r.family && Number(a.mask) === prefix && network(a.address, prefix, r.family) === network(ip!, prefix, r.family),
  );
}

// ---------------------------------------------------------------- handlers

/** One network change at a time: renames and route replacement must not interleave. */
function serialized(): <T>(f: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(f: () => Promise<T>) => {
    const next = tail.then(f, f);
    tail = next.catch(() => undefined);
    return next;
  };
}

export function networkHandlers(log: Logger): NetworkHandlers {
  const nlog = log.child({ subsystem: 'network' });
  const serial = serialized();
  /** MAC -> the name this agent gave that NIC: a later UpdateInterface may not take it away. */
  const configured = new Map<string, string>();

  async function waitForNic(mac: string): Promise<string> {
    const deadline = Date.now() + NIC_WAIT_MS;
    for (;;) {
      const name = await findByMac(mac);
      if (name) return name;
      if (Date.now() > deadline) throw errors.notFound('KATA_NET_NO_NIC', `no network interface with MAC ${mac} in the guest`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async function rename(current: string, wanted: string): Promise<void> {
    if (await linkExists(wanted)) {
      const flags = parseInt(await sysAttr(wanted, 'flags').catch(() => '0'), 16) || 0;
      const holder = (await sysAttr(wanted, 'address').catch(() => '')).toLowerCase();
      if (configured.get(holder) === wanted || flags & IFF_LOOPBACK) {
        throw errors.alreadyExists('KATA_NET_NAME_TAKEN', `interface name ${wanted} is already used in the guest`);
      }
      // Another NIC holds the name the kernel gave it (eth0, eth1 ...): move it aside; it gets its own later.
      const aside = `kt${await sysAttr(wanted, 'ifindex')}`;
      await commandShell.run('ip', ['link', 'set', 'dev', wanted, 'down']);
      await commandShell.run('ip', ['link', 'set', 'dev', wanted, 'name', aside]);
      nlog.debug({ from: wanted, to: aside }, 'moved a NIC out of the way');
    }
    await commandShell.run('ip', ['link', 'set', 'dev', current, 'down']);
    await commandShell.run('ip', ['link', 'set', 'dev', current, 'name', wanted]);
  }

  async function updateInterface(iface: Interface): Promise<Interface> {
    const name = checkName(iface.name || iface.device, 'interface name');
    const mac = iface.hwAddr ? checkMac(iface.hwAddr) : undefined;
    const mtu = checkMtu(iface.mtu, 'MTU');
    const addrs = [...new Set(iface.IPAddresses.map(checkAddress))];
    if (!Number.isInteger(iface.rawFlags) || iface.rawFlags < 0) bad('interface flags', iface.rawFlags);

    const locator = nicLocator(iface.devicePath);
    let current: string;
    let newMac: string | undefined;
    if (mac) {
      const holder = locator ? await findByMac(mac) : undefined;
      if (holder) current = holder;
      else if (locator) {
        // A clone of a VM template: its NIC has the template's MAC until this call gives it the pod's.
        current = await waitForNic(locator);
        newMac = mac;
      } else current = await waitForNic(mac);
    } else if (iface.device && (await linkExists(checkName(iface.device, 'interface device')))) current = iface.device;
    else throw errors.invalid('KATA_NET_INVALID', `interface ${name}: no MAC address to find it by`);

    // Loopback is the container's too; Kata's agent brings it up with the sandbox (once: a command is ~70 ms).
    const loFlags = parseInt(await sysAttr('lo', 'flags').catch(() => '0'), 16) || 0;
    if (!(loFlags & IFF_UP)) {
      await commandShell.run('ip', ['link', 'set', 'dev', 'lo', 'up']).catch((err: unknown) => nlog.warn({ err }, 'bringing up lo failed'));
    }

    if (current !== name) await rename(current, name);
    if (mac) configured.set(mac, name);
    await commandShell.run('ip', ['addr', 'flush', 'dev', name]);
    for (const a of addrs) {
      const v4 = !a.includes(':');
      await commandShell.run('ip', v4 ? ['addr', 'add', a, 'broadcast', '+', 'dev', name] : ['addr', 'add', a, 'dev', name]);
    }
    // One command for the rest: every exec costs tens of ms in a TCG guest.
    const link = ['link', 'set', 'dev', name];
    if (newMac) link.push('address', newMac);
    if (mtu > 0) link.push('mtu', String(mtu));
    link.push('arp', iface.rawFlags & IFF_NOARP ? 'off' : 'on', 'up');
    await commandShell.run('ip', link);
    nlog.info({ name, was: current, mac, macWas: newMac ? locator : undefined, mtu, addresses: addrs }, 'interface updated');
    return describe(name, await addressesByLink());
  }

  async function updateRoutes(routes: Route[]): Promise<Route[]> {
    const checked = routes.map(checkRoute);
    const devices = new Set(checked.map((r) => r.device));
    for (const d of devices) {
      if (!(await linkExists(d))) throw errors.notFound('KATA_NET_NO_NIC', `route device ${d} does not exist in the guest`);
    }
    // Replace: the non-kernel routes of these devices go, then the given ones come in.
    const addrs = await addressesByLink();
    for (const r of await listRoutes()) {
      if (!devices.has(r.device) || isKernelRoute(r, addrs.get(r.device) ?? [])) continue;
      const args = [r.dest === '' ? 'default' : r.dest];
      if (r.gateway) args.push('via', r.gateway);
      args.push('dev', r.device);
      await commandShell.run('ip', ipArgs(r.family, 'route', 'del', ...args)).catch((err: unknown) => nlog.warn({ err, route: args }, 'deleting a route failed'));
    }
    // Direct routes first: a gateway must be reachable when its route is added.
    for (const r of [...checked.filter((c) => !c.hasGateway), ...checked.filter((c) => c.hasGateway)]) {
      await commandShell.run('ip', ipArgs(r.family, 'route', 'replace', ...r.args));
    }
    nlog.info({ routes: checked.length, devices: [...devices] }, 'routes updated');
    return listRoutes();
  }

  async function addNeighbors(neighbors: ARPNeighbor[]): Promise<void> {
    const checked = neighbors.map((n) => {
      const to = n.toIPAddress;
      if (!to) bad('neighbour address', to);
      const family = checkFamily(to.family);
      const ip = checkIp(to.address, family, 'neighbour address');
      if (family === IPFamily.v6) {
        throw errors.notImplemented('KATA_NET_NEIGH_V6', `cannot add IPv6 neighbour ${ip}: the guest's busybox ip cannot add neighbours`);
      }
      return { ip, device: checkName(n.device, 'neighbour device'), lladdr: checkMac(n.lladdr) };
    });
    for (const n of checked) {
      // busybox arp -s makes a permanent entry (ATF_PERM), replacing any existing one.
      await commandShell.run('arp', ['-i', n.device, '-s', n.ip, n.lladdr]);
    }
    nlog.info({ neighbors: checked.length }, 'neighbours added');
  }

  return {
    UpdateInterface: (req) =>
      serial(() => {
        if (!req.interface) bad('UpdateInterface request', 'without an interface');
        return updateInterface(req.interface);
      }),
    UpdateRoutes: (req) => serial(async () => ({ Routes: await updateRoutes(req.routes?.Routes ?? []) })),
    AddARPNeighbors: (req) =>
      serial(async () => {
        await addNeighbors(req.neighbors?.ARPNeighbors ?? []);
        return {};
      }),
    ListInterfaces: () => serial(async () => ({ Interfaces: await listInterfaces() })),
    ListRoutes: () => serial(async () => ({ Routes: await listRoutes() })),
  };
}

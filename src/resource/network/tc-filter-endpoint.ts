import { CleanupStack } from '../../base/cleanup.js';
import { errors, wrapError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import type { Netns } from '../../platform/netlink.js';
import { vmDeviceId, type Endpoint, type EndpointContext } from './endpoint.js';

/** tc action cookie marking kata-ts's redirects ("kata-ts"), so a cleanup without state finds them. */
export const KATA_TC_COOKIE = Buffer.from('kata-ts').toString('hex');
/** The filter priority kata-ts uses on both ingress qdiscs. */
export const KATA_TC_PREF = 1;
export const TAP_NAME_RE = /^tap\d+_kata$/;

export const tapName = (index: number): string => `tap${index}_kata`;

/**
 * Kata's default interworking model: a tap next to the pod's veth, joined to it by two tc redirects.
 *
 *   veth ingress --(u32 match-all, mirred egress redirect)--> tap --> QEMU --> guest NIC (veth's MAC)
 *   guest NIC --> QEMU --> tap ingress --(same)--> veth egress
 *
 * The IP addresses stay on the veth, unused by the netns: frames entering the veth never reach its stack.
 */
export class TcFilterEndpoint implements Endpoint {
  readonly model = 'tcfilter' as const;
  readonly name: string;
  readonly guestMac: string;
  readonly tap: string;
  private readonly netns: Netns;
  private readonly log: Logger;
  private readonly index: number;
  private readonly mtu: number;

  constructor(ctx: EndpointContext) {
    this.netns = ctx.netns;
    this.index = ctx.index;
    this.name = ctx.pod.link.name;
    this.guestMac = ctx.pod.link.mac;
    this.mtu = ctx.pod.link.mtu;
    this.tap = tapName(ctx.index);
    this.log = ctx.log.child({ endpoint: this.name, tap: this.tap });
  }

  async attach(): Promise<VmDevice> {
    const undo = new CleanupStack(this.log);
    try {
      if ((await this.netns.ingressQdiscDevices()).has(this.name)) {
        // Someone else's traffic control (e.g. a CNI bandwidth plugin): redirecting would bypass or break it.
        throw errors.precondition('KATA_NET_QDISC_EXISTS', `interface ${this.name} already has an ingress qdisc`);
      }
      undo.push(`delete ${this.tap}`, () => this.deleteTap());
      await this.netns.addTap(this.tap, { mtu: this.mtu, up: true });
      // There was no ingress qdisc on the veth: whatever of it exists after a failure is ours to remove.
      undo.push(`delete ingress qdisc of ${this.name}`, () => this.deleteVethIngress());
      await this.netns.addRedirectPair(this.name, this.tap, { pref: KATA_TC_PREF, cookie: KATA_TC_COOKIE });
    } catch (err) {
      await undo.run();
      throw wrapError(`attach ${this.name} (tcfilter)`, err);
    }
    this.log.debug({ mac: this.guestMac, mtu: this.mtu }, 'tcfilter endpoint attached');
    return { kind: 'net-tap', id: vmDeviceId(this.index), ifname: this.tap, mac: this.guestMac, netnsPath: this.netns.path };
  }

  async detach(): Promise<void> {
    if (!(await this.netns.exists())) return;
    // The tap's own qdisc and filter go with it.
    await this.deleteTap();
    await this.deleteVethIngress();
  }

  private async deleteVethIngress(): Promise<void> {
    await removeKataIngress(this.netns, this.name, this.log, { orphaned: true });
  }

  private async deleteTap(): Promise<void> {
    const links = await this.netns.links();
    if (links.some((l) => l.name === this.tap && l.kind === 'tun')) await this.netns.deleteLink(this.tap);
  }
}

/**
 * Removes kata-ts's redirect from `dev`'s ingress, and the ingress qdisc when nothing else is left on it
 * (kata-ts only attaches where there was no ingress qdisc, so an ingress holding only our filter is ours).
 * `orphaned`: the caller knows it created this qdisc, so an empty one is removed too.
 */
export async function removeKataIngress(
  netns: Netns,
  dev: string,
  log: Logger,
  opts: { orphaned?: boolean } = {},
): Promise<boolean> {
  if (!(await netns.ingressQdiscDevices()).has(dev)) return false;
  const filters = await netns.ingressFilters(dev);
  const ours = filters.filter((f) => f.cookies.includes(KATA_TC_COOKIE));
  if (ours.length === 0 && !(opts.orphaned && filters.length === 0)) return false;
  if (ours.length === filters.length) {
    await netns.deleteIngressQdisc(dev);
  } else {
    log.warn({ dev, others: filters.length - ours.length }, 'ingress qdisc holds filters kata-ts did not add: removing only ours');
    for (const f of ours) await netns.deleteIngressFilters(dev, f.pref);
  }
  return true;
}

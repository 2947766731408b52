import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { CleanupStack } from '../../base/cleanup.js';
import { wrapError } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import { makeCharDevice, type LinkInfo, type Netns } from '../../platform/netlink.js';
import { vmDeviceId, type Endpoint, type EndpointContext, type NetFdDevice } from './endpoint.js';

export const MACVTAP_NAME_RE = /^mvt\d+$/;
export const macvtapName = (index: number): string => `mvt${index}`;

/**
 * What the veth looked like before: kept in its own alias (IFLA_IFALIAS) while the macvtap exists, so a
 * cleanup without state (after a runtime crash) can put it back.
 */
interface SavedVeth {
  mac: string;
  arp: boolean;
  alias: string;
}

const MARKER_RE = /^kata-ts:macvtap:mac=([0-9a-f:]{17}):arp=([01]):alias=((?:[0-9a-f]{2})*)$/;

function encodeMarker(s: SavedVeth): string {
  return `kata-ts:macvtap:mac=${s.mac}:arp=${s.arp ? 1 : 0}:alias=${Buffer.from(s.alias).toString('hex')}`;
}

function decodeMarker(alias: string): SavedVeth | undefined {
  const m = MARKER_RE.exec(alias);
  if (!m) return undefined;
  return { mac: m[1]!, arp: m[2] === '1', alias: Buffer.from(m[3]!, 'hex').toString() };
}

/** A random locally administered unicast MAC. */
function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * Kata's `macvtap` model: a macvtap in bridge mode on top of the pod's veth; QEMU reads and writes its
 * /dev/tapN (passed as an fd). The macvtap takes the veth's MAC (frames for it are diverted to the VM before
 * the netns stack sees them); the veth gets a random MAC (two devices on one port cannot share one) and stops
 * answering ARP, so only the guest answers for the pod's addresses. Both are put back at detach.
 */
export class MacvtapEndpoint implements Endpoint {
  readonly model = 'macvtap' as const;
  readonly name: string;
  readonly guestMac: string;
  readonly macvtap: string;
  private readonly netns: Netns;
  private readonly log: Logger;
  private readonly index: number;
  private readonly link: LinkInfo;
  private readonly runDir: string;
  private nodePath: string | undefined;

  constructor(ctx: EndpointContext) {
    this.netns = ctx.netns;
    this.index = ctx.index;
    this.link = ctx.pod.link;
    this.name = ctx.pod.link.name;
    this.guestMac = ctx.pod.link.mac;
    this.macvtap = macvtapName(ctx.index);
    this.runDir = ctx.runDir;
    this.log = ctx.log.child({ endpoint: this.name, macvtap: this.macvtap });
  }

  async attach(): Promise<NetFdDevice> {
    const undo = new CleanupStack(this.log);
    const saved: SavedVeth = { mac: this.guestMac, arp: !this.link.flags.includes('NOARP'), alias: this.link.alias };
    try {
      // Record first: from here on a crash leaves enough behind to undo everything.
      undo.push(`restore ${this.name}`, () => restoreMacvtap(this.netns, this.name, this.macvtap, this.log));
      await this.netns.setLink(this.name, { alias: encodeMarker(saved) });
      await this.netns.setLink(this.name, { mac: randomMac() });
      await this.netns.addMacvtap({ parent: this.name, name: this.macvtap, mac: this.guestMac, mtu: this.link.mtu });
      await this.netns.setLink(this.macvtap, { up: true });
      await this.netns.setLink(this.name, { arp: false });

      const mvt = (await this.netns.links()).find((l) => l.name === this.macvtap);
      if (!mvt) throw new Error(`${this.macvtap} vanished after creation`);
      const { major, minor } = await this.netns.macvtapCharDevice(this.macvtap, mvt.index);
      const node = path.join(this.runDir, `tap${mvt.index}`);
      undo.push(`remove ${node}`, () => rm(node, { force: true }));
      await makeCharDevice(node, major, minor);
      this.nodePath = node;
    } catch (err) {
      await undo.run();
      throw wrapError(`attach ${this.name} (macvtap)`, err);
    }
    this.log.debug({ mac: this.guestMac, node: this.nodePath }, 'macvtap endpoint attached');
    return { kind: 'net-tap-fd', id: vmDeviceId(this.index), devicePath: this.nodePath, mac: this.guestMac };
  }

  async detach(): Promise<void> {
    if (this.nodePath) await rm(this.nodePath, { force: true });
    this.nodePath = undefined;
    if (!(await this.netns.exists())) return;
    await restoreMacvtap(this.netns, this.name, this.macvtap, this.log);
  }
}

/**
 * Deletes `macvtap` (if it is one) and gives `veth` back its MAC, ARP and alias, from the marker alias or,
 * failing that, from the macvtap's MAC. Either name may be missing. Idempotent.
 */
export async function restoreMacvtap(netns: Netns, veth: string | undefined, macvtap: string | undefined, log: Logger): Promise<void> {
  const links = await netns.links();
  const mvt = links.find((l) => l.name === macvtap && l.kind === 'macvtap');
  const lowerName = veth ?? mvt?.parent;
  const lower = links.find((l) => l.name === lowerName);
  const saved = lower ? decodeMarker(lower.alias) : undefined;
  const mac = saved?.mac ?? mvt?.mac;
  if (mvt) await netns.deleteLink(mvt.name);
  if (!lower || (!saved && !mvt)) return;
  if (mac && lower.mac !== mac) await netns.setLink(lower.name, { mac });
  await netns.setLink(lower.name, { arp: saved?.arp ?? true });
  if (saved) await netns.setLink(lower.name, { alias: saved.alias });
  log.debug({ veth: lower.name, mac }, 'veth restored after macvtap');
}

/** Whether a veth carries kata-ts's macvtap marker (its macvtap may already be gone). */
export function hasMacvtapMarker(link: LinkInfo): boolean {
  return decodeMarker(link.alias) !== undefined;
}

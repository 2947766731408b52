import type { Logger } from '../../base/logger.js';
import type { VmDevice } from '../../hypervisor/hypervisor.js';
import type { AddressInfo, LinkInfo, Netns } from '../../platform/netlink.js';

/** Kata's `internetworking_model` values this runtime implements. */
export type InterworkingModel = 'tcfilter' | 'macvtap' | 'none';

/** One pod interface as the scan found it, before anything was changed. */
export interface PodLink {
  link: LinkInfo;
  addresses: AddressInfo[];
}

/**
 * A NIC whose host side QEMU must receive as an open file descriptor (`-netdev tap,fd=N`): macvtap. Open
 * `devicePath` read-write and pass the fd; `mac` is the guest NIC's address.
 */
export interface NetFdDevice {
  kind: 'net-tap-fd';
  id: string;
  devicePath: string;
  mac: string;
}

/** What an endpoint gives the VM: a tap QEMU opens by name, or a device it must be handed as an fd. */
export type EndpointDevice = VmDevice | NetFdDevice;

/**
 * One pod interface connected to the VM. `attach()` creates the host side in the pod's network namespace
 * and undoes its own work when it fails; `detach()` removes everything `attach()` made and is idempotent.
 * The guest NIC always carries `guestMac`, the address the pod network (CNI bridge, peers' ARP caches)
 * expects for this interface.
 */
export interface Endpoint {
  readonly model: Exclude<InterworkingModel, 'none'>;
  /** The pod interface (the veth in the netns, e.g. `eth0`); also the guest interface's name. */
  readonly name: string;
  readonly guestMac: string;
  attach(): Promise<EndpointDevice>;
  detach(): Promise<void>;
}

export interface EndpointContext {
  netns: Netns;
  /** Position of the endpoint in the pod: names its tap (`tap<index>_kata`, `mvt<index>`) and VM device. */
  index: number;
  pod: PodLink;
  /** Private host directory for device nodes (macvtap). */
  runDir: string;
  log: Logger;
}

/** VM device id of the endpoint at `index` (Kata: `network-<index>`). */
export const vmDeviceId = (index: number): string => `network-${index}`;

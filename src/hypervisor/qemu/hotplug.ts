/** Device hotplug over QMP (pc and q35 only: microvm has no hotplug). */
import { errors } from '../../base/errors.js';
import type { Logger } from '../../base/logger.js';
import type { QmpClient } from '../../protocol/qmp/qmp-client.js';
import type { VmDevice } from '../hypervisor.js';
import { blockNodeName, blockdevAddArgs, deviceDriver, netdevId, type MachineType } from './cmdline.js';

export function hotplugUnsupported(machine: MachineType): Error {
  return errors.notImplemented('KATA_HOTPLUG_UNSUPPORTED', `${machine} has no hotplug`);
}

/** Whether this driver can hot-plug (and hot-unplug) this device kind. */
export function canHotplug(device: VmDevice): boolean {
  return device.kind === 'block' || device.kind === 'net-tap';
}

/**
 * Plugs `device` (backend first, then the frontend; the backend is removed again if the frontend fails).
 * `bus` is the q35 root port to use; pc hot-plugs onto pci.0.
 */
export async function plugDevice(
  qmp: QmpClient,
  machine: MachineType,
  device: VmDevice,
  bus: string | undefined,
  log: Logger,
): Promise<void> {
  const onBus = bus ? { bus } : {};
  switch (device.kind) {
    case 'block': {
      await qmp.execute('blockdev-add', blockdevAddArgs(device));
      try {
        await qmp.execute('device_add', {
          driver: deviceDriver(machine, 'blk'),
          id: device.id,
          drive: blockNodeName(device.id),
          ...onBus,
        });
      } catch (err) {
        await qmp.execute('blockdev-del', { 'node-name': blockNodeName(device.id) }).catch((e) =>
          log.warn({ err: e, id: device.id }, 'rollback blockdev-del failed'),
        );
        throw err;
      }
      return;
    }
    case 'net-tap': {
      await qmp.execute('netdev_add', {
        type: 'tap',
        id: netdevId(device.id),
        ifname: device.ifname,
        script: 'no',
        downscript: 'no',
        vhost: false,
      });
      try {
        await qmp.execute('device_add', {
          driver: deviceDriver(machine, 'net'),
          id: device.id,
          netdev: netdevId(device.id),
          mac: device.mac.toLowerCase(),
          romfile: '',
          ...onBus,
        });
      } catch (err) {
        await qmp.execute('netdev_del', { id: netdevId(device.id) }).catch((e) =>
          log.warn({ err: e, id: device.id }, 'rollback netdev_del failed'),
        );
        throw err;
      }
      return;
    }
    default:
      throw errors.notImplemented('KATA_HOTPLUG_UNSUPPORTED', `hotplug of ${device.kind} devices is not implemented`);
  }
}

/**
 * Unplugs `device`: `device_del`, then waits for DEVICE_DELETED (the guest must release the device, so this
 * needs a running guest OS), then removes the backend.
 */
export async function unplugDevice(qmp: QmpClient, device: VmDevice, timeoutMs: number): Promise<void> {
  if (!canHotplug(device)) {
    throw errors.notImplemented('KATA_HOTPLUG_UNSUPPORTED', `hot-unplug of ${device.kind} devices is not implemented`);
  }
  const deleted = qmp.waitEvent('DEVICE_DELETED', timeoutMs, { match: (ev) => ev.data?.device === device.id });
  try {
    await qmp.execute('device_del', { id: device.id });
  } catch (err) {
    deleted.catch(() => undefined);
    throw err;
  }
  try {
    await deleted;
  } catch (err) {
    throw errors.deadline(
      'KATA_HOTPLUG_TIMEOUT',
      `device ${device.id}: the guest did not release it within ${timeoutMs} ms`,
      err,
    );
  }
  if (device.kind === 'block') await qmp.execute('blockdev-del', { 'node-name': blockNodeName(device.id) });
  else await qmp.execute('netdev_del', { id: netdevId(device.id) });
}

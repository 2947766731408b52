import { detectAccel } from '../hypervisor/accel.js';
import { qemuFactory } from '../hypervisor/qemu/qemu.js';
import { errors } from '../base/errors.js';
import { createShareFs } from '../resource/sharefs/index.js';
import type { SandboxDeps } from './sandbox.js';
import { templateVmSource } from './factory/template-vm-source.js';

/** The real drivers: QEMU, virtio-fs/9p, KVM-or-TCG detection. */
export function defaultSandboxDeps(): SandboxDeps {
  return {
    // Cold boot, or a template clone when [factory] enable_template is on (it decides per start, from the config).
    vmSource: templateVmSource(qemuFactory),
    createShareFs: ({ sandboxId, vmDir, sharedRoot, config }, log) => {
      const hv = config.hypervisor;
      if (hv.sharedFs === 'none') {
        throw errors.notImplemented('KATA_SHARED_FS_NONE', 'shared_fs = "none" is not supported: kata-ts needs a shared filesystem');
      }
      return createShareFs(
        hv.sharedFs,
        {
          sandboxId,
          vmDir,
          sharedRoot,
          virtioFsDaemon: hv.virtioFsDaemon,
          virtioFsCache: hv.virtioFsCache,
          virtioFsExtraArgs: hv.virtioFsExtraArgs,
          virtioFsQueueSize: hv.virtioFsQueueSize,
          msize9p: hv.msize9p,
        },
        log,
      );
    },
    resolveAccel: async (config, log) =>
      (await detectAccel(config.hypervisor.accel, { qemuPath: config.hypervisor.path, log })).accel,
  };
}

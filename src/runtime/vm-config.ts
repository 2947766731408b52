import { join } from 'node:path';
import { errors } from '../base/errors.js';
import type { Accelerator, VmConfig, VmDevice } from '../hypervisor/hypervisor.js';
import type { RuntimeConfig } from './config/types.js';

/**
 * The VM a sandbox of this configuration starts: one pure function, shared by the sandbox start and by the VM
 * factory (a template must be built from exactly the command line its clones will have).
 */
export function sandboxVmConfig(
  sandboxId: string,
  vmDir: string,
  config: RuntimeConfig,
  devices: VmDevice[],
  accel: Accelerator,
): VmConfig {
  const hv = config.hypervisor;
  if (config.agent.agentChannel === 'vsock') {
    throw errors.notImplemented('KATA_CHANNEL_UNSUPPORTED', 'agent_channel = "vsock" is not implemented (no vhost-vsock here)');
  }
  const kernelParams = [...(config.agent.enableDebug ? ['agent.log=debug'] : []), ...hv.kernelParams];
  return {
    sandboxId,
    vmDir,
    hypervisorPath: hv.path,
    kernelPath: hv.kernel,
    initrdPath: hv.initrd,
    imagePath: hv.image,
    kernelParams,
    machineType: hv.machineType,
    accel,
    vcpus: hv.defaultVcpus,
    memoryMiB: hv.defaultMemoryMiB,
    // virtio-fs needs guest RAM that virtiofsd can map.
    memoryBackend: devices.some((d) => d.kind === 'virtio-fs') ? { kind: 'memfd' } : { kind: 'anonymous' },
    agentChannel: { kind: 'virtio-serial', socketPath: join(vmDir, 'agent.sock') },
    devices,
  };
}

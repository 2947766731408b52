/**
 * The agent requests the host builds in more than one place (sandbox start, container create, the VM
 * template's warm-up), with the fields kata-ts never sets filled in once.
 */
import type { CreateContainerRequest, CreateSandboxRequest, SetGuestDateTimeRequest, Storage } from '../protocol/gen/agent.js';
import { specToProto, type OciSpec } from '../protocol/oci-spec.js';

/** A tmpfs the agent mounts at `mountPoint` (Kata's `ephemeral` storage driver). */
export function ephemeralStorage(source: string, mountPoint: string, options: string[]): Storage {
  return { driver: 'ephemeral', driverOptions: [], source, fstype: 'tmpfs', options, mountPoint, fsGroup: undefined, shared: false };
}

export function createSandboxRequest(sandboxId: string, opts: { hostname?: string; dns?: string[]; storages: Storage[] }): CreateSandboxRequest {
  return {
    hostname: opts.hostname ?? '',
    dns: opts.dns ?? [],
    storages: opts.storages,
    sandboxPidns: false,
    sandboxId,
    guestHookPath: '',
    kernelModules: [],
  };
}

/** A container whose init process is `spec.process` (the exec id is the container id, as Kata's). */
export function createContainerRequest(containerId: string, spec: OciSpec, storages: Storage[]): CreateContainerRequest {
  return {
    containerId,
    execId: containerId,
    stringUser: undefined,
    devices: [],
    storages,
    OCI: specToProto(spec),
    sandboxPidns: false,
    sharedMounts: [],
    stdinPort: 0,
    stdoutPort: 0,
    stderrPort: 0,
  };
}

/** SetGuestDateTime for the wall clock `nowMs` (milliseconds since the epoch). */
export function guestDateTimeRequest(nowMs: number): SetGuestDateTimeRequest {
  return { Sec: Math.floor(nowMs / 1000), Usec: (nowMs % 1000) * 1000 };
}

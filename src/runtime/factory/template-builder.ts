/**
 * Builds one template (Kata's `BootToBeTemplate`): boot the VM with its RAM in a shared file on the template
 * tmpfs, wait until the agent answers, disconnect, let the agent notice, pause, save the device state
 * without RAM (`x-ignore-shared`), and kill QEMU. What is left is the RAM file and the state file.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CleanupStack } from '../../base/cleanup.js';
import { errors, wrapError } from '../../base/errors.js';
import { sleep } from '../../base/deadline.js';
import type { Logger } from '../../base/logger.js';
import { AgentClient } from '../../agent-client/agent-client.js';
import { createContainerRequest, createSandboxRequest, ephemeralStorage, guestDateTimeRequest } from '../../agent-client/requests.js';
import type { HypervisorFactory, VmConfig, VmDevice } from '../../hypervisor/hypervisor.js';
import { templateNicMac, type TemplateId } from './template-key.js';
import type { TemplateMeta, TemplateStore } from './template-store.js';
import { GUEST_WARMUP_ROOTFS } from '../../protocol/guest-paths.js';
import type { OciSpec } from '../../protocol/oci-spec.js';

export interface BuildTemplateOptions {
  /** Until QEMU runs (QMP answers). */
  bootTimeoutMs: number;
  /** Until the agent answers once QEMU runs. */
  dialTimeoutMs: number;
  /**
   * After the host disconnects: time for the guest agent to see EOF on its port and drop the connection, so
   * that clones start with an idle agent (Kata sleeps 2 s here).
   */
  settleMs?: number;
  signal?: AbortSignal;
  /**
   * Run the agent calls every sandbox start makes once in the template (default true), so that clones
   * inherit their compiled code and the guest page cache they fill.
   */
  warmUp?: boolean;
}

const DEFAULT_SETTLE_MS = 1000;

/**
 * The template VM: the clone's config with the template's own backends, RAM in `<build>/memory` shared.
 * Each NIC gets the template's MAC and a tap that QEMU creates in the host netns under a fresh name and that
 * goes away with QEMU: it stays down, nothing is sent on it.
 */
export function templateBuildConfig(cloneConfig: VmConfig, buildDir: string, key: string): VmConfig {
  const vmDir = join(buildDir, 'vm');
  return {
    ...cloneConfig,
    sandboxId: `template-${key.slice(0, 12)}`,
    vmDir,
    memoryBackend: { kind: 'file', path: join(buildDir, 'memory'), share: true },
    agentChannel: { kind: 'virtio-serial', socketPath: join(vmDir, 'agent.sock') },
    devices: cloneConfig.devices.map((d): VmDevice => {
      if (d.kind === '9p') return { ...d, hostPath: join(buildDir, 'share') };
      if (d.kind === 'net-tap') return { kind: 'net-tap', id: d.id, ifname: templateTapName(), mac: templateNicMac(d.id) };
      return d;
    }),
    incomingStatePath: undefined,
    netnsPath: undefined,
  };
}

/** `ktt` + 10 hex digits (13 of the 15 characters a link name may have). */
export const TEMPLATE_TAP_RE = /^ktt[0-9a-f]{10}$/;
const templateTapName = (): string => `ktt${randomBytes(5).toString('hex')}`;

/**
 * Builds the template for `key` into a new build dir of `store` and publishes it. The caller holds the
 * store's lock and has called `store.prepare()`.
 */
export async function buildTemplate(
  store: TemplateStore,
  id: TemplateId,
  cloneConfig: VmConfig,
  hypervisors: HypervisorFactory,
  opts: BuildTemplateOptions,
  parentLog: Logger,
): Promise<TemplateMeta> {
  const { key, family, inputs } = id;
  const log = parentLog.child({ subsystem: 'vm-template', key: key.slice(0, 16) });
  const t0 = performance.now();
  const buildDir = await store.newBuildDir();
  const undo = new CleanupStack(log);
  undo.push('remove build dir', () => rm(buildDir, { recursive: true, force: true }));
  try {
    const config = templateBuildConfig(cloneConfig, buildDir, key);
    for (const d of config.devices) if (d.kind === '9p') await mkdir(d.hostPath, { recursive: true, mode: 0o700 });
    // The RAM file at its full size up front (sparse): QEMU would create it too, but then a tmpfs too small
    // for it would only show as SIGBUS in the guest later.
    const fh = await open(join(buildDir, 'memory'), 'wx', 0o600);
    await fh.truncate(config.memoryMiB * 1024 * 1024);
    await fh.close();

    const hv = hypervisors.create(config, log);
    undo.push('remove template VM', () => hv.cleanup());
    await hv.start({ timeoutMs: opts.bootTimeoutMs, signal: opts.signal });
    const vmGone = new AbortController();
    let exitInfo = '';
    void hv.wait().then((e) => {
      exitInfo = e.signal ? `signal ${e.signal}` : `exit code ${e.code}`;
      vmGone.abort();
    });
    const onAbort = () => vmGone.abort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const agent = await AgentClient.dial((config.agentChannel as { socketPath: string }).socketPath, {
        dialTimeoutMs: opts.dialTimeoutMs,
        signal: vmGone.signal,
        log,
      });
      try {
        if (opts.warmUp ?? true) await warmUp(agent);
      } finally {
        agent.close();
      }
    } catch (err) {
      const tail = (await hv.consoleTail(15).catch(() => [] as string[])).join('\n');
      // The VM exiting cancels the dial: that is the template VM failing, not the caller cancelling.
      if (exitInfo && !opts.signal?.aborted) {
        throw errors.unavailable('KATA_VM_DIED', `template VM exited during boot (${exitInfo}); last guest console lines:\n${tail}`, err);
      }
      throw wrapError(`template VM agent (last guest console lines:\n${tail})`, err);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    await sleep(opts.settleMs ?? DEFAULT_SETTLE_MS, opts.signal);
    await hv.pause();
    await hv.saveState(join(buildDir, 'state'));
    await hv.kill();
    await hv.cleanup();
    await rm(join(buildDir, 'share'), { recursive: true, force: true });

    const meta = await store.publish(buildDir, {
      key,
      family,
      inputs,
      memoryMiB: config.memoryMiB,
      createdAt: new Date().toISOString(),
      buildMs: Math.round(performance.now() - t0),
      qemuVersion: await qemuVersion(config.hypervisorPath),
    });
    log.info({ buildMs: meta.buildMs, memoryMiB: meta.memoryMiB }, 'template built');
    return meta;
  } catch (err) {
    await undo.run();
    throw wrapError('build template', err);
  }
}

/** A container as the shim creates them (namespaces, the usual mounts), running `sh -c true`. */
function warmUpSpec(): OciSpec {
  return {
    ociVersion: '1.0.2',
    process: { terminal: false, user: { uid: 0, gid: 0 }, args: ['/bin/sh', '-c', 'true'], env: ['PATH=/bin'], cwd: '/', noNewPrivileges: true },
    root: { path: GUEST_WARMUP_ROOTFS, readonly: true },
    hostname: 'warmup',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'size=1m'] },
    ],
    linux: { namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }] },
  };
}

/**
 * The calls of a sandbox start and of a first container, once, in the template: the guest agent's code for
 * them is compiled (V8 compiles functions on first call, which costs ~0.1 s per call under TCG) and crun,
 * its libraries and busybox are in the guest page cache of every clone. Everything is undone again, leaving
 * the agent as it was (no sandbox, nothing mounted: the 9p share stays unmounted, hence migratable).
 */
async function warmUp(agent: AgentClient): Promise<void> {
  await agent.call('ReseedRandomDev', { data: randomBytes(64) });
  await agent.call('SetGuestDateTime', guestDateTimeRequest(Date.now()));
  await agent.call(
    'CreateSandbox',
    createSandboxRequest('template-warmup', { storages: [ephemeralStorage('tmpfs', '/run/kata-containers/template-warmup', ['size=1m'])] }),
  );
  const id = 'template-warmup';
  await agent.call('CreateContainer', createContainerRequest(id, warmUpSpec(), []));
  await agent.call('StartContainer', { containerId: id });
  const exit = await agent.call('WaitProcess', { containerId: id, execId: id });
  if (exit.status !== 0) throw errors.internal('KATA_TEMPLATE_WARMUP', `the template's warm-up container exited ${exit.status}`);
  await agent.call('RemoveContainer', { containerId: id, timeout: 30 });
  await agent.call('DestroySandbox', {});
}

/** `qemu-system-x86_64 --version`, first line (for status output). */
async function qemuVersion(binary: string): Promise<string> {
  try {
    const { stdout } = await promisify(execFile)(binary, ['--version'], { timeout: 10_000 });
    return stdout.split('\n')[0]!.trim();
  } catch (err) {
    return `unknown (${(err as Error).message})`;
  }
}

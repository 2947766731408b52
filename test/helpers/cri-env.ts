import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as cri from '../../src/protocol/gen/cri/api.js';
import { TestContainerd } from './containerd.js';
import { CriClient, criMessage, type CallOptions } from './cri-client.js';

const run = promisify(execFile);

/**
 * A private containerd 1.6 with its CRI plugin, ready for kubelet-like tests: its own root/state/sockets, a CNI
 * bridge network of its own (bridge, private /24 and IPAM state used by nothing else), the local test images
 * imported into namespace `k8s.io`, runc as the default handler and an optional `kata` handler.
 *
 *   const env = await CriEnv.start({ kata: { configPath } });
 *   const pod = await env.runPod({ handler: 'kata' });
 *   const id = await pod.runContainer({ name: 'c', command: ['sleep', '1000'] });
 *   ...
 *   await env.stop();   // removes every pod, containerd, its dirs, the bridge, netns and CNI state
 *
 * Network safety: the bridge is created here with the gateway address (.1) of a /24 that no host interface or
 * route uses; pods get addresses in it and no default route, the bridge plugin runs with isGateway=false and
 * ipMasq=false, so the host's ip_forward, iptables and routes stay untouched and pods can reach nothing but the
 * bridge. Tests talk only to pod addresses on that bridge.
 */

export const IMAGES = {
  busybox: 'docker.io/library/busybox:kata-ts',
  pause: 'registry.k8s.io/pause:kata-ts',
  nginx: 'docker.io/library/nginx:kata-ts',
} as const;
export type TestImage = keyof typeof IMAGES;

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const IMAGE_DIR = '/var/cache/kata-ts/images';
const CNI_BIN_DIR = '/usr/lib/cni';
const CNI_RESULTS_DIR = '/var/lib/cni/results';
const CRI_PLUGIN = 'plugins."io.containerd.grpc.v1.cri"';

export interface KataHandlerOptions {
  /** `options.ConfigPath` of the handler: the shim receives it as runtimeoptions.v1.Options on stdin. */
  configPath?: string;
  /** `runtime_path`: an absolute path to the shim binary (default: containerd-shim-kata-v2 from PATH). */
  runtimePath?: string;
  /** `pod_annotations` / `container_annotations` glob lists passed through to the OCI specs. */
  podAnnotations?: string[];
  containerAnnotations?: string[];
}

export interface CriEnvOptions {
  /** Adds the runtime handler `kata` (runtime_type io.containerd.kata.v2). runc stays the default handler. */
  kata?: KataHandlerOptions;
  /** Images to import into k8s.io (pause is always imported: it is the sandbox image). Default busybox. */
  images?: TestImage[];
  /** Raw TOML appended to the containerd config. */
  extraConfig?: string;
  /** containerd log level (default "info"); its stderr is kept in `env.containerd.logText()`. */
  logLevel?: string;
  /** Default CRI call deadline. */
  defaultTimeoutMs?: number;
}

export interface PodOptions {
  name?: string;
  namespace?: string;
  uid?: string;
  /** The CRI runtime handler ("" = default runc; "kata"). */
  handler?: string;
  hostname?: string;
  dns?: { servers?: string[]; searches?: string[]; options?: string[] };
  /**
   * PodSandboxConfig.linux.resources. containerd turns it into the sandbox sizing annotations. Default: 1 CPU
   * (period 100000, quota 100000, shares 1024) and 256 MiB; pass `null` to leave it unset.
   */
  resources?: Partial<cri.LinuxContainerResources> | null;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** Overrides of the sandbox security context (default: kubelet's namespaces, network/ipc POD, pid CONTAINER). */
  securityContext?: Partial<cri.LinuxSandboxSecurityContext>;
  sysctls?: Record<string, string>;
  /** Deadline of RunPodSandbox (VM handlers need longer than runc). */
  timeoutMs?: number;
}

export interface ContainerOptions {
  name: string;
  /** One of the test images or any reference already in k8s.io; default busybox. */
  image?: TestImage | string;
  command?: string[];
  args?: string[];
  env?: Record<string, string>;
  workingDir?: string;
  mounts?: cri.Mount[];
  resources?: Partial<cri.LinuxContainerResources>;
  securityContext?: Partial<cri.LinuxContainerSecurityContext>;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  tty?: boolean;
  stdin?: boolean;
}

/** What CRI pods can leave on the host; `CriEnv.hostSnapshot()` and `leakedSince()` compare it. */
export interface CriHostSnapshot {
  /** Names in /var/run/netns of this env's sandboxes. */
  netns: string[];
  /** Host ends of pod veths: the ports of this env's bridge. */
  veths: string[];
  /** containerd shims serving this env's containerd. */
  shims: string[];
  /** Mount points under this env's containerd dir, and the netns mounts of its sandboxes. */
  mounts: string[];
  /** CNI result cache entries and IPAM allocations of this env's network. */
  cniState: string[];
}

let envCounter = 0;

export class CriEnv {
  readonly client: CriClient;
  /** netns paths seen on this env's sandboxes: removed by `stop()` if containerd left them behind. */
  private readonly netnsPaths = new Set<string>();
  private stopped = false;
  /** How long each start step took (network, containerd, criReady, images), in ms. */
  readonly startupMs: Record<string, number> = {};

  private constructor(
    readonly containerd: TestContainerd,
    readonly network: CriNetwork,
    readonly cgroupParent: string,
    defaultTimeoutMs: number,
  ) {
    this.client = new CriClient(containerd.address, { defaultTimeoutMs });
  }

  get dir(): string {
    return this.containerd.dir;
  }

  static async start(opts: CriEnvOptions = {}): Promise<CriEnv> {
    const envId = `${process.pid.toString(36)}${(envCounter++).toString(36)}`;
    const timings: Record<string, number> = {};
    let t = performance.now();
    const lap = (what: string) => {
      const now = performance.now();
      timings[what] = Math.round(now - t);
      t = now;
    };
    // The bridge, CNI config and IPAM state exist before containerd reads its config.
    const network = await CriNetwork.create(envId);
    lap('network');
    let containerd: TestContainerd | undefined;
    let env: CriEnv | undefined;
    try {
      containerd = await TestContainerd.start({ cri: true, extraConfig: criConfig(network.confPath, opts) });
      lap('containerd');
      env = new CriEnv(containerd, network, `/kata-ts-cri-${envId}`, opts.defaultTimeoutMs ?? 60_000);
      await env.client.waitReady();
      lap('criReady');
      await env.importImages([...new Set<TestImage>(['pause', ...(opts.images ?? ['busybox'])])]);
      lap('images');
      Object.assign(env.startupMs, timings);
      return env;
    } catch (err) {
      env?.client.close();
      if (containerd) await containerd.stop().catch(() => undefined);
      await network.destroy();
      throw err;
    }
  }

  /** Imports the test images into namespace k8s.io (images/import.sh builds them first when needed). */
  async importImages(images: TestImage[]): Promise<void> {
    const script = join(REPO, 'images/import.sh');
    const args = ['--namespace', 'k8s.io', '--address', this.containerd.address, '--only', images.join(',')];
    // Built tarballs are used as they are (build.sh checks its package inputs, which can take a while under load).
    if (images.every((i) => existsSync(join(IMAGE_DIR, `${i}.tar`)))) args.push('--no-build');
    try {
      await run(script, args, {
        maxBuffer: 16 << 20,
        timeout: 900_000,
      });
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`import images ${images.join(',')}: ${e.stderr || e.message}`, { cause: err });
    }
    // The CRI plugin learns about images from containerd events: wait until it sees them.
    for (const name of images) {
      const until = Date.now() + 20_000;
      for (;;) {
        const st = await this.client.imageStatus({ image: criMessage(cri.ImageSpec, { image: IMAGES[name] }) });
        if (st.image) break;
        if (Date.now() > until) throw new Error(`CRI does not see image ${IMAGES[name]}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** A complete PodSandboxConfig for `opts` (what `runPod` sends). */
  podConfig(opts: PodOptions = {}): cri.PodSandboxConfig {
    const name = opts.name ?? `pod-${Math.random().toString(36).slice(2, 8)}`;
    const uid = opts.uid ?? `uid-${name}-${Date.now().toString(36)}`;
    const namespace = opts.namespace ?? 'kata-ts';
    const resources =
      opts.resources === null
        ? undefined
        : criMessage(cri.LinuxContainerResources, {
            cpuPeriod: 100_000,
            cpuQuota: 100_000,
            cpuShares: 1024,
            memoryLimitInBytes: 256 << 20,
            ...opts.resources,
          });
    return criMessage(cri.PodSandboxConfig, {
      metadata: criMessage(cri.PodSandboxMetadata, { name, uid, namespace, attempt: 0 }),
      hostname: opts.hostname ?? name,
      logDirectory: join(this.dir, 'pods', `${namespace}_${name}_${uid}`),
      dnsConfig: criMessage(cri.DNSConfig, {
        servers: opts.dns?.servers ?? [this.network.gateway],
        searches: opts.dns?.searches ?? [],
        options: opts.dns?.options ?? [],
      }),
      labels: { 'kata-ts.test/env': this.network.name, ...opts.labels },
      annotations: opts.annotations ?? {},
      linux: criMessage(cri.LinuxPodSandboxConfig, {
        cgroupParent: `${this.cgroupParent}/pod${uid}`,
        securityContext: criMessage(cri.LinuxSandboxSecurityContext, {
          namespaceOptions: kubeletNamespaces(),
          ...opts.securityContext,
        }),
        sysctls: opts.sysctls ?? {},
        resources,
      }),
    });
  }

  /** RunPodSandbox; the returned pod knows its config, so containers can be created in it. */
  async runPod(opts: PodOptions = {}): Promise<CriPod> {
    const config = this.podConfig(opts);
    await mkdir(config.logDirectory, { recursive: true });
    const handler = opts.handler ?? '';
    const res = await this.client.runPodSandbox(
      { config, runtimeHandler: handler },
      { timeoutMs: opts.timeoutMs ?? (handler ? 180_000 : 60_000) },
    );
    const pod = new CriPod(this, res.podSandboxId, config, handler);
    const ns = await pod.netnsPath().catch(() => undefined);
    if (ns) this.netnsPaths.add(ns);
    return pod;
  }

  /**
   * The host objects this env's pods hold or left behind. Everything is attributed to this env, so other tests
   * running at the same time do not show up: netns of its sandboxes (recorded by `runPod` and by every snapshot
   * for sandboxes CRI knows), ports of its bridge, shims serving its containerd, mounts under its dirs or on its
   * netns, and its network's CNI cache and IPAM entries.
   */
  async hostSnapshot(): Promise<CriHostSnapshot> {
    if (!this.stopped) await this.trackSandboxNetns().catch(() => undefined);
    return this.localSnapshot();
  }

  private localSnapshot(): CriHostSnapshot {
    const nsPaths = [...this.netnsPaths].filter((p) => existsSync(p));
    const nsReal = nsPaths.map((p) => p.replace(/^\/var\/run\//, '/run/'));
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => unescapeMount(l.split(' ')[4] ?? ''))
      .filter((m) => m.startsWith(`${this.dir}/`) || nsPaths.includes(m) || nsReal.includes(m))
      .sort();
    return {
      netns: nsPaths.map((p) => basename(p)).sort(),
      veths: this.network.ports(),
      shims: listShims(this.containerd.address).map((s) => s.args),
      mounts,
      cniState: this.network.stateEntries(),
    };
  }

  /** Records the netns path of every sandbox CRI knows now. */
  private async trackSandboxNetns(): Promise<void> {
    const list = await this.client.listPodSandbox({}, { timeoutMs: 10_000 });
    for (const p of list.items) {
      const st = await this.client.podSandboxStatus({ podSandboxId: p.id, verbose: true }, { timeoutMs: 10_000 });
      const ns = netnsFromInfo(st.info);
      if (ns) this.netnsPaths.add(ns);
    }
  }

  /** What is in the snapshot now but not in `before` (waits up to `waitMs` for shims and links to go away). */
  async leakedSince(before: CriHostSnapshot, waitMs = 5000): Promise<CriHostSnapshot> {
    const diff = async (): Promise<CriHostSnapshot> => {
      const now = await this.hostSnapshot();
      const pick = (a: string[], b: string[]) => b.filter((x) => !a.includes(x));
      return {
        netns: pick(before.netns, now.netns),
        veths: pick(before.veths, now.veths),
        shims: pick(before.shims, now.shims),
        mounts: pick(before.mounts, now.mounts),
        cniState: pick(before.cniState, now.cniState),
      };
    };
    const until = Date.now() + waitMs;
    let d = await diff();
    while (Date.now() < until && Object.values(d).some((v) => v.length > 0)) {
      await new Promise((r) => setTimeout(r, 100));
      d = await diff();
    }
    return d;
  }

  /**
   * StopPodSandbox + RemovePodSandbox of every sandbox CRI knows (their containers go with them), as a kubelet
   * does for pods it no longer wants. For test cleanup between cases; returns what failed instead of throwing.
   */
  async removeAllPods(): Promise<string[]> {
    const errors: string[] = [];
    const list = await this.client.listPodSandbox({}, { timeoutMs: 10_000 });
    for (const p of list.items) {
      try {
        const st = await this.client.podSandboxStatus({ podSandboxId: p.id, verbose: true }, { timeoutMs: 10_000 });
        const ns = netnsFromInfo(st.info);
        if (ns) this.netnsPaths.add(ns);
        await this.client.stopPodSandbox({ podSandboxId: p.id }, { timeoutMs: 60_000 });
        await this.client.removePodSandbox({ podSandboxId: p.id }, { timeoutMs: 60_000 });
      } catch (err) {
        errors.push(`pod ${p.id}: ${(err as Error).message}`);
      }
    }
    return errors;
  }

  /**
   * Removes everything: pods still known to CRI (stop + remove), then containerd and its dirs, leftover shims of
   * this containerd, pod netns, mounts, the bridge, CNI state and the cgroup parent. Safe to call twice.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const errors = await this.removeAllPods().catch((err: Error) => [`remove pods: ${err.message}`]);
    this.client.close();
    await this.containerd.stopDaemon();
    // Shims outlive containerd on purpose; these ones belong to this env and nothing else.
    for (const shim of listShims(this.containerd.address)) {
      try {
        process.kill(shim.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const m of this.localSnapshot().mounts.reverse()) {
      if (m.startsWith(`${this.dir}/`)) await run('umount', ['-l', m]).catch(() => undefined);
    }
    for (const ns of this.netnsPaths) {
      if (!existsSync(ns)) continue;
      await run('umount', [ns]).catch(() => undefined);
      rmSync(ns, { force: true });
    }
    await this.containerd.stop().catch((err: Error) => errors.push(`containerd dir: ${err.message}`));
    await this.network.destroy();
    removeCgroupTree(this.cgroupParent);
    // The runc shim makes these on first use; drop them when no other user is left (rmdir fails otherwise).
    for (const d of ['/run/containerd/runc/k8s.io', '/run/containerd/runc']) {
      try {
        rmdirSync(d);
      } catch {
        // in use or absent
      }
    }
    if (errors.length > 0 && process.env.KATA_TS_CRI_DEBUG) process.stderr.write(`cri-env stop: ${errors.join('; ')}\n`);
  }
}

/** A pod sandbox run by `CriEnv.runPod`. */
export class CriPod {
  constructor(
    readonly env: CriEnv,
    readonly id: string,
    readonly config: cri.PodSandboxConfig,
    readonly handler: string,
  ) {}

  get client(): CriClient {
    return this.env.client;
  }

  async status(verbose = false): Promise<cri.PodSandboxStatusResponse> {
    return this.client.podSandboxStatus({ podSandboxId: this.id, verbose });
  }

  /** The containerd verbose info of the sandbox (pid, runtimeSpec, netNamespacePath, ...), parsed. */
  async info(): Promise<SandboxInfo> {
    const st = await this.status(true);
    return JSON.parse(st.info.info ?? '{}') as SandboxInfo;
  }

  async ip(): Promise<string> {
    const st = await this.status();
    const ip = st.status?.network?.ip;
    if (!ip) throw new Error(`pod ${this.id} has no IP`);
    return ip;
  }

  async netnsPath(): Promise<string | undefined> {
    const st = await this.status(true);
    return netnsFromInfo(st.info);
  }

  /** A complete ContainerConfig for `opts` (what `createContainer` sends). */
  containerConfig(opts: ContainerOptions): cri.ContainerConfig {
    const image = opts.image ?? 'busybox';
    const ref = image in IMAGES ? IMAGES[image as TestImage] : image;
    return criMessage(cri.ContainerConfig, {
      metadata: criMessage(cri.ContainerMetadata, { name: opts.name, attempt: 0 }),
      image: criMessage(cri.ImageSpec, { image: ref }),
      command: opts.command ?? [],
      args: opts.args ?? [],
      workingDir: opts.workingDir ?? '',
      envs: Object.entries(opts.env ?? {}).map(([key, value]) => criMessage(cri.KeyValue, { key, value })),
      mounts: opts.mounts ?? [],
      labels: opts.labels ?? {},
      annotations: opts.annotations ?? {},
      logPath: `${opts.name}.log`,
      tty: opts.tty ?? false,
      stdin: opts.stdin ?? false,
      linux: criMessage(cri.LinuxContainerConfig, {
        resources: opts.resources ? criMessage(cri.LinuxContainerResources, opts.resources) : undefined,
        securityContext: criMessage(cri.LinuxContainerSecurityContext, {
          namespaceOptions: kubeletNamespaces(),
          ...opts.securityContext,
        }),
      }),
    });
  }

  async createContainer(opts: ContainerOptions, call?: CallOptions): Promise<string> {
    const res = await this.client.createContainer(
      { podSandboxId: this.id, config: this.containerConfig(opts), sandboxConfig: this.config },
      call,
    );
    return res.containerId;
  }

  /** CreateContainer + StartContainer. */
  async runContainer(opts: ContainerOptions, call?: CallOptions): Promise<string> {
    const id = await this.createContainer(opts, call);
    await this.client.startContainer({ containerId: id }, call);
    return id;
  }

  /** Host path of a container's CRI log (`<log_directory>/<name>.log`). */
  logPath(name: string): string {
    return join(this.config.logDirectory, `${name}.log`);
  }

  /** Polls ContainerStatus until `state` (e.g. CONTAINER_EXITED). */
  async waitContainerState(containerId: string, state: cri.ContainerState, timeoutMs = 30_000): Promise<cri.ContainerStatus> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const st = await this.client.containerStatus({ containerId });
      if (st.status?.state === state) return st.status;
      if (Date.now() > until) throw new Error(`container ${containerId}: state ${st.status?.state}, wanted ${state}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** StopPodSandbox + RemovePodSandbox (which also stops and removes the pod's containers). */
  async remove(): Promise<void> {
    await this.client.stopPodSandbox({ podSandboxId: this.id }, { timeoutMs: 60_000 });
    await this.client.removePodSandbox({ podSandboxId: this.id }, { timeoutMs: 60_000 });
  }
}

/** The parts of containerd 1.6's verbose sandbox info a test reads. */
export interface SandboxInfo {
  pid?: number;
  processStatus?: string;
  netNamespaceClosed?: boolean;
  runtimeHandler?: string;
  runtimeType?: string;
  runtimeOptions?: unknown;
  config?: unknown;
  runtimeSpec?: {
    hostname?: string;
    annotations?: Record<string, string>;
    linux?: { cgroupsPath?: string; namespaces?: { type: string; path?: string }[] };
  };
}

/** What kubelet sends for a pod without hostNetwork/hostPID/hostIPC/shareProcessNamespace. */
function kubeletNamespaces(): cri.NamespaceOption {
  return criMessage(cri.NamespaceOption, {
    network: cri.NamespaceMode.POD,
    pid: cri.NamespaceMode.CONTAINER,
    ipc: cri.NamespaceMode.POD,
  });
}

function netnsFromInfo(info: Record<string, string>): string | undefined {
  try {
    const parsed = JSON.parse(info.info ?? '{}') as SandboxInfo;
    return parsed.runtimeSpec?.linux?.namespaces?.find((n) => n.type === 'network')?.path || undefined;
  } catch {
    return undefined;
  }
}

/** The bridge, subnet, CNI config and IPAM state of one env. */
export class CriNetwork {
  private constructor(
    readonly name: string,
    readonly bridge: string,
    /** e.g. 10.233.17.0/24 */
    readonly subnet: string,
    /** The bridge's address (.1), also the pods' DNS server address by default (nothing answers there). */
    readonly gateway: string,
    /** Holds net.d/ (the conflist containerd reads) and ipam/ (host-local's state). */
    readonly confDir: string,
  ) {}

  /** Picks an unused 10.233.X.0/24, creates the bridge holding its .1 address and writes the conflist. */
  static async create(envId: string): Promise<CriNetwork> {
    const name = `kata-ts-cri-${envId}`;
    const bridge = `kts${envId}`.slice(0, 15);
    const confDir = join('/tmp', `kata-ts-cni-${envId}`);
    rmSync(confDir, { recursive: true, force: true });
    await mkdir(join(confDir, 'net.d'), { recursive: true });
    await mkdir(join(confDir, 'ipam'), { recursive: true });
    const used = usedIpv4Prefixes();
    const start = process.pid % 250;
    for (let i = 0; i < 250; i++) {
      const x = ((start + i) % 250) + 1;
      const base = ipv4ToInt(`10.233.${x}.0`);
      if (used.some((u) => overlaps(u, { base, bits: 24 }))) continue;
      const prefix = `10.233.${x}.`;
      const net = new CriNetwork(name, bridge, `${prefix}0/24`, `${prefix}1`, confDir);
      try {
        await net.createBridge();
        await net.writeConfig();
      } catch (err) {
        await net.destroy();
        throw err;
      }
      return net;
    }
    rmSync(confDir, { recursive: true, force: true });
    throw new Error('no free 10.233.X.0/24 subnet for the CNI bridge');
  }

  get confPath(): string {
    return join(this.confDir, 'net.d');
  }

  private async createBridge(): Promise<void> {
    await run('ip', ['link', 'add', 'name', this.bridge, 'type', 'bridge']);
    try {
      // No IPv6 on the bridge: no router solicitations or DAD traffic from it.
      await writeFile(`/proc/sys/net/ipv6/conf/${this.bridge}/disable_ipv6`, '1').catch(() => undefined);
      await run('ip', ['addr', 'add', `${this.gateway}/24`, 'dev', this.bridge]);
      await run('ip', ['link', 'set', this.bridge, 'up']);
    } catch (err) {
      await run('ip', ['link', 'del', this.bridge]).catch(() => undefined);
      throw err;
    }
  }

  private async writeConfig(): Promise<void> {
    const prefix = this.gateway.slice(0, this.gateway.lastIndexOf('.') + 1);
    const conflist = {
      cniVersion: '0.4.0',
      name: this.name,
      plugins: [
        {
          type: 'bridge',
          bridge: this.bridge,
          // The bridge already holds the gateway address; isGateway would also turn on the host's ip_forward.
          isGateway: false,
          ipMasq: false,
          hairpinMode: false,
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet: this.subnet, rangeStart: `${prefix}2`, rangeEnd: `${prefix}254`, gateway: this.gateway }]],
            dataDir: join(this.confDir, 'ipam'),
          },
        },
      ],
    };
    await writeFile(join(this.confPath, '10-kata-ts.conflist'), JSON.stringify(conflist, null, 2));
  }

  /** CNI result cache files for this network and the IPAM addresses it holds. */
  stateEntries(): string[] {
    const results = safeList(CNI_RESULTS_DIR)
      .filter((f) => f.startsWith(`${this.name}-`))
      .map((f) => join(CNI_RESULTS_DIR, f));
    const ipamDir = join(this.confDir, 'ipam', this.name);
    const ips = safeList(ipamDir)
      .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
      .map((f) => join(ipamDir, f));
    return [...results, ...ips].sort();
  }

  /** Interfaces attached to the bridge (the host ends of pod veths), sorted. */
  ports(): string[] {
    try {
      return execFileSync('ip', ['-o', 'link', 'show', 'master', this.bridge], { encoding: 'utf8', stdio: 'pipe' })
        .split('\n')
        .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
        .filter((n): n is string => !!n)
        .sort();
    } catch {
      return []; // no bridge
    }
  }

  /** Deletes pod veths still on the bridge, the bridge, the CNI dir and this network's CNI cache entries. */
  async destroy(): Promise<void> {
    for (const p of this.ports()) await run('ip', ['link', 'del', p]).catch(() => undefined);
    await run('ip', ['link', 'del', this.bridge]).catch(() => undefined);
    for (const f of safeList(CNI_RESULTS_DIR)) {
      if (f.startsWith(`${this.name}-`)) rmSync(join(CNI_RESULTS_DIR, f), { force: true });
    }
    // Remove the shared cache dirs only if this env made them the last user (rmdir fails when not empty).
    for (const d of [CNI_RESULTS_DIR, '/var/lib/cni']) {
      try {
        rmdirSync(d);
      } catch {
        // not empty or absent
      }
    }
    rmSync(this.confDir, { recursive: true, force: true });
  }
}

function criConfig(cniConfDir: string, opts: CriEnvOptions): string {
  const rt = `${CRI_PLUGIN}.containerd.runtimes`;
  const lines = [
    ...(opts.logLevel ? ['[debug]', `  level = "${opts.logLevel}"`] : []),
    `[${CRI_PLUGIN}]`,
    `  sandbox_image = "${IMAGES.pause}"`,
    '  restrict_oom_score_adj = true',
    // A random port: the default 10010 would collide between envs (exec/attach streaming is not used here).
    '  stream_server_address = "127.0.0.1"',
    '  stream_server_port = "0"',
    `[${CRI_PLUGIN}.containerd]`,
    '  default_runtime_name = "runc"',
    '  snapshotter = "overlayfs"',
    `[${rt}.runc]`,
    '  runtime_type = "io.containerd.runc.v2"',
  ];
  if (opts.kata) {
    const k = opts.kata;
    lines.push(`[${rt}.kata]`, '  runtime_type = "io.containerd.kata.v2"');
    if (k.runtimePath) lines.push(`  runtime_path = ${JSON.stringify(k.runtimePath)}`);
    if (k.podAnnotations) lines.push(`  pod_annotations = ${JSON.stringify(k.podAnnotations)}`);
    if (k.containerAnnotations) lines.push(`  container_annotations = ${JSON.stringify(k.containerAnnotations)}`);
    // go-toml matches the Go field name (ConfigPath), not config_path: REFERENCE.md part B 6.1.
    if (k.configPath) lines.push(`[${rt}.kata.options]`, `  ConfigPath = ${JSON.stringify(k.configPath)}`);
  }
  lines.push(
    `[${CRI_PLUGIN}.cni]`,
    `  bin_dir = "${CNI_BIN_DIR}"`,
    `  conf_dir = "${cniConfDir}"`,
    '  max_conf_num = 1',
    opts.extraConfig ?? '',
  );
  return lines.join('\n');
}

/** containerd shims (any runtime) started by the containerd listening on `address`; `args` is the command line. */
function listShims(address: string): { pid: number; args: string }[] {
  const out: { pid: number; args: string }[] = [];
  for (const e of safeList('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let args: string;
    try {
      args = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').join(' ').trim();
    } catch {
      continue;
    }
    // The socket path is this env's alone, so any process given `-address <it>` is one of its shims, whatever runs
    // it (a Go binary, or `node .../containerd-shim-kata-v2`).
    const argv = args.split(' ');
    const i = argv.indexOf('-address');
    if (i >= 0 && argv[i + 1] === address) out.push({ pid: Number(e), args });
  }
  return out;
}

function removeCgroupTree(parent: string): void {
  const roots = safeList('/sys/fs/cgroup').map((h) => join('/sys/fs/cgroup', h));
  roots.push('/sys/fs/cgroup');
  for (const root of roots) {
    const top = join(root, parent);
    if (!existsSync(top)) continue;
    const dirs: string[] = [];
    const walk = (d: string) => {
      dirs.push(d);
      for (const e of safeList(d)) {
        const p = join(d, e);
        try {
          if (statSync(p).isDirectory()) walk(p);
        } catch {
          // raced with removal
        }
      }
    };
    walk(top);
    for (const d of dirs.reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // still in use (a leak the test reports) or already gone
      }
    }
  }
}

interface Ipv4Prefix {
  base: number;
  bits: number;
}

/** Every IPv4 address and route prefix the host knows (except default routes): a pod subnet must avoid them all. */
function usedIpv4Prefixes(): Ipv4Prefix[] {
  const text =
    execFileSync('ip', ['-4', '-o', 'addr', 'show'], { encoding: 'utf8' }) +
    execFileSync('ip', ['-4', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
  const out: Ipv4Prefix[] = [];
  for (const m of text.matchAll(/\b(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?\b/g)) {
    const bits = m[2] === undefined ? 32 : Number(m[2]);
    if (bits === 0) continue;
    out.push({ base: ipv4ToInt(m[1]!), bits });
  }
  return out;
}

function ipv4ToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

function overlaps(a: Ipv4Prefix, b: Ipv4Prefix): boolean {
  const bits = Math.min(a.bits, b.bits);
  const size = 2 ** (32 - bits);
  return Math.floor(a.base / size) === Math.floor(b.base / size);
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** mountinfo escapes spaces and tabs as octal. */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

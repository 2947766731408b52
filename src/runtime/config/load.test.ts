import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KataError } from '../../base/errors.js';
import {
  defaultAgentConfig,
  defaultFactoryConfig,
  defaultHypervisorConfig,
  defaultRuntimeOptions,
} from './defaults.js';
import { defaultConfigPaths, findConfigFile, loadConfig, parseConfig } from './load.js';
import type { RuntimeConfig } from './types.js';

const HOST = { cpus: 4, memoryMiB: 8192 };
const FILE = '/etc/kata-test/configuration.toml';
const SHIPPED = fileURLToPath(new URL('../../../../config/configuration-qemu.toml', import.meta.url));

function parse(text: string): RuntimeConfig {
  return parseConfig(text, FILE, { host: HOST });
}

/** A file with just the required section plus `body` in it. */
function qemu(body: string): string {
  return `[hypervisor.qemu]\n${body}\n`;
}

/** Asserts that parsing fails with InvalidArgument / KATA_CONFIG_INVALID and a message naming the file. */
function assertInvalid(text: string, message: RegExp | string): KataError {
  let caught: unknown;
  try {
    parse(text);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof KataError, `expected a KataError for:\n${text}`);
  assert.equal(caught.kind, 'InvalidArgument');
  assert.equal(caught.code, 'KATA_CONFIG_INVALID');
  assert.ok(caught.message.startsWith(FILE), `message should name the file: ${caught.message}`);
  if (typeof message === 'string') assert.equal(caught.message, message);
  else assert.match(caught.message, message);
  return caught;
}

describe('parseConfig: defaults', () => {
  it('fills every field from the defaults when only [hypervisor.qemu] is present', () => {
    const c = parse('[hypervisor.qemu]\n');
    assert.equal(c.sourcePath, FILE);
    assert.deepEqual(c.hypervisor, {
      ...defaultHypervisorConfig(),
      defaultMaxVcpus: HOST.cpus,
      defaultMaxMemoryMiB: HOST.memoryMiB,
    });
    assert.deepEqual(c.agent, defaultAgentConfig());
    assert.deepEqual(c.runtime, defaultRuntimeOptions());
    assert.deepEqual(c.factory, defaultFactoryConfig());
    assert.deepEqual(c.ignoredKeys, []);
  });

  it('uses the machine-specific choices and Kata defaults elsewhere', () => {
    const h = parse('[hypervisor.qemu]\n').hypervisor;
    assert.equal(h.hypervisorKind, 'qemu');
    assert.equal(h.path, '/usr/bin/qemu-system-x86_64');
    assert.equal(h.kernel, '/usr/share/kata-containers/vmlinux.container');
    assert.equal(h.image, '/usr/share/kata-containers/kata-containers.img');
    assert.equal(h.initrd, '/usr/share/kata-containers/kata-containers-initrd.img');
    assert.equal(h.machineType, 'microvm');
    assert.equal(h.accel, 'auto');
    assert.equal(h.defaultVcpus, 1);
    assert.equal(h.defaultMemoryMiB, 512);
    assert.equal(h.memorySlots, 10);
    assert.equal(h.sharedFs, 'virtio-fs');
    assert.equal(h.virtioFsDaemon, '/usr/lib/qemu/virtiofsd');
    assert.ok(h.validVirtioFsDaemonPaths.includes('/usr/lib/qemu/virtiofsd'));
    assert.equal(h.virtioFsCache, 'always');
    assert.equal(h.virtioFsQueueSize, 1024);
    assert.equal(h.msize9p, 8192);
    assert.deepEqual(h.enableAnnotations, ['enable_iommu', 'kernel_params', 'kernel_verity_params']);
    assert.deepEqual(h.kernelParams, ['cgroup_no_v1=all', 'systemd.unified_cgroup_hierarchy=1']);
    const c = parse('[hypervisor.qemu]\n');
    assert.equal(c.agent.dialTimeoutSec, 45);
    assert.equal(c.agent.agentChannel, 'auto');
    assert.equal(c.runtime.internetworkingModel, 'tcfilter');
    assert.equal(c.runtime.createContainerTimeoutSec, 60);
    assert.equal(c.factory.templatePath, '/run/vc/vm/template');
  });

  it('default objects are fresh copies each time', () => {
    const a = defaultHypervisorConfig();
    a.kernelParams.push('x');
    assert.notDeepEqual(defaultHypervisorConfig().kernelParams, a.kernelParams);
  });
});

describe('parseConfig: every key reaches its field', () => {
  it('reads a file that sets every used key to a non-default value', () => {
    const c = parse(`
[hypervisor.qemu]
path = "/opt/q/qemu"
kernel = "/k/vmlinux"
image = "/k/root.img"
initrd = "/k/initrd.img"
rootfs_type = "erofs"
machine_type = "q35"
accel = "tcg"
boot_timeout = 12
kernel_params = """  quiet
  foo=bar\tbaz  """
default_vcpus = 2
default_maxvcpus = 3
default_memory = 1024
default_maxmemory = 4096
memory_slots = 4
shared_fs = "virtio-9p"
virtio_fs_daemon = "/usr/libexec/virtiofsd"
valid_virtio_fs_daemon_paths = ["/usr/libexec/*"]
virtio_fs_cache = "never"
virtio_fs_cache_size = 64
virtio_fs_queue_size = 512
virtio_fs_extra_args = ["--thread-pool-size=1"]
msize_9p = 524288
block_device_driver = "virtio-scsi"
block_device_aio = "io_uring"
disable_block_device_use = false
enable_debug = true
enable_annotations = ["default_memory", "^kernel$"]
valid_hypervisor_paths = ["/opt/q/*"]
valid_asset_paths = ["/k/*", "/other/[ab]*"]
entropy_source = "/dev/random"
valid_entropy_sources = ["/dev/random"]
disable_vhost_net = true

[agent.kata]
enable_debug = true
enable_tracing = true
kernel_modules = ["e1000e InterruptThrottleRate=3000", "i915"]
debug_console_enabled = true
dial_timeout = 10
agent_channel = "virtio-serial"

[runtime]
enable_debug = true
internetworking_model = "none"
disable_guest_seccomp = false
disable_new_netns = true
sandbox_cgroup_only = true
static_sandbox_resource_mgmt = true
create_container_timeout = 30
enable_pprof = true
experimental = []
sandbox_bind_mounts = ["/var/a", "/var/b:rw", "/var/c:ro"]
disable_guest_empty_dir = false
emptydir_mode = "block-encrypted"

[factory]
enable_template = true
template_path = "/run/tpl"
vm_cache_number = 3
vm_cache_endpoint = "/run/cache.sock"
`);
    assert.deepEqual(c.hypervisor, {
      hypervisorKind: 'qemu',
      path: '/opt/q/qemu',
      kernel: '/k/vmlinux',
      image: '/k/root.img',
      initrd: '/k/initrd.img',
      rootfsType: 'erofs',
      machineType: 'q35',
      accel: 'tcg',
      bootTimeoutSec: 12,
      kernelParams: ['quiet', 'foo=bar', 'baz'],
      defaultVcpus: 2,
      defaultMaxVcpus: 3,
      defaultMemoryMiB: 1024,
      defaultMaxMemoryMiB: 4096,
      memorySlots: 4,
      sharedFs: 'virtio-9p',
      virtioFsDaemon: '/usr/libexec/virtiofsd',
      validVirtioFsDaemonPaths: ['/usr/libexec/*'],
      virtioFsCache: 'never',
      virtioFsCacheSizeMiB: 64,
      virtioFsQueueSize: 512,
      virtioFsExtraArgs: ['--thread-pool-size=1'],
      msize9p: 524288,
      blockDeviceDriver: 'virtio-scsi',
      blockDeviceAio: 'io_uring',
      disableBlockDeviceUse: false,
      enableDebug: true,
      enableAnnotations: ['default_memory', '^kernel$'],
      validHypervisorPaths: ['/opt/q/*'],
      validAssetPaths: ['/k/*', '/other/[ab]*'],
      entropySource: '/dev/random',
      validEntropySources: ['/dev/random'],
      disableVhostNet: true,
    });
    assert.deepEqual(c.agent, {
      enableDebug: true,
      enableTracing: true,
      kernelModules: ['e1000e InterruptThrottleRate=3000', 'i915'],
      debugConsoleEnabled: true,
      dialTimeoutSec: 10,
      agentChannel: 'virtio-serial',
    });
    assert.deepEqual(c.runtime, {
      enableDebug: true,
      internetworkingModel: 'none',
      disableGuestSeccomp: false,
      disableNewNetns: true,
      sandboxCgroupOnly: true,
      staticSandboxResourceMgmt: true,
      createContainerTimeoutSec: 30,
      enablePprof: true,
      experimental: [],
      sandboxBindMounts: ['/var/a', '/var/b:rw', '/var/c:ro'],
      disableGuestEmptyDir: false,
      emptydirMode: 'block-encrypted',
    });
    assert.deepEqual(c.factory, {
      enableTemplate: true,
      templatePath: '/run/tpl',
      vmCacheNumber: 3,
      vmCacheEndpoint: '/run/cache.sock',
    });
    assert.deepEqual(c.ignoredKeys, []);
  });

  it('allows image only, initrd only, or both; an empty string switches one off', () => {
    const imageOnly = parse(qemu('initrd = ""')).hypervisor;
    assert.equal(imageOnly.initrd, undefined);
    assert.ok(!('initrd' in imageOnly));
    assert.equal(imageOnly.image, '/usr/share/kata-containers/kata-containers.img');
    const initrdOnly = parse(qemu('image = ""')).hypervisor;
    assert.equal(initrdOnly.image, undefined);
    assert.ok(initrdOnly.initrd);
    const both = parse(qemu('image = "/a.img"\ninitrd = "/b.img"')).hypervisor;
    assert.equal(both.image, '/a.img');
    assert.equal(both.initrd, '/b.img');
  });

  it('accepts [hypervisor.firecracker] and [hypervisor.clh] with their kind', () => {
    assert.equal(parse('[hypervisor.firecracker]\npath = "/usr/bin/firecracker"').hypervisor.hypervisorKind, 'firecracker');
    assert.equal(parse('[hypervisor.clh]\n').hypervisor.hypervisorKind, 'clh');
  });

  it('accepts Kata keys it does not use, type-checks them, and lists them as ignored', () => {
    const c = parse(`
[hypervisor.qemu]
enable_iommu = true
cpu_features = "pmu=off"
default_bridges = 1
valid_vhost_user_store_paths = ["/var/run/kata-containers/vhost-user"]
[agent.kata]
cdh_api_timeout = 50
[runtime]
vfio_mode = "guest-kernel"
jaeger_endpoint = ""
`);
    assert.deepEqual(c.ignoredKeys, [
      '[hypervisor.qemu] enable_iommu',
      '[hypervisor.qemu] cpu_features',
      '[hypervisor.qemu] default_bridges',
      '[hypervisor.qemu] valid_vhost_user_store_paths',
      '[agent.kata] cdh_api_timeout',
      '[runtime] vfio_mode',
      '[runtime] jaeger_endpoint',
    ]);
    assertInvalid(qemu('enable_iommu = "yes"'), `${FILE}: [hypervisor.qemu] enable_iommu: expected true or false, got "yes"`);
    assertInvalid(qemu('default_bridges = 9'), /default_bridges: 9 is out of range \(0 to 5\)/);
  });

  it('accepts the sections of older Kata files and lists them as ignored', () => {
    const c = parse('[hypervisor.qemu]\n[netmon]\nenable_netmon = false\n[proxy.kata]\npath = "/x"\n[shim.kata]\n[image]\n');
    assert.deepEqual(c.ignoredKeys, ['[netmon]', '[proxy.kata]', '[shim.kata]', '[image]']);
  });
});

describe("parseConfig: Kata's sizing rules", () => {
  it('default_vcpus: 0 is 1, negative or above the host is the host', () => {
    assert.equal(parse(qemu('default_vcpus = 0')).hypervisor.defaultVcpus, 1);
    assert.equal(parse(qemu('default_vcpus = -1')).hypervisor.defaultVcpus, HOST.cpus);
    assert.equal(parse(qemu('default_vcpus = 64')).hypervisor.defaultVcpus, HOST.cpus);
    assert.equal(parse(qemu('default_vcpus = 3')).hypervisor.defaultVcpus, 3);
  });

  it('default_maxvcpus: 0 or above the host is the host; default_vcpus never exceeds it', () => {
    assert.equal(parse(qemu('default_maxvcpus = 0')).hypervisor.defaultMaxVcpus, HOST.cpus);
    assert.equal(parse(qemu('default_maxvcpus = 99')).hypervisor.defaultMaxVcpus, HOST.cpus);
    const h = parse(qemu('default_maxvcpus = 2\ndefault_vcpus = 3')).hypervisor;
    assert.equal(h.defaultMaxVcpus, 2);
    assert.equal(h.defaultVcpus, 2);
  });

  it('default_memory: 0 is the default; default_maxmemory: 0 or above host RAM is host RAM', () => {
    assert.equal(parse(qemu('default_memory = 0')).hypervisor.defaultMemoryMiB, 512);
    assert.equal(parse(qemu('default_maxmemory = 0')).hypervisor.defaultMaxMemoryMiB, HOST.memoryMiB);
    assert.equal(parse(qemu('default_maxmemory = 999999')).hypervisor.defaultMaxMemoryMiB, HOST.memoryMiB);
    assert.equal(parse(qemu('memory_slots = 0')).hypervisor.memorySlots, 10);
    assert.equal(parse(qemu('virtio_fs_queue_size = 0')).hypervisor.virtioFsQueueSize, 1024);
  });

  it('uses the real host when none is given', () => {
    const c = parseConfig('[hypervisor.qemu]\n', FILE);
    assert.ok(c.hypervisor.defaultMaxVcpus >= 1);
    assert.ok(c.hypervisor.defaultMaxMemoryMiB >= 64);
  });
});

describe('parseConfig: errors name the file and the key', () => {
  it('TOML syntax errors give file, line and column', () => {
    const err = assertInvalid('[hypervisor.qemu]\npath = "/x"\nkernel = \n', /^\/etc\/kata-test\/configuration\.toml:3:\d+: invalid TOML: /);
    assert.ok(err.cause, 'keeps the parser error as cause');
    assertInvalid('[hypervisor.qemu\n', /configuration\.toml:1:\d+: invalid TOML/);
    assertInvalid('[hypervisor.qemu]\na = 1\na = 2\n', /configuration\.toml:3:\d+: invalid TOML/);
    assertInvalid('[hypervisor.qemu]\npath = "/x\n', /configuration\.toml:2:\d+: invalid TOML/);
  });

  it('type errors give section, key, expectation and the value', () => {
    assertInvalid(qemu('default_memory = "abc"'), `${FILE}: [hypervisor.qemu] default_memory: expected an integer, got "abc"`);
    assertInvalid(qemu('default_memory = 1024.0'), `${FILE}: [hypervisor.qemu] default_memory: expected an integer, got 1024.0`);
    assertInvalid(qemu('default_memory = 1.5'), /default_memory: expected an integer, got 1\.5$/);
    assertInvalid(qemu('default_memory = true'), /default_memory: expected an integer, got true$/);
    assertInvalid(qemu('default_memory = 99999999999999999999999'), /default_memory: 99999999999999999999999 is out of range \(0 to 4194304\)/);
    assertInvalid(qemu('enable_debug = 1'), `${FILE}: [hypervisor.qemu] enable_debug: expected true or false, got 1`);
    assertInvalid(qemu('path = 5'), `${FILE}: [hypervisor.qemu] path: expected a string, got 5`);
    assertInvalid(qemu('path = ["/a"]'), `${FILE}: [hypervisor.qemu] path: expected a string, got an array`);
    assertInvalid(qemu('path = 1979-05-27'), `${FILE}: [hypervisor.qemu] path: expected a string, got a date`);
    assertInvalid(qemu('path = { a = 1 }'), `${FILE}: [hypervisor.qemu] path: expected a string, got a table`);
    assertInvalid(qemu('kernel_params = ["a"]'), `${FILE}: [hypervisor.qemu] kernel_params: expected a string, got an array`);
    assertInvalid(qemu('enable_annotations = "kernel_params"'), `${FILE}: [hypervisor.qemu] enable_annotations: expected an array of strings, got "kernel_params"`);
    assertInvalid(qemu('virtio_fs_extra_args = ["a", 1]'), `${FILE}: [hypervisor.qemu] virtio_fs_extra_args[1]: expected a string, got 1`);
    assertInvalid('[hypervisor.qemu]\n[agent.kata]\ndial_timeout = "45"', `${FILE}: [agent.kata] dial_timeout: expected an integer, got "45"`);
    assertInvalid('[hypervisor.qemu]\n[runtime]\nsandbox_cgroup_only = "true"', `${FILE}: [runtime] sandbox_cgroup_only: expected true or false, got "true"`);
    assertInvalid('[hypervisor.qemu]\n[factory]\nvm_cache_number = -1', `${FILE}: [factory] vm_cache_number: -1 is out of range (0 to 256)`);
  });

  it('enums list the allowed values', () => {
    assertInvalid(qemu('machine_type = "virt"'), `${FILE}: [hypervisor.qemu] machine_type: expected one of "microvm", "q35", "pc", got "virt"`);
    assertInvalid(qemu('shared_fs = "virtio-fs-nydus"'), /shared_fs: expected one of "virtio-fs", "virtio-9p", "none", got "virtio-fs-nydus"/);
    assertInvalid(qemu('virtio_fs_cache = "loose"'), /\[hypervisor\.qemu\] virtio_fs_cache: expected one of/);
    assertInvalid(qemu('accel = "hvf"'), /\[hypervisor\.qemu\] accel: expected one of "auto", "kvm", "tcg"/);
    assertInvalid(qemu('block_device_aio = "posix"'), /block_device_aio: expected one of/);
    assertInvalid('[hypervisor.qemu]\n[agent.kata]\nagent_channel = "tcp"', /\[agent\.kata\] agent_channel: expected one of "auto", "virtio-serial", "vsock"/);
    assertInvalid('[hypervisor.qemu]\n[runtime]\ninternetworking_model = "bridged"', /\[runtime\] internetworking_model: expected one of "tcfilter", "macvtap", "none"/);
    assertInvalid('[hypervisor.qemu]\n[runtime]\nemptydir_mode = "x"', /\[runtime\] emptydir_mode: expected one of/);
  });

  it('ranges', () => {
    assertInvalid(qemu('default_memory = 32'), `${FILE}: [hypervisor.qemu] default_memory: 32 MiB is below the minimum of 64 MiB`);
    assertInvalid(qemu('default_memory = 4096\ndefault_maxmemory = 2048'), /default_memory: 4096 MiB is more than default_maxmemory \(2048 MiB\)/);
    assertInvalid(qemu('msize_9p = 1024'), /msize_9p: 1024 is out of range \(4096 to 1048576\)/);
    assertInvalid(qemu('virtio_fs_queue_size = 1000'), /virtio_fs_queue_size: 1000 is not a power of two/);
    assertInvalid(qemu('virtio_fs_queue_size = 2048'), /virtio_fs_queue_size: 2048 is out of range/);
    assertInvalid(qemu('boot_timeout = 0'), /\[hypervisor\.qemu\] boot_timeout: 0 is out of range \(1 to 3600\)/);
    assertInvalid(qemu('memory_slots = 1000'), /memory_slots: 1000 is out of range/);
    assertInvalid('[hypervisor.qemu]\n[agent.kata]\ndial_timeout = 0', /\[agent\.kata\] dial_timeout: 0 is out of range/);
    assertInvalid('[hypervisor.qemu]\n[runtime]\ncreate_container_timeout = 0', /\[runtime\] create_container_timeout: 0 is out of range/);
  });

  it('paths must be absolute; kernel is required; image or initrd is required', () => {
    assertInvalid(qemu('path = "qemu"'), `${FILE}: [hypervisor.qemu] path: expected an absolute path, got "qemu"`);
    assertInvalid(qemu('kernel = "vmlinux"'), /\[hypervisor\.qemu\] kernel: expected an absolute path, got "vmlinux"/);
    assertInvalid(qemu('kernel = ""'), /\[hypervisor\.qemu\] kernel: expected an absolute path, got ""/);
    assertInvalid(qemu('image = "rel.img"'), /\[hypervisor\.qemu\] image: expected an absolute path/);
    assertInvalid(qemu('initrd = "./i.img"'), /\[hypervisor\.qemu\] initrd: expected an absolute path/);
    assertInvalid(qemu('virtio_fs_daemon = "virtiofsd"'), /virtio_fs_daemon: expected an absolute path/);
    assertInvalid(qemu('image = ""\ninitrd = ""'), `${FILE}: [hypervisor.qemu] image, initrd: at least one of them is required`);
    assertInvalid(qemu('path = "/bin/q\\u0000x"'), /\[hypervisor\.qemu\] path: control characters are not allowed/);
    assertInvalid('[hypervisor.qemu]\n[factory]\ntemplate_path = "tpl"', /\[factory\] template_path: expected an absolute path/);
    assertInvalid('[hypervisor.qemu]\n[runtime]\nsandbox_bind_mounts = ["rel:ro"]', /\[runtime\] sandbox_bind_mounts\[0\]: expected an absolute path/);
  });

  it('list items are checked: regexes, globs, kernel modules', () => {
    assertInvalid(qemu('enable_annotations = ["kernel_params", "("]'), /^\/etc\/kata-test\/configuration\.toml: \[hypervisor\.qemu\] enable_annotations\[1\]: invalid regular expression "\("/);
    assertInvalid(qemu('valid_hypervisor_paths = ["/usr/bin/[q"]'), /\[hypervisor\.qemu\] valid_hypervisor_paths\[0\]: bad glob "\/usr\/bin\/\[q": unclosed \[/);
    assertInvalid(qemu('valid_asset_paths = ["relative/*"]'), /valid_asset_paths\[0\]: expected an absolute path pattern/);
    assertInvalid('[hypervisor.qemu]\n[agent.kata]\nkernel_modules = ["bad/name x=1"]', /\[agent\.kata\] kernel_modules\[0\]: expected "module_name \[param=value \.\.\.\]"/);
    assertInvalid(qemu('kernel_params = "a\\u0000b"'), /kernel_params: control characters are not allowed/);
  });

  it('unknown keys are errors, with a hint for near misses', () => {
    assertInvalid(qemu('defualt_memory = 1024'), `${FILE}: [hypervisor.qemu] defualt_memory: unknown key (did you mean default_memory?)`);
    assertInvalid(qemu('no_such_thing = 1'), `${FILE}: [hypervisor.qemu] no_such_thing: unknown key`);
    assertInvalid('[hypervisor.qemu]\n[agent.kata]\ndial_timout = 4', /\[agent\.kata\] dial_timout: unknown key \(did you mean dial_timeout\?\)/);
    assertInvalid('[hypervisor.qemu]\n[runtime]\nenable_debgu = true', /\[runtime\] enable_debgu: unknown key/);
    assertInvalid('[hypervisor.qemu]\n[factory]\ntemplate = true', /\[factory\] template: unknown key/);
    assertInvalid('top = 1\n[hypervisor.qemu]\n', `${FILE}: unknown key top at top level (keys belong in a [section])`);
  });

  it('unknown sections are errors', () => {
    assertInvalid('[hypervisor.qemu]\n[hypervisr]\n', /unknown section \[hypervisr\]/);
    assertInvalid('[hypervisor.acrn]\n', /unknown section \[hypervisor\.acrn\]/);
    assertInvalid('[hypervisor.qemu]\n[agent.other]\n', /unknown section \[agent\.other\]/);
    assertInvalid('[hypervisor.qemu]\n[hypervisor.qemu.extra]\n', `${FILE}: unknown section [hypervisor.qemu.extra]`);
    assertInvalid('[hypervisor.qemu]\n[proxy.other]\n', /unknown section \[proxy\]/);
    assertInvalid('[hypervisor.qemu]\n[[runtime]]\n', /unknown key runtime at top level/);
    assertInvalid('[hypervisor.qemu]\n[runtime.sub]\n', /unknown section \[runtime\.sub\]/);
    assertInvalid('[hypervisor]\npath = "/x"\n[hypervisor.qemu]\n', `${FILE}: [hypervisor] path: keys belong in [hypervisor.qemu], not [hypervisor]`);
    assertInvalid('[hypervisor.qemu]\n[agent]\ndial_timeout = 3\n', `${FILE}: [agent] dial_timeout: keys belong in [agent.kata], not [agent]`);
  });

  it('exactly one hypervisor section', () => {
    assertInvalid('', `${FILE}: no hypervisor section: expected [hypervisor.qemu]`);
    assertInvalid('[agent.kata]\n', /no hypervisor section/);
    assertInvalid('[hypervisor.qemu]\n[hypervisor.clh]\n', `${FILE}: only one hypervisor section is allowed, found [hypervisor.qemu] and [hypervisor.clh]`);
  });

  it('cross-key rules', () => {
    assertInvalid('[hypervisor.qemu]\n[runtime]\ndisable_new_netns = true', `${FILE}: [runtime] disable_new_netns: only works with internetworking_model = "none", got "tcfilter"`);
    assertInvalid('[hypervisor.qemu]\n[runtime]\nexperimental = ["newstore"]', /\[runtime\] experimental: unknown experimental feature "newstore"/);
  });

  it('refuses prototype keys', () => {
    assertInvalid('[hypervisor.qemu]\n__proto__ = 1\n', /configuration\.toml/);
  });
});

describe('the shipped configuration-qemu.toml', () => {
  it("parses, with Kata's defaults but the documented template path (9p, 512 KiB msize, templates on, shared_fs annotation), and uses no unknown or unused key except documented ones", async () => {
    const c = await loadConfig(SHIPPED, { host: HOST });
    assert.equal(c.sourcePath, SHIPPED);
    const kata = parse('[hypervisor.qemu]\n').hypervisor;
    assert.deepEqual(c.hypervisor, { ...kata, sharedFs: 'virtio-9p', msize9p: 524288, enableAnnotations: [...kata.enableAnnotations, '^shared_fs$'] });
    assert.deepEqual(c.agent, defaultAgentConfig());
    assert.deepEqual(c.runtime, defaultRuntimeOptions());
    assert.deepEqual(c.factory, { ...defaultFactoryConfig(), enableTemplate: true });
    assert.deepEqual(c.ignoredKeys, ['[hypervisor.qemu] cpu_features']);
  });

  it("uses Kata's layout and the asset paths the setup installs", async () => {
    const text = await readFile(SHIPPED, 'utf8');
    for (const needle of [
      '[hypervisor.qemu]',
      '[agent.kata]',
      '[runtime]',
      '[factory]',
      'kernel = "/usr/share/kata-containers/vmlinux.container"',
      'initrd = "/usr/share/kata-containers/kata-containers-initrd.img"',
      'image = "/usr/share/kata-containers/kata-containers.img"',
      'path = "/usr/bin/qemu-system-x86_64"',
      'machine_type = "microvm"',
    ]) {
      assert.ok(text.includes(needle), needle);
    }
  });
});

describe('findConfigFile and loadConfig', () => {
  let dir = '';
  let etc = '';
  let shipped = '';
  let custom = '';

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kata-config-test-'));
    etc = join(dir, 'etc.toml');
    shipped = join(dir, 'shipped.toml');
    custom = join(dir, 'custom.toml');
    for (const p of [etc, shipped, custom]) await writeFile(p, '[hypervisor.qemu]\n');
    await mkdir(join(dir, 'a-directory.toml'));
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("defaultConfigPaths is Kata's order", () => {
    assert.deepEqual(defaultConfigPaths(), [
      '/etc/kata-containers/configuration.toml',
      '/usr/share/defaults/kata-containers/configuration.toml',
    ]);
  });

  it('explicit path wins over KATA_CONF_FILE and the defaults', () => {
    const got = findConfigFile({ explicitPath: custom, env: { KATA_CONF_FILE: etc }, defaultPaths: [shipped] });
    assert.equal(got, custom);
  });

  it('KATA_CONF_FILE wins over the defaults', () => {
    assert.equal(findConfigFile({ env: { KATA_CONF_FILE: custom }, defaultPaths: [etc, shipped] }), custom);
  });

  it('empty explicit path and empty KATA_CONF_FILE are ignored', () => {
    assert.equal(findConfigFile({ explicitPath: '', env: { KATA_CONF_FILE: '' }, defaultPaths: [etc, shipped] }), etc);
  });

  it('the first existing default wins; a directory is not a file', () => {
    const missing = join(dir, 'missing.toml');
    assert.equal(findConfigFile({ env: {}, defaultPaths: [etc, shipped] }), etc);
    assert.equal(findConfigFile({ env: {}, defaultPaths: [missing, shipped] }), shipped);
    assert.equal(findConfigFile({ env: {}, defaultPaths: [join(dir, 'a-directory.toml'), shipped] }), shipped);
  });

  it('a missing explicit path is NotFound naming it, with no fallback', () => {
    const missing = join(dir, 'nope.toml');
    assert.throws(
      () => findConfigFile({ explicitPath: missing, env: {}, defaultPaths: [etc] }),
      (err: unknown) =>
        err instanceof KataError && err.kind === 'NotFound' && err.code === 'KATA_CONFIG_NOT_FOUND' && err.message.includes(missing),
    );
  });

  it('a missing KATA_CONF_FILE is NotFound naming it and the variable', () => {
    const missing = join(dir, 'env-nope.toml');
    assert.throws(
      () => findConfigFile({ env: { KATA_CONF_FILE: missing }, defaultPaths: [etc] }),
      (err: unknown) =>
        err instanceof KataError && err.kind === 'NotFound' && err.message.includes(missing) && err.message.includes('KATA_CONF_FILE'),
    );
  });

  it('nothing found is NotFound listing every candidate', () => {
    const a = join(dir, 'a.toml');
    const b = join(dir, 'b.toml');
    assert.throws(
      () => findConfigFile({ env: {}, defaultPaths: [a, b] }),
      (err: unknown) =>
        err instanceof KataError && err.kind === 'NotFound' && err.code === 'KATA_CONFIG_NOT_FOUND' &&
        err.message.includes(a) && err.message.includes(b),
    );
  });

  it('reads process.env when no env is given, and resolves relative paths', () => {
    const saved = process.env['KATA_CONF_FILE'];
    try {
      process.env['KATA_CONF_FILE'] = relative(process.cwd(), custom);
      assert.equal(findConfigFile({ defaultPaths: [] }), custom);
    } finally {
      if (saved === undefined) delete process.env['KATA_CONF_FILE'];
      else process.env['KATA_CONF_FILE'] = saved;
    }
  });

  it('loadConfig reads the file and names it in errors', async () => {
    const c = await loadConfig(custom, { host: HOST });
    assert.equal(c.sourcePath, custom);
    const bad = join(dir, 'bad.toml');
    await writeFile(bad, '[hypervisor.qemu]\ndefault_vcpus = "two"\n');
    await assert.rejects(loadConfig(bad, { host: HOST }), (err: unknown) =>
      err instanceof KataError && err.code === 'KATA_CONFIG_INVALID' &&
      err.message === `${bad}: [hypervisor.qemu] default_vcpus: expected an integer, got "two"`,
    );
  });

  it('loadConfig of a missing file is NotFound', async () => {
    const missing = join(dir, 'gone.toml');
    await assert.rejects(loadConfig(missing), (err: unknown) =>
      err instanceof KataError && err.kind === 'NotFound' && err.message.includes(missing),
    );
  });

  it('loadConfig of a directory is FailedPrecondition', async () => {
    await assert.rejects(loadConfig(dir), (err: unknown) =>
      err instanceof KataError && err.kind === 'FailedPrecondition' && err.code === 'KATA_CONFIG_UNREADABLE',
    );
  });
});

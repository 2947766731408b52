import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { KataError } from '../../base/errors.js';
import { applyAnnotations } from './annotations.js';
import { parseConfig } from './load.js';
import type { RuntimeConfig } from './types.js';

const HOST = { cpus: 4, memoryMiB: 8192 };
const FILE = '/etc/kata-test/configuration.toml';
const HV = 'io.katacontainers.config.hypervisor.';
const RT = 'io.katacontainers.config.runtime.';
const AG = 'io.katacontainers.config.agent.';

function config(extra = ''): RuntimeConfig {
  return parseConfig(`[hypervisor.qemu]\n${extra}\n`, FILE, { host: HOST });
}

/** A config in which every hypervisor annotation is enabled. */
function open(extra = ''): RuntimeConfig {
  return config(`enable_annotations = [".*"]\n${extra}`);
}

function apply(c: RuntimeConfig, annotations: Record<string, string>): RuntimeConfig {
  return applyAnnotations(c, annotations, { host: HOST });
}

function assertRefused(c: RuntimeConfig, annotations: Record<string, string>, message: RegExp | string, code = 'KATA_ANNOTATION_INVALID'): void {
  assert.throws(
    () => apply(c, annotations),
    (err: unknown) => {
      assert.ok(err instanceof KataError, String(err));
      assert.equal(err.kind, 'InvalidArgument');
      assert.equal(err.code, code);
      if (typeof message === 'string') assert.equal(err.message, message);
      else assert.match(err.message, message);
      return true;
    },
  );
}

describe('applyAnnotations: basics', () => {
  it('returns a new config and leaves the input alone', () => {
    const c = config();
    const before = structuredClone(c);
    const out = apply(c, { [`${HV}kernel_params`]: 'quiet' });
    assert.notEqual(out, c);
    assert.deepEqual(c, before);
    assert.deepEqual(out.hypervisor.kernelParams, [...c.hypervisor.kernelParams, 'quiet']);
  });

  it('ignores annotations without the config prefix, and no annotations at all', () => {
    const c = config();
    const out = apply(c, {
      'io.kubernetes.cri.container-type': 'sandbox',
      'io.katacontainers.pkg.oci.bundle_path': '/x',
      'io.katacontainers.container.resource.swappiness': '10',
      'io.katacontainers.configx.hypervisor.default_memory': '1',
      'org.example': 'anything\n',
    });
    assert.deepEqual(out, c);
    assert.deepEqual(apply(c, {}), c);
  });

  it('unknown io.katacontainers.config.* keys are refused by name', () => {
    assertRefused(config(), { 'io.katacontainers.config.foo.bar': '1' }, /^annotation io\.katacontainers\.config\.foo\.bar: unknown configuration annotation/);
    assertRefused(open(), { [`${HV}defualt_memory`]: '1024' }, `annotation ${HV}defualt_memory: unknown key "defualt_memory" (did you mean default_memory?)`);
    assertRefused(config(), { [`${RT}no_such`]: 'true' }, /^annotation io\.katacontainers\.config\.runtime\.no_such: unknown key "no_such"/);
    assertRefused(config(), { [`${AG}no_such`]: 'true' }, /^annotation io\.katacontainers\.config\.agent\.no_such: unknown key/);
  });
});

describe('applyAnnotations: enable_annotations gating', () => {
  it('the shipped gates allow kernel_params and refuse default_memory', () => {
    const c = config();
    assert.ok(apply(c, { [`${HV}kernel_params`]: 'a=1' }));
    assertRefused(
      c,
      { [`${HV}default_memory`]: '1024' },
      `annotation ${HV}default_memory is not enabled (no enable_annotations entry in ${FILE} matches "default_memory")`,
      'KATA_ANNOTATION_NOT_ENABLED',
    );
  });

  it('regexes are unanchored, like Go regexp.MatchString', () => {
    const c = config('enable_annotations = ["memory"]');
    assert.equal(apply(c, { [`${HV}default_memory`]: '1024' }).hypervisor.defaultMemoryMiB, 1024);
    assert.equal(apply(c, { [`${HV}memory_slots`]: '4' }).hypervisor.memorySlots, 4);
    assertRefused(c, { [`${HV}default_vcpus`]: '2' }, /is not enabled/, 'KATA_ANNOTATION_NOT_ENABLED');
  });

  it('anchored regexes match exactly', () => {
    const c = config('enable_annotations = ["^default_vcpus$"]');
    assert.equal(apply(c, { [`${HV}default_vcpus`]: '2' }).hypervisor.defaultVcpus, 2);
    assertRefused(c, { [`${HV}default_max_vcpus`]: '2' }, /is not enabled/, 'KATA_ANNOTATION_NOT_ENABLED');
  });

  it('an empty list refuses every hypervisor annotation', () => {
    const c = config('enable_annotations = []');
    assertRefused(c, { [`${HV}kernel_params`]: 'quiet' }, /is not enabled/, 'KATA_ANNOTATION_NOT_ENABLED');
  });

  it('the gates themselves cannot be set by annotations, even with ".*"', () => {
    for (const key of ['enable_annotations', 'valid_hypervisor_paths', 'valid_virtio_fs_daemon_paths', 'valid_asset_paths', 'valid_entropy_sources']) {
      assertRefused(open(), { [`${HV}${key}`]: '[".*"]' }, `annotation ${HV}${key}: ${key} can only be set in the configuration file`);
    }
  });

  it('runtime and agent annotations are not gated by enable_annotations', () => {
    const c = config('enable_annotations = []');
    const out = apply(c, {
      [`${RT}disable_guest_seccomp`]: 'false',
      [`${RT}sandbox_cgroup_only`]: 'true',
      [`${RT}enable_pprof`]: 'True',
      [`${RT}internetworking_model`]: 'macvtap',
      [`${RT}create_container_timeout`]: '120',
      [`${AG}enable_tracing`]: '1',
      [`${AG}kernel_modules`]: 'e1000e InterruptThrottleRate=3000; i915',
    });
    assert.equal(out.runtime.disableGuestSeccomp, false);
    assert.equal(out.runtime.sandboxCgroupOnly, true);
    assert.equal(out.runtime.enablePprof, true);
    assert.equal(out.runtime.internetworkingModel, 'macvtap');
    assert.equal(out.runtime.createContainerTimeoutSec, 120);
    assert.equal(out.agent.enableTracing, true);
    assert.deepEqual(out.agent.kernelModules, ['e1000e InterruptThrottleRate=3000', 'i915']);
  });
});

describe('applyAnnotations: values by type', () => {
  it('applies each hypervisor key type', () => {
    const out = apply(open(), {
      [`${HV}default_vcpus`]: '2',
      [`${HV}default_max_vcpus`]: '3',
      [`${HV}default_memory`]: '1024',
      [`${HV}machine_type`]: 'q35',
      [`${HV}shared_fs`]: 'virtio-9p',
      [`${HV}msize_9p`]: '524288',
      [`${HV}virtio_fs_cache`]: 'auto',
      [`${HV}virtio_fs_extra_args`]: '["--thread-pool-size=2","--announce-submounts"]',
      [`${HV}enable_debug`]: 'true',
      [`${HV}accel`]: 'tcg',
    });
    const h = out.hypervisor;
    assert.equal(h.defaultVcpus, 2);
    assert.equal(h.defaultMaxVcpus, 3);
    assert.equal(h.defaultMemoryMiB, 1024);
    assert.equal(h.machineType, 'q35');
    assert.equal(h.sharedFs, 'virtio-9p');
    assert.equal(h.msize9p, 524288);
    assert.equal(h.virtioFsCache, 'auto');
    assert.deepEqual(h.virtioFsExtraArgs, ['--thread-pool-size=2', '--announce-submounts']);
    assert.equal(h.enableDebug, true);
    assert.equal(h.accel, 'tcg');
  });

  it("uses Kata's annotation names: default_max_vcpus, not default_maxvcpus", () => {
    assertRefused(open(), { [`${HV}default_maxvcpus`]: '2' }, /unknown key "default_maxvcpus" \(did you mean default_max_vcpus\?\)/);
  });

  it('booleans take the forms Go accepts, nothing else', () => {
    const c = open();
    for (const t of ['1', 't', 'T', 'true', 'TRUE', 'True']) assert.equal(apply(c, { [`${HV}enable_debug`]: t }).hypervisor.enableDebug, true, t);
    for (const f of ['0', 'f', 'F', 'false', 'FALSE', 'False']) assert.equal(apply(open('enable_debug = true'), { [`${HV}enable_debug`]: f }).hypervisor.enableDebug, false, f);
    for (const bad of ['yes', 'on', '', ' true']) {
      assertRefused(c, { [`${HV}enable_debug`]: bad }, /^annotation io\.katacontainers\.config\.hypervisor\.enable_debug: expected true or false, got /);
    }
  });

  it('integers are plain non-negative decimals', () => {
    for (const bad of ['two', '-1', '+2', '0x10', '1e3', '2.0', ' 2', '']) {
      assertRefused(open(), { [`${HV}default_vcpus`]: bad }, /default_vcpus: expected a non-negative decimal integer, got /);
    }
  });

  it('enums are checked', () => {
    assertRefused(open(), { [`${HV}machine_type`]: 'virt' }, `annotation ${HV}machine_type: expected one of "microvm", "q35", "pc", got "virt"`);
    assertRefused(config(), { [`${RT}internetworking_model`]: 'bridged' }, /internetworking_model: expected one of/);
  });

  it('accepted Kata keys that kata-ts does not use are recorded as ignored', () => {
    const out = apply(config(), { [`${HV}enable_iommu`]: 'true', [`${RT}vfio_mode`]: 'vfio' });
    assert.deepEqual(out.ignoredKeys, [`annotation ${HV}enable_iommu`, `annotation ${RT}vfio_mode`]);
    assertRefused(config(), { [`${HV}enable_iommu`]: 'maybe' }, /enable_iommu: expected true or false/);
  });

  it('keys only the file may set are refused', () => {
    assertRefused(config(), { [`${RT}enable_debug`]: 'true' }, `annotation ${RT}enable_debug: enable_debug can only be set in the configuration file`);
    assertRefused(config(), { [`${AG}dial_timeout`]: '1' }, /dial_timeout can only be set in the configuration file/);
    assertRefused(config(), { [`${AG}debug_console_enabled`]: 'true' }, /debug_console_enabled can only be set in the configuration file/);
    assertRefused(open(), { [`${HV}rootless`]: 'true' }, /rootless can only be set in the configuration file/);
  });

  it('Kata annotations kata-ts does not support are refused, not ignored', () => {
    assertRefused(config(), { [`${AG}policy`]: 'cGFja2FnZSBhZ2VudF9wb2xpY3k=' }, `annotation ${AG}policy: not supported by kata-ts`);
    assertRefused(config(), { [`${AG}container_pipe_size`]: '65536' }, /not supported by kata-ts/);
    assertRefused(config(), { [`${RT}experimental_force_guest_pull`]: 'true' }, /not supported by kata-ts/);
    assertRefused(open(), { [`${HV}kernel_hash`]: 'abc' }, /asset hash checks are not supported/);
    assertRefused(open(), { [`${HV}firmware`]: '/usr/share/ovmf.fd' }, `annotation ${HV}firmware: not supported by kata-ts`);
    assertRefused(open(), { [`${HV}guest_hook_path`]: '/usr/share/oci/hooks' }, /not supported by kata-ts/);
  });

  it('cross-key rules hold after annotations', () => {
    assertRefused(config(), { [`${RT}disable_new_netns`]: 'true' }, /disable_new_netns: only works with internetworking_model = "none"/);
    const out = apply(config(), { [`${RT}disable_new_netns`]: 'true', [`${RT}internetworking_model`]: 'none' });
    assert.equal(out.runtime.disableNewNetns, true);
    assertRefused(config(), { [`${RT}experimental`]: 'newstore' }, /unknown experimental feature "newstore"/);
    assertRefused(open(), { [`${HV}default_max_vcpus`]: '1', [`${HV}default_vcpus`]: '2' }, /default_vcpus: 2 is out of range \(1 to 1 on this host\)/);
  });
});

describe('applyAnnotations: path annotations and their globs', () => {
  it('path must match valid_hypervisor_paths', () => {
    const c = open('valid_hypervisor_paths = ["/usr/bin/qemu-system-*", "/opt/kata/bin/qemu"]');
    assert.equal(apply(c, { [`${HV}path`]: '/usr/bin/qemu-system-aarch64' }).hypervisor.path, '/usr/bin/qemu-system-aarch64');
    assert.equal(apply(c, { [`${HV}path`]: '/opt/kata/bin/qemu' }).hypervisor.path, '/opt/kata/bin/qemu');
    assertRefused(c, { [`${HV}path`]: '/tmp/evil' }, `annotation ${HV}path: path "/tmp/evil" is not allowed by valid_hypervisor_paths`);
    assertRefused(c, { [`${HV}path`]: '/usr/bin/x/qemu-system-x' }, /is not allowed by valid_hypervisor_paths/);
  });

  it('an empty list refuses every path', () => {
    const c = open('valid_hypervisor_paths = []');
    assertRefused(c, { [`${HV}path`]: '/usr/bin/qemu-system-x86_64' }, /is not allowed by valid_hypervisor_paths/);
  });

  it('paths must be absolute and in normal form, so ".." cannot escape a glob', () => {
    const c = open('valid_hypervisor_paths = ["/usr/bin/*"]');
    assertRefused(c, { [`${HV}path`]: '/usr/bin/../../tmp/evil' }, /path "\/usr\/bin\/\.\.\/\.\.\/tmp\/evil" is not in normal form/);
    assertRefused(c, { [`${HV}path`]: '/usr/bin/..' }, /is not in normal form/);
    assertRefused(c, { [`${HV}path`]: '/usr/bin/./qemu' }, /is not in normal form/);
    assertRefused(c, { [`${HV}path`]: '/usr//bin/qemu' }, /is not in normal form/);
    assertRefused(c, { [`${HV}path`]: '/usr/bin/' }, /is not in normal form/);
    assertRefused(c, { [`${HV}path`]: 'qemu' }, /expected an absolute path, got "qemu"/);
  });

  it('kernel, image and initrd must match valid_asset_paths', () => {
    const c = open();
    const out = apply(c, {
      [`${HV}kernel`]: '/usr/share/kata-containers/vmlinux-debug',
      [`${HV}image`]: '/usr/share/kata-containers/other.img',
      [`${HV}initrd`]: '/usr/share/kata-containers/other-initrd.img',
    });
    assert.equal(out.hypervisor.kernel, '/usr/share/kata-containers/vmlinux-debug');
    assert.equal(out.hypervisor.image, '/usr/share/kata-containers/other.img');
    assert.equal(out.hypervisor.initrd, '/usr/share/kata-containers/other-initrd.img');
    for (const key of ['kernel', 'image', 'initrd']) {
      assertRefused(c, { [`${HV}${key}`]: '/home/user/evil' }, `annotation ${HV}${key}: path "/home/user/evil" is not allowed by valid_asset_paths`);
    }
    assertRefused(c, { [`${HV}image`]: '' }, /image: path "" is not allowed by valid_asset_paths|not in normal form/);
  });

  it('virtio_fs_daemon must match valid_virtio_fs_daemon_paths; entropy_source valid_entropy_sources', () => {
    const c = open();
    assert.equal(apply(c, { [`${HV}virtio_fs_daemon`]: '/usr/libexec/virtiofsd' }).hypervisor.virtioFsDaemon, '/usr/libexec/virtiofsd');
    assertRefused(c, { [`${HV}virtio_fs_daemon`]: '/usr/bin/virtiofsd' }, /is not allowed by valid_virtio_fs_daemon_paths/);
    assert.equal(apply(c, { [`${HV}entropy_source`]: '/dev/random' }).hypervisor.entropySource, '/dev/random');
    assertRefused(c, { [`${HV}entropy_source`]: '/dev/zero' }, /is not allowed by valid_entropy_sources/);
  });
});

describe('applyAnnotations: hostile values are refused clearly', () => {
  it('huge or host-exceeding memory and vCPUs', () => {
    const c = open();
    assertRefused(c, { [`${HV}default_memory`]: '99999999999' }, `annotation ${HV}default_memory: 99999999999 is out of range (0 to 4194304)`);
    assertRefused(c, { [`${HV}default_memory`]: '999999999999999999999' }, /default_memory: 999999999999999999999 is out of range/);
    assertRefused(c, { [`${HV}default_memory`]: '16384' }, `annotation ${HV}default_memory: 16384 is out of range (64 to 8192 on this host)`);
    assertRefused(c, { [`${HV}default_memory`]: '0' }, /default_memory: 0 is out of range \(64 to 8192 on this host\)/);
    assertRefused(c, { [`${HV}default_memory`]: '32' }, /out of range \(64 to/);
    assertRefused(open('default_maxmemory = 2048'), { [`${HV}default_memory`]: '4096' }, /4096 is out of range \(64 to 2048 on this host\)/);
    assertRefused(c, { [`${HV}default_vcpus`]: '0' }, /default_vcpus: 0 is out of range \(1 to 4 on this host\)/);
    assertRefused(c, { [`${HV}default_vcpus`]: '5' }, /default_vcpus: 5 is out of range \(1 to 4 on this host\)/);
    assertRefused(c, { [`${HV}default_vcpus`]: '4294967296' }, /default_vcpus: 4294967296 is out of range/);
    assertRefused(c, { [`${HV}default_max_vcpus`]: '1000' }, /default_max_vcpus: 1000 is out of range/);
    assertRefused(c, { [`${HV}memory_slots`]: '0' }, /memory_slots: 0 is out of range/);
    assertRefused(c, { [`${HV}virtio_fs_queue_size`]: '0' }, /virtio_fs_queue_size: 0 is out of range/);
    assertRefused(c, { [`${HV}virtio_fs_queue_size`]: '100' }, /not a power of two/);
    assertRefused(c, { [`${HV}msize_9p`]: '100000000' }, /msize_9p: 100000000 is out of range/);
  });

  it('control characters anywhere, including newlines in kernel_params', () => {
    const c = config();
    assertRefused(c, { [`${HV}kernel_params`]: 'quiet\ninit=/bin/sh' }, /^annotation io\.katacontainers\.config\.hypervisor\.kernel_params: control characters are not allowed/);
    assertRefused(c, { [`${HV}kernel_params`]: 'a\u0000b' }, /control characters are not allowed/);
    assertRefused(c, { [`${HV}kernel_params`]: 'a\tb' }, /control characters are not allowed/);
    assertRefused(c, { [`${HV}kernel_params`]: 'a\u007fb' }, /control characters are not allowed/);
    assertRefused(open(), { [`${HV}path`]: '/usr/bin/qemu\r' }, /control characters are not allowed/);
    assertRefused(config(), { [`${AG}kernel_modules`]: 'a\nb' }, /control characters are not allowed/);
  });

  it('kernel parameters that would replace init, root or agent settings', () => {
    const c = config();
    for (const p of ['init=/bin/sh', 'rdinit=/x', 'root=/dev/vdb', 'rootfstype=ext2', 'rootflags=rw', 'agent.debug_console', 'agent.log=debug', '--']) {
      assertRefused(c, { [`${HV}kernel_params`]: `quiet ${p}` }, `annotation ${HV}kernel_params: kernel parameter "${p}" is reserved for the runtime`);
    }
    assert.deepEqual(apply(c, { [`${HV}kernel_params`]: 'quiet  loglevel=3 ' }).hypervisor.kernelParams.slice(-2), ['quiet', 'loglevel=3']);
  });

  it('virtiofsd options that would change what is shared', () => {
    for (const arg of ['-o source=/', '--shared-dir=/', '--socket-path=/tmp/x', '--fd=3', '--sandbox=none', '--seccomp=none', '-o cache=always,source=/']) {
      assertRefused(open(), { [`${HV}virtio_fs_extra_args`]: JSON.stringify([arg]) }, /virtiofsd option .* is reserved for the runtime/);
    }
    assertRefused(open(), { [`${HV}virtio_fs_extra_args`]: '["a", 1]' }, /virtio_fs_extra_args: \[1\]: expected a string, got 1/);
    assertRefused(open(), { [`${HV}virtio_fs_extra_args`]: '[broken' }, /expected a JSON array of strings/);
    assertRefused(open(), { [`${HV}virtio_fs_extra_args`]: '["-o" , {"a":1}]' }, /expected a string, got a table/);
  });

  it('over-long values', () => {
    assertRefused(config(), { [`${HV}kernel_params`]: 'a'.repeat(5000) }, `annotation ${HV}kernel_params: value is longer than 4096 characters`);
  });

  it('bad kernel module names', () => {
    assertRefused(config(), { [`${AG}kernel_modules`]: '../../evil' }, /kernel_modules: \[0\]: expected "module_name \[param=value \.\.\.\]"/);
    assert.deepEqual(apply(config(), { [`${AG}kernel_modules`]: '["virtio_net", "fuse max_user_bgreq=8"]' }).agent.kernelModules, ['virtio_net', 'fuse max_user_bgreq=8']);
  });

  it('non-string values (from a malformed spec) are refused', () => {
    assertRefused(config(), { [`${HV}kernel_params`]: 5 as unknown as string }, /expected a string value, got 5/);
  });

  it('the first refused annotation in key order is reported, the rest are not applied', () => {
    const c = config();
    assertRefused(c, { [`${HV}kernel_params`]: 'init=/x', [`${HV}default_memory`]: '1' }, /default_memory is not enabled/, 'KATA_ANNOTATION_NOT_ENABLED');
  });
});

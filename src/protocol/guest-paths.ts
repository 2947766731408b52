/**
 * Guest paths that the host runtime, the guest agent and the guest image builder (guest/build.sh) agree on.
 */

/**
 * A read-only busybox root filesystem in the guest image, for the VM template's warm-up container: the only
 * container root the agent accepts outside /run/kata-containers, and only read-only.
 */
export const GUEST_WARMUP_ROOTFS = '/usr/lib/kata-agent/warmup-rootfs';

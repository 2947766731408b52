import { execFileSync } from 'node:child_process';

/** Test network namespaces: only addresses on interfaces the tests create, in namespaces they create. */

export const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** A free 10.88.<x>.0/24: not routed anywhere in the root netns yet (other tests may run at the same time). */
export function freeSubnet(seed: number): number {
  const used = ip('-4', '-o', 'route', 'show', 'table', 'all') + ip('-4', '-o', 'addr', 'show');
  for (let i = 0; i < 200; i++) {
    const x = 20 + ((seed + i) % 200);
    if (!used.includes(`10.88.${x}.`)) return x;
  }
  throw new Error('no free 10.88.x.0/24 subnet');
}

export interface TestNetns {
  name: string;
  path: string;
  hostVeth: string;
  x: number;
  gateway: string;
  podIp: string;
  gatewayMac: string;
  remove(): void;
}

/**
 * netns `kata-ts-test-<pid><suffix>` with `eth0` (10.88.x.2/24, default route and a static route via .1, a
 * permanent neighbour entry for the gateway); its peer `kth<pid><suffix>` in the root netns holds 10.88.x.1/24.
 */
export function makeTestNetns(suffix: string, seed: number): TestNetns {
  const name = `kata-ts-test-${process.pid}${suffix}`;
  const hostVeth = `kth${process.pid}${suffix}`.slice(0, 15);
  const x = freeSubnet(seed);
  const gateway = `10.88.${x}.1`;
  const podIp = `10.88.${x}.2`;
  ip('netns', 'add', name);
  const remove = () => {
    try {
      ip('netns', 'delete', name);
    } catch {
      // already gone
    }
    try {
      ip('link', 'delete', hostVeth);
    } catch {
      // went with the netns
    }
  };
  try {
    ip('link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name);
    ip('addr', 'add', `${gateway}/24`, 'dev', hostVeth);
    ip('link', 'set', hostVeth, 'up');
    ip('-n', name, 'link', 'set', 'lo', 'up');
    ip('-n', name, 'addr', 'add', `${podIp}/24`, 'dev', 'eth0');
    ip('-n', name, 'link', 'set', 'eth0', 'up');
    ip('-n', name, 'route', 'add', 'default', 'via', gateway, 'dev', 'eth0');
    ip('-n', name, 'route', 'add', `10.89.${x}.0/24`, 'via', gateway, 'dev', 'eth0', 'proto', 'static');
    const gatewayMac = (JSON.parse(ip('-json', 'link', 'show', hostVeth)) as { address: string }[])[0]!.address;
    ip('-n', name, 'neigh', 'replace', gateway, 'lladdr', gatewayMac, 'dev', 'eth0', 'nud', 'permanent');
    return { name, path: `/var/run/netns/${name}`, hostVeth, x, gateway, podIp, gatewayMac, remove };
  } catch (err) {
    remove();
    throw err;
  }
}


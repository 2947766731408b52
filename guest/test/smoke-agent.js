// Test agent for guest/smoke.sh (CommonJS, run by /sbin/init as /usr/lib/kata-agent/agent.js).
// Prints SMOKE lines that smoke.sh checks, then exits (kata-init powers the VM off).
'use strict';
const fs = require('fs');
const { execFileSync } = require('child_process');

const t0 = process.hrtime.bigint();
const uptime = () => fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0];
const say = (line) => process.stdout.write(`SMOKE ${line}\n`);

function check(name, fn) {
  try {
    say(`${name} ${fn()}`);
  } catch (err) {
    say(`FAIL ${name}: ${err && err.message ? err.message : err}`);
  }
}

say(`node ok ${process.version} uptime=${uptime()} pid=${process.pid} ppid=${process.ppid}`);
check('env', () => ['NODE_PATH', 'UV_THREADPOOL_SIZE', 'HOME', 'PATH'].map((k) => `${k}=${process.env[k]}`).join(' '));
check('crun', () => execFileSync('crun', ['--version'], { encoding: 'utf8' }).split('\n')[0]);
check('ports', () => {
  const base = '/sys/class/virtio-ports';
  return fs.readdirSync(base).map((p) => {
    let name = '';
    try { name = fs.readFileSync(`${base}/${p}/name`, 'utf8').trim(); } catch { /* unnamed port */ }
    return `${p}=${name}`;
  }).join(',');
});
check('mounts', () => fs.readFileSync('/proc/mounts', 'utf8').split('\n')
  .filter(Boolean).map((l) => { const f = l.split(' '); return `${f[1]}:${f[2]}:${f[3].split(',')[0]}`; }).join(' '));
check('cgroup', () => fs.readFileSync('/sys/fs/cgroup/cgroup.subtree_control', 'utf8').trim());
check('modules', () => fs.readFileSync('/proc/modules', 'utf8').split('\n').filter(Boolean).length);
check('rootfs-ro', () => { try { fs.writeFileSync('/x', 'x'); return 'WRITABLE'; } catch (e) { return e.code; } });

// 9p share from the host (smoke.sh exports a dir with hello.txt under tag smoke9p).
check('9p', () => {
  fs.mkdirSync('/run/smoke9p', { recursive: true });
  execFileSync('mount', ['-t', '9p', '-o', 'trans=virtio,version=9p2000.L,msize=524288,cache=loose', 'smoke9p', '/run/smoke9p']);
  return fs.readFileSync('/run/smoke9p/hello.txt', 'utf8').trim();
});
// virtio-fs share of the same directory (tag smokefs, served by virtiofsd).
check('virtiofs', () => {
  fs.mkdirSync('/run/smokefs', { recursive: true });
  execFileSync('mount', ['-t', 'virtiofs', 'smokefs', '/run/smokefs']);
  return fs.readFileSync('/run/smokefs/hello.txt', 'utf8').trim();
});
// A container: overlay of the read-only root as its rootfs, crun run with the default spec.
check('container', () => {
  const b = '/tmp/bundle';
  for (const d of ['rootfs', 'upper', 'work']) fs.mkdirSync(`${b}/${d}`, { recursive: true });
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=/,upperdir=${b}/upper,workdir=${b}/work`, `${b}/rootfs`]);
  execFileSync('crun', ['spec'], { cwd: b });
  const spec = JSON.parse(fs.readFileSync(`${b}/config.json`, 'utf8'));
  spec.process.terminal = false;
  spec.process.args = ['/bin/sh', '-c', 'echo container ok pid=$$ host=$(hostname)'];
  fs.writeFileSync(`${b}/config.json`, JSON.stringify(spec));
  return execFileSync('crun', ['run', '-b', b, 'smoke'], { encoding: 'utf8' }).trim();
});

let pty;
try {
  pty = require('node-pty');
} catch (err) {
  say(`FAIL node-pty require: ${err.message}`);
}
if (pty) {
  let out = '';
  const term = pty.spawn('/bin/sh', ['-c', 'tty; stty size'], { cols: 100, rows: 30, env: process.env });
  term.onData((d) => { out += d; });
  term.onExit(({ exitCode }) => {
    say(`pty exit=${exitCode} out=${JSON.stringify(out.trim())}`);
    finish();
  });
} else {
  finish();
}

function finish() {
  say(`done uptime=${uptime()} agent_ms=${Number(process.hrtime.bigint() - t0) / 1e6}`);
  if (fs.readFileSync('/proc/cmdline', 'utf8').split(/\s+/).includes('smoke.sigterm=1')) {
    // PID 1 must power the VM off on SIGTERM; stay alive so only that can end the VM.
    say('sending SIGTERM to pid 1');
    process.kill(1, 'SIGTERM');
    setInterval(() => {}, 1000);
    return;
  }
  process.exit(Number(process.env.SMOKE_EXIT || 0));
}

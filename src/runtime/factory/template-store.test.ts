import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { silentLogger } from '../../base/logger.js';
import { FileLock } from './file-lock.js';
import type { TemplateInputs } from './template-key.js';
import { BUILD_RETRY_AFTER_MS, MAX_TEMPLATES, TemplateStore } from './template-store.js';

const dir = mkdtempSync(join(tmpdir(), 'kata-ts-tplstore-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const inputs: TemplateInputs = { format: 1, qemuArgs: [], files: { qemu: null, kernel: null, initrd: null, image: null } };
const KEY_A = 'a'.repeat(64);
const KEY_B = 'b'.repeat(64);

async function fakeBuild(store: TemplateStore, key: string, memory = 'ram', family = `family-of-${key}`): Promise<void> {
  const build = await store.newBuildDir();
  writeFileSync(join(build, 'memory'), memory);
  writeFileSync(join(build, 'state'), 'state');
  await store.publish(build, { key, family, inputs, memoryMiB: 1, createdAt: new Date().toISOString(), buildMs: 1, qemuVersion: 'test' });
}
const keep = (key: string, family = `family-of-${key}`) => ({ key, family });

describe('template store (a plain directory, no tmpfs)', () => {
  test('a published template pins through /proc/self/fd paths that outlive its removal', async () => {
    const store = new TemplateStore(join(dir, 't1'), silentLogger);
    assert.deepEqual(await store.pin(KEY_A), { kind: 'missing' });
    mkdirSync(store.root, { recursive: true });
    await fakeBuild(store, KEY_A, 'guest ram');
    const r = await store.pin(KEY_A);
    assert.equal(r.kind, 'pinned');
    if (r.kind !== 'pinned') return;
    assert.match(r.template.memoryPath, new RegExp(`^/proc/${process.pid}/fd/\\d+$`));
    // Removing the template (a rebuild or destroy) does not take the files from a clone being started.
    await store.prune();
    assert.equal(existsSync(store.dirFor(KEY_A)), false);
    assert.equal(readFileSync(r.template.memoryPath, 'utf8'), 'guest ram');
    assert.equal(readFileSync(r.template.statePath, 'utf8'), 'state');
    await r.template.release();
    assert.equal(existsSync(r.template.memoryPath), false);
  });

  test('a memory file written after creation is refused', async () => {
    const store = new TemplateStore(join(dir, 't2'), silentLogger);
    mkdirSync(store.root, { recursive: true });
    await fakeBuild(store, KEY_A);
    const mem = join(store.dirFor(KEY_A), 'memory');
    assert.equal(statSync(mem).mode & 0o777, 0o444, 'sealed read-only');
    chmodSync(mem, 0o644);
    await new Promise((r) => setTimeout(r, 20));
    writeFileSync(mem, 'RAM');
    const r = await store.pin(KEY_A);
    assert.equal(r.kind, 'invalid');
    assert.match((r as { reason: string }).reason, /modified after creation/);
    const listed = await store.list();
    assert.equal(listed.length, 1);
    assert.match(listed[0]!.problem!, /modified/);
  });

  test('prune keeps the named key and the newest of its family, and removes other families and abandoned builds', async () => {
    const store = new TemplateStore(join(dir, 't3'), silentLogger);
    mkdirSync(store.root, { recursive: true });
    const [KEY_C, KEY_D, KEY_E] = ['c', 'd', 'e'].map((c) => c.repeat(64)) as [string, string, string];
    await fakeBuild(store, KEY_A);
    for (const k of [KEY_B, KEY_C, KEY_D, KEY_E]) {
      await fakeBuild(store, k, 'ram', 'f1');
      await new Promise((r) => setTimeout(r, 5));
    }
    const abandoned = await store.newBuildDir();
    assert.equal((await store.list()).length, 6);
    // Keeping B (the oldest of f1): B stays, then the MAX_TEMPLATES - 1 newest others of f1 (E, D).
    assert.equal(MAX_TEMPLATES, 3);
    const removed = await store.prune(keep(KEY_B, 'f1'));
    assert.deepEqual(removed.sort(), [abandoned, store.dirFor(KEY_A), store.dirFor(KEY_C)].sort());
    for (const k of [KEY_B, KEY_D, KEY_E]) assert.equal((await store.pin(k)).kind, 'pinned');
    assert.deepEqual((await store.prune(keep(KEY_B, 'f2'))).sort(), [store.dirFor(KEY_D), store.dirFor(KEY_E)].sort());
  });

  test('a failed build is remembered for a while, per key, and listed', async () => {
    const store = new TemplateStore(join(dir, 't4'), silentLogger);
    mkdirSync(store.root, { recursive: true });
    assert.equal(await store.recentFailure(KEY_A), undefined);
    await store.recordFailure(KEY_A, 'agent did not answer');
    assert.equal((await store.recentFailure(KEY_A))?.reason, 'agent did not answer');
    assert.equal(await store.recentFailure(KEY_B), undefined);
    assert.equal(await store.recentFailure(KEY_A, Date.now() + BUILD_RETRY_AFTER_MS + 1), undefined, 'retried after a while');
    assert.match((await store.list())[0]!.problem!, /failed at .*agent did not answer/);
    await store.prune(keep(KEY_A));
    assert.ok(await store.recentFailure(KEY_A), 'kept by a prune for the same key');
    await store.prune(keep(KEY_B));
    assert.equal(await store.recentFailure(KEY_A), undefined);
  });

  test('the builders lock is exclusive, times out, and is released when its holder goes', async () => {
    const path = join(dir, 'locks', 'x.lock');
    const first = await FileLock.acquire(path, { mode: 'exclusive', timeoutMs: 2000 });
    const t0 = Date.now();
    await assert.rejects(FileLock.acquire(path, { mode: 'exclusive', timeoutMs: 300 }), (e: Error & { code?: string }) => e.code === 'KATA_LOCK_TIMEOUT');
    assert.ok(Date.now() - t0 >= 250);
    const waiting = FileLock.acquire(path, { mode: 'exclusive', timeoutMs: 5000 });
    setTimeout(() => void first.release(), 100);
    const second = await waiting;
    await second.release();
    const ac = new AbortController();
    const third = await FileLock.acquire(path, { mode: 'exclusive', timeoutMs: 5000 });
    const blocked = FileLock.acquire(path, { mode: 'exclusive', timeoutMs: 5000, signal: ac.signal });
    ac.abort();
    await assert.rejects(blocked, (e: Error & { code?: string }) => e.code === 'KATA_CANCELLED');
    await third.release();
  });
});

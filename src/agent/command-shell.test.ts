import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { KataError } from '../base/errors.js';
import { CommandShell } from './command-shell.js';

describe('command shell (a real sh)', () => {
  const shell = new CommandShell(1_000);
  after(() => shell.close());

  test('stdout comes back as it was, with or without a final newline', async () => {
    assert.equal(await shell.run('printf', ['a\\nb\\n']), 'a\nb\n');
    assert.equal(await shell.run('printf', ['no newline']), 'no newline');
    assert.equal(await shell.run('true', []), '');
  });

  test('words are never expanded: quotes, spaces, $, globs and ; reach the command as they are', async () => {
    const hostile = [`it's`, 'a b', '$HOME', '*', '; echo pwned', '`id`', '"', '\\'];
    assert.equal(await shell.run('printf', ['%s|', ...hostile]), hostile.map((w) => `${w}|`).join(''));
  });

  test('a failing command rejects with its stderr; the next one runs normally', async () => {
    await assert.rejects(shell.run('sh', ['-c', 'echo boom >&2; exit 3']), (e: unknown) => e instanceof KataError && /boom/.test(e.message));
    await assert.rejects(shell.run('false', []), /exit status 1/);
    assert.equal(await shell.run('echo', ['ok']), 'ok\n');
  });

  test('commands do not read the shell’s stdin (the protocol channel)', async () => {
    assert.equal(await shell.run('cat', []), '');
    assert.equal(await shell.run('echo', ['still here']), 'still here\n');
  });

  test('concurrent calls run one after another and each gets its own output', async () => {
    const outs = await Promise.all(Array.from({ length: 20 }, (_, i) => shell.run('echo', [String(i)])));
    assert.deepEqual(outs, Array.from({ length: 20 }, (_, i) => `${i}\n`));
  });

  test('a command that hangs times out, takes the shell down with it, and the next command gets a new shell', async () => {
    const t0 = Date.now();
    await assert.rejects(shell.run('sleep', ['30']), (e: unknown) => e instanceof KataError && e.kind === 'DeadlineExceeded');
    assert.ok(Date.now() - t0 < 5_000);
    assert.equal(await shell.run('echo', ['again']), 'again\n');
  });

  test('NUL and newlines in arguments are refused before anything runs', async () => {
    await assert.rejects(shell.run('echo', ['a\nb']), (e: unknown) => e instanceof KataError && e.kind === 'InvalidArgument');
    await assert.rejects(shell.run('echo', ['a\0b']), (e: unknown) => e instanceof KataError && e.kind === 'InvalidArgument');
  });
});

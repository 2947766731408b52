import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { compileGlob, isValidGlob, matchAnyGlob, matchGlob } from './glob.js';

describe('matchGlob (Go filepath.Match rules)', () => {
  const cases: Array<[pattern: string, name: string, expected: boolean]> = [
    ['/usr/bin/qemu-system-x86_64', '/usr/bin/qemu-system-x86_64', true],
    ['/usr/bin/qemu-system-x86_64', '/usr/bin/qemu-system-x86_6', false],
    ['/usr/bin/qemu-system-x86_64', '/usr/bin/qemu-system-x86_645', false],
    ['/usr/bin/*', '/usr/bin/qemu', true],
    ['/usr/bin/*', '/usr/bin/', true],
    ['/usr/bin/*', '/usr/bin/sub/qemu', false],
    ['/usr/*/qemu', '/usr/bin/qemu', true],
    ['/usr/*/qemu', '/usr/a/b/qemu', false],
    ['/opt/kata/bin/qemu-*', '/opt/kata/bin/qemu-system-x86_64', true],
    ['/dev/?random', '/dev/urandom', true],
    ['/dev/?random', '/dev/random', false],
    ['/a?b', '/a/b', false],
    ['/dev/[ur]random', '/dev/urandom', true],
    ['/dev/[ur]random', '/dev/xrandom', false],
    ['/v[0-9]', '/v7', true],
    ['/v[0-9]', '/va', false],
    ['/v[^0-9]', '/va', true],
    ['/v[^0-9]', '/v7', false],
    ['/v[!0-9]', '/va', true],
    ['/a[^x]b', '/a/b', false],
    ['/a[/]b', '/a/b', true],
    ['/a\\*b', '/a*b', true],
    ['/a\\*b', '/axb', false],
    ['/a[\\]]b', '/a]b', true],
    ['/a[\\-]b', '/a-b', true],
    ['/x.y', '/x.y', true],
    ['/x.y', '/xzy', false],
    ['/a+b(c)$^|{1}', '/a+b(c)$^|{1}', true],
    ['/é*', '/éte', true],
    ['/?', '/😀', true],
    ['/*', '/a\nb', true],
  ];
  for (const [pattern, name, expected] of cases) {
    it(`${JSON.stringify(pattern)} ${expected ? 'matches' : 'does not match'} ${JSON.stringify(name)}`, () => {
      assert.equal(matchGlob(pattern, name), expected);
    });
  }

  it('refuses malformed patterns, and they match nothing', () => {
    for (const bad of ['/a[', '/a[b', '/a\\', '/a[]', '/a[]b]', '/a[b-]', '/a[z-a]', '/a[-b]', '/a[^]', '/[\\']) {
      assert.equal(isValidGlob(bad), false, bad);
      assert.equal(matchGlob(bad, bad), false, bad);
      assert.throws(() => compileGlob(bad), /bad glob/);
    }
  });

  it('matchAnyGlob: any pattern matches; an empty list matches nothing', () => {
    assert.equal(matchAnyGlob(['/a', '/b/*'], '/b/c'), true);
    assert.equal(matchAnyGlob(['/a', '/b/*'], '/c'), false);
    assert.equal(matchAnyGlob([], '/anything'), false);
    assert.equal(matchAnyGlob([], ''), false);
  });
});

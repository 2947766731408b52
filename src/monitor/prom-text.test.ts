import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatAddress, isLoopback, parseListenAddress } from './listen-address.js';
import { addLabels, MetricsMerger } from './prom-text.js';

test('addLabels: with, without and with empty label sets; timestamps kept', () => {
  const l = { sandbox_id: 'sb1' };
  assert.equal(addLabels('up 1', l), 'up{sandbox_id="sb1"} 1');
  assert.equal(addLabels('x{a="b"} 2 1700000000000', l), 'x{sandbox_id="sb1",a="b"} 2 1700000000000');
  assert.equal(addLabels('x{} 2', l), 'x{sandbox_id="sb1"} 2');
  assert.equal(addLabels('x{a="}"} 2', l), 'x{sandbox_id="sb1",a="}"} 2');
  assert.equal(addLabels('x 2', { v: 'a"b\\c\nd' }), 'x{v="a\\"b\\\\c\\nd"} 2');
  assert.equal(addLabels('x 2', {}), 'x 2');
});

test('MetricsMerger: families from two sources stay grouped, HELP/TYPE once', () => {
  const shim = (rss: number) =>
    [
      '# HELP kata_hypervisor_resident_memory_bytes RSS',
      '# TYPE kata_hypervisor_resident_memory_bytes gauge',
      `kata_hypervisor_resident_memory_bytes ${rss}`,
      '',
      '# HELP rpc RPC durations',
      '# TYPE rpc histogram',
      'rpc_bucket{action="Create",le="1"} 1',
      'rpc_bucket{action="Create",le="+Inf"} 2',
      'rpc_sum{action="Create"} 3.5',
      'rpc_count{action="Create"} 2',
      '# TYPE kata_guest_load gauge',
      'kata_guest_load{period="1m"} 0.1',
      'untyped_thing 7',
    ].join('\n');
  const m = new MetricsMerger();
  m.add(shim(100), { sandbox_id: 'a' });
  m.add(shim(200), { sandbox_id: 'b' });
  m.add('# HELP kata_monitor_scrapes_total n\n# TYPE kata_monitor_scrapes_total counter\nkata_monitor_scrapes_total 1\n');
  const text = m.render();
  assert.deepEqual(m.names(), ['kata_hypervisor_resident_memory_bytes', 'rpc', 'kata_guest_load', 'untyped_thing', 'kata_monitor_scrapes_total']);
  assert.equal(text.match(/# TYPE kata_hypervisor_resident_memory_bytes/g)?.length, 1);
  assert.equal(text.match(/# HELP rpc /g)?.length, 1);
  assert.match(
    text,
    /# TYPE kata_hypervisor_resident_memory_bytes gauge\nkata_hypervisor_resident_memory_bytes\{sandbox_id="a"\} 100\nkata_hypervisor_resident_memory_bytes\{sandbox_id="b"\} 200\n/,
  );
  // Histogram samples of both sources follow the one TYPE line, before the next family.
  const rpcBlock = text.slice(text.indexOf('# HELP rpc'), text.indexOf('# TYPE kata_guest_load'));
  assert.equal(rpcBlock.split('\n').filter((l) => l.startsWith('rpc_')).length, 8);
  assert.match(rpcBlock, /rpc_sum\{sandbox_id="b",action="Create"\} 3.5/);
  assert.match(text, /^untyped_thing\{sandbox_id="a"\} 7$/m);
  assert.match(text, /^kata_monitor_scrapes_total 1$/m);
  assert.ok(text.endsWith('\n'));
});

test('MetricsMerger: comments other than HELP/TYPE and garbage lines are dropped', () => {
  const m = new MetricsMerger();
  m.add('# just a comment\n{bad} 1\nok 1\r\n');
  assert.equal(m.render(), 'ok 1\n');
  assert.equal(new MetricsMerger().render(), '');
});

test('listen addresses', () => {
  assert.deepEqual(parseListenAddress('127.0.0.1:8090'), { host: '127.0.0.1', port: 8090 });
  assert.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
  assert.deepEqual(parseListenAddress(':9000'), { host: '0.0.0.0', port: 9000 });
  assert.deepEqual(parseListenAddress('localhost:1'), { host: 'localhost', port: 1 });
  assert.throws(() => parseListenAddress('8090'), { kind: 'InvalidArgument' });
  assert.throws(() => parseListenAddress('h:70000'), { kind: 'InvalidArgument' });
  assert.equal(isLoopback('127.0.0.1'), true);
  assert.equal(isLoopback('::1'), true);
  assert.equal(isLoopback('0.0.0.0'), false);
  assert.equal(formatAddress({ host: '::1', port: 5 }), '[::1]:5');
});

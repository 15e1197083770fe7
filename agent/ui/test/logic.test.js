import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  appendColumn, filterRows, formatBytes, formatNs, heatColor, quantileBound, sortRows, workloadName,
} from '../src/logic.js';

const rows = [
  { cgroup: '/b', cpu: 0.5, systemd_unit: 'b.service' },
  { cgroup: '/a', cpu: 0.5, pod: 'web-1', namespace: 'shop', container: 'nginx' },
  { cgroup: '/c', cpu: null },
  { cgroup: '/d', cpu: 1.0 },
];

test('rows sort by a column, ties by cgroup, unknown lowest', () => {
  assert.deepEqual(sortRows(rows, 'cpu').map((r) => r.cgroup), ['/d', '/a', '/b', '/c']);
  assert.deepEqual(sortRows(rows, 'cpu', true).map((r) => r.cgroup), ['/c', '/a', '/b', '/d']);
});

test('the order of equal rows holds between frames whatever order they come in', () => {
  const again = [rows[3], rows[2], rows[1], rows[0]];
  assert.deepEqual(sortRows(again, 'cpu').map((r) => r.cgroup), sortRows(rows, 'cpu').map((r) => r.cgroup));
});

test('filter matches names, namespaces and units in any case', () => {
  assert.deepEqual(filterRows(rows, 'SHOP').map((r) => r.cgroup), ['/a']);
  assert.deepEqual(filterRows(rows, 'b.serv').map((r) => r.cgroup), ['/b']);
  assert.equal(filterRows(rows, '  ').length, 4);
});

test('workload names prefer the pod, then the unit, then the cgroup', () => {
  assert.equal(workloadName(rows[1]), 'shop/web-1/nginx');
  assert.equal(workloadName(rows[0]), 'b.service');
  assert.equal(workloadName(rows[3]), '/d');
});

test('units', () => {
  assert.equal(formatNs(1500), '1.5 µs');
  assert.equal(formatNs(25_000_000), '25 ms');
  assert.equal(formatNs(null), '–');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(100), '100 B');
});

test('heat colours run from the background to the accent', () => {
  assert.equal(heatColor(null, 1, false), 'rgba(0,0,0,0)');
  assert.equal(heatColor(0, 1, false), 'rgb(245,247,250)');
  assert.equal(heatColor(1, 1, false), 'rgb(200,40,20)');
  assert.equal(heatColor(5, 1, true), 'rgb(255,170,60)');
});

test('columns are appended once each and bounded', () => {
  const buffer = { times: [], columns: [] };
  appendColumn(buffer, 1, [1], 2);
  appendColumn(buffer, 1, [9], 2);
  appendColumn(buffer, 2, [2], 2);
  appendColumn(buffer, 3, [3], 2);
  assert.deepEqual(buffer, { times: [2, 3], columns: [[2], [3]] });
});

test('quantile bounds of log2 counts', () => {
  const bounds = [2, 4, 8, null];
  assert.equal(quantileBound([0, 0, 0, 0], bounds, 0.5), null);
  assert.equal(quantileBound([50, 49, 1, 0], bounds, 0.5), 2);
  assert.equal(quantileBound([50, 49, 1, 0], bounds, 0.99), 4);
  assert.equal(quantileBound([50, 49, 0, 1], bounds, 1), null);
});

test('gantt rows: parents above children, time split, failures marked', async () => {
  const { ganttRows } = await import('../src/logic.js');
  const spans = [
    { trace_id: 'a', span_id: '2', parent_span_id: '1', name: 'child', pid: 11, start_unix_ns: 150, end_unix_ns: 250,
      error: true, time: { on_cpu_ns: 50, runqueue_wait_ns: 25 } },
    { trace_id: 'a', span_id: '1', parent_span_id: null, name: 'parent', pid: 10, start_unix_ns: 100, end_unix_ns: 300,
      error: false, time: { on_cpu_ns: 0, runqueue_wait_ns: 0 } },
  ];
  const rows = ganttRows(spans);
  assert.deepEqual(rows.map((r) => [r.name, r.depth]), [['parent (10)', 0], ['child (11)', 1]]);
  assert.deepEqual([rows[1].onCpu, rows[1].runqueue, rows[1].blocked, rows[1].failed], [0.5, 0.25, 0.25, true]);
  assert.equal(rows[0].blocked, 1);
  assert.equal(ganttRows(spans, 1).length, 1);
});

test('task colours are stable', async () => {
  const { taskColour } = await import('../src/logic.js');
  assert.equal(taskColour(42), taskColour(42));
  assert.notEqual(taskColour(42), taskColour(43));
});

test('exit statuses and slow events in words', async () => {
  const { exitText, slowEvents } = await import('../src/logic.js');
  assert.equal(exitText(null), 'running');
  assert.equal(exitText({ kind: 'exited', code: 3 }), 'exit 3');
  assert.equal(exitText({ kind: 'signaled', signal: 9, signal_name: 'SIGKILL' }), 'killed by SIGKILL');
  assert.equal(exitText({ kind: 'unknown' }), 'unknown');
  const events = slowEvents([
    { pid: 1, comm: 'a', slow_syscalls: [{ name: 'read', nr: 0, duration_ns: 5, time_unix_ns: 10 }], slow_waits: [] },
    { pid: 2, comm: 'b', slow_syscalls: [], slow_waits: [{ kind: 'runqueue_wait', duration_ns: 7, end_unix_ns: 20 }] },
  ]);
  assert.deepEqual(events.map((e) => [e.pid, e.what]), [[2, 'runqueue wait of 7 ns'], [1, 'read took 5 ns']]);
});

// Pure helpers of the dashboard (no DOM): formatting, the workload table's order and filter,
// heatmap colours and column buffers. Unit-tested with Node's test runner (test/).

/** Columns of the workload table: key in a frame's row, heading, and how to show it. */
export const WORKLOAD_COLUMNS = [
  { key: 'name', label: 'Workload', format: (v) => v },
  { key: 'cpu', label: 'CPU', format: (v) => formatNumber(v, 2) },
  { key: 'runqueue_p99_ns', label: 'Run-queue p99', format: (v) => formatNs(v) },
  { key: 'involuntary_switches_per_s', label: 'Invol. sw/s', format: (v) => formatNumber(v, 0) },
  { key: 'syscalls_per_s', label: 'Syscalls/s', format: (v) => formatNumber(v, 0) },
  { key: 'syscall_errors_per_s', label: 'Errors/s', format: (v) => formatNumber(v, 0) },
  { key: 'io_bytes_per_s', label: 'Block IO/s', format: (v) => formatBytes(v) },
  { key: 'failed_per_s', label: 'Failed/s', format: (v) => formatNumber(v, 1) },
  { key: 'running', label: 'Procs', format: (v) => formatNumber(v, 0) },
];

/** A workload's display name: pod/container, container, systemd unit, else its cgroup. */
export function workloadName(row) {
  if (row.pod) return `${row.namespace ?? ''}/${row.pod}${row.container ? '/' + row.container : ''}`;
  if (row.container) return row.container;
  if (row.container_id) return `${row.runtime ?? 'container'} ${row.container_id.slice(0, 12)}`;
  if (row.systemd_unit) return row.systemd_unit;
  return row.cgroup || '/';
}

/** The value a column sorts by (names as strings, missing numbers lowest). */
function sortValue(row, key) {
  if (key === 'name') return workloadName(row);
  const value = row[key];
  return value === null || value === undefined ? -Infinity : value;
}

/**
 * Rows sorted by `key` (descending unless `ascending`), ties by cgroup: the same rows keep the
 * same order from one frame to the next, so that nothing jumps while figures are equal.
 */
export function sortRows(rows, key, ascending = false) {
  const sign = ascending ? 1 : -1;
  return [...rows].sort((a, b) => {
    const x = sortValue(a, key);
    const y = sortValue(b, key);
    if (x < y) return -sign;
    if (x > y) return sign;
    return a.cgroup < b.cgroup ? -1 : a.cgroup > b.cgroup ? 1 : 0;
  });
}

/** Rows whose name, cgroup, namespace, pod, container or unit contains `text` (any case). */
export function filterRows(rows, text) {
  const needle = text.trim().toLowerCase();
  if (!needle) return rows;
  return rows.filter((row) =>
    [workloadName(row), row.cgroup, row.namespace, row.pod, row.container, row.systemd_unit]
      .some((field) => typeof field === 'string' && field.toLowerCase().includes(needle)));
}

/** A number with `digits` decimals, '–' when unknown. */
export function formatNumber(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  return value.toFixed(digits);
}

/** A share (0..1) as a percentage. */
export function formatShare(value, digits = 0) {
  if (value === null || value === undefined) return '–';
  return `${(value * 100).toFixed(digits)}%`;
}

/** Nanoseconds in the largest unit that keeps the number at least 1. */
export function formatNs(ns) {
  if (ns === null || ns === undefined) return '–';
  const units = [['s', 1e9], ['ms', 1e6], ['µs', 1e3]];
  for (const [unit, size] of units) {
    if (ns >= size) return `${(ns / size).toFixed(ns >= 10 * size ? 0 : 1)} ${unit}`;
  }
  return `${Math.round(ns)} ns`;
}

/** Bytes in binary units. */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 || value >= 10 ? 0 : 1)} ${units[unit]}`;
}

/** The label of a log2 bucket from its exclusive upper bound (`null`: the last, open). */
export function bucketLabel(belowNs) {
  return belowNs === null ? '≥ max' : `< ${formatNs(belowNs)}`;
}

/**
 * The colour of a heatmap cell: `null` (no data) transparent, else from the background's
 * colour to the accent's by `value / max` (log-scaled for counts when `log`).
 */
export function heatColor(value, max, dark, log = false) {
  if (value === null || value === undefined) return 'rgba(0,0,0,0)';
  let t = max > 0 ? value / max : 0;
  if (log && max > 0) t = value > 0 ? Math.log1p(value) / Math.log1p(max) : 0;
  t = Math.max(0, Math.min(1, t));
  const from = dark ? [24, 28, 36] : [245, 247, 250];
  const to = dark ? [255, 170, 60] : [200, 40, 20];
  const mix = from.map((f, i) => Math.round(f + (to[i] - f) * t));
  return `rgb(${mix[0]},${mix[1]},${mix[2]})`;
}

/**
 * A heatmap's columns kept to the newest `max`: appends `column` (cells by row) at `time`
 * unless that time is already there (a frame seen twice), and returns the buffer.
 */
export function appendColumn(buffer, time, column, max) {
  if (buffer.times.length && buffer.times[buffer.times.length - 1] >= time) return buffer;
  buffer.times.push(time);
  buffer.columns.push(column);
  while (buffer.times.length > max) {
    buffer.times.shift();
    buffer.columns.shift();
  }
  return buffer;
}

/** The q-quantile's bucket bound of a column of log2 counts (`bounds[i]` per bucket). */
export function quantileBound(counts, bounds, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = Math.max(1, Math.ceil(total * q));
  let seen = 0;
  for (let i = 0; i < counts.length; i += 1) {
    seen += counts[i];
    if (seen >= rank) return bounds[i];
  }
  return bounds[bounds.length - 1];
}

/** A stable colour for a task (by pid), distinct enough for neighbours. */
export function taskColour(pid) {
  const hue = (Math.imul(pid, 2654435761) >>> 0) % 360;
  return `hsl(${hue}, 65%, 50%)`;
}

/**
 * Spans laid out as a Gantt chart: newest traces last, each span under its parent (depth),
 * with its time split into on-CPU, run-queue and blocked shares of its length.
 */
export function ganttRows(spans, max = 60) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const depth = (span) => {
    let d = 0;
    let at = span;
    while (at.parent_span_id && byId.has(at.parent_span_id) && d < 32) {
      at = byId.get(at.parent_span_id);
      d += 1;
    }
    return d;
  };
  const ordered = [...spans].sort((a, b) =>
    (a.trace_id < b.trace_id ? -1 : a.trace_id > b.trace_id ? 1 : 0) || a.start_unix_ns - b.start_unix_ns);
  return ordered.slice(-max).map((span) => {
    const length = Math.max(1, span.end_unix_ns - span.start_unix_ns);
    const onCpu = Math.min(1, (span.time?.on_cpu_ns ?? 0) / length);
    const runqueue = Math.min(1 - onCpu, (span.time?.runqueue_wait_ns ?? 0) / length);
    return {
      name: `${span.name} (${span.pid})`,
      depth: depth(span),
      start: span.start_unix_ns,
      end: span.end_unix_ns,
      onCpu,
      runqueue,
      blocked: Math.max(0, 1 - onCpu - runqueue),
      failed: Boolean(span.error),
    };
  });
}

/** An exit status in words: "exit 0", "exit 3", "killed by SIGKILL". */
export function exitText(exit) {
  if (!exit) return 'running';
  if (exit.kind === 'exited') return `exit ${exit.code}`;
  const signal = exit.signal_name ?? exit.signal;
  return signal !== undefined ? `killed by ${typeof signal === 'number' ? `signal ${signal}` : signal}` : exit.kind;
}

/** The slow events of processes (slow syscalls and waits), newest first, at most `max`. */
export function slowEvents(processes, max = 50) {
  const events = [];
  for (const p of processes) {
    for (const s of p.slow_syscalls ?? []) {
      events.push({ at: s.time_unix_ns, pid: p.pid, comm: p.comm, what: `${s.name ?? `syscall ${s.nr}`} took ${formatNs(s.duration_ns)}`, duration: s.duration_ns });
    }
    for (const w of p.slow_waits ?? []) {
      events.push({ at: w.end_unix_ns, pid: p.pid, comm: p.comm, what: `${w.kind.replace('_', ' ')} of ${formatNs(w.duration_ns)}`, duration: w.duration_ns });
    }
  }
  return events.sort((a, b) => b.at - a.at).slice(0, max);
}

// The dashboard: one WebSocket (/api/v1/live) updates every view; the heatmaps start from the
// JSON API's last 5 minutes and then take a column from each frame.
import {
  WORKLOAD_COLUMNS, appendColumn, bucketLabel, filterRows, formatBytes, formatNs, formatNumber,
  exitText, formatShare, ganttRows, heatColor, quantileBound, slowEvents, sortRows,
  taskColour, workloadName,
} from './logic.js';

const HISTORY_SECONDS = 300;
const BUCKETS = 36;
/** Exclusive upper bound of each log2 bucket (the last is open). */
const BOUNDS = Array.from({ length: BUCKETS }, (_, i) => (i === BUCKETS - 1 ? null : 2 ** i));
const $ = (id) => document.getElementById(id);
const dark = () => matchMedia('(prefers-color-scheme: dark)').matches;

const state = {
  view: 'node',
  paused: false,
  socket: null,
  retry: 1000,
  lastFrame: null,
  sort: { key: 'cpu', ascending: false },
  selected: null,
  cpuBusy: { times: [], columns: [] },
  runqueue: { times: [], columns: [] },
  runqueueWorkload: '',
  idleGaps: null,
  busySeries: { times: [], values: [] },
  chart: null,
};

// ---- views ----
for (const button of document.querySelectorAll('nav button')) {
  button.addEventListener('click', () => show(button.dataset.view));
}

function show(view) {
  state.view = view;
  for (const button of document.querySelectorAll('nav button')) {
    button.classList.toggle('active', button.dataset.view === view);
  }
  for (const section of document.querySelectorAll('.view')) {
    section.hidden = section.id !== `view-${view}`;
  }
  if (view === 'heatmaps') drawHeatmaps();
  if (view === 'timeline') refreshTimeline();
  if (view === 'binpacking') refreshPacking();
  if (view === 'node' && state.chart) state.chart.setSize(chartSize());
}

$('pause').addEventListener('click', () => {
  state.paused = !state.paused;
  $('pause').textContent = state.paused ? 'Resume' : 'Pause';
  send({ pause: state.paused });
  feedState(state.paused ? 'paused' : 'live');
});

// ---- the feed ----
function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/live`);
  state.socket = socket;
  socket.addEventListener('open', () => {
    state.retry = 1000;
    feedState(state.paused ? 'paused' : 'live');
    if (state.paused) send({ pause: true });
  });
  socket.addEventListener('message', (event) => {
    const message = JSON.parse(event.data);
    if (message.type === 'frame') onFrame(message);
    else if (message.type === 'error') console.warn('live feed:', message.error);
  });
  socket.addEventListener('close', () => {
    feedState('down');
    // A refused session (logged out, agent restarted) goes back to the login page.
    fetch('/ui/app.js', { method: 'HEAD' }).then((r) => {
      if (r.status === 401) location.href = '/ui/login';
    }).catch(() => {});
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 30000);
  });
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

function feedState(kind) {
  const el = $('feed-state');
  el.className = `feed ${kind}`;
  el.textContent = { live: 'live', paused: 'paused', down: 'disconnected, retrying…' }[kind];
}

function onFrame(frame) {
  state.lastFrame = frame;
  const seq = $('frame-seq');
  seq.textContent = `#${frame.seq}`;
  seq.dataset.seq = frame.seq;
  seq.dataset.unixMs = frame.unix_ms;
  if (frame.node) renderNode(frame.node, frame.unix_ms);
  if (frame.agent) renderAgent(frame.agent);
  if (frame.workloads) renderWorkloads(frame.workloads);
  if (frame.heatmaps) {
    appendColumn(state.cpuBusy, frame.heatmaps.unix_ms, frame.heatmaps.cpu_busy, HISTORY_SECONDS);
    if (!state.runqueueWorkload) {
      appendColumn(state.runqueue, frame.heatmaps.unix_ms, frame.heatmaps.node_runqueue, HISTORY_SECONDS);
    }
    if (state.view === 'heatmaps') drawHeatmaps();
  }
}

// ---- node ----
function renderNode(node, unixMs) {
  const seen = node.cpu_busy.filter((v) => v !== null).length;
  $('cpu-total').textContent = formatNumber(node.busy_cpus, 2);
  $('cpu-count').textContent = node.cpu_busy.length;
  const bars = $('cpu-bars');
  bars.dataset.unixMs = unixMs;
  bars.replaceChildren(...node.cpu_busy.map((share, cpu) => {
    const bar = document.createElement('div');
    bar.style.height = `${Math.round((share ?? 0) * 100)}%`;
    bar.title = `CPU ${cpu}: ${formatShare(share)}`;
    bar.dataset.cpu = cpu;
    bar.dataset.busy = share ?? '';
    return bar;
  }));
  bars.title = `${seen} CPUs seen`;
  $('idle-fragmented').textContent = formatShare(node.idle_fragmented_share);
  if (node.memory_total_bytes) {
    const used = 1 - node.memory_available_bytes / node.memory_total_bytes;
    $('memory-used').textContent = formatShare(used);
    $('memory-total').textContent = formatBytes(node.memory_total_bytes);
  }
  $('memory-fragmented').textContent = formatShare(node.memory_fragmented_share);
  const pressure = $('pressure');
  pressure.replaceChildren(...node.pressure.flatMap((p) => pair(p.resource, formatShare(p.some, 1))));
  if (!node.pressure.length) pressure.replaceChildren(...pair('PSI', 'off in this kernel'));
  $('proc-running').textContent = node.processes.running;
  $('proc-started').textContent = formatNumber(node.processes.started_per_s, 1);
  $('proc-failed').textContent = formatNumber(node.processes.failed_per_s, 1);
  appendBusy(unixMs, node.busy_cpus);
}

function pair(name, value) {
  const dt = document.createElement('dt');
  dt.textContent = name;
  const dd = document.createElement('dd');
  dd.textContent = value;
  return [dt, dd];
}

function chartSize() {
  const width = Math.max(200, $('busy-chart').clientWidth || 300);
  return { width, height: 160 };
}

function appendBusy(unixMs, busy) {
  const series = state.busySeries;
  if (series.times.length && series.times[series.times.length - 1] >= unixMs / 1000) return;
  series.times.push(unixMs / 1000);
  series.values.push(busy);
  while (series.times.length > HISTORY_SECONDS) {
    series.times.shift();
    series.values.shift();
  }
  if (!window.uPlot) return;
  if (!state.chart) {
    const stroke = getComputedStyle(document.documentElement).getPropertyValue('--accent').trim();
    state.chart = new window.uPlot({
      ...chartSize(),
      series: [{}, { label: 'busy CPUs', stroke, width: 1.5, value: (_, v) => formatNumber(v, 2) }],
      axes: [{ stroke: 'currentColor' }, { stroke: 'currentColor' }],
      scales: { y: { range: (_, min, max) => [0, Math.max(1, max)] } },
    }, [series.times, series.values], $('busy-chart'));
  } else if (state.view === 'node') {
    state.chart.setData([series.times, series.values]);
  }
}

function renderAgent(agent) {
  const status = agent.health?.status ?? 'starting';
  const el = $('agent-status');
  el.textContent = status;
  el.className = `status ${status}`;
  $('agent-cpu').textContent = formatShare(agent.cpu, 1);
  $('agent-rss').textContent = formatBytes(agent.rss_bytes);
  $('agent-bpf').textContent = agent.bpf_run_ns ? formatNs(agent.bpf_run_ns) : '– (bpf_stats off)';
  $('agent-lost').textContent = agent.lost_total;
  state.componentHealth = Object.entries(agent.health?.components ?? {})
    .filter(([, c]) => c.status === 'degraded' || c.status === 'unhealthy');
  renderHealth();
}

// ---- workloads ----
const headRow = document.querySelector('#workloads thead tr');
for (const column of WORKLOAD_COLUMNS) {
  const th = document.createElement('th');
  th.textContent = column.label;
  th.dataset.key = column.key;
  th.addEventListener('click', () => {
    state.sort = state.sort.key === column.key
      ? { key: column.key, ascending: !state.sort.ascending }
      : { key: column.key, ascending: column.key === 'name' };
    if (state.lastFrame?.workloads) renderWorkloads(state.lastFrame.workloads);
  });
  headRow.append(th);
}
$('filter').addEventListener('input', () => {
  if (state.lastFrame?.workloads) renderWorkloads(state.lastFrame.workloads);
});

function renderWorkloads(table) {
  for (const th of headRow.children) {
    th.classList.toggle('sorted', th.dataset.key === state.sort.key);
    th.classList.toggle('ascending', th.dataset.key === state.sort.key && state.sort.ascending);
  }
  const rows = sortRows(filterRows(table.rows, $('filter').value), state.sort.key, state.sort.ascending);
  $('workload-count').textContent = `${rows.length} shown of ${table.total} workloads` +
    (table.left_out ? ` (${table.left_out} quietest not in the feed)` : '');
  const body = document.querySelector('#workloads tbody');
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement('tr');
    tr.dataset.cgroup = row.cgroup;
    tr.classList.toggle('selected', row.cgroup === state.selected);
    for (const column of WORKLOAD_COLUMNS) {
      const td = document.createElement('td');
      const value = column.key === 'name' ? workloadName(row) : row[column.key];
      td.textContent = column.format(value);
      td.dataset.key = column.key;
      if (typeof value === 'number') td.dataset.value = value;
      if (column.key === 'name') {
        for (const stateName of Object.keys(row.states ?? {})) {
          const badge = document.createElement('span');
          badge.className = 'state';
          badge.textContent = stateName;
          badge.title = row.states[stateName];
          td.append(badge);
        }
      }
      tr.append(td);
    }
    tr.addEventListener('click', () => select(row));
    return tr;
  }));
  const top = $('top-workloads');
  top.replaceChildren(...sortRows(table.rows, 'cpu').slice(0, 5).map((row) => {
    const li = document.createElement('li');
    li.textContent = `${workloadName(row)}: ${formatNumber(row.cpu, 2)} CPU, run-queue p99 ${formatNs(row.runqueue_p99_ns)}`;
    li.dataset.cgroup = row.cgroup;
    return li;
  }));
  updateWorkloadChoices(table.rows);
  state.workloadHealth = table.rows.filter((row) => Object.keys(row.states ?? {}).length);
  renderHealth();
  const selected = table.rows.find((r) => r.cgroup === state.selected);
  if (selected) renderDetail(selected);
}

/** The agent's components and the workloads not healthy, each with since when and why. */
function renderHealth() {
  const at = (unix) => (unix ? new Date(unix * 1000).toLocaleTimeString() : '?');
  const items = [
    ...(state.componentHealth ?? []).map(([name, c]) =>
      [`agent ${name}: ${c.status} since ${at(c.since)}`, c.message, c.status]),
    ...(state.workloadHealth ?? []).map((row) =>
      [`${workloadName(row)}: ${Object.keys(row.states).join(', ')} since ${at(row.states_since)}`,
        Object.values(row.states).join('; '), 'degraded']),
  ];
  const list = $('health-list');
  if (!items.length) {
    const li = document.createElement('li');
    li.textContent = 'Every component of the agent and every workload is healthy.';
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...items.map(([what, why, status]) => {
    const li = document.createElement('li');
    const head = document.createElement('strong');
    head.className = `status ${status}`;
    head.textContent = what;
    li.append(head, `: ${why}`);
    return li;
  }));
}

function select(row) {
  state.selected = row.cgroup;
  renderDetail(row);
  loadDetail();
  document.querySelectorAll('#workloads tbody tr')
    .forEach((tr) => tr.classList.toggle('selected', tr.dataset.cgroup === row.cgroup));
}

function renderDetail(row) {
  $('workload-detail').hidden = false;
  $('detail-name').textContent = workloadName(row);
  const figures = [
    ['cgroup', row.cgroup],
    ['CPU', formatNumber(row.cpu, 3)],
    ['run-queue waits', formatNumber(row.runqueue_waits, 0)],
    ['run-queue p50 / p99', `${formatNs(row.runqueue_p50_ns)} / ${formatNs(row.runqueue_p99_ns)}`],
    ['involuntary switches/s', formatNumber(row.involuntary_switches_per_s, 0)],
    ['syscalls/s (errors/s)', `${formatNumber(row.syscalls_per_s, 0)} (${formatNumber(row.syscall_errors_per_s, 0)})`],
    ['block IO/s', formatBytes(row.io_bytes_per_s)],
    ['started/s, failed/s', `${formatNumber(row.started_per_s, 1)}, ${formatNumber(row.failed_per_s, 1)}`],
    ...Object.entries(row.states ?? {}),
    ...(row.states_since ? [['in these states since', new Date(row.states_since * 1000).toLocaleTimeString()]] : []),
  ];
  $('detail-figures').replaceChildren(...figures.flatMap(([k, v]) => pair(k, v)));
}

/** A small table: `columns` are [heading, (row) => text]. */
function table(title, columns, rows, wide = false) {
  const section = document.createElement('section');
  if (wide) section.className = 'wide-section';
  const h = document.createElement('h3');
  h.textContent = title;
  section.append(h);
  if (!rows.length) {
    const p = document.createElement('p');
    p.className = 'muted';
    p.textContent = 'none';
    section.append(p);
    return section;
  }
  const wrap = document.createElement('div');
  wrap.className = 'table-wrap';
  const t = document.createElement('table');
  const head = document.createElement('tr');
  for (const [name] of columns) {
    const th = document.createElement('th');
    th.textContent = name;
    head.append(th);
  }
  t.append(head);
  for (const row of rows) {
    const tr = document.createElement('tr');
    for (const [, text] of columns) {
      const td = document.createElement('td');
      td.textContent = text(row);
      tr.append(td);
    }
    t.append(tr);
  }
  wrap.append(t);
  section.append(wrap);
  return section;
}

/** The selected workload's page from /api/v1/workloads/detail. */
async function loadDetail() {
  const cgroup = state.selected;
  if (!cgroup) return;
  const response = await fetch(`/api/v1/workloads/detail?cgroup=${encodeURIComponent(cgroup)}`);
  if (!response.ok || state.selected !== cgroup) return;
  const d = await response.json();
  const time = (ns) => (ns ? new Date(ns / 1e6).toLocaleTimeString() : '–');
  const hist = document.createElement('section');
  const h = document.createElement('h3');
  h.textContent = `Run-queue waits since the agent started (p50 ${formatNs(d.sched.runqueue_p50_ns)}, p99 ${formatNs(d.sched.runqueue_p99_ns)})`;
  const bars = document.createElement('div');
  bars.className = 'hist';
  const most = Math.max(1, ...d.sched.runqueue.map((b) => b.count));
  for (const b of d.sched.runqueue) {
    const bar = document.createElement('div');
    bar.style.height = `${(b.count / most) * 100}%`;
    bar.title = `${bucketLabel(b.below_ns)}: ${b.count}`;
    bars.append(bar);
  }
  hist.append(h, bars);
  $('detail-more').replaceChildren(
    hist,
    table(`Top syscalls (${d.syscalls_total} kinds)`, [
      ['syscall', (r) => r.name ?? `#${r.nr}`], ['count', (r) => r.count], ['errors', (r) => r.errors],
      ['p99', (r) => formatNs(r.p99_ns)]], d.syscalls),
    table('Errors by errno', [
      ['syscall', (r) => r.syscall ?? `#${r.nr}`], ['errno', (r) => r.errno_name ?? r.errno], ['count', (r) => r.count]], d.errors),
    table('Block IO', [['device', (r) => r.device], ['op', (r) => r.op], ['bytes', (r) => formatBytes(r.bytes)], ['requests', (r) => r.requests]], d.block_io),
    table(`Processes (${d.live_total} live)`, [
      ['pid', (p) => p.pid], ['command', (p) => p.comm], ['CPU time', (p) => formatNs(p.sched.on_cpu_ns)],
      ['threads', (p) => p.threads.live], ['started', (p) => time(p.start_time_unix_ns)]], d.live.slice(0, 50), true),
    table(`Recent exits (${d.exited_total} kept; ${d.exited_failure} failed, ${d.exited_signal} killed since start)`, [
      ['pid', (p) => p.pid], ['command', (p) => p.comm], ['status', (p) => exitText(p.exit)], ['at', (p) => time(p.exit_time_unix_ns)]],
    d.exited.slice(0, 30), true),
    table('Slow events', [['at', (e) => time(e.at)], ['pid', (e) => e.pid], ['command', (e) => e.comm], ['what', (e) => e.what]],
      slowEvents([...d.live, ...d.exited]), true),
  );
  $('detail-more').dataset.cgroup = cgroup;
}

setInterval(() => {
  if (!state.paused && state.view === 'workloads' && state.selected) loadDetail();
}, 5000);

function updateWorkloadChoices(rows) {
  const select = $('heat-workload');
  const known = new Set([...select.options].map((o) => o.value));
  for (const row of sortRows(rows, 'name', true)) {
    if (!known.has(row.cgroup)) {
      const option = document.createElement('option');
      option.value = row.cgroup;
      option.textContent = workloadName(row);
      select.append(option);
    }
  }
}

$('heat-workload').addEventListener('change', async (event) => {
  state.runqueueWorkload = event.target.value;
  await loadRunqueue();
  drawHeatmaps();
});

// ---- timeline ----
const timeline = { frozen: false, data: null, busy: false, ticks: 0 };

$('tl-freeze').addEventListener('click', () => {
  timeline.frozen = !timeline.frozen;
  $('tl-freeze').textContent = timeline.frozen ? 'Unfreeze' : 'Freeze';
  if (!timeline.frozen) refreshTimeline();
});
$('tl-seconds').addEventListener('change', () => refreshTimeline());
$('tl-download').addEventListener('click', async () => {
  const seconds = $('tl-seconds').value;
  const response = await fetch(`/api/v1/viz/timeline/trace?seconds=${seconds}`);
  if (!response.ok) {
    $('tl-state').textContent = `download failed: ${response.status}`;
    return;
  }
  const blob = await response.blob();
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = 'taskscope-timeline.json';
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
});

async function refreshTimeline() {
  if (timeline.busy || timeline.frozen || state.paused || state.view !== 'timeline') return;
  timeline.busy = true;
  try {
    const canvas = $('tl-cpus');
    const columns = Math.max(10, Math.min(2000, Math.floor(canvas.clientWidth || 600)));
    const response = await fetch(`/api/v1/viz/timeline?seconds=${$('tl-seconds').value}&columns=${columns}`);
    if (response.ok) {
      timeline.data = await response.json();
      drawTimeline(timeline.data);
    } else {
      $('tl-state').textContent = `timeline: ${response.status}`;
    }
    // The process trees change slower than the CPUs: every third refresh.
    if (timeline.ticks % 3 === 0) {
      const spans = await fetch('/api/v1/spans?limit=300');
      if (spans.ok) drawGantt((await spans.json()).spans);
    }
    timeline.ticks += 1;
  } catch (err) {
    $('tl-state').textContent = `timeline: ${err.message}`;
  } finally {
    timeline.busy = false;
  }
}

function drawTimeline(data) {
  const canvas = $('tl-cpus');
  const rowHeight = 22;
  canvas.height = Math.max(1, data.cpus.length) * rowHeight;
  canvas.width = data.columns;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  // Columns before the recorder started have nothing to show: shaded.
  const recordedFrom = data.recording_since_unix_ms ?? data.to_unix_ms;
  const unrecorded = Math.max(0, Math.min(data.columns, Math.floor(((recordedFrom - data.from_unix_ms) * 1e6) / data.column_ns)));
  ctx.fillStyle = 'rgba(128,128,128,0.15)';
  ctx.fillRect(0, 0, unrecorded, canvas.height);
  const fg = getComputedStyle(document.documentElement).getPropertyValue('--muted').trim();
  ctx.font = '11px system-ui, sans-serif';
  data.cpus.forEach((cpu, row) => {
    for (const [from, to, task] of cpu.runs) {
      ctx.fillStyle = taskColour(data.tasks[task].pid);
      ctx.fillRect(from, row * rowHeight + 2, to - from, rowHeight - 4);
    }
    ctx.fillStyle = fg;
    ctx.fillText(`CPU ${cpu.cpu}`, 2, row * rowHeight + rowHeight - 7);
  });
  canvas.dataset.runs = data.cpus.reduce((n, c) => n + c.runs.length, 0);
  const since = data.recording_since_unix_ms
    ? `recording since ${new Date(data.recording_since_unix_ms).toLocaleTimeString()}` : 'recording started';
  $('tl-state').textContent = `${since}; ${data.switches} switches in the window` +
    (data.switches_evicted ? `, ${data.switches_evicted} let go (bound)` : '');
  $('tl-legend').replaceChildren(...data.tasks.slice(0, 12).map((t) => {
    const li = document.createElement('li');
    const swatch = document.createElement('i');
    swatch.style.background = taskColour(t.pid);
    li.append(swatch, `${t.comm || '?'} (${t.pid}): ${formatNs(t.on_cpu_ns)}`);
    return li;
  }));
}

$('tl-cpus').addEventListener('mousemove', (event) => {
  const data = timeline.data;
  if (!data) return;
  const canvas = event.currentTarget;
  const rect = canvas.getBoundingClientRect();
  const column = Math.floor(((event.clientX - rect.left) / rect.width) * data.columns);
  const row = Math.floor(((event.clientY - rect.top) / rect.height) * data.cpus.length);
  const cpu = data.cpus[row];
  const run = cpu?.runs.find(([from, to]) => column >= from && column < to);
  const at = new Date(data.from_unix_ms + (column * data.column_ns) / 1e6).toLocaleTimeString();
  $('tl-hover').textContent = cpu
    ? `CPU ${cpu.cpu} at ${at}: ${run ? `${data.tasks[run[2]].comm} (${data.tasks[run[2]].pid})` : 'idle'}`
    : '\u00a0';
});

function drawGantt(spans) {
  const rows = ganttRows(spans);
  const canvas = $('tl-spans');
  const rowHeight = 16;
  canvas.width = canvas.clientWidth || 600;
  canvas.height = Math.max(1, rows.length) * rowHeight;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!rows.length) return;
  const from = Math.min(...rows.map((r) => r.start));
  const to = Math.max(...rows.map((r) => r.end));
  const x = (t) => ((t - from) / Math.max(1, to - from)) * canvas.width;
  const styles = getComputedStyle(document.documentElement);
  const colours = ['--oncpu', '--warn', '--muted'].map((v) => styles.getPropertyValue(v).trim());
  ctx.font = '11px system-ui, sans-serif';
  rows.forEach((r, i) => {
    const y = i * rowHeight;
    const left = x(r.start);
    const width = Math.max(1, x(r.end) - left);
    let at = left;
    [r.onCpu, r.runqueue, r.blocked].forEach((share, k) => {
      ctx.fillStyle = colours[k];
      ctx.globalAlpha = k === 2 ? 0.45 : 1;
      ctx.fillRect(at, y + 2, width * share, rowHeight - 4);
      at += width * share;
    });
    ctx.globalAlpha = 1;
    if (r.failed) {
      ctx.strokeStyle = styles.getPropertyValue('--bad').trim();
      ctx.lineWidth = 2;
      ctx.strokeRect(left, y + 2, width, rowHeight - 4);
    }
    ctx.fillStyle = styles.getPropertyValue('--fg').trim();
    ctx.fillText(`${'  '.repeat(r.depth)}${r.name}${r.failed ? ' ✗' : ''}`, Math.min(left + 2, canvas.width - 120), y + rowHeight - 4);
  });
  canvas.dataset.rows = rows.length;
}

setInterval(refreshTimeline, 1000);

// ---- bin-packing ----
const SEGMENT_COLOURS = ['#c82814', '#1f6feb', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#0a7d8c', '#6e7781'];

/** The view from /api/v1/viz/binpacking (every workload), once a second while it shows. */
async function refreshPacking() {
  if (state.view !== 'binpacking' || state.paused) return;
  const response = await fetch('/api/v1/viz/binpacking').catch(() => null);
  if (!response?.ok) {
    $('bp-cpu-summary').textContent = `not available: ${response?.status ?? 'no answer'}`;
    return;
  }
  renderPacking(await response.json());
}

setInterval(refreshPacking, 1000);

function renderPacking(view) {
  const resources = [
    ['cpu', view.cpu, (v) => `${formatNumber(v, 2)} CPU`],
    ['memory', view.memory, (v) => formatBytes(v)],
  ];
  for (const [name, p, format] of resources) {
    const capacity = p.capacity;
    $(`bp-${name}-summary`).textContent =
      `${format(p.used)} used of ${format(capacity)}; limits add up to ${format(p.limited)}` +
      (p.requested ? `, requests to ${format(p.requested)}` : '') +
      (p.rows.length > 30 || p.rows_left_out ? ` (30 of ${p.rows.length + p.rows_left_out} workloads listed)` : '');
    const bar = $(`bp-${name}`);
    const part = (value, cls, colour, title) => {
      const div = document.createElement('div');
      div.style.width = `${capacity ? Math.min(100, (value / capacity) * 100) : 0}%`;
      if (cls) div.className = cls;
      if (colour) div.style.background = colour;
      div.title = title;
      return div;
    };
    bar.replaceChildren(
      ...p.segments.map((w, i) => part(w.used, '', SEGMENT_COLOURS[i % SEGMENT_COLOURS.length], `${workloadName(w)}: ${format(w.used)}`)),
      part(p.others, 'others', null, `others: ${format(p.others)}`),
      part(p.free, 'free', null, `free: ${format(p.free)}`),
    );
    const scale = Math.max(...p.rows.map((w) => Math.max(w.used, w.limit ?? 0, w.request ?? 0)), 1e-9);
    $(`bp-${name}-rows`).replaceChildren(...p.rows.slice(0, 30).map((w) => {
      const li = document.createElement('li');
      li.dataset.cgroup = w.cgroup;
      li.dataset.used = w.used;
      if (w.limit !== null) li.dataset.limit = w.limit;
      li.classList.toggle('squeezed', w.squeezed);
      const label = document.createElement('span');
      label.className = 'name';
      label.textContent = workloadName(w);
      const track = document.createElement('span');
      track.className = 'track';
      const used = document.createElement('span');
      used.className = 'used';
      used.style.width = `${(w.used / scale) * 100}%`;
      track.append(used);
      for (const [key, cls] of [['limit', 'limit'], ['request', 'request']]) {
        if (w[key] !== null) {
          const mark = document.createElement('span');
          mark.className = cls;
          mark.style.left = `calc(${(w[key] / scale) * 100}% - 1px)`;
          mark.title = `${key} ${format(w[key])}`;
          track.append(mark);
        }
      }
      const figures = document.createElement('span');
      figures.className = 'figures';
      figures.textContent = `${format(w.used)}` +
        (w.limit !== null ? ` of limit ${format(w.limit)} (${formatShare(w.of_limit)})` : ', no limit') +
        (w.request !== null ? `, request ${format(w.request)}` : '');
      li.append(label, track, figures);
      return li;
    }));
  }
}

// ---- heatmaps ----
async function heatmap(kind, extra = '') {
  const response = await fetch(`/api/v1/viz/heatmap?kind=${kind}&seconds=${HISTORY_SECONDS}${extra}`);
  if (!response.ok) throw new Error(`${kind}: ${response.status}`);
  return response.json();
}

/** A heatmap's rows as full 36-bucket columns (the API lists only the non-empty range). */
function bucketColumns(map) {
  const rows = map.y.values.map((below) => (below === null ? BUCKETS - 1 : Math.log2(below)));
  return map.x.values.map((_, col) => {
    const column = new Array(BUCKETS).fill(0);
    rows.forEach((bucket, row) => { column[bucket] = map.cells[row][col] ?? 0; });
    return column;
  });
}

async function loadRunqueue() {
  const extra = state.runqueueWorkload ? `&workload=${encodeURIComponent(state.runqueueWorkload)}` : '';
  const map = await heatmap('runqueue', extra);
  state.runqueue = { times: [...map.x.values], columns: bucketColumns(map) };
}

async function loadHeatmaps() {
  try {
    const cpu = await heatmap('cpu_busy');
    const columns = cpu.x.values.map((_, col) => cpu.cells.map((row) => row[col]));
    state.cpuBusy = { times: [...cpu.x.values], columns };
    // The busy-CPUs chart starts from the same history.
    columns.forEach((column, i) => {
      appendBusy(cpu.x.values[i], column.reduce((sum, v) => sum + (v ?? 0), 0));
    });
    await loadRunqueue();
    state.idleGaps = await heatmap('idle_gaps');
  } catch (err) {
    console.warn('heatmaps:', err);
  }
  if (state.view === 'heatmaps') drawHeatmaps();
}

function drawHeatmaps() {
  drawGrid($('heat-cpu'), state.cpuBusy.columns, 1, false);
  const rq = state.runqueue.columns;
  const used = rq.reduce((acc, column) => {
    column.forEach((v, i) => { if (v > 0) { acc.lo = Math.min(acc.lo, i); acc.hi = Math.max(acc.hi, i); } });
    return acc;
  }, { lo: BUCKETS, hi: -1 });
  const lo = used.hi < 0 ? 0 : used.lo;
  const hi = used.hi < 0 ? 0 : used.hi;
  const trimmed = rq.map((column) => column.slice(lo, hi + 1));
  const max = Math.max(0, ...trimmed.flat());
  const canvas = $('heat-runqueue');
  drawGrid(canvas, trimmed, max, true);
  const quantile = (q) => rq.map((column) => {
    const bound = quantileBound(column, BOUNDS, q);
    return bound === null ? null : (bound === null ? BUCKETS - 1 : Math.log2(bound)) - lo;
  });
  drawLine(canvas, quantile(0.5), hi - lo + 1, true);
  drawLine(canvas, quantile(0.99), hi - lo + 1, false);
  canvas.title = `${bucketLabel(BOUNDS[lo])} (bottom) to ${bucketLabel(BOUNDS[hi])} (top)`;
  if (state.idleGaps) {
    const idle = state.idleGaps;
    const idleMax = Math.max(0, ...idle.cells.flat().filter((v) => v !== null));
    // Rows CPUs, columns lengths: drawn with lengths across, CPUs down.
    const columns = idle.x.values.map((_, col) => idle.cells.map((row) => row[col]));
    drawGrid($('heat-idle'), columns, idleMax, false);
    $('heat-idle').title = idle.x.values.map(bucketLabel).join(', ');
  }
}

/** Draws columns of cells (row 0 at the bottom) across the canvas's width. */
function drawGrid(canvas, columns, max, log) {
  canvas.width = canvas.clientWidth || 600;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!columns.length) return;
  const rows = columns[0].length || 1;
  const w = canvas.width / Math.max(columns.length, 1);
  const h = canvas.height / rows;
  columns.forEach((column, x) => {
    column.forEach((value, y) => {
      ctx.fillStyle = heatColor(value, max, dark(), log);
      ctx.fillRect(x * w, canvas.height - (y + 1) * h, Math.ceil(w), Math.ceil(h));
    });
  });
  canvas.dataset.columns = columns.length;
}

function drawLine(canvas, rowsByColumn, rows, dashed) {
  const ctx = canvas.getContext('2d');
  const w = canvas.width / Math.max(rowsByColumn.length, 1);
  const h = canvas.height / rows;
  ctx.strokeStyle = dark() ? '#e6e9ee' : '#1b1f24';
  ctx.setLineDash(dashed ? [4, 3] : []);
  ctx.beginPath();
  let drawing = false;
  rowsByColumn.forEach((row, x) => {
    if (row === null) { drawing = false; return; }
    const px = x * w + w / 2;
    const py = canvas.height - (row + 0.5) * h;
    if (drawing) ctx.lineTo(px, py); else ctx.moveTo(px, py);
    drawing = true;
  });
  ctx.stroke();
}

// What the frames do not carry: the idle gaps (over the whole window) and a picked
// workload's run-queue waits.
setInterval(async () => {
  if (state.paused || state.view !== 'heatmaps') return;
  try {
    state.idleGaps = await heatmap('idle_gaps');
    if (state.runqueueWorkload) await loadRunqueue();
    drawHeatmaps();
  } catch { /* the next try */ }
}, 5000);
addEventListener('resize', () => {
  if (state.chart) state.chart.setSize(chartSize());
  if (state.view === 'heatmaps') drawHeatmaps();
});

loadHeatmaps();
connect();

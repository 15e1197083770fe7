// Drives the dashboard in Debian's Chromium against a running agent (tests/tests/dashboard.rs
// starts both and a known workload). Prints each compared pair; exits non-zero on the first
// check that fails.
//
// Environment: TASKSCOPE_URL (http://127.0.0.1:PORT), TASKSCOPE_TOKEN, SPIN_CGROUP (the cgroup
// path of a workload spinning one CPU) and SPIN_CGROUP_DIR (its directory), SCREENSHOT_DIR, CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.TASKSCOPE_URL;
const token = process.env.TASKSCOPE_TOKEN;
const spinCgroup = process.env.SPIN_CGROUP;
const shots = process.env.SCREENSHOT_DIR;
mkdirSync(shots, { recursive: true });

function check(what, ok, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? `: ${detail}` : ''}`);
  if (!ok) throw new Error(`check failed: ${what} ${detail}`);
}

async function api(path) {
  const response = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

const profile = mkdtempSync(join(tmpdir(), 'taskscope-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  viewport: { width: 1280, height: 900 },
});
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('pageerror', (err) => console.log(`page error: ${err.message}`));

  // Without a session: the page sends the browser to the login, the data and the feed refuse.
  await page.goto(`${base}/ui/`);
  check('no session: /ui/ shows the login page', page.url().endsWith('/ui/login'), page.url());
  const refused = await page.evaluate(async () => {
    const data = (await fetch('/api/v1/viz/heatmap?kind=cpu_busy')).status;
    const app = (await fetch('/ui/app.js')).status;
    const feed = await new Promise((resolve) => {
      const socket = new WebSocket(`ws://${location.host}/api/v1/live`);
      socket.onopen = () => resolve('open');
      socket.onerror = () => resolve('refused');
    });
    return { data, app, feed };
  });
  check('no session: the API, the assets and the feed refuse', refused.data === 401 && refused.app === 401 && refused.feed === 'refused', JSON.stringify(refused));

  await page.fill('#token', 'not-the-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('#login-error:not([hidden])');
  check('a wrong token is refused with a message', (await page.textContent('#login-error')).includes('Wrong token'));

  await page.fill('#token', token);
  await page.click('button[type=submit]');
  await page.waitForURL(`${base}/ui/`);
  const cookies = await browser.cookies(base);
  const session = cookies.find((c) => c.name === 'taskscope_session');
  check('the session cookie is HttpOnly and SameSite=Strict', session?.httpOnly === true && session?.sameSite === 'Strict');

  // Live frames arrive and change.
  await page.waitForFunction(() => Number(document.getElementById('frame-seq').dataset.seq) > 0, null, { timeout: 15000 });
  const seq1 = Number(await page.getAttribute('#frame-seq', 'data-seq'));
  await page.waitForFunction((s) => Number(document.getElementById('frame-seq').dataset.seq) > s, seq1, { timeout: 5000 });
  const seq2 = Number(await page.getAttribute('#frame-seq', 'data-seq'));
  check('live frames arrive and change', seq2 > seq1, `#${seq1} then #${seq2}`);
  check('the feed shows as live', (await page.textContent('#feed-state')) === 'live');

  // The per-CPU bars equal the API's cpu_busy heatmap column of the same second.
  const bars = await page.evaluate(() => {
    const el = document.getElementById('cpu-bars');
    return { unixMs: Number(el.dataset.unixMs), busy: [...el.children].map((b) => (b.dataset.busy === '' ? null : Number(b.dataset.busy))) };
  });
  const cpuMap = await api('/api/v1/viz/heatmap?kind=cpu_busy&seconds=30');
  const column = cpuMap.x.values.indexOf(bars.unixMs);
  check('the bars\' second is in the API\'s heatmap', column >= 0, `${bars.unixMs}`);
  bars.busy.forEach((share, cpu) => {
    const api = cpuMap.cells[cpu][column];
    console.log(`     cpu ${cpu} busy at ${bars.unixMs}: dashboard ${share?.toFixed(4)}, API ${api} (allowed 0.0001: the API rounds to 4 decimals)`);
    check(`cpu ${cpu} busy share equals the API's`, share === null ? api === null : Math.abs(share - api) <= 0.0001);
  });
  const health = await page.$$eval('#health-list li', (lis) => lis.map((li) => li.textContent));
  check('the health card lists what is not healthy, with since when', health.length >= 1 && health.every((h) => h.includes(' since ') || h.startsWith('Every component')), health.slice(0, 3).join(' | '));
  await page.screenshot({ path: join(shots, 'node.png'), fullPage: true });

  // The spinner's workload at ~1 CPU in the table, as the API's processes say.
  await page.click('nav button[data-view=workloads]');
  const row = `#workloads tbody tr[data-cgroup="${spinCgroup}"] td[data-key=cpu]`;
  await page.waitForSelector(row, { timeout: 10000 });
  await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.value !== undefined, row, { timeout: 10000 });
  // The spinner's CPU in the table, frame by frame, against its cgroup's usage_usec (the
  // kernel's own accounting) over the same seconds: each figure is the CPU of the last three
  // intervals, which end at the frame's time; the cgroup's usage is sampled every 50 ms and
  // interpolated at those times.
  const usage = () => Number(/usage_usec (\d+)/.exec(readFileSync(join(process.env.SPIN_CGROUP_DIR, 'cpu.stat'), 'utf8'))[1]);
  const samples = [];
  const sampler = setInterval(() => samples.push([Date.now(), usage()]), 50);
  const usageAt = (ms) => {
    const i = samples.findIndex(([t]) => t >= ms);
    if (i <= 0) return null;
    const [[t0, u0], [t1, u1]] = [samples[i - 1], samples[i]];
    return u0 + ((u1 - u0) * (ms - t0)) / Math.max(1, t1 - t0);
  };
  const frames = [];
  let seq = Number(await page.getAttribute('#frame-seq', 'data-seq'));
  while (frames.length < 8) {
    await page.waitForFunction((s) => Number(document.getElementById('frame-seq').dataset.seq) > s, seq, { timeout: 5000 });
    seq = Number(await page.getAttribute('#frame-seq', 'data-seq'));
    frames.push({ seq, unixMs: Number(await page.getAttribute('#frame-seq', 'data-unix-ms')), cpu: Number(await page.getAttribute(row, 'data-value')) });
  }
  await new Promise((resolve) => setTimeout(resolve, 200));
  clearInterval(sampler);
  const pairs = [];
  for (let k = 3; k < frames.length; k += 1) {
    if (frames[k].seq - frames[k - 3].seq !== 3) continue; // a frame skipped: no window known
    const [from, to] = [frames[k - 3].unixMs, frames[k].unixMs];
    const [u0, u1] = [usageAt(from), usageAt(to)];
    if (u0 !== null && u1 !== null) pairs.push([frames[k].cpu, (u1 - u0) / 1000 / (to - from)]);
  }
  const mean = (i) => pairs.reduce((a, p) => a + p[i], 0) / pairs.length;
  const [shownCpu, kernelCpu] = [mean(0), mean(1)];
  // A frame's counters are of the kernel reads its window starts and ends with (the running
  // threads' time carried to each read, not past it), so they are exact; what is left is the
  // interpolation of cpu.stat sampled every 50 ms, at most 50 ms at an end of a 3 s window
  // on a loaded machine. Seen: equal to 3 decimals.
  const allowed = 0.03;
  console.log(`     spinner workload ${spinCgroup}: dashboard ${pairs.map((p) => p[0].toFixed(3)).join(' ')}, its cgroup's cpu.stat ${pairs.map((p) => p[1].toFixed(3)).join(' ')} over the same windows; means ${shownCpu.toFixed(3)} vs ${kernelCpu.toFixed(3)} (allowed ${allowed}: cpu.stat is sampled every 50 ms)`);
  check('a spinner\'s CPU equals the kernel\'s', pairs.length >= 3 && Math.abs(shownCpu - kernelCpu) <= allowed && shownCpu > 0.5);

  // Sorting: by CPU descending (the default), then by name ascending, and back.
  const cpus = await page.$$eval('#workloads tbody td[data-key=cpu]', (tds) => tds.map((td) => Number(td.dataset.value ?? -1)));
  check('rows are sorted by CPU, busiest first', cpus.every((v, i) => i === 0 || cpus[i - 1] >= v), cpus.slice(0, 5).join(' '));
  await page.click('#workloads th[data-key=name]');
  const names = await page.$$eval('#workloads tbody td[data-key=name]', (tds) => tds.map((td) => td.firstChild.textContent));
  check('a click on a heading sorts by it', names.every((v, i) => i === 0 || names[i - 1] <= v), names.slice(0, 3).join(' | '));
  await page.click('#workloads th[data-key=cpu]');
  const leaf = spinCgroup.split('/').pop();
  await page.fill('#filter', leaf);
  const filtered = await page.$$eval('#workloads tbody tr', (trs) => trs.map((tr) => tr.dataset.cgroup));
  check('the filter keeps only matching workloads', filtered.length === 1 && filtered[0] === spinCgroup, filtered.join(','));
  await page.click(`#workloads tbody tr[data-cgroup="${spinCgroup}"]`);
  await page.waitForSelector('#workload-detail:not([hidden])');
  // Its page: the processes, and the known exits (three `exit 3`, one SIGKILL) as the API has them.
  await page.waitForFunction((c) => document.getElementById('detail-more').dataset.cgroup === c, spinCgroup, { timeout: 10000 });
  const detailText = await page.textContent('#detail-more');
  const exit3 = (detailText.match(/exit 3/g) ?? []).length;
  const killed = (detailText.match(/killed by SIGKILL/g) ?? []).length;
  const detail = await api(`/api/v1/workloads/detail?cgroup=${encodeURIComponent(spinCgroup)}`);
  console.log(`     workload page: ${exit3} "exit 3" and ${killed} "killed by SIGKILL" shown (known: 3 and 1); API exited_failure ${detail.exited_failure}, exited_signal ${detail.exited_signal}, ${detail.live_total} live`);
  check('the workload page shows the known exits', exit3 === 3 && killed === 1 && detail.exited_failure === 3 && detail.exited_signal === 1);
  check('the workload page lists its live process', detailText.includes('workload') && detail.live_total >= 1);
  await page.screenshot({ path: join(shots, 'workloads.png'), fullPage: true });
  await page.fill('#filter', '');

  // Pause stops updates; resume restarts them.
  await page.click('#pause');
  await page.waitForTimeout(300);
  const paused = Number(await page.getAttribute('#frame-seq', 'data-seq'));
  await page.waitForTimeout(2500);
  const stillPaused = Number(await page.getAttribute('#frame-seq', 'data-seq'));
  check('pause stops updates', paused === stillPaused, `#${paused} then #${stillPaused} after 2.5 s`);
  await page.click('#pause');
  await page.waitForFunction((s) => Number(document.getElementById('frame-seq').dataset.seq) > s, stillPaused, { timeout: 5000 });
  check('resume restarts them', true);

  // Timeline: the recorder starts when the view opens; the spinner's process owns columns
  // of the CPUs; freeze stops the requests; the download is a Chrome trace Perfetto reads.
  check('the switch recorder is off before anyone looks', (await api('/api/v1/status')).switch_recorder === false);
  await page.click('nav button[data-view=timeline]');
  await page.waitForFunction(() => Number(document.getElementById('tl-cpus').dataset.runs) > 0, null, { timeout: 10000 });
  check('the switch recorder is on while the timeline is watched', (await api('/api/v1/status')).switch_recorder === true);
  const legend = await page.textContent('#tl-legend');
  check('the timeline names the spinner', legend.includes('workload'), legend.slice(0, 120));
  await page.waitForFunction(() => Number(document.getElementById('tl-spans').dataset.rows) > 0, null, { timeout: 10000 });
  await page.screenshot({ path: join(shots, 'timeline.png'), fullPage: true });
  await page.click('#tl-freeze');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#tl-download')]);
  const trace = JSON.parse(readFileSync(await download.path(), 'utf8'));
  const cpuSlices = trace.traceEvents.filter((e) => e.ph === 'X' && e.cat === 'cpu');
  console.log(`     Perfetto download: ${trace.traceEvents.length} events, ${cpuSlices.length} CPU slices, ${trace.otherData.switches} switches`);
  check('the download parses as a Chrome trace with CPU slices', cpuSlices.length > 0 && cpuSlices.every((e) => e.dur >= 0));
  await page.click('#tl-freeze');

  // Bin-packing: the capped workload's limits as its cgroup has them, its use under them.
  await page.click('nav button[data-view=binpacking]');
  const capped = process.env.CAPPED_CGROUP;
  const cpuRow = `#bp-cpu-rows li[data-cgroup="${capped}"]`;
  await page.waitForSelector(cpuRow, { timeout: 10000 });
  await page.waitForTimeout(3500); // the CPU window: three frames of the capped workload
  const cpuLimit = Number(await page.getAttribute(cpuRow, 'data-limit'));
  const cpuUsed = Number(await page.getAttribute(cpuRow, 'data-used'));
  const memLimit = Number(await page.getAttribute(`#bp-memory-rows li[data-cgroup="${capped}"]`, 'data-limit'));
  console.log(`     capped workload ${capped}: CPU ${cpuUsed.toFixed(3)} of limit ${cpuLimit} (cgroup: 0.5), memory limit ${memLimit} (cgroup: ${process.env.CAPPED_MEMORY_BYTES})`);
  check('bin-packing shows the cgroup\'s CPU limit', cpuLimit === 0.5);
  check('bin-packing shows the cgroup\'s memory limit', memLimit === Number(process.env.CAPPED_MEMORY_BYTES));
  check('the capped workload uses at most its limit', cpuUsed > 0.3 && cpuUsed <= 0.55, cpuUsed.toFixed(3));
  const bar = await page.$$eval('#bp-cpu div', (divs) => divs.length);
  check('the CPU bar has segments', bar >= 3, `${bar} segments`);
  await page.screenshot({ path: join(shots, 'binpacking.png'), fullPage: true });

  // The heatmaps draw.
  await page.click('nav button[data-view=heatmaps]');
  await page.waitForTimeout(1500);
  for (const id of ['heat-cpu', 'heat-runqueue', 'heat-idle']) {
    const painted = await page.evaluate((canvasId) => {
      const canvas = document.getElementById(canvasId);
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n += 1;
      return n;
    }, id);
    check(`heatmap ${id} draws`, painted > 0, `${painted} painted pixels`);
  }
  await page.selectOption('#heat-workload', spinCgroup);
  await page.waitForTimeout(1000);
  await page.screenshot({ path: join(shots, 'heatmaps.png'), fullPage: true });

  // A phone: no horizontal scroll on any view.
  await page.setViewportSize({ width: 375, height: 800 });
  for (const view of ['node', 'heatmaps', 'workloads', 'timeline', 'binpacking']) {
    await page.click(`nav button[data-view=${view}]`);
    await page.waitForTimeout(300);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    check(`375 px wide, ${view}: no horizontal scroll`, width <= 375, `scrollWidth ${width}`);
    await page.screenshot({ path: join(shots, `phone-${view}.png`), fullPage: true });
  }
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.click('nav button[data-view=node]');
  await page.screenshot({ path: join(shots, 'phone-node-dark.png'), fullPage: true });

  // Logging out ends the session: the feed refuses again.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.click('header form button');
  await page.waitForURL(`${base}/ui/login`);
  const after = await page.evaluate(async () => (await fetch('/api/v1/viz/heatmap?kind=cpu_busy')).status);
  check('after logging out the API refuses', after === 401, `${after}`);
  console.log('dashboard: every check passed');
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}

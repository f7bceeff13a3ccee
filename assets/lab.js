// chokepoint lab panel: live numbers from /lab/events (server-sent events, one snapshot a second),
// knob changes through the admin API, Break it / Fix it runs through /lab/run. The charts are
// uPlot (vendored: /lab/uplot.js), with knob changes drawn as labelled markers and each
// resource's maximum as a dashed line.
'use strict';

const WINDOW = 300; // snapshots kept: five minutes at one a second
const COLORS = ['#4fb3ff', '#ff5c5c', '#5cd67a', '#ffb84d', '#c77dff', '#ff8fab', '#7ee8fa', '#f4e285', '#a0a0ff', '#b8f2b8', '#ffa07a', '#d0d0d0'];
const history = []; // snapshots, oldest first
const markers = []; // {t, label}
const charts = {};  // id -> {u, key}
let knobMeta = {};   // name -> {range, scenario, description}
let scenarios = [];
let lastRun = null;

const $ = (id) => document.getElementById(id);

function say(text) { $('message').textContent = text; }

function adminHeaders() {
  const h = { 'Content-Type': 'application/json' };
  const token = $('token').value.trim();
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

async function admin(method, path, body) {
  const resp = await fetch(path, { method, headers: adminHeaders(), body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const detail = data && (data.message || data.detail) ? (data.message || data.detail) : resp.statusText;
    throw new Error(resp.status + ' ' + (data && data.error ? data.error + ': ' : '') + (typeof detail === 'string' ? detail : JSON.stringify(detail)));
  }
  return data;
}

// ---- formatting -----------------------------------------------------------------------------

/** Integers as integers; otherwise three significant digits at most. */
function fmt(v) {
  if (v == null || Number.isNaN(v)) return '–';
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return String(v);
  if (Math.abs(v) >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(3)));
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

/** The few markdown marks the scripts' comments use: `code`, **strong**, *emphasis*, links. */
function markdown(text) {
  return escapeHtml(text)
    .replace(/`([^`]+)`/g, '<code>$1</code>')
    .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>')
    .replace(/(^|[\s(])\*([^*\s][^*]*?)\*(?=[\s).,;:!?]|$)/g, '$1<em>$2</em>')
    .replace(/(^|[\s(])_([^_\s][^_]*?)_(?=[\s).,;:!?]|$)/g, '$1<em>$2</em>')
    .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2">$1</a>');
}

// ---- charts ---------------------------------------------------------------------------------

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** Knob changes as dashed vertical lines, each labelled in full; labels that would overlap go
 * to the next row (three rows; past them the line stays and the label is in the legend text). */
function markersPlugin() {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        const dpr = window.devicePixelRatio || 1;
        const { left, top, width, height } = u.bbox;
        ctx.save();
        ctx.font = `${11 * dpr}px system-ui, sans-serif`;
        // uPlot leaves the axes' alignment on the context: labels start at their x.
        ctx.textAlign = 'left';
        ctx.textBaseline = 'alphabetic';
        ctx.strokeStyle = '#ffb84d';
        ctx.fillStyle = '#ffb84d';
        ctx.setLineDash([4 * dpr, 4 * dpr]);
        // Newest first, so the latest change always has its label; an older label that would
        // overlap every row is left out (its line stays).
        const rows = [[], [], []]; // occupied [from, to] per row
        const free = (row, a, b) => row.every(([c, d]) => b <= c || a >= d);
        for (let i = markers.length - 1; i >= 0; i--) {
          const m = markers[i];
          const x = u.valToPos(m.t / 1000, 'x', true);
          if (!(x >= left && x <= left + width)) continue;
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
          let label = m.label;
          while (label.length > 4 && ctx.measureText(label).width > width - 8 * dpr) label = label.slice(0, -2);
          if (label !== m.label) label = label.slice(0, -1) + '…';
          const w = ctx.measureText(label).width + 8 * dpr;
          let tx = x + 3 * dpr;
          if (tx + w > left + width) tx = Math.max(left, x - w);
          const row = rows.findIndex((r) => free(r, tx, tx + w));
          if (row < 0) continue;
          ctx.fillText(label, tx, top + (row + 1) * 13 * dpr);
          rows[row].push([tx, tx + w]);
        }
        ctx.restore();
      }],
    },
  };
}

function chartWidth(el) { return Math.max(200, Math.floor(el.getBoundingClientRect().width)); }

function drawChart(id, series) {
  const el = $(id);
  const xs = history.map((s) => s.t / 1000);
  const data = [xs, ...series.map((s) => s.values)];
  const key = series.map((s) => s.name).join('|');
  let chart = charts[id];
  if (chart && chart.key !== key) { chart.u.destroy(); chart = null; }
  if (!chart) {
    const axis = { stroke: '#8a96a3', grid: { stroke: '#243040', width: 1 }, ticks: { stroke: '#243040', width: 1 } };
    const opts = {
      width: chartWidth(el),
      height: 200,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, niceCeil(max > 0 ? max : 1)] } },
      axes: [axis, { ...axis, size: 52, values: (u, ticks) => ticks.map(fmt) }],
      series: [{ value: (u, v) => (v == null ? '' : new Date(v * 1000).toLocaleTimeString()) }, ...series.map((s) => ({
        label: s.name, stroke: s.color, width: s.width || 1.5, dash: s.dash, points: { show: false },
        value: (u, v) => fmt(v),
      }))],
      plugins: [markersPlugin()],
    };
    chart = { u: new uPlot(opts, data, el), key };
    charts[id] = chart;
  } else {
    chart.u.setData(data);
  }
}

function groupSeries(field, scale) {
  const names = Object.keys(history[history.length - 1].groups);
  // Only groups that saw traffic in the window, so the charts stay readable.
  return names
    .map((g, i) => ({ name: g, color: COLORS[i % COLORS.length], values: history.map((s) => { const v = s.groups[g] ? s.groups[g][field] : null; return v == null ? null : v * scale; }) }))
    .filter((s) => history.some((snap) => snap.groups[s.name] && snap.groups[s.name].rps > 0));
}

function gaugeSeries(pairs) {
  return pairs.map(([key, name, style], i) => ({
    name, color: (style && style.color) || COLORS[i], dash: style && style.dash, width: style && style.width,
    values: history.map((s) => (typeof s.gauges[key] === 'number' ? s.gauges[key] : null)),
  }));
}

const MAX_LINE = { color: '#e6e6e6', dash: [6, 4], width: 1 };

/** The work completed per second, all scenarios (goodput: an async 202 counts when its worker
 *  creates the deployment, not when it is accepted). */
function completedSeries() {
  if (!history.some((s) => Object.values(s.groups).some((g) => g.rps > 0))) return [];
  return [{
    name: 'completed/s', color: '#7ee787', dash: [1, 3], width: 2.5,
    values: history.map((s) => Object.values(s.groups).reduce((sum, g) => sum + (g.completed_rps || 0), 0)),
  }];
}

/** The run's offered rate and predicted capacity while it sends. */
function runSeries() {
  const active = (s) => s.run && ['running', 'stopping'].includes(s.run.state);
  if (!history.some(active)) return [];
  return [
    { name: 'predicted capacity (run)', color: '#e6e6e6', dash: [6, 4], width: 1.5, values: history.map((s) => (active(s) ? s.run.predicted_capacity_rps : null)) },
    { name: 'offered (run)', color: '#ffb84d', dash: [2, 3], width: 1.5, values: history.map((s) => (active(s) ? s.run.rate_rps : null)) },
  ];
}

function redraw() {
  if (history.length === 0 || typeof uPlot === 'undefined') return;
  const sets = {
    'chart-rps': [...groupSeries('rps', 1), ...completedSeries(), ...runSeries()],
    'chart-p95': groupSeries('p95_ms', 1),
    'chart-db': gaugeSeries([['db_in_use', 'in use'], ['db_idle', 'idle'], ['db_waiting', 'waiting'], ['db_max', 'max (pool size + overflow)', MAX_LINE]]),
    'chart-queues': gaugeSeries([['worker_queue', 'worker-pool queue'], ['worker_busy', 'worker threads busy'], ['cold_start_queue', 'cold-start queue'], ['deploy_queue', 'deploy queue'], ['http_in_flight', 'in flight'], ['worker_threads', 'max (worker threads)', MAX_LINE]]),
    'chart-errors': groupSeries('error_rate', 100),
    'chart-memory': gaugeSeries([['retained_mb', 'retained'], ['rss_mb', 'RSS']]),
  };
  for (const [id, series] of Object.entries(sets)) drawChart(id, series);
}

function resize() {
  for (const [id, chart] of Object.entries(charts)) chart.u.setSize({ width: chartWidth($(id)), height: 200 });
}

// ---- live numbers ---------------------------------------------------------------------------

function render(snap) {
  $('profile').textContent = snap.profile;
  for (const p of ['fragile', 'hardened']) $('profile-' + p).classList.toggle('active', snap.profile === p);
  for (const [k, v] of Object.entries(snap.gauges)) {
    const el = $('g-' + k);
    if (!el) continue;
    el.textContent = typeof v === 'number' ? fmt(v) : (v == null ? '–' : v);
    if (k === 'breaker') el.className = 'v breaker-' + v;
  }
  // Saturation: the tiles turn red, the banner names the resource and its scenario.
  const hot = new Set((snap.saturated || []).flatMap((s) => s.tiles));
  for (const tile of document.querySelectorAll('.tile[data-tiles]')) {
    tile.classList.toggle('saturated', tile.dataset.tiles.split(' ').some((k) => hot.has(k)));
  }
  const banner = $('banner');
  if (snap.saturated && snap.saturated.length) {
    banner.innerHTML = 'Saturated: ' + snap.saturated.map((s) => `<b>${escapeHtml(s.resource)}</b> (scenario ${escapeHtml(s.scenario)}): ${escapeHtml(s.detail)}`).join(' · ');
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  const body = $('groups').tBodies[0];
  body.innerHTML = '';
  for (const [g, s] of Object.entries(snap.groups)) {
    const tr = body.insertRow();
    tr.dataset.group = g;
    [g, fmt(s.rps), fmt(s.error_rate * 100) + '%', fmt(s.abandoned_rps), fmt(s.p50_ms), fmt(s.p95_ms), fmt(s.p99_ms)].forEach((c) => { tr.insertCell().textContent = c; });
  }
  for (const [name, value] of Object.entries(snap.knobs)) {
    const input = document.querySelector(`#knobs tr[data-knob="${name}"] [data-value]`);
    if (!input || input === document.activeElement || input.dataset.dirty) continue;
    setInput(input, value);
  }
  renderRun(snap);
  renderFaults(snap.faults);
}

/** The fault rules and sick links in force: the failures they cause are injected, not real. */
function renderFaults(faults) {
  const rules = (faults && faults.rules) || [];
  const links = (faults && faults.links) || [];
  $('faults-card').hidden = rules.length === 0 && links.length === 0;
  const body = $('faults').tBodies[0];
  body.innerHTML = '';
  for (const r of rules) {
    const tr = body.insertRow();
    tr.dataset.group = r.group;
    const spec = Object.entries(r.rule).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : v}`).join(' · ');
    const left = r.rule.fail_first ? ` (${fmt(r.fail_first_remaining)} of fail_first left)` : '';
    [r.group, spec + left, fmt(r.injected)].forEach((c) => { tr.insertCell().textContent = c; });
  }
  for (const l of links) {
    const tr = body.insertRow();
    tr.dataset.link = l.link;
    const spec = Object.entries(l.toxics).map(([k, v]) => `${k}: ${v}`).join(' · ');
    [`link: ${l.link}`, `${spec} (to ${l.upstream})`, '–'].forEach((c) => { tr.insertCell().textContent = c; });
  }
  $('faults-headers').textContent = faults && faults.headers_allowed
    ? 'Per-request x-chokepoint-* headers are honoured (fault_headers_allowed is on).'
    : '';
}

async function clearFaults() {
  try {
    await admin('DELETE', '/admin/faults');
    const links = await (await fetch('/admin/links')).json();
    if (links.enabled) await admin('DELETE', '/admin/links');
    say('every fault rule and link toxic cleared');
  } catch (e) {
    say('clearing the fault rules failed: ' + e.message);
  }
}

function onSnapshot(snap) {
  if (snap.changes && snap.changes.length && history.length) markers.push({ t: snap.t, label: snap.changes.join(', ') });
  history.push(snap);
  while (history.length > WINDOW) history.shift();
  while (markers.length && markers[0].t < snap.t - WINDOW * 1000) markers.shift();
  $('status').textContent = 'live';
  $('status').className = 'live';
  render(snap);
  redraw();
}

function connect() {
  const es = new EventSource('/lab/events');
  es.addEventListener('snapshot', (e) => onSnapshot(JSON.parse(e.data)));
  es.onerror = () => { $('status').textContent = 'reconnecting…'; $('status').className = 'down'; };
}

// ---- Break it / Fix it ----------------------------------------------------------------------

function listChanges(changes, limit) {
  const shown = changes.slice(0, limit).map((c) => `${c.knob} ${fmtValue(c.before)} → ${fmtValue(c.after)}`);
  if (changes.length > limit) shown.push(`and ${changes.length - limit} more`);
  return shown.join(', ');
}

function fmtValue(v) { return typeof v === 'string' ? v : JSON.stringify(v); }

function renderRun(snap) {
  const run = snap.run;
  lastRun = run;
  const busy = !!run && ['starting', 'running', 'stopping'].includes(run.state);
  const selected = scenarios.find((x) => x.id === $('scenario').value);
  const runnable = !!selected && selected.repro && !selected.cannot_run_here;
  $('run-break').disabled = busy || !runnable;
  $('run-fix').disabled = busy || !runnable;
  $('run-stop').disabled = !busy;
  const el = $('run-status');
  let why = '';
  if (selected && selected.cannot_run_here) why = `<span class="muted" data-cannot-run>Break it / Fix it cannot run on this lab: ${escapeHtml(selected.cannot_run_here)}</span>`;
  else if (selected && !selected.repro) why = `<span class="muted" data-no-repro>No Break it / Fix it: ${escapeHtml(selected.no_repro || 'this scenario has no in-server run')}. Use k6 below.</span>`;
  if (!run) { el.innerHTML = why; return; }
  const group = snap.groups[run.scenario];
  const measured = group ? group.rps : null;
  const parts = [];
  if (why && !busy) parts.push(why);
  parts.push(`<b>${escapeHtml(run.action === 'break' ? 'Break it' : 'Fix it')}</b> · ${escapeHtml(run.scenario)} · profile ${escapeHtml(run.profile)} · <b data-run-state>${escapeHtml(run.state)}</b>`);
  if (run.rate_rps != null) {
    const cap = run.predicted_capacity_rps != null ? `predicted capacity <b>${fmt(run.predicted_capacity_rps)}</b> req/s, ` : '';
    parts.push(`<span class="figures">${cap}offered <b>${fmt(run.rate_rps)}</b> req/s for ${run.seconds} s (${escapeHtml(run.request)}); served now <b data-run-measured>${fmt(measured)}</b> req/s</span>`);
  }
  if (run.formula) parts.push(`<span class="muted">${escapeHtml(run.formula)}</span>`);
  if (run.expect) parts.push(escapeHtml(run.expect));
  if (run.changed && run.changed.length) parts.push(`changed: ${escapeHtml(listChanges(run.changed, 8))}`);
  const kept = Object.entries(run.kept_startup || {});
  if (kept.length) parts.push(`kept from start-up: ${escapeHtml(kept.map(([k, v]) => `${k}=${fmtValue(v)}`).join(', '))}`);
  if (run.result) {
    const r = run.result;
    const failures = Object.entries(r.failures || {}).map(([k, n]) => `${n} × ${k}`).join(', ') || 'none';
    parts.push(`<span class="figures" data-run-result>result: ${r.ok} of ${r.requests} succeeded (${fmt(r.throughput_rps)} req/s answered), completed <b data-run-goodput>${fmt(r.goodput_rps)}</b>/s, failures ${escapeHtml(failures)}; p50 ${fmt(r.p50_ms)} ms, p95 ${fmt(r.p95_ms)} ms, p99 ${fmt(r.p99_ms)} ms</span>`);
    const watched = Object.entries(r.metrics || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(', ');
    if (watched) parts.push(`<span class="muted">watched (a gauge's peak, a counter's increase): ${escapeHtml(watched)}</span>`);
  }
  if (run.error) parts.push(`<span style="color:var(--bad)">${escapeHtml(run.error)}</span>`);
  parts.push(`<span class="muted">${escapeHtml(run.note)}</span>`);
  el.innerHTML = parts.map((p) => `<div>${p}</div>`).join('');
}

async function startRun(action) {
  const id = $('scenario').value;
  try {
    await admin('POST', `/lab/run/${encodeURIComponent(id)}?action=${action}`);
    say(`${action === 'break' ? 'Break it' : 'Fix it'}: ${id} started`);
  } catch (e) {
    say(`${id}: ${e.message}`);
  }
}

async function stopRun() {
  try {
    await admin('POST', '/lab/run/stop');
    say('run stopping: nothing more is sent');
  } catch (e) {
    say(`stop: ${e.message}`);
  }
}

// ---- knobs ----------------------------------------------------------------------------------

function setInput(input, value) {
  if (input.type === 'checkbox') input.checked = !!value; else input.value = value;
}

/** The value to send, or undefined when the field is empty (never sent as 0). */
function readInput(input, meta) {
  if (input.type === 'checkbox') return input.checked;
  if (meta.range && meta.range.values) return input.value;
  const text = input.value.trim();
  if (text === '') return undefined;
  const n = Number(text);
  return Number.isNaN(n) ? text : n;
}

function rangeText(r) { return r.values ? r.values.join(' | ') : `${fmt(r.min)} … ${fmt(r.max)}`; }

function knobRow(name, meta) {
  const tr = document.createElement('tr');
  tr.dataset.knob = name;
  tr.dataset.scenario = meta.scenario || '';
  tr.title = meta.description || '';
  tr.insertCell().textContent = name;
  const cell = tr.insertCell();
  let input;
  const r = meta.range || {};
  if (r.values && r.values.length === 2 && typeof r.values[0] === 'boolean') {
    input = document.createElement('input'); input.type = 'checkbox';
  } else if (r.values) {
    input = document.createElement('select');
    for (const v of r.values) { const o = document.createElement('option'); o.value = o.textContent = v; input.appendChild(o); }
  } else {
    input = document.createElement('input'); input.type = 'number'; input.step = 'any';
    input.min = r.min; input.max = r.max;
  }
  input.dataset.value = '';
  input.setAttribute('aria-label', name);
  input.addEventListener('input', () => { input.dataset.dirty = '1'; });
  input.addEventListener('change', () => { input.dataset.dirty = '1'; });
  setInput(input, meta.value);
  cell.appendChild(input);
  tr.insertCell().textContent = rangeText(r);
  tr.insertCell().textContent = meta.scenario || '';
  const button = document.createElement('button');
  button.textContent = 'apply';
  button.dataset.apply = name;
  button.addEventListener('click', async () => {
    const value = readInput(input, meta);
    if (value === undefined) { say(`${name}: enter a value (${rangeText(r)})`); return; }
    try {
      await admin('PATCH', '/admin/config', { [name]: value });
      delete input.dataset.dirty;
      say(`${name} changed`);
    } catch (e) {
      say(`${name}: ${e.message}`);
    }
  });
  tr.insertCell().appendChild(button);
  return tr;
}

async function loadKnobs() {
  const resp = await fetch('/admin/config');
  const config = await resp.json();
  knobMeta = config.knobs;
  const body = $('knobs').tBodies[0];
  body.innerHTML = '';
  for (const [name, meta] of Object.entries(knobMeta)) body.appendChild(knobRow(name, meta));
}

function filterKnobs() {
  const f = $('knob-filter').value.trim().toLowerCase();
  for (const tr of $('knobs').tBodies[0].rows) {
    tr.hidden = f !== '' && !tr.dataset.knob.includes(f) && !tr.dataset.scenario.toLowerCase().includes(f);
  }
}

async function switchProfile(name) {
  try {
    const view = await admin('POST', '/admin/profile/' + name);
    for (const input of document.querySelectorAll('#knobs [data-value]')) delete input.dataset.dirty;
    const sw = view.switch || { changed: [], kept_startup: {} };
    const kept = Object.entries(sw.kept_startup).map(([k, v]) => `${k}=${fmtValue(v)}`);
    say(`profile ${name}: ${sw.changed.length} knob(s) changed` + (kept.length ? `; kept from start-up: ${kept.join(', ')}` : ''));
  } catch (e) {
    say(`profile ${name}: ${e.message}`);
  }
}

// ---- scenarios ------------------------------------------------------------------------------

async function loadScenarios() {
  scenarios = await (await fetch('/lab/scenarios.json')).json();
  const sel = $('scenario');
  for (const s of scenarios) { const o = document.createElement('option'); o.value = o.textContent = s.id; sel.appendChild(o); }
  sel.addEventListener('change', showScenario);
  showScenario();
}

function showScenario() {
  const s = scenarios.find((x) => x.id === $('scenario').value);
  if (!s) return;
  $('scenario-about').innerHTML = markdown(s.about);
  const base = `BASE_URL=${location.origin}`;
  $('scenario-k6').textContent = [
    `# seconds: the same shape, shrunk`,
    `${base} ${s.k6_smoke}`,
    `${base} SMOKE=1 ${s.k6_hardened}`,
    `# the full run: minutes per profile`,
    `${base} ${s.k6_fragile}`,
    `${base} ${s.k6_hardened}`,
  ].join('\n');
  $('knob-filter').value = s.id === 'healthy' ? '' : s.id;
  filterKnobs();
  if (history.length) renderRun(history[history.length - 1]);
}

// ---- start ----------------------------------------------------------------------------------

$('token').value = sessionStorage.getItem('chokepoint-admin-token') || '';
$('token').addEventListener('change', () => sessionStorage.setItem('chokepoint-admin-token', $('token').value));
$('profile-fragile').addEventListener('click', () => switchProfile('fragile'));
$('profile-hardened').addEventListener('click', () => switchProfile('hardened'));
$('run-break').addEventListener('click', () => startRun('break'));
$('run-fix').addEventListener('click', () => startRun('fix'));
$('run-stop').addEventListener('click', stopRun);
$('faults-clear').addEventListener('click', clearFaults);
$('run-limits').textContent = '1.5× the predicted capacity · at most 400 req/s and 256 in flight · 20 s';
$('knob-filter').addEventListener('input', filterKnobs);
window.addEventListener('resize', resize);
loadKnobs().then(loadScenarios).catch((e) => say('loading failed: ' + e.message));
connect();

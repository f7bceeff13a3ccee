// chokepoint lab panel: live numbers from /lab/events (server-sent events, one snapshot a second),
// knob changes through the admin API. No dependencies; the charts are drawn on canvases.
'use strict';

const WINDOW = 300; // snapshots kept: five minutes at one a second
const COLORS = ['#4fb3ff', '#ff5c5c', '#5cd67a', '#ffb84d', '#c77dff', '#ff8fab', '#7ee8fa', '#f4e285', '#a0a0ff', '#b8f2b8', '#ffa07a', '#d0d0d0'];
const history = []; // snapshots, oldest first
const markers = []; // {t, label}
let knobMeta = {};   // name -> {range, scenario, description}
let scenarios = [];

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
    const detail = data && data.detail ? data.detail : resp.statusText;
    throw new Error(resp.status + ' ' + (data && data.error ? data.error + ': ' : '') + detail);
  }
  return data;
}

// ---- charts ---------------------------------------------------------------------------------

function drawChart(id, series) {
  const canvas = $(id);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 44, r: 8, t: 8, b: 16 };
  const n = history.length;
  if (n === 0) return;
  // The axis spans what was seen (at least a minute, at most the window).
  const t1 = history[n - 1].t, t0 = Math.min(t1 - 60000, Math.max(history[0].t, t1 - WINDOW * 1000));
  let max = 0;
  for (const s of series) for (const v of s.values) if (v != null && v > max) max = v;
  max = max > 0 ? niceCeil(max) : 1;
  const x = (t) => pad.l + (w - pad.l - pad.r) * (t - t0) / (t1 - t0 || 1);
  const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / max;
  ctx.strokeStyle = '#243040'; ctx.fillStyle = '#8a96a3'; ctx.font = '11px system-ui'; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = max * i / 4, yy = y(v);
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(w - pad.r, yy); ctx.stroke();
    ctx.fillText(fmt(v), 2, yy + 4);
  }
  ctx.fillText(`−${Math.round((t1 - t0) / 1000)} s`, pad.l, h - 3);
  ctx.fillText('now', w - pad.r - 22, h - 3);
  // Knob changes: dashed vertical markers with the change as a label.
  ctx.save(); ctx.setLineDash([4, 4]); ctx.strokeStyle = '#ffb84d'; ctx.fillStyle = '#ffb84d';
  let lastLabelX = -1e9;
  for (const m of markers) {
    if (m.t < t0) continue;
    const xx = x(m.t);
    ctx.beginPath(); ctx.moveTo(xx, pad.t); ctx.lineTo(xx, h - pad.b); ctx.stroke();
    if (xx - lastLabelX > 80) { ctx.fillText(m.label.slice(0, 28), Math.min(xx + 3, w - 150), pad.t + 10); lastLabelX = xx; }
  }
  ctx.restore();
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color || COLORS[i % COLORS.length]; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    s.values.forEach((v, k) => {
      if (v == null) { pen = false; return; }
      const xx = x(history[k].t), yy = y(v);
      if (pen) ctx.lineTo(xx, yy); else { ctx.moveTo(xx, yy); pen = true; }
    });
    ctx.stroke();
  });
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v == null || Number.isNaN(v)) return '–';
  if (Math.abs(v) >= 100) return Math.round(v).toString();
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return (Math.round(v * 100) / 100).toString();
}

function legend(id, series) {
  $(id).innerHTML = series.map((s, i) => `<span style="color:${s.color || COLORS[i % COLORS.length]}">■ ${s.name}</span>`).join('');
}

function groupSeries(field, scale) {
  const names = Object.keys(history[history.length - 1].groups);
  // Only groups that saw traffic in the window, so the charts stay readable.
  return names
    .map((g, i) => ({ name: g, color: COLORS[i % COLORS.length], values: history.map((s) => { const v = s.groups[g] ? s.groups[g][field] : null; return v == null ? null : v * scale; }) }))
    .filter((s) => history.some((snap) => snap.groups[s.name] && snap.groups[s.name].rps > 0));
}

function gaugeSeries(pairs) {
  return pairs.map(([key, name], i) => ({ name, color: COLORS[i], values: history.map((s) => s.gauges[key]) }));
}

function redraw() {
  if (history.length === 0) return;
  const charts = {
    rps: groupSeries('rps', 1),
    p95: groupSeries('p95_ms', 1),
    errors: groupSeries('error_rate', 100),
    db: gaugeSeries([['db_in_use', 'in use'], ['db_idle', 'idle'], ['db_waiting', 'waiting']]),
    queues: gaugeSeries([['worker_queue', 'worker pool'], ['cold_start_queue', 'cold start'], ['deploy_queue', 'deploy'], ['http_in_flight', 'in flight']]),
    memory: gaugeSeries([['retained_mb', 'retained'], ['rss_mb', 'RSS']]),
  };
  for (const [name, series] of Object.entries(charts)) { drawChart('chart-' + name, series); legend('legend-' + name, series); }
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
  const body = $('groups').tBodies[0];
  body.innerHTML = '';
  for (const [g, s] of Object.entries(snap.groups)) {
    const tr = body.insertRow();
    tr.dataset.group = g;
    [g, fmt(s.rps), (s.error_rate * 100).toFixed(1) + '%', fmt(s.abandoned_rps), fmt(s.p50_ms), fmt(s.p95_ms), fmt(s.p99_ms)].forEach((c) => { tr.insertCell().textContent = c; });
  }
  for (const [name, value] of Object.entries(snap.knobs)) {
    const input = document.querySelector(`#knobs tr[data-knob="${name}"] [data-value]`);
    if (!input || input === document.activeElement || input.dataset.dirty) continue;
    setInput(input, value);
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

// ---- knobs ----------------------------------------------------------------------------------

function setInput(input, value) {
  if (input.type === 'checkbox') input.checked = !!value; else input.value = value;
}

function readInput(input, meta) {
  if (input.type === 'checkbox') return input.checked;
  if (meta.range && meta.range.values) return input.value;
  const n = Number(input.value);
  return Number.isNaN(n) ? input.value : n;
}

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
  tr.insertCell().textContent = r.values ? r.values.join(' | ') : `${r.min} … ${r.max}`;
  tr.insertCell().textContent = meta.scenario || '';
  const button = document.createElement('button');
  button.textContent = 'apply';
  button.dataset.apply = name;
  button.addEventListener('click', async () => {
    try {
      await admin('PATCH', '/admin/config', { [name]: readInput(input, meta) });
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
    await admin('POST', '/admin/profile/' + name);
    for (const input of document.querySelectorAll('#knobs [data-value]')) delete input.dataset.dirty;
    say(`profile ${name} applied`);
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
  $('scenario-about').textContent = s.about;
  $('scenario-k6').textContent = `${s.k6_fragile}\n${s.k6_hardened}`;
  $('knob-filter').value = s.id === 'healthy' ? '' : s.id;
  filterKnobs();
}

// ---- start ----------------------------------------------------------------------------------

$('token').value = sessionStorage.getItem('chokepoint-admin-token') || '';
$('token').addEventListener('change', () => sessionStorage.setItem('chokepoint-admin-token', $('token').value));
$('profile-fragile').addEventListener('click', () => switchProfile('fragile'));
$('profile-hardened').addEventListener('click', () => switchProfile('hardened'));
$('knob-filter').addEventListener('input', filterKnobs);
window.addEventListener('resize', redraw);
loadKnobs().then(loadScenarios).catch((e) => say('loading failed: ' + e.message));
connect();

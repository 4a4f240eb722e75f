/**
 * The live dashboard: one self-contained page (no CDN, no network but the admin listener).
 * It loads `/api/v1/resources` once, then follows `/api/v1/events` (SSE) and patches its
 * model; the instance table is paged (100 rows a page), so 1,000 instances stay cheap to
 * render. Boot-time charts are inline SVG. Stop/start send the session's CSRF token header.
 * Stops owed for instances out of service (tried again with backoff, or given up: the machine
 * may still run) are counted in the header and shown on their row, with retry / let-go buttons;
 * also those of resources a reload removed (from `/api/v1/stop-retries`), marked as such.
 */
import { randomBytes } from 'node:crypto';

const escapeAttr = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

export function dashboardPage(csrfToken: string): { html: string; nonce: string } {
  const nonce = randomBytes(16).toString('base64');
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="csrf-token" content="${escapeAttr(csrfToken)}">
<title>Smart Proxy · admin</title>
<style nonce="${nonce}">${CSS}</style>
</head>
<body>
<header>
  <h1>Smart Proxy</h1>
  <span id="summary" class="summary"></span>
  <span id="owed" class="owed" role="status" hidden></span>
  <span id="live" class="live off" title="live updates">connecting…</span>
</header>
<main>
  <section>
    <h2>Resources</h2>
    <div id="resources" class="cards"></div>
  </section>
  <section>
    <h2>Instances <small id="instance-count"></small></h2>
    <div class="controls">
      <input id="filter" type="search" placeholder="filter by resource, instance, user, state" aria-label="filter instances">
      <select id="state-filter" aria-label="state">
        <option value="">every state</option><option>ready</option><option>starting</option><option>stopping</option><option>failed</option><option>stopped</option>
      </select>
      <button id="prev" type="button">‹ prev</button><span id="page"></span><button id="next" type="button">next ›</button>
    </div>
    <table id="instances">
      <thead><tr><th>resource</th><th>instance</th><th>state</th><th>started by</th><th>started</th><th>last activity</th><th>idle stop</th><th>boot / ETA</th><th>conns</th><th>owed stop</th><th></th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Recent audit events</h2>
    <ol id="audit" class="audit"></ol>
  </section>
  <p id="error" class="error" role="alert" hidden></p>
</main>
<script nonce="${nonce}">${SCRIPT}</script>
</body>
</html>
`;
  return { html, nonce };
}

const CSS = `
:root { color-scheme: light dark; --fg:#1a1a1a; --bg:#fafafa; --muted:#666; --card:#fff; --line:#ddd; --ok:#1a7f37; --warn:#9a6700; --bad:#cf222e; --accent:#0969da; }
@media (prefers-color-scheme: dark) { :root { --fg:#e6e6e6; --bg:#0d1117; --muted:#9aa4ae; --card:#161b22; --line:#30363d; --ok:#3fb950; --warn:#d29922; --bad:#f85149; --accent:#58a6ff; } }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; gap:1rem; align-items:baseline; padding:.8rem 1.2rem; border-bottom:1px solid var(--line); background:var(--card); }
h1 { font-size:1.2rem; margin:0; } h2 { font-size:1rem; margin:1.2rem 0 .5rem; }
main { padding:0 1.2rem 2rem; }
.summary { color:var(--muted); flex:1; }
.live { font-size:.85rem; padding:.1rem .5rem; border-radius:1rem; border:1px solid var(--line); }
.live.on { color:var(--ok); border-color:var(--ok); } .live.off { color:var(--bad); border-color:var(--bad); }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(260px,1fr)); gap:.8rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:.5rem; padding:.7rem .8rem; }
.card h3 { margin:0 0 .2rem; font-size:.95rem; display:flex; justify-content:space-between; align-items:center; }
.card .meta { color:var(--muted); font-size:.8rem; }
.card svg { display:block; width:100%; height:48px; margin-top:.4rem; }
.card svg rect { fill:var(--accent); } .card svg line { stroke:var(--warn); stroke-dasharray:3 2; }
.controls { display:flex; gap:.5rem; align-items:center; margin-bottom:.5rem; flex-wrap:wrap; }
input[type=search] { flex:1; min-width:14rem; padding:.3rem .5rem; }
table { width:100%; border-collapse:collapse; background:var(--card); border:1px solid var(--line); }
th, td { text-align:left; padding:.3rem .5rem; border-bottom:1px solid var(--line); white-space:nowrap; font-variant-numeric:tabular-nums; }
th { font-weight:600; font-size:.8rem; color:var(--muted); }
td.key { max-width:16rem; overflow:hidden; text-overflow:ellipsis; }
.st { font-weight:600; } .st-ready { color:var(--ok); } .st-starting, .st-stopping { color:var(--warn); } .st-failed { color:var(--bad); } .st-stopped { color:var(--muted); }
button { font:inherit; padding:.15rem .6rem; border-radius:.3rem; border:1px solid var(--line); background:var(--bg); color:var(--fg); cursor:pointer; }
button:disabled { opacity:.4; cursor:default; }
.audit { list-style:none; padding:0; margin:0; background:var(--card); border:1px solid var(--line); }
.audit li { padding:.25rem .5rem; border-bottom:1px solid var(--line); font-size:.85rem; }
.audit time { color:var(--muted); margin-right:.5rem; }
.error { color:var(--bad); }
.owed { color:var(--warn); font-weight:600; } .owed.given-up { color:var(--bad); }
.removed { color:var(--warn); font-weight:600; }
td.stop-retry { white-space:normal; max-width:22rem; } td.stop-retry span { margin-right:.4rem; } td.stop-retry .given-up { color:var(--bad); font-weight:600; } td.stop-retry .scheduled, td.stop-retry .running { color:var(--warn); }
td.stop-retry button { margin-right:.3rem; }
`;

/**
 * The page's script. Plain DOM, text set through textContent (never HTML from the API),
 * SVG built with createElementNS.
 */
const SCRIPT = `
'use strict';
const PAGE_SIZE = 100;
const token = document.querySelector('meta[name="csrf-token"]').content;
const state = { resources: new Map(), instances: new Map(), audit: [], page: 0 };
const $ = (id) => document.getElementById(id);
const idOf = (i) => i.resource + '/' + i.instanceKey;
const fmtMs = (ms) => ms == null ? '' : ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms / 1000).toFixed(1) + ' s' : Math.round(ms / 60000) + ' min';
const fmtTime = (iso) => iso == null ? '' : new Date(iso).toLocaleTimeString();
const el = (tag, props, ...children) => {
  const e = document.createElement(tag);
  if (props) for (const [k, v] of Object.entries(props)) { if (k === 'class') e.className = v; else if (k.startsWith('data-')) e.setAttribute(k, v); else e[k] = v; }
  for (const c of children) if (c != null) e.append(c);
  return e;
};
function showError(msg) { const p = $('error'); p.textContent = msg; p.hidden = !msg; }

async function api(method, path, body) {
  const res = await fetch(path, { method, credentials: 'same-origin', headers: { 'content-type': 'application/json', 'x-csrf-token': token }, body: body === undefined ? undefined : JSON.stringify(body) });
  const type = res.headers.get('content-type') || '';
  const data = type.includes('json') ? await res.json() : await res.text();
  if (!res.ok) throw new Error((data && data.detail) || res.status + ' ' + res.statusText);
  return data;
}

async function loadAll() {
  const [resources, audit, owed] = await Promise.all([api('GET', '/api/v1/resources'), api('GET', '/api/v1/audit?limit=15'), api('GET', '/api/v1/stop-retries')]);
  state.resources.clear();
  state.instances.clear();
  for (const r of resources.items) {
    state.resources.set(r.id, r);
    for (const i of r.instances) state.instances.set(idOf(i), i);
  }
  // A removed resource's instances are in no resource view; those owing a stop still matter.
  for (const o of owed.items) {
    if (!o.resourceRemoved) continue;
    state.instances.set(idOf(o), { resource: o.resource, instanceKey: o.instanceKey, state: o.instanceState, step: o.instanceState,
      stopRetry: o.stopRetry, resourceRemoved: true, activeConnections: 0 });
  }
  state.audit = audit.items;
  render();
}

let reloadTimer;
/** Boot history and estimates change when a boot finishes: refetched, at most once a second. */
function refreshResourcesSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(async () => {
    try {
      const resources = await api('GET', '/api/v1/resources');
      for (const r of resources.items) state.resources.set(r.id, r);
      renderResources();
    } catch (err) { showError(err.message); }
  }, 1000);
}

let frame = 0;
function render() { if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderResources(); renderInstances(); renderAudit(); }); }

function counts(resourceId) {
  const c = { ready: 0, starting: 0, stopping: 0, failed: 0, stopped: 0 };
  for (const i of state.instances.values()) if (i.resource === resourceId) c[i.state]++;
  return c;
}

function chart(history, estimate) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 200 48');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const last = history.slice(-40);
  const max = Math.max(1, ...last.map((s) => s.bootMs), estimate ? estimate.p90Ms : 0);
  const w = 200 / 40;
  last.forEach((s, i) => {
    const h = Math.max(1, (s.bootMs / max) * 46);
    const r = document.createElementNS(NS, 'rect');
    r.setAttribute('x', String(i * w + 0.5)); r.setAttribute('width', String(w - 1));
    r.setAttribute('y', String(48 - h)); r.setAttribute('height', String(h));
    const t = document.createElementNS(NS, 'title'); t.textContent = fmtMs(s.bootMs) + ' at ' + fmtTime(s.at);
    r.append(t); svg.append(r);
  });
  if (estimate) {
    const y = 48 - (estimate.p50Ms / max) * 46;
    const l = document.createElementNS(NS, 'line');
    l.setAttribute('x1', '0'); l.setAttribute('x2', '200'); l.setAttribute('y1', String(y)); l.setAttribute('y2', String(y));
    svg.append(l);
  }
  svg.setAttribute('aria-label', 'last ' + last.length + ' boot times' + (estimate ? ', median ' + fmtMs(estimate.p50Ms) : ''));
  return svg;
}

function renderResources() {
  const box = $('resources');
  box.replaceChildren();
  let ready = 0; let starting = 0;
  for (const r of state.resources.values()) {
    const c = counts(r.id);
    ready += c.ready; starting += c.starting;
    const est = r.boot.estimate;
    const start = el('button', { type: 'button', textContent: 'start', title: r.sharing === 'user' ? 'start an instance per user from the table' : 'start the ' + (r.sharing === 'shared' ? 'shared' : '"*"') + ' instance', disabled: r.sharing === 'user' });
    start.addEventListener('click', () => act('POST', '/api/v1/resources/' + encodeURIComponent(r.id) + '/start', {}));
    box.append(el('div', { class: 'card', 'data-resource': r.id },
      el('h3', null, el('span', { textContent: r.id }), start),
      el('div', { class: 'meta', textContent: r.provider + ' · ' + r.sharing + ' · ' + c.ready + ' ready, ' + c.starting + ' starting, ' + c.failed + ' failed' }),
      el('div', { class: 'meta', textContent: est ? 'boot p50 ' + fmtMs(est.p50Ms) + ', p90 ' + fmtMs(est.p90Ms) + ' (' + est.samples + (est.samples === 1 ? ' boot)' : ' boots)') : 'no boot on record yet' }),
      chart(r.boot.history, est)));
  }
  $('summary').textContent = state.resources.size + ' resources · ' + state.instances.size + ' instances · ' + ready + ' ready · ' + starting + ' starting';
  let owed = 0; let givenUp = 0;
  for (const i of state.instances.values()) if (i.stopRetry) { owed++; if (i.stopRetry.state === 'given-up') givenUp++; }
  const o = $('owed');
  o.hidden = owed === 0;
  o.className = givenUp > 0 ? 'owed given-up' : 'owed';
  o.textContent = owed === 0 ? '' : owed + (owed === 1 ? ' stop owed' : ' stops owed') + (givenUp > 0 ? ' (' + givenUp + ' given up: the machine may still run)' : ' (tried again)');
}

function visibleInstances() {
  const q = $('filter').value.trim().toLowerCase();
  const st = $('state-filter').value;
  const out = [];
  for (const i of state.instances.values()) {
    if (st && i.state !== st) continue;
    if (q && !(i.resource + ' ' + i.instanceKey + ' ' + (i.user || '') + ' ' + (i.startedBy || '') + ' ' + i.step + (i.stopRetry ? ' owed ' + i.stopRetry.state : '')).toLowerCase().includes(q)) continue;
    out.push(i);
  }
  out.sort((a, b) => a.resource.localeCompare(b.resource) || a.instanceKey.localeCompare(b.instanceKey));
  return out;
}

function renderInstances() {
  const all = visibleInstances();
  const pages = Math.max(1, Math.ceil(all.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const rows = all.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  const body = $('instances').tBodies[0];
  body.replaceChildren(...rows.map(row));
  $('instance-count').textContent = '(' + all.length + ')';
  $('page').textContent = ' page ' + (state.page + 1) + ' of ' + pages + ' ';
  $('prev').disabled = state.page === 0;
  $('next').disabled = state.page >= pages - 1;
}

function row(i) {
  const base = '/api/v1/resources/' + encodeURIComponent(i.resource) + '/instances/' + encodeURIComponent(i.instanceKey);
  const running = i.state === 'ready' || i.state === 'starting';
  // A removed resource cannot be started, and its instance is only here for its owed stop.
  const button = i.resourceRemoved ? null : running
    ? el('button', { type: 'button', textContent: 'stop', class: 'stop' })
    : el('button', { type: 'button', textContent: 'start', class: 'start', disabled: i.state === 'stopping' });
  if (button) button.addEventListener('click', () => running
    ? act('POST', base + '/stop')
    : act('POST', '/api/v1/resources/' + encodeURIComponent(i.resource) + '/start', { instanceKey: i.instanceKey }));
  const eta = i.state === 'starting' && i.eta ? 'ETA ' + fmtMs(i.eta.remainingMs) : i.state === 'ready' && i.elapsedMs != null ? 'booted in ' + fmtMs(i.elapsedMs) : '';
  return el('tr', { 'data-key': idOf(i), 'data-state': i.state, 'data-stop': i.stopRetry ? i.stopRetry.state : '' },
    el('td', null, i.resource, i.resourceRemoved ? el('span', { class: 'removed', textContent: ' (removed from config)' }) : null),
    el('td', { class: 'key', textContent: i.instanceKey, title: i.endpoint || '' }),
    el('td', { class: 'st st-' + i.state, textContent: i.step, title: i.lastError || '' }),
    el('td', { textContent: i.startedBy || '' }),
    el('td', { textContent: fmtTime(i.startRequestedAt) }),
    el('td', { textContent: fmtTime(i.lastActivityAt) }),
    el('td', { textContent: fmtTime(i.idleDeadline) }),
    el('td', { textContent: eta }),
    el('td', { textContent: String(i.activeConnections) }),
    stopRetryCell(i, base),
    el('td', null, button));
}

/** A stop owed for the instance: its tries, next try or that it gave up (the last error on hover), and what the operator can do. */
function stopRetryCell(i, base) {
  const s = i.stopRetry;
  if (!s) return el('td', { class: 'stop-retry' });
  const what = s.state === 'given-up' ? 'gave up after ' + s.attempts + ' tries'
    : s.state === 'running' ? 'trying (' + s.attempts + '/' + s.maxAttempts + ')'
    : 'retry ' + (s.attempts + 1) + '/' + s.maxAttempts + ' at ' + fmtTime(s.nextAttemptAt);
  const retry = el('button', { type: 'button', textContent: 'retry stop', class: 'retry-stop', disabled: s.state === 'running', title: 'try the stop now' });
  retry.addEventListener('click', () => act('POST', base + '/retry-stop'));
  const go = el('button', { type: 'button', textContent: 'let go', class: 'abandon-stop', disabled: s.state === 'running', title: 'stop trying: you take care of the machine (it may still run)' });
  go.addEventListener('click', () => act('POST', base + '/abandon-stop'));
  return el('td', { class: 'stop-retry' },
    el('span', { class: s.state, textContent: what, title: s.reason + (s.lastError ? ' — last error: ' + s.lastError : '') }),
    el('span', { class: 'last-error', textContent: s.lastError || '' }),
    retry, go);
}

function renderAudit() {
  $('audit').replaceChildren(...state.audit.slice(0, 15).map((e) => el('li', { 'data-type': e.type },
    el('time', { textContent: fmtTime(e.at) }),
    document.createTextNode(e.type + ' · ' + e.resource + (e.instanceKey ? ' ' + e.instanceKey : '') + (e.actor ? ' · by ' + e.actor : '') + (e.status ? ' · ' + e.status : '') + (e.reason ? ' · ' + e.reason : '')))));
}

async function act(method, path, body) {
  showError('');
  // The change itself arrives on the live stream (every action publishes one), in order with
  // the rest: the answer is not applied, it may be older than what the stream said since.
  try { await api(method, path, body); } catch (err) { showError(err.message); }
}

function connect() {
  const live = $('live');
  const es = new EventSource('/api/v1/events');
  es.onopen = () => { live.textContent = 'live'; live.className = 'live on'; };
  es.onerror = () => { live.textContent = 'reconnecting…'; live.className = 'live off'; };
  es.addEventListener('instance', (m) => {
    const i = JSON.parse(m.data);
    // Changes that arrive while the first snapshot loads are applied after it (they are newer).
    if (!loaded) { early.push(i); return; }
    const before = state.instances.get(idOf(i));
    // An instance of a removed resource stays listed only while it owes a stop.
    if (i.resourceRemoved && !i.stopRetry) state.instances.delete(idOf(i));
    else state.instances.set(idOf(i), i);
    if (i.state === 'ready' && (!before || before.state !== 'ready')) refreshResourcesSoon();
    render();
  });
  es.addEventListener('audit', (m) => {
    state.audit.unshift(JSON.parse(m.data));
    state.audit.length = Math.min(state.audit.length, 50);
    render();
  });
}

$('filter').addEventListener('input', () => { state.page = 0; renderInstances(); });
$('state-filter').addEventListener('change', () => { state.page = 0; renderInstances(); });
$('prev').addEventListener('click', () => { state.page--; renderInstances(); });
$('next').addEventListener('click', () => { state.page++; renderInstances(); });
let loaded = false;
const early = [];
// Subscribe first, then load: nothing that happens in between is missed.
connect();
loadAll().then(() => {
  loaded = true;
  for (const i of early.splice(0)) {
    if (i.resourceRemoved && !i.stopRetry) state.instances.delete(idOf(i));
    else state.instances.set(idOf(i), i);
  }
  render();
}, (err) => showError('could not load: ' + err.message));
`;

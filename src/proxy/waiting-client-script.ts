/**
 * The waiting page's live-update script, inlined (no external asset) with the response's CSP
 * nonce. It follows the proxy's progress stream, ticks the elapsed time, keeps the estimate
 * text current, and reloads the original URL once the instance is ready. It fills these
 * elements when the theme has them (all optional): `#sp-main[data-step]`, `#sp-state`,
 * `#sp-reason`, `#sp-elapsed`, `#sp-eta`, `#sp-progress`, and the document title when the
 * `<title>` has `id="sp-title-text"`. The estimate wording follows `etaText` in
 * waiting-page.ts, the title choice `titleKind`.
 *
 * Plain ES5-ish JavaScript on purpose: it runs as is in any browser, with nothing to build.
 */
const SCRIPT = String.raw`(function () {
  'use strict';
  var cfg = __CONFIG__;
  var snap = cfg.snapshot;
  var base = Date.now() - (snap.elapsedMs || 0);
  var lastMessageAt = Date.now();
  var finished = false;
  function $(id) { return document.getElementById(id); }
  function setText(id, text) { var el = $(id); if (el && el.textContent !== text) el.textContent = text; }
  function dur(ms) {
    var s = ms / 1000;
    if (s < 10) return (Math.round(s * 10) / 10).toFixed(1) + ' s';
    if (s < 60) return Math.round(s) + ' s';
    var w = Math.round(s);
    return Math.floor(w / 60) + ' min ' + (w % 60) + ' s';
  }
  function elapsed() { return snap.elapsedMs === null ? null : (snap.step === 'ready' ? snap.elapsedMs : Date.now() - base); }
  function etaText(e) {
    var eta = snap.eta;
    if (!eta) return 'No estimate yet: this resource has no recorded starts.';
    var from = 'from ' + eta.samples + ' past start' + (eta.samples === 1 ? '' : 's');
    if (snap.step === 'ready') return 'Usually ' + dur(eta.p50Ms) + ' (' + from + ').';
    e = e || 0;
    var range = eta.p90Ms > eta.p50Ms ? ', 9 in 10 within ' + dur(eta.p90Ms) : '';
    if (e < eta.p50Ms) return 'About ' + dur(eta.p50Ms - e) + ' left: usually ' + dur(eta.p50Ms) + range + ' (' + from + ').';
    if (e < eta.p90Ms) return 'A little slower than usual: 9 in 10 starts finish within ' + dur(eta.p90Ms) + ' (' + from + ').';
    return 'Slower than usual: it usually takes ' + dur(eta.p50Ms) + ' (' + from + ').';
  }
  function paint() {
    var e = elapsed();
    setText('sp-elapsed', e === null ? '\u2013' : dur(e));
    setText('sp-eta', etaText(e));
    var bar = $('sp-progress');
    if (bar) {
      if (snap.step === 'ready') bar.value = 100;
      else if (!snap.eta || e === null || snap.eta.p90Ms <= 0) bar.removeAttribute('value');
      else bar.value = Math.min(95, Math.round(e / snap.eta.p90Ms * 100));
    }
  }
  function apply(s) {
    snap = s;
    if (s.elapsedMs !== null) base = Date.now() - s.elapsedMs;
    var main = $('sp-main');
    if (main) main.setAttribute('data-step', s.step);
    var items = document.querySelectorAll('[data-step-item]');
    for (var i = 0; i < items.length; i++) {
      if (items[i].getAttribute('data-step-item') === s.step) items[i].setAttribute('aria-current', 'step');
      else items[i].removeAttribute('aria-current');
    }
    // Only real changes reach the live region, so a screen reader announces steps, not ticks.
    setText('sp-state', cfg.stepTexts[s.step] || s.step);
    setText('sp-reason', s.reason || '');
    // Only a theme that asks for it (its <title> has the id) gets its tab title rewritten.
    if ($('sp-title-text') && cfg.titles) {
      var kind = s.step === 'ready' ? 'ready' : s.step !== 'failed' ? 'starting' : s.code === 'SP_BOOT_TIMEOUT' ? 'timeout' : 'failed';
      if (document.title !== cfg.titles[kind]) document.title = cfg.titles[kind];
    }
    paint();
    // Stopped with nothing starting it (say, an idle stop raced this page): a reload asks again.
    if (s.state === 'stopped' && !reloadQueued) { reloadQueued = true; setTimeout(reload, cfg.refreshS * 1000); }
  }
  function reload() { location.reload(); }
  var reloadQueued = false;
  apply(snap);
  if (!window.EventSource) { setTimeout(reload, cfg.refreshS * 1000); return; }
  var es = new EventSource(cfg.eventsUrl);
  function on(name, fn) {
    es.addEventListener(name, function (ev) {
      lastMessageAt = Date.now();
      var s;
      try { s = JSON.parse(ev.data); } catch (err) { return; }
      fn(s);
    });
  }
  on('progress', apply);
  on('ready', function (s) { finished = true; es.close(); apply(s); reload(); });
  on('failed', function (s) { finished = true; es.close(); apply(s); });
  setInterval(function () {
    if (finished) return;
    paint();
    // The stream sends a snapshot every 5 s; 15 s of silence means it is broken somewhere
    // between here and the proxy: fall back to what works without JavaScript.
    if (Date.now() - lastMessageAt > 15000) reload();
  }, 1000);
})();`;

/** The script text with the page's configuration JSON (already `<`-escaped) inlined. */
export function clientScript(configJson: string): string {
  return SCRIPT.replace('__CONFIG__', () => configJson);
}

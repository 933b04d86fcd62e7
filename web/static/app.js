// jobfleet dashboard: the only script (served from /static, so the Content-Security-Policy
// allows no inline script). It refreshes live cells from /live (server-sent events), swaps
// chart image URLs, polls a running task's progress, and wires "select all". It only ever
// sets textContent, never HTML.
'use strict';

function liveTables() {
  const root = document.querySelector('[data-live]');
  if (!root || !window.EventSource) return;
  const src = new EventSource(root.getAttribute('data-live'));
  let lastChart = 0;
  src.addEventListener('snapshot', (ev) => {
    const snap = JSON.parse(ev.data);
    for (const [queue, cells] of Object.entries(snap.queues)) {
      for (const [field, text] of Object.entries(cells)) {
        document
          .querySelectorAll(`[data-f="${field}"]`)
          .forEach((el) => { if (el.dataset.q === queue && el.textContent !== text) el.textContent = text; });
      }
    }
    document.querySelectorAll('[data-live-at]').forEach((el) => { el.textContent = snap.at; });
    // Charts change slowly: refetch them at most every 10 s.
    const now = Date.now();
    if (now - lastChart >= 10000) {
      lastChart = now;
      document.querySelectorAll('img[data-chart]').forEach((img) => {
        const base = img.getAttribute('src').split('?')[0];
        img.setAttribute('src', `${base}?r=${snap.round}`);
      });
    }
  });
}

function taskProgress() {
  const el = document.querySelector('[data-task-poll]');
  if (!el) return;
  const url = el.getAttribute('data-task-poll');
  const set = (name, v) => document.querySelectorAll(`[data-t="${name}"]`).forEach((n) => { n.textContent = String(v); });
  const tick = async () => {
    let t;
    try {
      t = await (await fetch(url, { credentials: 'same-origin' })).json();
    } catch (_) {
      setTimeout(tick, 2000);
      return;
    }
    set('state', t.state);
    for (const k of ['done', 'skipped', 'failed', 'matched', 'scanned']) set(k, t.report[k]);
    const bar = document.querySelector('progress[data-t="progress"]');
    if (bar) bar.value = Math.min(t.report.matched, Number(bar.max));
    if (t.running) setTimeout(tick, 1000);
    else window.location.reload();
  };
  setTimeout(tick, 500);
}

function selectAll() {
  document.querySelectorAll('[data-select-all]').forEach((box) => {
    box.addEventListener('change', () => {
      document.querySelectorAll('input[type="checkbox"][name="id"]').forEach((c) => { c.checked = box.checked; });
    });
  });
}

document.addEventListener('DOMContentLoaded', () => {
  liveTables();
  taskProgress();
  selectAll();
});

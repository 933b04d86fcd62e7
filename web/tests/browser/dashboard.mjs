// Drives Debian's chromium (no browser download) through a real `worker web`, for
// worker/tests/web_browser.rs. Steps that need the backend changed are handed to the Rust test:
// the script prints `STEP <name>` and waits for one line on stdin before it goes on. Every
// check that fails throws, so the process exits non-zero with the reason.
//
//   node dashboard.mjs full     BASE QUEUE FIX_TABLE [SHOTS_DIR]
//   node dashboard.mjs readonly BASE QUEUE
//   node dashboard.mjs token    BASE QUEUE TOKEN
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';

const [mode, base, queue, extra, shots] = process.argv.slice(2);
const rl = createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
async function step(name) {
  console.log(`STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== 'OK') throw new Error(`the test did not confirm step ${name}: ${value}`);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}
async function eventually(what, fn, ms = 20000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    try { if (await fn()) { console.log(`ok: ${what}`); return; } } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms: ${what}${last ? ` (${last})` : ''}`);
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const dialogs = [];
page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
const errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
const q = encodeURIComponent(queue);
async function shot(name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}
const cell = (field) => page.locator(`[data-q="${queue}"][data-f="${field}"]`).first();
// Every POST here goes through fetch from the page itself, so only the token decides.
async function post(path, body, withCsrf) {
  return page.evaluate(async ({ path, body, withCsrf }) => {
    const params = new URLSearchParams(body);
    if (withCsrf) params.set('csrf', document.body.dataset.csrf);
    const r = await fetch(path, { method: 'POST', body: params, credentials: 'same-origin' });
    return r.status;
  }, { path, body, withCsrf });
}

try {
  if (mode === 'full') {
    const fixTable = extra;
    // Overview: the depth changes without a reload.
    await page.goto(`${base}/`);
    check((await page.getAttribute('[data-live]', 'data-live')) === '/live', 'overview streams /live');
    await eventually('visible depth starts at 0', async () => (await cell('visible').textContent()).trim() === '0');
    await page.evaluate(() => { window.__noReload = true; });
    await step('enqueue');
    await eventually('visible depth shows the 4 enqueued jobs without a reload', async () => (await cell('visible').textContent()).trim() === '4');
    check(await page.evaluate(() => window.__noReload === true), 'the page was not reloaded');
    await shot('overview');

    // A worker runs them: two kinds of failure land in the DLQ.
    await step('run-worker');
    await eventually('DLQ depth 3 on the overview', async () => (await cell('dead_lettered').textContent()).trim() === '3', 30000);

    // Group by error: two distinct reasons, counted.
    await page.goto(`${base}/queues/${q}/dlq/groups`);
    const groups = await page.$$eval('table.groups tbody tr', (rows) => rows.map((r) => ({
      count: r.querySelector('td.count')?.textContent.trim(), reason: r.querySelector('td.reason')?.textContent ?? '',
    })));
    check(groups.length === 2, `two error groups (got ${JSON.stringify(groups)})`);
    check(groups[0].count === '2' && groups[0].reason.includes('<script>alert(1)</script>'), 'the script failure is counted twice, shown as text');
    check(groups[1].count === '1' && groups[1].reason.includes(fixTable), 'the missing-table failure is counted once');
    await shot('groups');

    // The DLQ browser with the error filter finds the one failed job.
    await page.goto(`${base}/queues/${q}/dlq`);
    await shot('dlq');
    await page.fill('input[name="error"]', fixTable);
    await Promise.all([page.waitForNavigation(), page.click('form.filters button[type="submit"]')]);
    const rows = page.locator('table.dlq tbody tr');
    check((await rows.count()) === 1, 'the error filter leaves one entry');
    const id = (await rows.first().locator('td code').textContent()).trim();
    await Promise.all([page.waitForNavigation(), rows.first().locator('td a').first().click()]);
    const history = await page.locator('table.history tbody tr').count();
    check(history >= 1, `its error history is shown (${history} rows)`);
    check((await page.locator('table.history').textContent()).includes(fixTable), 'the history names the failure');
    await shot('entry');

    // The bug is fixed; replay it with a dry run first.
    await step('fix');
    await Promise.all([page.waitForNavigation(), page.click('button[value="replay-selected"]')]);
    check((await page.textContent('[data-dry-run-count]')).trim() === '1', 'the dry run counts 1 entry');
    await shot('dry-run');
    await page.fill('input[name="rate"]', '50');
    await Promise.all([page.waitForNavigation(), page.click('form.confirm button[type="submit"]')]);
    await eventually('the replay task finishes with 1 replayed', async () =>
      (await page.textContent('[data-t="state"]')).trim() === 'done' && (await page.textContent('[data-t="done"]')).trim() === '1');
    await shot('task');
    console.log(`REPLAYED ${id}`);
    await step('replayed');

    // Job lookup: the replayed job is gone from the DLQ; a failed one is found there.
    await page.goto(`${base}/job?id=${encodeURIComponent(id)}`);
    check((await page.textContent('main')).includes('Not in the DLQ'), 'job lookup: the replayed job is no longer dead-lettered');

    // The <script> payload renders as text; no dialog fires anywhere.
    await page.goto(`${base}/queues/${q}/dlq?kind=diag_fail`);
    const xssId = (await page.locator('table.dlq tbody tr td code').first().textContent()).trim();
    check((await page.locator('table.dlq tbody td.reason').first().textContent()).includes('<script>alert(1)</script>'), 'the reason shows the script tag as text');
    await page.goto(`${base}/queues/${q}/dlq/entry?id=${encodeURIComponent(xssId)}`);
    check((await page.textContent('pre.payload')).includes('<script>alert(1)</script>'), 'the payload shows the script tag as text');
    check((await page.locator('main script').count()) === 0, 'no script element was injected');
    await page.goto(`${base}/job?id=${encodeURIComponent(xssId)}`);
    check((await page.textContent('main')).includes(`In the DLQ of ${queue}`), 'job lookup finds the dead-lettered job');
    await shot('job');
    check(dialogs.length === 0, `no dialog fired (${JSON.stringify(dialogs)})`);

    // CSRF: the same POST is refused without the token and served with it.
    check(await post(`/queues/${q}/dlq/plan`, { do: 'purge-matching' }, false) === 403, 'POST without the CSRF token: 403');
    check(await post(`/queues/${q}/dlq/plan`, { do: 'purge-matching' }, true) === 200, 'the same POST with the token: 200');

    // Pause for the fleet: the running worker stops receiving from the queue; resume brings it back.
    await page.goto(`${base}/queues/${q}`);
    await page.fill('input[name="reason"]', 'browser test: hold the queue');
    await Promise.all([page.waitForNavigation(), page.click('button[name="pause"]')]);
    check((await page.textContent('div.pause')).includes('paused by'), 'the queue page shows it paused, and by whom');
    await shot('queue');
    await step('paused');
    await Promise.all([page.waitForNavigation(), page.click('button[name="resume"]')]);
    check((await page.textContent('div.pause')).includes('Receiving'), 'the queue page shows it resumed');
    await step('resumed');

    // Limits of the kind, on the queue page: set, a bad rate refused, cleared — the same
    // functions as `worker limit`, each change audited with the signed-in user.
    await page.goto(`${base}/queues/${q}`);
    const kindRow = page.locator('table.limits tr[data-scope="kind:diag_sleep"]');
    const lim = async (f) => (await kindRow.locator(`[data-l="${f}"]`).textContent()).trim();
    check((await kindRow.count()) === 1, 'the queue page lists the limit of a kind routed to it');
    check((await page.locator(`table.limits tr[data-scope="queue:${queue}"]`).count()) === 1, 'and the limit of the queue itself');
    check(await lim('rate') === 'unlimited' && await lim('concurrency') === 'unlimited', 'diag_sleep starts unlimited');
    await kindRow.locator('input[name="rate"]').fill('600/min');
    await kindRow.locator('input[name="concurrency"]').fill('3');
    await Promise.all([page.waitForNavigation(), kindRow.locator('button[value="set"]').click()]);
    check(await lim('rate') === '600/min' && await lim('concurrency') === '3', `the limit in force is shown (${await lim('rate')}, ${await lim('concurrency')})`);
    check((await lim('set_by')).includes('(web)'), 'set by the dashboard user');
    await shot('limits');
    await step('limited');
    await kindRow.locator('input[name="rate"]').fill('5/fortnight');
    const [bad] = await Promise.all([page.waitForNavigation(), kindRow.locator('button[value="set"]').click()]);
    check(bad.status() === 400 && (await page.textContent('main')).includes('5/fortnight'), `a bad rate is refused, naming it (${bad.status()})`);
    await page.goto(`${base}/queues/${q}`);
    check(await lim('rate') === '600/min', 'the refused change changed nothing');
    await Promise.all([page.waitForNavigation(), kindRow.locator('button[value="clear"]').click()]);
    check(await lim('rate') === 'unlimited' && await lim('concurrency') === 'unlimited', 'clearing the override leaves it unlimited');
    await step('unlimited');
    await page.goto(`${base}/workers`);
    check((await page.textContent('table.workers')).includes('web-test-worker'), 'the workers page lists the running worker');
    await shot('workers');
    await page.goto(`${base}/schedules`);
    check((await page.textContent('table.schedules')).includes('web_tick'), 'schedules page lists the schedule');
    await shot('schedules');
    await page.goto(`${base}/audit`);
    const audit = await page.textContent('table.audit');
    check(audit.includes('dlq_replay') && audit.includes('(web)'), 'the audit log names the replay and who did it');
    check(audit.includes('pause') && audit.includes('resume'), 'the audit log has the pause and the resume');
    check(audit.includes('limit_set') && audit.includes('limit_clear'), 'the audit log has the limit changes');
    await shot('audit');
    // The refused POST above and a missing favicon log resource errors; a CSP violation would
    // mean a page needs inline script or style.
    const csp = errors.filter((e) => e.includes('Content Security Policy'));
    check(csp.length === 0, `no Content-Security-Policy violation: ${JSON.stringify(csp)}`);
  } else if (mode === 'readonly') {
    // An action is a POST form or any button outside a GET form (the DLQ filter's "Filter"
    // button only reloads the page with a query string).
    const actions = async () => (await page.locator('main form[method="post"]').count())
      + (await page.locator('main button').evaluateAll((bs) => bs.filter((b) => b.closest('form')?.getAttribute('method') !== 'get').length));
    await page.goto(`${base}/queues/${q}/dlq`);
    check((await page.locator('.banner').textContent()).includes('Read-only'), 'read-only banner');
    check(await actions() === 0, 'no action button on the DLQ page');
    check((await page.locator('main input[type="checkbox"]').count()) === 0, 'no selection boxes');
    check(await post(`/queues/${q}/limits`, { scope: 'kind', name: 'diag_sleep', rate: '1/s', do: 'set' }, true) === 403, 'a limit change is refused read-only');
    const status = await post(`/queues/${q}/dlq/plan`, { do: 'purge-matching' }, true);
    check(status === 403, `a POST with a valid CSRF token is refused read-only (${status})`);
    await page.goto(`${base}/queues/${q}/dlq/entry?id=${encodeURIComponent(extra)}`);
    check(await actions() === 0, 'no action button on the entry page');
    await page.goto(`${base}/queues/${q}`);
    check((await page.locator('table.limits').count()) === 1 && await actions() === 0, 'the queue page shows the limits, no action button');
  } else if (mode === 'token') {
    const r = await page.goto(`${base}/`);
    check(page.url().endsWith('/login'), 'unsigned-in visit goes to the login form');
    await page.fill('input[name="name"]', 'alice');
    await page.fill('input[name="token"]', 'wrong-token');
    await page.click('button[type="submit"]');
    check((await page.textContent('main')).includes('Wrong token'), 'a wrong token is refused');
    await page.fill('input[name="name"]', 'alice');
    await page.fill('input[name="token"]', extra);
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    check((await page.textContent('header .who')).includes('alice (web)'), 'signed in as alice');
    const cookies = await page.context().cookies();
    const c = cookies.find((c) => c.name === 'jobfleet_session');
    check(c && c.httpOnly && c.sameSite === 'Strict', 'the session cookie is HttpOnly, SameSite=Strict');
    void r;
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  console.log('DONE');
} finally {
  await browser.close();
  // An open stdin keeps node running, and the test waits for this process to end.
  rl.close();
  process.stdin.destroy();
}

// Drives the dzhook dashboard in Debian's headless chromium for
// internal/dashboard/browser_test.go, which starts PostgreSQL, dzhook and a
// receiver, and passes in the environment:
//
//   DZHOOK_URL           the dashboard's URL (http://127.0.0.1:port/)
//   DZHOOK_TOKEN         the admin token
//   DZHOOK_SUBSCRIPTION  the subscription's id
//   DZHOOK_DELIVERY_ID   the delivery an INSERT caused; its first attempt
//                        got a 500, the receiver answers 200 from attempt 2
//   DZHOOK_INSTANCE      the dzhook instance that makes its attempts
//   DZHOOK_WAITED_ID     the delivery of the request's update, which waits
//                        behind it (the subscription has ordering: entity)
//   DZHOOK_LEDGER_ID     the delivery of a logical message to the subscription
//                        "ledger": its data has 9007199254740993, 10.50 and
//                        keys "2", "b", "1" in that order
//   DZHOOK_LEDGER_BODY   the bytes the ledger's receiver got
//   DZHOOK_LEDGER_ANSWER what it answers, to that and to test sends
//   DZHOOK_NEW_URL       the endpoint of the webhook the script adds (it
//                        answers 200 to test events, 500 to the others)
//   DZHOOK_NEW_ID        the id the script gives that webhook; the test
//                        inserts a user once it exists, whose delivery
//                        stays pending after a 500
//   DZHOOK_SECRET_FILE   where the script writes the secret the page showed
//                        once, for the test to verify the signature
//   DZHOOK_REPLAY_FILE   where the script writes the ids of the two replays
//                        it starts into DZHOOK_SUBSCRIPTION (done, then
//                        cancelled), one a line; once it is written, the
//                        test records DZHOOK_FAILED_REPLAY
//   DZHOOK_FAILED_REPLAY the id of a replay into DZHOOK_SUBSCRIPTION of the
//                        last ten minutes of request.created, failed (its
//                        subscription missing) with one delivery waiting
//   DZHOOK_CHAT_URL      the endpoint of the Slack webhook the script adds
//                        last (it answers 429 to Busy Bee's message)
//   DZHOOK_CHAT_ID       its id; once it exists the test makes four user
//                        events: sent, skipped, failed, and answered 429
//   DZHOOK_PAGES_URL     an endpoint that answers 200: the script adds a
//                        webhook "pages" there through the API and sends
//                        it enough test events for several history pages
//   DZHOOK_SCREENSHOT    where to write the screenshot (PNG)
//   DZHOOK_CHROMIUM      the browser (default /usr/bin/chromium)
//
// It exits 0 when every expectation held, 1 with "FAIL: …" otherwise.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') {
    console.error(`FAIL: ${name} is not set (run through go test ./internal/dashboard/)`);
    process.exit(2);
  }
  return v;
};

const url = env('DZHOOK_URL');
const token = env('DZHOOK_TOKEN');
const sub = env('DZHOOK_SUBSCRIPTION');
const deliveryID = env('DZHOOK_DELIVERY_ID');
const instance = env('DZHOOK_INSTANCE');
const waitedID = env('DZHOOK_WAITED_ID');
const ledgerID = env('DZHOOK_LEDGER_ID');
const ledgerBody = env('DZHOOK_LEDGER_BODY');
const ledgerAnswer = env('DZHOOK_LEDGER_ANSWER');
const newURL = env('DZHOOK_NEW_URL');
const newID = env('DZHOOK_NEW_ID');
const secretFile = env('DZHOOK_SECRET_FILE');
const replayFile = env('DZHOOK_REPLAY_FILE');
const failedReplay = env('DZHOOK_FAILED_REPLAY');
const chatURL = env('DZHOOK_CHAT_URL');
const chatID = env('DZHOOK_CHAT_ID');
const pagesURL = env('DZHOOK_PAGES_URL');
const screenshot = env('DZHOOK_SCREENSHOT');
const executablePath = env('DZHOOK_CHROMIUM', '/usr/bin/chromium');
const TIMEOUT = 15_000;

const tid = (id) => `[data-testid="${id}"]`;
// ZONE matches the short name of a time zone, as Intl gives it: "UTC",
// "CET", "GMT+2", "GMT-03:30".
const ZONE = '(?:[A-Z]{2,5}|GMT[+-]\\d{1,2}(?::\\d\\d)?)';

// step logs what the script is about to check, so a failure reads as a
// story.
let current = 'start';
function step(what) {
  current = what;
  console.log(`- ${what}`);
}

// eventually polls get() until ok(value) holds, or fails with the last
// value seen.
async function eventually(what, get, ok, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await get();
      if (ok(last)) return last;
    } catch (e) {
      last = `error: ${e.message.split('\n')[0]}`;
    }
    if (Date.now() > deadline) throw new Error(`${what}: after ${timeout} ms still ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// compactJSON drops the whitespace between JSON tokens, strings kept
// whole: what the page shows, re-indented, compared with the bytes sent.
function compactJSON(s) {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '"') {
      let j = i + 1;
      while (j < s.length && s[j] !== '"') j += s[j] === '\\' ? 2 : 1;
      out += s.slice(i, j + 1);
      i = j;
    } else if (!' \t\n\r'.includes(c)) {
      out += c;
    }
  }
  return out;
}

const text = (loc) => loc.textContent({ timeout: 1000 }).then((s) => (s ?? '').trim());
// textNow: read once, outside eventually, with Playwright's default wait
// (a loaded CI host can take more than a second to render).
const textNow = (loc) => loc.textContent().then((s) => (s ?? '').trim());

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dzhook-chromium-'));
let context;
let page;
const pageErrors = [];

async function main() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1366, height: 768 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--no-first-run', '--disable-sync', '--disable-quic'],
    timeout: 30_000,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => pageErrors.push(`uncaught: ${e.message}`));
  page.on('console', (m) => {
    // A refused fetch is logged by the browser itself; CSP violations and
    // script errors are the page's fault.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(`console: ${m.text()}`);
  });

  step('open the dashboard: it asks for the token, and Escape pressed twice does not leave the page waiting without it');
  await page.goto(url);
  await page.locator(tid('token-input')).waitFor({ state: 'visible' });
  await page.keyboard.press('Escape');
  await page.keyboard.press('Escape');
  await eventually('the token dialog still open', () => page.locator(tid('token-dialog')).isVisible(), (v) => v === true);
  await page.locator(tid('token-input')).focus();

  step('a wrong token is refused and asked for again');
  await page.locator(tid('token-input')).fill('not-the-token');
  await page.locator(tid('token-submit')).click();
  await eventually('token error shown', () => text(page.locator(tid('token-error'))), (s) => s.includes('refused'));
  if (!(await page.locator(tid('token-input')).isVisible())) throw new Error('the token dialog closed after a wrong token');

  step('the right token opens the dashboard');
  await page.locator(tid('token-input')).fill(token);
  await page.keyboard.press('Enter');
  await page.locator(tid('token-dialog')).waitFor({ state: 'hidden' });
  const stored = await page.evaluate(() => sessionStorage.getItem('dzhook.adminToken'));
  if (stored !== token) throw new Error(`token in sessionStorage: ${JSON.stringify(stored)}`);

  step(`subscription ${sub} is listed with its URL and state`);
  const card = page.locator(tid(`subscription-row-${sub}`));
  await card.waitFor({ state: 'visible' });
  await eventually('subscription URL', () => text(page.locator(tid(`url-${sub}`))), (s) => s.includes('/hooks/dzdesk'));
  const st = await eventually('subscription state', () => text(page.locator(tid(`state-${sub}`))), (s) => ['healthy', 'failing'].includes(s));
  console.log(`  state ${st}`);
  await eventually('chart of the last hour', () => page.locator(`${tid(`chart-${sub}`)} rect`).count(), (n) => n >= 1);

  step(`${sub} shows its ordering and the key blocked behind the 500`);
  await eventually('ordering', () => text(page.locator(tid(`ordering-${sub}`))), (s) => s === 'ordering: entity');
  const blocked = await eventually('blocked keys', () => text(page.locator(tid(`blocked-${sub}`))), (s) => s.startsWith('Blocked keys: 1 (oldest created ') && s.endsWith(': req_42)'));
  console.log(`  ${blocked}`);
  await eventually('the blocked key\'s head', () => text(page.locator(tid(`blocked-head-${sub}`))), (s) => s === deliveryID);

  step(`delivery ${deliveryID} is in the history, pending after its 500`);
  const row = page.locator(tid(`delivery-row-${deliveryID}`));
  await row.waitFor({ state: 'visible' });
  await eventually('delivery state', () => text(page.locator(tid(`delivery-state-${deliveryID}`))), (s) => s === 'pending');

  step('open it: one automatic attempt, HTTP 500, the receiver\'s body and the payload');
  await page.locator(tid(`open-${deliveryID}`)).click();
  await page.locator(tid('delivery-detail')).waitFor({ state: 'visible' });
  await eventually('detail id', () => text(page.locator(tid('detail-id'))), (s) => s === deliveryID);
  const attempts = page.locator(tid('attempt-row'));
  await eventually('one attempt', () => attempts.count(), (n) => n === 1);
  await eventually('first attempt trigger', () => text(attempts.nth(0).locator(tid('attempt-trigger'))), (s) => s === 'auto');
  await eventually('first attempt status', () => text(attempts.nth(0).locator(tid('attempt-status'))), (s) => s === '500');
  await eventually('first attempt instance', () => text(attempts.nth(0).locator(tid('attempt-instance'))), (s) => s === instance);
  await page.locator(tid('attempt-body')).first().locator('summary').click();
  await eventually('first response body', () => text(page.locator(tid('attempt-body')).first().locator('pre')), (s) => s === 'receiver down');
  const payload = JSON.parse(await textNow(page.locator(tid('payload'))));
  if (payload.event !== 'request.created') throw new Error(`payload event: ${JSON.stringify(payload.event)}`);
  if (!(await textNow(page.locator(tid('payload')))).includes('\n  ')) throw new Error('the payload is not pretty-printed');
  if (!(await page.evaluate(() => location.hash)).includes(deliveryID)) throw new Error('the open delivery is not in the URL');

  step('its ordering key, and the update that waits behind it');
  await eventually('ordering key', () => text(page.locator(tid('detail-ordering-key'))), (s) => s === 'req_42');
  await page.locator(tid('waited-behind')).waitFor({ state: 'visible' });
  await eventually('waited behind it', () => page.locator(`${tid('waited-list')} li`).allTextContents(), (l) => l.length === 1 && l[0].trim() === waitedID);
  if (await page.locator(tid('detail-waiting-behind')).count() !== 0) throw new Error('the head shows a delivery it waits behind');

  step('open the update from that list: it waits behind the created, which opens from there');
  await page.locator(tid(`waited-${waitedID}`)).click();
  await eventually('detail id', () => text(page.locator(tid('detail-id'))), (s) => s === waitedID);
  await eventually('waits behind', () => text(page.locator(tid('detail-waiting-behind'))), (s) => s === deliveryID);
  await page.locator(tid('detail-waiting-behind')).click();
  await eventually('detail id', () => text(page.locator(tid('detail-id'))), (s) => s === deliveryID);
  await eventually('one attempt', () => attempts.count(), (n) => n === 1);

  step('retry it from the dashboard (the receiver now answers 200): a second, manual attempt');
  await page.locator(tid('retry-delivery')).click();
  await eventually('two attempts', () => attempts.count(), (n) => n === 2);
  await eventually('second attempt trigger', () => text(attempts.nth(1).locator(tid('attempt-trigger'))), (s) => s === 'manual');
  await eventually('second attempt status', () => text(attempts.nth(1).locator(tid('attempt-status'))), (s) => s === '200');
  await eventually('second attempt instance', () => text(attempts.nth(1).locator(tid('attempt-instance'))), (s) => s === instance);
  await eventually('detail state', () => text(page.locator(tid('detail-state'))), (s) => s === 'delivered');
  await eventually('history row state', () => text(page.locator(tid(`delivery-state-${deliveryID}`))), (s) => s === 'delivered');
  await eventually('status message', () => text(page.locator(tid('status'))), (s) => s.includes('HTTP 200'));

  step('its key moves on: the update is delivered, no key is blocked, and the history still shows what waited');
  await eventually('update delivered', () => text(page.locator(tid(`delivery-state-${waitedID}`))), (s) => s === 'delivered');
  await eventually('blocked keys', () => text(page.locator(tid(`blocked-${sub}`))), (s) => s === 'Blocked keys: none');
  await eventually('no blocked head', () => page.locator(tid(`blocked-head-${sub}`)).isVisible(), (v) => v === false);
  await eventually('still waited behind it', () => page.locator(`${tid('waited-list')} li`).count(), (n) => n === 1);

  step('send a test event from the subscription\'s card');
  await page.locator(tid(`test-event-${sub}`)).selectOption('request.assigned');
  await page.locator(tid(`send-test-${sub}`)).click();
  await eventually('test result status', () => text(page.locator(tid(`test-result-${sub}-status`))), (s) => s === 'HTTP 200');
  await eventually('test result body', () => text(page.locator(tid(`test-result-${sub}-body`))), (s) => s.includes('"received": "test"'));

  step('the filters narrow the history, and live updates keep the open detail');
  await page.locator(tid('filter-status')).selectOption('failed');
  await eventually('no failed delivery', () => page.locator(tid('history-empty')).isVisible(), (v) => v === true);
  await page.locator(tid('filter-status')).selectOption('delivered');
  await row.waitFor({ state: 'visible' });
  // Two polls later the detail is still open with its two attempts.
  let live = await textNow(page.locator(tid('live')));
  for (const n of [1, 2]) {
    const before = live;
    live = await eventually(`live update ${n}`, () => text(page.locator(tid('live'))), (s) => s !== before && s.startsWith('Live'), 10_000);
  }
  if ((await attempts.count()) !== 2 || !(await page.locator(tid('delivery-detail')).isVisible())) throw new Error('a live update lost the open detail');
  if ((await page.locator(tid('filter-status')).inputValue()) !== 'delivered') throw new Error('a live update reset the status filter');

  step(`pause ${sub}: its state becomes paused and Resume takes the focus`);
  await page.locator(tid(`pause-${sub}`)).click();
  await eventually('subscription state', () => text(page.locator(tid(`state-${sub}`))), (s) => s === 'paused');
  // It has no queue_while_inactive: the pause's answer says its new
  // events are skipped, and so does the page.
  await eventually('the pause told', () => text(page.locator(tid('status'))), (s) => s.includes(`Paused ${sub}: its new events are skipped`), 5_000);
  await page.locator(tid(`resume-${sub}`)).waitFor({ state: 'visible' });
  if (await page.locator(tid(`pause-${sub}`)).isVisible()) throw new Error('Pause is still shown on a paused subscription');
  // Resume shows when the subscriptions are loaded again; the focus moves
  // once the rest of the refresh (history, detail) is in as well.
  await eventually('focus after pausing', () => page.evaluate(() => document.activeElement?.dataset?.testid ?? ''), (v) => v === `resume-${sub}`, 5_000);

  await exactBodies();
  await listAnswers();
  await manageWebhooks();
  await replays();
  await connectors();
  await historyPages();
  await tokenClosedKept();
  await readTimeout();

  step('no API error was shown and the page raised none');
  const alert = await textNow(page.locator(tid('alert')));
  if (alert) throw new Error(`the alert region says: ${alert}`);
  if (pageErrors.length) throw new Error(`page errors:\n  ${pageErrors.join('\n  ')}`);

  step(`screenshot ${screenshot}`);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: screenshot });
  await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-full.png', fullPage: true });
}

// exactBodies opens the ledger's delivery, whose payload and response
// body JSON.parse and JSON.stringify would change, and finds each shown
// as the bytes sent, re-indented only; a test send's answer too.
async function exactBodies() {
  step('the ledger\'s delivery: the payload as sent (9007199254740993, 10.50, keys "2", "b", "1" in order), only re-indented');
  await page.locator(tid('history-ledger')).click();
  await page.locator(tid(`open-${ledgerID}`)).click();
  await eventually('detail id', () => text(page.locator(tid('detail-id'))), (s) => s === ledgerID);
  const shown = await eventually('the payload', () => text(page.locator(tid('payload'))), (s) => s.includes('ledger.posted'));
  if (compactJSON(shown) !== ledgerBody) throw new Error(`the payload shown:\n${shown}\nthe bytes sent:\n${ledgerBody}`);
  for (const want of ['"b": 9007199254740993', '"1": 10.50', '\n  "data": {\n    "2": ']) {
    if (!shown.includes(want)) throw new Error(`the payload shown has no ${JSON.stringify(want)}:\n${shown}`);
  }
  if (!(shown.indexOf('"2"') < shown.indexOf('"b"') && shown.indexOf('"b"') < shown.indexOf('"1"'))) throw new Error(`the payload's keys moved:\n${shown}`);

  step('its response body, and a test send\'s, as the receiver answered them');
  await page.locator(tid('attempt-body')).first().locator('summary').click();
  const answer = await textNow(page.locator(tid('attempt-body')).first().locator('pre'));
  if (compactJSON(answer) !== ledgerAnswer || !answer.includes('\n  "b": 9007199254740993')) throw new Error(`the response body shown:\n${answer}`);
  await page.locator(tid('send-test-ledger')).click();
  const tested = await eventually('the test send\'s answer', () => text(page.locator(tid('test-result-ledger-body'))), (s) => s.includes('"b"'));
  if (compactJSON(tested) !== ledgerAnswer) throw new Error(`the test send's response body shown:\n${tested}`);
  await page.locator(tid('test-result-ledger-hide')).click();
  await page.locator(tid('close-detail')).click();
  await page.locator(tid('reset-filters')).click();
}

// listAnswers shows what the page makes of answers of GET
// /v1/subscriptions that the test's dzhook does not give: a success rate
// a hair from 100 % or 0 %, and no subscription to be created (no
// secrets.key). The answers are the real ones, changed at the browser
// (page.route) in those fields only.
async function listAnswers() {
  let rate = 0.9996;
  const list = (u) => u.pathname === '/v1/subscriptions';
  await page.route(list, async (route) => {
    const resp = await route.fetch();
    const body = await resp.json();
    for (const s of body.subscriptions) if (s.id === sub) s.stats = { ...s.stats, success_rate: rate };
    Object.assign(body, { can_create: false, cannot_create: 'set secrets.key to create subscriptions through the API' });
    await route.fulfill({ response: resp, json: body });
  });
  const success = () => text(page.locator(tid(`success-${sub}`)));

  step('a success rate a hair from 100 % or 0 % is never rounded to either');
  await eventually('one failure in 2,500', success, (s) => s === '> 99.9 %');
  rate = 0.0004;
  await eventually('one success in 2,500', success, (s) => s === '< 0.1 %');

  step('Add webhook is off, saying why, while dzhook cannot create one');
  await eventually('Add webhook disabled', () => page.locator(tid('add-webhook')).isDisabled(), (v) => v);
  await eventually('why', () => text(page.locator(tid('add-webhook-why'))), (s) => s.includes('set secrets.key'));
  await page.unroute(list);
  await eventually('Add webhook offered again', () => page.locator(tid('add-webhook')).isEnabled(), (v) => v);
  if (await page.locator(tid('add-webhook-why')).isVisible()) throw new Error('the reason is still shown');
}

// secretLeft says where a secret can still be found: the page's text and
// markup, the values of its inputs, the URL and the browser's storage.
function secretLeft(secret) {
  return page.evaluate((secret) => {
    const where = [];
    if (document.documentElement.outerHTML.includes(secret)) where.push('the markup');
    if ([...document.querySelectorAll('input, textarea')].some((i) => i.value.includes(secret))) where.push('an input');
    if (location.href.includes(secret)) where.push('the URL');
    for (const [name, st] of [['localStorage', localStorage], ['sessionStorage', sessionStorage]]) {
      for (let i = 0; i < st.length; i++) if (st.getItem(st.key(i)).includes(secret)) where.push(name);
    }
    return where;
  }, secret);
}

// manageWebhooks walks DZDESK's "Setting Up Webhooks", "Testing Webhooks"
// and "Webhook Management": add a webhook, save and test, toggle Active,
// view its history, rotate its secret, delete it; and checks that the
// config.yaml subscription cannot be changed from the page.
async function manageWebhooks() {
  step(`${sub} comes from config.yaml: a badge, read-only settings, no edit controls`);
  await eventually('config.yaml badge', () => text(page.locator(tid(`source-${sub}`))), (s) => s === 'config.yaml');
  for (const control of [`edit-${sub}`, `rotate-${sub}`, `delete-${sub}`, `active-${sub}`]) {
    if (await page.locator(tid(control)).isVisible()) throw new Error(`${control} is shown on a config.yaml subscription`);
  }
  await page.locator(`${tid(`settings-box-${sub}`)} summary`).click();
  await eventually('read-only note', () => text(page.locator(tid(`settings-box-${sub}`))), (s) => s.includes('read-only') && s.includes('request.*'));

  step('Add webhook: the dialog takes the focus, events grouped as in the catalog');
  await page.locator(tid('add-webhook')).click();
  const dialog = page.locator(tid('sub-dialog'));
  await dialog.waitFor({ state: 'visible' });
  const focused = await page.evaluate(() => document.activeElement?.id);
  if (focused !== 'sf-url') throw new Error(`focus in the dialog is on ${JSON.stringify(focused)}, want the URL`);
  for (const g of ['request', 'sla', 'user']) await page.locator(tid(`sf-group-${g}`)).waitFor({ state: 'visible' });

  step('a 400 puts each problem next to its field');
  await page.getByLabel('Filter').fill('data.priority ==');
  await page.locator(tid('sf-save-test')).click();
  await eventually('URL problem', () => text(page.locator(tid('sf-url-error'))), (s) => s.includes('required'));
  await eventually('events problem', () => page.locator(tid('sf-events-error')).isVisible(), (v) => v);
  await eventually('filter problem', () => page.locator(tid('sf-filter-error')).isVisible(), (v) => v);
  if ((await page.locator(tid('sf-url')).getAttribute('aria-invalid')) !== 'true') throw new Error('the URL is not marked invalid');

  step(`fill it in as DZDESK's admin does: URL, events, generated secret, active; Save and test`);
  await page.getByLabel('Id (optional').fill(newID);
  await page.getByLabel('Endpoint URL').fill(newURL);
  await page.getByLabel('Description').fill('Helpdesk sync (browser test)');
  await page.getByLabel('user.created').check();
  await page.getByLabel('user.updated').check();
  await page.getByLabel('While inactive, keep its events').check();
  await page.getByLabel('Filter').fill('');
  await page.locator(tid('sf-add-header')).click();
  await page.getByLabel('Header 1 name').fill('X-Helpdesk');
  await page.getByLabel('Header 1 value').fill('browser-test');
  step('the same header in two rows (its case aside): said beside the headers, nothing saved');
  await page.locator(tid('sf-add-header')).click();
  await page.getByLabel('Header 2 name').fill('X-Helpdesk');
  await page.getByLabel('Header 2 value').fill('other');
  await page.locator(tid('sf-save')).click();
  await eventually('the duplicate header', () => text(page.locator(tid('sf-headers-error'))), (s) => s === 'X-Helpdesk is given in two rows: keep one');
  if ((await textNow(page.locator(tid('sub-title')))) !== 'Add webhook') throw new Error('saved with a header given twice');
  await page.getByRole('button', { name: 'Remove header 2' }).click();
  if ((await page.locator(tid('sf-test-event')).inputValue()) !== 'user.created') throw new Error('the test event is not one of the chosen events');
  await page.locator(tid('sf-save-test')).click();
  await eventually('test result', () => text(page.locator(tid('sub-test-status'))), (s) => s === 'HTTP 200', 20_000);
  await eventually('test response body', () => text(page.locator(tid('sub-test-body'))), (s) => s.includes('"received": "test"'));
  console.log(`  test sent in ${await textNow(page.locator(tid('sub-test-duration')))}`);

  step('the generated secret is shown once, with a copy button and a warning');
  const secret = await page.locator(`${tid('sub-dialog')} ${tid('secret-value')}`).inputValue();
  if (secret.length < 32) throw new Error(`secret shown: ${secret.length} characters`);
  fs.writeFileSync(secretFile, secret, { mode: 0o600 });
  await eventually('warning', () => text(page.locator(`${tid('sub-dialog')} ${tid('secret-once')}`)), (s) => s.includes('not shown again'));
  await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-add-webhook.png' });
  await page.locator(`${tid('sub-dialog')} ${tid('copy-secret')}`).click();
  await eventually('copied', () => text(page.locator(`${tid('sub-dialog')} ${tid('copy-status')}`)), (s) => s !== '');
  await eventually('dialog title', () => text(page.locator(tid('sub-title'))), (s) => s === `Edit webhook ${newID}`);

  step('close: the secret is gone from the page, the URL and the storage; the focus is back on Add webhook');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  // The page forgets the secret on the dialog's close event, which the
  // browser fires as a task after the dialog is hidden.
  await eventually('the secret forgotten', () => secretLeft(secret), (left) => left.length === 0);
  if ((await page.evaluate(() => document.activeElement?.dataset?.testid)) !== 'add-webhook') throw new Error('the focus did not go back to Add webhook');

  step(`${newID} is listed, active, with its description and no config.yaml badge`);
  await page.locator(tid(`subscription-row-${newID}`)).waitFor({ state: 'visible' });
  await eventually('description', () => text(page.locator(tid(`description-${newID}`))), (s) => s === 'Helpdesk sync (browser test)');
  if (await page.locator(tid(`source-${newID}`)).isVisible()) throw new Error('a runtime subscription shows the config.yaml badge');
  const active = page.locator(tid(`active-${newID}`));
  await eventually('active', () => active.getAttribute('aria-checked'), (v) => v === 'true');

  step('a user is created: its delivery failed once and is pending');
  await eventually('pending', () => text(page.locator(tid(`pending-${newID}`))), (s) => s === '1', 20_000);

  step('toggle Active off and on, from the keyboard');
  await active.focus();
  await page.keyboard.press('Space');
  await eventually('inactive', () => active.getAttribute('aria-checked'), (v) => v === 'false');
  await eventually('status message', () => text(page.locator(tid('status'))), (s) => s.includes('inactive'));
  await eventually('focus kept on the switch', () => page.evaluate(() => document.activeElement?.dataset?.testid), (v) => v === `active-${newID}`);
  await page.keyboard.press('Enter');
  await eventually('active again', () => active.getAttribute('aria-checked'), (v) => v === 'true');

  step('edit: change the description only');
  await page.locator(tid(`edit-${newID}`)).click();
  await dialog.waitFor({ state: 'visible' });
  if (await page.locator(tid('sf-secret-group')).isVisible()) throw new Error('the edit form offers the secret');
  if ((await page.locator(tid('sf-url')).inputValue()) !== newURL) throw new Error('the edit form does not show the URL');
  await page.getByLabel('Description').fill('Helpdesk sync');
  await page.locator(tid('sf-save')).click();
  await dialog.waitFor({ state: 'hidden' });
  await eventually('description changed', () => text(page.locator(tid(`description-${newID}`))), (s) => s === 'Helpdesk sync');

  step('view its delivery history: the test and the pending user.created');
  await page.locator(tid(`history-${newID}`)).click();
  await eventually('filter', () => page.locator(tid('filter-subscription')).inputValue(), (v) => v === newID);
  await eventually('its deliveries', () => page.locator(`${tid('history')} tbody tr`).allTextContents(),
    (rows) => rows.length === 2 && rows.every((r) => r.includes(newID)) && rows.some((r) => r.includes('test')) && rows.some((r) => r.includes('pending')));

  step('rotate its secret: overlap and activation explained, the new secret shown once');
  await page.locator(tid(`rotate-${newID}`)).click();
  const rotateDialog = page.locator(tid('rotate-dialog'));
  await rotateDialog.waitFor({ state: 'visible' });
  await eventually('explanation', () => text(rotateDialog), (s) => s.includes('old secret stays valid'));
  await page.locator(tid('rotate-overlap')).selectOption('1h');
  await page.locator(tid('rotate-activate-now')).check();
  // A pasted secret too short: the problem named with its field, the
  // field marked; then a generated one.
  await page.locator(tid('rotate-paste')).check();
  await page.locator('#rotate-secret').fill('too-short');
  await page.locator(tid('rotate-submit')).click();
  await eventually('the secret\'s problem', () => text(page.locator(tid('rotate-error-secret'))), (s) => s.startsWith('secret: '));
  if ((await page.locator('#rotate-secret').getAttribute('aria-invalid')) !== 'true') throw new Error('the pasted secret is not marked invalid');
  await page.locator(tid('rotate-generate')).check();
  await page.locator(tid('rotate-submit')).click();
  const rotated = await eventually('new secret', () => page.locator(`${tid('rotate-dialog')} ${tid('secret-value')}`).inputValue(), (s) => s.length >= 32);
  if (rotated === secret) throw new Error('the rotation showed the old secret');
  // With its time zone: the admin tells the receiver's owner when.
  await eventually('summary', () => text(page.locator(tid('rotate-summary'))),
    (s) => new RegExp(`stays valid until \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d ${ZONE} \\(`).test(s) && new RegExp(`from \\d{4}-.* ${ZONE} \\(`).test(s));
  // Not copied: Escape asks first, and "no" keeps the dialog and its
  // secret (it was lost at once); Close, answered "yes", closes it.
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.dismiss(); });
  await page.keyboard.press('Escape');
  await eventually('asked before the secret is lost', () => asked, (s) => s.includes('not copied'));
  if (!(await rotateDialog.isVisible())) throw new Error('Escape closed the dialog while its secret was not copied');
  page.once('dialog', (d) => d.accept());
  await page.locator(tid('rotate-close')).click();
  await rotateDialog.waitFor({ state: 'hidden' });
  await eventually('the rotated secret forgotten', () => secretLeft(rotated), (left) => left.length === 0);
  step('its settings show the overlap the rotation started (never a secret) and whether it signs as Standard Webhooks');
  await page.locator(`${tid(`settings-box-${newID}`)} summary`).click();
  await eventually('the overlap in the settings', () => text(page.locator(tid(`settings-rotation-${newID}`))),
    (s) => new RegExp(`^previous secret valid until \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d ${ZONE}; X-DZDESK-Signature switches at \\d{4}-.* ${ZONE}$`).test(s));
  await eventually('Standard Webhooks in the settings', () => text(page.locator(tid(`settings-standard-${newID}`))), (s) => s === 'no');
  if ((await text(page.locator(tid(`settings-box-${newID}`)))).includes(rotated)) throw new Error('the settings show the secret');

  step('delete: the confirmation says how many deliveries are pending and that they are cancelled');
  await page.locator(tid(`delete-${newID}`)).click();
  const deleteDialog = page.locator(tid('delete-dialog'));
  await deleteDialog.waitFor({ state: 'visible' });
  const says = await textNow(page.locator(tid('delete-text')));
  console.log(`  ${says}`);
  if (!/^1 delivery is waiting .*cancels it/.test(says)) throw new Error(`the confirmation says ${JSON.stringify(says)}`);
  if ((await page.evaluate(() => document.activeElement?.dataset?.testid)) !== 'delete-cancel') throw new Error('the confirmation does not focus Keep it');
  await page.locator(tid('delete-submit')).click();
  await deleteDialog.waitFor({ state: 'hidden' });
  await page.locator(tid(`subscription-row-${newID}`)).waitFor({ state: 'detached' });
  await eventually('deleted message', () => text(page.locator(tid('status'))), (s) => s.includes(`Deleted ${newID}; 1 delivery cancelled`));
  await page.locator(tid('reset-filters')).click();
}

// replays replays the last hour into the subscription, which is paused by
// now: the replay is done once every event has its delivery, and those
// wait, pending, so the second replay always has something to cancel.
async function replays() {
  step(`Replay… on ${sub}: a dialog whose first choice, the last hour, has the focus`);
  await page.locator(tid(`replay-${sub}`)).click();
  const dialog = page.locator(tid('replay-dialog'));
  await dialog.waitFor({ state: 'visible' });
  await eventually('focus', () => page.evaluate(() => document.activeElement?.dataset?.testid), (v) => v === 'replay-since-1h');
  if (!(await page.getByRole('radio', { name: 'The last hour' }).isChecked())) throw new Error('the last hour is not the default');

  step('a date and time asks for one; a pattern that selects nothing is refused next to its field');
  await page.getByRole('radio', { name: 'A date and time' }).check();
  await page.locator(tid('replay-at')).waitFor({ state: 'visible' });
  await page.locator(tid('replay-start')).click();
  await eventually('date problem', () => text(page.locator(tid('replay-since-error'))), (s) => s.includes('date and time'));
  await page.getByRole('radio', { name: 'The last hour' }).check();
  await page.locator(tid('replay-events')).fill('nope.*');
  await page.locator(tid('replay-start')).click();
  await eventually('events problem', () => text(page.locator(tid('replay-events-error'))), (s) => s.includes('nope.*'));
  if ((await page.locator(tid('replay-events')).getAttribute('aria-invalid')) !== 'true') throw new Error('the patterns are not marked invalid');

  step('start a replay of the last hour from the keyboard: it reaches done, its deliveries wait while the subscription is paused');
  await page.locator(tid('replay-events')).fill('');
  await page.locator(tid('replay-events')).press('Enter');
  await page.locator(tid('replay-progress')).waitFor({ state: 'visible' });
  const first = await textNow(page.locator(tid('replay-id')));
  if (!/^rpl_[2-7a-z]{16}$/.test(first)) throw new Error(`replay id ${JSON.stringify(first)}`);
  await eventually('replay done', () => text(page.locator(tid('replay-state'))), (s) => s === 'done', 20_000);
  const created = Number(await textNow(page.locator(tid('replay-created'))));
  const span = await textNow(page.locator(tid('replay-window')));
  if (!new RegExp(`^\\d{4}-.* ${ZONE} → \\d{4}-.* ${ZONE}$`).test(span)) throw new Error(`the replay's window without its time zone: ${span}`);
  if (!(created >= 2)) throw new Error(`the replay made ${created} deliveries, want the created and the update at least`);
  await eventually('pending', () => text(page.locator(tid('replay-pending'))), (s) => s === String(created));
  await eventually('every event looked at', () => text(page.locator(tid('replay-scanned'))), (s) => /^(\d+) of \1$/.test(s));
  console.log(`  ${first}: ${await textNow(page.locator(tid('replay-state-text')))}`);
  await page.locator(tid('replay-cancel')).waitFor({ state: 'visible' });

  step('a second replay of request.updated while the first still has deliveries to send is refused, naming it');
  await page.locator(tid('replay-new')).click();
  await eventually('the first replay offered', () => text(page.locator(tid('replay-running'))), (s) => s.includes(first));
  await page.getByRole('textbox', { name: 'Event patterns' }).fill('request.updated');
  await page.locator(tid('replay-start')).click();
  await eventually('the overlap said', () => text(page.locator(tid('replay-errors'))), (s) => s.includes(first) && s.includes('still going') && s.includes('sent twice'));
  if (!(await page.locator('#replay-fields').isVisible())) throw new Error('the form is gone after the refusal');

  step('behind a newer replay (of an older window, through the API), the dialog still offers the one the refusal names');
  const hoursAgo = (h) => new Date(Date.now() - h * 3600_000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const older = await page.request.fetch(new URL(`v1/subscriptions/${sub}/replay`, url).toString(),
    { method: 'POST', headers: { Authorization: `Bearer ${token}` }, data: { since: hoursAgo(3), until: hoursAgo(2) } });
  if (older.status() !== 202) throw new Error(`a replay of an older window: ${older.status()} ${await older.text()}`);
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  await page.locator(tid(`replay-${sub}`)).click();
  await dialog.waitFor({ state: 'visible' });
  await page.getByRole('textbox', { name: 'Event patterns' }).fill('request.updated');
  await page.locator(tid('replay-start')).click();
  await eventually('the overlap said again', () => text(page.locator(tid('replay-errors'))), (s) => s.includes(first) && s.includes('dzhook replay cancel'));
  await page.locator(tid('replay-running')).waitFor({ state: 'visible' });
  await eventually('the first replay offered', () => text(page.locator(tid('replay-running'))), (s) => s.includes(first));

  step('show the first and cancel it: its waiting deliveries are cancelled');
  await page.locator(tid('replay-show-last')).click();
  await eventually('the first shown', () => text(page.locator(tid('replay-id'))), (s) => s === first);
  await page.locator(tid('replay-cancel')).click();
  await eventually('the first cancelled', () => text(page.locator(tid('replay-state'))), (s) => s === 'cancelled');
  await eventually('its deliveries cancelled', () => text(page.locator(tid('replay-skipped'))), (s) => s === String(created));

  step('New replay of request.updated only, then cancel it: its waiting delivery is cancelled');
  await page.locator(tid('replay-new')).click();
  await page.getByRole('textbox', { name: 'Event patterns' }).fill('request.updated');
  await page.locator(tid('replay-start')).click();
  await eventually('a second replay', () => text(page.locator(tid('replay-id'))), (s) => s !== first && s.startsWith('rpl_'));
  const second = await textNow(page.locator(tid('replay-id')));
  await eventually('its delivery made', () => text(page.locator(tid('replay-created'))), (s) => s === '1', 20_000);
  await page.locator(tid('replay-cancel')).click();
  await eventually('cancelled', () => text(page.locator(tid('replay-state'))), (s) => s === 'cancelled');
  await eventually('skipped', () => text(page.locator(tid('replay-skipped'))), (s) => s === '1');
  await eventually('pending', () => text(page.locator(tid('replay-pending'))), (s) => s === '0');
  if (await page.locator(tid('replay-cancel')).isVisible()) throw new Error('Cancel replay is still shown on a cancelled replay');
  await eventually('focus after the cancel', () => page.evaluate(() => document.activeElement?.dataset?.testid), (v) => v === 'replay-new');
  await eventually('cancelled message', () => text(page.locator(tid('status'))), (s) => s.includes(`Cancelled replay ${second}`));
  await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-replay.png' });
  fs.writeFileSync(replayFile, `${first}\n${second}\n`);

  step('a replay failed with a delivery waiting is still going: one overlapping it is refused, and the dialog offers it, with Cancel');
  const replayURL = new URL(`v1/subscriptions/${sub}/replays/${failedReplay}`, url).toString();
  await eventually('the failed replay recorded', async () => (await page.request.fetch(replayURL, { headers: { Authorization: `Bearer ${token}` } })).status(), (s) => s === 200);
  await page.locator(tid('replay-new')).click();
  await page.getByRole('textbox', { name: 'Event patterns' }).fill('request.created');
  await page.locator(tid('replay-start')).click();
  await eventually('the overlap with the failed replay said', () => text(page.locator(tid('replay-errors'))), (s) => s.includes(failedReplay));
  await eventually('the failed replay offered', () => text(page.locator(tid('replay-running'))), (s) => s.includes(failedReplay) && s.includes('failed'));
  await page.locator(tid('replay-show-last')).click();
  await eventually('the failed replay shown', () => text(page.locator(tid('replay-id'))), (s) => s === failedReplay);
  await eventually('its state', () => text(page.locator(tid('replay-state'))), (s) => s === 'failed');
  await eventually('what it says', () => text(page.locator(tid('replay-state-text'))), (s) => s.includes('no longer exists') && s.includes('1 of its deliveries still waits'));
  await page.locator(tid('replay-cancel')).click();
  await eventually('the failed replay cancelled', () => text(page.locator(tid('replay-state'))), (s) => s === 'cancelled');
  await eventually('its delivery cancelled', () => text(page.locator(tid('replay-skipped'))), (s) => s === '1');

  step('Escape closes it; the focus is back on Replay…');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  await eventually('focus back', () => page.evaluate(() => document.activeElement?.dataset?.testid), (v) => v === `replay-${sub}`);
}

// The Slack webhook's transform: a message for each user, none for an
// update; it fails on a user without a name (null + string).
const chatTransform = 'event == "user.updated" ? skip : {"text": "New user: " + data.name + " <" + data.email + ">"}';

// connectors adds a Slack webhook as DZDESK's admin would (format slack,
// no secret, a transform, PUT and a rate limit; a syntax error first),
// reads its card, and opens what its transform made of the four user
// events the test makes once it exists: a message sent, a skip, a
// failure, and a message answered 429, which pauses the webhook.
async function connectors() {
  step('Add webhook, format slack: the secret becomes optional and "No secret" is chosen');
  await page.locator(tid('add-webhook')).click();
  const dialog = page.locator(tid('sub-dialog'));
  await dialog.waitFor({ state: 'visible' });
  if (await page.locator(tid('sf-secret-optional')).isVisible()) throw new Error('the secret is said optional with format dzdesk');
  if (await page.locator(tid('sf-secret-none')).isVisible()) throw new Error('"No secret" is offered with format dzdesk');
  await page.locator(tid('sf-format')).selectOption('slack');
  await eventually('secret optional', () => text(page.locator(tid('sf-secret-optional'))), (s) => s.startsWith('Optional') && s.includes('Slack'));
  if (!(await page.locator(tid('sf-secret-none')).isChecked())) throw new Error('"No secret" is not chosen for a Slack webhook');

  step('a transform with a syntax error and a malformed rate limit: each problem beside its field');
  await page.getByLabel('Id (optional').fill(chatID);
  await page.getByLabel('Endpoint URL').fill(chatURL);
  await page.getByLabel('More events or patterns').fill('user.*');
  await page.getByLabel('Transform (optional').fill(`${chatTransform} +`);
  await page.getByLabel('Method').selectOption('PUT');
  await page.getByLabel('Rate limit').fill('50/sec');
  await page.locator(tid('sf-save')).click();
  const transformError = await eventually('transform problem', () => text(page.locator(tid('sf-transform-error'))),
    (s) => /syntax error/i.test(s) && /\b1:\d+\b/.test(s));
  console.log(`  transform: ${transformError}`);
  await eventually('rate limit problem', () => text(page.locator(tid('sf-rate-limit-error'))), (s) => s.includes('50/sec'));
  if ((await page.locator(tid('sf-transform')).getAttribute('aria-invalid')) !== 'true') throw new Error('the transform is not marked invalid');
  if ((await page.evaluate(() => document.activeElement?.id)) !== 'sf-transform') throw new Error('the focus is not on the transform, the first field with a problem');
  await dialog.screenshot({ path: screenshot.replace(/\.png$/, '') + '-transform-error.png' });
  for (const f of ['url', 'events', 'secret', 'format', 'method']) {
    if (await page.locator(tid(`sf-${f}-error`)).isVisible()) throw new Error(`a problem is shown beside ${f}`);
  }

  step('fix both and save: saved without a secret, the dialog closes');
  await page.getByLabel('Transform (optional').fill(chatTransform);
  await page.getByLabel('Rate limit').fill('50/s');
  await page.locator(tid('sf-save')).click();
  await dialog.waitFor({ state: 'hidden' });
  await eventually('created message', () => text(page.locator(tid('status'))), (s) => s.includes(`Created webhook ${chatID}`));

  step(`${chatID}'s card: format slack, a transform, PUT, the rate limit and its pace`);
  await page.locator(tid(`subscription-row-${chatID}`)).waitFor({ state: 'visible' });
  await eventually('format tag', () => text(page.locator(tid(`format-${chatID}`))), (s) => s === 'slack');
  await eventually('transform tag', () => page.locator(tid(`transform-tag-${chatID}`)).getAttribute('title'), (s) => s?.endsWith(chatTransform));
  await eventually('method tag', () => text(page.locator(tid(`method-${chatID}`))), (s) => s === 'PUT');
  await eventually('rate limit', () => text(page.locator(tid(`rate-${chatID}`))), (s) => s.startsWith('Rate limit: 50/s · pace '));
  if (await page.locator(tid(`format-${sub}`)).isVisible()) throw new Error(`${sub} (format dzdesk) shows a format tag`);
  if (await page.locator(tid(`rate-${sub}`)).isVisible()) throw new Error(`${sub} (no rate limit) shows a rate limit`);

  step('its settings show the transform as text, never as markup');
  await page.locator(`${tid(`settings-box-${chatID}`)} summary`).click();
  const shown = page.locator(tid(`settings-transform-${chatID}`));
  await eventually('transform shown', () => shown.textContent(), (s) => s === chatTransform);
  if ((await shown.locator('*').count()) !== 0) throw new Error('the transform was rendered as HTML');
  await eventually('format fact', () => text(page.locator(tid(`settings-format-${chatID}`))), (s) => s.includes('slack') && s.includes('the transform makes the body instead'));

  step('its history: Ana sent, her update skipped, a user without a name failed, Busy Bee answered 429: the card says it is paused, at half pace');
  // The failed delivery is two days old (browser_test.go backdates it):
  // the card counts it, and its history covers it.
  await eventually('the card counts the failed one', () => text(page.locator(tid(`failed-${chatID}`))), (s) => s === '1', 30_000);
  await page.locator(tid(`history-${chatID}`)).click();
  await eventually('filter', () => page.locator(tid('filter-subscription')).inputValue(), (v) => v === chatID);
  await eventually('range', () => page.locator(tid('filter-range')).inputValue(), (v) => v === 'all');
  const rows = page.locator(`${tid('history')} tbody tr`);
  const states = (await eventually('its four deliveries', () => rows.locator('[data-testid^="delivery-state-"]').allTextContents(),
    (l) => l.length === 4 && ['delivered', 'skipped', 'failed'].every((st) => l.includes(st)), 30_000)).join(', ');
  console.log(`  ${states}`);
  // Checked at once: the pace recovers 30 s after the 429 (the pause
  // lasts its Retry-After, 120 s).
  const rate = await eventually('paused', () => text(page.locator(tid(`rate-${chatID}`))),
    (s) => /^Rate limit: 50\/s · pace now 25\/s · paused until \d\d:\d\d:\d\d \(in \d+ (s|min)\)$/.test(s));
  console.log(`  the card: ${rate}`);
  const open = async (state) => {
    await rows.filter({ has: page.locator('[data-testid^="delivery-state-"]', { hasText: new RegExp(`^${state}$`) }) })
      .locator('[data-testid^="open-"]').click();
    await eventually('detail state', () => text(page.locator(tid('detail-state'))), (s) => s === state);
  };
  const attempts = page.locator(tid('attempt-row'));

  step('Ana\'s delivery: the event payload, and the body sent, pretty-printed, with what the signature covers');
  await open('delivered');
  await eventually('one attempt, HTTP 200', () => text(attempts.nth(0).locator(tid('attempt-status'))), (s) => s === '200');
  await eventually('payload title', () => text(page.locator(tid('payload-title'))), (s) => s === 'Event payload');
  const payload = JSON.parse(await textNow(page.locator(tid('payload'))));
  if (payload.event !== 'user.created' || payload.data?.name !== 'Ana') throw new Error(`event payload: ${JSON.stringify(payload)}`);
  await page.locator(tid('sent-section')).waitFor({ state: 'visible' });
  const sentText = await textNow(page.locator(tid('sent')));
  if (JSON.stringify(JSON.parse(sentText)) !== JSON.stringify({ text: 'New user: Ana <ana@company.com>' })) throw new Error(`sent: ${sentText}`);
  if (!sentText.includes('\n  ')) throw new Error('the sent body is not pretty-printed');
  if (!(await textNow(page.locator(tid('sent-section')))).includes('signature covers these bytes')) throw new Error('no note on what the signature covers');
  if (await page.locator(tid('detail-note')).isVisible()) throw new Error('a delivered delivery has a note');
  await page.screenshot({ path: screenshot.replace(/\.png$/, '') + '-sent.png', fullPage: true });

  step('the update: skipped by the transform, nothing sent');
  await open('skipped');
  await eventually('attempt status', () => text(attempts.nth(0).locator(tid('attempt-status'))), (s) => s === 'not sent');
  await eventually('attempt kind', () => text(attempts.nth(0).locator(tid('attempt-error-class'))), (s) => s === 'skipped');
  await eventually('attempt error', () => text(page.locator(tid('attempt-error'))), (s) => s.startsWith('skipped: the transform gave null'));
  await eventually('note', () => text(page.locator(tid('detail-note'))), (s) => s.startsWith('Skipped by the subscription’s transform'));
  if (await page.locator(tid('sent-section')).isVisible()) throw new Error('a skipped delivery shows a sent body');
  if ((await textNow(page.locator(tid('payload-title')))) !== 'Payload') throw new Error('the payload of a delivery without a sent body is not titled Payload');

  step('the user without a name: the transform failed, class transform, nothing sent');
  await open('failed');
  await eventually('attempt status', () => text(attempts.nth(0).locator(tid('attempt-status'))), (s) => s === 'not sent');
  await eventually('attempt class', () => text(attempts.nth(0).locator(tid('attempt-error-class'))), (s) => s === 'transform');
  await eventually('attempt error', () => text(page.locator(tid('attempt-error'))), (s) => s.startsWith('the transform failed on this event'));
  await eventually('note', () => text(page.locator(tid('detail-note'))), (s) => s.includes('transform (or format) failed'));
  if (await page.locator(tid('sent-section')).isVisible()) throw new Error('a failed transform shows a sent body');

  step('Busy Bee: answered 429, pending, its body kept for the retry');
  await open('pending');
  await eventually('attempt status', () => text(attempts.nth(0).locator(tid('attempt-status'))), (s) => s === '429');
  await eventually('sent', () => text(page.locator(tid('sent'))), (s) => s.includes('Busy Bee'));
  await page.locator(tid(`subscription-row-${chatID}`)).screenshot({ path: screenshot.replace(/\.png$/, '') + '-connector.png' });
  await page.locator(tid('close-detail')).click();
  await page.locator(tid('reset-filters')).click();

  step('edit: the form shows the format, transform, method and rate limit; changing the rate limit sends only it');
  await page.locator(tid(`edit-${chatID}`)).click();
  await dialog.waitFor({ state: 'visible' });
  for (const [f, want] of [['sf-format', 'slack'], ['sf-transform', chatTransform], ['sf-method', 'PUT'], ['sf-rate-limit', '50/s']]) {
    const got = await page.locator(tid(f)).inputValue();
    if (got !== want) throw new Error(`the edit form's ${f} is ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
  await page.getByLabel('Rate limit').fill('600/m');
  await page.locator(tid('sf-save')).click();
  await dialog.waitFor({ state: 'hidden' });
  await eventually('saved message', () => text(page.locator(tid('status'))), (s) => s.includes(`Saved ${chatID}: rate_limit changed`));
  await eventually('new rate limit', () => text(page.locator(tid(`rate-${chatID}`))), (s) => s === 'Rate limit: 600/m · pace 600/m');
}

// historyPages checks that "Load more" and the live refresh, each in
// flight while the other is asked for, leave the history whole: a
// refresh that answered after a "Load more" replaced the page it added,
// and a "Load more" from a cursor that a refresh moved left out the rows
// between. The requests are held at the browser (page.route) to order
// them; what they read is the real journal.
async function historyPages() {
  const auth = { Authorization: `Bearer ${token}` };
  const call = async (method, p, data) => {
    const resp = await page.request.fetch(new URL(p, url).toString(), { method, headers: auth, data });
    if (!resp.ok()) throw new Error(`${method} ${p}: ${resp.status()} ${await resp.text()}`);
    return resp.json();
  };
  const sendTests = async (n) => {
    for (let i = 0; i < n; i++) await call('POST', 'v1/subscriptions/pages/test', {});
  };
  step('add a webhook "pages" through the API and send it 60 test events');
  await call('POST', 'v1/subscriptions', { id: 'pages', url: pagesURL, events: ['request.created'] });
  await sendTests(60);
  await page.locator(tid('history-pages')).click();
  const rows = page.locator(`${tid('history')} tbody tr`);
  await eventually('the first page', () => text(page.locator(tid('history-count'))), (s) => s.startsWith('50+ deliveries'));

  // Requests to /v1/deliveries: each is noted; one of the kind armed
  // (a refresh has no cursor, a "Load more" has one) is held until
  // released, its answer read from the journal only then.
  const seen = [];
  let arm = '';
  let release = () => {};
  const list = (u) => u.pathname === '/v1/deliveries';
  await page.route(list, async (route) => {
    const kind = new URL(route.request().url()).searchParams.has('cursor') ? 'more' : 'refresh';
    seen.push(kind);
    if (kind === arm) {
      arm = '';
      await new Promise((r) => { release = r; });
    }
    await route.continue();
  });
  // shown waits until the history shows the journal's deliveries of
  // "pages" from the newest on with none left out between (at least
  // least of them), and "Load more" exactly when there are more.
  const shown = async (what, least) => {
    const all = [];
    for (let cursor = '', first = true; first || cursor; first = false) {
      const page = await call('GET', `v1/deliveries?subscription=pages&limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      all.push(...page.deliveries.map((d) => d.id));
      cursor = page.next_cursor;
    }
    await eventually(what, async () => {
      const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
      const more = await page.locator(tid('load-more')).isVisible();
      return { shown: ids.length, of: all.length, gapless: ids.join() === all.slice(0, ids.length).join(), more };
    }, (v) => v.gapless && v.shown >= least && v.more === (v.shown < v.of));
  };
  // noneWithin fails if a request of kind went out since the from'th,
  // or goes out within ms: asked for while the other load is in flight,
  // it must wait for it.
  const noneWithin = async (kind, from, ms, what) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (seen.slice(from).includes(kind)) throw new Error(what);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const pauseLive = async () => {
    await page.locator(tid('pause-live')).click();
    await eventually('live updates paused', () => text(page.locator(tid('live'))), (s) => s.startsWith('Live updates paused'));
  };

  step('"Load more" while a refresh is in flight: it waits, and its page stays');
  await pauseLive();
  arm = 'refresh';
  const at = seen.length;
  await page.locator(tid('pause-live')).click(); // resumes: a refresh at once
  await eventually('the refresh held', () => seen.slice(at).includes('refresh') && arm === '', (v) => v);
  const before = seen.length;
  await page.locator(tid('load-more')).click();
  await noneWithin('more', before, 1000, 'a "Load more" went out while a refresh was in flight');
  await sendTests(3); // new deliveries on top: the refresh moves the cursor
  release();
  await shown('every delivery shown, in order, the three new ones included', 63);

  step('the first page again while a refresh is in flight: the refresh does not put the other pages back');
  arm = 'refresh';
  const at1 = seen.length;
  await eventually('the next live refresh held', () => seen.slice(at1).includes('refresh') && arm === '', (v) => v);
  await page.locator(tid('history-pages')).click(); // back to the first page
  release();
  await eventually('the first page again', () => text(page.locator(tid('history-count'))), (s) => s.startsWith('50+ deliveries'));

  step('a refresh due while "Load more" is in flight: it waits, and no row goes missing');
  await pauseLive();
  arm = 'more';
  const at2 = seen.length;
  await page.locator(tid('load-more')).click();
  await eventually('the "Load more" held', () => seen.slice(at2).includes('more') && arm === '', (v) => v);
  await sendTests(3); // new deliveries on top move the first page's cursor
  // Resumed, a refresh at once; paused again, no other after it (a
  // later one would mend a gap the two left).
  const before2 = seen.length;
  await page.locator(tid('pause-live')).click();
  await pauseLive();
  await noneWithin('refresh', before2, 1000, 'a refresh went out while a "Load more" was in flight');
  release();
  await shown('the newest deliveries shown, the three new ones included, none left out', 63);
  await page.locator(tid('pause-live')).click(); // live again

  step('a refresh refused for a token replaced meanwhile tries the new one: no dialog again, live updates go on');
  await page.evaluate(() => sessionStorage.setItem('dzhook.adminToken', 'a-rotated-token'));
  arm = 'refresh';
  const at3 = seen.length;
  await eventually('a refresh with the old token held', () => seen.slice(at3).includes('refresh') && arm === '', (v) => v);
  // The poll's other reads were refused: the page asks for the token.
  const tokenDialog = page.locator(tid('token-dialog'));
  await tokenDialog.waitFor({ state: 'visible' });
  await page.locator(tid('token-input')).fill(token);
  await page.locator(tid('token-submit')).click();
  await tokenDialog.waitFor({ state: 'hidden' });
  const liveBefore = await textNow(page.locator(tid('live')));
  release(); // its answer: 401, for the token replaced meanwhile
  await eventually('live updates going on', () => text(page.locator(tid('live'))), (t) => t !== liveBefore && t.startsWith('Live ·'), 15_000);
  if (await tokenDialog.isVisible()) throw new Error('the token dialog opened again for a token already replaced');
  await page.unroute(list);

  step('the "Skip to delivery history" link keeps the filters');
  await page.locator(tid('filter-status')).selectOption('delivered');
  await eventually('the status filter in the URL', () => page.evaluate(() => location.hash), (h) => h.includes('status=delivered'));
  await page.locator('.skip-link').focus();
  await page.keyboard.press('Enter');
  await eventually('the filters back in the URL after the skip', () => page.evaluate(() => location.hash), (h) => h.includes('status=delivered') && h.includes('subscription=pages'));
  if ((await page.locator(tid('filter-status')).inputValue()) !== 'delivered') throw new Error('the skip link reset the status filter');
  if ((await page.locator(tid('filter-subscription')).inputValue()) !== 'pages') throw new Error('the skip link reset the subscription filter');

  step('more rows than one read returns (500): a live refresh keeps those loaded past it');
  await sendTests(450); // 516 in all
  await page.locator(tid('history-pages')).click();
  await eventually('the first page', () => text(page.locator(tid('history-count'))), (s) => s.startsWith('50+ deliveries'));
  while (await page.locator(tid('load-more')).isVisible()) {
    const n = await rows.count();
    await page.locator(tid('load-more')).click();
    await eventually('the next page', () => rows.count(), (c) => c > n);
  }
  const liveAt = await textNow(page.locator(tid('live')));
  await eventually('a live refresh', () => text(page.locator(tid('live'))), (t) => t !== liveAt && t.startsWith('Live ·'));
  await shown('every delivery still shown after the refresh', 516);
}

// tokenClosedKept checks that the token dialog, closed without a submit
// while a token is stored, answers the calls that wait for one with it:
// left waiting, the live refresh they belong to never ended, and every
// later load of the history queued behind it.
async function tokenClosedKept() {
  step('the token dialog closed with Escape while a token is stored: the calls waiting for one go on with it, and so does the page');
  const tokenDialog = page.locator(tid('token-dialog'));
  const live = () => text(page.locator(tid('live')));
  await page.locator(tid('pause-live')).click();
  await eventually('live updates paused', live, (s) => s.startsWith('Live updates paused'));
  await page.evaluate(() => sessionStorage.setItem('dzhook.adminToken', 'a-revoked-token'));
  // Resumed, a live refresh at once: refused, its reads wait for a token.
  await page.locator(tid('pause-live')).click();
  await tokenDialog.waitFor({ state: 'visible' });
  await page.evaluate((t) => sessionStorage.setItem('dzhook.adminToken', t), token);
  const liveBefore = await textNow(page.locator(tid('live')));
  await page.keyboard.press('Escape');
  await tokenDialog.waitFor({ state: 'hidden' });
  await eventually('the refresh that waited ended, live updates going on', live, (t) => t !== liveBefore && t.startsWith('Live ·'));
  await page.locator(tid('filter-subscription')).selectOption(sub);
  await eventually('the history of the filter chosen after', () => text(page.locator(tid('history-count'))), (s) => /^\d+\+? deliver/.test(s));
  await page.locator(tid(`delivery-row-${deliveryID}`)).waitFor({ state: 'visible' });
  if (await tokenDialog.isVisible()) throw new Error('the token dialog opened again with a token stored');
}

// readTimeout checks that a read that never answers (a connection left
// half open) is given up on after 30 s, and that the history's loads
// queued behind it go on; a filter change whose own read is given up on
// says the history is not loaded, until the next refresh loads it. The
// reads are held at the browser (page.route) and never answered; the
// 30 s pass on the page's clock (page.clock), not the test's.
async function readTimeout() {
  const GET_TIMEOUT_MS = 30_000; // app.js
  const POLL_MS = 3000; // app.js
  const live = () => text(page.locator(tid('live')));
  const alert = () => text(page.locator(tid('alert')));
  const count = () => text(page.locator(tid('history-count')));
  // The next read of the history's first page (a refresh: no cursor) is
  // held, until the end of this check.
  let armed = false;
  let held = false;
  let release = () => {};
  const released = new Promise((r) => { release = r; });
  const list = (u) => u.pathname === '/v1/deliveries' && !u.searchParams.has('cursor');
  await page.route(list, async (route) => {
    if (!armed) return route.continue();
    armed = false;
    held = true;
    await released;
    await route.abort().catch(() => {}); // the page gave up on it long ago
  });
  const pauseLive = async () => {
    await page.locator(tid('pause-live')).click();
    await eventually('live updates paused', live, (s) => s.startsWith('Live updates paused'));
  };

  step('a live refresh that never answers is given up on after 30 s: the page says so, and the filter change queued behind it goes on');
  // Paused, no timer of the page's own clock is pending when the fake
  // one is installed: every timer from here on is on the fake clock,
  // which runs as the real one until it is moved on.
  await pauseLive();
  await page.clock.install();
  armed = true;
  await page.locator(tid('pause-live')).click(); // resumes: a refresh at once
  await eventually('the refresh held', () => held, (v) => v);
  await page.locator(tid('filter-subscription')).selectOption('pages');
  if ((await count()) !== 'Loading…') throw new Error(`the history while a read is held: ${JSON.stringify(await count())}`);
  await page.clock.fastForward(GET_TIMEOUT_MS);
  await eventually('the failed refresh said so', alert, (s) => s.includes('Live update failed: dzhook did not answer within 30 s'));
  await eventually('the live indicator', live, (s) => s.startsWith('Stale · last update'));
  await eventually('the filter\'s rows, loaded behind the held read', count, (s) => s.startsWith('50+ deliveries'));
  // The next refresh is due POLL_MS after the failed one (on the page's
  // clock): it goes out, answers, and clears the message.
  await page.clock.fastForward(POLL_MS);
  await eventually('live updates going on', live, (s) => s.startsWith('Live ·'));
  await eventually('the message gone', alert, (s) => s === '');

  step('a filter change whose first page never answers: given up on after 30 s, the history says it is not loaded, and the next refresh loads it');
  await pauseLive();
  held = false;
  armed = true;
  await page.locator(tid('filter-subscription')).selectOption(sub);
  await eventually('the filter\'s read held', () => held, (v) => v);
  await page.clock.fastForward(GET_TIMEOUT_MS);
  await eventually('the history', count, (s) => s === 'Not loaded: see the message above');
  await eventually('the message', alert, (s) => s.startsWith('dzhook did not answer within 30 s'));
  await page.locator(tid('pause-live')).click(); // resumes: a refresh at once
  await page.locator(tid(`delivery-row-${deliveryID}`)).waitFor({ state: 'visible' });
  await eventually('the history', count, (s) => /^\d+\+? deliver/.test(s));
  await page.locator(tid('dismiss-alert')).click();

  release();
  await page.unroute(list);
}

let code = 0;
const watchdog = setTimeout(() => {
  console.error(`FAIL: timed out at step "${current}"`);
  process.exit(1);
}, 150_000);
try {
  await main();
  console.log('PASS');
} catch (e) {
  code = 1;
  console.error(`FAIL at step "${current}": ${e.message}`);
  if (page) {
    const failShot = screenshot.replace(/\.png$/, '') + '-failure.png';
    await page.screenshot({ path: failShot, fullPage: true }).then(() => console.error(`  screenshot of the failure: ${failShot}`), () => {});
  }
} finally {
  clearTimeout(watchdog);
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);

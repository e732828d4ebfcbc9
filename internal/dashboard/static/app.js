// dzhook dashboard: a page over the admin API (/v1), polled every few
// seconds. The operator enters the bearer token once; it stays in
// sessionStorage for the browser session and is asked for again on a 401.
//
// Everything the API returns is put in the page with textContent or
// setAttribute, never as HTML: response bodies and payloads come from
// third parties.

const TOKEN_KEY = 'dzhook.adminToken';
const POLL_MS = 3000;
const PAGE_SIZE = 50;
const MAX_LIMIT = 500; // the API's largest page
const GET_TIMEOUT_MS = 30_000; // api: how long a read may take
// The API takes Go durations: no "d" unit.
const RANGES = { '1h': '1h', '24h': '24h', '7d': '168h', all: '' };
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

// ---- DOM helpers -----------------------------------------------------------

// el builds an element. attrs are set with setAttribute (class, data-*,
// aria-*), except the keys "text" (textContent), "hidden" and "on*"
// handlers. children are nodes or strings (as text nodes).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const c of children) node.append(c);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else if (k === 'hidden') node.hidden = Boolean(v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
}

function setText(node, text) {
  const s = String(text);
  if (node.textContent !== s) node.textContent = s;
}

// ---- formatting ------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

// fmtTime: "2024-01-15 14:30:05" in the browser's time zone.
function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// fmtZoned: fmtTime with the time zone's short name ("2024-01-15
// 14:30:05 CET"), for a time an admin tells others (a rotation's switch,
// a replay's window): without it, "14:30" read in another zone was
// wrong by hours (found by a review).
function fmtZoned(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return fmtTime(iso);
  const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: 'short' }).formatToParts(d).find((p) => p.type === 'timeZoneName');
  return zone ? `${fmtTime(iso)} ${zone.value}` : fmtTime(iso);
}

// fmtShort: the time alone for today, else month-day and minutes (the
// exact instant is in the <time> element's tooltip).
function fmtShort(iso, now = new Date()) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const full = fmtTime(iso);
  if (d.toDateString() === now.toDateString()) return full.slice(11);
  if (d.getFullYear() === now.getFullYear()) return full.slice(5, 16);
  return full.slice(0, 10);
}

// fmtAgo: "12 s ago", "3 min ago", "in 5 min".
function fmtAgo(iso, now = Date.now()) {
  if (!iso) return 'never';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return String(iso);
  const s = Math.round((now - t) / 1000);
  const abs = Math.abs(s);
  let v;
  if (abs < 5) return 'just now';
  if (abs < 60) v = `${abs} s`;
  else if (abs < 3600) v = `${Math.floor(abs / 60)} min`;
  else if (abs < 86400) v = `${Math.floor(abs / 3600)} h`;
  else v = `${Math.floor(abs / 86400)} d`;
  return s >= 0 ? `${v} ago` : `in ${v}`;
}

function fmtMS(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1 && ms >= 0 && Number.isInteger(ms)) return '< 1 ms'; // the journal keeps whole ms
  if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 100) return `${Math.round(ms)} ms`;
  return `${Number(ms).toFixed(1).replace(/\.0$/, '')} ms`;
}

// errorText joins a status code and an error, without saying "HTTP 500"
// twice.
function errorText(status, error) {
  const code = status ? `HTTP ${status}` : '';
  if (!error || error === code) return code;
  if (!code || error.includes(code)) return error;
  return `${code}: ${error}`;
}

// timeEl is a <time> showing local time, with the exact UTC instant as a
// tooltip.
function timeEl(iso, text) {
  if (!iso) return el('span', { class: 'muted', text: '—' });
  return el('time', { datetime: iso, title: iso, text: text ?? fmtTime(iso) });
}

// pretty indents JSON text (reindent); other text stays as is.
function pretty(text) {
  try {
    JSON.parse(text);
  } catch {
    return text;
  }
  return reindent(text);
}

// reindent lays JSON text out two spaces a level, as JSON.stringify(v,
// null, 2) does, changing only the whitespace between tokens. Parsed and
// printed again, a payload was not what was sent: integers above 2^53
// lost digits, 10.50 became 10.5, and integer-like keys ("2", "1") moved
// before the others (found by a review).
function reindent(text) {
  let out = '';
  let depth = 0;
  const nl = () => `\n${'  '.repeat(depth)}`;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const end = stringEnd(text, i);
      out += text.slice(i, end);
      i = end - 1;
    } else if (c === '{' || c === '[') {
      const j = skipSpace(text, i + 1);
      if (text[j] === (c === '{' ? '}' : ']')) {
        out += c + text[j];
        i = j;
      } else {
        depth++;
        out += c + nl();
      }
    } else if (c === '}' || c === ']') {
      depth--;
      out += nl() + c;
    } else if (c === ',') {
      out += `,${nl()}`;
    } else if (c === ':') {
      out += ': ';
    } else if (!' \t\n\r'.includes(c)) {
      out += c;
    }
  }
  return out;
}

// stringEnd is the index after the JSON string that starts at text[i]
// (a quote), its escapes skipped.
function stringEnd(text, i) {
  for (let j = i + 1; j < text.length; j++) {
    if (text[j] === '\\') j++;
    else if (text[j] === '"') return j + 1;
  }
  return text.length;
}

function skipSpace(text, i) {
  while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  return i;
}

// valueEnd is the index after the JSON value that starts at text[i].
function valueEnd(text, i) {
  if (text[i] === '"') return stringEnd(text, i);
  if (text[i] !== '{' && text[i] !== '[') {
    while (i < text.length && !',}] \t\n\r'.includes(text[i])) i++;
    return i;
  }
  let depth = 0;
  for (let j = i; j < text.length; j++) {
    const c = text[j];
    if (c === '"') j = stringEnd(text, j) - 1;
    else if (c === '{' || c === '[') depth++;
    else if ((c === '}' || c === ']') && --depth === 0) return j + 1;
  }
  return text.length;
}

// rawMembers returns the members of the JSON object text as their text,
// by name: the values as the API sent them, not as JSON.parse reads them.
function rawMembers(text) {
  const out = new Map();
  let i = skipSpace(text, 0);
  if (text[i] !== '{') return out;
  i = skipSpace(text, i + 1);
  while (text[i] === '"') {
    const keyEnd = stringEnd(text, i);
    const name = JSON.parse(text.slice(i, keyEnd));
    i = skipSpace(text, skipSpace(text, keyEnd) + 1); // past the colon
    const end = valueEnd(text, i);
    out.set(name, text.slice(i, end));
    i = skipSpace(text, end);
    if (text[i] !== ',') break;
    i = skipSpace(text, i + 1);
  }
  return out;
}

// shownBody is a body the journal keeps, from its member's text in the
// API's answer: JSON re-indented, a body that is not JSON (a string
// member) as its text.
function shownBody(raw) {
  if (raw === undefined || raw === 'null') return null;
  if (raw.startsWith('"')) return pretty(JSON.parse(raw));
  return reindent(raw);
}

// ---- alerts and status -------------------------------------------------------

let alertSource = '';

// showError puts a message in the alert region (role=alert). source tells
// who may clear it: live updates clear only their own errors.
function showError(message, source = 'action') {
  const region = $('alert');
  alertSource = source;
  region.replaceChildren(
    el('div', { class: 'alert' },
      el('p', { class: 'alert-text', 'data-testid': 'alert-text', text: message }),
      el('button', { type: 'button', class: 'quiet', 'data-testid': 'dismiss-alert', onclick: clearError }, 'Dismiss'),
    ),
  );
}

function clearError(source) {
  if (typeof source === 'string' && alertSource !== source) return;
  $('alert').replaceChildren();
  alertSource = '';
}

let announceTimer = 0;

// announce says what an action did, in a polite live region, for six seconds (it floats over the page: gone before it hides much).
function announce(message) {
  const region = $('status');
  region.replaceChildren(el('p', { class: 'status-text', text: message }));
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => region.replaceChildren(), 6000);
}

// ---- the API ---------------------------------------------------------------

class APIError extends Error {
  // problems are the field problems of a 400 ({"errors":[{field, problem}]}).
  constructor(status, message, problems = []) {
    super(message);
    this.status = status;
    this.problems = problems;
  }
}

let tokenWaiters = null;

// askToken opens the token dialog (once, however many calls wait) and
// resolves when the operator submits a token, or with the stored one
// when the operator closes the dialog keeping it (settleTokenWaiters).
function askToken(reason) {
  const dialog = $('token-dialog');
  const err = $('token-error');
  if (reason || !dialog.open) {
    // A call joining an open dialog keeps its reason on screen.
    err.hidden = !reason;
    err.textContent = reason || '';
  }
  if (!tokenWaiters) tokenWaiters = [];
  if (!dialog.open) {
    $('token-input').value = '';
    dialog.showModal();
    $('token-input').focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

// settleTokenWaiters answers every call waiting for a token with token.
// Left waiting when the dialog closed without a submit (Escape, with a
// token stored), a history load never ended and held every later one,
// the live updates included, until the page was reloaded (found by a
// review).
function settleTokenWaiters(token) {
  const waiters = tokenWaiters || [];
  tokenWaiters = null;
  for (const w of waiters) w(token);
}

function submitToken(ev) {
  ev.preventDefault();
  const token = $('token-input').value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-dialog').close();
  settleTokenWaiters(token);
}

// api calls the admin API and returns the decoded JSON, or with raw
// { data, text }: the answer's text too, for what must be shown as sent
// (rawMembers). A 401 asks for the token and tries again (the API did
// nothing with the refused request); other errors throw an APIError with
// the API's message.
async function api(method, path, body, { raw = false } = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY) || (await askToken(''));
    const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
        // A read that never answers (a connection left half open by a
        // laptop's sleep, a stalled proxy) would hold the history's
        // loads behind it for good (historyLoad): it fails instead, and
        // the next poll tries again. Changes are not cut short.
        signal: method === 'GET' ? readTimeout() : undefined,
      });
    } catch (e) {
      throw unreachable(e);
    }
    let text;
    try {
      text = await resp.text();
    } catch (e) {
      throw unreachable(e);
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    const problems = data && Array.isArray(data.errors) ? data.errors.filter((p) => p && typeof p.problem === 'string') : [];
    const message = data && typeof data.error === 'string' ? data.error
      : problems.length ? problems.map((p) => `${p.field}: ${p.problem}`).join('; ')
        : `HTTP ${resp.status} ${resp.statusText}`.trim();
    if (resp.status === 401) {
      // Refused a token the operator has replaced meanwhile (a read in
      // flight while the new one was entered): tried again with the new
      // one, not asked again (found by a review).
      const stored = sessionStorage.getItem(TOKEN_KEY);
      if (stored && stored !== token) continue;
      if (stored === token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(`The API refused the token: ${message}`);
      continue;
    }
    if (!resp.ok) throw new APIError(resp.status, message, problems);
    if (data === null) throw new APIError(resp.status, `${method} ${path}: the answer is not JSON`);
    return raw ? { data, text } : data;
  }
}

// readTimeout is a signal that aborts a read after GET_TIMEOUT_MS, with
// the reason AbortSignal.timeout gives. An AbortController and a
// setTimeout, which every browser has: AbortSignal.timeout is missing
// before Safari 16, where every read failed (found by a review). One
// path for every browser is one that the browser test checks, rather
// than Chromium's and a fallback that no test reached.
function readTimeout() {
  const c = new AbortController();
  setTimeout(() => c.abort(new DOMException('signal timed out', 'TimeoutError')), GET_TIMEOUT_MS);
  return c.signal;
}

// unreachable is the APIError of a request that got no (whole) answer.
function unreachable(e) {
  if (e && e.name === 'TimeoutError') return new APIError(0, `dzhook did not answer within ${GET_TIMEOUT_MS / 1000} s`);
  return new APIError(0, `Cannot reach dzhook: ${e.message}`);
}

const enc = encodeURIComponent;

// ---- page state --------------------------------------------------------------

const state = {
  events: [],
  subs: [],
  cards: new Map(), // subscription id → card
  filters: { subscription: '', status: '', event: '', range: '24h' },
  deliveries: [],
  rows: new Map(), // delivery id → <tr>
  nextCursor: '',
  historyKey: '', // the filters the rows were loaded with
  historyQueue: Promise.resolve(), // the history's loads, one at a time (historyLoad)
  historyGen: 0, // counts the history's resets (applyFilters): a load of an earlier one is dropped
  openID: '',
  detailJSON: '',
  paused: false,
  timer: 0,
  polling: null,
  lastOK: 0,
};

// The filters and the open delivery live in the URL's fragment, so a
// reload or a shared link shows the same view.
function readHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  const f = state.filters;
  f.subscription = q.get('subscription') || '';
  f.status = q.get('status') || '';
  f.event = q.get('event') || '';
  f.range = Object.hasOwn(RANGES, q.get('range') || '') ? q.get('range') : '24h';
  const open = q.get('delivery') || '';
  state.openID = /^dlv_[0-9a-z_]{1,120}$/.test(open) ? open : '';
}

function writeHash() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) if (v && !(k === 'range' && v === '24h')) q.set(k, v);
  if (state.openID) q.set('delivery', state.openID);
  const h = q.toString();
  history.replaceState(null, '', h ? `#${h}` : location.pathname + location.search);
}

// ---- subscriptions -----------------------------------------------------------

// stateOf is a subscription's badge: its state, or paused. A paused
// webhook that is failing (or disabled) says both: pausing hides nothing
// from the admin.
function stateOf(s) {
  const st = s.state || 'unknown';
  if (!s.paused) return { text: st, cls: st };
  if (st === 'failing' || st === 'disabled') return { text: `paused · ${st}`, cls: st };
  return { text: 'paused', cls: 'paused' };
}

function buildCard(id) {
  const p = `sub-${id}`;
  const c = {};
  c.state = el('span', { class: 'badge', 'data-testid': `state-${id}` });
  c.inactive = el('span', { class: 'tag', text: 'inactive', title: 'active: false in the configuration', hidden: true });
  c.ordering = el('span', { class: 'tag', 'data-testid': `ordering-${id}` });
  // The body's shape and the method, shown only when they are not the
  // defaults (DZDESK's envelope, POST).
  c.format = el('span', { class: 'tag tag-format', 'data-testid': `format-${id}`, hidden: true });
  c.transform = el('span', { class: 'tag tag-format', 'data-testid': `transform-tag-${id}`, text: 'transform', hidden: true });
  c.method = el('span', { class: 'tag', 'data-testid': `method-${id}`, hidden: true });
  c.source = el('span', {
    class: 'tag tag-config', 'data-testid': `source-${id}`, text: 'config.yaml', hidden: true,
    title: 'Defined in config.yaml: change it there. Pause, resume, test and retry work here.',
  });
  c.active = el('button', {
    type: 'button', class: 'switch', role: 'switch', 'aria-checked': 'true', 'data-testid': `active-${id}`,
    'aria-label': `Active: send ${id}’s events`, hidden: true, onclick: () => toggleActive(id),
  }, 'Active');
  c.url = el('p', { class: 'url mono', 'data-testid': `url-${id}` });
  c.description = el('p', { class: 'description', 'data-testid': `description-${id}`, hidden: true });
  c.settings = el('dl', { class: 'facts settings-facts', 'data-testid': `settings-${id}` });
  c.settingsNote = el('p', { class: 'hint' });
  const settings = el('details', { class: 'settings', 'data-testid': `settings-box-${id}` },
    el('summary', { text: 'Settings' }), c.settingsNote, c.settings);
  c.edit = el('button', { type: 'button', 'data-testid': `edit-${id}`, onclick: (ev) => openForm(id, ev.currentTarget) }, 'Edit');
  c.rotate = el('button', { type: 'button', 'data-testid': `rotate-${id}`, onclick: (ev) => openRotate(id, ev.currentTarget) }, 'Rotate secret');
  c.remove = el('button', { type: 'button', class: 'danger-quiet', 'data-testid': `delete-${id}`, onclick: (ev) => openDelete(id, ev.currentTarget) }, 'Delete');
  c.manage = el('span', { class: 'action-group', hidden: true }, c.edit, c.rotate, c.remove);
  const metric = (label, key, extra = {}) => {
    c[key] = el('dd', { 'data-testid': `${key}-${id}`, ...extra });
    return el('div', { class: 'metric' }, el('dt', { text: label }), c[key]);
  };
  const metrics = el('dl', { class: 'metrics' },
    metric('Success', 'success'),
    metric('p50', 'p50'),
    metric('p99', 'p99'),
    metric('Pending', 'pending'),
    metric('Failed', 'failed'),
    metric('Held', 'held'),
    metric('Last success', 'lastok'),
    metric('Last failure', 'lastfail'),
  );
  c.chart = svg('svg', {
    class: 'chart', viewBox: '0 0 240 48', preserveAspectRatio: 'none', role: 'img',
    'aria-labelledby': `${p}-chart-cap`, 'data-testid': `chart-${id}`, focusable: 'false',
  });
  c.chartCap = el('figcaption', { id: `${p}-chart-cap`, class: 'chart-cap' });
  const chart = el('figure', { class: 'chart-box' },
    c.chart,
    el('div', { class: 'chart-axis', 'aria-hidden': 'true' }, el('span', { text: '60 min ago' }), el('span', { text: 'now' })),
    c.chartCap,
  );
  c.blocked = el('p', { class: 'order-line', 'data-testid': `blocked-${id}`, hidden: true });
  // The oldest blocked key's head: the delivery that holds it back.
  c.blockedHeadLink = el('button', {
    type: 'button', class: 'linkish mono', 'data-testid': `blocked-head-${id}`,
    onclick: () => openDelivery(c.blockedHeadLink.textContent, true),
  });
  c.blockedHead = el('p', { class: 'order-line', hidden: true }, 'Its head, to look at or retry: ', c.blockedHeadLink);
  c.rate = el('p', { class: 'order-line', 'data-testid': `rate-${id}`, hidden: true });
  c.lastError = el('p', { class: 'last-error', 'data-testid': `last-error-${id}`, hidden: true });

  c.pause = el('button', { type: 'button', 'data-testid': `pause-${id}`, onclick: () => pauseResume(id, 'pause') }, 'Pause');
  c.resume = el('button', { type: 'button', 'data-testid': `resume-${id}`, hidden: true, onclick: () => pauseResume(id, 'resume') }, 'Resume');
  c.retrySince = el('select', { id: `${p}-retry-since`, 'data-testid': `retry-since-${id}` },
    el('option', { value: '', text: 'any time' }),
    el('option', { value: '1h', text: 'in the last hour' }),
    el('option', { value: '24h', text: 'in the last 24 h' }),
    el('option', { value: '168h', text: 'in the last 7 days' }),
  );
  c.retryFailed = el('button', { type: 'button', 'data-testid': `retry-failed-${id}`, onclick: () => retryFailed(id) }, 'Retry failed');
  c.testEvent = el('select', { id: `${p}-test-event`, 'data-testid': `test-event-${id}` });
  c.sendTest = el('button', { type: 'button', 'data-testid': `send-test-${id}`, onclick: () => sendTest(id) }, 'Send test');
  c.testResult = el('div', { class: 'test-result', role: 'status', 'aria-live': 'polite', 'data-testid': `test-result-${id}` });

  c.root = el('article', { class: 'card', 'data-testid': `subscription-row-${id}`, 'aria-labelledby': `${p}-title` },
    el('div', { class: 'card-head' },
      el('h3', { id: `${p}-title`, class: 'card-title', text: id }),
      c.state, c.inactive, c.ordering, c.format, c.transform, c.method, c.source,
      el('span', { class: 'card-head-actions' }, c.active, c.pause, c.resume),
    ),
    c.url,
    c.description,
    el('div', { class: 'card-body' }, metrics, chart),
    c.blocked,
    c.blockedHead,
    c.rate,
    c.lastError,
    el('div', { class: 'actions', role: 'group', 'aria-label': `Actions for ${id}` },
      el('span', { class: 'action-group' },
        el('label', { for: `${p}-retry-since`, text: 'Failed deliveries created' }),
        c.retrySince, c.retryFailed,
      ),
      el('span', { class: 'action-group' },
        el('label', { for: `${p}-test-event`, text: 'Test event' }),
        c.testEvent, c.sendTest,
      ),
      el('span', { class: 'action-group' },
        el('button', { type: 'button', 'data-testid': `history-${id}`, onclick: () => showHistoryOf(id) }, 'Delivery history'),
        el('button', { type: 'button', 'data-testid': `replay-${id}`, 'aria-haspopup': 'dialog', onclick: (ev) => openReplay(id, ev.currentTarget) }, 'Replay…'),
      ),
      c.manage,
    ),
    c.testResult,
    settings,
  );
  fillEventSelect(c.testEvent, false);
  return c;
}

function updateCard(c, s) {
  const st = stateOf(s);
  setText(c.state, st.text);
  c.state.className = `badge badge-${st.cls}`;
  const runtime = s.source === 'runtime';
  c.inactive.hidden = runtime || s.active !== false;
  c.source.hidden = s.source !== 'config';
  c.active.hidden = !runtime;
  c.manage.hidden = !runtime;
  c.active.setAttribute('aria-checked', String(s.active !== false));
  c.active.title = s.active !== false ? 'Active: its events are sent. Press to make it inactive.'
    : `Inactive: its events are ${s.queue_while_inactive ? 'kept until it is active again' : 'skipped'}. Press to make it active.`;
  setText(c.url, s.url);
  c.url.title = s.url;
  c.description.hidden = !s.description;
  setText(c.description, s.description || '');
  updateSettings(c, s);
  const stats = s.stats || {};
  const rate = typeof stats.success_rate === 'number' ? stats.success_rate : -1;
  setText(c.success, rate < 0 ? '—' : successText(rate));
  c.success.className = rate < 0 ? 'muted' : rate >= 0.99 ? 'good' : rate >= 0.9 ? 'warn' : 'bad';
  c.success.title = rate < 0 ? 'no attempts in the last hour' : 'share of 2xx answers among the attempts of the last hour';
  const hasTimes = (stats.delivered || 0) + (stats.failed || 0) + (stats.retried || 0) > 0;
  setText(c.p50, hasTimes ? fmtMS(stats.p50_ms) : '—');
  setText(c.p99, hasTimes ? fmtMS(stats.p99_ms) : '—');
  setText(c.pending, s.pending ?? 0);
  c.pending.title = s.oldest_pending_seconds > 0 ? `oldest due ${Math.round(s.oldest_pending_seconds)} s ago` : '';
  setText(c.failed, s.failed ?? 0);
  c.failed.className = s.failed > 0 ? 'bad' : '';
  setText(c.held, s.held ?? 0);
  setText(c.lastok, fmtAgo(s.last_success_at));
  c.lastok.title = s.last_success_at || '';
  setText(c.lastfail, fmtAgo(s.last_failure_at));
  c.lastfail.title = s.last_failure_at || '';

  updateOrdering(c, s);
  updateBody(c, s);

  // Compared as instants: as strings, "...:00Z" sorts after "...:00.5Z".
  const failedLast = s.last_failure_at && (!s.last_success_at || Date.parse(s.last_failure_at) > Date.parse(s.last_success_at));
  const why = errorText(s.last_status, s.last_error);
  c.lastError.hidden = !(failedLast && why);
  setText(c.lastError, `Last error: ${why}`);

  const canResume = s.paused || s.state === 'disabled';
  if (c.pause.hidden !== canResume) {
    const hadFocus = document.activeElement === c.pause || document.activeElement === c.resume;
    c.pause.hidden = canResume;
    c.resume.hidden = !canResume;
    if (hadFocus) (canResume ? c.resume : c.pause).focus();
  }
  drawChart(c, stats.per_minute || []);
}

// successText is a success rate to a tenth of a percent, never rounded
// to 100 % while an attempt failed nor to 0 % while one succeeded:
// 0.9996 showed "100.0 %", in green (found by a review).
function successText(rate) {
  if (rate === 1 || rate === 0) return `${rate * 100} %`;
  const s = (rate * 100).toFixed(1);
  if (s === '100.0') return '> 99.9 %';
  if (s === '0.0') return '< 0.1 %';
  return `${s} %`;
}

// updateSettings lists the subscription's fields, read-only (a config.yaml
// subscription is changed in the file; a runtime one through Edit).
function updateSettings(c, s) {
  const key = JSON.stringify([s.source, s.events, s.filter, s.active, s.queue_while_inactive, s.ordering, s.description,
    s.format, s.transform, s.method, s.rate_limit, s.standard_webhooks, s.previous_secret_valid_until, s.signature_switch_at]);
  if (c.settingsKey === key) return;
  c.settingsKey = key;
  setText(c.settingsNote, s.source === 'config'
    ? 'Defined in config.yaml: read-only here. Change it in the file and reload dzhook.'
    : 'Created at runtime: change it with Edit. The secret and the header values are never shown.');
  c.settings.replaceChildren(
    fact('Events', (s.events || []).join(', ')),
    fact('Filter', s.filter ? el('span', { class: 'mono', text: s.filter }) : 'none'),
    fact('Active', s.active !== false ? 'yes' : `no (events ${s.queue_while_inactive ? 'kept for later' : 'skipped'})`),
    fact('Ordering', s.ordering || 'none'),
    fact('Format', formatText(s), `settings-format-${s.id}`),
    fact('Method', s.method || 'POST'),
    fact('Rate limit', s.rate_limit || 'none'),
    fact('Standard Webhooks', s.standard_webhooks ? 'yes (X-DZDESK-Signature too)' : 'no', `settings-standard-${s.id}`),
    // A secret rotation's overlap, while it runs (never the secrets).
    ...(s.previous_secret_valid_until ? [wide(fact('Secret rotation',
      `previous secret valid until ${fmtZoned(s.previous_secret_valid_until)}; X-DZDESK-Signature switches at ${fmtZoned(s.signature_switch_at)}`,
      `settings-rotation-${s.id}`))] : []),
    fact('Source', s.source === 'config' ? 'config.yaml' : 'runtime (API or dashboard)'),
    wide(fact('Transform', s.transform
      ? el('pre', { class: 'code code-small', 'data-testid': `settings-transform-${s.id}`, text: s.transform })
      : connector(s.format) ? `none: the ${s.format} format makes the body` : 'none: the event envelope is sent')),
  );
}

// FORMATS are the body's shapes (subscriptions[].format).
const FORMATS = {
  dzdesk: 'DZDESK’s event envelope',
  slack: 'Slack incoming webhook',
  teams: 'Microsoft Teams incoming webhook',
  discord: 'Discord webhook',
};

// connector: a format for a chat destination, which verifies no
// signature (its webhook URL is the credential).
const connector = (format) => Boolean(format) && format !== 'dzdesk';

function formatText(s) {
  const f = s.format || 'dzdesk';
  const what = `${f} (${FORMATS[f] || 'unknown'})`;
  return s.transform ? `${what}; the transform makes the body instead` : what;
}

function wide(node) {
  node.classList.add('fact-wide');
  return node;
}

// updateBody shows what shapes and paces the subscription's requests
// when it is not the default: its format, its transform (the expression
// in the tooltip; the settings show it whole), PUT, and the rate limit
// with the pace this process keeps now and a 429's pause.
function updateBody(c, s) {
  const format = s.format || 'dzdesk';
  c.format.hidden = !connector(format);
  setText(c.format, format);
  c.format.title = s.transform ? `format: ${format}; the transform makes the body instead` : `format: ${format} — each body is made for a ${FORMATS[format] || format}`;
  c.transform.hidden = !s.transform;
  c.transform.title = s.transform ? `A CEL transform makes each body: ${s.transform}` : '';
  const method = s.method || 'POST';
  c.method.hidden = method === 'POST';
  setText(c.method, method);
  c.method.title = `Every attempt is an HTTP ${method}`;
  c.rate.hidden = !s.rate_limit;
  if (!s.rate_limit) return;
  const r = rateLine(s);
  setText(c.rate, r.text);
  c.rate.className = r.slowed || r.paused ? 'order-line warn' : 'order-line';
  c.rate.title = 'At most this many attempts start, evenly spaced; the rest wait in the journal. A 429 halves the pace (it recovers every 30 s) and its Retry-After holds the attempts until then. dzhook processes that share the journal share the limit.' +
    (r.paused ? ` Paused until ${s.paused_until}.` : '');
}

// rateLine says a rate limit, the pace kept now in the limit's unit
// (lower after 429 answers, or when other processes share the limit) and
// a 429's pause: "Rate limit: 50/s · pace now 25/s · paused until
// 14:32:05 (in 2 min)".
function rateLine(s, now = Date.now()) {
  const [count, unit] = String(s.rate_limit).split('/');
  const per = unit === 'm' ? 60 : 1;
  const limit = Number(count) / per; // per second
  const pace = Number(s.pace_per_second) || 0;
  const slowed = pace > 0 && pace < limit * 0.999;
  const parts = [`Rate limit: ${s.rate_limit}`];
  if (pace > 0) {
    const v = pace * per;
    parts.push(`pace ${slowed ? 'now ' : ''}${Number(v.toFixed(v < 10 ? 2 : 1))}/${unit}`);
  }
  const paused = Boolean(s.paused_until) && new Date(s.paused_until).getTime() > now;
  if (paused) parts.push(`paused until ${fmtTime(s.paused_until).slice(11)} (${fmtAgo(s.paused_until, now)})`);
  return { text: parts.join(' · '), slowed, paused };
}

const orderingTitles = {
  none: 'ordering: none — deliveries go out in parallel; no order is promised',
  entity: 'ordering: entity — the deliveries of one request or user reach the receiver in stream order, each after the previous one finished; different keys in parallel',
  subscription: 'ordering: subscription — one delivery at a time, in stream order',
};

// updateOrdering shows the subscription's ordering mode and, when it is
// ordered (or deliveries of an earlier ordering are still blocked), the
// keys whose head waits for a retry and holds back the rest of its key.
function updateOrdering(c, s) {
  const mode = s.ordering || 'none';
  setText(c.ordering, `ordering: ${mode}`);
  c.ordering.title = orderingTitles[mode] || '';
  const n = s.blocked_keys || 0;
  c.blocked.hidden = mode === 'none' && n === 0;
  const oldestKey = typeof s.oldest_blocked_key === 'string' ? `: ${s.oldest_blocked_key === '' ? 'the whole subscription' : s.oldest_blocked_key}` : '';
  setText(c.blocked, n === 0 ? 'Blocked keys: none' : `Blocked keys: ${n} (oldest created ${fmtAgo(s.oldest_blocked_at)}${oldestKey})`);
  const head = n > 0 && s.oldest_blocked_head ? s.oldest_blocked_head : '';
  c.blockedHead.hidden = head === '';
  setText(c.blockedHeadLink, head);
  c.blocked.className = n > 0 ? 'order-line warn' : 'order-line';
  const m = s.order_memory;
  const plural = (k, one, many) => `${k} ${k === 1 ? one : many}`;
  c.blocked.title = 'A blocked key’s first delivery waits for its retry; the later deliveries of that key wait behind it, other keys flow.' +
    (m ? ` This process holds ${plural(m.keys, 'key', 'keys')}: ${plural(m.waiting, 'delivery waits', 'deliveries wait')} in memory behind an earlier one of its key, ${plural(m.journal_keys, 'key waits', 'keys wait')} in the journal.` : '');
}

function drawChart(c, perMinute) {
  const key = JSON.stringify(perMinute.map((m) => [m.delivered, m.failed]));
  if (c.chartKey === key) return;
  c.chartKey = key;
  const W = 240, H = 48, n = Math.max(perMinute.length, 60), bw = W / n;
  let max = 1, ok = 0, bad = 0;
  for (const m of perMinute) {
    max = Math.max(max, m.delivered + m.failed);
    ok += m.delivered;
    bad += m.failed;
  }
  const nodes = [svg('line', { class: 'chart-base', x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 })];
  perMinute.forEach((m, i) => {
    const total = m.delivered + m.failed;
    if (total === 0) return;
    const x = i * bw + 0.5;
    const w = Math.max(bw - 1, 1);
    const hOK = (m.delivered / max) * (H - 2);
    const hBad = (m.failed / max) * (H - 2);
    const g = svg('g', {}, svg('title', {}, document.createTextNode(`${fmtTime(m.minute).slice(11, 16)}: ${m.delivered} delivered, ${m.failed} failed`)));
    if (m.delivered) g.append(svg('rect', { class: 'bar-ok', x, y: H - hOK, width: w, height: hOK }));
    if (m.failed) g.append(svg('rect', { class: 'bar-bad', x, y: H - hOK - hBad, width: w, height: hBad }));
    nodes.push(g);
  });
  c.chart.replaceChildren(...nodes);
  c.chartCap.replaceChildren(...[
    el('span', { class: 'visually-hidden', text: 'Attempts in the last hour: ' }),
    el('span', { class: 'key key-ok' }), ` ${ok} delivered `,
    el('span', { class: 'key key-bad' }), ` ${bad} failed`,
    max > 1 ? el('span', { class: 'muted', text: ` · peak ${max}/min` }) : null,
  ].filter(Boolean));
}

function renderSubscriptions(list) {
  state.subs = list;
  const box = $('subscriptions');
  const seen = new Set();
  list.forEach((s, i) => {
    seen.add(s.id);
    let c = state.cards.get(s.id);
    if (!c) {
      c = buildCard(s.id);
      state.cards.set(s.id, c);
    }
    updateCard(c, s);
    if (box.children[i] !== c.root) box.insertBefore(c.root, box.children[i] || null);
  });
  for (const [id, c] of state.cards) {
    if (!seen.has(id)) {
      c.root.remove();
      state.cards.delete(id);
    }
  }
  $('subs-empty').hidden = list.length > 0;
  // The subscription filter lists what is configured (keeping a choice
  // that is gone, so the filter does not change under the operator).
  const sel = $('f-subscription');
  const ids = list.map((s) => s.id);
  if (state.filters.subscription && !ids.includes(state.filters.subscription)) ids.push(state.filters.subscription);
  syncOptions(sel, [['', 'All subscriptions'], ...ids.map((id) => [id, id])], state.filters.subscription);
}

// syncOptions replaces a select's options only when they changed.
function syncOptions(sel, options, value) {
  const key = JSON.stringify(options);
  if (sel.dataset.key !== key) {
    sel.replaceChildren(...options.map(([v, t]) => el('option', { value: v, text: t })));
    sel.dataset.key = key;
  }
  sel.value = value;
}

function fillEventSelect(sel, withAny) {
  const current = sel.value;
  const groups = new Map();
  for (const e of state.events) {
    if (!groups.has(e.group)) groups.set(e.group, []);
    groups.get(e.group).push(e);
  }
  const nodes = [];
  if (withAny) nodes.push(el('option', { value: '', text: 'Any event' }));
  for (const [group, evs] of groups) {
    nodes.push(el('optgroup', { label: group }, ...evs.map((e) => el('option', { value: e.name, text: e.name, title: e.description || '' }))));
  }
  sel.replaceChildren(...nodes);
  if (current && state.events.some((e) => e.name === current)) sel.value = current;
  else if (!withAny && state.events.some((e) => e.name === 'request.created')) sel.value = 'request.created';
}

async function loadEvents() {
  const data = await api('GET', '/v1/events');
  state.events = Array.isArray(data.events) ? data.events : [];
  fillEventSelect($('f-event'), true);
  if (state.filters.event && !state.events.some((e) => e.name === state.filters.event)) {
    $('f-event').append(el('option', { value: state.filters.event, text: state.filters.event }));
  }
  $('f-event').value = state.filters.event;
  for (const c of state.cards.values()) fillEventSelect(c.testEvent, false);
}

async function loadSubscriptions() {
  const data = await api('GET', '/v1/subscriptions');
  renderSubscriptions(Array.isArray(data.subscriptions) ? data.subscriptions : []);
  showCanCreate(data);
}

// showCanCreate offers Add webhook only when the API can create one, and
// says why not beside it: without secrets.key the form was refused only
// at Save, once filled in (found by a review). A dzhook that does not say
// (older than can_create) is offered as before.
function showCanCreate(data) {
  const can = data.can_create !== false;
  $('add-webhook').disabled = !can;
  $('add-webhook-why').hidden = can;
  setText($('add-webhook-why'), can ? '' : `Add webhook is not available: ${data.cannot_create || 'dzhook cannot create subscriptions now'}`);
}

// busy disables a button while its request runs.
async function busy(button, fn) {
  if (button.disabled) return;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    await fn();
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

// pausedMessage says what becomes of a paused subscription's new events,
// as the pause's answer says (new_deliveries): skipped by default, which
// an admin who expects them to wait learns only at the resume otherwise.
function pausedMessage(id, newDeliveries) {
  if (newDeliveries === 'held') return `Paused ${id}: its new events are held and go out, oldest first, when it is resumed.`;
  if (newDeliveries === 'skipped') return `Paused ${id}: its new events are skipped, never sent, until it is resumed (queue_while_inactive holds them instead). Deliveries already due wait for the resume.`;
  return `Paused ${id}: its new deliveries wait (or are skipped) until it is resumed.`;
}

function pauseResume(id, action) {
  const c = state.cards.get(id);
  return busy(action === 'pause' ? c.pause : c.resume, async () => {
    const res = await api('POST', `/v1/subscriptions/${enc(id)}/${action}`);
    clearError('action');
    if (action === 'pause') announce(pausedMessage(id, res.new_deliveries));
    else announce(`Resumed ${id}${res.released ? `; ${res.released} held deliveries released` : ''}.`);
    await refreshAll();
    // The button pressed is now hidden: keep the focus on its twin.
    const twin = action === 'pause' ? c.resume : c.pause;
    if (!twin.hidden) twin.focus();
  });
}

function retryFailed(id) {
  const c = state.cards.get(id);
  return busy(c.retryFailed, async () => {
    const since = c.retrySince.value;
    const res = await api('POST', `/v1/subscriptions/${enc(id)}/retry-failed${since ? `?since=${enc(since)}` : ''}`);
    clearError('action');
    const n = res.scheduled || 0;
    const held = res.held === 'paused' ? ' The subscription is paused: they go out when it is resumed.'
      : res.held === 'disabled' ? ' The subscription was disabled by a 410 answer: they go out when it is resumed.'
      : res.held === 'inactive' ? ' The subscription is inactive: they go out once it is active again.' : '';
    announce(n === 0 ? `${id}: no failed deliveries to retry.` : `${id}: ${n} failed ${n === 1 ? 'delivery' : 'deliveries'} scheduled for one more attempt.${held}`);
    await refreshAll();
  });
}

function sendTest(id) {
  const c = state.cards.get(id);
  return busy(c.sendTest, async () => {
    const event = c.testEvent.value || 'request.created';
    c.testResult.replaceChildren(el('p', { class: 'muted', text: `Sending a test ${event}…` }));
    let rep;
    try {
      rep = await api('POST', `/v1/subscriptions/${enc(id)}/test`, { event });
    } catch (e) {
      c.testResult.replaceChildren();
      throw e;
    }
    clearError('action');
    c.testResult.replaceChildren(testReport(`test-result-${id}`, event, rep, () => {
      state.cards.get(id)?.testResult.replaceChildren();
      state.cards.get(id)?.sendTest.focus();
    }));
    await refreshHistory();
  });
}

// testReport shows what the receiver answered to a test send; t prefixes
// its test ids, hide removes it.
function testReport(t, event, rep, hide) {
  const status = rep.status_code ? `HTTP ${rep.status_code}` : rep.error_class || 'no answer';
  return el('div', { class: 'report' },
    el('div', { class: 'report-head' },
      el('p', {},
        el('strong', { text: `Test ${event}: ` }),
        el('span', { class: `badge ${rep.delivered ? 'badge-delivered' : 'badge-failed'}`, 'data-testid': `${t}-status`, text: status }),
        ` ${rep.delivered ? 'delivered' : 'not delivered'} in `,
        el('span', { 'data-testid': `${t}-duration`, text: fmtMS(rep.duration_ms) }),
      ),
      el('button', { type: 'button', class: 'quiet small', 'data-testid': `${t}-hide`, onclick: hide }, 'Hide'),
    ),
    rep.error && rep.error !== status ? el('p', { class: 'attempt-error', text: rep.error }) : null,
    el('pre', {
      class: 'code code-small', 'data-testid': `${t}-body`, tabindex: '0', 'aria-label': `Response body of the test ${event}`,
      text: rep.response_body ? pretty(rep.response_body) : '(empty response body)',
    }),
    rep.delivery_id
      ? el('p', { class: 'muted small-text' }, 'Recorded as ',
        el('button', { type: 'button', class: 'linkish mono', 'aria-label': `Open delivery ${rep.delivery_id}`, onclick: () => openDelivery(rep.delivery_id, true) }, rep.delivery_id))
      : null,
  );
}

// ---- managing runtime subscriptions ------------------------------------------
//
// Add webhook, Edit, Rotate secret and Delete open modal dialogs. A secret
// (generated, or the answer to a rotation) is shown once, in the dialog
// that received it, and removed from the page when that dialog closes: it
// never goes to the URL, sessionStorage or localStorage.

const GROUP_LABELS = { request: 'Request events', sla: 'SLA events', user: 'User events', custom: 'Custom events' };
// FORM_FIELDS are the API's fields the form shows problems of, in the
// form's order; a field's controls are #sf-<name> and #sf-<name>-error,
// with - for _ (rate_limit: #sf-rate-limit).
const FORM_FIELDS = ['id', 'url', 'description', 'events', 'secret', 'active', 'ordering', 'filter', 'format', 'transform', 'method', 'rate_limit', 'headers'];
const fieldID = (f) => `sf-${f.replaceAll('_', '-')}`;

// form is the open Add/Edit dialog: mode "create" or "edit", the
// subscription as last saved (edit), whether the header rows were touched,
// and the button that opened it (the focus goes back there).
// urlDirty: the URL field was typed in. The API shows a URL with its token
// hidden (?REDACTED); sent back unedited, it replaced the real one.
const form = { mode: 'create', id: '', orig: null, headersDirty: false, urlDirty: false, autoID: '', secretModeTouched: false, opener: null };

const radioValue = (name) => document.querySelector(`input[name="${name}"]:checked`)?.value || '';

function eventGroups() {
  const groups = new Map();
  for (const e of state.events) {
    const g = e.custom ? 'custom' : e.group;
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(e);
  }
  return groups;
}

// fillEventBoxes builds the grouped event checkboxes, checking chosen.
function fillEventBoxes(chosen) {
  const boxes = [];
  for (const [g, evs] of eventGroups()) {
    boxes.push(el('fieldset', { class: 'event-group', 'data-testid': `sf-group-${g}` },
      el('legend', { text: GROUP_LABELS[g] || `${g} events` }),
      ...evs.map((e) => {
        const id = `sf-ev-${e.name}`;
        const box = el('input', { type: 'checkbox', id, value: e.name, 'data-testid': `sf-event-${e.name}` });
        box.checked = chosen.has(e.name);
        return el('div', { class: 'event-box' },
          box, el('label', { for: id }, el('span', { class: 'mono', text: e.name }), e.description ? el('span', { class: 'muted', text: ` — ${e.description}` }) : null));
      })));
  }
  $('sf-event-groups').replaceChildren(...boxes);
}

function chosenEvents() {
  const names = [...$('sf-event-groups').querySelectorAll('input:checked')].map((b) => b.value);
  const more = $('sf-patterns').value.split(',').map((x) => x.trim()).filter(Boolean);
  return [...names, ...more.filter((m) => !names.includes(m))];
}

// syncTestEvent keeps the test event among the chosen ones when it can.
function syncTestEvent() {
  const sel = $('sf-test-event');
  const names = [...$('sf-event-groups').querySelectorAll('input:checked')].map((b) => b.value);
  if (names.length && !names.includes(sel.value)) sel.value = names[0];
}

function addHeaderRow(name = '', value = '') {
  const box = $('sf-headers');
  const n = (form.rowSeq = (form.rowSeq || 0) + 1);
  const nameIn = el('input', { id: `sf-h-name-${n}`, autocomplete: 'off', spellcheck: 'false', placeholder: 'X-Api-Key', 'data-testid': 'sf-header-name' });
  const valueIn = el('input', { id: `sf-h-value-${n}`, type: 'password', autocomplete: 'off', spellcheck: 'false', 'data-testid': 'sf-header-value' });
  nameIn.value = name;
  valueIn.value = value;
  const row = el('div', { class: 'header-row' },
    el('label', { for: nameIn.id, class: 'visually-hidden', text: `Header ${n} name` }), nameIn,
    el('label', { for: valueIn.id, class: 'visually-hidden', text: `Header ${n} value` }), valueIn,
  );
  row.append(el('button', {
    type: 'button', class: 'quiet small', 'aria-label': `Remove header ${n}`,
    onclick: () => {
      form.headersDirty = true;
      row.remove();
      $('sf-add-header').focus();
    },
  }, 'Remove'));
  box.append(row);
  return nameIn;
}

// duplicateHeader names a header given in two rows (HTTP names ignore
// case), or is "": of two rows of one name headerRows kept the last
// row's value and dropped the other without a word (found by a review).
function duplicateHeader() {
  const seen = new Map();
  for (const row of $('sf-headers').querySelectorAll('.header-row')) {
    const name = row.querySelector('input').value.trim();
    if (!name) continue;
    const k = name.toLowerCase();
    const first = seen.get(k);
    if (first !== undefined) return `${name} is given in two rows${first !== name ? ` (as ${first} too: header names ignore case)` : ''}: keep one`;
    seen.set(k, name);
  }
  return '';
}

function headerRows() {
  const h = {};
  for (const row of $('sf-headers').querySelectorAll('.header-row')) {
    const [name, value] = row.querySelectorAll('input');
    if (name.value.trim() || value.value) h[name.value.trim()] = value.value;
  }
  return h;
}

function clearFieldErrors() {
  $('sub-errors').replaceChildren();
  for (const f of FORM_FIELDS) {
    const p = $(`${fieldID(f)}-error`);
    if (p) {
      p.hidden = true;
      p.textContent = '';
    }
  }
  for (const n of $('sub-form').querySelectorAll('[aria-invalid]')) n.removeAttribute('aria-invalid');
}

// fieldOf maps an API field path ("events[1]", "headers.X-Key",
// "standard_webhooks") to the form field that shows its problem.
function fieldOf(path) {
  const root = String(path).split(/[.[]/)[0];
  if (root === 'standard_webhooks') return 'secret';
  if (root === 'queue_while_inactive') return 'active';
  return FORM_FIELDS.includes(root) ? root : '';
}

// showProblems puts each problem next to its field (the rest at the top)
// and moves the focus to the first field with one.
function showProblems(box, problems, message) {
  const byField = new Map();
  const general = [];
  for (const p of problems) {
    const f = fieldOf(p.field);
    if (f && $(`${fieldID(f)}-error`) && (form.mode === 'create' || !['id', 'secret'].includes(f))) {
      if (!byField.has(f)) byField.set(f, []);
      byField.get(f).push(p.field === f ? p.problem : `${p.field}: ${p.problem}`);
    } else {
      general.push(`${p.field}: ${p.problem}`);
    }
  }
  let first = null;
  for (const f of FORM_FIELDS) {
    if (!byField.has(f)) continue;
    const p = $(`${fieldID(f)}-error`);
    p.textContent = byField.get(f).join('; ');
    p.hidden = false;
    const target = $(fieldID(f));
    const control = target && target.matches('input, select, textarea') ? target
      : p.closest('fieldset')?.querySelector('input, select, textarea, button');
    control?.setAttribute('aria-invalid', 'true');
    first = first || control;
  }
  const n = problems.length;
  box.replaceChildren(el('p', { class: 'form-error-text', text: n ? `${n === 1 ? 'One problem' : `${n} problems`} to fix before saving.` : message }),
    ...(general.length ? [el('ul', {}, ...general.map((g) => el('li', { text: g })))] : []));
  (first || box).focus?.();
}

// newWebhookID is an id as the API makes one: wh_ and 12 characters of
// a-z and 2-7.
function newWebhookID() {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return 'wh_' + Array.from(bytes, (b) => alphabet[b % 32]).join('');
}

// openForm opens the Add webhook dialog (id empty) or Edit for id.
function openForm(id, opener) {
  const s = id ? state.subs.find((x) => x.id === id) : null;
  if (id && !s) return;
  Object.assign(form, { mode: s ? 'edit' : 'create', id: id || '', orig: s, headersDirty: false, urlDirty: false, autoID: '', autoIDTried: false, opener });
  $('sub-form').reset();
  clearFieldErrors();
  $('sub-result').replaceChildren();
  $('sf-headers').replaceChildren();
  fillEventSelect($('sf-test-event'), false);
  const names = new Set(state.events.map((e) => e.name));
  const chosen = new Set((s?.events || []).filter((e) => names.has(e)));
  fillEventBoxes(chosen);
  $('sf-patterns').value = (s?.events || []).filter((e) => !names.has(e)).join(', ');
  if (s) {
    $('sf-url').value = s.url || '';
    $('sf-description').value = s.description || '';
    $('sf-active').checked = s.active !== false;
    $('sf-queue').checked = Boolean(s.queue_while_inactive);
    $('sf-ordering').value = s.ordering || 'none';
    $('sf-filter').value = s.filter || '';
    $('sf-format').value = s.format || 'dzdesk';
    $('sf-transform').value = s.transform || '';
    $('sf-method').value = s.method || 'POST';
    $('sf-rate-limit').value = s.rate_limit || '';
    syncTestEvent();
  }
  form.secretModeTouched = false;
  showFormMode();
  $('sf-secret-field').hidden = true;
  syncSecretChoices();
  const dialog = $('sub-dialog');
  if (!dialog.open) dialog.showModal();
  $('sf-url').focus();
}

// showFormMode shows the fields that belong to creating or editing.
function showFormMode() {
  const edit = form.mode === 'edit';
  setText($('sub-title'), edit ? `Edit webhook ${form.id}` : 'Add webhook');
  $('sf-id-field').hidden = edit;
  $('sf-secret-group').hidden = edit;
  $('sf-secret-note').hidden = !edit;
  $('sf-headers-hint').textContent = edit
    ? 'Sent with every delivery; stored encrypted, so the current ones are not shown. Change the rows here to replace them all; leave them untouched to keep them.'
    : 'Sent with every delivery; stored encrypted like the secret.';
}

// syncSecretChoices fits the secret's choices to the format: with Slack,
// Teams or Discord the secret is optional (they verify no signature), and
// "No secret" is chosen unless the operator chose otherwise.
function syncSecretChoices() {
  const format = $('sf-format').value;
  const optional = connector(format);
  $('sf-secret-legend-optional').hidden = !optional;
  $('sf-secret-optional').hidden = !optional;
  setText($('sf-secret-optional'), optional
    ? `Optional: ${FORMATS[format]}s check no signature, the webhook URL is the credential (keep it secret). A secret only serves something in between that verifies X-DZDESK-Signature.`
    : '');
  $('sf-secret-none-choice').hidden = !optional;
  const mode = radioValue('secret-mode');
  if (optional && !form.secretModeTouched && mode === 'generate') setSecretMode('none');
  if (!optional && mode === 'none') setSecretMode('generate');
  // Standard Webhooks signatures need a secret.
  const none = radioValue('secret-mode') === 'none';
  $('sf-standard').disabled = none;
  if (none) $('sf-standard').checked = false;
}

function setSecretMode(mode) {
  const radio = document.querySelector(`input[name="secret-mode"][value="${mode}"]`);
  radio.checked = true;
  $('sf-secret-field').hidden = mode !== 'paste';
  if (mode !== 'paste') $('sf-secret').value = '';
}

// formBody is the JSON body: every field set when creating (the body's
// shape and pace only when they are not the defaults); only the changed
// ones when editing (PATCH).
function formBody() {
  const b = {};
  const events = chosenEvents();
  const url = $('sf-url').value.trim();
  const description = $('sf-description').value.trim();
  const filter = $('sf-filter').value.trim();
  const active = $('sf-active').checked;
  const queue = $('sf-queue').checked;
  const ordering = $('sf-ordering').value;
  const format = $('sf-format').value;
  const transform = $('sf-transform').value.trim();
  const method = $('sf-method').value;
  const rateLimit = $('sf-rate-limit').value.trim();
  if (form.mode === 'create') {
    // An id of the page's own when none is given, kept across tries: a
    // save answered 503 ("the change may have been made") and tried again
    // made a second webhook, the first one with a secret never shown.
    // Tried again with the same id, it is refused as taken instead.
    const id = $('sf-id').value.trim();
    b.id = id || (form.autoID ||= newWebhookID());
    b.url = url;
    b.events = events;
    const mode = radioValue('secret-mode');
    if (mode === 'paste') b.secret = $('sf-secret').value;
    // "" asks for none (allowed with a connector format); left out, the
    // API generates one.
    if (mode === 'none') b.secret = '';
    if ($('sf-standard').checked) b.standard_webhooks = true;
    b.active = active;
    b.queue_while_inactive = queue;
    b.ordering = ordering;
    if (filter) b.filter = filter;
    if (format !== 'dzdesk') b.format = format;
    if (transform) b.transform = transform;
    if (method !== 'POST') b.method = method;
    if (rateLimit) b.rate_limit = rateLimit;
    if (description) b.description = description;
    const h = headerRows();
    if (Object.keys(h).length) b.headers = h;
    return b;
  }
  const o = form.orig;
  if (form.urlDirty && url !== o.url) b.url = url;
  const same = (a, c) => a.length === c.length && a.every((x) => c.includes(x));
  if (!same(events, o.events || [])) b.events = events;
  if (description !== (o.description || '')) b.description = description;
  if (filter !== (o.filter || '')) b.filter = filter;
  if (active !== (o.active !== false)) b.active = active;
  if (queue !== Boolean(o.queue_while_inactive)) b.queue_while_inactive = queue;
  if (ordering !== (o.ordering || 'none')) b.ordering = ordering;
  // "" removes a transform or a rate limit.
  if (format !== (o.format || 'dzdesk')) b.format = format;
  if (transform !== (o.transform || '').trim()) b.transform = transform;
  if (method !== (o.method || 'POST')) b.method = method;
  if (rateLimit !== (o.rate_limit || '').trim()) b.rate_limit = rateLimit;
  if (form.headersDirty) b.headers = headerRows();
  return b;
}

async function submitForm(ev) {
  ev.preventDefault();
  const button = ev.submitter && ev.submitter.value ? ev.submitter : $('sf-save');
  const andTest = button.value === 'test';
  if (button.disabled) return;
  const buttons = [$('sf-save'), $('sf-save-test')];
  for (const b of buttons) b.disabled = true;
  button.setAttribute('aria-busy', 'true');
  clearFieldErrors();
  try {
    await saveForm(andTest);
  } finally {
    for (const b of buttons) b.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

async function saveForm(andTest) {
  const body = formBody();
  const result = $('sub-result');
  const dup = body.headers ? duplicateHeader() : '';
  if (dup) {
    showProblems($('sub-errors'), [{ field: 'headers', problem: dup }], dup);
    return;
  }
  let saved = null;
  try {
    if (form.mode === 'create') {
      const generated = body.secret === undefined;
      const created = await api('POST', '/v1/subscriptions', body);
      const { secret, ...sub } = created;
      Object.assign(form, { mode: 'edit', id: sub.id, orig: sub, headersDirty: false, urlDirty: false });
      $('sf-url').value = sub.url || '';
      showFormMode();
      result.replaceChildren(generated && secret ? secretOnce(secret, 'sub')
        : el('p', { class: 'muted', text: body.secret === '' ? 'Saved without a secret.' : 'Saved with the secret you entered.' }));
      $('sf-secret').value = '';
      $('sf-id').value = '';
      saved = `Created webhook ${sub.id}.`;
      result.scrollIntoView({ block: 'nearest' });
    } else if (Object.keys(body).length) {
      const sub = await api('PATCH', `/v1/subscriptions/${enc(form.id)}`, body);
      Object.assign(form, { orig: sub, headersDirty: false, urlDirty: false });
      $('sf-url').value = sub.url || '';
      result.querySelector('[data-testid="sub-test"]')?.remove();
      saved = `Saved ${form.id}: ${Object.keys(body).join(', ')} changed.`;
    } else if (!andTest) {
      saved = 'Nothing changed.';
    }
  } catch (e) {
    if (form.mode === 'create' && e.status === 409 && form.autoIDTried && body.id === form.autoID) {
      // The id is the page's own, sent again after an answer that said
      // the change may have been made: it was. Its secret was never shown.
      showProblems($('sub-errors'), [], `The webhook was created by the first try, as ${body.id}: it is in the list now. Its secret was not shown; rotate it (Rotate secret on its card) to get one.`);
      loadSubscriptions().catch((err) => showError(err.message));
      return;
    }
    if (form.mode === 'create' && body.id === form.autoID && (e.status === 0 || e.status >= 500)) form.autoIDTried = true;
    showProblems($('sub-errors'), e.problems || [], e.message);
    return;
  }
  if (saved) announce(saved);
  loadSubscriptions().catch((e) => showError(e.message));
  if (!andTest) {
    if (saved && !result.querySelector('input')) closeForm();
    return;
  }
  const event = $('sf-test-event').value || 'request.created';
  result.querySelector('[data-testid="sub-test"]')?.remove();
  const box = el('div', { 'data-testid': 'sub-test', role: 'status', 'aria-live': 'polite' }, el('p', { class: 'muted', text: `Sending a test ${event} to ${form.id}…` }));
  result.append(box);
  try {
    const rep = await api('POST', `/v1/subscriptions/${enc(form.id)}/test`, { event });
    box.replaceChildren(testReport('sub-test', event, rep, () => box.remove()));
    // The secret and the result are below the buttons: bring them in view.
    (result.querySelector('.secret-once') || box).scrollIntoView({ block: 'nearest' });
    refreshHistory().catch(() => {});
  } catch (e) {
    box.replaceChildren(el('p', { class: 'form-error-text', text: `Saved, but the test could not be sent: ${e.message}` }));
  }
}

// secretOnce shows a secret with a copy button and the warning that it is
// not shown again. Its value is a property of the input, not an attribute.
function secretOnce(secret, prefix) {
  const input = el('input', { id: `${prefix}-secret-value`, class: 'mono secret-value', readonly: true, spellcheck: 'false', autocomplete: 'off', 'data-testid': 'secret-value' });
  input.value = secret;
  const status = el('p', { class: 'hint', role: 'status', 'data-testid': 'copy-status' });
  const copy = el('button', {
    type: 'button', 'data-testid': 'copy-secret',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(input.value);
        status.textContent = 'Copied to the clipboard.';
      } catch {
        input.focus();
        input.select();
        status.textContent = 'Selected: press Ctrl+C (⌘C) to copy it.';
      }
      box.dataset.copied = 'true';
    },
  }, 'Copy');
  input.addEventListener('copy', () => { box.dataset.copied = 'true'; });
  const box = el('div', { class: 'secret-once', 'data-testid': 'secret-once' },
    el('p', { class: 'secret-warning' },
      el('strong', { text: 'Copy this secret now: it is not shown again. ' }),
      'dzhook keeps it encrypted and never returns it; your receiver needs it to verify each delivery’s signature.'),
    el('div', { class: 'secret-row' },
      el('label', { for: input.id, text: 'Secret' }), input, copy),
    status,
  );
  return box;
}

// keepSecret asks, when dialog shows a one-time secret not copied yet,
// whether to close anyway: Escape or Close lost it at once, and only a
// rotation gave another.
function keepSecret(dialog) {
  const once = dialog.querySelector('.secret-once');
  return once && once.dataset.copied !== 'true' &&
    !window.confirm('The secret is shown only now and was not copied. Close without it?');
}

function closeForm() {
  const d = $('sub-dialog');
  if (d.open && !keepSecret(d)) d.close();
}

// forget removes what a dialog may hold of a secret, and gives the focus
// back to the button that opened it (or Add webhook when that is gone).
function forget(resultID, inputs, opener) {
  $(resultID).replaceChildren();
  for (const i of inputs) $(i).value = '';
  (opener && opener.isConnected && !opener.closest('[hidden]') ? opener : $('add-webhook')).focus();
}

async function toggleActive(id) {
  const c = state.cards.get(id);
  const s = state.subs.find((x) => x.id === id);
  if (!c || !s) return;
  const active = s.active === false;
  await busy(c.active, async () => {
    await api('PATCH', `/v1/subscriptions/${enc(id)}`, { active });
    clearError('action');
    announce(active ? `${id} is active: its events are sent.` : `${id} is inactive: its events are ${s.queue_while_inactive ? 'kept until it is active again' : 'skipped'}.`);
    await loadSubscriptions();
  });
  c.active.focus();
}

// showHistoryOf shows every delivery of one subscription (the status and
// event filters are cleared; the time range is kept, unless the card
// counts failed or held deliveries: those can be older than the range,
// and the history showed none of what the card said, so it covers all
// then (found by a review)).
function showHistoryOf(id) {
  const s = state.subs.find((x) => x.id === id);
  const waiting = s && (s.failed > 0 || s.held > 0);
  Object.assign(state.filters, { subscription: id, status: '', event: '' }, waiting ? { range: 'all' } : {});
  showFilters();
  applyFilters();
  $('history-title').focus();
  $('history-title').scrollIntoView({ block: 'start' });
}

// ---- rotate ------------------------------------------------------------------

const rotate = { id: '', opener: null };

function openRotate(id, opener) {
  Object.assign(rotate, { id, opener });
  $('rotate-form').reset();
  $('rotate-errors').replaceChildren();
  $('rotate-result').replaceChildren();
  $('rotate-fields').hidden = false;
  $('rotate-secret-field').hidden = true;
  setText($('rotate-title'), `Rotate the secret of ${id}`);
  $('rotate-dialog').showModal();
  $('rotate-overlap').focus();
}

async function submitRotate(ev) {
  ev.preventDefault();
  const body = { overlap: $('rotate-overlap').value, activate: radioValue('rotate-activate') };
  if (radioValue('rotate-mode') === 'paste') body.secret = $('rotate-secret').value;
  const button = $('rotate-submit');
  if (button.disabled) return;
  button.disabled = true;
  $('rotate-errors').replaceChildren();
  for (const f of ['rotate-secret', 'rotate-overlap', 'rotate-activate-now']) $(f)?.removeAttribute('aria-invalid');
  try {
    const rep = await api('POST', `/v1/subscriptions/${enc(rotate.id)}/secret`, body);
    $('rotate-secret').value = '';
    $('rotate-fields').hidden = true;
    const when = (iso) => `${fmtZoned(iso)} (${fmtAgo(iso)})`;
    $('rotate-result').replaceChildren(
      body.secret === undefined ? secretOnce(rep.secret, 'rotate') : el('p', { text: 'The secret you entered is in force.' }),
      el('p', { 'data-testid': 'rotate-summary' },
        `The old secret stays valid until ${when(rep.previous_valid_until)}; X-DZDESK-Signature uses the new one from ${when(rep.signature_switch_at)}.`),
    );
    announce(`Rotated the secret of ${rotate.id}.`);
    ($('rotate-result').querySelector('button') || $('rotate-close')).focus();
  } catch (e) {
    // Each problem with its field, the field marked (as the Add webhook
    // form does): "secret: is too short" beside nothing said little.
    const fields = { secret: 'rotate-secret', overlap: 'rotate-overlap', activate: 'rotate-activate-now' };
    const problems = e.problems || [];
    for (const p of problems) $(fields[p.field])?.setAttribute('aria-invalid', 'true');
    $('rotate-errors').replaceChildren(problems.length
      ? el('ul', {}, ...problems.map((p) => el('li', { class: 'form-error-text', 'data-testid': `rotate-error-${p.field}`, text: `${p.field}: ${p.problem}` })))
      : el('p', { class: 'form-error-text', text: e.message }));
    $('rotate-errors').focus?.();
  } finally {
    button.disabled = false;
  }
}

// ---- delete ------------------------------------------------------------------

const removal = { id: '', opener: null };

// openDelete asks before deleting, saying how many deliveries its delete
// cancels (pending and held, from the journal).
async function openDelete(id, opener) {
  Object.assign(removal, { id, opener });
  $('delete-errors').replaceChildren();
  const c = state.cards.get(id);
  await busy(c.remove, async () => {
    const s = await api('GET', `/v1/subscriptions/${enc(id)}`);
    const pending = s.pending || 0;
    const held = s.held || 0;
    const n = pending + held;
    setText($('delete-title'), `Delete webhook ${id}?`);
    const parts = [];
    if (pending) parts.push(`${pending} pending`);
    if (held) parts.push(`${held} held`);
    setText($('delete-text'), n === 0
      ? `No deliveries are pending for ${id}. Deleting it stops its deliveries; its history is kept.`
      : `${n} ${n === 1 ? 'delivery is' : 'deliveries are'} waiting for ${id} (${parts.join(', ')}): deleting it cancels ${n === 1 ? 'it' : 'them'}. ${n === 1 ? 'It stays' : 'They stay'} in the history as cancelled; an attempt in flight finishes.`);
    $('delete-dialog').dataset.pending = String(n);
    $('delete-dialog').showModal();
    $('delete-cancel').focus();
  });
}

async function submitDelete(ev) {
  ev.preventDefault();
  const id = removal.id;
  const button = $('delete-submit');
  $('delete-errors').replaceChildren();
  // Errors go in the dialog: the page behind a modal dialog is inert, so
  // the page's alert could be neither read nor dismissed.
  await busy(button, async () => {
    let rep;
    try {
      rep = await api('DELETE', `/v1/subscriptions/${enc(id)}`);
    } catch (e) {
      $('delete-errors').replaceChildren(el('p', { class: 'form-error-text', text: e.message }));
      $('delete-errors').focus();
      return;
    }
    clearError('action');
    $('delete-dialog').close();
    const n = rep.cancelled || 0;
    announce(`Deleted ${id}${n ? `; ${n} ${n === 1 ? 'delivery' : 'deliveries'} cancelled` : ''}.`);
    // The filter offers running subscriptions only; the deleted one's
    // deliveries stay in the unfiltered history, cancelled.
    if (state.filters.subscription === id) {
      state.filters.subscription = '';
      showFilters();
      writeHash();
    }
    await refreshAll();
    $('add-webhook').focus();
  });
}

function wireManage() {
  $('add-webhook').addEventListener('click', (ev) => openForm('', ev.currentTarget));
  $('sub-form').addEventListener('submit', submitForm);
  $('sub-close').addEventListener('click', closeForm);
  $('sf-cancel').addEventListener('click', closeForm);
  $('sub-dialog').addEventListener('close', () => {
    // Header values are often credentials: not left in the page.
    $('sf-headers').replaceChildren();
    forget('sub-result', ['sf-secret'], form.opener);
  });
  $('sf-add-header').addEventListener('click', () => {
    form.headersDirty = true;
    addHeaderRow().focus();
  });
  $('sf-headers').addEventListener('input', () => {
    form.headersDirty = true;
  });
  $('sf-url').addEventListener('input', () => {
    form.urlDirty = true;
  });
  $('sf-event-groups').addEventListener('change', syncTestEvent);
  $('sub-form').addEventListener('change', (ev) => {
    if (ev.target.name === 'secret-mode') {
      form.secretModeTouched = true;
      $('sf-secret-field').hidden = ev.target.value !== 'paste';
      if (ev.target.value === 'paste') $('sf-secret').focus();
      else $('sf-secret').value = '';
      syncSecretChoices();
    }
    if (ev.target.id === 'sf-format') syncSecretChoices();
  });
  $('rotate-form').addEventListener('submit', submitRotate);
  $('rotate-form').addEventListener('change', (ev) => {
    if (ev.target.name === 'rotate-mode') {
      $('rotate-secret-field').hidden = ev.target.value !== 'paste';
      if (ev.target.value !== 'paste') $('rotate-secret').value = '';
    }
  });
  const closeRotate = () => {
    if (!keepSecret($('rotate-dialog'))) $('rotate-dialog').close();
  };
  // Escape: the same question before a one-time secret is lost.
  for (const id of ['sub-dialog', 'rotate-dialog']) {
    $(id).addEventListener('cancel', (ev) => {
      if (keepSecret($(id))) ev.preventDefault();
    });
  }
  $('rotate-close').addEventListener('click', closeRotate);
  $('rotate-cancel').addEventListener('click', closeRotate);
  $('rotate-dialog').addEventListener('close', () => forget('rotate-result', ['rotate-secret'], rotate.opener));
  $('delete-form').addEventListener('submit', submitDelete);
  $('delete-cancel').addEventListener('click', () => $('delete-dialog').close());
  $('delete-dialog').addEventListener('close', () => {
    const c = state.cards.get(removal.id);
    if (c && c.root.isConnected) c.remove.focus();
  });
}

// ---- replay ------------------------------------------------------------------
//
// Replay… re-sends the journaled events of a window to a subscription
// (POST /v1/subscriptions/{id}/replay). While the dialog is open the
// replay's progress is asked for every 2 s, until it has nothing left to
// do; closing the dialog stops asking, not the replay.

const REPLAY_POLL_MS = 2000;

// replay is the open dialog: its subscription, the replay shown (rid), the
// POST's note and the replay it is about (the GET has none), the last
// answer, and the button that opened it.
const replay = { id: '', rid: '', note: '', noteID: '', last: null, opener: null, timer: 0 };

// replayBusy: the replay still has something to follow or to cancel:
// running, or done or failed with deliveries still waiting (a failed
// one's go out if its subscription comes back; a cancel stops them), as
// the API counts a replay still going.
const replayBusy = (rp) => rp.state === 'running' || ((rp.state === 'done' || rp.state === 'failed') && rp.pending > 0);

// replayDoing says what a busy replay is doing, after "is".
const replayDoing = (rp) => ({ running: 'running', failed: 'failed, its deliveries still waiting' })[rp.state] || 'waiting for its deliveries';

function openReplay(id, opener) {
  clearTimeout(replay.timer);
  Object.assign(replay, { id, rid: '', note: '', noteID: '', last: null, opener });
  $('replay-form').reset();
  setText($('replay-title'), `Replay events into ${id}`);
  showReplayForm();
  $('replay-dialog').showModal();
  $('replay-since-1h').focus();
  // A replay still at work is offered, not shown in place of the form.
  api('GET', `/v1/subscriptions/${enc(id)}/replays`).then((list) => {
    const last = (list.replays || [])[0];
    if (last && replay.id === id && !replay.last && $('replay-dialog').open && replayBusy(last)) {
      replay.last = last;
      showReplayForm();
    }
  }, () => {}); // the form works without it
}

function showReplayForm() {
  clearTimeout(replay.timer);
  $('replay-errors').replaceChildren();
  replayFieldError('since', '');
  replayFieldError('events', '');
  $('replay-at-field').hidden = radioValue('replay-since') !== 'at';
  $('replay-fields').hidden = false;
  $('replay-progress').hidden = true;
  const last = replay.last;
  $('replay-running').hidden = !(last && replayBusy(last));
  if (last) setText($('replay-running-text'), `Replay ${last.id} (started ${fmtAgo(last.created_at)}) is ${replayDoing(last)}.`);
}

function replayFieldError(field, problem) {
  const p = $(`replay-${field}-error`);
  p.hidden = !problem;
  setText(p, problem);
  const input = field === 'since' ? $('replay-at') : $('replay-events');
  if (problem) input.setAttribute('aria-invalid', 'true');
  else input.removeAttribute('aria-invalid');
}

async function submitReplay(ev) {
  ev.preventDefault();
  const button = $('replay-start');
  if (button.disabled) return;
  $('replay-errors').replaceChildren();
  replayFieldError('since', '');
  replayFieldError('events', '');
  let since = radioValue('replay-since');
  if (since === 'at') {
    const d = new Date($('replay-at').value);
    if (!$('replay-at').value || Number.isNaN(d.getTime())) {
      replayFieldError('since', 'Choose the date and time to start from.');
      $('replay-at').focus();
      return;
    }
    since = d.toISOString().replace(/\.\d{3}Z$/, 'Z');
  }
  const events = $('replay-events').value.split(',').map((e) => e.trim()).filter(Boolean);
  const body = events.length ? { since, events } : { since };
  const id = replay.id;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const rp = await api('POST', `/v1/subscriptions/${enc(id)}/replay`, body);
    if (replay.id !== id) return;
    Object.assign(replay, { note: rp.note || '', noteID: rp.id });
    announce(`Replay ${rp.id} of ${id} started: ${rp.matched} ${rp.matched === 1 ? 'event' : 'events'} in the window.`);
    showReplay(rp);
    $('replay-progress-title').focus();
  } catch (e) {
    // The API names the field first: "since: …", "events[0]: …".
    const m = /^(since|until|events)(\[\d+\])?: /.exec(e.message);
    if (e.status === 400 && m) {
      replayFieldError(m[1] === 'events' ? 'events' : 'since', e.message.slice(m[0].length));
      (m[1] === 'events' ? $('replay-events') : document.querySelector('input[name="replay-since"]:checked')).focus();
    } else {
      // A 409 names the replay still going that overlaps this one, which
      // may be older than the newest the dialog offered: offered now,
      // with its progress and Cancel a click away.
      const busy = e.status === 409 && /\brpl_[2-7a-z]{16}\b/.exec(e.message);
      if (busy && busy[0] !== replay.last?.id) {
        try {
          const rp = await api('GET', `/v1/subscriptions/${enc(id)}/replays/${enc(busy[0])}`);
          if (replay.id === id && replayBusy(rp)) {
            replay.last = rp;
            showReplayForm();
          }
        } catch { /* the message names it all the same */ }
      }
      $('replay-errors').replaceChildren(el('p', { class: 'form-error-text', text: e.message }));
      $('replay-errors').focus();
    }
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

// showReplay shows a replay's progress in place of the form, and asks for
// it again while it is busy.
function showReplay(rp) {
  replay.rid = rp.id;
  $('replay-fields').hidden = true;
  $('replay-progress').hidden = false;
  renderReplay(rp);
  pollReplay();
}

const REPLAY_STATES = {
  running: 'Running: making the deliveries.',
  done: 'Done: every event of the window has its delivery.',
  cancelled: 'Cancelled.',
  failed: 'Failed.',
};

function renderReplay(rp) {
  replay.last = rp;
  setText($('replay-id'), rp.id);
  const st = $('replay-state');
  setText(st, rp.state);
  st.className = `badge badge-${rp.state}`;
  let says = REPLAY_STATES[rp.state] || '';
  if (rp.state === 'done' && rp.pending > 0) says += ` ${rp.pending} still ${rp.pending === 1 ? 'waits' : 'wait'} to go out.`;
  // The reason of a cancel says who ("cancelled by an operator (…)").
  if (rp.reason) says = rp.state === 'cancelled' ? `${rp.reason[0].toUpperCase()}${rp.reason.slice(1)}.` : `${says} ${rp.reason}`;
  if (rp.state === 'failed' && rp.pending > 0) {
    says += `; ${rp.pending} of its deliveries still ${rp.pending === 1 ? 'waits' : 'wait'}: sent if the subscription comes back, unless cancelled.`;
  }
  setText($('replay-state-text'), says);
  const bar = $('replay-bar');
  bar.max = Math.max(rp.matched, 1);
  bar.value = rp.matched ? Math.min(rp.scanned, rp.matched) : (rp.state === 'running' ? 0 : 1);
  setText($('replay-bar-label'), `${rp.scanned} of ${rp.matched} ${rp.matched === 1 ? 'event' : 'events'} looked at`);
  const events = (rp.events || []).length ? rp.events.join(', ') : 'every event it receives';
  $('replay-facts').replaceChildren(
    fact('Window', `${fmtZoned(rp.since)} → ${fmtZoned(rp.until)}`, 'replay-window'),
    fact('Events', events),
    fact('Scanned', `${rp.scanned} of ${rp.matched}`, 'replay-scanned'),
    fact('Created', rp.created, 'replay-created'),
    fact('Delivered', rp.delivered, 'replay-delivered'),
    fact('Pending', rp.pending, 'replay-pending'),
    fact('Failed', rp.failed, 'replay-failed'),
    fact('Cancelled', rp.skipped, 'replay-skipped'),
    fact('Started', fmtZoned(rp.created_at)),
  );
  const note = replay.noteID === rp.id ? replay.note : '';
  $('replay-note').hidden = !note;
  setText($('replay-note'), note);
  const cancel = $('replay-cancel');
  const busyNow = replayBusy(rp);
  if (cancel.hidden === busyNow) {
    const hadFocus = document.activeElement === cancel;
    cancel.hidden = !busyNow;
    if (hadFocus) $('replay-new').focus();
  }
}

function pollReplay() {
  clearTimeout(replay.timer);
  const { id, rid, last } = replay;
  if (!$('replay-dialog').open || !last || !replayBusy(last)) return;
  replay.timer = setTimeout(async () => {
    try {
      const rp = await api('GET', `/v1/subscriptions/${enc(id)}/replays/${enc(rid)}`);
      if (replay.id !== id || replay.rid !== rid || $('replay-progress').hidden) return;
      $('replay-errors').replaceChildren();
      renderReplay(rp);
    } catch (e) {
      if (replay.rid !== rid) return;
      $('replay-errors').replaceChildren(el('p', { class: 'form-error-text', text: `Progress: ${e.message}` }));
    }
    if (replay.rid === rid && !$('replay-progress').hidden) pollReplay();
  }, REPLAY_POLL_MS);
}

async function cancelReplay() {
  const button = $('replay-cancel');
  if (button.disabled) return;
  const { id, rid } = replay;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    const rp = await api('POST', `/v1/subscriptions/${enc(id)}/replays/${enc(rid)}/cancel`);
    $('replay-errors').replaceChildren();
    renderReplay(rp);
    const n = rp.skipped || 0;
    announce(`Cancelled replay ${rid} of ${id}${n ? `; ${n} ${n === 1 ? 'delivery' : 'deliveries'} will not go out` : ''}.`);
  } catch (e) {
    // A 409: it finished meanwhile; the next poll shows how.
    $('replay-errors').replaceChildren(el('p', { class: 'form-error-text', text: e.message }));
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
  if (button.hidden) $('replay-new').focus();
  pollReplay();
}

function wireReplay() {
  $('replay-form').addEventListener('submit', submitReplay);
  $('replay-form').addEventListener('change', (ev) => {
    if (ev.target.name !== 'replay-since') return;
    $('replay-at-field').hidden = ev.target.value !== 'at';
    replayFieldError('since', '');
  });
  const close = () => $('replay-dialog').close();
  $('replay-close').addEventListener('click', close);
  $('replay-dismiss').addEventListener('click', close);
  $('replay-cancel').addEventListener('click', cancelReplay);
  $('replay-new').addEventListener('click', () => {
    $('replay-form').reset();
    showReplayForm();
    $('replay-since-1h').focus();
  });
  $('replay-show-last').addEventListener('click', () => {
    if (!replay.last) return;
    showReplay(replay.last);
    $('replay-progress-title').focus();
  });
  $('replay-dialog').addEventListener('close', () => {
    clearTimeout(replay.timer);
    replay.rid = '';
    const o = replay.opener;
    (o && o.isConnected ? o : $('add-webhook')).focus();
  });
}

// ---- history -----------------------------------------------------------------

function listQuery(limit, cursor) {
  const f = state.filters;
  const q = new URLSearchParams();
  if (f.subscription) q.set('subscription', f.subscription);
  if (f.status) q.set('status', f.status);
  if (f.event) q.set('event', f.event);
  if (RANGES[f.range]) q.set('since', RANGES[f.range]);
  q.set('limit', String(limit));
  if (cursor) q.set('cursor', cursor);
  return q.toString();
}

// historyLoad runs the history's loads (a refresh, a "Load more") one
// at a time, each on what the one before left. Run side by side, a
// refresh that answered after a "Load more" replaced the page it had
// added, and a "Load more" from a cursor that a refresh then moved (new
// deliveries on top) appended its page after the refreshed rows, leaving
// out the rows between the two cursors. fn is given the history's reset
// count when it was asked for, and leaves the rows alone once a reset
// (new filters, or the same ones applied again) came after it: an
// answer in flight put back what the reset had cleared (found by a
// review).
function historyLoad(fn) {
  const gen = state.historyGen;
  const run = state.historyQueue.then(() => fn(gen), () => fn(gen));
  state.historyQueue = run.catch(() => {});
  return run;
}

// refreshHistory reloads the rows shown so far (at least one page), so
// live updates neither lose "Load more" pages nor the scroll position.
function refreshHistory() {
  return historyLoad(async (gen) => {
    const key = listQuery(0, '');
    if (gen !== state.historyGen) return;
    const keep = key === state.historyKey ? state.deliveries.length : 0;
    const limit = Math.min(Math.max(PAGE_SIZE, keep), MAX_LIMIT);
    const data = await api('GET', `/v1/deliveries?${listQuery(limit, '')}`);
    if (gen !== state.historyGen || key !== listQuery(0, '')) return; // reset meanwhile
    const rows = data.deliveries || [];
    let cursor = data.next_cursor || '';
    if (keep > limit && cursor && rows.length) {
      // More rows shown than one read returns (MAX_LIMIT): those below
      // the refreshed ones stay, from the row after the last refreshed
      // one on, with the cursor they were loaded to (they went at every
      // refresh, and "Load more" brought them back until the next one:
      // found by a review). They are not refreshed themselves.
      const at = state.deliveries.findIndex((d) => d.id === rows[rows.length - 1].id);
      if (at >= 0) {
        const have = new Set(rows.map((d) => d.id));
        rows.push(...state.deliveries.slice(at + 1).filter((d) => !have.has(d.id)));
        cursor = state.nextCursor;
      }
    }
    state.historyKey = key;
    state.deliveries = rows;
    state.nextCursor = cursor;
    renderHistory();
  });
}

function loadMore() {
  return historyLoad(async (gen) => {
    const key = listQuery(0, '');
    const cursor = state.nextCursor;
    // Nothing more, or reset since (its refresh is queued behind this).
    if (!cursor || gen !== state.historyGen || key !== state.historyKey) return;
    const data = await api('GET', `/v1/deliveries?${listQuery(PAGE_SIZE, cursor)}`);
    if (gen !== state.historyGen || key !== listQuery(0, '')) return; // reset meanwhile
    const have = new Set(state.deliveries.map((d) => d.id));
    state.deliveries.push(...(data.deliveries || []).filter((d) => !have.has(d.id)));
    state.nextCursor = data.next_cursor || '';
    renderHistory();
  });
}

function lastResult(d) {
  if (d.in_flight) return el('span', { class: 'muted', text: 'sending…' });
  if (d.last_status) return el('span', { class: d.last_status < 300 ? 'good' : 'bad', text: `HTTP ${d.last_status}` });
  if (d.last_error) return el('span', { class: d.state === 'skipped' ? 'muted' : 'bad', title: d.last_error, text: d.last_error });
  return el('span', { class: 'muted', text: '—' });
}

function buildRow(d) {
  const tr = el('tr', { 'data-testid': `delivery-row-${d.id}`, 'data-id': d.id });
  tr.addEventListener('click', (ev) => {
    if (ev.target.closest('button, a, select, input')) return;
    if (window.getSelection && String(window.getSelection()).length > 0) return; // selecting text
    openDelivery(d.id, false);
  });
  return tr;
}

function fillRow(tr, d) {
  const key = JSON.stringify(d) + (state.openID === d.id);
  if (tr.dataset.key === key) return;
  const hadFocus = tr.contains(document.activeElement);
  tr.dataset.key = key;
  const open = el('button', {
    type: 'button', class: 'linkish', 'data-testid': `open-${d.id}`,
    'aria-label': `Open delivery ${d.id} (${d.event})`, onclick: () => openDelivery(d.id, true),
  }, d.event);
  if (state.openID === d.id) open.setAttribute('aria-current', 'true');
  tr.classList.toggle('selected', state.openID === d.id);
  tr.replaceChildren(
    el('td', { class: 'c-time' }, timeEl(d.created_at, fmtShort(d.created_at))),
    el('td', { class: 'c-event' }, open, d.test ? el('span', { class: 'tag', text: 'test' }) : null),
    el('td', { text: d.subscription }),
    el('td', {}, el('span', { class: `badge badge-${d.state}`, 'data-testid': `delivery-state-${d.id}`, text: d.state })),
    el('td', { class: 'num opt' , text: d.attempts }),
    el('td', { class: 'c-result' }, lastResult(d)),
    el('td', { class: 'c-time opt' }, d.next_attempt_at ? timeEl(d.next_attempt_at, fmtAgo(d.next_attempt_at)) : el('span', { class: 'muted', text: '—' })),
    el('td', { class: 'c-id opt mono muted', text: d.id }),
  );
  if (hadFocus) open.focus();
}

function renderHistory() {
  const body = $('history-body');
  const seen = new Set();
  state.deliveries.forEach((d, i) => {
    seen.add(d.id);
    let tr = state.rows.get(d.id);
    if (!tr) {
      tr = buildRow(d);
      state.rows.set(d.id, tr);
    }
    fillRow(tr, d);
    // Insert new rows before the old ones rather than moving old ones:
    // moving a row would take the keyboard focus away from it.
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  for (const [id, tr] of state.rows) {
    if (!seen.has(id)) {
      tr.remove();
      state.rows.delete(id);
    }
  }
  const n = state.deliveries.length;
  $('history-empty').hidden = n > 0;
  $('load-more').hidden = !state.nextCursor;
  setText($('history-count'), n === 0 ? '' : `${n}${state.nextCursor ? '+' : ''} ${n === 1 ? 'delivery' : 'deliveries'}, newest first`);
}

function applyFilters() {
  const f = state.filters;
  f.subscription = $('f-subscription').value;
  f.status = $('f-status').value;
  f.event = $('f-event').value;
  f.range = $('f-range').value;
  writeHash();
  // A reset: the loads asked for before it leave the rows alone, and
  // "Load more" waits for the first page of these filters.
  state.historyGen++;
  state.deliveries = [];
  state.nextCursor = '';
  // The rows of the filters before go at once, not when the new ones'
  // first page comes (behind a load in flight, up to its timeout: found
  // by a review).
  renderHistory();
  $('history-empty').hidden = true;
  setText($('history-count'), 'Loading…');
  const gen = state.historyGen;
  return refreshHistory().catch((e) => {
    if (gen === state.historyGen && !state.deliveries.length) setText($('history-count'), 'Not loaded: see the message above');
    showError(e.message);
  });
}

function showFilters() {
  const f = state.filters;
  $('f-subscription').value = f.subscription;
  $('f-status').value = f.status;
  $('f-event').value = f.event;
  $('f-range').value = f.range;
}

// ---- delivery detail ---------------------------------------------------------

async function openDelivery(id, focus) {
  const was = state.openID;
  state.openID = id;
  state.detailJSON = '';
  writeHash();
  for (const d of state.deliveries) {
    if (d.id === id || d.id === was) fillRow(state.rows.get(d.id), d);
  }
  try {
    await loadDetail();
    if (focus) $('detail-title').focus();
  } catch (e) {
    showError(e.message);
  }
}

function closeDetail() {
  const was = state.openID;
  state.openID = '';
  state.detailJSON = '';
  writeHash();
  $('detail').hidden = true;
  $('split').classList.remove('with-detail');
  const d = state.deliveries.find((x) => x.id === was);
  if (d) {
    fillRow(state.rows.get(was), d);
    state.rows.get(was).querySelector('button')?.focus();
  } else {
    $('history-title').focus();
  }
}

async function loadDetail() {
  const id = state.openID;
  if (!id) return;
  let data, text;
  try {
    ({ data, text } = await api('GET', `/v1/deliveries/${enc(id)}`, undefined, { raw: true }));
  } catch (e) {
    if (e.status === 404 && state.openID === id) {
      closeDetail();
      throw new APIError(404, `Delivery ${id} was not found in the journal.`);
    }
    throw e;
  }
  if (state.openID !== id) return; // another one was opened meanwhile
  if (text === state.detailJSON) return; // nothing new: keep scroll and selection
  state.detailJSON = text;
  renderDetail(data, rawMembers(text));
}

function fact(label, value, testid) {
  const dd = el('dd', testid ? { 'data-testid': testid } : {});
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value === null || value === undefined || value === '' ? '—' : String(value);
  return el('div', { class: 'fact' }, el('dt', { text: label }), dd);
}

// renderDetail shows a delivery; raw holds the members of the API's
// answer as text, the payload and the body sent shown from them.
function renderDetail(data, raw) {
  const d = data.delivery || {};
  $('detail').hidden = false;
  $('split').classList.add('with-detail');
  setText($('detail-title'), `Delivery of ${d.event || 'an event'}`);
  setText($('detail-id'), d.id || '');
  const facts = [
    fact('State', el('span', { class: `badge badge-${d.state}`, 'data-testid': 'detail-state', text: d.state })),
    fact('Subscription', d.subscription),
    fact('Attempts', d.attempts),
    fact('Next attempt', d.next_attempt_at ? timeEl(d.next_attempt_at, `${fmtTime(d.next_attempt_at)} (${fmtAgo(d.next_attempt_at)})`) : (d.in_flight ? 'being sent now' : null)),
    fact('Created', timeEl(d.created_at)),
    fact('Event id', el('span', { class: 'mono', text: d.event_id || '' })),
    fact('Ordering key', orderingKey(d.ordering_key), 'detail-ordering-key'),
  ];
  // A delivery waiting behind an earlier one of its key: its next
  // attempt is that one's, and that one is what to look at (or retry).
  if (data.waiting_behind) {
    facts.push(fact('Waits behind', el('button', {
      type: 'button', class: 'linkish mono', 'data-testid': 'detail-waiting-behind',
      title: 'an earlier delivery of its ordering key, still to be made: it goes first', onclick: () => openDelivery(data.waiting_behind, true),
    }, data.waiting_behind)));
  }
  if (d.test) facts.push(fact('Kind', 'test send (not counted in the subscription’s health)'));
  if (d.replay_id) facts.push(fact('Replay', el('span', { class: 'mono', text: d.replay_id }), 'detail-replay'));
  $('detail-facts').replaceChildren(...facts);

  const attempts = Array.isArray(data.attempts) ? data.attempts : [];
  const rows = [];
  for (const a of attempts) {
    const ok = a.status_code && a.status_code >= 200 && a.status_code < 300;
    // An attempt that sent nothing: the transform skipped the delivery or
    // failed on its event.
    const unsent = unsentWhy(a);
    rows.push(el('tr', { 'data-testid': 'attempt-row', 'data-attempt': a.attempt, class: 'attempt' },
      el('td', { class: 'num', 'data-testid': 'attempt-number', text: a.attempt }),
      el('td', { class: 'c-time' }, timeEl(a.at, fmtShort(a.at))),
      el('td', { 'data-testid': 'attempt-trigger', text: a.trigger }),
      // The dzhook instance that made the attempt; absent for attempts
      // journaled before dzhook recorded it.
      a.instance
        ? el('td', { class: 'mono c-instance', 'data-testid': 'attempt-instance', title: a.instance, text: a.instance })
        : el('td', { 'data-testid': 'attempt-instance' }, el('span', { class: 'muted', title: 'not recorded', text: '—' })),
      el('td', { 'data-testid': 'attempt-status' },
        a.status_code ? el('span', { class: ok ? 'good' : 'bad', text: String(a.status_code) })
          : el('span', { class: 'muted', text: unsent ? 'not sent' : 'no answer' })),
      el('td', { 'data-testid': 'attempt-error-class' }, a.error_class ? el('span', { class: 'tag tag-bad', text: a.error_class })
        : el('span', { class: 'muted', text: unsent === 'skipped' ? 'skipped' : '—' })),
      el('td', { class: 'num', 'data-testid': 'attempt-duration', text: unsent ? '—' : fmtMS(a.duration_ms) }),
    ));
    const body = a.response_body || '';
    const note = a.response_body_base64 ? ' (not valid UTF-8: invalid bytes shown as �)' : '';
    rows.push(el('tr', { class: 'attempt-body' },
      el('td', {}),
      el('td', { colspan: '6' },
        a.error && a.error !== `HTTP ${a.status_code}`
          ? el('p', { class: unsent === 'skipped' ? 'muted' : 'attempt-error', 'data-testid': 'attempt-error', text: a.error }) : null,
        body
          ? el('details', { 'data-testid': 'attempt-body' },
            el('summary', { text: `Response body (${body.length} characters${note})` }),
            el('pre', { class: 'code code-small', tabindex: '0', 'aria-label': `Response body of attempt ${a.attempt}`, text: pretty(body) }))
          : el('p', { class: 'muted small-text', text: unsent ? 'Nothing was sent to the receiver.' : 'Empty response body' }),
      ),
    ));
  }
  // Keep the response bodies the operator opened open.
  const opened = new Set([...$('attempts-body').querySelectorAll('details[open]')].map((x) => x.closest('tr')?.previousSibling?.dataset.attempt));
  $('attempts-body').replaceChildren(...rows);
  for (const det of $('attempts-body').querySelectorAll('details')) {
    if (opened.has(det.closest('tr').previousSibling.dataset.attempt)) det.open = true;
  }
  $('attempts-empty').hidden = attempts.length > 0;
  renderWaited(d, data);
  renderNote(d, attempts);
  const p = shownBody(raw.get('payload'));
  setText($('payload'), p === null || p === '' ? '(no payload in the journal)' : p);
  // The body sent, when the subscription's transform or format made one.
  const sent = shownBody(raw.get('sent'));
  const hasSent = sent !== null;
  $('sent-section').hidden = !hasSent;
  setText($('sent'), hasSent ? sent : '');
  setText($('payload-title'), hasSent ? 'Event payload' : 'Payload');
}

// unsentWhy says why an attempt sent nothing: "transform" (its transform
// failed on the event, or went over its cost budget) or "skipped" (its
// transform gave null: the one attempt with neither a status nor an error
// class); "" for an attempt that made a request.
function unsentWhy(a) {
  if (a.status_code) return '';
  if (a.error_class === 'transform') return 'transform';
  if (!a.error_class) return 'skipped';
  return '';
}

// renderNote explains a delivery that its transform kept from being
// sent: skipped, or failed on the event.
function renderNote(d, attempts) {
  const last = attempts[attempts.length - 1];
  const why = last && d.state !== 'pending' ? unsentWhy(last) : '';
  const note = $('detail-note');
  note.hidden = !why;
  note.className = why === 'transform' ? 'detail-note bad' : 'detail-note';
  setText(note, why === 'skipped'
    ? 'Skipped by the subscription’s transform: it gave null (skip) for this event, so nothing was sent.'
    : why === 'transform'
      ? 'Not sent: the subscription’s transform (or format) failed on this event; its error is in the attempts. Fix the transform, then Retry now: a retry makes the body again with the one in force.'
      : '');
}

// orderingKey shows a delivery's ordering key: the entity's id, the whole
// subscription (ordering: subscription), or unordered.
function orderingKey(k) {
  if (k === null || k === undefined) return el('span', { class: 'muted', text: 'unordered' });
  if (k === '') return el('span', { text: 'whole subscription (one at a time)' });
  return el('span', { class: 'mono', text: k });
}

// renderWaited lists the deliveries of the same key that waited behind an
// ordered one while it was unfinished; each opens on a click.
function renderWaited(d, data) {
  const ordered = d.ordering_key !== null && d.ordering_key !== undefined;
  $('waited-section').hidden = !ordered;
  if (!ordered) {
    $('waited-list').replaceChildren();
    return;
  }
  const ids = Array.isArray(data.waited_behind_it) ? data.waited_behind_it : [];
  $('waited-list').replaceChildren(...ids.map((id) => el('li', {},
    el('button', { type: 'button', class: 'linkish mono', 'data-testid': `waited-${id}`, onclick: () => openDelivery(id, true) }, id))));
  $('waited-empty').hidden = ids.length > 0;
  $('waited-more').hidden = !data.waited_behind_more;
}

function retryOpen() {
  const id = state.openID;
  return busy($('retry-delivery'), async () => {
    const rep = await api('POST', `/v1/deliveries/${enc(id)}/retry`);
    clearError('action');
    const status = rep.status_code ? `HTTP ${rep.status_code}` : rep.error_class || 'no answer';
    announce(`Attempt ${rep.attempt} of ${id}: ${status}, ${rep.delivered ? 'delivered' : 'not delivered'} in ${fmtMS(rep.duration_ms)}.`);
    await Promise.all([loadDetail(), refreshHistory(), loadSubscriptions()]);
  });
}

// ---- live updates ------------------------------------------------------------

async function refreshAll() {
  // The catalog is loaded once; again only if that failed.
  await Promise.all([state.events.length ? null : loadEvents(), loadSubscriptions(), refreshHistory(), loadDetail()]);
}

const clock = (t = Date.now()) => fmtTime(new Date(t).toISOString()).slice(11);

function showLive() {
  setText($('live'), state.paused ? `Live updates paused · updated ${clock(state.lastOK)}` : `Live · updated ${clock(state.lastOK)}`);
  $('live').className = state.paused ? 'live paused' : 'live ok';
}

// poll refreshes everything; one at a time, and not while the tab is
// hidden or the operator paused live updates.
async function poll() {
  clearTimeout(state.timer);
  if (state.polling) return state.polling;
  state.polling = (async () => {
    try {
      await refreshAll();
      state.lastOK = Date.now();
      clearError('poll');
      showLive();
    } catch (e) {
      showError(`Live update failed: ${e.message}`, 'poll');
      $('live').className = 'live stale';
      setText($('live'), state.lastOK ? `Stale · last update ${clock(state.lastOK)}` : 'Not connected');
    } finally {
      state.polling = null;
      schedule();
    }
  })();
  return state.polling;
}

function schedule() {
  clearTimeout(state.timer);
  if (!state.paused && !document.hidden) state.timer = setTimeout(poll, POLL_MS);
}

function toggleLive() {
  state.paused = !state.paused;
  $('pause-live').textContent = state.paused ? 'Resume live updates' : 'Pause live updates';
  if (state.paused) {
    clearTimeout(state.timer);
    showLive();
  } else {
    poll();
  }
}

// ---- start -----------------------------------------------------------------

function wire() {
  wireManage();
  wireReplay();
  $('token-form').addEventListener('submit', submitToken);
  $('token-dialog').addEventListener('cancel', (ev) => {
    // Without a token the page can show nothing: keep asking.
    if (!sessionStorage.getItem(TOKEN_KEY)) ev.preventDefault();
  });
  $('token-dialog').addEventListener('close', () => {
    // Closed keeping the stored token: the calls waiting try it again.
    // Closed with none (Chromium lets a second Escape through whatever
    // the cancel handler says), it opens again while calls wait: they
    // would wait for good, and the page with them (found by a review).
    const stored = sessionStorage.getItem(TOKEN_KEY);
    if (stored) settleTokenWaiters(stored);
    else if (tokenWaiters && tokenWaiters.length) {
      $('token-dialog').showModal();
      $('token-input').focus();
    }
  });
  $('change-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken('').then(() => poll());
  });
  $('pause-live').addEventListener('click', toggleLive);
  const filters = $('filters');
  filters.addEventListener('submit', (ev) => {
    ev.preventDefault();
    applyFilters();
  });
  filters.addEventListener('change', () => applyFilters());
  filters.addEventListener('reset', (ev) => {
    ev.preventDefault();
    Object.assign(state.filters, { subscription: '', status: '', event: '', range: '24h' });
    showFilters();
    applyFilters();
  });
  $('load-more').addEventListener('click', (ev) => busy(ev.currentTarget, loadMore));
  $('retry-delivery').addEventListener('click', retryOpen);
  $('close-detail').addEventListener('click', closeDetail);
  $('detail').addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') closeDetail();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && !state.paused) poll();
  });
  window.addEventListener('hashchange', () => {
    // A fragment that names an element (the "Skip to delivery history"
    // link) is not a view: read as one, it reset every filter and closed
    // the open delivery (found by a review).
    const frag = location.hash.slice(1);
    if (frag && !frag.includes('=') && document.getElementById(frag)) {
      writeHash(); // the view's fragment back, for a reload or a shared link
      return;
    }
    const open = state.openID;
    readHash();
    showFilters();
    applyFilters();
    if (state.openID && state.openID !== open) openDelivery(state.openID, false);
    else if (!state.openID && open) closeDetail();
  });
}

async function start() {
  wire();
  readHash();
  showFilters();
  try {
    await loadEvents();
    await refreshAll();
    state.lastOK = Date.now();
    showLive();
  } catch (e) {
    showError(e.message, 'poll');
  }
  schedule();
}

start();

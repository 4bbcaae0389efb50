// The realtimed operator console (served at /console; see realtimed/http/console.py).
//
// Security rules this script keeps:
// - The API key lives in the variable `apiKey` only: no cookie, no storage, not in the URL.
//   Reloading or closing the page signs out.
// - Every server API call sends it as `Authorization: Bearer`, without credentials
//   (cookies), to this page's own origin only.
// - Every value from the server is written as text (textContent, text nodes,
//   attributes through the DOM), never parsed as HTML.
// - The page loads nothing from elsewhere, and the server's Content-Security-Policy
//   forbids inline scripts and styles.

const API = '/server/v1';
const NOT_AVAILABLE = 'not available on this server';
const STREAM_RETRY_MS = 3000;
const PAGE_SIZE = 50;
const RETRYABLE = new Set(['dead', 'failed', 'cancelled']);

let apiKey = null;
let stream = null; // the AbortController of the live counters' stream
let lastStats = null; // the stream's latest record
let queuesShown = ''; // what the queues table shows, so that it is redrawn only when that changes

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

// -- the DOM, as text only ----------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element: props set as properties or attributes through the DOM, children as nodes or text. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    else if (key === 'onclick') node.addEventListener('click', value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(container, ...children) {
  container.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function text(value) {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function when(value) {
  if (!value) return '–';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** A table: columns are [title, row => value or Node]. */
function table(columns, rows, rowProps = () => ({})) {
  const head = el('tr', {}, columns.map(([title]) => el('th', {}, title)));
  const body = rows.map((row) =>
    el('tr', rowProps(row), columns.map(([, get]) => {
      const value = get(row);
      return el('td', {}, value instanceof Node ? value : text(value));
    })),
  );
  if (!rows.length) body.push(el('tr', {}, el('td', { colspan: columns.length, class: 'empty' }, 'none')));
  return el('table', {}, el('thead', {}, head), el('tbody', {}, body));
}

/** Any JSON value, shown as tables (for answers whose shape the page does not know). */
function jsonView(value) {
  if (Array.isArray(value)) {
    if (value.length && value.every((item) => item && typeof item === 'object' && !Array.isArray(item))) {
      const keys = [...new Set(value.flatMap((item) => Object.keys(item)))];
      return table(keys.map((key) => [key, (row) => row[key]]), value);
    }
    return el('code', {}, text(value));
  }
  if (value && typeof value === 'object') {
    return el('table', { class: 'kv' }, el('tbody', {}, Object.entries(value).map(([key, item]) =>
      el('tr', {}, el('th', {}, key), el('td', {}, item && typeof item === 'object' ? jsonView(item) : text(item))),
    )));
  }
  return el('span', {}, text(value));
}

function problem(err) {
  if (err instanceof ApiError) {
    const field = err.field ? ` (field ${err.field})` : '';
    return el('p', { class: 'error', role: 'alert' }, `${err.code}: ${err.message}${field}`);
  }
  return el('p', { class: 'error', role: 'alert' }, String(err && err.message ? err.message : err));
}

function unavailable() {
  return el('p', { class: 'unavailable' }, NOT_AVAILABLE);
}

function notice(message, isError = false) {
  const box = $('notice');
  box.textContent = message;
  box.classList.toggle('error', isError);
}

function button(label, onclick, props = {}) {
  return el('button', { type: 'button', ...props, onclick }, label);
}

// -- the server API -----------------------------------------------------------------------------

function headers(extra = {}) {
  return { Authorization: `Bearer ${apiKey}`, 'X-Realtimed-Console': '1', ...extra };
}

async function api(method, path, { query = {}, body } = {}) {
  if (apiKey === null) throw new ApiError(401, 'UNAUTHORIZED', 'sign in with an API key first');
  const url = new URL(API + path, window.location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, String(value));
  }
  const init = { method, headers: headers({ Accept: 'application/json' }), credentials: 'omit', cache: 'no-store', redirect: 'error' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const err = new ApiError(response.status, error.code || `HTTP_${response.status}`, error.message || response.statusText, error.field);
    if (response.status === 401) signOut('The API key was refused.');
    throw err;
  }
  return data;
}

/** Show what `load` renders in `container`; an error shows as text, a 404 of an optional route as unavailable. */
async function show(container, load, { optional = false } = {}) {
  container.dataset.state = 'loading';
  fill(container, el('p', { class: 'loading' }, 'Loading…'));
  try {
    const shown = await load();
    if (apiKey === null) return;
    fill(container, shown);
    container.dataset.state = 'loaded';
  } catch (err) {
    if (apiKey === null) return; // signed out meanwhile (a 401): nothing is shown any more
    if (optional && err instanceof ApiError && err.status === 404) {
      fill(container, unavailable());
      container.dataset.state = 'unavailable';
    } else {
      fill(container, problem(err));
      container.dataset.state = 'error';
    }
  }
}

const enc = encodeURIComponent;

// -- signing in and out -------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const input = $('api-key');
  const key = input.value.trim();
  input.value = '';
  $('sign-in-error').textContent = '';
  if (!key) {
    $('sign-in-error').textContent = 'An API key is required.';
    return;
  }
  apiKey = key;
  try {
    const stats = await api('GET', '/stats');
    $('node-name').textContent = stats.node;
  } catch (err) {
    apiKey = null;
    $('sign-in-error').textContent = err.status === 401 ? 'Refused: this API key is not accepted here.' : `${err.code || 'ERROR'}: ${err.message}`;
    return;
  }
  $('sign-in').hidden = true;
  $('app').hidden = false;
  $('signed-in').hidden = false;
  $('sign-out').hidden = false;
  document.body.dataset.signedIn = 'true';
  startStream();
  switchTo('overview');
}

function signOut(reason = '') {
  apiKey = null;
  stopStream();
  // Forget what was shown (the counters' cards stay, emptied below).
  for (const box of document.querySelectorAll('.view div[id]:not(#counters)')) {
    box.replaceChildren();
    delete box.dataset.state;
  }
  for (const value of document.querySelectorAll('#counters .value')) {
    value.textContent = '–';
    value.dataset.value = '';
  }
  $('node-name').textContent = '';
  lastStats = null;
  queuesShown = '';
  $('app').hidden = true;
  $('signed-in').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  document.body.dataset.signedIn = 'false';
  $('sign-in-error').textContent = reason;
  notice('');
}

// -- views --------------------------------------------------------------------------------------

const views = {
  overview: loadOverview,
  users: () => searchUsers(),
  rooms: loadNamespaces,
  jobs: () => listJobs(),
  push: loadPushStats,
  deliveries: () => {},
};

function switchTo(name) {
  for (const tab of document.querySelectorAll('#tabs button')) tab.classList.toggle('active', tab.dataset.view === name);
  for (const view of document.querySelectorAll('.view')) view.hidden = view.id !== `view-${name}`;
  notice('');
  views[name]();
}

// Nodes: readiness, the cluster's nodes, presence.

async function loadOverview() {
  await Promise.all([
    show($('readiness'), async () => {
      const response = await fetch('/readyz', { credentials: 'omit', cache: 'no-store' });
      const body = await response.json();
      return [
        el('p', {}, 'Node ', el('strong', {}, text(body.node)), ': ',
          el('span', { class: `status ${body.status}`, dataset: { status: body.status } }, text(body.status)),
          body.draining ? ' (draining)' : ''),
        table([['backend', (row) => row[0]], ['state', (row) => row[1]]], Object.entries(body.backends || {})),
      ];
    }),
    show($('nodes'), async () => {
      const body = await api('GET', '/nodes');
      return [
        table([
          ['node', (n) => n.node], ['sockets', (n) => n.sessions], ['users', (n) => n.users], ['rooms', (n) => n.rooms],
          ['deliveries', (n) => n.deliveries], ['publications', (n) => n.publications],
        ], body.nodes, (n) => ({ dataset: { node: n.node } })),
        body.complete ? null : el('p', { class: 'warning' }, 'Some nodes did not answer in time.'),
      ];
    }),
    show($('presence-counts'), async () => {
      const body = await api('GET', '/presence/counts');
      return el('p', {}, `${body.users} users and ${body.sessions} sockets on ${body.nodes} node(s)`,
        body.complete ? '' : ' (some nodes did not answer)');
    }),
  ]);
}

// Sockets and users: search, disconnect, ban.

async function searchUsers(cursor = null) {
  const prefix = $('users-prefix').value;
  await show($('users-list'), async () => {
    const body = await api('GET', '/presence/online', { query: { prefix, cursor, limit: PAGE_SIZE } });
    return [
      el('p', {}, `${body.count} user(s) online${prefix ? ' with this prefix' : ''}`),
      table([
        ['user', (u) => button(u.user_id, () => { $('user-id').value = u.user_id; showUser(u.user_id); }, { class: 'link' })],
        ['sockets', (u) => u.sessions],
      ], body.users, (u) => ({ dataset: { user: u.user_id } })),
      body.next_cursor ? button('More', () => searchUsers(body.next_cursor)) : null,
    ];
  });
}

async function userAction(userId, body, done) {
  try {
    const result = await api('POST', `/users/${enc(userId)}/disconnect`, { body });
    notice(done(result));
  } catch (err) {
    notice(`${err.code || 'ERROR'}: ${err.message}`, true);
  }
  await showUser(userId);
}

async function showUser(userId) {
  await show($('user-detail'), async () => {
    const [connections, ban] = await Promise.all([
      api('GET', '/connections', { query: { user_id: userId, limit: 1000 } }),
      // A user id with a '/' cannot be named in a path: its sockets still show.
      api('GET', `/users/${enc(userId)}/ban`).catch((err) => {
        if (err instanceof ApiError && err.status === 404) return null;
        throw err;
      }),
    ]);
    const minutes = el('input', { type: 'number', min: '1', max: '5256000', value: '60', id: 'ban-minutes', class: 'short' });
    return [
      el('h3', {}, 'User ', el('code', { class: 'user-id' }, userId)),
      ban === null
        ? el('p', { class: 'warning' }, 'This user id cannot be named in a server API path: disconnect and ban it from your backend.')
        : el('p', { class: 'ban-state', dataset: { banned: ban.banned } },
          ban.banned ? `Banned${ban.banned_until ? ` until ${when(ban.banned_until)}` : ' with no end'}` : 'Not banned'),
      ban === null ? null : el('div', { class: 'actions' },
        button('Disconnect every socket', () => userAction(userId, {}, (r) => `Disconnected ${r.disconnected} socket(s) on this node; the other nodes close theirs.`), { id: 'disconnect-all' }),
        el('label', {}, 'Ban for ', minutes, ' minutes'),
        button('Disconnect and ban', () => {
          const length = Number(minutes.value);
          if (!Number.isFinite(length) || length < 1) {
            notice('Give the ban a length of at least 1 minute.', true);
            return;
          }
          userAction(userId, { ban_s: length * 60 }, (r) => `Banned until ${when(r.banned_until)}.`);
        }, { id: 'ban' }),
        ban.banned ? button('Lift the ban', async () => {
          try {
            const result = await api('DELETE', `/users/${enc(userId)}/ban`);
            notice(result.unbanned ? 'Ban lifted.' : 'There was no ban.');
          } catch (err) {
            notice(`${err.code || 'ERROR'}: ${err.message}`, true);
          }
          await showUser(userId);
        }, { id: 'unban' }) : null,
      ),
      table([
        ['socket', (c) => c.session_id], ['node', (c) => c.node], ['transport', (c) => c.transport],
        ['address', (c) => c.address], ['since', (c) => when(c.connected_at)], ['rooms', (c) => c.rooms.join(', ')],
        ['', (c) => (ban === null ? '' : button('Disconnect', () => userAction(userId, { session_id: c.session_id }, (r) => `Disconnected ${r.disconnected} socket(s).`), { class: 'small' }))],
      ], connections.connections, (c) => ({ dataset: { session: c.session_id } })),
      connections.complete ? null : el('p', { class: 'warning' }, 'Some nodes did not answer in time, or the list is cut.'),
    ];
  });
}

// Rooms and their presence.

async function loadNamespaces() {
  await show($('namespaces'), async () => {
    const body = await api('GET', '/presence/counts');
    return table([
      ['namespace', (n) => n.prefix || '(none)'], ['rooms', (n) => `${n.rooms}${n.exact ? '' : ' (approx.)'}`],
      ['subscriptions', (n) => n.subscriptions],
    ], body.namespaces);
  });
}

async function showRoom(room) {
  await show($('room-detail'), async () => {
    const path = `/rooms/${enc(room)}`;
    const [presence, connections, history] = await Promise.all([
      api('GET', `${path}/presence`),
      api('GET', '/connections', { query: { room, limit: 1000 } }),
      api('GET', `${path}/history`, { query: { limit: 20 } }).catch((err) => {
        if (err instanceof ApiError && err.status === 404) return null;
        throw err;
      }),
    ]);
    return [
      el('h3', {}, 'Room ', el('code', { class: 'room-id' }, presence.room)),
      el('h4', {}, 'Who is in it'),
      table([['user', (u) => u.user_id], ['subscriptions', (u) => u.sessions]], presence.users, (u) => ({ dataset: { user: u.user_id } })),
      el('h4', {}, 'Sockets'),
      table([['socket', (c) => c.session_id], ['user', (c) => c.user_id], ['node', (c) => c.node], ['since', (c) => when(c.connected_at)]], connections.connections),
      el('h4', {}, 'Recent publications'),
      history === null
        ? el('p', {}, 'This room keeps no history.')
        : table([['seq', (p) => p.seq], ['event', (p) => p.event], ['data', (p) => el('code', {}, text(p.data))]], history.publications),
    ];
  });
}

// Jobs by queue and status: retry, cancel.

async function jobAction(job, action) {
  try {
    const result = await api('POST', `/jobs/${enc(job.id)}/${action}`);
    notice(`Job ${result.job.id} is now ${result.job.status}.`);
  } catch (err) {
    notice(`${err.code || 'ERROR'}: ${err.message}`, true);
  }
  await listJobs();
}

/** Jobs by status and the queues, from the stream's latest record. */
function renderQueues() {
  const box = $('jobs-queues');
  const shown = JSON.stringify(lastStats && [lastStats.jobs, lastStats.queues]);
  if (!lastStats || shown === queuesShown) return;
  queuesShown = shown;
  const { jobs, queues } = lastStats;
  fill(box,
    jobs === null
      ? el('p', { class: 'warning' }, 'The store did not answer in time.')
      : el('p', { class: 'job-counts' }, Object.entries(jobs).map(([status, count]) => `${status}: ${count}`).join(' · ')),
    queues === null ? null : table([
      ['queue', (q) => button(q.queue, () => { $('jobs-queue').value = q.queue; listJobs(); }, { class: 'link' })],
      ['queued', (q) => q.queued],
      ['oldest due job has waited', (q) => (q.oldest_due_age_s === null ? '–' : `${q.oldest_due_age_s} s`)],
    ], queues, (q) => ({ dataset: { queue: q.queue } })),
  );
  box.dataset.state = 'loaded';
}

async function listJobs(cursor = null) {
  const query = { status: $('jobs-status').value, queue: $('jobs-queue').value, kind: $('jobs-kind').value, cursor, limit: PAGE_SIZE };
  await show($('jobs-list'), async () => {
    const body = await api('GET', '/jobs', { query });
    return [
      table([
        ['id', (j) => button(j.id, () => showJob(j.id), { class: 'link' })],
        ['queue', (j) => j.queue], ['kind', (j) => j.kind],
        ['status', (j) => el('span', { class: `status ${j.status}` }, j.status)],
        ['attempts', (j) => `${j.attempts} / ${j.max_attempts}`], ['run at', (j) => when(j.run_at)],
        ['last error', (j) => j.last_error], ['created', (j) => when(j.created_at)],
        ['', (j) => el('span', {},
          RETRYABLE.has(j.status) ? button('Retry', () => jobAction(j, 'retry'), { class: 'small retry' }) : null,
          j.status === 'queued' ? button('Cancel', () => jobAction(j, 'cancel'), { class: 'small cancel' }) : null)],
      ], body.jobs, (j) => ({ dataset: { job: j.id, status: j.status } })),
      body.next_cursor ? button('Next page', () => listJobs(body.next_cursor)) : null,
    ];
  });
}

async function showJob(jobId) {
  await show($('job-detail'), async () => {
    const { job } = await api('GET', `/jobs/${enc(jobId)}`);
    return [el('h3', {}, 'Job ', el('code', {}, job.id)), jsonView(job)];
  });
}

// Push outcomes by FCM code per hour, and a user's delivery log and caps.

/** Hour × outcome counts from the stats answer, whichever of the usual shapes it has. */
function outcomeTable(body) {
  const entries = Array.isArray(body) ? body : body.hours || body.items || body.buckets || body.stats;
  if (!Array.isArray(entries)) return jsonView(body);
  const hours = new Map();
  const codes = new Set();
  for (const entry of entries) {
    const hour = entry.hour ?? entry.at ?? entry.bucket ?? entry.time ?? '';
    const row = hours.get(hour) || {};
    const counts = entry.counts || entry.outcomes;
    if (counts && typeof counts === 'object') {
      for (const [code, count] of Object.entries(counts)) {
        codes.add(code);
        row[code] = (row[code] || 0) + Number(count);
      }
    } else if ((entry.outcome ?? entry.code) !== undefined) {
      const code = String(entry.outcome ?? entry.code);
      codes.add(code);
      row[code] = (row[code] || 0) + Number(entry.count ?? 0);
    } else {
      return jsonView(body);
    }
    hours.set(hour, row);
  }
  const columns = [...codes].sort();
  return table([['hour', ([hour]) => when(hour)], ...columns.map((code) => [code, ([, row]) => row[code] ?? 0])], [...hours.entries()]);
}

async function loadPushStats() {
  await show($('push-stats'), async () => outcomeTable(await api('GET', '/deliveries/stats', { query: { channel: 'push', hours: 24 } })), { optional: true });
}

async function listDeliveries(cursor = null) {
  const userId = $('deliveries-user').value;
  const query = {
    user_id: userId, notification_id: $('deliveries-notification').value, type: $('deliveries-type').value,
    channel: $('deliveries-channel').value, outcome: $('deliveries-outcome').value, cursor, limit: PAGE_SIZE,
  };
  const work = [show($('deliveries-list'), async () => {
    const body = await api('GET', '/deliveries', { query });
    const items = body.items || body.deliveries || [];
    return [
      items.length ? jsonView(items) : el('p', {}, 'No deliveries match.'),
      body.next_cursor ? button('Older', () => listDeliveries(body.next_cursor)) : null,
    ];
  }, { optional: true })];
  if (!cursor) {
    if (userId) work.push(show($('caps'), async () => jsonView(await api('GET', `/users/${enc(userId)}/caps`)), { optional: true }));
    else fill($('caps'), el('p', {}, 'Give a user id to see the caps in force for that user.'));
  }
  await Promise.all(work);
}

// -- the live counters (SSE over fetch: an EventSource cannot send the key) ----------------------

function setStreamState(state, title = '') {
  const badge = $('stream-state');
  badge.dataset.state = state;
  badge.textContent = { idle: '', connecting: 'connecting…', open: 'live', closed: 'reconnecting…', error: 'stream error' }[state] ?? state;
  badge.title = title || 'live counters';
}

function setCounter(id, value) {
  const node = $(id);
  if (!node) return;
  node.textContent = text(value);
  node.dataset.value = value === null || value === undefined ? '' : String(value);
}

function onStats(stats) {
  setCounter('counter-sockets', stats.sockets);
  setCounter('counter-users-online', stats.users_online);
  setCounter('counter-rooms', stats.rooms);
  setCounter('counter-deliveries-per-s', stats.deliveries_per_s);
  setCounter('counter-publications-per-s', stats.publications_per_s);
  setCounter('counter-messages-per-s', stats.messages_per_s);
  setCounter('counter-deliveries', stats.deliveries);
  const jobs = stats.jobs || {};
  setCounter('counter-jobs-queued', stats.jobs ? jobs.queued : null);
  setCounter('counter-jobs-running', stats.jobs ? jobs.running : null);
  setCounter('counter-jobs-dead', stats.jobs ? jobs.dead : null);
  lastStats = stats;
  renderQueues();
}

function parseRecord(raw) {
  const record = { event: 'message', data: [] };
  for (const line of raw.split(/\r?\n/)) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') record.event = value;
    else if (field === 'data') record.data.push(value);
  }
  return record;
}

function stopStream() {
  if (stream) stream.abort();
  stream = null;
  setStreamState('idle');
}

async function startStream() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  setStreamState('connecting');
  try {
    const response = await fetch(`${API}/stats/stream`, {
      headers: headers({ Accept: 'text/event-stream' }), credentials: 'omit', cache: 'no-store', signal: controller.signal,
    });
    if (response.status === 401) {
      signOut('The API key was refused.');
      return;
    }
    if (!response.ok || !response.body) {
      setStreamState('error', `HTTP ${response.status}`);
    } else {
      setStreamState('open');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
          const raw = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
          const record = parseRecord(raw);
          if (!record.data.length) continue;
          const data = JSON.parse(record.data.join('\n'));
          if (record.event === 'stats') onStats(data);
          else if (record.event === 'closed') setStreamState('closed', data.reason);
        }
      }
    }
  } catch (err) {
    if (controller.signal.aborted) return;
    setStreamState('error', String(err));
  }
  if (stream === controller && !controller.signal.aborted) {
    if ($('stream-state').dataset.state === 'open') setStreamState('closed');
    setTimeout(() => {
      if (stream === controller && apiKey !== null) startStream();
    }, STREAM_RETRY_MS);
  }
}

// -- wiring -------------------------------------------------------------------------------------

function onSubmit(id, handler) {
  $(id).addEventListener('submit', (event) => {
    event.preventDefault();
    handler();
  });
}

function start() {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut());
  for (const tab of document.querySelectorAll('#tabs button')) tab.addEventListener('click', () => switchTo(tab.dataset.view));
  $('overview-refresh').addEventListener('click', () => loadOverview());
  onSubmit('users-search', () => searchUsers());
  onSubmit('user-form', () => showUser($('user-id').value));
  onSubmit('room-form', () => showRoom($('room-id').value));
  onSubmit('jobs-form', () => listJobs());
  $('jobs-dead').addEventListener('click', () => {
    $('jobs-status').value = 'dead';
    listJobs();
  });
  onSubmit('deliveries-form', () => listDeliveries());
  document.body.dataset.signedIn = 'false';
  document.body.dataset.ready = 'true';
}

start();

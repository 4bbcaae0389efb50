// The realtimed demo page: chat with typing, receipts, unread badges and presence; the
// notification inbox behind a bell; a live render job that shows who is watching it.
// Everything realtime goes through the JavaScript SDK (realtimed-client), served by the
// daemon under /sdk/; tokens come from the development route /dev/token.
import { RealtimeClient, RealtimeError } from '/sdk/index.js';
import * as backend from './backend.js';

const JOB_ROOM = 'job:trailer-render';
const JOB_NAME = 'Render of trailer.mp4';
const TYPING_SHOWN_MS = 7000;

// -- small DOM helpers ----------------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

/** An element; text children are always text nodes, never HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function hue(name) {
  let x = 0;
  for (const ch of name) x = (x * 31 + ch.codePointAt(0)) % 360;
  return x;
}

function avatar(userId, { status, size = '' } = {}) {
  return h(
    'span',
    { class: `avatar ${size}`, style: `--hue:${hue(userId)}`, title: userId },
    userId.slice(0, 1).toUpperCase(),
    status ? h('span', { class: `dot ${status}`, 'data-status': status, title: status }) : null,
  );
}

const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

function toast(text, kind = 'error') {
  const el = h('div', { class: `toast ${kind}`, role: 'status' }, text);
  $('#toasts').append(el);
  setTimeout(() => el.remove(), 5000);
}

function report(err) {
  if (err instanceof RealtimeError) toast(`${err.code}: ${err.message}`);
  else toast(String(err?.message ?? err));
  console.error(err);
}

// -- the app ----------------------------------------------------------------------------------------

/** The signed-in user: ?user=NAME (the sign-in card sets it). */
const params = new URLSearchParams(location.search);
const me = (params.get('user') ?? '').trim();


/** Everything the page knows, rendered by the render* functions below. */
const state = {
  conversations: new Map(), // id -> conversation record
  messages: new Map(), // conversation id -> messages (ascending seq), once loaded
  pending: new Map(), // client id -> {conversation_id, body}
  peerRead: new Map(), // conversation id -> the other member's read_seq (from receipts)
  typing: new Map(), // conversation id -> Map(user id -> timer)
  presence: new Map(), // user id -> status
  active: null, // the open conversation's id
  notifications: [], // newest first
  job: { pct: 0, step: 'Not started', running: false, by: null },
  viewers: new Map(), // user id -> sessions
};

let client;

function peerOf(conversation) {
  return conversation.members.find((m) => m.user_id !== me)?.user_id ?? me;
}

function titleOf(conversation) {
  return conversation.type === 'group' ? conversation.title || 'Group' : peerOf(conversation);
}

async function fetchToken() {
  const res = await fetch(`/dev/token?sub=${encodeURIComponent(me)}&rooms=${encodeURIComponent('job:*')}`);
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const err = body?.error ?? { code: 'HTTP_' + res.status, message: res.statusText };
    if (res.status === 404)
      toast('No /dev/token here: it exists only on a loopback listener with the development secret (./scripts/demo).');
    throw new RealtimeError(err.code, `no development token: ${err.message}`);
  }
  return body.token;
}

async function start() {
  document.title = `${me} · realtimed demo`;
  $('#app').hidden = false;
  $('#me-name').textContent = me;
  $('#me-avatar').replaceWith(Object.assign(avatar(me, { size: 'small' }), { id: 'me-avatar' }));
  $('#other-user').href = `?user=${me === 'alice' ? 'bob' : 'alice'}`;
  $('#other-user').textContent = `Open as ${me === 'alice' ? 'bob' : 'alice'}`;

  client = new RealtimeClient({ url: location.origin, token: fetchToken });
  window.realtimed = client; // to play with from the browser console

  client.on('state', renderConnection);
  client.on('connected', onConnected);
  client.on('closed', ({ error }) => toast(`Stopped: ${error.message}`));
  client.on('error', (err) => console.warn('realtimed:', err));

  const chat = client.chat;
  chat.on('message', onMessage);
  chat.on('updated', (m) => replaceMessage(m));
  chat.on('deleted', (m) => replaceMessage(m));
  chat.on('conversation', (c) => upsertConversation(c));
  chat.on('state', () => renderConversations());
  chat.on('unread', () => renderConversations());
  chat.on('receipt', onReceipt);
  chat.on('typing', onTyping);
  client.presence.on('updated', (p) => {
    state.presence.set(p.user_id, p.status);
    renderConversations();
    renderChatHeader();
  });
  client.inbox.on('notification', (n) => {
    state.notifications.unshift(n);
    renderInbox();
    ringBell();
  });
  client.inbox.on('unread', renderBell);
  client.inbox.on('read', ({ ids, up_to_seq }) => {
    const now = new Date().toISOString();
    for (const n of state.notifications)
      if (!n.read_at && (ids?.includes(n.id) || (up_to_seq !== undefined && n.seq <= up_to_seq))) n.read_at = now;
    renderInbox();
  });
  client.inbox.on('deleted', ({ ids }) => {
    state.notifications = state.notifications.filter((n) => !ids.includes(n.id));
    renderInbox();
  });

  wireUi();
  renderConnection(client.state);
  await client.connect();
}

async function onConnected({ reconnected }) {
  $('#my-status').value = 'online';
  renderBell();
  try {
    const page = await client.chat.list({ limit: 50 });
    for (const c of page.conversations) state.conversations.set(c.id, c);
    await refreshPresence();
    renderConversations();
    if (state.active && reconnected) await loadHistory(state.active);
    if (!reconnected) {
      state.notifications = (await client.inbox.list({ limit: 30 })).notifications;
      renderInbox();
      await joinJobRoom();
    } else if (jobRoom) {
      // The SDK subscribed the room again and replayed what it missed; who is watching
      // may have changed meanwhile.
      state.viewers = new Map((await jobRoom.presence()).map((u) => [u.user_id, u.sessions]));
      renderViewers();
    }
  } catch (err) {
    report(err);
  }
}

async function refreshPresence() {
  const peers = [...new Set([...state.conversations.values()].map(peerOf))].filter((u) => u !== me);
  if (!peers.length) return;
  const found = await client.presence.query(peers);
  for (const u of peers) state.presence.set(u, found[u]?.status ?? 'offline');
}

// -- conversations ----------------------------------------------------------------------------------

function upsertConversation(c) {
  const known = state.conversations.get(c.id);
  state.conversations.set(c.id, { ...known, ...c });
  if (!known) refreshPresence().then(renderConversations, report);
  renderConversations();
}

function sortedConversations() {
  return [...state.conversations.values()].sort((a, b) =>
    (b.last_message?.created_at ?? b.updated_at).localeCompare(a.last_message?.created_at ?? a.updated_at),
  );
}

function renderConversations() {
  const list = $('#conversations');
  list.replaceChildren();
  const convs = sortedConversations();
  if (!convs.length) list.append(h('li', { class: 'hint' }, 'No conversations yet. Start one above.'));
  for (const c of convs) {
    const peer = peerOf(c);
    const unread = client.chat.unread(c.id) ?? c.unread_count ?? 0;
    const typing = state.typing.get(c.id)?.size;
    const last = c.last_message;
    const preview = typing ? 'typing…' : last ? `${last.sender_id === me ? 'You: ' : ''}${last.deleted ? 'deleted' : last.body}` : 'New conversation';
    list.append(
      h(
        'li',
        {
          class: `conversation${c.id === state.active ? ' active' : ''}${unread ? ' unread' : ''}`,
          'data-conversation': c.id,
          'data-peer': peer,
          onclick: () => openConversation(c.id).catch(report),
        },
        avatar(peer, { status: state.presence.get(peer) ?? 'offline' }),
        h(
          'div',
          { class: 'meta' },
          h('div', { class: 'row' }, h('span', { class: 'name' }, titleOf(c)), last ? h('span', { class: 'when' }, time(last.created_at)) : null),
          h('div', { class: `preview${typing ? ' typing' : ''}` }, preview),
        ),
        unread ? h('span', { class: 'badge', 'data-unread': unread }, String(unread)) : null,
      ),
    );
  }
  const total = client.chat.unreadTotal;
  document.title = `${total ? `(${total}) ` : ''}${me} · realtimed demo`;
}

async function openConversation(id) {
  state.active = id;
  renderConversations();
  renderChat();
  $('#composer-input').focus();
  await loadHistory(id);
}

async function loadHistory(id) {
  const page = await client.chat.history(id, { limit: 50 });
  const byId = new Map((state.messages.get(id) ?? []).map((m) => [m.id, m]));
  for (const m of page.messages) byId.set(m.id, m);
  state.messages.set(id, [...byId.values()].sort((a, b) => a.seq - b.seq));
  renderChat();
  markActiveRead();
}

/** Mark the open conversation read up to its newest message, when the page is visible. */
function markActiveRead() {
  const id = state.active;
  const msgs = state.messages.get(id);
  if (!id || !msgs?.length || document.visibilityState !== 'visible') return;
  const newest = msgs[msgs.length - 1].seq;
  const c = state.conversations.get(id);
  if ((c?.read_seq ?? 0) >= newest && !client.chat.unread(id)) return;
  if (c) c.read_seq = newest;
  client.chat.markRead(id, newest).catch(report);
}

function onMessage(m) {
  const c = state.conversations.get(m.conversation_id);
  if (c) {
    c.last_message = m;
    c.last_seq = m.seq;
  } else {
    // A conversation someone else started: fetch its record (members, unread count).
    client.chat.list({ limit: 50 }).then((page) => {
      for (const x of page.conversations) if (!state.conversations.has(x.id)) upsertConversation(x);
    }, report);
  }
  const typers = state.typing.get(m.conversation_id);
  if (typers?.has(m.sender_id)) {
    clearTimeout(typers.get(m.sender_id));
    typers.delete(m.sender_id);
  }
  if (state.messages.has(m.conversation_id)) {
    const list = state.messages.get(m.conversation_id);
    if (!list.some((x) => x.id === m.id)) list.push(m);
    state.pending.delete(m.client_id);
  }
  renderConversations();
  if (m.conversation_id === state.active) {
    renderMessages();
    if (m.sender_id !== me) markActiveRead();
  }
}

function replaceMessage(m) {
  const list = state.messages.get(m.conversation_id);
  if (!list) return;
  const i = list.findIndex((x) => x.id === m.id);
  if (i >= 0) list[i] = m;
  if (m.conversation_id === state.active) renderMessages();
}

function onReceipt(r) {
  if (r.user_id === me) return;
  state.peerRead.set(r.conversation_id, Math.max(state.peerRead.get(r.conversation_id) ?? 0, r.read_seq));
  if (r.conversation_id === state.active) renderMessages();
}

function onTyping({ conversation_id, user_id, typing }) {
  if (user_id === me) return;
  let typers = state.typing.get(conversation_id);
  if (!typers) state.typing.set(conversation_id, (typers = new Map()));
  clearTimeout(typers.get(user_id));
  if (typing) typers.set(user_id, setTimeout(() => onTyping({ conversation_id, user_id, typing: false }), TYPING_SHOWN_MS));
  else typers.delete(user_id);
  renderConversations();
  if (conversation_id === state.active) renderTyping();
}

// -- the open conversation --------------------------------------------------------------------------

function renderChat() {
  const open = !!state.active;
  $('#chat-empty').hidden = open;
  $('#chat-open').hidden = !open;
  if (!open) return;
  renderChatHeader();
  renderMessages();
  renderTyping();
}

function renderChatHeader() {
  const c = state.conversations.get(state.active);
  if (!c) return;
  const peer = peerOf(c);
  const status = state.presence.get(peer) ?? 'offline';
  $('#chat-header').replaceChildren(
    avatar(peer, { status, size: 'large' }),
    h('div', {}, h('div', { class: 'name' }, titleOf(c)), h('div', { class: `presence-text ${status}`, 'data-status': status }, status)),
  );
}

function renderMessages() {
  const box = $('#messages');
  const msgs = state.messages.get(state.active) ?? [];
  const peerRead = state.peerRead.get(state.active) ?? 0;
  const mine = msgs.filter((m) => m.sender_id === me);
  const lastMine = mine[mine.length - 1];
  box.replaceChildren();
  for (const m of msgs) {
    const own = m.sender_id === me;
    const seen = own && m.seq <= peerRead;
    box.append(
      h(
        'div',
        { class: `bubble ${own ? 'own' : 'theirs'}${m.deleted ? ' deleted' : ''}`, 'data-seq': m.seq },
        h('div', { class: 'body' }, m.deleted ? 'This message was deleted' : m.body),
        h(
          'div',
          { class: 'foot' },
          time(m.created_at),
          m.edited_at ? ' · edited' : '',
          own ? h('span', { class: `tick${seen ? ' seen' : ''}`, 'data-receipt': seen ? 'seen' : 'sent' }, seen ? ' ✓✓' : ' ✓') : null,
        ),
      ),
    );
  }
  for (const [clientId, p] of state.pending)
    if (p.conversation_id === state.active)
      box.append(h('div', { class: 'bubble own pending', 'data-client-id': clientId }, h('div', { class: 'body' }, p.body), h('div', { class: 'foot' }, 'sending…')));
  if (lastMine && lastMine.seq <= peerRead) box.append(h('div', { class: 'seen-note', 'data-seen-by': peerOf(state.conversations.get(state.active)) }, 'Seen'));
  box.scrollTop = box.scrollHeight;
}

function renderTyping() {
  const typers = [...(state.typing.get(state.active)?.keys() ?? [])];
  const el = $('#typing');
  el.textContent = typers.length ? `${typers.join(', ')} ${typers.length > 1 ? 'are' : 'is'} typing…` : '';
  el.classList.toggle('on', typers.length > 0);
}

// -- notifications ----------------------------------------------------------------------------------

function renderBell() {
  const n = client.inbox.unreadCount;
  const badge = $('#bell-badge');
  badge.hidden = !n;
  badge.textContent = n > 99 ? '99+' : String(n);
  $('#bell').setAttribute('aria-label', `Notifications, ${n} unread`);
}

function ringBell() {
  const bell = $('#bell');
  bell.classList.remove('ring');
  void bell.offsetWidth; // restart the animation
  bell.classList.add('ring');
}

function renderInbox() {
  const list = $('#inbox-list');
  list.replaceChildren();
  if (!state.notifications.length) list.append(h('li', { class: 'hint' }, 'Nothing yet. Finish a render job to get one.'));
  for (const n of state.notifications)
    list.append(
      h(
        'li',
        {
          class: `notification${n.read_at ? '' : ' unread'}`,
          'data-notification': n.id,
          onclick: () => !n.read_at && client.inbox.markRead([n.id]).catch(report),
        },
        h('div', { class: 'title' }, n.title),
        h('div', { class: 'body' }, n.body),
        h('div', { class: 'when' }, time(n.created_at)),
      ),
    );
  renderBell();
}

// -- the render job room ----------------------------------------------------------------------------

let jobRoom;

async function joinJobRoom() {
  jobRoom = await client.subscribe(JOB_ROOM, onJobEvent);
  jobRoom.on('reset', () => catchUpJob().catch(report));
  state.viewers = new Map((await jobRoom.presence()).map((u) => [u.user_id, u.sessions]));
  renderViewers();
  await catchUpJob();
}

/** The job as it stands: the newest publication of its room (the backend answers that). */
async function catchUpJob() {
  const last = await backend.latest(JOB_ROOM, jobRoom.seq);
  if (last) applyJobEvent(last.event, last.data);
  renderJob();
}

function onJobEvent(e) {
  if (e.event === 'room.joined') state.viewers.set(e.data.user_id, 1);
  else if (e.event === 'room.left') state.viewers.delete(e.data.user_id);
  else applyJobEvent(e.event, e.data);
  renderViewers();
  renderJob();
}

function applyJobEvent(event, data) {
  if (!event.startsWith('job.')) return;
  state.job = { pct: data.pct ?? 0, step: data.step ?? '', by: data.by ?? null, running: event !== 'job.done' };
}

function renderJob() {
  const { pct, step, running, by } = state.job;
  $('#job-bar').style.width = `${pct}%`;
  $('#job-bar').parentElement.setAttribute('aria-valuenow', String(pct));
  $('#job-pct').textContent = `${pct}%`;
  $('#job-pct').dataset.pct = String(pct);
  $('#job-step').textContent = step + (by && running ? ` · by ${by}` : '');
  $('#job-card').classList.toggle('running', running);
  $('#job-card').classList.toggle('done', !running && pct === 100);
  $('#job-start').disabled = running;
  $('#job-start').textContent = running ? 'Rendering…' : pct === 100 ? 'Render again' : 'Start render';
}

function renderViewers() {
  const list = $('#viewers');
  list.replaceChildren();
  const ids = [...state.viewers.keys()].sort((a, b) => (a === me ? -1 : b === me ? 1 : a.localeCompare(b)));
  for (const id of ids) list.append(h('li', { 'data-viewer': id }, avatar(id, { size: 'small' }), h('span', {}, id === me ? `${id} (you)` : id)));
  $('#viewer-count').textContent = `${ids.length} watching`;
}

// -- wiring -----------------------------------------------------------------------------------------

function renderConnection(s) {
  const el = $('#conn');
  el.dataset.state = s;
  const how = client?.transport ? ` over ${client.transport === 'sse' ? 'SSE' : 'WebSocket'}` : '';
  $('#conn-text').textContent = { idle: 'Offline', connecting: 'Connecting…', connected: `Connected${how}`, disconnected: 'Reconnecting…', closed: 'Stopped' }[s] ?? s;
}

function wireUi() {
  $('#new-chat').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('#new-chat-user');
    const userId = input.value.trim();
    if (!userId) return;
    try {
      const c = await client.chat.open(userId);
      input.value = '';
      upsertConversation(c);
      await refreshPresence();
      await openConversation(c.id);
    } catch (err) {
      report(err);
    }
  });

  const composer = $('#composer-input');
  composer.addEventListener('input', () => {
    if (!state.active) return;
    if (composer.value.trim()) client.chat.typing(state.active);
    else client.chat.stopTyping(state.active);
  });
  $('#composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const body = composer.value.trim();
    if (!body || !state.active) return;
    composer.value = '';
    const clientId = 'web-' + crypto.randomUUID();
    state.pending.set(clientId, { conversation_id: state.active, body });
    renderMessages();
    client.chat.send(state.active, body, { clientId }).catch((err) => {
      state.pending.delete(clientId);
      renderMessages();
      report(err);
    });
  });

  $('#my-status').addEventListener('change', (e) => client.presence.set(e.target.value).catch(report));

  $('#bell').addEventListener('click', (e) => {
    e.stopPropagation();
    $('#inbox').hidden = !$('#inbox').hidden;
  });
  $('#inbox').addEventListener('click', (e) => e.stopPropagation());
  document.addEventListener('click', () => ($('#inbox').hidden = true));
  $('#inbox-read-all').addEventListener('click', () => client.inbox.markAllRead().catch(report));

  $('#job-start').addEventListener('click', () => {
    state.job = { pct: 0, step: 'Queued', running: true, by: me };
    renderJob();
    backend.runRender(JOB_ROOM, { by: me, name: JOB_NAME }).catch((err) => {
      state.job.running = false;
      renderJob();
      report(err);
    });
  });

  document.addEventListener('visibilitychange', markActiveRead);
  renderConversations();
  renderJob();
  renderViewers();
}

// -- start: the sign-in card, or the app for ?user=NAME -----------------------------------------------
if (!me) {
  $('#signin').hidden = false;
  $('#signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('#signin-name').value.trim();
    if (name) location.search = `?user=${encodeURIComponent(name)}`;
  });
} else {
  start().catch(report);
}

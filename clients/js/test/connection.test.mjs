// Connecting to a real daemon: authentication, states, token refresh, close codes the
// daemon sends, replay of requests after a lost connection, rate limits, bad arguments.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RealtimeError } from '../dist/index.js';
import { flakyWebSocket, mint, next, sleep, until, user } from './daemon.mjs';
import { harness } from './harness.mjs';

const h = harness({ gateway: { expiring_notice_s: 4, auth_timeout_s: 0.5 } });
const { client } = h;

describe('connecting', () => {
  test('first-frame auth by default: states, events, and the token never in the URL', async () => {
    const net = await flakyWebSocket();
    const c = client({ token: mint(user('a')), WebSocket: net.WebSocket });
    const states = [];
    c.on('state', (s) => states.push(s));
    const connecting = next(c, 'connecting');
    const connected = next(c, 'connected');
    const session = await c.connect();
    assert.deepEqual(await connecting, { attempt: 0, transport: 'websocket' });
    const e = await connected;
    assert.equal(e.reconnected, false);
    assert.equal(e.session.session_id, session.session_id);
    assert.deepEqual(states, ['connecting', 'connected']);
    assert.equal(net.urls[0], h.d.url.replace('http', 'ws') + '/ws');
    assert.equal(net.frames()[0].op, 'auth');
    assert.equal(c.userId, session.user_id);
  });

  test('tokenInUrl puts it in ?token= and sends no auth frame', async () => {
    const net = await flakyWebSocket();
    const token = mint(user('a'));
    const c = client({ token, tokenInUrl: true, WebSocket: net.WebSocket });
    await c.connect();
    assert.ok(net.urls[0].endsWith('?token=' + encodeURIComponent(token)));
    assert.equal(net.frames().length, 0);
  });

  test('an async token provider', async () => {
    const id = user('a');
    let calls = 0;
    const c = client({ token: async () => (calls++, mint(id)) });
    const s = await c.connect();
    assert.equal(s.user_id, id);
    assert.equal(calls, 1);
  });

  test('a bad token: close 4501, no reconnect, connect() rejects', async () => {
    const c = client({ token: mint(user('a'), { secret: 'not-the-secret' }) });
    let attempts = 0;
    c.on('connecting', () => attempts++);
    const closed = next(c, 'closed');
    await assert.rejects(c.connect(), (e) => e instanceof RealtimeError && e.code === 'CLOSED' && e.closeCode === 4501);
    const e = await closed;
    assert.equal(e.code, 4501);
    await sleep(200);
    assert.equal(attempts, 1);
    assert.equal(c.state, 'closed');
  });

  test('an expired token: close 4004, a fresh one from the provider, connected', async () => {
    const id = user('a');
    const tokens = [mint(id, { ttlS: -60 }), mint(id)];
    let calls = 0;
    const c = client({ token: () => tokens[Math.min(calls++, 1)] });
    const codes = [];
    c.on('disconnected', (e) => codes.push(e.code));
    await c.connect();
    assert.deepEqual(codes, [4004]);
    assert.equal(calls, 2);
  });

  test('session.expiring: a fresh token over the open socket, no reconnect', async () => {
    const id = user('a');
    const net = await flakyWebSocket();
    let calls = 0;
    const c = client({ WebSocket: net.WebSocket, token: () => mint(id, { ttlS: calls++ === 0 ? 5 : 3600 }) });
    const first = await c.connect();
    let dropped = 0;
    c.on('disconnected', () => dropped++);
    await until(() => c.session.expires_at !== first.expires_at, 5000, 're-authentication');
    assert.equal(calls, 2);
    assert.equal(net.frames().filter((f) => f.op === 'auth').length, 2);
    assert.equal(net.sockets.length, 1);
    assert.equal(c.session.session_id, first.session_id);
    assert.ok(Date.parse(c.session.expires_at) > Date.parse(first.expires_at) + 3000_000);
    assert.equal(dropped, 0);
  });

  test('4012 (no auth in time) is recoverable: the next attempt connects', async () => {
    const net = await flakyWebSocket();
    net.dropOut = true; // the auth frame is lost
    const c = client({ token: mint(user('a')), WebSocket: net.WebSocket });
    const gone = next(c, 'disconnected');
    const done = c.connect();
    const e = await gone;
    assert.equal(e.code, 4012);
    assert.equal(e.reconnect, true);
    net.dropOut = false;
    await done;
    assert.equal(net.sockets.length, 2);
  });

  test('disconnected by the server API (4510) and banned (4503): stop', async () => {
    const id = user('a');
    const c = client({ token: mint(id) });
    await c.connect();
    const closed = next(c, 'closed');
    await h.d.api('POST', `/users/${id}/disconnect`, { ban_s: 60 });
    assert.equal((await closed).code, 4510);
    const again = client({ token: mint(id) });
    await assert.rejects(again.connect(), (e) => e.closeCode === 4503);
  });
});

describe('requests', () => {
  test('a request in flight when the connection drops: replayed if idempotent, DISCONNECTED otherwise', async () => {
    const net = await flakyWebSocket();
    const c = client({ token: mint(user('a'), { rooms: ['plain:*'] }), WebSocket: net.WebSocket });
    await c.connect();
    net.dropOut = true; // the next frames never reach the server
    const read = c.request('presence.query', { user_ids: [] });
    const publish = c.publish('plain:x', 'hello', {});
    await sleep(50);
    net.dropOut = false;
    net.last().cut();
    await assert.rejects(publish, (e) => e instanceof RealtimeError && e.code === 'DISCONNECTED');
    assert.deepEqual(await read, { presences: {} });
    assert.equal(net.sockets.length, 2);
  });

  test('RATE_LIMITED by the server: idempotent requests wait retry_after_ms and all succeed', async () => {
    const c = client({ token: mint(user('a')) });
    await c.connect();
    // The socket's bucket holds 100 ops: the rest are refused, then sent again as the server asks.
    const all = await Promise.all(Array.from({ length: 130 }, () => c.presence.query([])));
    assert.equal(all.length, 130);
    assert.equal(c.state, 'connected');
  });

  test('bad arguments are refused before anything is sent, naming the argument', async () => {
    const net = await flakyWebSocket();
    const c = client({ token: mint(user('a')), WebSocket: net.WebSocket });
    await c.connect();
    const sentBefore = net.sent.length;
    const cases = [
      [() => c.chat.send('', 'hi'), 'conversationId'],
      [() => c.chat.send('c1', 42), 'body'],
      [() => c.chat.send('c1', ''), 'body'],
      [() => c.chat.send('c1', 'x'.repeat(70_000)), 'body', 'PAYLOAD_TOO_LARGE'],
      [() => c.chat.send('c1', 'hi', { type: 'video' }), 'type'],
      [() => c.chat.send('c1', 'hi', { mediaUrl: 'javascript:alert(1)' }), 'mediaUrl'],
      [() => c.chat.send('c1', 'hi', { clientId: 'k'.repeat(65) }), 'clientId'],
      [() => c.chat.history('c1', { beforeSeq: 3, afterSeq: 1 }), 'afterSeq'],
      [() => c.chat.history('c1', { limit: 101 }), 'limit'],
      [() => c.chat.markRead('c1', -1), 'seq'],
      [() => c.chat.markRead('c1', 1.5), 'seq'],
      [() => c.chat.create([]), 'memberIds'],
      [() => c.chat.open('bad\nid'), 'userId'],
      [() => c.chat.mute('c1', 'yes'), 'muted'],
      [() => c.presence.set('sleeping'), 'status'],
      [() => c.presence.query(Array(201).fill('u')), 'userIds'],
      [() => c.inbox.markRead([]), 'ids'],
      [() => c.inbox.list({ cursor: 'x', afterSeq: 1 }), 'afterSeq'],
      [() => c.subscribe('job:*'), 'room'],
      [() => c.subscribe('a,b'), 'room'],
      [() => c.subscribe('job::1'), 'room'],
      [() => c.publish('plain:x', 'message.new'), 'event'],
      [() => c.devices.register({ token: 't', platform: 'symbian' }), 'platform'],
      [() => c.devices.register({ token: 't', platform: 'ios', deviceInfo: { imei: '1' } }), 'deviceInfo.imei'],
    ];
    for (const [call, field, code = 'VALIDATION_ERROR'] of cases)
      await assert.rejects(call(), (e) => e instanceof RealtimeError && e.code === code && e.field === field && e.message.startsWith(field), field);
    assert.throws(() => c.chat.typing(''), (e) => e.field === 'conversationId');
    assert.equal(net.sent.length, sentBefore, 'nothing was sent');
  });

  test('a server refusal reaches the caller as a RealtimeError', async () => {
    const a = client({ token: mint(user('a')) });
    const b = client({ token: mint(user('b')) });
    const outsider = client({ token: mint(user('c')) });
    await Promise.all([a.connect(), b.connect(), outsider.connect()]);
    const conv = await a.chat.open(b.userId);
    await assert.rejects(outsider.chat.send(conv.id, 'hi'), (e) => e instanceof RealtimeError && e.code === 'FORBIDDEN' && /participant/.test(e.message));
    await assert.rejects(outsider.chat.history(conv.id), (e) => e.code === 'FORBIDDEN');
    await assert.rejects(a.chat.edit('m_missing', 'x'), (e) => e.code === 'NOT_FOUND');
    await a.chat.send(conv.id, 'one', { clientId: 'k1' });
    await assert.rejects(a.chat.send(conv.id, 'two', { clientId: 'k1' }), (e) => e.code === 'CONFLICT');
    await assert.rejects(a.subscribe('private:1'), (e) => e.code === 'FORBIDDEN');
  });

  test('serverTime over the socket', async () => {
    const c = client({ token: mint(user('a')) });
    await c.connect();
    const t = await c.serverTime();
    assert.ok(Math.abs(t.getTime() - Date.now()) < 2000);
  });
});

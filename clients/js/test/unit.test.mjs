// The connection's rules without a daemon: close codes, backoff, request timeouts while
// disconnected, and options. A scripted WebSocket plays the server; the close codes that a
// test cannot provoke from a real daemon are checked here (the others in connection.test.mjs).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RealtimeClient, RealtimeError, closeAction } from '../dist/index.js';
import { next, sleep } from './daemon.mjs';

const READY = {
  session_id: 's_1',
  user_id: 'u1',
  node: 'n1',
  server_time: new Date().toISOString(),
  heartbeat_s: 25,
  expires_at: null,
  unread_total: 0,
  notifications_unread: 0,
  addresses: ['device:s_1'],
};

/** A WebSocket whose server is the test: it answers `auth` and sends `session.ready`. */
function scripted() {
  const sockets = [];
  class Fake {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      });
    }
    send(text) {
      const f = JSON.parse(text);
      this.sent.push(f);
      if (f.op === 'auth') {
        this.push({ id: f.id, ok: true, data: { user_id: 'u1', expires_at: null } });
        this.push({ event: 'session.ready', data: READY });
      }
    }
    push(frame) {
      setTimeout(() => this.onmessage?.({ data: JSON.stringify(frame) }));
    }
    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    close() {
      this.readyState = 3;
    }
  }
  return { WebSocket: Fake, sockets };
}

function client(fake, extra = {}) {
  return new RealtimeClient({ url: 'http://127.0.0.1:1', token: 't', WebSocket: fake.WebSocket, minDelayMs: 10, maxDelayMs: 1000, onlineTarget: null, ...extra });
}

describe('close codes', () => {
  test('closeAction follows the protocol table', () => {
    const table = {
      1000: 'stop', 1001: 'shutdown', 1003: 'stop', 1005: 'retry', 1006: 'retry', 1009: 'stop', 1011: 'retry',
      4000: 'retry', 4004: 'refresh', 4008: 'retry', 4009: 'slow', 4012: 'retry', 4013: 'slow', 4499: 'retry',
      4500: 'stop', 4501: 'stop', 4503: 'stop', 4510: 'stop', 4511: 'stop', 4999: 'stop',
    };
    for (const [code, action] of Object.entries(table)) assert.equal(closeAction(Number(code)), action, `close ${code}`);
  });

  for (const code of [4000, 4008, 4012, 1006, 1011]) {
    test(`${code}: reconnect with backoff`, async () => {
      const fake = scripted();
      const c = client(fake);
      await c.connect();
      const gone = next(c, 'disconnected');
      fake.sockets[0].serverClose(code, 'x');
      const d = await gone;
      assert.equal(d.code, code);
      assert.equal(d.reconnect, true);
      assert.ok(d.delayMs >= 10 && d.delayMs <= 20, `first delay ${d.delayMs} in [min, 2 min]`);
      await next(c, 'connected');
      assert.equal(fake.sockets.length, 2);
      c.close();
    });
  }

  for (const code of [4009, 4013]) {
    test(`${code}: reconnect after a longer backoff`, async () => {
      const fake = scripted();
      const c = client(fake);
      await c.connect();
      const gone = next(c, 'disconnected');
      fake.sockets[0].serverClose(code);
      const d = await gone;
      assert.equal(d.reconnect, true);
      assert.ok(d.delayMs >= 40, `slow delay ${d.delayMs} is at least 4 × minDelayMs`);
      await next(c, 'connected', 2000);
      c.close();
    });
  }

  for (const code of [1000, 1003, 1009, 4501, 4503, 4510, 4511]) {
    test(`${code}: stop and report`, async () => {
      const fake = scripted();
      const c = client(fake);
      await c.connect();
      const pending = c.request('presence.query', { user_ids: [] }, { timeoutMs: 5000 });
      const closed = next(c, 'closed');
      fake.sockets[0].serverClose(code, 'why');
      const e = await closed;
      assert.equal(e.code, code);
      assert.equal(e.error.code, 'CLOSED');
      assert.equal(e.error.closeCode, code);
      assert.equal(c.state, 'closed');
      await assert.rejects(pending, (err) => err instanceof RealtimeError && err.code === 'CLOSED');
      await sleep(50);
      assert.equal(fake.sockets.length, 1, 'no reconnect');
    });
  }

  test('1001: reconnect after the delay of server.shutdown', async () => {
    const fake = scripted();
    const c = client(fake);
    await c.connect();
    fake.sockets[0].push({ event: 'server.shutdown', data: { reconnect_after_ms: 77 } });
    await sleep(20);
    const gone = next(c, 'disconnected');
    fake.sockets[0].serverClose(1001, 'server draining');
    assert.equal((await gone).delayMs, 77);
    c.close();
  });

  test('4004: a fresh token from the provider, then reconnect; a fixed token stops', async () => {
    const fake = scripted();
    let calls = 0;
    const c = client(fake, { token: () => `t${++calls}` });
    await c.connect();
    fake.sockets[0].serverClose(4004, 'token expired');
    await next(c, 'connected');
    assert.equal(calls, 2);
    assert.equal(fake.sockets[1].sent[0].data.token, 't2');
    c.close();

    const fixed = scripted();
    const c2 = client(fixed);
    await c2.connect();
    const closed = next(c2, 'closed');
    fixed.sockets[0].serverClose(4004, 'token expired');
    assert.equal((await closed).code, 4004);
  });
});

describe('a server that misbehaves', () => {
  test('malformed frames are reported as PROTOCOL_ERROR, never thrown, and the connection goes on', async () => {
    const fake = scripted();
    const c = client(fake);
    await c.connect();
    const errors = [];
    c.on('error', (e) => errors.push(e));
    const ws = fake.sockets[0];
    const bad = ['not json', '[]', '42', '{"neither":1}', '{"event":"session.ready","data":null}'];
    for (const text of bad) ws.onmessage({ data: text });
    for (const frame of [
      { event: 'message.new', data: {} },
      { event: 'message.new', data: { message: { conversation_id: 'c1' } } },
      { event: 'notification.new' },
      { event: 'conversation.state', data: null },
      { event: 'room.reset', data: null },
      { id: 12345, ok: true, data: {} },
    ])
      ws.onmessage({ data: JSON.stringify(frame) });
    await sleep(20);
    assert.equal(errors.length, 9);
    assert.ok(errors.every((e) => e instanceof RealtimeError && e.code === 'PROTOCOL_ERROR'));
    assert.equal(c.state, 'connected');
    const p = c.request('presence.query', { user_ids: [] });
    await sleep(10);
    ws.push({ id: ws.sent.at(-1).id, ok: true, data: { presences: {} } });
    assert.deepEqual(await p, { presences: {} });
    c.close();
  });
});

describe('token refresh', () => {
  test('session.expiring right after session.ready: a fresh token on the same socket', async () => {
    const fake = scripted();
    let calls = 0;
    const c = client(fake, { token: () => `t${++calls}` });
    await c.connect();
    const ws = fake.sockets[0];
    ws.push({ event: 'session.expiring', data: { expires_at: new Date().toISOString() } });
    await sleep(30);
    assert.equal(calls, 2);
    assert.deepEqual(ws.sent.map((f) => [f.op, f.data.token]), [['auth', 't1'], ['auth', 't2']]);
    assert.equal(fake.sockets.length, 1, 'no reconnect');
    c.close();
  });

  test('a re-authentication refused is reported, the session goes on', async () => {
    const fake = scripted();
    const c = client(fake, { token: () => 'fresh' });
    await c.connect();
    const ws = fake.sockets[0];
    ws.send = (text) => {
      const f = JSON.parse(text);
      ws.push({ id: f.id, ok: false, error: { code: 'FORBIDDEN', message: 'the token is for another user' } });
    };
    const error = next(c, 'error');
    ws.push({ event: 'session.expiring', data: { expires_at: null } });
    assert.equal((await error).code, 'FORBIDDEN');
    assert.equal(c.state, 'connected');
    c.close();
  });
});

describe('requests', () => {
  test('a request made while disconnected waits for the connection, up to its timeout', async () => {
    const fake = scripted();
    const c = client(fake);
    const started = Date.now();
    await assert.rejects(c.request('ping', {}, { timeoutMs: 60 }), (e) => e.code === 'TIMEOUT' && /ping/.test(e.message));
    assert.ok(Date.now() - started >= 55);
    const waiting = c.request('presence.query', { user_ids: [] });
    await c.connect();
    await sleep(20);
    const sent = fake.sockets[0].sent.find((f) => f.op === 'presence.query');
    assert.ok(sent, 'sent once connected');
    fake.sockets[0].push({ id: sent.id, ok: true, data: { presences: {} } });
    assert.deepEqual(await waiting, { presences: {} });
    c.close();
  });

  test('a server error reaches the caller as a RealtimeError with code, message, field', async () => {
    const fake = scripted();
    const c = client(fake);
    await c.connect();
    const p = c.request('message.history', { conversation_id: 'c1' });
    await sleep(10);
    const f = fake.sockets[0].sent.at(-1);
    fake.sockets[0].push({ id: f.id, ok: false, error: { code: 'VALIDATION_ERROR', message: 'limit: too big', field: 'limit' } });
    await assert.rejects(p, (e) => e instanceof RealtimeError && e.code === 'VALIDATION_ERROR' && e.field === 'limit' && e.message === 'limit: too big');
    c.close();
  });

  test('RATE_LIMITED: an idempotent request is sent again after retry_after_ms, another one fails', async () => {
    const fake = scripted();
    const c = client(fake);
    await c.connect();
    const read = c.request('presence.query', { user_ids: [] });
    const create = c.request('conversation.create', { member_ids: ['u2'] });
    await sleep(10);
    const ws = fake.sockets[0];
    for (const f of ws.sent.filter((x) => x.op !== 'auth'))
      ws.push({ id: f.id, ok: false, error: { code: 'RATE_LIMITED', message: 'too many ops', retry_after_ms: 30 } });
    await assert.rejects(create, (e) => e.code === 'RATE_LIMITED' && e.retryAfterMs === 30);
    await sleep(60);
    const again = ws.sent.filter((x) => x.op === 'presence.query');
    assert.equal(again.length, 2, 'sent a second time');
    ws.push({ id: again[1].id, ok: true, data: { presences: {} } });
    assert.deepEqual(await read, { presences: {} });
    c.close();
  });

  test('the client refuses bad options and bad arguments before sending', async () => {
    assert.throws(() => new RealtimeClient({ url: 'ftp://x', token: 't' }), (e) => e.code === 'VALIDATION_ERROR' && e.field === 'url');
    assert.throws(() => new RealtimeClient({ url: 'http://x' }), (e) => e.field === 'token');
    assert.throws(() => new RealtimeClient({ url: 'http://x', token: 't', minDelayMs: 0 }), (e) => e.field === 'minDelayMs');
    assert.throws(() => new RealtimeClient({ url: 'http://x', token: 't', transports: ['smoke'] }), (e) => e.field === 'transports[0]');
    const fake = scripted();
    const c = client(fake, { maxFrameBytes: 2000 });
    await c.connect();
    await assert.rejects(c.request('publish', { room: 'x', event: 'e', data: { big: 'é'.repeat(1500) } }), (e) => e.code === 'PAYLOAD_TOO_LARGE');
    await assert.rejects(c.request('ping', 'nope'), (e) => e.field === 'data');
    const cyclic = {};
    cyclic.self = cyclic;
    await assert.rejects(c.request('publish', { room: 'x', event: 'e', data: cyclic }), (e) => e.code === 'VALIDATION_ERROR' && e.field === 'data');
    await assert.rejects(c.request('ping', {}, { timeoutMs: -1 }), (e) => e.field === 'timeoutMs');
    assert.equal(fake.sockets[0].sent.length, 1, 'only the auth frame was sent');
    c.close();
  });

  test('close() fails pending requests with CLOSED, and connect() starts again', async () => {
    const fake = scripted();
    const c = client(fake);
    await c.connect();
    const p = c.request('presence.query', { user_ids: [] });
    c.close();
    await assert.rejects(p, (e) => e.code === 'CLOSED');
    await assert.rejects(c.request('ping'), (e) => e.code === 'CLOSED');
    await c.connect();
    assert.equal(c.state, 'connected');
    c.close();
  });
});

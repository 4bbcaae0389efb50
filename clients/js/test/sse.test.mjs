// The SSE fallback against a real daemon: events over `fetch` streaming with the
// Authorization header, ops over `POST /api/v1/ops/{op}`, behind the same API.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MAX_SSE_ROOMS, RealtimeError } from '../dist/index.js';
import { flakyFetch, flakyWebSocket, mint, next, sleep, until, user } from './daemon.mjs';
import { collect, harness } from './harness.mjs';

const h = harness({}, { transports: ['sse'] });
const { clientFor: client, publish } = h;

describe('SSE', () => {
  test('events over the stream, ops over REST, the token only in the Authorization header', async () => {
    const net = flakyFetch();
    const b = client('b', { fetch: net.fetch });
    const a = client('a', { transports: ['websocket'] });
    await Promise.all([a.connect(), b.connect()]);
    assert.equal(b.transport, 'sse');
    const stream = net.events()[0];
    assert.ok(!stream.url.includes('token='));
    assert.match(stream.headers.authorization, /^Bearer /);
    const conv = await a.chat.open(b.userId);
    const got = collect(b.chat, 'message');
    await a.chat.send(conv.id, 'to sse');
    await until(() => got.length === 1, 2000, 'message over SSE');
    const reply = await b.chat.send(conv.id, 'from sse');
    assert.equal(reply.seq, 2);
    assert.ok(net.ops().some((r) => r.url.endsWith('/ops/message.send')));
    assert.equal(await b.chat.markRead(conv.id, 2), 2);
    const outsider = client('c');
    await outsider.connect();
    await assert.rejects(outsider.chat.history(conv.id, {}), (e) => e instanceof RealtimeError && e.code === 'FORBIDDEN' && e.status === 403);
  });

  test('rooms: changing them reopens the stream with Last-Event-ID; nothing lost or repeated', async () => {
    const net = flakyFetch();
    const c = client('a', { fetch: net.fetch });
    await c.connect();
    const r1 = `job:${user('r')}`;
    const r2 = `job:${user('r')}`;
    const s1 = await c.subscribe(r1);
    const got = collect(s1, 'event');
    await publish(r1, 'step', { n: 1 });
    await until(() => got.length === 1, 2000, 'first');
    const publishing = (async () => {
      for (let n = 2; n <= 6; n++) {
        await publish(r1, 'step', { n });
        await sleep(5);
      }
    })();
    const s2 = await c.subscribe(r2); // reopens while r1 publishes
    const got2 = collect(s2, 'event');
    await publishing;
    await publish(r2, 'other', {});
    await until(() => got.length === 6 && got2.length === 1, 3000, 'both rooms');
    await sleep(SSE_SETTLE);
    assert.deepEqual(got.map((e) => e.data.n), [1, 2, 3, 4, 5, 6]);
    const streams = net.events();
    assert.equal(streams.length, 3);
    assert.ok(streams[2].url.includes(`rooms=${encodeURIComponent(r1)},${encodeURIComponent(r2)}`));
    assert.ok(streams[2].headers['last-event-id']);
    await s2.unsubscribe();
    await until(() => net.events().length === 4, 2000, 'reopened without r2');
    assert.ok(!net.events()[3].url.includes(encodeURIComponent(r2)));
  });

  test('a dropped stream resumes each room: recovered, or room.reset', async () => {
    const net = flakyFetch();
    const c = client('a', { fetch: net.fetch });
    await c.connect();
    const kept = await c.subscribe(`job:${user('r')}`);
    const small = await c.subscribe(`small:${user('r')}`); // recovery_cap = 3
    const got = collect(kept, 'event');
    const resets = collect(small, 'reset');
    await publish(kept.room, 'step', { n: 1 });
    await publish(small.room, 'step', { n: 1 });
    await until(() => got.length === 1 && small.seq === 1, 2000, 'first');
    net.refuseEvents = true;
    const back = next(c, 'connected');
    net.cut();
    for (let n = 2; n <= 5; n++) {
      await publish(kept.room, 'step', { n });
      await publish(small.room, 'step', { n });
    }
    net.refuseEvents = false;
    await back;
    await until(() => got.length === 5 && resets.length === 1, 3000, 'resumed');
    assert.deepEqual(got.map((e) => e.data.n), [1, 2, 3, 4, 5]);
    assert.deepEqual({ ...resets[0], epoch: undefined }, { room: small.room, seq: 5, epoch: undefined, reason: 'server' });
  });

  test('rooms are capped at the server limit per stream, refused before sending', async () => {
    const net = flakyFetch();
    const c = client('a', { fetch: net.fetch });
    await c.connect();
    const prefix = user('p');
    await Promise.all(Array.from({ length: MAX_SSE_ROOMS }, (_, i) => c.subscribe(`plain:${prefix}:${i}`)));
    assert.equal(net.events().length, 2, 'one reopen for all of them');
    await assert.rejects(c.subscribe(`plain:${prefix}:x`), (e) => e.code === 'FORBIDDEN' && e.field === 'room');
  });

  test('falls back to SSE when the WebSocket cannot connect', async () => {
    const ws = await flakyWebSocket();
    ws.refuse = 100;
    const c = client('a', { transports: ['websocket', 'sse'], WebSocket: ws.WebSocket });
    const tried = collect(c, 'connecting');
    await c.connect();
    assert.deepEqual(tried.map((t) => t.transport), ['websocket', 'websocket', 'sse']);
    assert.equal(c.transport, 'sse');
    const sub = await c.subscribe(`job:${user('r')}`);
    const got = next(sub, 'event');
    await publish(sub.room, 'hello', {});
    assert.equal((await got).event, 'hello');
  });

  test('session.closed ends the stream with the close code: 4510 stops', async () => {
    const c = client('a');
    await c.connect();
    const closed = next(c, 'closed');
    await h.d.api('POST', `/users/${c.userId}/disconnect`, {});
    assert.equal((await closed).code, 4510);
  });

  test('before the token expires, the stream is reopened with a fresh one', async () => {
    const id = user('a');
    let calls = 0;
    const net = flakyFetch();
    const c = client('a', { id, fetch: net.fetch, token: () => mint(id, { ttlS: calls++ === 0 ? 3 : 3600 }) });
    const first = await c.connect();
    let dropped = 0;
    c.on('disconnected', () => dropped++);
    await until(() => net.events().length === 2 && c.session.expires_at !== first.expires_at, 4000, 'renewed');
    assert.equal(calls, 2);
    assert.equal(dropped, 0);
  });
});

const SSE_SETTLE = 100;

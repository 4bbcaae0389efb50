// The daemon goes away and comes back: a drain and restart with 200 messages in flight from
// the outbox, a paused daemon that only the heartbeat notices, the browser's `online` event.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { next, sleep, until, user } from './daemon.mjs';
import { harness } from './harness.mjs';

// The message budget refills in half a second instead of 10 s: the 200 sends still meet it,
// and the ones after the restart do not wait 20 s for it.
const h = harness({ gateway: { op_limits: { 'message.send': { per: 60, window_s: 0.5 } } } }, { maxDelayMs: 400 });
const { connected } = h;

describe('restarts', () => {
  test('a restart with 200 messages in flight: each stored and received once, in send order', async () => {
    const alice = await connected('alice');
    const bob = await connected('bob');
    const carol = await connected('carol');
    const online = new EventTarget();
    const sleepy = await connected('sleepy', { minDelayMs: 60_000, maxDelayMs: 60_000, onlineTarget: online });
    const convs = [
      await alice.chat.open(bob.userId),
      await alice.chat.open(carol.userId),
      await alice.chat.create([bob.userId, carol.userId], 'all'),
      await alice.chat.create([bob.userId], 'pair'),
    ];
    const room = `job:${user('r')}`;
    const sub = await bob.subscribe(room);
    const resets = [];
    sub.on('reset', (r) => resets.push(r));
    await h.d.api('POST', '/publish', { room, event: 'before', data: {} });
    await bob.chat.list();
    await carol.chat.list();
    const received = new Map(); // user -> conversation -> bodies
    for (const c of [alice, bob, carol]) {
      const mine = new Map();
      received.set(c, mine);
      c.chat.on('message', (m) => {
        if (!mine.has(m.conversation_id)) mine.set(m.conversation_id, []);
        mine.get(m.conversation_id).push(m.body);
      });
    }
    const drops = [];
    let acked = 0;
    alice.on('disconnected', (e) => drops.push({ ...e, acked }));

    const PER = 50;
    const sends = [];
    for (let i = 0; i < PER; i++)
      for (const conv of convs) sends.push(alice.chat.send(conv.id, `${conv.id}#${i}`).then((m) => (acked++, m)));
    await until(() => acked >= 20, 10_000, '20 acknowledged');
    await h.d.restart();
    const stored = await Promise.all(sends);
    assert.ok(drops[0].acked < 200, `${200 - drops[0].acked} messages were in the outbox when the daemon went away`);
    assert.equal(drops[0].code, 1001);
    for (const c of [alice, bob, carol]) assert.equal(c.transport, 'websocket', 'a daemon that was down is no reason for SSE');
    assert.ok(drops[0].delayMs >= 100 && drops[0].delayMs <= 300, `the server's delay (${drops[0].delayMs} ms)`);

    const expected = (conv) => Array.from({ length: PER }, (_, i) => `${conv.id}#${i}`);
    for (const conv of convs) {
      const mine = stored.filter((m) => m.conversation_id === conv.id);
      assert.deepEqual(mine.map((m) => m.seq), Array.from({ length: PER }, (_, i) => i + 1), 'stored once each, in order');
      const page = await bob.chat.history(conv.id, { afterSeq: 0, limit: 100 }).catch(() => carol.chat.history(conv.id, { afterSeq: 0, limit: 100 }));
      assert.deepEqual(page.messages.map((m) => m.body), expected(conv));
    }
    const members = (conv) => [alice, ...[bob, carol].filter((c) => conv.members.some((m) => m.user_id === c.userId))];
    await until(
      () => convs.every((conv) => members(conv).every((c) => (received.get(c).get(conv.id) ?? []).length >= PER)),
      15_000,
      'every message received',
    );
    await sleep(200);
    for (const conv of convs)
      for (const c of members(conv)) assert.deepEqual(received.get(c).get(conv.id), expected(conv), `${c.userId} in ${conv.title ?? conv.id}`);

    // The room's history did not survive the restart: a reset, not a silent hole.
    await until(() => resets.length === 1, 5000, 'room reset');
    assert.equal(resets[0].reason, 'not_recovered');

    // A client waiting a long backoff reconnects at once on the browser's `online` event.
    assert.equal(sleepy.state, 'disconnected');
    const back = next(sleepy, 'connected', 5000);
    online.dispatchEvent(new Event('online'));
    assert.equal((await back).reconnected, true);
  });

  test('a daemon back by the time a refused attempt is noticed is no reason for SSE', async () => {
    // The refusal of the second attempt after the daemon went away reaches the client only
    // once the daemon is back, as a busy event loop (or a long round trip) delivers it late.
    const { WebSocket: WS } = await import('ws');
    let attempts = 0;
    let lateAttempt = Infinity;
    let markHeld;
    const held = new Promise((r) => (markHeld = r));
    let release;
    const gate = new Promise((r) => (release = r));
    class Late {
      constructor(url) {
        const n = ++attempts;
        this.readyState = 0;
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        const ws = (this._ws = new WS(url));
        ws.onopen = () => {
          this.readyState = 1;
          this.onopen?.({});
        };
        ws.onmessage = (e) => this.onmessage?.({ data: e.data });
        ws.onerror = () => {};
        ws.onclose = async (e) => {
          if (this.readyState === 0 && n === lateAttempt) {
            markHeld();
            await gate;
          }
          this.readyState = 3;
          this.onclose?.({ code: e.code, reason: e.reason });
        };
      }
      send(text) {
        this._ws.send(text);
      }
      close(code, reason) {
        this.readyState = 2;
        this._ws.close(code, reason);
      }
      terminate() {
        this._ws.terminate();
      }
    }
    const c = await connected('late', { WebSocket: Late });
    const tried = [];
    c.on('connecting', (e) => tried.push(e.transport));
    lateAttempt = attempts + 2;
    await h.d.stop();
    await held;
    await h.d.run();
    const back = next(c, 'connected', 10_000);
    release();
    assert.equal((await back).transport, 'websocket');
    assert.deepEqual(tried, ['websocket', 'websocket', 'websocket']);
  });

  test('a silent peer is found dead by the heartbeat; idempotent requests survive it', async () => {
    const c = await connected('a', { pingIntervalMs: 300, pongTimeoutMs: 300, connectTimeoutMs: 1000, rooms: ['plain:*'] });
    const gone = next(c, 'disconnected', 5000);
    h.d.pause();
    const paused = Date.now();
    let read;
    let publish;
    try {
      read = c.presence.query([]);
      publish = c.publish('plain:x', 'e', {});
      const e = await gone;
      const after = Date.now() - paused;
      assert.equal(e.reason, 'no answer to the heartbeat');
      assert.ok(after <= 1200, `found dead after ${after} ms`);
    } finally {
      h.d.resume();
    }
    await assert.rejects(publish, (e) => e.code === 'DISCONNECTED');
    assert.deepEqual(await read, {});
    assert.equal(c.state, 'connected');
  });
});

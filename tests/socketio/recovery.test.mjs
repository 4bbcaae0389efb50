// Socket.IO connection state recovery (socket.io-client for JavaScript 4.6 and later) served
// from realtimed's durable positions: a lost connection, then a reconnect with `{pid, offset}`
// that replays every missed message, notification and room publication exactly once
// (`socket.recovered` is true); a daemon restart mid-chat, after which the positions kept in the
// store still recover the conversation; and a reconnect that cannot be recovered (a room whose
// history lived in the restarted process), which replays nothing (`recovered` is false).
//
// The socket that misses events has `reconnection: false`, so that the test decides when it
// comes back: the events it misses are sent while it is away, not raced against a backoff.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { call, collect, connect, disconnected, harness, next, until, user } from './support.mjs';

const h = harness({ shutdown: { grace_s: 2, reconnect_min_ms: 50, reconnect_max_ms: 100 } });

const bodies = (received) => received.map(([d]) => d.message.body);

describe('connection state recovery', () => {
  test('a lost connection: every missed event replayed once, in order, then live ones', async () => {
    const room = `job:${user('render')}`;
    const alice = await h.connected('alice');
    const bob = await h.connected('bob', { rooms: [room], reconnection: false, transports: ['websocket'] });
    const { conversation } = await call(alice, 'conversation.open', { user_id: bob.userId });
    await call(bob, 'subscribe', { room });
    const messages = collect(bob, 'message.new');
    const pubs = collect(bob, 'job.progress');
    const notes = collect(bob, 'notification.new');
    const send = (body) => call(alice, 'message.send', { conversation_id: conversation.id, client_id: body, body });
    const publish = (pct) => h.api('POST', '/publish', { room, event: 'job.progress', data: { pct } });
    const notify = (title) => h.api('POST', '/notifications', { user_ids: [bob.userId], type: 'announcement', vars: { title, body: '' } });

    await send('m1');
    await publish(1);
    await notify('n1');
    await until(() => messages.length === 1 && pubs.length === 1 && notes.length === 1, 5000, 'the first events');
    assert.equal(bob.recovered, false, 'a first connection recovers nothing');

    // The network goes away under bob (no DISCONNECT packet: the transport just closes).
    const gone = disconnected(bob);
    bob.io.engine.close();
    assert.equal(await gone, 'transport close');
    for (const i of [2, 3, 4]) {
      await send(`m${i}`);
      await publish(i);
    }
    await notify('n2');

    await connect(bob);
    assert.equal(bob.recovered, true, 'the door recognised the pid and the offset');
    await until(() => messages.length === 4 && pubs.length === 4 && notes.length === 2, 5000, 'the missed events');
    await send('m5');
    await publish(5);
    await until(() => messages.length === 5 && pubs.length === 5, 5000, 'the live events after the replay');
    assert.deepEqual(bodies(messages), ['m1', 'm2', 'm3', 'm4', 'm5'], 'nothing lost, nothing twice');
    assert.deepEqual(messages.map(([, meta]) => meta.seq), [1, 2, 3, 4, 5]);
    assert.deepEqual(pubs.map(([d, meta]) => [d.pct, meta.seq]), [1, 2, 3, 4, 5].map((i) => [i, i]));
    assert.deepEqual(notes.map(([d]) => d.notification.title), ['n1', 'n2']);
    const offsets = [...messages, ...pubs, ...notes].map((args) => args.at(-1));
    assert.ok(offsets.every((o) => typeof o === 'string'));
  });

  test('a daemon restart mid-chat: the conversation recovers from the stored positions', async () => {
    const room = `job:${user('lost')}`;
    const alice = await h.connected('alice', { transports: ['websocket'] });
    const bob = await h.connected('bob', { reconnection: false, transports: ['websocket'] });
    const carol = await h.connected('carol', { rooms: [room], reconnection: false, transports: ['websocket'] });
    const { conversation } = await call(alice, 'conversation.create', { member_ids: [bob.userId, carol.userId], title: 'restart' });
    await call(carol, 'subscribe', { room });
    await h.api('POST', '/publish', { room, event: 'job.progress', data: { pct: 1 } });
    const atBob = collect(bob, 'message.new');
    const atCarol = collect(carol, 'message.new');
    const send = (body) => call(alice, 'message.send', { conversation_id: conversation.id, client_id: body, body });
    for (const i of [1, 2, 3]) await send(`m${i}`);
    await until(() => atBob.length === 3 && atCarol.length === 3, 5000, 'the first messages');

    // A drain: server.shutdown, then the transport closes (recoverable, unlike a DISCONNECT).
    const shutdown = next(bob, 'server.shutdown');
    const bobGone = disconnected(bob, 10_000);
    const carolGone = disconnected(carol, 10_000);
    const aliceBack = next(alice, 'connect', () => true, 20_000);
    await h.d.restart();
    const [notice] = await shutdown;
    assert.ok(notice.reconnect_after_ms >= 50 && notice.reconnect_after_ms <= 100);
    assert.equal(await bobGone, 'transport close');
    assert.equal(await carolGone, 'transport close');
    await aliceBack; // alice reconnects by herself
    for (const i of [4, 5, 6]) await send(`m${i}`);

    await connect(bob);
    assert.equal(bob.recovered, true, 'the positions outlived the process');
    await until(() => atBob.length === 6, 5000, 'the messages sent while bob was away');

    // carol's room kept its history in the restarted process: nothing can be replayed for it, so
    // nothing is (not the conversation either), and the app refetches.
    await connect(carol);
    assert.equal(carol.recovered, false);
    await send('m7');
    await until(() => atBob.length === 7 && atCarol.length === 4, 5000, 'the live message');
    assert.deepEqual(bodies(atBob), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7'], 'nothing lost, nothing twice');
    assert.deepEqual(bodies(atCarol), ['m1', 'm2', 'm3', 'm7'], 'no partial replay');
    const history = await call(carol, 'message.history', { conversation_id: conversation.id, after_seq: 3 });
    assert.deepEqual(history.messages.map((m) => m.body), ['m4', 'm5', 'm6', 'm7'], 'what the app refetches');
  });
});

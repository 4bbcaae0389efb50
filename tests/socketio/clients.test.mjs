// socket.io-client 4 (the npm package apps use) against realtimed's Socket.IO door: chat with
// acks, typing and receipts over each transport (WebSocket only, long-polling only, polling
// upgraded to WebSocket), presence, a notification from the server API, an app room, the ack
// of an error, unknown events, binary attachments, refused and expired tokens, and a terminal
// close from the server API. Recovery offsets are checked in recovery.test.mjs.
//
// Run by tests/test_socketio_clients.py (`node --test`), which sets REALTIMED_PYTHON.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { call, collect, connect, disconnected, harness, mint, next, op, until, user } from './support.mjs';

const h = harness({ presence: { throttle_s: 0.1 } });

/** alice and bob with a direct conversation: [alice, bob, conversation]. */
async function pair(options = {}) {
  const alice = await h.connected('alice', options);
  const bob = await h.connected('bob', options);
  const bobSees = next(bob, 'conversation.updated');
  const { conversation } = await call(alice, 'conversation.open', { user_id: bob.userId });
  const [updated] = await bobSees;
  assert.equal(updated.conversation.id, conversation.id);
  return [alice, bob, conversation];
}

const TRANSPORTS = {
  'WebSocket only': { transports: ['websocket'] },
  'long-polling only': { transports: ['polling'], upgrade: false },
  'polling upgraded to WebSocket': { transports: ['polling', 'websocket'] },
};

describe('chat over each transport', () => {
  for (const [name, options] of Object.entries(TRANSPORTS)) {
    test(`${name}: a message with its ack, typing and a receipt`, async () => {
      const [alice, bob, conversation] = await pair(options);
      const room = `conversation:${conversation.id}`;
      if (name === 'polling upgraded to WebSocket') {
        for (const s of [alice, bob])
          if (s.io.engine.transport.name !== 'websocket') await next(s.io.engine, 'upgrade');
      }
      const expected = options.transports.length === 1 ? options.transports[0] : 'websocket';
      assert.equal(alice.io.engine.transport.name, expected);
      assert.equal(bob.io.engine.transport.name, expected);

      // Typing: a fire-and-forget op (no ack) announced to the other participant.
      const typing = next(bob, 'typing.updated', (d) => d.typing === true);
      alice.emit('typing.start', { conversation_id: conversation.id });
      const [typed] = await typing;
      assert.deepEqual({ ...typed }, { conversation_id: conversation.id, user_id: alice.userId, typing: true });

      // message.send: the ack carries the stored message; bob gets message.new with its room,
      // and seq; sending ends alice's typing.
      const arrives = next(bob, 'message.new');
      const stopped = next(bob, 'typing.updated', (d) => d.typing === false);
      const ack = await op(alice, 'message.send', { conversation_id: conversation.id, client_id: 'k-1', body: 'hi bob' });
      assert.equal(ack.ok, true);
      assert.equal(ack.data.message.body, 'hi bob');
      assert.equal(ack.data.message.seq, 1);
      const [data, meta] = await arrives;
      assert.equal(data.message.id, ack.data.message.id);
      assert.equal(meta.room, room);
      assert.equal(meta.seq, 1);
      await stopped;

      // A repeat with the same client_id answers the first message.
      const again = await call(alice, 'message.send', { conversation_id: conversation.id, client_id: 'k-1', body: 'hi bob' });
      assert.equal(again.message.id, ack.data.message.id);

      // Receipts: bob reads, alice (and bob) get receipt.updated.
      const receipt = next(alice, 'receipt.updated', (d) => d.user_id === bob.userId);
      const read = await call(bob, 'message.read', { conversation_id: conversation.id, seq: 1 });
      assert.equal(read.read_seq, 1);
      const [r] = await receipt;
      assert.equal(r.conversation_id, conversation.id);
      assert.equal(r.read_seq, 1);

      // An op error in the flat ack shape Socket.IO apps use.
      const bad = await op(alice, 'message.send', { conversation_id: conversation.id, client_id: 'k-2' });
      assert.equal(bad.ok, false);
      assert.equal(bad.error, 'VALIDATION_ERROR');
      assert.equal(bad.field, 'body');
      assert.match(bad.message, /^body/);
      assert.equal(alice.io.engine.transport.name, expected, 'the transport did not change under the chat');
    });
  }
});

describe('live state', () => {
  test('presence: a contact sees presence.set', async () => {
    const [alice, bob] = await pair();
    const seen = next(bob, 'presence.updated', (d) => d.user_id === alice.userId && d.status === 'busy');
    await call(alice, 'presence.set', { status: 'busy', message: 'in a meeting' });
    const [p] = await seen;
    assert.equal(p.message, 'in a meeting');
    const query = await call(bob, 'presence.query', { user_ids: [alice.userId] });
    assert.equal(query.presences[alice.userId].status, 'busy');
  });

  test('notifications: the server API creates one, the client gets notification.new and reads it', async () => {
    const bob = await h.connected('bob');
    const arrives = next(bob, 'notification.new');
    const queued = await h.api('POST', '/notifications', { user_ids: [bob.userId], type: 'announcement', vars: { title: 'Hello', body: 'from the backend' } });
    assert.equal(queued.queued, 1);
    const [data, meta] = await arrives;
    assert.equal(data.notification.title, 'Hello');
    assert.equal(data.notification.seq, 1);
    assert.deepEqual({ ...meta }, { seq: 1 });
    const readEvent = next(bob, 'notification.read');
    const read = await call(bob, 'notification.read', { ids: [data.notification.id] });
    assert.equal(read.unread_count, 0);
    const [r] = await readEvent;
    assert.deepEqual(r.ids, [data.notification.id]);
  });

  test('an app room: subscribe where the old server joined rooms, then publications with {room, seq, epoch}', async () => {
    const room = `job:${user('render')}`;
    const viewer = await h.connected('viewer', { rooms: [room] });
    const sub = await call(viewer, 'subscribe', { room });
    assert.equal(sub.room, room);
    assert.equal(sub.seq, 0);
    assert.equal(sub.recovered, false);
    assert.equal(typeof sub.epoch, 'string');
    const events = collect(viewer, 'job.progress');
    const published = [];
    for (const pct of [10, 40, 90]) published.push(await h.api('POST', '/publish', { room, event: 'job.progress', data: { pct } }));
    assert.deepEqual(published.map((p) => p.delivered), [1, 1, 1]);
    await until(() => events.length === 3, 5000, 'three publications');
    assert.deepEqual(events.map(([d]) => d.pct), [10, 40, 90]);
    assert.deepEqual(events.map(([, meta]) => ({ ...meta })), [1, 2, 3].map((seq) => ({ room, seq, epoch: sub.epoch })));

    // A room outside the token's `rooms` claim is refused with the native code.
    const forbidden = await op(viewer, 'subscribe', { room: `job:${user('other')}` });
    assert.equal(forbidden.ok, false);
    assert.equal(forbidden.error, 'FORBIDDEN');
    await call(viewer, 'unsubscribe', { room });
  });
});

describe('what the door refuses', () => {
  test('an unknown event gets a BAD_REQUEST ack when it asks for one, nothing otherwise', async () => {
    const s = await h.connected('unknown');
    const acked = await op(s, 'chat message', { text: 'socket.io habit' });
    assert.equal(acked.ok, false);
    assert.equal(acked.error, 'BAD_REQUEST');
    s.emit('no.such.op', {});
    const pong = await call(s, 'ping');
    assert.equal(typeof pong.server_time, 'string', 'the socket is still served');
    assert.equal(s.connected, true);
  });

  test('a binary attachment in an op is refused with VALIDATION_ERROR', async () => {
    const [alice, , conversation] = await pair();
    const ack = await op(alice, 'message.send', { conversation_id: conversation.id, client_id: 'bin', body: 'x', file: Buffer.from([1, 2, 3]) });
    assert.equal(ack.ok, false);
    assert.equal(ack.error, 'VALIDATION_ERROR');
    const history = await call(alice, 'message.history', { conversation_id: conversation.id });
    assert.equal(history.messages.length, 0, 'nothing was stored');
  });

  test('a bad token: connect_error with {code, close_code: 4501, message}, and no reconnect', async () => {
    const s = h.socket(mint(user('mallory'), { secret: 'not-the-secret-of-this-daemon-000000' }));
    const err = await connect(s).then(
      () => assert.fail('connected with a bad token'),
      (e) => e,
    );
    assert.equal(err.data.code, 'UNAUTHORIZED');
    assert.equal(err.data.close_code, 4501);
    assert.equal(typeof err.data.message, 'string');
    assert.equal(s.active, false, 'a terminal refusal: socket.io-client does not retry');
  });

  test('an expired token: connect_error 4004; a fresh token and connect() again gets in', async () => {
    const id = user('late');
    const s = h.socket(mint(id, { ttlS: -120 }));
    const err = await connect(s).then(
      () => assert.fail('connected with an expired token'),
      (e) => e,
    );
    assert.equal(err.data.code, 'UNAUTHORIZED');
    assert.equal(err.data.close_code, 4004);
    s.auth = { token: mint(id) };
    await connect(s);
    assert.equal(s.connected, true);
    assert.equal(typeof (await call(s, 'ping')).server_time, 'string');
  });

  test('disconnected by the server API: session.closed 4510, then a Socket.IO DISCONNECT (no reconnect)', async () => {
    const s = await h.connected('kicked');
    const closed = next(s, 'session.closed');
    const gone = disconnected(s);
    const answer = await h.api('POST', `/users/${encodeURIComponent(s.userId)}/disconnect`, {});
    assert.equal(answer.disconnected, 1);
    const [data] = await closed;
    assert.equal(data.code, 4510);
    assert.equal(await gone, 'io server disconnect');
    assert.equal(s.active, false);
  });
});

// Chat against a real daemon: conversations, history, the outbox, edits, read cursors,
// typing, unread counts, and gap detection with backfill.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { flakyWebSocket, next, sleep, until, user } from './daemon.mjs';
import { collect, harness } from './harness.mjs';

const h = harness();
const { connected } = h;

describe('chat', () => {
  test('conversations: open, create, list with unread counts', async () => {
    const a = await connected('a');
    const b = await connected('b');
    const c = await connected('c');
    const direct = await a.chat.open(b.userId);
    assert.equal(direct.type, 'direct');
    assert.equal((await b.chat.open(a.userId)).id, direct.id, 'open finds the same conversation');
    const group = await a.chat.create([b.userId, c.userId], 'team');
    assert.equal(group.type, 'group');
    assert.equal(group.title, 'team');
    await a.chat.send(group.id, 'hello team');
    await a.chat.send(direct.id, 'hello b');
    const page = await b.chat.list();
    assert.deepEqual(page.conversations.map((x) => x.id), [direct.id, group.id], 'newest activity first');
    assert.equal(page.unread_total, 2);
    assert.equal(b.chat.unreadTotal, 2);
    assert.equal(b.chat.unread(direct.id), 1);
  });

  test('send and receive: each message once, in order, own ones included; client_id makes a resend harmless', async () => {
    const a = await connected('a');
    const b = await connected('b');
    const conv = await a.chat.open(b.userId);
    const got = collect(b.chat, 'message');
    const own = collect(a.chat, 'message');
    const sent = await Promise.all(['one', 'two', 'three'].map((t) => a.chat.send(conv.id, t)));
    assert.deepEqual(sent.map((m) => m.seq), [1, 2, 3]);
    const again = await a.chat.send(conv.id, 'three', { clientId: sent[2].client_id });
    assert.equal(again.id, sent[2].id, 'the same client_id answers the first message');
    await until(() => got.length === 3 && own.length === 3, 3000, 'messages');
    await sleep(100);
    assert.deepEqual(got.map((m) => m.body), ['one', 'two', 'three']);
    assert.equal(own.length, 3);
    assert.equal(b.chat.unreadTotal, 3);
  });

  test('history pages backwards; edit and delete reach the other side', async () => {
    const a = await connected('a');
    const b = await connected('b');
    const conv = await a.chat.open(b.userId);
    for (let i = 1; i <= 7; i++) await a.chat.send(conv.id, `m${i}`);
    const newest = await b.chat.history(conv.id, { limit: 3 });
    assert.deepEqual(newest.messages.map((m) => m.seq), [5, 6, 7]);
    assert.equal(newest.has_more, true);
    const older = await b.chat.history(conv.id, { beforeSeq: 5, limit: 10 });
    assert.deepEqual(older.messages.map((m) => m.body), ['m1', 'm2', 'm3', 'm4']);
    assert.equal(older.has_more, false);
    const updated = next(b.chat, 'updated');
    const deleted = next(b.chat, 'deleted');
    const edited = await a.chat.edit(newest.messages[2].id, 'm7!');
    assert.equal(edited.body, 'm7!');
    assert.equal((await updated).body, 'm7!');
    await a.chat.delete(newest.messages[1].id);
    const gone = await deleted;
    assert.equal(gone.deleted, true);
    assert.equal(gone.seq, 6);
  });

  test('read cursors: receipts for the sender, state and unread counts for the reader, only forward', async () => {
    const a = await connected('a');
    const id = user('b');
    const b = await connected('b', { id });
    const b2 = await connected('b', { id }); // the same user on another device
    const conv = await a.chat.open(id);
    for (let i = 0; i < 3; i++) await a.chat.send(conv.id, `m${i}`);
    await until(() => b2.chat.unreadTotal === 3, 3000, 'unread 3');
    const receipt = next(a.chat, 'receipt');
    const state = next(b2.chat, 'state');
    assert.equal(await b.chat.markRead(conv.id, 2), 2);
    assert.deepEqual({ ...(await receipt), read_at: undefined }, { conversation_id: conv.id, user_id: id, read_seq: 2, read_at: undefined });
    const s = await state;
    assert.equal(s.unread_count, 1);
    assert.equal(b2.chat.unreadTotal, 1);
    assert.equal(b2.chat.unread(conv.id), 1);
    assert.equal(await b.chat.markRead(conv.id, 1), 2, 'the cursor never moves back');
  });

  test('mute, leave, and changes since a version', async () => {
    const a = await connected('a');
    const b = await connected('b');
    const c = await connected('c');
    const group = await a.chat.create([b.userId, c.userId], 'g');
    const state = next(a.chat, 'state');
    await a.chat.mute(group.id, true);
    assert.equal((await state).muted, true);
    const changed = next(b.chat, 'conversation', 5000, (x) => x.members.length === 2);
    await c.chat.leave(group.id);
    assert.deepEqual((await changed).members.map((m) => m.user_id).sort(), [a.userId, b.userId].sort());
    await assert.rejects(c.chat.send(group.id, 'still here?'), (e) => e.code === 'FORBIDDEN');
    const since = (await a.chat.history(group.id)).version;
    const m = await b.chat.send(group.id, 'x');
    await b.chat.edit(m.id, 'y');
    const changes = await a.chat.history(group.id, { changedSince: since });
    assert.deepEqual(changes.messages.map((x) => x.body), ['y']);
  });

  test('typing: throttled to what the server expects, stopped by a message', async () => {
    const net = await flakyWebSocket();
    const a = await connected('a', { WebSocket: net.WebSocket });
    const b = await connected('b');
    const conv = await a.chat.open(b.userId);
    const seen = collect(b.chat, 'typing');
    for (let i = 0; i < 20; i++) {
      a.chat.typing(conv.id);
      await sleep(25);
    }
    a.chat.stopTyping(conv.id);
    a.chat.typing(conv.id);
    a.chat.stopTyping(conv.id);
    await sleep(700);
    const frames = net.frames().filter((f) => f.op?.startsWith('typing.'));
    assert.deepEqual(frames.map((f) => f.op), ['typing.start', 'typing.stop'], 'one start, one stop');
    assert.ok(frames.every((f) => f.id === undefined), 'sent without id');
    assert.deepEqual(seen.map((t) => t.typing), [true, false]);
    a.chat.typing(conv.id);
    await until(() => seen.length === 3, 2000, 'typing again');
    await a.chat.send(conv.id, 'done');
    await until(() => seen.length === 4, 2000, 'typing ended by the message');
    assert.equal(seen[3].typing, false);
  });

  test('a missing seq is fetched before the message after it', async () => {
    const a = await connected('a');
    const net = await flakyWebSocket();
    const b = await connected('b', { WebSocket: net.WebSocket });
    const conv = await a.chat.open(b.userId);
    const got = collect(b.chat, 'message');
    await a.chat.send(conv.id, 'first');
    await until(() => got.length === 1, 2000, 'first');
    let dropped = 0;
    net.dropIn = (text) => text.includes('"message.new"') && dropped++ === 0; // lose the next message.new
    await a.chat.send(conv.id, 'lost');
    await a.chat.send(conv.id, 'after');
    await until(() => got.length === 3, 3000, 'backfill');
    await sleep(100);
    assert.equal(dropped, 2);
    assert.deepEqual(got.map((m) => [m.seq, m.body]), [[1, 'first'], [2, 'lost'], [3, 'after']]);
    assert.ok(net.frames().some((f) => f.op === 'message.history' && f.data.after_seq === 1));
  });

  test('after a reconnect: what was sent, edited and deleted meanwhile, once and in order', async () => {
    const a = await connected('a');
    const net = await flakyWebSocket();
    const b = await connected('b', { WebSocket: net.WebSocket });
    const conv = await a.chat.open(b.userId);
    const got = collect(b.chat, 'message');
    const updated = collect(b.chat, 'updated');
    const deleted = collect(b.chat, 'deleted');
    const early = await a.chat.send(conv.id, 'before');
    const doomed = await a.chat.send(conv.id, 'doomed');
    await until(() => got.length === 2, 2000, 'two messages');
    net.dropIn = () => true; // b hears nothing more...
    for (let i = 1; i <= 5; i++) await a.chat.send(conv.id, `away ${i}`);
    await a.chat.edit(early.id, 'before (edited)');
    await a.chat.delete(doomed.id);
    const back = next(b, 'connected');
    net.dropIn = null;
    net.last().cut(); // ...until its connection drops and comes back
    assert.equal((await back).reconnected, true);
    await until(() => got.length === 7 && updated.length === 1 && deleted.length === 1, 3000, 'resync');
    await sleep(100);
    assert.deepEqual(got.map((m) => m.body), ['before', 'doomed', 'away 1', 'away 2', 'away 3', 'away 4', 'away 5']);
    assert.equal(updated[0].body, 'before (edited)');
    assert.equal(deleted[0].id, doomed.id);
    assert.equal(b.chat.unreadTotal, 6, 'from session.ready, not counted twice');
  });

  test('a refused message is rejected and the outbox goes on with the next one', async () => {
    const a = await connected('a');
    const b = await connected('b');
    const conv = await a.chat.open(b.userId);
    await b.chat.block(a.userId);
    const refused = a.chat.send(conv.id, 'blocked');
    await assert.rejects(refused, (e) => e.code === 'BLOCKED');
    await b.chat.unblock(a.userId);
    assert.equal((await a.chat.send(conv.id, 'welcome back')).body, 'welcome back');
    assert.deepEqual(a.chat.outbox(), []);
  });
});

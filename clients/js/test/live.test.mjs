// App rooms, presence, the inbox, preferences and devices against a real daemon.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RealtimeError, Subscription } from '../dist/index.js';
import { flakyFetch, flakyWebSocket, next, sleep, until, user } from './daemon.mjs';
import { collect, harness } from './harness.mjs';

const h = harness();
const { connected, publish } = h;
const notify = (userId, title) => h.d.api('POST', '/notifications', { user_ids: [userId], type: 'announcement', vars: { title, body: '' } });

/**
 * A subscription to a fresh room of the namespace `ns`, on a client whose network the test
 * controls, after a first event (`step` 1) arrived live; `got`, `resets` and `subscribed`
 * hold its events from the start.
 */
async function liveRoom(ns) {
  const room = `${ns}:${user('r')}`;
  const net = await flakyWebSocket();
  const c = await connected('a', { WebSocket: net.WebSocket });
  const sub = await c.subscribe(room);
  const got = collect(sub, 'event');
  const resets = collect(sub, 'reset');
  const subscribed = collect(sub, 'subscribed');
  await publish(room, 'step', { n: 1 });
  await until(() => got.length === 1, 2000, 'live');
  return { room, net, sub, got, resets, subscribed };
}

/** `step` events `from` to `to` published while the client hears nothing; then its connection drops. */
async function missed(net, room, from, to) {
  net.dropIn = () => true;
  for (let n = from; n <= to; n++) await publish(room, 'step', { n });
  net.dropIn = null;
  net.last().cut();
}

describe('rooms', () => {
  test('subscribe, events with seq, one subscription per room, unsubscribe', async () => {
    const c = await connected('a');
    const room = `job:${user('r')}`;
    const first = [];
    const second = [];
    const sub = await c.subscribe(room, (e) => first.push(e));
    assert.ok(sub instanceof Subscription);
    assert.equal(await c.subscribe(room, (e) => second.push(e)), sub, 'the same subscription');
    await publish(room, 'progress', { pct: 10 });
    await publish(room, 'progress', { pct: 20 });
    await until(() => second.length === 2, 2000, 'events');
    assert.deepEqual(first.map((e) => [e.event, e.data.pct, e.seq, e.replayed]), [['progress', 10, 1, false], ['progress', 20, 2, false]]);
    assert.equal(sub.seq, 2);
    await sub.unsubscribe();
    assert.equal(c.rooms.size, 0);
    await publish(room, 'progress', { pct: 30 });
    await sleep(150);
    assert.equal(first.length, 2);
  });

  test('a room the token does not allow: FORBIDDEN', async () => {
    const c = await connected('a');
    await assert.rejects(c.subscribe('secret:1'), (e) => e instanceof RealtimeError && e.code === 'FORBIDDEN');
    assert.equal(c.rooms.size, 0);
  });

  test('room presence, joined and left, client publishing', async () => {
    const room = `lobby:${user('r')}`;
    const a = await connected('a');
    const b = await connected('b');
    const sa = await a.subscribe(room);
    const events = collect(sa, 'event');
    const sb = await b.subscribe(room);
    await until(() => events.some((e) => e.event === 'room.joined'), 2000, 'room.joined');
    assert.deepEqual(events[0].data, { room, user_id: b.userId });
    const members = (await sa.presence()).map((m) => m.user_id).sort();
    assert.deepEqual(members, [a.userId, b.userId].sort());
    assert.deepEqual((await a.presence.room(room)).length, 2);
    await b.publish(room, 'chat', { text: 'hi' });
    await until(() => events.some((e) => e.event === 'chat'), 2000, 'publication');
    await sb.unsubscribe();
    await until(() => events.some((e) => e.event === 'room.left'), 2000, 'room.left');
  });

  test('after a reconnect: the missed publications replayed once, in order', async () => {
    const { room, net, got, resets, subscribed } = await liveRoom('job');
    await missed(net, room, 2, 4);
    await until(() => got.length === 4, 3000, 'recovery');
    await publish(room, 'step', { n: 5 });
    await until(() => got.length === 5, 2000, 'live again');
    await sleep(100);
    assert.deepEqual(got.map((e) => [e.data.n, e.seq, e.replayed]), [[1, 1, false], [2, 2, true], [3, 3, true], [4, 4, true], [5, 5, false]]);
    assert.deepEqual(resets, []);
    const resub = net.frames().filter((f) => f.op === 'subscribe');
    assert.deepEqual(resub[1].data.since, { seq: 1, epoch: got[0].epoch });
    assert.deepEqual(subscribed, [{ room, seq: 4, epoch: got[0].epoch, resumed: true, recovered: true }], 'live again, after the replay');
  });

  test('a live event right behind the resubscribe reply comes after the replay, as the server sent them', async () => {
    const { room, net, got, resets } = await liveRoom('job');
    net.dropIn = () => true;
    await publish(room, 'step', { n: 2 });
    // The resubscribe's reply is held, then handed over with the next live event in one go,
    // as one read from a busy socket does.
    let reply;
    net.dropIn = (text) => (text.includes('"recovered"') ? ((reply = JSON.parse(text)), true) : false);
    net.last().cut();
    await until(() => reply, 3000, 'the resubscribe reply');
    net.dropIn = null;
    net.last().inject(reply);
    net.last().inject({ event: 'step', room, seq: 3, epoch: got[0].epoch, data: { n: 3 } });
    await sleep(50);
    assert.deepEqual(got.map((e) => [e.data.n, e.seq, e.replayed]), [[1, 1, false], [2, 2, true], [3, 3, false]]);
    assert.deepEqual(resets, []);
  });

  test('a recovery refused, or a missing seq: reset, never a silent hole', async () => {
    const { room, net, sub, got, resets, subscribed } = await liveRoom('small'); // recovery_cap = 3
    await missed(net, room, 2, 6);
    await until(() => resets.length === 1, 3000, 'reset');
    assert.deepEqual(resets[0], { room, seq: 6, epoch: got[0].epoch, reason: 'not_recovered' });
    await until(() => subscribed.length === 1, 2000, 'subscribed');
    assert.deepEqual(subscribed[0], { room, seq: 6, epoch: got[0].epoch, resumed: true, recovered: false });
    assert.equal(got.length, 1, 'nothing replayed: all or nothing');
    await publish(room, 'step', { n: 7 });
    await until(() => got.length === 2, 2000, 'live after the reset');
    // A frame that skips a seq (as a lossy path would deliver it) raises a reset too.
    net.last().inject({ event: 'step', room, seq: 9, epoch: sub.epoch, data: { n: 9 } });
    assert.equal(resets.length, 2);
    assert.equal(resets[1].reason, 'gap');
    assert.deepEqual(got.map((e) => e.data.n), [1, 7, 9]);
  });
});

describe('presence', () => {
  test('own status, contacts see it, query', async () => {
    const a = await connected('a');
    const b = await connected('b');
    await h.d.api('PUT', `/users/${a.userId}/contacts`, { user_ids: [b.userId] });
    await h.d.api('PUT', `/users/${b.userId}/contacts`, { user_ids: [a.userId] });
    const seen = next(b.presence, 'updated', 5000, (p) => p.user_id === a.userId && p.status === 'busy');
    await a.presence.set('busy', 'in a meeting');
    const p = await seen;
    assert.equal(p.message, 'in a meeting');
    const q = await b.presence.query([a.userId, 'stranger']);
    assert.equal(q[a.userId].status, 'busy');
    assert.equal(q.stranger, undefined);
  });
});

describe('inbox', () => {
  test('live notifications, unread counts, read on one device seen on the other, read all, delete', async () => {
    const id = user('n');
    const phone = await connected('n', { id });
    const laptop = await connected('n', { id });
    const arrived = collect(laptop.inbox, 'notification');
    await notify(id, 'one');
    await notify(id, 'two');
    await until(() => arrived.length === 2, 2000, 'notifications');
    assert.deepEqual(arrived.map((n) => n.title), ['one', 'two']);
    assert.equal(laptop.inbox.unreadCount, 2);
    const page = await phone.inbox.list();
    assert.deepEqual(page.notifications.map((n) => n.title), ['two', 'one']);
    const read = next(laptop.inbox, 'read');
    assert.equal(await phone.inbox.markRead([page.notifications[1].id]), 1);
    assert.deepEqual((await read).ids, [page.notifications[1].id]);
    assert.equal(laptop.inbox.unreadCount, 1);
    assert.equal(await phone.inbox.markAllRead(), 0);
    await until(() => laptop.inbox.unreadCount === 0, 2000, 'read all');
    const deleted = next(laptop.inbox, 'deleted');
    await phone.inbox.delete([page.notifications[0].id]);
    assert.deepEqual((await deleted).ids, [page.notifications[0].id]);
    assert.equal(await phone.inbox.fetchUnreadCount(), 0);
  });

  test('a missing seq and a reconnect: fetched, once, in order', async () => {
    const net = await flakyWebSocket();
    const c = await connected('n', { WebSocket: net.WebSocket });
    const got = collect(c.inbox, 'notification');
    await notify(c.userId, 'n1');
    await until(() => got.length === 1, 2000, 'first');
    let dropped = 0;
    net.dropIn = (t) => t.includes('"notification.new"') && dropped++ === 0;
    await notify(c.userId, 'n2');
    await notify(c.userId, 'n3');
    await until(() => got.length === 3, 2000, 'gap filled');
    net.dropIn = () => true;
    await notify(c.userId, 'n4');
    await notify(c.userId, 'n5');
    net.dropIn = null;
    net.last().cut();
    await until(() => got.length === 5, 3000, 'after the reconnect');
    await sleep(100);
    assert.deepEqual(got.map((n) => [n.seq, n.title]), [[1, 'n1'], [2, 'n2'], [3, 'n3'], [4, 'n4'], [5, 'n5']]);
    assert.equal(c.inbox.unreadCount, 5);
  });

  test('preferences over REST; a refusal is a RealtimeError with the HTTP status', async () => {
    const c = await connected('p');
    const prefs = await c.inbox.preferences();
    assert.ok(prefs.types.some((t) => t.type === 'announcement' && t.in_app === true));
    const changed = await c.inbox.setPreferences({ types: [{ type: 'announcement', in_app: false }], time_zone: 'Europe/Paris' });
    assert.equal(changed.types.find((t) => t.type === 'announcement').in_app, false);
    assert.equal(changed.time_zone, 'Europe/Paris');
    await assert.rejects(c.inbox.setPreferences({ types: [{ type: 'no_such_type' }] }), (e) => e instanceof RealtimeError && e.code === 'VALIDATION_ERROR' && e.status === 400);
  });

  test('preferences per type and channel: any channel read and set, the others kept; a bad value refused before sending', async () => {
    const net = flakyFetch();
    const c = await connected('p', { fetch: net.fetch });
    const entry = (await c.inbox.preferences()).types.find((t) => t.type === 'announcement');
    assert.deepEqual(entry, { type: 'announcement', in_app: true, push: true, channels: ['in_app', 'push'] });
    const pushOff = (await c.inbox.setPreferences({ types: [{ type: 'announcement', push: false }] })).types.find((t) => t.type === 'announcement');
    assert.deepEqual([pushOff.in_app, pushOff.push], [true, false], 'a channel not named keeps its setting');
    // An entry of preferences() goes back as it is (channels and all); null keeps a setting.
    const both = await c.inbox.setPreferences({ types: [{ ...pushOff, in_app: false, push: null }] });
    assert.deepEqual(both.types.find((t) => t.type === 'announcement'), { ...entry, in_app: false, push: false });
    assert.deepEqual(await c.inbox.preferences(), both);
    // Any channel name goes to the server, which refuses one it does not have.
    await assert.rejects(
      c.inbox.setPreferences({ types: [{ type: 'announcement', email: false }] }),
      (e) => e instanceof RealtimeError && e.code === 'VALIDATION_ERROR' && e.field === 'types[0].email' && e.status === 400,
    );
    const sent = net.requests.length;
    for (const [update, field] of [
      [{ types: [{ type: 'announcement', email: 'no' }] }, 'types[0].email'],
      [{ types: [{ type: 'announcement', in_app: true }, { type: 'announcement', push: 0 }] }, 'types[1].push'],
      [{ types: [{ type: 'announcement', ['x'.repeat(100)]: {} }] }, 'types[0].' + 'x'.repeat(64)],
      [{ types: [{ in_app: true }] }, 'types[0]'],
      [{ types: [{ type: '' }] }, 'types[0].type'],
      [{ types: ['announcement'] }, 'types[0]'],
      [{ quiet_hours: { start: '22:00' } }, 'quiet_hours'],
      [{ time_zone: 7 }, 'time_zone'],
    ])
      await assert.rejects(c.inbox.setPreferences(update), (e) => e instanceof RealtimeError && e.code === 'VALIDATION_ERROR' && e.field === field && e.status === undefined, field);
    assert.equal(net.requests.length, sent, 'nothing sent');
  });
});

describe('devices', () => {
  test('register, list, unregister', async () => {
    const c = await connected('dev');
    const token = 'fcm:' + user('t');
    const dev = await c.devices.register({ token, platform: 'web', appVersion: '1.2.3', deviceInfo: { os: 'Linux', model: 'Firefox' } });
    assert.equal(dev.token, token);
    assert.deepEqual(dev.device_info, { os: 'Linux', model: 'Firefox' });
    assert.deepEqual((await c.devices.list()).map((x) => x.token), [token]);
    await c.devices.unregister(token);
    assert.deepEqual((await c.devices.list()).filter((x) => x.active !== false).map((x) => x.token), []);
  });
});

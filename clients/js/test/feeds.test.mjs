// Activity feeds against a real daemon: follow a feed, recover it from the store after a
// reconnect, read it with filters and search.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { FEED_ROOM_PREFIX, RealtimeError } from '../dist/index.js';
import { flakyWebSocket, sleep, until, user } from './daemon.mjs';
import { collect, harness } from './harness.mjs';

const h = harness();
const log = (feed, ...actors) =>
  h.d.api('POST', '/activities', { activities: actors.map((actor) => ({ actor, verb: 'join', object: 'o1', feeds: [feed] })) });

describe('activity feeds', () => {
  test('live activities, recovered from the store after a reconnect, once and in order', async () => {
    const team = `team:${user('t')}`;
    const net = await flakyWebSocket();
    const c = await h.connected('a', { WebSocket: net.WebSocket, rooms: [FEED_ROOM_PREFIX + team] });
    const sub = await c.subscribeFeed(team);
    assert.equal(sub.room, `feed:${team}`);
    const got = collect(sub, 'event');
    const resets = collect(sub, 'reset');
    await log(team, 'ann');
    await until(() => got.length === 1, 2000, 'live');
    // Missed while the client hears nothing, then its connection drops.
    net.dropIn = () => true;
    await log(team, 'bo', 'cy');
    net.dropIn = null;
    net.last().cut();
    await until(() => got.length === 3, 3000, 'recovery');
    await log(team, 'di');
    await until(() => got.length === 4, 2000, 'live again');
    await sleep(100);
    assert.deepEqual(
      got.map((e) => [e.event, e.seq, e.data.activity.actor, e.replayed]),
      [['feed.activity', 1, 'ann', false], ['feed.activity', 2, 'bo', true], ['feed.activity', 3, 'cy', true], ['feed.activity', 4, 'di', false]],
    );
    assert.deepEqual(resets, []);

    const page = await c.feedActivities(team, { limit: 2, verb: 'join' });
    assert.deepEqual(page.activities.map((a) => [a.actor, a.seq, a.feed]), [['di', 4, team], ['cy', 3, team]]);
    const rest = await c.feedActivities(team, { cursor: page.next_cursor });
    assert.deepEqual(rest.activities.map((a) => a.actor), ['bo', 'ann']);
    assert.equal(rest.next_cursor, null);
    const found = await c.feedActivities(team, { q: 'BO join', since: new Date(Date.now() - 60_000) });
    assert.deepEqual(found.activities.map((a) => a.actor), ['bo']);
  });

  test("a user's own feed needs no claim; others are refused; bad arguments fail before sending", async () => {
    const c = await h.connected('b');
    const own = await c.subscribeFeed(`user:${c.userId}`);
    const got = collect(own, 'event');
    await log(`user:${c.userId}`, 'zed');
    await until(() => got.length === 1, 2000, 'own feed');
    await assert.rejects(c.subscribeFeed('team:nope'), (e) => e instanceof RealtimeError && e.code === 'FORBIDDEN');
    await assert.rejects(c.feedActivities('team:nope'), (e) => e instanceof RealtimeError && e.code === 'FORBIDDEN');
    await assert.rejects(c.feedActivities('a b'), (e) => e.code === 'VALIDATION_ERROR' && e.field === 'feed');
    await assert.rejects(c.feedActivities('x', { limit: 0 }), (e) => e.code === 'VALIDATION_ERROR' && e.field === 'limit');
    await assert.rejects(c.feedActivities('x', { since: new Date(NaN) }), (e) => e.code === 'VALIDATION_ERROR' && e.field === 'since');
  });
});

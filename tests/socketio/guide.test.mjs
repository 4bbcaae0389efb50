// The "after" example of docs/socketio-migration.md, run as written: the block between its
// guide-example markers is written next to this file (so that it imports this folder's
// socket.io-client), imported, and used by alice and bob to chat and follow a room, which it
// follows again after a lost connection.
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { harness, mint, until, user } from './support.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const GUIDE = join(here, '..', '..', 'docs', 'socketio-migration.md');
const MODULE = join(here, `guide-example-${process.pid}.mjs`);

function example() {
  const text = readFileSync(GUIDE, 'utf8');
  const block = text.match(/<!-- guide-example:start -->\n```js\n([\s\S]*?)```\n<!-- guide-example:end -->/);
  assert.ok(block, 'docs/socketio-migration.md has its guide-example block');
  return block[1];
}

const h = harness();
after(() => rmSync(MODULE, { force: true }));

describe('the migration guide', () => {
  test('its example chats and follows a room as the guide says', async () => {
    writeFileSync(MODULE, example());
    const { connectChat } = await import(pathToFileURL(MODULE).href);
    const aliceId = user('alice');
    const bobId = user('bob');
    const room = `job:${user('render')}`;
    const atBob = [];
    const alice = connectChat({ url: h.d.url, token: mint(aliceId, { rooms: [] }), onMessage: () => {} });
    const bob = connectChat({ url: h.d.url, token: mint(bobId, { rooms: [room] }), onMessage: (m, seq) => atBob.push([m.body, seq]) });
    try {
      await until(() => alice.socket.connected && bob.socket.connected, 5000, 'both connected');
      const message = await alice.send(bobId, 'hi bob');
      assert.equal(message.body, 'hi bob');
      await until(() => atBob.length === 1, 5000, "bob's message");
      assert.deepEqual(atBob, [['hi bob', 1]]);
      const followed = await bob.follow(room);
      assert.equal(followed.room, room);
      // After a lost connection the example follows its rooms again by itself.
      const pubs = [];
      bob.socket.on('job.progress', (data) => pubs.push(data.pct));
      const back = new Promise((res) => bob.socket.once('connect', res));
      bob.socket.io.engine.close();
      await back;
      await until(async () => (await h.api('POST', '/publish', { room, event: 'job.progress', data: { pct: 1 } })).delivered === 1, 5000, 'the room followed again');
      await until(() => pubs.length >= 1, 5000, 'a publication after the reconnect');
      await assert.rejects(alice.follow(room), (err) => err.code === 'FORBIDDEN', "a room outside alice's token");
    } finally {
      alice.socket.disconnect();
      bob.socket.disconnect();
    }
  });
});

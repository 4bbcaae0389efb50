// socket.io-client's browser bundle (from node_modules) in headless Chromium, driven by
// playwright-core: a page of its own origin (a static server here, on another port of
// 127.0.0.1, as an app's page would be) loads it; alice and bob connect to the daemon with their
// tokens in the CONNECT auth payload (cross-origin: the daemon's CORS rules apply to polling),
// chat with acks and follow an app room; once with the default transports (long-polling
// upgraded to WebSocket), once with long-polling only.
//
// Run by tests/test_socketio_clients.py with CHROMIUM_PATH set; skipped without Chromium.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import { harness, mint, user } from './support.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const require = createRequire(import.meta.url);
const BUNDLE = readFileSync(join(dirname(require.resolve('socket.io-client/package.json')), 'dist', 'socket.io.min.js'), 'utf8');
const PAGE = '<!doctype html><meta charset="utf-8"><title>socket.io-client</title><script src="/socket.io.min.js"></script>';

/** The app's own origin: the page and socket.io-client's bundle, nothing else. */
function appServer() {
  const server = createServer((req, res) => {
    if (req.url === '/socket.io.min.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(BUNDLE);
    else if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    else res.writeHead(404).end();
  });
  return new Promise((res) => server.listen(0, '127.0.0.1', () => res(server)));
}

const h = harness();
let browser;
let app;
let origin;

// The scenario, run inside the page: alice opens a conversation with bob and sends a message
// with an ack; bob gets message.new with its {room, seq} and reads it; both
// subscribe to a room and get a publication made through the server API by the test.
async function scenario({ url, path, transports, aliceToken, bobToken, bobId, room }) {
  const wait = (socket, name, ms = 5000) =>
    new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no ${name} within ${ms} ms`)), ms);
      socket.once(name, (...args) => {
        clearTimeout(t);
        res(args);
      });
    });
  const open = async (token) => {
    const s = io(url, { path, transports, auth: { token }, forceNew: true });
    await wait(s, 'connect');
    return s;
  };
  const alice = await open(aliceToken);
  const bob = await open(bobToken);
  const opened = await alice.timeout(5000).emitWithAck('conversation.open', { user_id: bobId });
  const conversation = opened.data.conversation;
  const arrives = wait(bob, 'message.new');
  const sent = await alice.timeout(5000).emitWithAck('message.send', { conversation_id: conversation.id, client_id: 'b-1', body: 'from Chromium' });
  const [data, meta] = await arrives;
  const receipt = wait(alice, 'receipt.updated');
  const read = await bob.timeout(5000).emitWithAck('message.read', { conversation_id: conversation.id, seq: meta.seq });
  const [r] = await receipt;
  const sub = await bob.timeout(5000).emitWithAck('subscribe', { room });
  window.publications = [];
  bob.on('job.progress', (...args) => window.publications.push(args));
  window.sockets = [alice, bob];
  return {
    sentOk: sent.ok,
    body: data.message.body,
    meta,
    readSeq: read.data.read_seq,
    receiptSeq: r.read_seq,
    subOk: sub.ok,
    transports: [alice.io.engine.transport.name, bob.io.engine.transport.name],
    conversationId: conversation.id,
  };
}

describe('socket.io-client in headless Chromium', { skip: !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}` }, () => {
  before(async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
    app = await appServer();
    origin = `http://127.0.0.1:${app.address().port}`;
  });
  after(async () => {
    await browser?.close();
    app?.close();
  });

  for (const [name, transports] of [
    ['polling upgraded to WebSocket', ['polling', 'websocket']],
    ['long-polling only', ['polling']],
  ]) {
    test(`${name}: chat with acks, a receipt and a room publication`, async () => {
      const page = await browser.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e));
      await page.goto(`${origin}/`);
      const aliceId = user('alice');
      const bobId = user('bob');
      const room = `job:${user('browser')}`;
      const out = await page.evaluate(scenario, {
        url: h.d.url,
        path: '/socket.io/',
        transports,
        aliceToken: mint(aliceId),
        bobToken: mint(bobId, { rooms: [room] }),
        bobId,
        room,
      });
      assert.equal(out.sentOk, true);
      assert.equal(out.body, 'from Chromium');
      assert.deepEqual({ ...out.meta }, { room: `conversation:${out.conversationId}`, seq: 1 });
      assert.equal(out.readSeq, 1);
      assert.equal(out.receiptSeq, 1);
      assert.equal(out.subOk, true);
      await h.api('POST', '/publish', { room, event: 'job.progress', data: { pct: 50 } });
      await page.waitForFunction(() => window.publications.length === 1, null, { timeout: 5000 });
      const [pub, pubMeta] = await page.evaluate(() => window.publications[0]);
      assert.equal(pub.pct, 50);
      assert.equal(pubMeta.room, room);
      assert.equal(pubMeta.seq, 1);
      if (transports.length === 1) assert.deepEqual(out.transports, ['polling', 'polling']);
      else {
        const now = await page.evaluate(async () => {
          for (const s of window.sockets)
            if (s.io.engine.transport.name !== 'websocket') await new Promise((r) => s.io.engine.once('upgrade', r));
          return window.sockets.map((s) => s.io.engine.transport.name);
        });
        assert.deepEqual(now, ['websocket', 'websocket']);
      }
      await page.evaluate(() => window.sockets.forEach((s) => s.disconnect()));
      assert.deepEqual(errors, []);
      await page.close();
    });
  }
});

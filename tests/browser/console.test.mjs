// The operator console (/console) in headless Chromium: refused without a key, signed in with
// one; every view loads, the live counters move when a client connects and publishes, a dead job
// is retried from the page, and markup stored in names, bodies, room ids and job fields shows as
// text. A screenshot of each view goes to $ARTIFACTS as console-<view>.png.
//
// Run by tests/test_console.py (with node --experimental-websocket, for the test's own client),
// which starts the daemon, stores the dead job and the markup, and sets
//   CONSOLE_URL    the daemon's base URL (http://127.0.0.1:PORT)
//   API_KEY        an API key of the daemon
//   COUNTER_TOKEN  a user token for the client that connects and publishes
//   DEAD_JOB_ID    the dead job to retry
//   XSS            JSON: the markup stored as {user, room, body, queue, kind, error}
//   CHROMIUM_PATH  the browser (default /usr/bin/chromium)
//   ARTIFACTS      where screenshots go (default ../artifacts)
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.CONSOLE_URL;
const KEY = process.env.API_KEY;
const XSS = JSON.parse(process.env.XSS || '{}');
const ARTIFACTS = resolve(process.env.ARTIFACTS || join(here, '..', 'artifacts'));
const WAIT_MS = 10_000;

assert.ok(BASE && KEY && process.env.COUNTER_TOKEN && process.env.DEAD_JOB_ID, 'run by tests/test_console.py');
mkdirSync(ARTIFACTS, { recursive: true });

let browser;
let page;
let counterSocket;
const errors = [];

const snap = (name) => page.screenshot({ path: join(ARTIFACTS, `console-${name}.png`), fullPage: true });
const value = async (id) => Number(await page.locator(`#${id}`).getAttribute('data-value'));

/** Nothing the server sent ran or became markup: no script or image element beyond the page's own. */
async function assertNoMarkupFromData() {
  const found = await page.evaluate(() => ({
    scripts: [...document.querySelectorAll('script')].map((s) => s.getAttribute('src')),
    images: document.querySelectorAll('img').length,
    bold: document.querySelectorAll('main b').length,
    xss: window.__xss ?? null,
  }));
  assert.deepEqual(found, { scripts: ['/console/console.js'], images: 0, bold: 0, xss: null });
}

function socketOf(token) {
  const url = `${BASE.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(token)}`;
  const socket = new WebSocket(url);
  const frames = [];
  const waiters = [];
  socket.addEventListener('message', (message) => {
    const frame = JSON.parse(message.data);
    frames.push(frame);
    for (const waiter of waiters.splice(0)) waiter();
  });
  socket.closed = new Promise((done) => {
    socket.addEventListener('close', (event) => {
      for (const waiter of waiters.splice(0)) waiter();
      done(event.code);
    });
  });
  socket.next = async (test) => {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const index = frames.findIndex(test);
      if (index >= 0) return frames.splice(index, 1)[0];
      assert.ok(Date.now() < deadline && socket.readyState <= 1, 'no such frame came');
      await new Promise((done) => {
        waiters.push(done);
        setTimeout(done, 200);
      });
    }
  };
  return socket;
}

describe('the operator console in Chromium', { concurrency: false }, () => {
  before(async () => {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: ['--no-sandbox'],
      headless: true,
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (err) => errors.push(String(err)));
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(msg.text());
    });
  });

  after(async () => {
    counterSocket?.close();
    await browser?.close();
  });

  it('is served with a strict policy and refuses without a key', async () => {
    const response = await page.goto(`${BASE}/console`);
    const policy = response.headers()['content-security-policy'];
    assert.match(policy, /script-src 'self';/);
    assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/);
    await page.locator('body[data-ready="true"]').waitFor();
    assert.equal(await page.locator('#app').isHidden(), true);
    assert.equal(await page.locator('#sign-in').isVisible(), true);
    // The data routes refuse a request without the key, from the page as from anywhere.
    const status = await page.evaluate(async () => (await fetch('/server/v1/stats')).status);
    assert.equal(status, 401);
    await page.fill('#api-key', 'not-a-key-of-this-server');
    await page.click('#sign-in-form button[type="submit"]');
    await page.locator('#sign-in-error', { hasText: 'Refused' }).waitFor();
    assert.equal(await page.locator('#app').isHidden(), true);
    await snap('sign-in');
  });

  it('signs in with a key kept in memory only: nodes, readiness and presence load', async () => {
    await page.fill('#api-key', KEY);
    await page.click('#sign-in-form button[type="submit"]');
    await page.locator('#app').waitFor();
    assert.equal(await page.inputValue('#api-key'), '');
    const kept = await page.evaluate(() => ({ cookie: document.cookie, local: localStorage.length, session: sessionStorage.length }));
    assert.deepEqual(kept, { cookie: '', local: 0, session: 0 });
    await page.locator('#stream-state[data-state="open"]').waitFor();
    await page.locator('#readiness[data-state="loaded"] .status[data-status="ready"]').waitFor();
    await page.locator('#nodes[data-state="loaded"] tr[data-node="t1"]').waitFor();
    await page.locator('#presence-counts[data-state="loaded"]').waitFor();
    await page.waitForFunction(() => document.querySelector('#counter-sockets').dataset.value !== '');
    await snap('nodes');
  });

  it('the live counters move when a client connects and publishes', async () => {
    const sockets = await value('counter-sockets');
    const deliveries = await value('counter-deliveries');
    counterSocket = socketOf(process.env.COUNTER_TOKEN);
    await counterSocket.next((f) => f.event === 'session.ready');
    await page.waitForFunction((n) => Number(document.querySelector('#counter-sockets').dataset.value) > n, sockets);
    counterSocket.send(JSON.stringify({ op: 'subscribe', id: 1, data: { room: XSS.room } }));
    await counterSocket.next((f) => f.id === 1);
    for (let i = 2; i < 5; i++) {
      counterSocket.send(JSON.stringify({ op: 'publish', id: i, data: { room: XSS.room, event: 'count', data: { i } } }));
      await counterSocket.next((f) => f.id === i);
    }
    // The test's markup user, subscribed to the room, gets each publication.
    await page.waitForFunction((n) => Number(document.querySelector('#counter-deliveries').dataset.value) >= n + 3, deliveries);
    await page.waitForFunction(() => Number(document.querySelector('#counter-users-online').dataset.value) >= 2);
  });

  it('sockets and users: search shows markup as text; disconnect and ban act on the user', async () => {
    await page.click('#tabs button[data-view="users"]');
    await page.locator('#users-list[data-state="loaded"]').waitFor();
    const row = page.locator('#users-list tr').filter({ hasText: XSS.user });
    assert.equal(await row.locator('td').first().textContent(), XSS.user);
    await row.locator('button.link').click();
    await page.locator('#user-detail[data-state="loaded"]').waitFor();
    assert.equal(await page.locator('#user-detail .user-id').textContent(), XSS.user);
    assert.equal(await page.locator('#user-detail tbody tr[data-session]').count(), 1);
    await assertNoMarkupFromData();

    await page.fill('#user-id', 'counter-user');
    await page.press('#user-id', 'Enter');
    await page.locator('#user-detail[data-state="loaded"] .ban-state[data-banned="false"]').waitFor();
    assert.equal(await page.locator('#user-detail tbody tr[data-session]').count(), 1);
    await snap('users');
    await page.fill('#ban-minutes', '5');
    await page.click('#ban');
    await page.locator('#user-detail[data-state="loaded"] .ban-state[data-banned="true"]').waitFor();
    await page.locator('#notice', { hasText: 'Banned until' }).waitFor();
    // Closed with the ban's code (4503) or the disconnect's (4510), whichever reached it first.
    assert.ok([4503, 4510].includes(await counterSocket.closed));
    await page.click('#unban');
    await page.locator('#user-detail[data-state="loaded"] .ban-state[data-banned="false"]').waitFor();
  });

  it('rooms: namespaces, and a room whose name and publication are markup, shown as text', async () => {
    await page.click('#tabs button[data-view="rooms"]');
    await page.locator('#namespaces[data-state="loaded"] td', { hasText: 'lab:' }).first().waitFor();
    await page.fill('#room-id', XSS.room);
    await page.press('#room-id', 'Enter');
    await page.locator('#room-detail[data-state="loaded"]').waitFor();
    assert.equal(await page.locator('#room-detail .room-id').textContent(), XSS.room);
    assert.equal(await page.locator('#room-detail tr[data-user] td').first().textContent(), XSS.user);
    const data = await page.locator('#room-detail code').allTextContents();
    assert.ok(data.some((text) => text === JSON.stringify({ body: XSS.body })), data.join('\n'));
    await assertNoMarkupFromData();
    await snap('rooms');
  });

  it('jobs: the dead job shows its markup as text, and a retry from the page queues it again', async () => {
    await page.click('#tabs button[data-view="jobs"]');
    await page.locator('#jobs-list[data-state="loaded"]').waitFor();
    await page.click('#jobs-dead');
    const row = page.locator(`#jobs-list tr[data-job="${process.env.DEAD_JOB_ID}"][data-status="dead"]`);
    await row.waitFor();
    const cells = await row.locator('td').allTextContents();
    assert.equal(cells[1], XSS.queue);
    assert.equal(cells[2], XSS.kind);
    assert.equal(cells[6], XSS.error);
    await row.locator('td button.link').click();
    await page.locator('#job-detail[data-state="loaded"]').waitFor();
    assert.ok((await page.locator('#job-detail').textContent()).includes(XSS.body));
    await assertNoMarkupFromData();
    await snap('jobs');
    await row.locator('button.retry').click();
    await page.locator('#notice', { hasText: `Job ${process.env.DEAD_JOB_ID} is now queued.` }).waitFor();
    await row.waitFor({ state: 'detached' });
    // The queues, streamed: the job's queue now has a queued job, its name shown as text.
    const queue = page.locator('#jobs-queues tr[data-queue]').filter({ hasText: XSS.queue });
    await queue.waitFor();
    assert.equal(await queue.locator('td').first().textContent(), XSS.queue);
    await assertNoMarkupFromData();
    await page.selectOption('#jobs-status', 'queued');
    await page.click('#jobs-form button[type="submit"]');
    await page.locator(`#jobs-list tr[data-job="${process.env.DEAD_JOB_ID}"][data-status="queued"] button.cancel`).waitFor();
  });

  it('push outcomes by FCM code: shown, or "not available on this server"', async () => {
    await page.click('#tabs button[data-view="push"]');
    const box = page.locator('#push-stats:is([data-state="loaded"], [data-state="unavailable"])');
    await box.waitFor();
    if ((await box.getAttribute('data-state')) === 'unavailable') {
      assert.equal(await box.textContent(), 'not available on this server');
    }
    await snap('push');
  });

  it("a user's delivery log and caps: shown, or \"not available on this server\"", async () => {
    await page.click('#tabs button[data-view="deliveries"]');
    await page.fill('#deliveries-user', XSS.user);
    await page.press('#deliveries-user', 'Enter');
    for (const id of ['deliveries-list', 'caps']) {
      const box = page.locator(`#${id}:is([data-state="loaded"], [data-state="unavailable"])`);
      await box.waitFor();
      if ((await box.getAttribute('data-state')) === 'unavailable') {
        assert.equal(await box.textContent(), 'not available on this server');
      }
    }
    await assertNoMarkupFromData();
    await snap('deliveries');
  });

  it('signing out forgets the key and the data', async () => {
    await page.click('#sign-out');
    await page.locator('#sign-in').waitFor();
    assert.equal(await page.locator('#app').isHidden(), true);
    assert.equal(await page.locator('#jobs-list').textContent(), '');
    await page.locator('#stream-state[data-state="idle"]').waitFor();
  });

  it('no error was logged by the page', () => {
    // The refused sign-in and 404s of routes this server lacks are network errors Chromium logs
    // itself; nothing else (a script error, a CSP violation) may be.
    const unexpected = errors.filter((text) => !/Failed to load resource: the server responded with a status of (401|404)/.test(text));
    assert.deepEqual(unexpected, []);
  });
});

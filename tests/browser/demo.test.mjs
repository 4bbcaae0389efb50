// The demo page (examples/web) with the JavaScript SDK in headless Chromium: alice and bob,
// each in a browser context of their own, chat (a message, typing, a receipt, unread badges),
// see each other's presence, watch a render job together and get its notification in the bell.
// A screenshot per step goes to $ARTIFACTS.
//
// Run by tests/test_browser.py, which starts the daemon with the demo served and sets
//   DEMO_URL       the daemon's base URL (http://127.0.0.1:PORT)
//   CHROMIUM_PATH  the browser (default /usr/bin/chromium)
//   ARTIFACTS      where screenshots go (default ../artifacts)
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.DEMO_URL;
const ARTIFACTS = resolve(process.env.ARTIFACTS || join(here, '..', 'artifacts'));
const WAIT_MS = 10_000;

assert.ok(BASE, 'DEMO_URL must name the daemon serving the demo');
mkdirSync(ARTIFACTS, { recursive: true });

let browser;
const users = {};
let shot = 0;

async function snap(name, page) {
  shot += 1;
  await page.screenshot({ path: join(ARTIFACTS, `${String(shot).padStart(2, '0')}-${name}.png`) });
}

async function signIn(name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(new Error(msg.text()));
  });
  page.setDefaultTimeout(WAIT_MS);
  await page.goto(`${BASE}/app/?user=${name}`);
  await page.locator('#conn[data-state="connected"]').waitFor();
  users[name] = { context, page, errors };
  return page;
}

describe('the demo page in Chromium', { concurrency: false }, () => {
  before(async () => {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: ['--no-sandbox'],
      headless: true,
    });
  });

  after(async () => {
    await browser?.close();
  });

  it('alice and bob sign in with development tokens and connect over WebSocket', async () => {
    const signin = await browser.newPage({ viewport: { width: 1280, height: 760 } });
    await signin.goto(`${BASE}/app/`);
    await signin.locator('#signin').waitFor();
    await snap('sign-in', signin);
    await signin.close();

    const alice = await signIn('alice');
    const bob = await signIn('bob');
    await assert.doesNotReject(alice.locator('#conn-text', { hasText: 'Connected over WebSocket' }).waitFor());
    await bob.locator('#conn-text', { hasText: 'Connected over WebSocket' }).waitFor();
  });

  it('alice writes to bob: the message arrives with an unread badge, bob shows online', async () => {
    const { page: alice } = users.alice;
    const { page: bob } = users.bob;
    await alice.fill('#new-chat-user', 'bob');
    await alice.press('#new-chat-user', 'Enter');
    await alice.locator('.conversation.active[data-peer="bob"]').waitFor();
    await alice.locator('.conversation[data-peer="bob"] .dot[data-status="online"]').waitFor();
    await alice.locator('#chat-header .presence-text[data-status="online"]').waitFor();

    await alice.fill('#composer-input', 'Hi Bob! The trailer cut is ready for review.');
    await alice.press('#composer-input', 'Enter');
    await alice.locator('.bubble.own[data-seq="1"] [data-receipt="sent"]').waitFor();

    const badge = bob.locator('.conversation[data-peer="alice"] .badge');
    await badge.waitFor();
    assert.equal(await badge.textContent(), '1');
    assert.match(await bob.locator('.conversation[data-peer="alice"] .preview').textContent(), /trailer cut is ready/);
    assert.match(await bob.title(), /^\(1\) bob/);
    await snap('alice-sent', alice);
    await snap('bob-unread-badge', bob);
  });

  it('bob opens the conversation: the badge clears and alice sees the receipt', async () => {
    const { page: alice } = users.alice;
    const { page: bob } = users.bob;
    await bob.click('.conversation[data-peer="alice"]');
    await bob.locator('.bubble.theirs[data-seq="1"]', { hasText: 'trailer cut is ready' }).waitFor();
    await bob.locator('.conversation[data-peer="alice"] .badge').waitFor({ state: 'detached' });

    await alice.locator('.bubble.own[data-seq="1"] [data-receipt="seen"]').waitFor();
    await alice.locator('.seen-note[data-seen-by="bob"]').waitFor();
    await snap('alice-receipt-seen', alice);
  });

  it('bob types: alice sees it in the chat and in the list, then gets his reply', async () => {
    const { page: alice } = users.alice;
    const { page: bob } = users.bob;
    await bob.locator('#composer-input').pressSequentially('Looks gre', { delay: 20 });
    await alice.locator('#typing', { hasText: 'bob is typing…' }).waitFor();
    await alice.locator('.conversation[data-peer="bob"] .preview.typing').waitFor();
    await snap('alice-sees-typing', alice);

    await bob.locator('#composer-input').pressSequentially('at, approved!');
    await bob.press('#composer-input', 'Enter');
    await alice.locator('.bubble.theirs[data-seq="2"]', { hasText: 'Looks great, approved!' }).waitFor();
    await alice.locator('#typing.on').waitFor({ state: 'detached' });
    // alice has the conversation open: she reads it at once, and bob sees that.
    await bob.locator('.bubble.own[data-seq="2"] [data-receipt="seen"]').waitFor();
    await snap('bob-reply-seen', bob);
  });

  it('presence: bob turns busy, then invisible (offline to alice), then online again', async () => {
    const { page: alice } = users.alice;
    const { page: bob } = users.bob;
    const dot = (status) => alice.locator(`.conversation[data-peer="bob"] .dot[data-status="${status}"]`);
    await bob.selectOption('#my-status', 'busy');
    await dot('busy').waitFor();
    await alice.locator('#chat-header .presence-text[data-status="busy"]').waitFor();
    await snap('alice-sees-bob-busy', alice);
    await bob.selectOption('#my-status', 'invisible');
    await dot('offline').waitFor();
    await bob.selectOption('#my-status', 'online');
    await dot('online').waitFor();
  });

  it('the render job: both watch it, progress is live, and the bell rings when it is done', async () => {
    const { page: alice } = users.alice;
    const { page: bob } = users.bob;
    for (const page of [alice, bob]) {
      await page.locator('#viewers [data-viewer="alice"]').waitFor();
      await page.locator('#viewers [data-viewer="bob"]').waitFor();
    }
    assert.equal(await bob.locator('#bell-badge').isHidden(), true);

    await alice.click('#job-start');
    await bob.locator('#job-card.running').waitFor();
    await bob.waitForFunction(() => Number(document.querySelector('#job-pct').dataset.pct) >= 50);
    await snap('bob-watches-progress', bob);

    await bob.locator('#job-pct[data-pct="100"]').waitFor();
    await alice.locator('#job-card.done').waitFor();
    const badge = bob.locator('#bell-badge');
    await badge.waitFor();
    assert.equal(await badge.textContent(), '1');
    await bob.click('#bell');
    const item = bob.locator('#inbox-list .notification.unread', { hasText: 'Done: Render of trailer.mp4' });
    await item.waitFor();
    await snap('bob-bell-notification', bob);

    await item.click();
    await bob.locator('#inbox-list .notification:not(.unread)', { hasText: 'Done: Render of trailer.mp4' }).waitFor();
    await badge.waitFor({ state: 'hidden' });
    // alice watched too: her bell has the same notification.
    await alice.locator('#bell-badge', { hasText: '1' }).waitFor();
  });

  it('no page logged an error', () => {
    for (const [name, { errors }] of Object.entries(users)) assert.deepEqual(errors.map(String), [], `${name}'s page`);
  });
});

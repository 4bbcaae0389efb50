// Load generator for bench/sdk.py: realtimed-client instances (the built SDK in
// clients/js/dist), or raw `ws` sockets as the yardstick. Both use the `ws` package of
// bench/, so the difference between them is the SDK's own work.
//
// Commands arrive on stdin as JSON lines; answers leave on stdout as JSON lines.
//   {"cmd":"sdk","url":...,"secret":...,"count":N,"prefix":"u","rooms":["r:all","r:g{g}","r:u{i}"],
//    "groups":G,"conversation":true,"concurrency":C}
//                  N SDK clients, client i subscribed to the rooms ({i}: its index, {g}: i % G)
//                  and, with conversation, knowing one 1:1 conversation (chat.open)
//   {"cmd":"raw","url":...,"secret":...,"count":N,"prefix":"u","rooms":[...],"groups":G,"concurrency":C}
//                  N raw ws sockets (token in the URL, subscribe ops, JSON.parse of every frame)
//   {"cmd":"arm"}  start a restart window: forget closes and resubscriptions so far
//   {"cmd":"wait","ready":s,"signal":s,"timeout_s":T}
//                  wait until every client has every room resubscribed (the `subscribed`
//                  event of each Subscription) after the close, or T; answer the figures
//                  (times in ms from the daemon's readiness, from the client's close and
//                  from the signal; `ready` and `signal` are Unix times in seconds)
//   {"cmd":"settle","timeout_s":T}
//                  bring every SDK client back (reconnectNow skips a backoff left from an
//                  earlier window), wait until all are connected or T; answer how many are
//   {"cmd":"mark"} start a CPU window; {"cmd":"report"}: events and CPU since the mark
//   {"cmd":"close"}
import { createHmac } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';
import { RealtimeClient } from '../clients/js/dist/index.js';

const sdk = []; // one state per SDK client
const raw = [];
let received = 0;
let mark = null;
let resetsSinceMark = 0; // SDK: room resets (a skipped seq) during a CPU window
let disorder = 0; // raw: events whose seq was not above the last one seen on that socket
let windowOpen = false;
const lag = monitorEventLoopDelay({ resolution: 10 }); // this process's event loop, during a restart window

function b64url(x) {
  return Buffer.from(x).toString('base64url');
}

function mint(secret, sub, rooms) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, iat: now - 1, exp: now + 7200, rooms }));
  const sig = b64url(createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

const nowMs = () => performance.timeOrigin + performance.now();
const roomsOf = (templates, i, groups) => templates.map((t) => t.replaceAll('{i}', String(i)).replaceAll('{g}', String(i % groups)));

async function pool(count, concurrency, one) {
  let next = 0;
  let failed = 0;
  let error = null;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        await one(i);
      } catch (e) {
        failed += 1;
        error ??= String(e?.message ?? e);
      }
    }
  }
  const start = nowMs();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { failed, error, seconds: (nowMs() - start) / 1000 };
}

async function openSdk({ url, secret, count, prefix, rooms, groups = 1, conversation = false, concurrency = 32 }) {
  const out = await pool(count, concurrency, async (i) => {
    const user = `${prefix}${i}`;
    const mine = roomsOf(rooms, i, groups);
    const st = { rooms: mine, pending: new Set(), closeAt: undefined, doneAt: undefined, attempts: 0, recovered: 0, resets: {}, replayed: 0, errors: 0, codes: {}, failures: {}, log: [] };
    // ws itself, with its error (refused, reset, an HTTP status) noted: the SDK sees only 1006
    const Traced = class extends WebSocket {
      constructor(address) {
        super(address);
        this.on('error', (e) => {
          if (!windowOpen) return;
          const why = e.code ?? e.message;
          st.failures[why] = (st.failures[why] ?? 0) + 1;
          st.log.push([Math.round(nowMs()), 'ws error', why]);
        });
      }
    };
    const c = (st.c = new RealtimeClient({ url, token: mint(secret, user, ['bench:*']), WebSocket: Traced, onlineTarget: null }));
    c.on('disconnected', (e) => {
      if (!windowOpen) return;
      st.closeAt ??= nowMs();
      st.codes[e.code] = (st.codes[e.code] ?? 0) + 1;
      st.log.push([Math.round(nowMs()), 'disconnected', e.code, e.reason, e.delayMs]);
    });
    c.on('connecting', (e) => {
      if (!windowOpen) return;
      st.attempts++;
      st.log.push([Math.round(nowMs()), 'connecting', e.transport]);
    });
    c.on('connected', (e) => {
      if (!windowOpen) return;
      st.log.push([Math.round(nowMs()), 'connected', e.transport]);
      // Over SSE no `subscribed` comes: the stream carries the rooms from its start.
      if (e.transport === 'sse' && st.closeAt !== undefined && st.doneAt === undefined) {
        st.sse = true;
        st.pending.clear();
        st.doneAt = nowMs();
      }
    });
    try {
      await c.connect();
      for (const room of mine) {
        const s = await c.subscribe(room, (e) => {
          received++;
          if (e.replayed && windowOpen) st.replayed++;
        });
        s.on('subscribed', (e) => {
          if (!windowOpen || st.closeAt === undefined || !st.pending.delete(e.room)) return;
          if (e.recovered) st.recovered++;
          if (!st.pending.size) st.doneAt = nowMs();
        });
        s.on('reset', (e) => {
          if (windowOpen) st.resets[e.reason] = (st.resets[e.reason] ?? 0) + 1;
          else if (mark) resetsSinceMark++;
        });
        s.on('error', () => windowOpen && st.errors++);
      }
      if (conversation) await c.chat.open(`${prefix}peer${i}`);
    } catch (e) {
      c.close();
      throw e;
    }
    sdk.push(st);
  });
  return { ...out, clients: sdk.length };
}

function openRawOne(url, token, rooms) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${token}`, { perMessageDeflate: false });
    let waiting = rooms.length;
    const last = new Map();
    ws.on('error', reject);
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (f.event === 'session.ready') rooms.forEach((room, k) => ws.send(JSON.stringify({ id: k + 1, op: 'subscribe', data: { room } })));
      else if (f.ok === false) reject(new Error(JSON.stringify(f.error)));
      else if (f.ok && --waiting === 0) resolve(ws);
      else if (typeof f.room === 'string') {
        received++;
        if (typeof f.seq === 'number') {
          if (f.seq <= (last.get(f.room) ?? 0)) disorder++;
          last.set(f.room, f.seq);
        }
      }
    });
  });
}

async function openRaw({ url, secret, count, prefix, rooms, groups = 1, concurrency = 32 }) {
  const base = url.replace(/^http/, 'ws') + '/ws';
  const out = await pool(count, concurrency, async (i) => {
    const mine = roomsOf(rooms, i, groups);
    raw.push(await openRawOne(base, mint(secret, `${prefix}${i}`, ['bench:*']), mine));
  });
  return { ...out, clients: raw.length };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(values) {
  const sorted = Float64Array.from(values).sort();
  const round = (x) => (x === null ? null : Math.round(x));
  return { p50: round(percentile(sorted, 50)), p99: round(percentile(sorted, 99)), max: round(sorted.length ? sorted[sorted.length - 1] : null) };
}

function arm() {
  for (const st of sdk) {
    st.pending = new Set(st.rooms);
    st.closeAt = st.doneAt = undefined;
    st.attempts = st.recovered = st.replayed = st.errors = 0;
    st.codes = {};
    st.resets = {};
    st.failures = {};
    st.log = [];
    st.sse = false;
    // Not back from an earlier window: its close counts from now.
    if (st.c.state !== 'connected') st.closeAt = nowMs();
  }
  lag.reset();
  lag.enable();
  windowOpen = true;
  return { ok: true };
}

async function wait({ ready, signal, timeout_s }) {
  const until = nowMs() + timeout_s * 1000;
  while (nowMs() < until && sdk.some((st) => st.doneAt === undefined)) await new Promise((r) => setTimeout(r, 50));
  windowOpen = false;
  lag.disable();
  const done = sdk.filter((st) => st.doneAt !== undefined);
  const codes = {};
  const resets = {};
  const failures = {};
  for (const st of sdk) {
    for (const [k, n] of Object.entries(st.failures)) failures[k] = (failures[k] ?? 0) + n;
    for (const [k, n] of Object.entries(st.codes)) codes[k] = (codes[k] ?? 0) + n;
    for (const [k, n] of Object.entries(st.resets)) resets[k] = (resets[k] ?? 0) + n;
  }
  const attempts = sdk.map((st) => st.attempts);
  return {
    clients: sdk.length,
    done: done.length,
    closed: sdk.filter((st) => st.closeAt !== undefined).length,
    from_ready: summary(done.map((st) => st.doneAt - ready * 1000)),
    from_close: summary(done.map((st) => st.doneAt - st.closeAt)),
    from_signal: summary(done.map((st) => st.doneAt - signal * 1000)),
    all_recovered: sdk.filter((st) => st.rooms.length && st.recovered === st.rooms.length).length,
    rooms: sdk.reduce((n, st) => n + st.rooms.length, 0),
    rooms_recovered: sdk.reduce((n, st) => n + st.recovered, 0),
    resets,
    replayed: sdk.reduce((n, st) => n + st.replayed, 0),
    errors: sdk.reduce((n, st) => n + st.errors, 0),
    attempts_mean: attempts.reduce((a, b) => a + b, 0) / Math.max(1, attempts.length),
    attempts_max: Math.max(0, ...attempts),
    close_codes: codes,
    failures,
    sse: sdk.filter((st) => st.sse).length,
    loop_delay_ms: { p50: lag.percentile(50) / 1e6, p99: lag.percentile(99) / 1e6, max: lag.max / 1e6 },
    // a few clients still waiting, to see why
    stuck: sdk
      .filter((st) => st.doneAt === undefined)
      .slice(0, 3)
      .map((st) => ({ state: st.c.state, transport: st.c.transport, closed: st.closeAt !== undefined, rooms: [...st.pending], attempts: st.attempts, codes: st.codes, requests: [...(st.c._pending?.values() ?? [])].map((p) => p.op), log: st.log.map(([t, ...x]) => [Math.round(t - ready * 1000), ...x]) })),
  };
}

async function settle({ timeout_s }) {
  const until = nowMs() + timeout_s * 1000;
  const back = () => sdk.filter((st) => st.c.state === 'connected').length;
  while (nowMs() < until && back() < sdk.length) {
    for (const st of sdk) if (st.c.state === 'disconnected') st.c.reconnectNow();
    await new Promise((r) => setTimeout(r, 200));
  }
  return { connected: back(), clients: sdk.length };
}

function cpuMark() {
  received = resetsSinceMark = disorder = 0;
  mark = { cpu: process.cpuUsage(), at: nowMs() };
  return { ok: true };
}

function cpuReport() {
  const cpu = process.cpuUsage(mark.cpu);
  return { received, resets: resetsSinceMark, disorder, user_us: cpu.user, system_us: cpu.system, seconds: (nowMs() - mark.at) / 1000 };
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const msg = JSON.parse(line);
  let out;
  if (msg.cmd === 'sdk') out = await openSdk(msg);
  else if (msg.cmd === 'raw') out = await openRaw(msg);
  else if (msg.cmd === 'arm') out = arm();
  else if (msg.cmd === 'wait') out = await wait(msg);
  else if (msg.cmd === 'settle') out = await settle(msg);
  else if (msg.cmd === 'mark') out = cpuMark();
  else if (msg.cmd === 'report') out = cpuReport();
  else if (msg.cmd === 'close') {
    for (const st of sdk) st.c.close();
    for (const ws of raw) ws.terminate();
    process.stdout.write(JSON.stringify({ ok: true }) + '\n');
    process.exit(0);
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

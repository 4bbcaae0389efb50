// Load generator for bench/fanout.py: opens sockets, subscribes them to one room,
// and measures publish-to-receive latency of every event it gets.
//
// Commands arrive on stdin as JSON lines; answers leave on stdout as JSON lines.
//   {"cmd":"connect","url":...,"count":N,"secret":...,"room":...,"concurrency":C,"prefix":"u"}
//   {"cmd":"storm","url":...,"count":N,"secret":...,"room":...,"prefix":"s"}
//                           open N sockets all at once; percentiles of each one's
//                           connect (upgrade, session.ready, subscribe reply)
//   {"cmd":"mark"}          start a measurement window
//   {"cmd":"report"}        received count and latency percentiles since the mark
//   {"cmd":"close"}
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const sockets = [];
let received = 0;
let latencies = [];
let measuring = false;

function b64url(buf) {
  return Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

function mint(secret, sub, rooms) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + 7200, rooms }));
  const sig = b64url(createHmac("sha256", secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

function nowMs() {
  return performance.timeOrigin + performance.now();
}

function onMessage(data) {
  const text = data.toString();
  if (text.charCodeAt(2) !== 101) return; // only {"event":...}
  const frame = JSON.parse(text);
  if (frame.event !== "bench") return;
  received += 1;
  if (measuring) latencies.push(nowMs() - frame.data.t);
}

function openOne(url, token, room) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${token}`, { perMessageDeflate: false });
    let stage = 0;
    ws.on("error", reject);
    ws.on("message", (data) => {
      if (stage === 0) {
        stage = 1;
        ws.send(JSON.stringify({ id: 1, op: "subscribe", data: { room } }));
        return;
      }
      if (stage === 1) {
        const frame = JSON.parse(data.toString());
        if (frame.id === 1) {
          stage = 2;
          ws.removeAllListeners("message");
          ws.on("message", onMessage);
          resolve(ws);
        }
      }
    });
  });
}

async function connect({ url, count, secret, room, concurrency, prefix }) {
  const start = nowMs();
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        sockets.push(await openOne(url, mint(secret, `${prefix}${i}`, [room]), room));
      } catch (e) {
        failed += 1;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (nowMs() - start) / 1000;
  return { connected: sockets.length, failed, seconds, per_s: sockets.length / seconds };
}

async function storm({ url, count, secret, room, prefix }) {
  const start = nowMs();
  const times = [];
  let failed = 0;
  await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const t0 = nowMs();
      try {
        sockets.push(await openOne(url, mint(secret, `${prefix}${i}`, [room]), room));
        times.push(nowMs() - t0);
      } catch (e) {
        failed += 1;
      }
    }),
  );
  const sorted = Float64Array.from(times).sort();
  return {
    connected: times.length, failed, seconds: (nowMs() - start) / 1000,
    p50: percentile(sorted, 50), p95: percentile(sorted, 95), max: sorted.length ? sorted[sorted.length - 1] : null,
  };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const msg = JSON.parse(line);
  let out;
  if (msg.cmd === "connect") out = await connect(msg);
  else if (msg.cmd === "storm") out = await storm(msg);
  else if (msg.cmd === "mark") {
    received = 0;
    latencies = [];
    measuring = true;
    out = { ok: true };
  } else if (msg.cmd === "report") {
    const sorted = Float64Array.from(latencies).sort();
    out = { received, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.length ? sorted[sorted.length - 1] : null };
    measuring = false;
  } else if (msg.cmd === "close") {
    for (const ws of sockets) ws.terminate();
    out = { ok: true };
    process.stdout.write(JSON.stringify(out) + "\n");
    process.exit(0);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

// Load generator for bench/socketio.py: socket.io-client sockets (WebSocket transport, one
// Engine.IO connection each), subscribed to one room with an acknowledged `subscribe`, that
// measure the publish-to-receive latency of every `bench` event. It serves realtimed's Socket.IO
// door and the Socket.IO 4 server of bench/socketio_server.mjs alike.
//
// Commands arrive on stdin as JSON lines; answers leave on stdout as JSON lines (the same as
// bench/fanout_client.mjs):
//   {"cmd":"connect","url":...,"path":"/socket.io/","count":N,"secret":...,"room":...,"concurrency":C,"prefix":"u"}
//   {"cmd":"mark"}          start a measurement window
//   {"cmd":"report"}        received count and latency percentiles since the mark
//   {"cmd":"close"}
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const sockets = [];
let received = 0;
let latencies = [];
let measuring = false;

function b64url(x) {
  return Buffer.from(x).toString("base64url");
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

function onBench(data) {
  received += 1;
  if (measuring) latencies.push(nowMs() - data.t);
}

function openOne(url, path, token, room) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { path, transports: ["websocket"], auth: { token }, forceNew: true, reconnection: false });
    socket.once("connect_error", (err) => {
      socket.disconnect();
      reject(err);
    });
    socket.once("connect", async () => {
      try {
        const ack = await socket.timeout(30_000).emitWithAck("subscribe", { room });
        if (!ack?.ok) throw new Error(JSON.stringify(ack));
        socket.on("bench", onBench);
        resolve(socket);
      } catch (err) {
        socket.disconnect();
        reject(err);
      }
    });
  });
}

async function connect({ url, path, count, secret, room, concurrency, prefix }) {
  const start = nowMs();
  let next = 0;
  let failed = 0;
  let firstError = null;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        sockets.push(await openOne(url, path, mint(secret, `${prefix}${i}`, [room]), room));
      } catch (e) {
        failed += 1;
        firstError ??= String(e?.message ?? e);
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (nowMs() - start) / 1000;
  return { connected: sockets.length, failed, first_error: firstError, seconds, per_s: sockets.length / seconds };
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
    for (const s of sockets) s.disconnect();
    process.stdout.write(JSON.stringify({ ok: true }) + "\n");
    process.exit(0);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

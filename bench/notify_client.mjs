// Load generator for bench/notify.py: opens one socket per online user and
// records when each one receives its notification.new.
//
// Commands arrive on stdin as JSON lines; answers leave on stdout as JSON lines.
//   {"cmd":"connect","url":...,"count":N,"secret":...,"concurrency":C,"prefix":"u"}
//   {"cmd":"mark"}                          forget what was received
//   {"cmd":"wait","count":N,"timeout_s":T}  until N sockets got notification.new (or T)
//   {"cmd":"close"}
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const sockets = [];
let firstAt = null;
let lastAt = null;
let received = 0;

function b64url(buf) {
  return Buffer.from(buf).toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

function mint(secret, sub) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + 7200 }));
  const sig = b64url(createHmac("sha256", secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

function nowMs() {
  return performance.timeOrigin + performance.now();
}

function onMessage(data) {
  const text = data.toString();
  if (!text.includes('"notification.new"')) return;
  const at = nowMs();
  received += 1;
  if (firstAt === null) firstAt = at;
  lastAt = at;
}

function openOne(url, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${token}`, { perMessageDeflate: false });
    ws.on("error", reject);
    ws.once("message", () => {
      ws.on("message", onMessage); // the first frame is session.ready
      resolve(ws);
    });
  });
}

async function connect({ url, count, secret, concurrency, prefix }) {
  const start = nowMs();
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        sockets.push(await openOne(url, mint(secret, `${prefix}${i}`)));
      } catch (e) {
        failed += 1;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { connected: sockets.length, failed, seconds: (nowMs() - start) / 1000 };
}

async function wait({ count, timeout_s }) {
  const deadline = nowMs() + timeout_s * 1000;
  while (received < count && nowMs() < deadline) {
    await new Promise((r) => setTimeout(r, 2));
  }
  return { received, first_at_ms: firstAt, last_at_ms: lastAt };
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const msg = JSON.parse(line);
  let out;
  if (msg.cmd === "connect") out = await connect(msg);
  else if (msg.cmd === "mark") {
    received = 0;
    firstAt = lastAt = null;
    out = { ok: true };
  } else if (msg.cmd === "wait") out = await wait(msg);
  else if (msg.cmd === "close") {
    for (const ws of sockets) ws.terminate();
    process.stdout.write(JSON.stringify({ ok: true }) + "\n");
    process.exit(0);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

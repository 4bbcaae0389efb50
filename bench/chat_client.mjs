// Load generator for bench/chat.py: pairs of users, each pair in its own 1:1
// conversation; one side of each pair sends messages, the other receives them.
//
// Commands arrive on stdin as JSON lines; answers leave on stdout as JSON lines.
//   {"cmd":"connect","url":...,"pairs":N,"secret":...,"concurrency":C,"prefix":"p"}
//   {"cmd":"run","rate":R,"seconds":S}   send R messages a second in all, spread over the pairs
//   {"cmd":"close"}
import { createHmac } from "node:crypto";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const pairs = []; // {sender, receiver, cid}
let run = null; // the measurement in progress
let nextId = 2;

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

function open(url, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${token}`, { perMessageDeflate: false });
    ws.on("error", reject);
    ws.once("message", () => resolve(ws)); // session.ready
  });
}

function request(ws, id, op, data) {
  return new Promise((resolve) => {
    const listener = (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.id === id) {
        ws.off("message", listener);
        resolve(frame);
      }
    };
    ws.on("message", listener);
    ws.send(JSON.stringify({ id, op, data }));
  });
}

function onSenderFrame(raw) {
  if (!run) return;
  const text = raw.toString();
  if (text.charCodeAt(2) !== 105) return; // only replies {"id":...}
  const frame = JSON.parse(text);
  const sentAt = run.pending.get(frame.id);
  if (sentAt === undefined) return;
  run.pending.delete(frame.id);
  if (frame.ok) {
    run.acked += 1;
    run.ackLatencies.push(nowMs() - sentAt);
  } else {
    run.errors += 1;
    run.lastError = frame.error;
  }
}

function onReceiverFrame(raw) {
  if (!run) return;
  const text = raw.toString();
  if (!text.startsWith('{"event":"message.new"')) return;
  const frame = JSON.parse(text);
  run.delivered += 1;
  run.latencies.push(nowMs() - Number(frame.data.message.body.slice(0, 17)));
}

async function connect({ url, pairs: count, secret, concurrency, prefix }) {
  const start = nowMs();
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      try {
        const sender = await open(url, mint(secret, `${prefix}${i}a`));
        const receiver = await open(url, mint(secret, `${prefix}${i}b`));
        const reply = await request(sender, 1, "conversation.open", { user_id: `${prefix}${i}b` });
        if (!reply.ok) throw new Error(JSON.stringify(reply.error));
        sender.on("message", onSenderFrame);
        receiver.on("message", onReceiverFrame);
        pairs.push({ sender, receiver, cid: reply.data.conversation.id });
      } catch (e) {
        failed += 1;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (nowMs() - start) / 1000;
  return { pairs: pairs.length, failed, seconds };
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function pad(t) {
  // 17 characters of milliseconds since the epoch (with a fraction), then text.
  return t.toFixed(3).padStart(17, "0") + " hello from the chat bench";
}

async function measure({ rate, seconds }) {
  run = { pending: new Map(), acked: 0, errors: 0, delivered: 0, latencies: [], ackLatencies: [], lastError: null };
  const start = nowMs();
  let sent = 0;
  let cursor = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const elapsed = (nowMs() - start) / 1000;
      if (elapsed >= seconds) return resolve();
      const due = Math.floor(elapsed * rate);
      while (sent < due) {
        const pair = pairs[cursor];
        cursor = (cursor + 1) % pairs.length;
        const id = nextId++;
        const t = nowMs();
        run.pending.set(id, t);
        pair.sender.send(
          JSON.stringify({
            id,
            op: "message.send",
            data: { conversation_id: pair.cid, client_id: `b${id}`, body: pad(t) },
          }),
        );
        sent += 1;
      }
      setTimeout(tick, 2);
    };
    tick();
  });
  const elapsed = (nowMs() - start) / 1000;
  // Let what is in flight arrive.
  const settle = nowMs();
  while ((run.acked + run.errors < sent || run.delivered < run.acked) && nowMs() - settle < 5000) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const out = {
    sent,
    elapsed,
    acked: run.acked,
    errors: run.errors,
    last_error: run.lastError,
    delivered: run.delivered,
    p50: percentile(run.latencies, 50),
    p99: percentile(run.latencies, 99),
    max: run.latencies.length ? Math.max(...run.latencies) : null,
    ack_p50: percentile(run.ackLatencies, 50),
    ack_p99: percentile(run.ackLatencies, 99),
  };
  run = null;
  return out;
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const msg = JSON.parse(line);
  let out;
  if (msg.cmd === "connect") out = await connect(msg);
  else if (msg.cmd === "run") out = await measure(msg);
  else if (msg.cmd === "close") {
    for (const p of pairs) {
      p.sender.terminate();
      p.receiver.terminate();
    }
    process.stdout.write(JSON.stringify({ ok: true }) + "\n");
    process.exit(0);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

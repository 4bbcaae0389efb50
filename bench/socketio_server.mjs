// The yardstick of bench/socketio.py: a Socket.IO 4 server on Node, doing what realtimed's
// Socket.IO door does in the bench: it verifies an HS256 token from the CONNECT auth payload,
// joins a socket to a room on a `subscribe` event (with an ack), and publishes what arrives on
// `POST /server/v1/publish` ({room, event, data}) to the room, as `emit(event, data, {room})`,
// the arguments the door sends for a room without history.
//
//   node bench/socketio_server.mjs PORT SECRET
//
// Prints "listening" on stdout once it accepts connections. WebSocket transport only, no
// per-message compression, the default maxHttpBufferSize, connection state recovery off (the
// bench room keeps no history on the realtimed side either).
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";

const [port, secret] = [Number(process.argv[2]), process.argv[3]];

function verify(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const expected = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
  if (header.alg !== "HS256") return null;
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  if (typeof claims.sub !== "string" || (claims.exp && claims.exp * 1000 < Date.now())) return null;
  return claims;
}

const http = createServer((req, res) => {
  if (req.method === "GET" && req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
    return;
  }
  if (req.method === "POST" && req.url === "/server/v1/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const { room, event, data } = JSON.parse(Buffer.concat(chunks).toString());
      const delivered = io.sockets.adapter.rooms.get(room)?.size ?? 0;
      io.to(room).emit(event, data, { room });
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ delivered }));
    });
    return;
  }
  res.writeHead(404).end();
});

const io = new Server(http, { transports: ["websocket"], perMessageDeflate: false, serveClient: false });

io.use((socket, next) => {
  const claims = verify(socket.handshake.auth?.token);
  if (!claims) return next(Object.assign(new Error("unauthorized"), { data: { code: "UNAUTHORIZED", close_code: 4501 } }));
  socket.data.claims = claims;
  next();
});

io.on("connection", (socket) => {
  socket.on("subscribe", (data, ack) => {
    const room = data?.room;
    const allowed = socket.data.claims.rooms ?? [];
    if (typeof room !== "string" || !allowed.includes(room)) {
      if (typeof ack === "function") ack({ ok: false, error: "FORBIDDEN" });
      return;
    }
    socket.join(room);
    if (typeof ack === "function") ack({ ok: true, data: { room, seq: 0, epoch: "", recovered: false, publications: [] } });
  });
});

http.listen(port, "127.0.0.1", () => process.stdout.write("listening\n"));

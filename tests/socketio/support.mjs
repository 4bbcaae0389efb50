// What the Socket.IO client tests share: one real daemon per test file with the Socket.IO door
// on (the daemon harness of the JavaScript SDK's tests: a temporary configuration, SQLite in a
// temporary folder, a free port, `python -m realtimed run`), socket.io-client sockets for fresh
// users, and promises over their events.
//
// A socket's handlers see each event's arguments as the door sends them: `data` first, then
// `{room, seq, epoch}` where the native frame has them, then the recovery offset (a string) on
// events that have a position.
import { after, before } from 'node:test';
import { io } from 'socket.io-client';
import { Daemon, mint, sleep, until, user } from '../../clients/js/test/daemon.mjs';

export { mint, sleep, until, user };

export const PATH = '/socket.io/';
export const WAIT_MS = 5000;

/** The `[socketio]` table every test daemon runs with (`override.socketio` merges into it). */
export const SOCKETIO = { enabled: true, path: PATH, ping_interval_ms: 2000, ping_timeout_ms: 2000, recovery_ttl_s: 120 };

/**
 * Start a daemon for this test file; `h.d` is the daemon once the file's tests run. Every
 * socket made with `h.socket` is closed after the file's tests, before the daemon stops.
 */
export function harness(override = {}) {
  const sockets = [];
  const h = {
    /** @type {Daemon | undefined} */
    d: undefined,
    /** A socket.io-client socket (not yet connected unless `autoConnect`). */
    socket(token, options = {}) {
      const s = io(h.d.url, { path: PATH, auth: { token }, autoConnect: false, reconnectionDelay: 100, reconnectionDelayMax: 500, ...options });
      sockets.push(s);
      return s;
    },
    /** A connected socket for a fresh user named after `name`; `s.userId` is the user. */
    async connected(name, options = {}) {
      const { rooms, id = user(name), ...rest } = options;
      const s = h.socket(mint(id, rooms ? { rooms } : {}), rest);
      s.userId = id;
      await connect(s);
      return s;
    },
    /** The server API, as the application's backend calls it. */
    api(method, path, body) {
      return h.d.api(method, path, body);
    },
  };
  before(async () => {
    h.d = await Daemon.start({ ...override, socketio: { ...SOCKETIO, ...(override.socketio ?? {}) } });
  });
  after(async () => {
    for (const s of sockets) s.disconnect();
    await h.d?.close();
  });
  return h;
}

/** Connect `socket` and resolve on `connect`; reject with the `connect_error` it gets instead. */
export function connect(socket, ms = WAIT_MS) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => done(rej, new Error(`no connect within ${ms} ms`)), ms);
    const ok = () => done(res, socket);
    const bad = (err) => done(rej, err);
    function done(f, x) {
      clearTimeout(t);
      socket.off('connect', ok);
      socket.off('connect_error', bad);
      f(x);
    }
    socket.once('connect', ok);
    socket.once('connect_error', bad);
    socket.connect();
  });
}

/** The arguments of the next `name` event of `socket` that `filter` accepts, or fail after `ms`. */
export function next(socket, name, filter = () => true, ms = WAIT_MS) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      socket.off(name, on);
      rej(new Error(`no ${name} event within ${ms} ms`));
    }, ms);
    function on(...args) {
      if (!filter(...args)) return;
      clearTimeout(t);
      socket.off(name, on);
      res(args);
    }
    socket.on(name, on);
  });
}

/** Every `name` event of `socket` from now on: an array of argument lists that fills as they come. */
export function collect(socket, name) {
  const out = [];
  socket.on(name, (...args) => out.push(args));
  return out;
}

/** Emit an op with an ack and resolve with the ack's first argument (`{ok, data}` or `{ok: false, error, ...}`). */
export function op(socket, name, data = {}, ms = WAIT_MS) {
  return socket.timeout(ms).emitWithAck(name, data);
}

/** `op`, which must succeed: its `data`. */
export async function call(socket, name, data = {}, ms = WAIT_MS) {
  const ack = await op(socket, name, data, ms);
  if (!ack?.ok) throw new Error(`${name} failed: ${JSON.stringify(ack)}`);
  return ack.data;
}

/** The next disconnect of `socket`: its reason. */
export async function disconnected(socket, ms = WAIT_MS) {
  const [reason] = await next(socket, 'disconnect', () => true, ms);
  return reason;
}

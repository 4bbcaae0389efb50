// The setup that the test files against a real daemon share: one daemon per file, started
// before its tests and stopped after them, and the clients its tests make, closed first.
import { after, before } from 'node:test';
import { RealtimeClient } from '../dist/index.js';
import { Daemon, mint, user } from './daemon.mjs';

/**
 * Start a daemon for this test file (`override` deep-merges into its configuration).
 * `defaults` are client options for every client of the file (fast reconnects, no `online`
 * events, unless they say otherwise). The daemon is `h.d` once the file's tests run.
 */
export function harness(override = {}, defaults = {}) {
  const clients = [];
  const h = {
    /** @type {Daemon | undefined} */
    d: undefined,
    /** A client of the daemon; `options` must give the `token`. */
    client(options) {
      const c = new RealtimeClient({ url: h.d.url, minDelayMs: 50, maxDelayMs: 500, onlineTarget: null, ...defaults, ...options });
      clients.push(c);
      return c;
    },
    /** A client for a fresh user named after `name` (or `options.id`), with `options.rooms` in its token. */
    clientFor(name, options = {}) {
      const { id = user(name), rooms, ...rest } = options;
      return h.client({ token: mint(id, rooms ? { rooms } : {}), ...rest });
    },
    /** `clientFor`, connected. */
    async connected(name, options) {
      const c = h.clientFor(name, options);
      await c.connect();
      return c;
    },
    /** A publication through the server API. */
    publish(room, event, data = {}) {
      return h.d.api('POST', '/publish', { room, event, data });
    },
  };
  before(async () => {
    h.d = await Daemon.start(override);
  });
  after(async () => {
    for (const c of clients) c.close();
    await h.d?.close();
  });
  return h;
}

/** Every `name` event of `emitter` from now on, in an array that fills as they come. */
export function collect(emitter, name) {
  const out = [];
  emitter.on(name, (x) => out.push(x));
  return out;
}

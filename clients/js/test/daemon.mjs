// A real realtimed for the SDK's tests: a temp config (SQLite in a temp dir, a free port on
// 127.0.0.1, the development HS256 secret), started with `python -m realtimed run`, ready
// when /readyz answers 200. It can be stopped (SIGTERM: the daemon drains), restarted on the
// same state and port, and paused (SIGSTOP) to play a dead peer.
//
// The Python comes from $REALTIMED_PYTHON, else the repository's .venv; PYTHONPATH points at
// the repository so that its realtimed is the one that runs.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, '../../..');
export const SECRET = 'realtimed-development-secret-do-not-deploy';
export const API_KEY = 'rtd_dev_key_do_not_deploy';
const PYTHON = process.env.REALTIMED_PYTHON || resolve(here, '../../../.venv/bin/python');

const BASE = {
  server: { node: 'js1' },
  log: { level: 'warning' },
  auth: { algorithms: ['HS256'], hs256_secret: SECRET },
  api: { keys: [API_KEY] },
  gateway: { allowed_origins: ['*'] },
  shutdown: { grace_s: 5, reconnect_min_ms: 100, reconnect_max_ms: 300 },
  namespaces: [
    { prefix: 'job:', history_size: 100, history_ttl_s: 600 },
    { prefix: 'small:', history_size: 100, recovery_cap: 3 },
    { prefix: 'lobby:', public: true, client_publish: true, presence: true, history_size: 50 },
    { prefix: 'plain:', public: true, client_publish: true },
  ],
};

function merge(base, over) {
  const out = { ...base };
  for (const [k, val] of Object.entries(over ?? {}))
    out[k] = val && typeof val === 'object' && !Array.isArray(val) && typeof out[k] === 'object' ? merge(out[k], val) : val;
  return out;
}

function toml(data) {
  const scalar = (x) =>
    typeof x === 'string'
      ? JSON.stringify(x)
      : Array.isArray(x)
        ? `[${x.map(scalar).join(', ')}]`
        : x && typeof x === 'object'
          ? `{${Object.entries(x).map(([k, v]) => `${JSON.stringify(k)} = ${scalar(v)}`).join(', ')}}`
          : String(x);
  const lines = [];
  const tables = [];
  for (const [k, x] of Object.entries(data)) {
    if (Array.isArray(x) && x.length && typeof x[0] === 'object') for (const item of x) tables.push([`[[${k}]]`, item]);
    else if (x && typeof x === 'object' && !Array.isArray(x)) tables.push([`[${k}]`, x]);
    else lines.push(`${k} = ${scalar(x)}`);
  }
  for (const [head, body] of tables) {
    lines.push(head);
    for (const [k, x] of Object.entries(body)) lines.push(`${k} = ${scalar(x)}`);
  }
  return lines.join('\n') + '\n';
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function b64url(x) {
  return Buffer.from(x).toString('base64url');
}

/** An HS256 user token, as the application's backend would mint it. */
export function mint(sub, { ttlS = 3600, rooms = ['job:*', 'small:*'], secret = SECRET, ...claims } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, iat: now - 1, exp: now + ttlS, rooms, ...claims }));
  const sig = b64url(createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

// A test process that dies leaves no daemon behind.
const running = new Set();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

export class Daemon {
  constructor(dir, port, config) {
    this.dir = dir;
    this.port = port;
    this.config = config;
    this.url = `http://127.0.0.1:${port}`;
    this.log = [];
    this.proc = null;
  }

  /** Start a daemon; `override` deep-merges into the test configuration. */
  static async start(override = {}) {
    const dir = mkdtempSync(join(tmpdir(), 'realtimed-js-'));
    const port = await freePort();
    const config = merge(BASE, merge(override, { server: { state_dir: join(dir, 'state') }, http: { listen: `127.0.0.1:${port}` } }));
    writeFileSync(join(dir, 'realtimed.toml'), toml(config));
    const d = new Daemon(dir, port, config);
    try {
      await d.run();
    } catch (e) {
      await d.close();
      throw e;
    }
    return d;
  }

  async run() {
    const env = { ...process.env, PYTHONPATH: [REPO, process.env.PYTHONPATH].filter(Boolean).join(delimiter) };
    for (const k of Object.keys(env)) if (k.startsWith('REALTIMED__')) delete env[k];
    const proc = (this.proc = spawn(PYTHON, ['-m', 'realtimed', 'run', '-c', join(this.dir, 'realtimed.toml')], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    }));
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (s) => this.log.push(...s.split('\n').filter(Boolean)));
    running.add(proc);
    const exited = new Promise((r) => proc.once('exit', r));
    exited.then(() => running.delete(proc));
    this.exited = exited;
    const until = Date.now() + 30_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`realtimed exited with ${proc.exitCode}:\n${this.log.slice(-30).join('\n')}`);
      try {
        if ((await fetch(this.url + '/readyz')).status === 200) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > until) throw new Error(`realtimed not ready in 30 s:\n${this.log.slice(-30).join('\n')}`);
      await sleep(50);
    }
  }

  /** SIGTERM: the daemon sends server.shutdown, closes sockets with 1001 and exits. */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGCONT');
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(t);
  }

  /** Stop, then start again on the same port and state directory. */
  async restart() {
    await this.stop();
    await this.run();
  }

  pause() {
    this.proc.kill('SIGSTOP');
  }

  resume() {
    this.proc.kill('SIGCONT');
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The server API (`/server/v1`), as the application's backend calls it. */
  async api(method, path, body) {
    const res = await fetch(this.url + '/server/v1' + path, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json().catch(() => null);
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }
}

/** A fresh user id, so that tests sharing a daemon do not see each other. */
export function user(name) {
  return `${name}-${randomBytes(4).toString('hex')}`;
}

/** Resolve when `predicate()` holds (polled), or fail after `ms`. */
export async function until(predicate, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** The next `name` event of `emitter` (a client, chat, subscription...), or fail after `ms`. */
export function next(emitter, name, ms = 5000, filter = () => true) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => {
      off();
      rej(new Error(`no ${name} event within ${ms} ms`));
    }, ms);
    const off = emitter.on(name, (x) => {
      if (!filter(x)) return;
      clearTimeout(t);
      off();
      res(x);
    });
  });
}

export { sleep };

/**
 * A WebSocket class over the `ws` package that a test can interfere with, as a bad network
 * would: `cut()` drops the current connection (the client sees 1006), `dropOut` swallows the
 * client's frames, `dropIn(text)` swallows matching server frames, `refuse` fails that many
 * connection attempts, `inject(frame)` hands the client a frame as if the server sent it.
 * `sent` holds every frame the client sent, `urls` every URL it opened.
 */
export async function flakyWebSocket() {
  const { WebSocket: WS } = await import('ws');
  const ctl = { sockets: [], sent: [], urls: [], dropOut: false, dropIn: null, refuse: 0 };
  class Flaky {
    constructor(url) {
      ctl.urls.push(url);
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      if (ctl.refuse > 0) {
        ctl.refuse--;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror?.({});
          this.onclose?.({ code: 1006, reason: '' });
        });
        return;
      }
      const ws = (this._ws = new WS(url));
      ctl.sockets.push(this);
      ws.onopen = () => {
        this.readyState = 1;
        this.onopen?.({});
      };
      ws.onmessage = (e) => {
        if (ctl.dropIn?.(String(e.data))) return;
        this.onmessage?.({ data: e.data });
      };
      ws.onclose = (e) => {
        this.readyState = 3;
        this.onclose?.({ code: e.code, reason: e.reason });
      };
      ws.onerror = () => this.onerror?.({});
    }
    send(text) {
      ctl.sent.push(text);
      if (!ctl.dropOut) this._ws.send(text);
    }
    close(code, reason) {
      this.readyState = 2;
      this._ws?.close(code, reason);
    }
    terminate() {
      this._ws?.terminate();
    }
    inject(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    cut() {
      this._ws.terminate();
    }
  }
  ctl.WebSocket = Flaky;
  ctl.last = () => ctl.sockets[ctl.sockets.length - 1];
  ctl.frames = () => ctl.sent.map((t) => JSON.parse(t));
  return ctl;
}

/**
 * A fetch that a test can interfere with: `cut()` breaks the newest SSE stream, `refuseEvents`
 * makes new streams fail as a network error would; `requests` records every call.
 */
export function flakyFetch() {
  const ctl = { requests: [], refuseEvents: false, streams: [] };
  ctl.fetch = async (url, init = {}) => {
    const events = String(url).includes('/api/v1/events');
    ctl.requests.push({ url: String(url), method: init.method ?? 'GET', headers: { ...(init.headers ?? {}) }, body: init.body });
    if (!events) return fetch(url, init);
    if (ctl.refuseEvents) throw new TypeError('fetch failed');
    const ac = new AbortController();
    init.signal?.addEventListener('abort', () => ac.abort());
    ctl.streams.push(ac);
    return fetch(url, { ...init, signal: ac.signal });
  };
  ctl.cut = () => ctl.streams.at(-1).abort();
  ctl.events = () => ctl.requests.filter((r) => r.url.includes('/api/v1/events'));
  ctl.ops = () => ctl.requests.filter((r) => r.url.includes('/api/v1/ops/'));
  return ctl;
}

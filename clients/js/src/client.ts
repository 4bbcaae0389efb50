/**
 * The connection: authentication, reconnects, heartbeats, requests and app rooms.
 *
 * One `RealtimeClient` keeps one logical connection to realtimed over a WebSocket, or over
 * the SSE fallback (events over `GET /api/v1/events`, ops over `POST /api/v1/ops/{op}`)
 * behind the same API. Chat, the inbox, presence and devices hang off it.
 */
import { Chat } from './chat';
import { Devices } from './devices';
import { Emitter } from './emitter';
import { RealtimeError, malformed, wireError } from './errors';
import { Inbox } from './inbox';
import { PresenceApi } from './presence';
import { Subscription, type RoomEvent } from './room';
import type { ActivityPage, FeedQuery, ServerEvent, SessionInfo, SubscribeReply } from './types';
import * as v from './validate';

export type TokenProvider = () => string | Promise<string>;
export type TransportKind = 'websocket' | 'sse';
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

/** The part of the WHATWG WebSocket that the SDK uses (browsers, Node 22+, the `ws` package). */
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The daemon's base URL, e.g. `https://rt.example.com` (`ws(s)://` is accepted too). */
  url: string;
  /** A user JWT, or a function that returns a fresh one (called again when it expires). */
  token: string | TokenProvider;
  /** Put the token in the socket's URL (`?token=`) instead of a first `auth` frame. Default false: URLs end up in logs. */
  tokenInUrl?: boolean;
  /** Transports to use, in order of preference. Default `['websocket', 'sse']`. */
  transports?: TransportKind[];
  /** Consecutive WebSocket attempts that fail to open before falling back to SSE. Default 2. */
  fallbackAfter?: number;
  /** Reconnect backoff: the first delay is between `minDelayMs` and twice it, doubling up to `maxDelayMs`. Defaults 500 and 30000. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Longest wait from opening a socket to `session.ready`. Default 10000. */
  connectTimeoutMs?: number;
  /** Default timeout of a request, including the time spent waiting for a connection. Default 10000. */
  requestTimeoutMs?: number;
  /** Send an app-level `ping` after this long without hearing from the server. Default 20000. */
  pingIntervalMs?: number;
  /** Declare the connection dead when nothing arrives this long after that ping. Default 10000. */
  pongTimeoutMs?: number;
  /** The WebSocket class; default `globalThis.WebSocket`, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** The fetch function for REST and SSE; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Where to listen for `online` to reconnect at once; default `globalThis` in browsers. */
  onlineTarget?: EventTarget | null;
  /** The server's `gateway.max_frame_bytes`; bigger requests are refused before sending. Default 524288. */
  maxFrameBytes?: number;
  /** The server's `chat.max_message_bytes`. Default 65536. */
  maxMessageBytes?: number;
}

export interface RequestOptions {
  timeoutMs?: number;
  /** Whether the request may be sent again after a lost connection; default: by op (see README). */
  replay?: boolean;
}

export interface ClientEvents {
  state: ConnectionState;
  connecting: { attempt: number; transport: TransportKind };
  connected: { session: SessionInfo; transport: TransportKind; reconnected: boolean };
  /** `reconnect` false: the client stopped (a terminal close code, or `close()`); `closed` follows. */
  disconnected: { code: number; reason: string; reconnect: boolean; delayMs: number };
  closed: { code: number; reason: string; error: RealtimeError };
  /** Background failures: a refused re-authentication, a token provider that threw, a failed backfill. */
  error: RealtimeError;
  /** Every event frame from the server. */
  event: ServerEvent;
}

/** What to do after a close code (docs/protocol.md, close codes). */
export type CloseAction = 'stop' | 'retry' | 'refresh' | 'slow' | 'shutdown';

export function closeAction(code: number): CloseAction {
  if (code === 1001) return 'shutdown';
  if (code === 4004) return 'refresh';
  if (code === 4009 || code === 4013) return 'slow';
  // 1000 normal; 1002, 1003, 1007, 1009: this client sent something wrong; 45xx: terminal.
  if (code === 1000 || code === 1002 || code === 1003 || code === 1007 || code === 1009 || (code >= 4500 && code < 5000))
    return 'stop';
  return 'retry';
}

/** Ops sent again after a lost connection: reads, marks (setting a state twice is harmless), sends by client_id. */
const REPLAY = new Set([
  'ping',
  'room.presence',
  'conversation.open',
  'conversation.list',
  'conversation.mute',
  'message.send',
  'message.history',
  'message.read',
  'presence.set',
  'presence.query',
  'notification.list',
  'feed.activities',
  'notification.read',
  'notification.read_all',
  'user.block',
  'user.unblock',
]);
const SSE_OVERLAP_MS = 1000;
/** The server's cap on rooms per SSE stream. */
export const MAX_SSE_ROOMS = 64;
/** An activity feed's room is this prefix and the feed's name. */
export const FEED_ROOM_PREFIX = 'feed:';

interface Conn {
  kind: TransportKind;
  ws?: WebSocketLike;
  ctrl?: AbortController;
  opened: boolean;
  ready: boolean;
  authId?: number;
  authError?: RealtimeError;
  shutdownMs?: number;
  rooms?: string[];
  resumed?: boolean;
  timer?: any;
  done?: (e?: RealtimeError) => void;
}

interface Pending {
  id: number;
  op: string;
  data: object;
  text: string;
  replay: boolean;
  resolve(v: any): void;
  reject(e: RealtimeError): void;
  timer: any;
  deadline: number;
  on: Conn | 'rest' | null;
  wait?: any;
  tries: number;
}

const noop = () => {};
const REST = 'rest' as const;

function expSoon(token: string): boolean {
  try {
    const p = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return typeof p.exp === 'number' && p.exp * 1000 < Date.now() + 5000;
  } catch {
    return false;
  }
}

function asError(e: unknown): RealtimeError {
  return e instanceof RealtimeError ? e : new RealtimeError('INTERNAL', String((e as any)?.message ?? e));
}

interface Resolved {
  ws: string;
  api: string;
  token: string | TokenProvider;
  tokenInUrl: boolean;
  transports: TransportKind[];
  fallbackAfter: number;
  minDelayMs: number;
  maxDelayMs: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  pingIntervalMs: number;
  pongTimeoutMs: number;
  WebSocket?: WebSocketConstructor;
  fetch: typeof fetch;
  onlineTarget: EventTarget | null;
  maxFrameBytes: number;
  maxMessageBytes: number;
}

function resolve(options: ClientOptions): Resolved {
  const o = v.object(options, 'options') as unknown as ClientOptions;
  const url = v.str(o.url, 'url', 2048);
  if (!/^(https?|wss?):\/\/[^/]/.test(url)) throw v.invalid('url', 'must be an http(s) or ws(s) URL');
  const base = url.replace(/\/+$/, '').replace(/^ws/, 'http');
  if (typeof o.token !== 'function') v.str(o.token, 'token', 65536);
  const ms = (x: unknown, f: string, d: number) => (x === undefined ? d : v.int(x, f, 1, 86_400_000));
  const transports = o.transports ?? ['websocket', 'sse'];
  v.list(transports, 'transports', 1, 2, (t, f) => v.oneOf(t, f, ['websocket', 'sse'] as const));
  const g = globalThis as any;
  const r: Resolved = {
    ws: base.replace(/^http/, 'ws') + '/ws',
    api: base + '/api/v1',
    token: o.token,
    tokenInUrl: !!o.tokenInUrl,
    transports,
    fallbackAfter: ms(o.fallbackAfter, 'fallbackAfter', 2),
    minDelayMs: ms(o.minDelayMs, 'minDelayMs', 500),
    maxDelayMs: ms(o.maxDelayMs, 'maxDelayMs', 30_000),
    connectTimeoutMs: ms(o.connectTimeoutMs, 'connectTimeoutMs', 10_000),
    requestTimeoutMs: ms(o.requestTimeoutMs, 'requestTimeoutMs', 10_000),
    pingIntervalMs: ms(o.pingIntervalMs, 'pingIntervalMs', 20_000),
    pongTimeoutMs: ms(o.pongTimeoutMs, 'pongTimeoutMs', 10_000),
    WebSocket: o.WebSocket,
    fetch: o.fetch ?? ((...a: Parameters<typeof fetch>) => g.fetch(...a)),
    onlineTarget: o.onlineTarget !== undefined ? o.onlineTarget : typeof g.addEventListener === 'function' ? g : null,
    maxFrameBytes: ms(o.maxFrameBytes, 'maxFrameBytes', 524_288),
    maxMessageBytes: ms(o.maxMessageBytes, 'maxMessageBytes', 65_536),
  };
  if (r.minDelayMs > r.maxDelayMs) throw v.invalid('minDelayMs', 'must not exceed maxDelayMs');
  return r;
}

export class RealtimeClient extends Emitter<ClientEvents> {
  state: ConnectionState = 'idle';
  /** The data of the last `session.ready`. */
  session: SessionInfo | null = null;
  /** The transport in use (or to be tried next). */
  transport: TransportKind;
  readonly chat: Chat;
  readonly inbox: Inbox;
  readonly presence: PresenceApi;
  readonly devices: Devices;
  /** @internal */ readonly o: Resolved;

  private _conn: Conn | null = null;
  private _next: Conn | null = null; // an SSE stream opening to replace _conn (rooms changed)
  private _old: Conn | null = null; // an SSE stream replaced a moment ago, still read
  private _gen = 0;
  private _id = 1;
  private _pending = new Map<number, Pending>();
  private _attempt = 0;
  private _wsFails = 0;
  private _wsBlocked = 0; // of those, how many in a row were followed by a server that answered HTTP
  private _token?: string;
  private _tokenP: Promise<string> | null = null;
  private _stale = true;
  private _stopped = true;
  private _ever = false;
  private _retry: any;
  private _beat: any;
  private _renew: any;
  private _heard = 0;
  private _pingAt = 0;
  private _offset = 0;
  private _cursor?: string;
  private _rooms = new Map<string, Subscription>();
  private _reopen: Promise<void> | null = null;
  private _waiters: [(s: SessionInfo) => void, (e: RealtimeError) => void][] = [];
  private _online?: () => void;

  constructor(options: ClientOptions) {
    super();
    this.o = resolve(options);
    this.transport = this.o.transports[0];
    this.chat = new Chat(this);
    this.inbox = new Inbox(this);
    this.presence = new PresenceApi(this);
    this.devices = new Devices(this);
  }

  /** The authenticated user, once connected. */
  get userId(): string | undefined {
    return this.session?.user_id;
  }

  /** Connect (or reconnect after `close()`); resolves with the session once connected, rejects if the client stops first. */
  connect(): Promise<SessionInfo> {
    const p = new Promise<SessionInfo>((res, rej) => {
      if (this.state === 'connected' && this.session) return res(this.session);
      this._waiters.push([res, rej]);
    });
    if (this._stopped) {
      this._stopped = false;
      const t = this.o.onlineTarget;
      if (t && !this._online) t.addEventListener('online', (this._online = () => this.reconnectNow()));
      this._open();
    }
    return p;
  }

  /** Close for good: pending requests and unsent messages fail with `CLOSED`. `connect()` starts again. */
  close(): void {
    if (this.state !== 'closed') this._stop(1000, 'closed by the app');
  }

  /** Skip the wait before the next reconnect attempt (also done on the browser's `online` event). */
  reconnectNow(): void {
    if (this.state === 'disconnected' && !this._stopped) this._open();
  }

  /**
   * Send an op and resolve with its reply's data. Requests made while disconnected wait
   * for the connection, up to their timeout.
   */
  request<T = any>(op: string, data: object = {}, opts: RequestOptions = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.state === 'closed') throw new RealtimeError('CLOSED', 'the client is closed');
      v.str(op, 'op', 64);
      v.object(data, 'data');
      const id = this._id++;
      let text: string;
      try {
        text = JSON.stringify({ id, op, data });
      } catch {
        throw v.invalid('data', 'must be serializable as JSON');
      }
      if (text.length * 3 > this.o.maxFrameBytes && v.utf8(text) > this.o.maxFrameBytes)
        throw new RealtimeError('PAYLOAD_TOO_LARGE', `data: the frame would exceed ${this.o.maxFrameBytes} bytes`, { field: 'data' });
      const ms = opts.timeoutMs === undefined ? this.o.requestTimeoutMs : v.int(opts.timeoutMs, 'timeoutMs', 1, 86_400_000);
      const p: Pending = {
        id,
        op,
        data,
        text,
        replay: opts.replay ?? REPLAY.has(op),
        resolve,
        reject,
        timer: setTimeout(() => this._done(p, undefined, new RealtimeError('TIMEOUT', `${op}: no answer within ${ms} ms`)), ms),
        deadline: Date.now() + ms,
        on: null,
        tries: 0,
      };
      this._pending.set(id, p);
      if (this._conn?.ready) this._dispatch(p);
    });
  }

  /** Subscribe to an app room; `handler` gets its events. Resolves once the server accepted it. */
  async subscribe(room: string, handler?: (e: RoomEvent) => void): Promise<Subscription> {
    v.room(room);
    if (handler !== undefined && typeof handler !== 'function') throw v.invalid('handler', 'must be a function');
    if (this.state === 'closed') throw new RealtimeError('CLOSED', 'the client is closed');
    let s = this._rooms.get(room);
    if (!s) {
      if (this.transport === 'sse' && this._rooms.size >= MAX_SSE_ROOMS)
        throw new RealtimeError('FORBIDDEN', `subscription limit reached (${MAX_SSE_ROOMS} rooms over SSE)`, { field: 'room' });
      this._rooms.set(room, (s = new Subscription(room, this)));
      if (this._conn?.ready) this._conn.kind === 'websocket' ? this._sync(s) : this._sseReopen().catch(noop);
    }
    if (handler) s.on('event', handler);
    return s._ready;
  }

  /**
   * Follow an activity feed (`user:alice`, `team:t1`, `global`): a subscription to its room,
   * `feed:<name>`, whose events are `feed.activity` with `data.activity` and the activity's
   * `seq` in the feed. After a reconnect the missed activities come first, from the server's
   * store (`replayed: true`), or a `reset` when they cannot: then read the feed again.
   */
  async subscribeFeed(feed: string, handler?: (e: RoomEvent) => void): Promise<Subscription> {
    return this.subscribe(FEED_ROOM_PREFIX + v.feed(feed), handler);
  }

  /** A page of a feed the user may subscribe to, newest first, filtered (`feed.activities`). */
  async feedActivities(feed: string, query?: FeedQuery): Promise<ActivityPage> {
    const o = v.opts(query);
    const text = (name: string, max: number) => v.opt(o[name], (x) => v.str(x, name, max));
    return this.request('feed.activities', {
      feed: v.feed(feed),
      actor: text('actor', 128),
      verb: text('verb', 64),
      object: text('object', 200),
      since: v.opt(o.since, (x) => v.time(x, 'since')),
      until: v.opt(o.until, (x) => v.time(x, 'until')),
      q: text('q', 200),
      cursor: text('cursor', 512),
      limit: v.limit(o.limit, 100),
    });
  }

  /** The current subscriptions by room. */
  get rooms(): ReadonlyMap<string, Subscription> {
    return this._rooms;
  }

  /** Publish an app event, in namespaces that allow client publishing. Not replayed after a lost connection. */
  async publish(room: string, event: string, data: unknown = {}): Promise<{ seq?: number; epoch?: string }> {
    return this.request('publish', { room: v.room(room), event: v.eventName(event), data });
  }

  /** The server's clock: measured with `ping` over a WebSocket, estimated from `session.ready` over SSE. */
  async serverTime(): Promise<Date> {
    if (this.transport === 'websocket') {
      const t0 = Date.now();
      const r = await this.request('ping');
      this._offset = Date.parse(r.server_time) - (t0 + Date.now()) / 2;
    }
    return new Date(Date.now() + this._offset);
  }

  /** @internal a request over REST (`/api/v1` + path) with the current token */
  async http<T = any>(method: string, path: string, body?: unknown, timeoutMs = this.o.requestTimeoutMs): Promise<T> {
    for (let again = true; ; again = false) {
      const token = await this._getToken();
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(), timeoutMs);
      let res: Response;
      let json: any = null;
      try {
        res = await this.o.fetch(this.o.api + path, {
          method,
          headers: { authorization: 'Bearer ' + token, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: ctrl.signal,
        });
        json = await res.json().catch(() => null);
      } catch (e) {
        const late = ctrl.signal.aborted;
        throw new RealtimeError(late ? 'TIMEOUT' : 'DISCONNECTED', `${method} ${path}: ${late ? 'no answer in time' : asError(e).message}`);
      } finally {
        clearTimeout(timer);
      }
      if (res.ok) return json;
      if (res.status === 401 && again && typeof this.o.token === 'function') {
        this._stale = true;
        continue;
      }
      const err = wireError(json?.error, res.status);
      const after = Number(res.headers.get('retry-after'));
      if (err.code === 'RATE_LIMITED' && err.retryAfterMs === undefined && after > 0) err.retryAfterMs = after * 1000;
      throw err;
    }
  }

  /** @internal a fire-and-forget op (typing): sent only while connected */
  _fire(op: string, data: object): void {
    const c = this._conn;
    if (!c?.ready) return;
    if (c.kind === 'sse') this.http('POST', '/ops/' + op, data).catch(noop);
    else
      try {
        c.ws!.send(JSON.stringify({ op, data }));
      } catch {
        /* closing: typing is ephemeral */
      }
  }

  /**
   * @internal every server event to `fn`; what it throws (an event of an unexpected shape) is
   * reported as a PROTOCOL_ERROR `error` event, and the other listeners still get the event
   */
  _onEvent(fn: (f: ServerEvent) => void): void {
    this.on('event', (f) => {
      try {
        fn(f);
      } catch (e) {
        this.emit('error', malformed(e));
      }
    });
  }

  /** @internal */
  async _unsubscribe(s: Subscription): Promise<void> {
    if (this._rooms.get(s.room) !== s) return;
    this._rooms.delete(s.room);
    s._fail(new RealtimeError('CLOSED', `unsubscribed from ${s.room}`));
    const c = this._conn;
    if (!c?.ready) return;
    await (c.kind === 'sse' ? this._sseReopen() : this.request('unsubscribe', { room: s.room })).catch(noop);
  }

  // -- requests ---------------------------------------------------------------------------------

  private _dispatch(p: Pending): void {
    const c = this._conn!;
    if (c.kind === 'sse') {
      p.on = REST;
      this.http('POST', '/ops/' + p.op, p.data, Math.max(1, p.deadline - Date.now())).then(
        (data) => this._done(p, data),
        (e: RealtimeError) => {
          if (e.code === 'DISCONNECTED' && p.replay) this._later(p, this._backoff(p.tries++));
          else this._done(p, undefined, e);
        },
      );
      return;
    }
    p.on = c;
    try {
      c.ws!.send(p.text);
    } catch {
      /* the close event follows */
    }
  }

  /** Send again after `ms`, if the request has not expired by then. */
  private _later(p: Pending, ms: number): void {
    p.on = null;
    p.wait = setTimeout(() => {
      p.wait = undefined;
      if (this._pending.get(p.id) === p && this._conn?.ready) this._dispatch(p);
    }, ms);
  }

  private _done(p: Pending, data?: any, err?: RealtimeError): void {
    if (this._pending.get(p.id) !== p) return;
    if (err && p.replay && (err.code === 'RATE_LIMITED' || err.code === 'UNAVAILABLE')) {
      const wait = err.retryAfterMs ?? this._backoff(p.tries++);
      if (Date.now() + wait < p.deadline) return this._later(p, wait);
    }
    this._pending.delete(p.id);
    clearTimeout(p.timer);
    clearTimeout(p.wait);
    if (err) p.reject(err);
    else p.resolve(data);
  }

  // -- connecting -------------------------------------------------------------------------------

  private _setState(s: ConnectionState): void {
    if (this.state !== s) {
      this.state = s;
      this.emit('state', s);
    }
  }

  private _backoff(n: number, slow = false): number {
    const o = this.o;
    const min = slow ? Math.min(o.maxDelayMs, o.minDelayMs * 4) : o.minDelayMs;
    const cap = Math.max(min, Math.min(o.maxDelayMs, min * 2 ** (n + (slow ? 3 : 1))));
    return Math.round(min + Math.random() * (cap - min));
  }

  private _getToken(): Promise<string> {
    const t = this.o.token;
    if (typeof t === 'string') return Promise.resolve(t);
    if (!this._stale && this._token && !expSoon(this._token)) return Promise.resolve(this._token);
    return (this._tokenP ??= (async () => {
      try {
        const token = await t();
        v.str(token, 'token', 65536);
        this._token = token;
        this._stale = false;
        return token;
      } finally {
        this._tokenP = null;
      }
    })());
  }

  private async _wsClass(): Promise<WebSocketConstructor> {
    const W = this.o.WebSocket ?? (globalThis as any).WebSocket;
    if (W) return W;
    const name = 'ws'; // not bundled: only Node without a global WebSocket needs it
    const m = await import(/* @vite-ignore */ /* webpackIgnore: true */ name);
    return m.WebSocket ?? m.default;
  }

  private async _open(): Promise<void> {
    clearTimeout(this._retry);
    if (this._stopped) return;
    const gen = ++this._gen;
    this._setState('connecting');
    this.emit('connecting', { attempt: this._attempt, transport: this.transport });
    let token: string;
    let W: WebSocketConstructor | undefined;
    try {
      token = await this._getToken();
      if (this.transport === 'websocket') W = await this._wsClass().catch(() => undefined);
    } catch (e) {
      if (gen !== this._gen) return;
      this.emit('error', asError(e));
      return this._after(null, 1006, 'the token provider failed');
    }
    if (gen !== this._gen || this._stopped) return;
    if (this.transport === 'websocket' && !W) {
      if (this.o.transports.includes('sse')) this.transport = 'sse';
      else return this._stop(1006, 'no WebSocket implementation (install the ws package)');
    }
    const conn: Conn = { kind: this.transport, opened: false, ready: false };
    this._conn = conn;
    conn.timer = setTimeout(() => this._lost(conn, 1006, 'connect timeout'), this.o.connectTimeoutMs);
    if (conn.kind === 'sse') return this._sse(conn, token);
    let ws: WebSocketLike;
    try {
      ws = conn.ws = new W!(this.o.ws + (this.o.tokenInUrl ? '?token=' + encodeURIComponent(token) : ''));
    } catch (e) {
      return this._lost(conn, 1006, asError(e).message);
    }
    ws.onopen = () => {
      conn.opened = true;
      if (!this.o.tokenInUrl) ws.send(JSON.stringify({ id: (conn.authId = this._id++), op: 'auth', data: { token } }));
    };
    ws.onmessage = (e) => this._frame(conn, e.data);
    ws.onclose = (e) => this._lost(conn, e.code, e.reason);
    ws.onerror = noop;
  }

  /** Open an SSE stream for `conn` (a reconnect, or `_next` replacing the stream when rooms change). */
  private async _sse(conn: Conn, token: string): Promise<void> {
    const rooms = (conn.rooms = [...this._rooms.keys()]);
    const ctrl = (conn.ctrl = new AbortController());
    const headers: Record<string, string> = { authorization: 'Bearer ' + token, accept: 'text/event-stream' };
    if ((conn.resumed = !!this._cursor)) headers['last-event-id'] = this._cursor!;
    let res: Response;
    try {
      res = await this.o.fetch(this.o.api + '/events' + (rooms.length ? '?rooms=' + rooms.map(encodeURIComponent).join(',') : ''), {
        headers,
        signal: ctrl.signal,
      });
    } catch (e) {
      return this._lost(conn, 1006, asError(e).message);
    }
    if (!res.ok || !res.body) {
      const err = wireError((await res.json().catch(() => null))?.error, res.status);
      conn.authError = err;
      if (res.status === 401) return this._lost(conn, 4501, err.message);
      if (res.status < 500 && res.status !== 429) {
        // A room was refused (or is invalid): those not yet accepted end; the others go on.
        for (const r of rooms) {
          const s = this._rooms.get(r)!;
          if (!s._synced) {
            this._rooms.delete(r);
            s._fail(err);
            s.emit('error', err);
          }
        }
      }
      return this._lost(conn, res.status === 429 ? 4013 : 1006, err.message);
    }
    conn.opened = true;
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let event = '';
    let data = '';
    let id: string | undefined;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (this._conn === conn) this._heard = Date.now();
        buf += dec.decode(value, { stream: true });
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          if (!line) {
            if (data) {
              if (id !== undefined && conn !== this._old) this._cursor = id;
              this._frame(conn, data);
            }
            event = data = '';
            id = undefined;
            continue;
          }
          const c = line.indexOf(':');
          if (c === 0) continue; // a comment: the server's heartbeat
          const field = c < 0 ? line : line.slice(0, c);
          const value = c < 0 ? '' : line.slice(c + (line[c + 1] === ' ' ? 2 : 1));
          if (field === 'data') data += (data ? '\n' : '') + value;
          else if (field === 'id') id = value;
          else if (field === 'event') event = value;
        }
      }
    } catch {
      /* aborted or broken: the stream ended */
    }
    void event;
    this._lost(conn, 1006, 'the event stream ended');
  }

  /** Reopen the SSE stream with the current rooms, keeping the old one until the new one is ready. */
  private _sseReopen(): Promise<void> {
    return (this._reopen ??= new Promise<void>((resolve, reject) =>
      setTimeout(async () => {
        this._reopen = null;
        if (!this._conn?.ready || this._conn.kind !== 'sse') return resolve();
        const prev = this._next; // superseded: it settles with this one
        this._drop(prev);
        const conn: Conn = { kind: 'sse', opened: false, ready: false };
        conn.done = (e) => {
          prev?.done?.(e);
          if (!e) return resolve();
          reject(e);
          // Rooms still waiting for a stream get another try while this one lasts.
          if (e.code === 'DISCONNECTED' && [...this._rooms.values()].some((x) => !x._synced))
            setTimeout(() => this._sseReopen().catch(noop), this._backoff(0));
        };
        this._next = conn;
        conn.timer = setTimeout(() => this._lost(conn, 1006, 'connect timeout'), this.o.connectTimeoutMs);
        try {
          await this._sse(conn, await this._getToken());
        } catch (e) {
          this._lost(conn, 1006, asError(e).message);
        }
      }),
    ));
  }

  private _frame(conn: Conn, raw: unknown): void {
    if (conn !== this._conn && conn !== this._next && conn !== this._old) return;
    this._heard = Date.now();
    try {
      this._handle(conn, JSON.parse(String(raw)));
    } catch (e) {
      this.emit('error', malformed(e));
    }
  }

  private _handle(conn: Conn, f: any): void {
    if (!f || typeof f !== 'object' || Array.isArray(f)) throw new Error('not a JSON object');
    if ('ok' in f) {
      if (f.id === conn.authId) {
        if (!f.ok) {
          // Every refused first-frame auth is followed by the server's close (4501, 4004, 4503,
          // 4511: docs/protocol.md section 3), whose code decides what happens next.
          conn.authError = wireError(f.error);
        }
        return;
      }
      const p = this._pending.get(f.id);
      if (p && p.on === conn) this._done(p, f.data, f.ok ? undefined : wireError(f.error));
      return;
    }
    if (typeof f.event !== 'string') throw new Error('neither a reply nor an event');
    switch (f.event) {
      case 'session.ready':
        return this._ready(conn, f.data);
      case 'session.closed':
        return this._lost(conn, f.data?.code ?? 1006, f.data?.reason ?? '');
      case 'server.shutdown':
        conn.shutdownMs = f.data?.reconnect_after_ms;
        break;
      case 'session.expiring':
        this._reauth();
        break;
      case 'room.reset':
        this._rooms.get(f.data?.room)?._reset('server', f.data.seq, f.data.epoch);
        break;
    }
    if (typeof f.room === 'string') this._rooms.get(f.room)?._deliver(f);
    this.emit('event', f);
  }

  private _ready(conn: Conn, info: SessionInfo): void {
    if (typeof info?.session_id !== 'string' || typeof info.user_id !== 'string') throw new Error('session.ready without a session');
    clearTimeout(conn.timer);
    conn.ready = true;
    this.session = info;
    this._offset = Date.parse(info.server_time) - Date.now() || 0;
    const synced = () => {
      for (const r of conn.rooms ?? []) this._rooms.get(r)?._ok();
    };
    if (conn === this._next) {
      const old = (this._old = this._conn!);
      this._conn = conn;
      this._next = null;
      setTimeout(() => {
        if (this._old === old) this._old = null;
        this._drop(old);
      }, SSE_OVERLAP_MS);
      synced();
      conn.done?.();
      this._renewLater();
      return;
    }
    if (conn !== this._conn) return;
    this._attempt = 0;
    if (conn.kind === 'websocket') this._wsFails = this._wsBlocked = 0;
    this._setState('connected');
    this._heard = Date.now();
    this._pingAt = 0;
    this._arm();
    if (conn.kind === 'websocket') {
      this._cursor = undefined; // an SSE stream after this one starts from the rooms' own positions
      for (const s of this._rooms.values()) this._sync(s);
    } else {
      synced();
      if (!conn.resumed) for (const r of conn.rooms!) this._recover(this._rooms.get(r));
    }
    this._renewLater();
    for (const p of this._pending.values()) if (!p.on && !p.wait) this._dispatch(p);
    const reconnected = this._ever;
    this._ever = true;
    this.emit('connected', { session: info, transport: conn.kind, reconnected });
    for (const [res] of this._waiters.splice(0)) res(info);
  }

  /** (Re)subscribe a room on the socket, resuming from its position. */
  private _sync(s: Subscription): void {
    const since = s.epoch ? { seq: s.seq, epoch: s.epoch } : undefined;
    s._hold();
    this.request<SubscribeReply>('subscribe', since ? { room: s.room, since } : { room: s.room }, { replay: false }).then(
      (r) => {
        if (this._rooms.get(s.room) !== s) return;
        s._apply(r, !!since);
        s._ok();
      },
      (e: RealtimeError) => {
        if (this._rooms.get(s.room) !== s) return;
        s._release();
        if (e.code === 'DISCONNECTED' || e.code === 'CLOSED') return; // the next connection subscribes again
        if (e.code === 'RATE_LIMITED' || e.code === 'UNAVAILABLE' || e.code === 'TIMEOUT') {
          setTimeout(() => this._rooms.get(s.room) === s && this._conn?.ready && this._sync(s), e.retryAfterMs ?? this._backoff(0));
          return;
        }
        this._rooms.delete(s.room);
        s._fail(e);
        s.emit('error', e);
      },
    );
  }

  /**
   * A stream opened without Last-Event-ID (after a WebSocket) resumes nothing by itself: ask
   * for what the room missed since its position over REST, or reset it.
   */
  private _recover(s: Subscription | undefined): void {
    if (!s?.epoch) return;
    const { seq, epoch } = s;
    this.request<SubscribeReply>('subscribe', { room: s.room, since: { seq, epoch } }, { replay: false }).then((r) => {
      if (this._rooms.get(s.room) !== s) return;
      if (r.recovered)
        for (const p of r.publications) s._deliver({ event: p.event, data: p.data, room: s.room, seq: p.seq, epoch: r.epoch }, true);
      else if (s.seq === seq && s.epoch === epoch) s._reset('not_recovered', r.seq, r.epoch);
    }, noop);
  }

  /** `session.expiring`: a fresh token from the provider, sent on the open socket. */
  private async _reauth(): Promise<void> {
    if (typeof this.o.token !== 'function' || this._conn?.kind !== 'websocket') return;
    this._stale = true;
    try {
      const r = await this.request('auth', { token: await this._getToken() }, { replay: false });
      if (this.session) this.session = { ...this.session, expires_at: r.expires_at };
    } catch (e) {
      this.emit('error', asError(e));
    }
  }

  /** Over SSE nothing announces the expiry: reopen the stream with a fresh token a little before it. */
  private _renewLater(): void {
    clearTimeout(this._renew);
    const at = this.session?.expires_at;
    if (this._conn?.kind !== 'sse' || typeof this.o.token !== 'function' || !at) return;
    const left = Date.parse(at) - this._offset - Date.now();
    this._renew = setTimeout(() => {
      this._stale = true;
      this._sseReopen().catch((e) => this.emit('error', asError(e)));
    }, Math.max(0, left - Math.min(60_000, left / 4)));
  }

  /** The heartbeat: a `ping` after `pingIntervalMs` of silence; dead after `pongTimeoutMs` more. */
  private _arm = (): void => {
    clearTimeout(this._beat);
    const conn = this._conn;
    if (!conn?.ready) return;
    const now = Date.now();
    const o = this.o;
    if (conn.kind === 'sse') {
      const limit = (this.session?.heartbeat_s ?? 25) * 1000 + o.pongTimeoutMs;
      if (now - this._heard >= limit) return this._lost(conn, 1006, 'no heartbeat from the server');
      this._beat = setTimeout(this._arm, this._heard + limit - now);
    } else if (this._pingAt > this._heard) {
      if (now - this._pingAt >= o.pongTimeoutMs) return this._lost(conn, 1006, 'no answer to the heartbeat');
      this._beat = setTimeout(this._arm, this._pingAt + o.pongTimeoutMs - now);
    } else if (now - this._heard >= o.pingIntervalMs) {
      this._pingAt = now;
      try {
        conn.ws!.send('{"id":0,"op":"ping"}');
      } catch {
        /* the close event follows */
      }
      this._beat = setTimeout(this._arm, o.pongTimeoutMs);
    } else this._beat = setTimeout(this._arm, this._heard + o.pingIntervalMs - now);
  };

  // -- losing it --------------------------------------------------------------------------------

  private _drop(conn: Conn | null): void {
    if (!conn) return;
    clearTimeout(conn.timer);
    conn.ctrl?.abort();
    const ws = conn.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = noop;
      try {
        // ws's terminate() drops a dead TCP connection at once; close() would wait for its handshake.
        if (ws.readyState < 2) (ws as any).terminate ? (ws as any).terminate() : ws.close(1000);
      } catch {
        /* already closing */
      }
    }
  }

  private _lost(conn: Conn, code: number, reason: string): void {
    if (conn === this._old) {
      this._old = null;
      return this._drop(conn);
    }
    if (conn === this._next) {
      this._next = null;
      this._drop(conn);
      return conn.done?.(conn.authError ?? new RealtimeError('DISCONNECTED', reason));
    }
    if (conn !== this._conn) return;
    this._conn = null;
    this._drop(conn);
    if (conn.kind === 'websocket' && !conn.opened) this._wsFails++;
    for (const p of [...this._pending.values()])
      if (p.on === conn) {
        if (p.replay) p.on = null;
        else this._done(p, undefined, new RealtimeError('DISCONNECTED', `${p.op}: the connection was lost before the answer`));
      }
    this._after(conn, code, reason);
  }

  /** After a connection ended (or an attempt failed): stop, or wait and reconnect. */
  private _after(conn: Conn | null, code: number, reason: string): void {
    clearTimeout(this._beat);
    clearTimeout(this._renew);
    for (const c of [this._next, this._old]) this._drop(c);
    this._next?.done?.(new RealtimeError('DISCONNECTED', reason));
    this._next = this._old = null;
    if (this._stopped) return;
    let action = closeAction(code);
    if (action === 'refresh' && typeof this.o.token === 'string') action = 'stop';
    if (action === 'stop') return this._stop(code, reason, conn?.authError);
    if (action === 'refresh') this._stale = true;
    if (conn?.kind === 'sse') {
      // Each new connection tries the preferred transport again: SSE may have been a fallback.
      this.transport = this.o.transports[0];
      this._wsFails = this._wsBlocked = 0;
    }
    // After WebSocket attempts that never opened, SSE only if the server answers HTTP: a daemon
    // that is down (restarting) refuses both, and is no reason to give up WebSocket. Asked after
    // each failure, it must answer twice in a row (once with fallbackAfter 1): a daemon that came
    // back between a refusal and the question (a refusal noticed late by a busy event loop, or
    // after a long round trip) answers once, and the next WebSocket attempt opens.
    const probe =
      this.transport === 'websocket' && conn?.kind === 'websocket' && !conn.opened && this.o.transports.includes('sse')
        ? this._reachable()
        : null;
    const delay =
      action === 'shutdown' && typeof conn?.shutdownMs === 'number' ? conn.shutdownMs : this._backoff(this._attempt, action === 'slow');
    this._attempt++;
    this._setState('disconnected');
    this.emit('disconnected', { code, reason, reconnect: true, delayMs: delay });
    const gen = this._gen;
    this._retry = setTimeout(async () => {
      const answered = probe ? await probe : false;
      if (gen !== this._gen) return;
      if (probe) {
        this._wsBlocked = answered ? this._wsBlocked + 1 : 0;
        if (this._wsFails >= this.o.fallbackAfter && this._wsBlocked >= Math.min(2, this.o.fallbackAfter)) this.transport = 'sse';
      }
      this._open();
    }, delay);
  }

  /** Whether the server answers over HTTP (any answer but a network failure). */
  private _reachable(): Promise<boolean> {
    return this.http('GET', '/notifications/unread-count', undefined, this.o.connectTimeoutMs).then(
      () => true,
      (e: RealtimeError) => e.code !== 'DISCONNECTED' && e.code !== 'TIMEOUT',
    );
  }

  private _stop(code: number, reason: string, cause?: RealtimeError): void {
    this._stopped = true;
    this._gen++;
    clearTimeout(this._retry);
    clearTimeout(this._beat);
    clearTimeout(this._renew);
    if (this._online) this.o.onlineTarget?.removeEventListener('online', this._online);
    this._online = undefined;
    for (const c of [this._conn, this._next, this._old]) {
      if (c?.ws && code === 1000 && c.ws.readyState === 1) {
        c.ws.onclose = null;
        c.ws.close(1000);
      } else this._drop(c);
    }
    this._conn = this._next = this._old = null;
    const err = new RealtimeError(
      'CLOSED',
      code === 1000 ? reason : `closed by the server with ${code}${reason ? ' (' + reason + ')' : ''}${cause ? ': ' + cause.message : ''}`,
      { closeCode: code },
    );
    for (const p of [...this._pending.values()]) this._done(p, undefined, err);
    this._setState('closed');
    this.emit('disconnected', { code, reason, reconnect: false, delayMs: 0 });
    this.emit('closed', { code, reason, error: err });
    for (const [, rej] of this._waiters.splice(0)) rej(err);
  }
}

/**
 * Chat: conversations, history, the outbox, edits, read cursors, typing and unread counts.
 *
 * Every conversation is a stream with a gap-free `seq`. The `message` event delivers each
 * message exactly once and in `seq` order: a duplicate is dropped, a missing `seq` is
 * fetched with `message.history` before the message after it, and after a reconnect each
 * conversation seen so far is brought up to date (new messages, then edits and deletes).
 */
import type { RealtimeClient } from './client';
import { Emitter } from './emitter';
import { RealtimeError, asError } from './errors';
import type {
  Conversation,
  ConversationPage,
  ConversationState,
  Message,
  MessagePage,
  Receipt,
  ServerEvent,
  TypingUpdate,
} from './types';
import * as v from './validate';

export interface ChatEvents {
  /** A new message (the user's own included), once, in `seq` order per conversation. */
  message: Message;
  updated: Message;
  deleted: Message;
  receipt: Receipt;
  typing: TypingUpdate;
  /** Shared fields changed: title, members, last message. */
  conversation: Conversation;
  /** This user's own state of a conversation changed (read on another device, muted, left). */
  state: ConversationState;
  /** `unreadTotal` changed; with the conversation whose count moved, when known. */
  unread: { total: number; conversationId?: string; count?: number };
  /** Messages after `after_seq` could not be fetched: refetch the conversation. */
  gap: { conversation_id: string; after_seq: number; error: RealtimeError };
}

export interface SendOptions {
  type?: 'text' | 'image' | 'file';
  mediaUrl?: string;
  replyTo?: string;
  /** The idempotency key; generated when absent. The same key and body never store a second message. */
  clientId?: string;
}

export interface HistoryOptions {
  beforeSeq?: number;
  afterSeq?: number;
  /** Messages changed (appended, edited, deleted) since this conversation `version`. */
  changedSince?: number;
  limit?: number;
}

export interface Outgoing {
  conversation_id: string;
  client_id: string;
  body: string;
  type?: string;
  media_url?: string;
  reply_to?: string;
}

interface Queued {
  data: Outgoing;
  resolve(m: Message): void;
  reject(e: RealtimeError): void;
  tries: number;
}

interface Stream {
  last?: number;
  version: number;
  chain: Promise<unknown>;
  read?: number;
  unread?: number;
}

interface Typing {
  on: boolean;
  at: number;
  sent: number;
  want?: string;
  timer?: any;
}

/** typing.start is refreshed this often while the user types (the server ends typing after 6 s without one). */
const TYPING_REFRESH_MS = 3000;
/** At most two typing frames a second per conversation (the server's `chat.typing_per_s`). */
const TYPING_GAP_MS = 500;
const RETRY = new Set(['TIMEOUT', 'DISCONNECTED', 'UNAVAILABLE', 'RATE_LIMITED', 'INTERNAL']);
const TRANSIENT = new Set(['TIMEOUT', 'DISCONNECTED', 'CLOSED']);

function newClientId(): string {
  const b = new Uint8Array(12);
  const c = (globalThis as any).crypto;
  if (c?.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 12; i++) b[i] = (Math.random() * 256) | 0;
  return 'c' + Date.now().toString(36) + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

const cid = (x: unknown) => v.id(x, 'conversationId');

export class Chat extends Emitter<ChatEvents> {
  /** Unread messages in every conversation (from `session.ready`, kept up to date by events). */
  unreadTotal = 0;
  private _s = new Map<string, Stream>();
  private _out = new Map<string, Queued[]>();
  private _t = new Map<string, Typing>();

  constructor(private readonly _c: RealtimeClient) {
    super();
    _c._onEvent((f) => this._event(f));
    _c.on('connected', (e) => {
      this._total(e.session.unread_total);
      if (e.reconnected) for (const [id, s] of this._s) if (s.last !== undefined) this._serial(id, () => this._resync(id));
    });
    _c.on('disconnected', () => {
      for (const t of this._t.values()) clearTimeout(t.timer);
      this._t.clear();
    });
  }

  /** Conversations, newest activity first. */
  async list(options?: { cursor?: string; limit?: number }): Promise<ConversationPage> {
    const o = v.opts(options);
    const r: ConversationPage = await this._c.request('conversation.list', {
      cursor: v.opt(o.cursor, (x) => v.str(x, 'cursor', 512)),
      limit: v.limit(o.limit, 100),
    });
    for (const c of r.conversations) this._track(c);
    this._total(r.unread_total);
    return r;
  }

  /** Find or create the 1:1 conversation with `userId`. */
  async open(userId: string): Promise<Conversation> {
    const r = await this._c.request('conversation.open', { user_id: v.id(userId, 'userId') });
    return this._track(r.conversation);
  }

  /** Create a group. Not replayed after a lost connection (it would create a second group). */
  async create(memberIds: string[], title?: string): Promise<Conversation> {
    const r = await this._c.request('conversation.create', {
      member_ids: v.list(memberIds, 'memberIds', 1, 10_000, (x, f) => v.id(x, f)),
      title: v.opt(title, (x) => v.str(x, 'title', 200, 0)),
    });
    return this._track(r.conversation);
  }

  /**
   * A page of messages, ascending `seq` (with no bound, the newest `limit`). Messages of a page
   * that reaches the newest ones count as seen: their `message` events are not sent again.
   */
  async history(conversationId: string, options?: HistoryOptions): Promise<MessagePage> {
    const o = v.opts(options);
    const seq = (f: string) => v.opt(o[f], (x) => v.int(x, f));
    const data = {
      conversation_id: cid(conversationId),
      before_seq: seq('beforeSeq'),
      after_seq: seq('afterSeq'),
      changed_since: seq('changedSince'),
      limit: v.limit(o.limit, 100),
    };
    const given = ['beforeSeq', 'afterSeq', 'changedSince'].filter((f) => o[f] != null);
    if (given.length > 1) throw v.invalid(given[1], `cannot be combined with ${given[0]}`);
    const r: MessagePage = await this._c.request('message.history', data);
    const m = r.messages;
    if (!given.length || data.after_seq !== undefined) {
      const s = this._st(data.conversation_id);
      const first = m.length ? m[0].seq : (data.after_seq ?? 0) + 1;
      if (s.last === undefined || first <= s.last + 1) {
        for (const x of m) s.version = Math.max(s.version, x.version);
        if (!r.has_more || !given.length) s.last = Math.max(s.last ?? 0, m.length ? m[m.length - 1].seq : first - 1);
      }
    }
    return r;
  }

  /**
   * Send a message. It waits in an outbox, one message at a time per conversation, and is
   * sent again after a lost connection or a timeout under the same `client_id` until the
   * server acknowledges it, so it is stored once and in order. Resolves with the stored
   * message; rejects when the server refuses it (FORBIDDEN, BLOCKED, ...) or the client closes.
   */
  send(conversationId: string, body: string, options?: SendOptions): Promise<Message> {
    return new Promise<Message>((resolve, reject) => {
      const o = v.opts(options);
      const media = v.opt(o.mediaUrl, (x) => {
        if (!/^https?:\/\/[^\s\x00-\x1f\x7f-\x9f]+$/i.test(v.str(x, 'mediaUrl', 2048)))
          throw v.invalid('mediaUrl', 'must be an http or https URL');
        return x as string;
      });
      const data: Outgoing = {
        conversation_id: cid(conversationId),
        client_id: o.clientId === undefined ? newClientId() : v.str(o.clientId, 'clientId', 64),
        body: v.body(body === undefined && media ? '' : body, this._c.o.maxMessageBytes, !!media),
        type: v.opt(o.type, (x) => v.oneOf(x, 'type', ['text', 'image', 'file'] as const)),
        media_url: media,
        reply_to: v.opt(o.replyTo, (x) => v.id(x, 'replyTo')),
      };
      if (this._c.state === 'closed') throw new RealtimeError('CLOSED', 'the client is closed');
      let q = this._out.get(data.conversation_id);
      if (!q) this._out.set(data.conversation_id, (q = []));
      q.push({ data, resolve, reject, tries: 0 });
      if (q.length === 1) this._pump(data.conversation_id, q);
      const t = this._t.get(data.conversation_id);
      if (t) t.on = false; // the server ends typing with the message
    });
  }

  /** Messages not yet acknowledged, oldest first. */
  outbox(conversationId?: string): Outgoing[] {
    const all = conversationId === undefined ? [...this._out.values()] : [this._out.get(conversationId) ?? []];
    return all.flat().map((q) => q.data);
  }

  /** Edit one's own message. Not replayed after a lost connection. */
  async edit(messageId: string, body: string): Promise<Message> {
    const r = await this._c.request('message.edit', {
      message_id: v.id(messageId, 'messageId'),
      body: v.body(body, this._c.o.maxMessageBytes, true),
    });
    return r.message;
  }

  /** Delete one's own message. Not replayed after a lost connection. */
  async delete(messageId: string): Promise<void> {
    await this._c.request('message.delete', { message_id: v.id(messageId, 'messageId') });
  }

  /** Move the read cursor forward to `seq`; resolves with the cursor (it never moves back). */
  async markRead(conversationId: string, seq: number): Promise<number> {
    const r = await this._c.request('message.read', { conversation_id: cid(conversationId), seq: v.int(seq, 'seq') });
    const s = this._st(conversationId);
    s.read = Math.max(s.read ?? 0, r.read_seq);
    return r.read_seq;
  }

  async mute(conversationId: string, muted: boolean): Promise<void> {
    await this._c.request('conversation.mute', { conversation_id: cid(conversationId), muted: v.bool(muted, 'muted') });
  }

  /** Leave a group, or hide a direct conversation. Not replayed after a lost connection. */
  async leave(conversationId: string): Promise<void> {
    await this._c.request('conversation.leave', { conversation_id: cid(conversationId) });
  }

  async block(userId: string): Promise<void> {
    await this._c.request('user.block', { user_id: v.id(userId, 'userId') });
  }

  async unblock(userId: string): Promise<void> {
    await this._c.request('user.unblock', { user_id: v.id(userId, 'userId') });
  }

  /** Unread messages of one conversation, when known (from `list()`, `open()` and events). */
  unread(conversationId: string): number | undefined {
    return this._s.get(conversationId)?.unread;
  }

  /**
   * The user is typing: call it on every keystroke. `typing.start` goes out at most every
   * 3 s (the server ends typing after 6 s without one) and at most two typing frames a
   * second leave per conversation. Dropped while disconnected: typing is ephemeral.
   */
  typing(conversationId: string): void {
    cid(conversationId);
    let t = this._t.get(conversationId);
    if (!t) this._t.set(conversationId, (t = { on: false, at: 0, sent: 0 }));
    if (t.on && Date.now() - t.at < TYPING_REFRESH_MS && t.want !== 'typing.stop') return;
    this._type(conversationId, t, 'typing.start');
  }

  /** The user stopped typing (sending a message stops it by itself). */
  stopTyping(conversationId: string): void {
    cid(conversationId);
    const t = this._t.get(conversationId);
    if (!t) return;
    if (!t.on) {
      t.want = undefined; // a start still waiting is not sent at all
      return;
    }
    this._type(conversationId, t, 'typing.stop');
  }

  private _type(id: string, t: Typing, op: string): void {
    t.want = op;
    const wait = t.sent + TYPING_GAP_MS - Date.now();
    if (wait > 0) {
      t.timer ??= setTimeout(() => {
        t.timer = undefined;
        if (t.want) this._type(id, t, t.want);
      }, wait);
      return;
    }
    t.want = undefined;
    t.sent = Date.now();
    t.on = op === 'typing.start';
    if (t.on) t.at = t.sent;
    this._c._fire(op, { conversation_id: id });
  }

  // -- the outbox -------------------------------------------------------------------------------

  private async _pump(id: string, q: Queued[]): Promise<void> {
    while (q.length) {
      const m = q[0];
      try {
        const r = await this._c.request('message.send', m.data);
        q.shift();
        m.resolve(r.message);
      } catch (e) {
        const err = asError(e);
        if (err.code === 'CLOSED') {
          for (const x of q.splice(0)) x.reject(err);
          break;
        }
        m.tries++;
        if (RETRY.has(err.code) && (err.code !== 'INTERNAL' || m.tries < 3)) {
          // A timeout already waited; the others wait a backoff (RATE_LIMITED: as the server asked).
          const o = this._c.o;
          const wait = err.code === 'TIMEOUT' ? 0 : (err.retryAfterMs ?? Math.min(o.maxDelayMs, o.minDelayMs * 2 ** Math.min(m.tries, 6)));
          await new Promise((r) => setTimeout(r, wait));
          continue;
        }
        q.shift();
        m.reject(err);
      }
    }
    if (this._out.get(id) === q) this._out.delete(id);
  }

  // -- the streams ------------------------------------------------------------------------------

  private _st(id: string): Stream {
    let s = this._s.get(id);
    if (!s) this._s.set(id, (s = { version: 0, chain: Promise.resolve() }));
    return s;
  }

  /** A conversation record: its `last_seq` is where its stream starts for this client, if it had none. */
  private _track(c: Conversation): Conversation {
    const s = this._st(c.id);
    if (s.last === undefined) {
      s.last = c.last_seq;
      s.version = c.version;
    }
    if (c.read_seq !== undefined) {
      s.read = c.read_seq;
      s.unread = c.unread_count;
    }
    return c;
  }

  private _total(total: number, conversationId?: string): void {
    this.unreadTotal = total;
    this.emit('unread', { total, conversationId, count: conversationId ? this._s.get(conversationId)?.unread : undefined });
  }

  /** Run `fn` after everything queued for the conversation, so its events keep their order. */
  private _serial(id: string, fn: () => unknown): void {
    const s = this._st(id);
    s.chain = s.chain.then(fn).catch((e) => this._c.emit('error', asError(e)));
  }

  private _event(f: ServerEvent): void {
    const d = f.data;
    switch (f.event) {
      case 'message.new': {
        const seq = f.seq ?? d.message.seq;
        if (!Number.isInteger(seq) || typeof d.message.conversation_id !== 'string') throw new Error('message.new without seq');
        return this._serial(d.message.conversation_id, () => this._incoming(d.message, seq));
      }
      case 'message.updated':
      case 'message.deleted':
        return this._serial(d.message.conversation_id, () => {
          const s = this._st(d.message.conversation_id);
          s.version = Math.max(s.version, d.message.version);
          this.emit(f.event === 'message.updated' ? 'updated' : 'deleted', d.message);
        });
      case 'receipt.updated':
        return this.emit('receipt', d);
      case 'typing.updated':
        return this.emit('typing', d);
      case 'conversation.updated':
        return this._serial(d.conversation.id, () => this.emit('conversation', this._track(d.conversation)));
      case 'conversation.state': {
        const s = this._st(d.conversation_id);
        s.read = d.read_seq;
        s.unread = d.unread_count;
        this.emit('state', d);
        return this._total(d.unread_total, d.conversation_id);
      }
    }
  }

  private async _incoming(m: Message, seq: number): Promise<void> {
    const s = this._st(m.conversation_id);
    if (s.last === undefined) s.last = seq - 1;
    if (seq <= s.last) return; // had it already
    if (seq > s.last + 1) await this._backfill(m.conversation_id, seq - 1, true);
    if (seq === s.last + 1) this._deliver(s, m, true);
  }

  /** `counted`: messages that `session.ready`'s `unread_total` did not count yet. */
  private _deliver(s: Stream, m: Message, counted: boolean): void {
    s.last = m.seq;
    s.version = Math.max(s.version, m.version);
    if (m.sender_id !== this._c.userId && m.seq > (s.read ?? 0) && !m.deleted) {
      s.unread = (s.unread ?? 0) + 1;
      if (counted) this._total(this.unreadTotal + 1, m.conversation_id);
    }
    this.emit('message', m);
  }

  /**
   * Fetch and deliver the messages after the last one delivered (up to `upTo`, or all);
   * answers the conversation's version, or -1 when it failed. A transient failure leaves the
   * hole for the next message or reconnect to fill; any other is reported as a `gap`.
   */
  private async _backfill(id: string, upTo: number | undefined, counted: boolean): Promise<number> {
    const s = this._st(id);
    try {
      for (;;) {
        const r: MessagePage = await this._c.request('message.history', { conversation_id: id, after_seq: s.last, limit: 100 });
        for (const m of r.messages) if (m.seq === s.last! + 1) this._deliver(s, m, counted);
        if (!r.has_more || !r.messages.length || (upTo !== undefined && s.last! >= upTo)) return r.version;
      }
    } catch (e) {
      const err = asError(e);
      if (!TRANSIENT.has(err.code)) {
        this.emit('gap', { conversation_id: id, after_seq: s.last!, error: err });
        if (upTo !== undefined) s.last = Math.max(s.last!, upTo);
      }
      return -1;
    }
  }

  /** After a reconnect: the new messages, then the edits and deletes of those delivered before. */
  private async _resync(id: string): Promise<void> {
    const s = this._st(id);
    const last = s.last!;
    const v0 = s.version;
    const version = await this._backfill(id, undefined, false);
    if (version <= s.version || !v0) return;
    try {
      for (let since = v0; ; ) {
        const r: MessagePage = await this._c.request('message.history', { conversation_id: id, changed_since: since, limit: 100 });
        for (const m of r.messages) {
          since = Math.max(since, m.version);
          if (m.seq <= last) this.emit(m.deleted ? 'deleted' : 'updated', m);
        }
        s.version = Math.max(s.version, since);
        if (!r.has_more || !r.messages.length) return;
      }
    } catch (e) {
      this._c.emit('error', asError(e)); // retried at the next reconnect
    }
  }
}

/**
 * The notification inbox: list, unread count, mark read (one, some, all), delete, live new
 * ones, and preferences over REST.
 *
 * The user's notifications are a stream with a gap-free `seq`: the `notification` event
 * delivers each one once, in order; a missing `seq` is fetched with `notification.list`
 * (`after_seq`) first, and after a reconnect whatever arrived meanwhile is fetched.
 */
import type { RealtimeClient } from './client';
import { Emitter } from './emitter';
import { RealtimeError, asError } from './errors';
import type { Notification, NotificationPage, NotificationPreferences, PreferencesUpdate, ServerEvent } from './types';
import * as v from './validate';

export interface InboxEvents {
  notification: Notification;
  /** Read on some device: `ids`, or `up_to_seq` after a read-all. */
  read: { ids?: string[]; up_to_seq?: number; unread_count: number };
  deleted: { ids: string[]; unread_count: number };
  /** `unreadCount` changed. */
  unread: number;
  /** Notifications after `after_seq` could not be fetched: refetch the list. */
  gap: { after_seq: number; error: RealtimeError };
}

const PAGE = 100;
const ids = (x: unknown) => v.list(x, 'ids', 1, 1000, (y, f) => v.id(y, f));

/** An entry of `types` in a preferences update: a type, and channel switches that are booleans or null. */
function typeChange(t: unknown, field: string): unknown {
  const o = v.object(t, field);
  if (typeof o.type !== 'string') throw v.invalid(field, 'must be an object with a type');
  v.str(o.type, field + '.type', 64);
  for (const [key, value] of Object.entries(o))
    if (key !== 'type' && key !== 'channels' && value != null && typeof value !== 'boolean')
      throw v.invalid(`${field}.${key.slice(0, 64)}`, 'must be true, false or null');
  return t;
}

export class Inbox extends Emitter<InboxEvents> {
  /** Unread notifications (from `session.ready`, kept up to date by events). */
  unreadCount = 0;
  private _last?: number;
  private _chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly _c: RealtimeClient) {
    super();
    _c._onEvent((f) => this._event(f));
    _c.on('connected', (e) => {
      this._count(e.session.notifications_unread);
      if (e.reconnected && this._last !== undefined) this._serial(() => this._backfill(undefined, false));
    });
  }

  /** Newest first; with `afterSeq`, those after it in ascending order. */
  async list(options?: { cursor?: string; afterSeq?: number; unreadOnly?: boolean; limit?: number }): Promise<NotificationPage> {
    const o = v.opts(options);
    const data = {
      cursor: v.opt(o.cursor, (x) => v.str(x, 'cursor', 512)),
      after_seq: v.opt(o.afterSeq, (x) => v.int(x, 'afterSeq')),
      unread_only: v.opt(o.unreadOnly, (x) => v.bool(x, 'unreadOnly')),
      limit: v.limit(o.limit, 100),
    };
    if (data.cursor !== undefined && data.after_seq !== undefined) throw v.invalid('afterSeq', 'cannot be combined with cursor');
    const r: NotificationPage = await this._c.request('notification.list', data);
    if (data.cursor === undefined && data.after_seq === undefined && !data.unread_only) {
      // The newest page: what it holds counts as delivered.
      const top = Math.max(0, ...r.notifications.map((n) => n.seq));
      this._last = Math.max(this._last ?? 0, top);
    }
    return r;
  }

  /** Mark notifications read on every device; resolves with the unread count. */
  async markRead(notificationIds: string[]): Promise<number> {
    return this._counted(await this._c.request('notification.read', { ids: ids(notificationIds) }));
  }

  async markAllRead(): Promise<number> {
    return this._counted(await this._c.request('notification.read_all'));
  }

  /** Not replayed after a lost connection. */
  async delete(notificationIds: string[]): Promise<number> {
    return this._counted(await this._c.request('notification.delete', { ids: ids(notificationIds) }));
  }

  /** The unread count from the server (REST). */
  async fetchUnreadCount(): Promise<number> {
    return this._counted(await this._c.http('GET', '/notifications/unread-count'));
  }

  /**
   * Per type, a switch for each delivery channel of the server (`in_app`, `push`, and any
   * other it has) and the channels the type uses; the quiet hours and the time zone (REST).
   */
  preferences(): Promise<NotificationPreferences> {
    return this._c.http('GET', '/notifications/preferences');
  }

  /**
   * A partial update of the preferences (REST); resolves with all of them. Each entry of
   * `types` names a type and the channels to switch (`in_app`, `push` or any other channel of
   * the server, which refuses one it does not have), each `true`, `false` or `null` (unchanged).
   */
  async setPreferences(update: PreferencesUpdate): Promise<NotificationPreferences> {
    const u = v.object(update, 'update');
    if (u.types !== undefined) v.list(u.types, 'types', 0, 1000, typeChange);
    if (u.quiet_hours != null) {
      const q = v.object(u.quiet_hours, 'quiet_hours');
      if (typeof q.start !== 'string' || typeof q.end !== 'string') throw v.invalid('quiet_hours', 'must be null or {start: "HH:MM", end: "HH:MM"}');
    }
    if (u.time_zone !== undefined) v.str(u.time_zone, 'time_zone', 64);
    return this._c.http('PUT', '/notifications/preferences', u);
  }

  private _counted(r: { unread_count: number }): number {
    this._count(r.unread_count);
    return r.unread_count;
  }

  private _count(n: number): void {
    if (typeof n === 'number' && n !== this.unreadCount) {
      this.unreadCount = n;
      this.emit('unread', n);
    }
  }

  private _serial(fn: () => unknown): void {
    this._chain = this._chain.then(fn).catch((e) => this._c.emit('error', e));
  }

  private _event(f: ServerEvent): void {
    const d = f.data;
    if (f.event === 'notification.new') {
      const seq = f.seq ?? d.notification.seq;
      if (!Number.isInteger(seq)) throw new Error('notification.new without seq');
      this._serial(() => this._incoming(d.notification, seq));
    }
    else if (f.event === 'notification.read' || f.event === 'notification.deleted') {
      this._count(d.unread_count);
      this.emit(f.event === 'notification.read' ? 'read' : 'deleted', d);
    }
  }

  private async _incoming(n: Notification, seq: number): Promise<void> {
    if (this._last === undefined) this._last = seq - 1;
    if (seq <= this._last) return;
    if (seq > this._last + 1) await this._backfill(seq - 1, true);
    if (seq === this._last + 1) this._deliver(n, true);
  }

  private _deliver(n: Notification, counted: boolean): void {
    this._last = n.seq;
    if (counted && !n.read_at) this._count(this.unreadCount + 1);
    this.emit('notification', n);
  }

  private async _backfill(upTo: number | undefined, counted: boolean): Promise<void> {
    try {
      for (;;) {
        const before = this._last;
        const r: NotificationPage = await this._c.request('notification.list', { after_seq: this._last, limit: PAGE });
        for (const n of r.notifications) if (n.seq > this._last!) this._deliver(n, counted);
        if (r.notifications.length < PAGE || this._last === before || (upTo !== undefined && this._last! >= upTo)) return;
      }
    } catch (e) {
      const err = asError(e);
      if (err.code === 'TIMEOUT' || err.code === 'DISCONNECTED' || err.code === 'CLOSED') return; // the next one fills it
      this.emit('gap', { after_seq: this._last!, error: err });
      if (upTo !== undefined) this._last = Math.max(this._last!, upTo);
    }
  }
}

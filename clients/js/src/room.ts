import { Emitter } from './emitter';
import type { RealtimeError } from './errors';
import type { RoomMember, ServerEvent, SubscribeReply } from './types';

/** An event of an app room, live or replayed by a recovery. */
export interface RoomEvent {
  room: string;
  event: string;
  data: any;
  /** Set in rooms that keep history. */
  seq?: number;
  epoch?: string;
  /** True when it came from a recovery after a reconnect rather than live. */
  replayed: boolean;
}

/**
 * The room's stream could not be continued without a hole: the app should refetch the
 * room's state. Events continue from `seq`/`epoch`.
 * `reason`: `gap` (a seq was missed), `epoch` (the room's history restarted),
 * `not_recovered` (the server refused the recovery after a reconnect), `server`
 * (`room.reset` from the SSE door).
 */
export interface RoomReset {
  room: string;
  seq: number;
  epoch: string;
  reason: 'gap' | 'epoch' | 'not_recovered' | 'server';
}

/**
 * The server accepted a subscribe on a WebSocket: the first time, and again after each
 * reconnect. After a resubscribe from the room's last position (`resumed`), `recovered`
 * tells whether the missed publications were replayed (they came just before, as `event`s
 * with `replayed: true`) or not (a `reset` came just before).
 */
export interface RoomSubscribed {
  room: string;
  seq: number;
  epoch: string;
  resumed: boolean;
  recovered: boolean;
}

export interface SubscriptionEvents {
  event: RoomEvent;
  reset: RoomReset;
  /** Over a WebSocket; over SSE the stream's `connected` marks it, and `reset` a room that could not be recovered. */
  subscribed: RoomSubscribed;
  /** The subscription was refused (on a resubscribe after a reconnect, say): it has ended. */
  error: RealtimeError;
}

/** What a Subscription needs of its client. */
export interface RoomOwner {
  _unsubscribe(s: Subscription): Promise<void>;
  request<T = any>(op: string, data?: object): Promise<T>;
}

/** One subscribed app room. Get it from `client.subscribe(room, handler)`. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The last `seq` and `epoch` seen (0 and '' in rooms that keep no history). */
  seq = 0;
  epoch = '';
  /** @internal */ _synced = false;
  /** @internal live events that came while a (re)subscribe was answered: the server sent its reply first */
  _held: ServerEvent[] | null = null;
  /** @internal */ _ready: Promise<this>;
  /** @internal */ _ok!: () => void;
  /** @internal */ _fail!: (e: RealtimeError) => void;

  constructor(
    readonly room: string,
    private readonly _c: RoomOwner,
  ) {
    super();
    this._ready = new Promise<this>((resolve, reject) => {
      this._ok = () => {
        this._synced = true;
        resolve(this);
      };
      this._fail = reject;
    });
    this._ready.catch(() => {});
  }

  /** Leave the room (every handler of it). */
  unsubscribe(): Promise<void> {
    return this._c._unsubscribe(this);
  }

  /** Who is in the room, in namespaces that keep presence. */
  presence(): Promise<RoomMember[]> {
    return this._c.request('room.presence', { room: this.room }).then((r) => r.users);
  }

  /** @internal */
  _deliver(f: ServerEvent, replayed = false): void {
    if (this._held && !replayed) {
      this._held.push(f);
      return;
    }
    const s = f.seq;
    if (typeof s === 'number' && f.epoch) {
      if (this.epoch === f.epoch) {
        if (s <= this.seq) return; // already delivered
        if (s > this.seq + 1) this._reset('gap', s, f.epoch);
      } else if (this.epoch) this._reset('epoch', s, f.epoch);
      this.seq = s;
      this.epoch = f.epoch;
    }
    this.emit('event', { room: this.room, event: f.event, data: f.data, seq: f.seq, epoch: f.epoch, replayed });
  }

  /** @internal */
  _reset(reason: RoomReset['reason'], seq: number, epoch: string): void {
    this.seq = seq;
    this.epoch = epoch;
    this.emit('reset', { room: this.room, seq, epoch, reason });
  }

  /**
   * @internal A (re)subscribe is on its way. Its reply is handled a microtask after it
   * arrives, while the live events the server sent right behind it may be handled at once
   * (the same read from the socket): they wait for it, then follow the replay.
   */
  _hold(): void {
    this._held ??= [];
  }

  /** @internal deliver the events that waited for a reply (or for a subscribe that failed) */
  _release(): void {
    const held = this._held;
    this._held = null;
    for (const f of held ?? []) this._deliver(f);
  }

  /** @internal the reply to a (re)subscribe, asked with `since` when `resumed` */
  _apply(r: SubscribeReply, resumed: boolean): void {
    if (r.recovered) {
      for (const p of r.publications)
        this._deliver({ event: p.event, data: p.data, room: this.room, seq: p.seq, epoch: r.epoch }, true);
    } else if (resumed) {
      this._reset('not_recovered', r.seq, r.epoch);
    }
    this.seq = r.seq;
    this.epoch = r.epoch;
    this.emit('subscribed', { room: this.room, seq: r.seq, epoch: r.epoch, resumed, recovered: resumed && !!r.recovered });
    this._release();
  }
}

import type { RealtimeClient } from './client';
import { Emitter } from './emitter';
import type { Presence, PresenceStatus, RoomMember } from './types';
import * as v from './validate';

export interface PresenceEvents {
  /** A contact's presence changed (users sharing a conversation, or contacts set by the server API). */
  updated: Presence & { user_id: string };
}

/** The user's own status, contacts' presence, and who is in an app room. */
export class PresenceApi extends Emitter<PresenceEvents> {
  constructor(private readonly _c: RealtimeClient) {
    super();
    _c.on('event', (f) => {
      if (f.event === 'presence.updated') this.emit('updated', f.data);
    });
  }

  /** Set one's own status; `invisible` shows as `offline` to others. */
  async set(status: PresenceStatus, message?: string): Promise<void> {
    await this._c.request('presence.set', {
      status: v.oneOf(status, 'status', ['online', 'away', 'busy', 'invisible'] as const),
      message: v.opt(message, (x) => v.str(x, 'message', 200, 0)),
    });
  }

  /** The presence of up to 200 users; only contacts are answered, others are left out. */
  async query(userIds: string[]): Promise<Record<string, Presence>> {
    const r = await this._c.request('presence.query', { user_ids: v.list(userIds, 'userIds', 0, 200, (x, f) => v.id(x, f)) });
    return r.presences;
  }

  /** Who is in a subscribed app room whose namespace keeps presence. */
  async room(room: string): Promise<RoomMember[]> {
    return (await this._c.request('room.presence', { room: v.room(room) })).users;
  }
}

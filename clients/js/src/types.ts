/** Records and frames of the realtimed wire protocol (version 1), as the server sends them. */

/** An RFC 3339 UTC time with milliseconds, e.g. `2026-11-22T10:00:00.000Z`. */
export type Time = string;

export interface SessionInfo {
  session_id: string;
  user_id: string;
  node: string;
  server_time: Time;
  heartbeat_s: number;
  expires_at: Time | null;
  unread_total: number;
  notifications_unread: number;
  /**
   * The rooms this device is in without subscribing: `device:<session_id>` first, then
   * those of the token's claims (the server's `auth.claim_rooms`, e.g. `role:admin`).
   * Their events arrive as `event` frames of the client, with the address as `room`.
   */
  addresses: string[];
}

export interface Message {
  id: string;
  conversation_id: string;
  seq: number;
  version: number;
  sender_id: string;
  client_id: string;
  type: 'text' | 'image' | 'file' | 'system';
  body: string;
  media_url: string | null;
  reply_to: string | null;
  created_at: Time;
  edited_at: Time | null;
  deleted_at: Time | null;
  deleted: boolean;
}

export interface Member {
  user_id: string;
  role: string;
  joined_at: Time;
}

export interface Conversation {
  id: string;
  type: 'direct' | 'group';
  title: string | null;
  members: Member[];
  last_message: Message | null;
  last_seq: number;
  version: number;
  updated_at: Time;
  /** For the asking member only (absent on `conversation.updated`). */
  unread_count?: number;
  muted?: boolean;
  read_seq?: number;
}

export interface ConversationPage {
  conversations: Conversation[];
  next_cursor: string | null;
  unread_total: number;
}

export interface MessagePage {
  /** Ascending `seq`. */
  messages: Message[];
  has_more: boolean;
  /** The conversation's current version (for `changedSince`). */
  version: number;
}

export interface Receipt {
  conversation_id: string;
  user_id: string;
  read_seq: number;
  read_at: Time;
}

export interface TypingUpdate {
  conversation_id: string;
  user_id: string;
  typing: boolean;
}

export interface ConversationState {
  conversation_id: string;
  read_seq: number;
  unread_count: number;
  muted: boolean;
  unread_total: number;
}

export type PresenceStatus = 'online' | 'away' | 'busy' | 'invisible';

export interface Presence {
  user_id?: string;
  status: 'online' | 'away' | 'busy' | 'offline';
  message: string | null;
  last_seen: Time | null;
}

export interface RoomMember {
  user_id: string;
  sessions: number;
}

export interface Notification {
  id: string;
  seq: number;
  type: string;
  title: string;
  body: string;
  data: Record<string, unknown>;
  priority: string;
  group_key: string | null;
  created_at: Time;
  read_at: Time | null;
  /** When it leaves the inbox and is no longer pushed (null: never). */
  expires_at: Time | null;
}

export interface NotificationPage {
  notifications: Notification[];
  next_cursor: string | null;
}

/** An activity of a feed (docs/protocol.md section 5.6), as read from one feed. */
export interface Activity {
  id: string;
  actor: string;
  verb: string;
  object: string;
  target: string | null;
  /** When it happened. */
  time: Time;
  data: Record<string, unknown>;
  /** Every feed it was logged to. */
  feeds: string[];
  /** When it was logged. */
  created_at: Time;
  /** The feed it is read from, and its place there. */
  feed: string;
  seq: number;
}

export interface ActivityPage {
  /** Newest first (by `time`, then `seq`). */
  activities: Activity[];
  next_cursor: string | null;
}

/** Filters and paging of `feedActivities`: `since` inclusive, `until` exclusive; `q`: every word must appear. */
export interface FeedQuery {
  actor?: string;
  verb?: string;
  object?: string;
  since?: string | Date;
  until?: string | Date;
  q?: string;
  cursor?: string;
  limit?: number;
}

/**
 * A notification type's switch for each delivery channel of the server, named after the
 * channel: `in_app` and `push`, and any other the server has (`email`, `sms`, ...). A channel
 * the user never turned off is `true`.
 */
export interface ChannelSwitches {
  in_app: boolean;
  push: boolean;
  [channel: string]: boolean;
}

/** One notification type in the preferences: its switches, and `channels`, the channels it uses. */
export type TypePreferences = { type: string; channels: string[] } & ChannelSwitches;

export interface NotificationPreferences {
  types: TypePreferences[];
  quiet_hours: { start: string; end: string } | null;
  time_zone: string;
}

/**
 * A change to one notification type: the channels to switch, each `true`, `false` or `null`
 * (unchanged); a channel not named keeps its setting. `channels` is ignored, so an entry of
 * `preferences()` may be sent back as it is.
 */
export interface TypePreferencesChange {
  type: string;
  channels?: string[];
  in_app?: boolean | null;
  push?: boolean | null;
  /** Any other delivery channel of the server, by name: `setPreferences` refuses a value that is not a boolean or null. */
  [channel: string]: boolean | null | undefined | string | string[];
}

export interface PreferencesUpdate {
  types?: TypePreferencesChange[];
  quiet_hours?: { start: string; end: string } | null;
  time_zone?: string;
}

export interface DeviceInfo {
  model?: string;
  os?: string;
  os_version?: string;
  app_version?: string;
}

export interface Device {
  token: string;
  platform: 'ios' | 'android' | 'web';
  app_version: string;
  /** As registered (`{}` when none was given). */
  device_info: DeviceInfo;
  [field: string]: unknown;
}

/** Recovery data of the `subscribe` reply. */
export interface SubscribeReply {
  room: string;
  seq: number;
  epoch: string;
  recovered: boolean;
  publications: { seq: number; event: string; data: unknown; published_at: Time }[];
}

/** An event frame as it arrives from the server. */
export interface ServerEvent {
  event: string;
  room?: string;
  seq?: number;
  epoch?: string;
  data: any;
}

/**
 * realtimed-client: the JavaScript SDK of realtimed.
 *
 * ```js
 * import { RealtimeClient } from 'realtimed-client';
 * const client = new RealtimeClient({ url: 'https://rt.example.com', token: () => fetchToken() });
 * client.chat.on('message', (m) => render(m));
 * await client.connect();
 * await client.chat.send(conversationId, 'hello');
 * ```
 */
export { RealtimeClient, closeAction, FEED_ROOM_PREFIX, MAX_SSE_ROOMS } from './client';
export type {
  ClientEvents,
  ClientOptions,
  CloseAction,
  ConnectionState,
  RequestOptions,
  TokenProvider,
  TransportKind,
  WebSocketConstructor,
  WebSocketLike,
} from './client';
export { RealtimeError } from './errors';
export type { ErrorCode, ErrorDetails } from './errors';
export { Subscription } from './room';
export type { RoomEvent, RoomReset, RoomSubscribed, SubscriptionEvents } from './room';
export type { Chat, ChatEvents, HistoryOptions, Outgoing, SendOptions } from './chat';
export type { Inbox, InboxEvents } from './inbox';
export type { PresenceApi, PresenceEvents } from './presence';
export type { Devices } from './devices';
export type { Emitter, Listener } from './emitter';
export type * from './types';

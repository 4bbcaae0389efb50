/**
 * Errors: every failure the SDK reports is a `RealtimeError`.
 *
 * `code` is one of the server's codes (`BAD_REQUEST`, `VALIDATION_ERROR`, `UNAUTHORIZED`,
 * `FORBIDDEN`, `NOT_FOUND`, `CONFLICT`, `BLOCKED`, `RATE_LIMITED`, `PAYLOAD_TOO_LARGE`,
 * `UNAVAILABLE`, `INTERNAL`), or one of the SDK's own: `DISCONNECTED` (the connection was lost
 * while a request that cannot be replayed was in flight), `TIMEOUT` (no answer in time) and
 * `CLOSED` (the client was closed, by the app or by a terminal close code) and
 * `PROTOCOL_ERROR` (the server sent a frame the SDK cannot use: reported as an `error` event).
 * Arguments the SDK refuses before sending anything are `VALIDATION_ERROR` (or
 * `PAYLOAD_TOO_LARGE`) with `field` naming the argument, as the server would answer.
 */
export type ErrorCode =
  | 'BAD_REQUEST'
  | 'VALIDATION_ERROR'
  | 'UNAUTHORIZED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'BLOCKED'
  | 'RATE_LIMITED'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNAVAILABLE'
  | 'INTERNAL'
  | 'DISCONNECTED'
  | 'TIMEOUT'
  | 'CLOSED'
  | 'PROTOCOL_ERROR';

export interface ErrorDetails {
  /** The field or argument at fault. */
  field?: string;
  /** `RATE_LIMITED`: how long to wait before trying again. */
  retryAfterMs?: number;
  /** `INTERNAL`: the id that also appears in the server's log. */
  correlationId?: string;
  /** The HTTP status, for errors from the REST door. */
  status?: number;
  /** `CLOSED` by the server: the WebSocket close code. */
  closeCode?: number;
}

export class RealtimeError extends Error implements ErrorDetails {
  readonly code: ErrorCode | (string & {});
  field?: string;
  retryAfterMs?: number;
  correlationId?: string;
  status?: number;
  closeCode?: number;

  constructor(code: ErrorCode | (string & {}), message: string, details: ErrorDetails = {}) {
    super(message);
    this.name = 'RealtimeError';
    this.code = code;
    for (const [k, v] of Object.entries(details)) if (v !== undefined) (this as any)[k] = v;
  }
}

/** A `RealtimeError` from the `error` object of a reply or an HTTP error body. */
export function wireError(e: any, status?: number): RealtimeError {
  const o = e && typeof e === 'object' ? e : {};
  return new RealtimeError(
    typeof o.code === 'string' ? o.code : 'INTERNAL',
    typeof o.message === 'string' ? o.message : 'unexpected answer from the server',
    { field: o.field, retryAfterMs: o.retry_after_ms, correlationId: o.correlation_id, status },
  );
}

/** `e` itself when it is a `RealtimeError`, else an `INTERNAL` one that says what it was. */
export function asError(e: unknown): RealtimeError {
  return e instanceof RealtimeError ? e : new RealtimeError('INTERNAL', String(e));
}

/** A frame from the server that the SDK cannot use. */
export function malformed(e: unknown): RealtimeError {
  return new RealtimeError('PROTOCOL_ERROR', `a malformed frame from the server: ${(e as any)?.message ?? e}`);
}

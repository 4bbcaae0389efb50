/**
 * Argument checks made before anything is sent, with the server's rules (docs/protocol.md,
 * sections 2, 4 and 5), so a mistake is reported at once with the argument's name.
 */
import { RealtimeError } from './errors';

const CONTROL = /[\x00-\x1f\x7f-\x9f]/;
const ROOM_BAD = /[\s\x00-\x1f\x7f-\x9f*,]/;
const RESERVED = /^(session|server|message|receipt|typing|conversation|presence|notification|room|feed)\./;
const MAX_INT = Number.MAX_SAFE_INTEGER;

export function invalid(field: string, problem: string): RealtimeError {
  return new RealtimeError('VALIDATION_ERROR', `${field}: ${problem}`, { field });
}

/** A string of `min` to `max` characters without control characters. */
export function str(v: unknown, field: string, max: number, min = 1): string {
  if (typeof v !== 'string') throw invalid(field, 'must be a string');
  if (v.length < min || v.length > max) throw invalid(field, `must be ${min} to ${max} characters`);
  if (CONTROL.test(v)) throw invalid(field, 'must not contain control characters');
  return v;
}

/** An opaque id (conversation, message, notification) or a user id: 1 to 128 characters. */
export const id = (v: unknown, field: string): string => str(v, field, 128);

export function int(v: unknown, field: string, lo = 0, hi = MAX_INT): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi)
    throw invalid(field, `must be an integer from ${lo} to ${hi}`);
  return v;
}

export function bool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') throw invalid(field, 'must be true or false');
  return v;
}

export function oneOf<T extends string>(v: unknown, field: string, allowed: readonly T[]): T {
  if (!allowed.includes(v as T)) throw invalid(field, `must be one of ${allowed.join(', ')}`);
  return v as T;
}

export function list<T>(v: unknown, field: string, min: number, max: number, each: (x: unknown, f: string) => T): T[] {
  if (!Array.isArray(v)) throw invalid(field, 'must be an array');
  if (v.length < min || v.length > max) throw invalid(field, `must have ${min} to ${max} items`);
  return v.map((x, i) => each(x, `${field}[${i}]`));
}

export function room(v: unknown, field = 'room'): string {
  str(v, field, 200);
  const r = v as string;
  if (ROOM_BAD.test(r)) throw invalid(field, "must not contain whitespace, '*' or ','");
  if (r[0] === ':' || r.endsWith(':') || r.includes('::')) throw invalid(field, "segments separated by ':' must not be empty");
  return r;
}

/** A feed name: a room name of at most 195 characters (its room is `feed:<name>`). */
export function feed(v: unknown, field = 'feed'): string {
  room(v, field);
  if ((v as string).length > 195) throw invalid(field, 'must be 1 to 195 characters');
  return v as string;
}

/** An RFC 3339 time: a string as given, or a `Date`. */
export function time(v: unknown, field: string): string {
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) throw invalid(field, 'must be a valid date');
    return v.toISOString();
  }
  return str(v, field, 64);
}

export function eventName(v: unknown, field = 'event'): string {
  str(v, field, 100);
  if (RESERVED.test(v as string)) throw invalid(field, 'uses a reserved prefix');
  return v as string;
}

export function object(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(field, 'must be an object');
  return v as Record<string, unknown>;
}

export function opts(v: unknown): Record<string, any> {
  return v === undefined ? {} : object(v, 'options');
}

/** Size of a string in UTF-8 bytes. */
export const utf8 = (s: string): number => new TextEncoder().encode(s).length;

/** A message body: a string of at most `maxBytes` of UTF-8, empty only when allowed. */
export function body(v: unknown, maxBytes: number, mayBeEmpty: boolean): string {
  if (typeof v !== 'string') throw invalid('body', 'must be a string');
  if (!v && !mayBeEmpty) throw invalid('body', 'must not be empty (unless mediaUrl is set)');
  if (v.length > maxBytes / 4 && utf8(v) > maxBytes)
    throw new RealtimeError('PAYLOAD_TOO_LARGE', `body: must be at most ${maxBytes} bytes of UTF-8`, { field: 'body' });
  return v;
}

/** Optional values: `undefined` and `null` are absent. */
export const opt = <T>(v: unknown, check: (x: unknown) => T): T | undefined => (v == null ? undefined : check(v));

/** The `limit` of a page. */
export const limit = (v: unknown, hi: number): number | undefined => opt(v, (x) => int(x, 'limit', 1, hi));

// Compiled (not run) by types.test.mjs: the published declarations serve a TypeScript app.
import { RealtimeClient, RealtimeError, type Message, type RoomEvent } from '../dist/index.js';
const c = new RealtimeClient({ url: 'https://x', token: async () => 't' });
c.chat.on('message', (m: Message) => console.log(m.body.toUpperCase(), m.seq + 1));
c.on('disconnected', (e) => console.log(e.code, e.reconnect));
async function main() {
  const s = await c.subscribe('job:1', (e: RoomEvent) => console.log(e.data));
  s.on('reset', (r) => console.log(r.reason));
  const page = await c.chat.history('c', { limit: 10 });
  page.messages.forEach((m) => m.deleted);
  try { await c.chat.send('c', 'x'); } catch (e) { if (e instanceof RealtimeError) console.log(e.code, e.field); }
  const n: number = c.inbox.unreadCount;
  const p = await c.presence.query(['a']);
  console.log(n, p['a']?.status);
  // Preferences: a switch per channel of the server, in_app and push or any other, by name.
  const prefs = await c.inbox.preferences();
  const t = prefs.types[0];
  const on: boolean = t.in_app && t.push && t.email;
  const uses: string[] = t.channels;
  console.log(t.type.toUpperCase(), on, uses.length);
  await c.inbox.setPreferences({ types: [t, { type: 'mention', email: false, push: null }], quiet_hours: null });
  // @ts-expect-error in_app is a boolean or null
  await c.inbox.setPreferences({ types: [{ type: 'mention', in_app: 'no' }] });
}
main();

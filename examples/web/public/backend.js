// What the application's backend does, played by the page for the demo.
//
// In a real app these calls come from your server: it holds the API key, and the browser
// never sees one. Here the page uses the development API key of the demo configuration,
// which realtimed accepts only on a loopback listener, so that the demo needs no server of
// its own. Everything below is plain HTTP to the server API (/server/v1).

const API_KEY = 'rtd_dev_key_do_not_deploy';
const STEP_MS = 400;
const STEPS = ['Decoding footage', 'Colour grading', 'Rendering frames', 'Mixing audio', 'Encoding', 'Uploading'];

async function api(method, path, body) {
  const res = await fetch('/server/v1' + path, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) {
    const err = json?.error ?? { code: `HTTP_${res.status}`, message: res.statusText };
    throw Object.assign(new Error(`${err.code}: ${err.message}`), { code: err.code });
  }
  return json;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The newest publication of a room that keeps history: how a page that opens late catches up. */
export async function latest(room, seq) {
  if (!seq) return null;
  const r = await api('GET', `/rooms/${encodeURIComponent(room)}/history?since_seq=${seq - 1}&limit=1`);
  return r.publications.at(-1) ?? null;
}

/**
 * A render job: progress published to the job's room as it goes, then a `job_completed`
 * notification to whoever was watching it at the end (and whoever started it).
 */
export async function runRender(room, { by, name }) {
  const publish = (event, data) => api('POST', '/publish', { room, event, data: { by, name, ...data } });
  await publish('job.started', { pct: 0, step: 'Queued' });
  for (let pct = 10; pct <= 100; pct += 10) {
    await sleep(STEP_MS);
    const step = STEPS[Math.min(STEPS.length - 1, Math.floor((pct / 100) * STEPS.length))];
    await publish(pct < 100 ? 'job.progress' : 'job.done', { pct, step: pct < 100 ? step : 'Done' });
  }
  const watching = (await api('GET', `/rooms/${encodeURIComponent(room)}/presence`)).users.map((u) => u.user_id);
  const recipients = [...new Set([by, ...watching])];
  await api('POST', '/notifications', {
    user_ids: recipients,
    type: 'job_completed',
    vars: { job_name: name },
    data: { room },
  });
  return recipients;
}

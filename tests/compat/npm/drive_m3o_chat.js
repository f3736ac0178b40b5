// Drives m3o's official JavaScript client (npm `m3o`, its `m3o/chat` ChatService) through
// all nine endpoints and the Join stream against one server, and prints what happened as
// one JSON object on stdout, for a pytest test to judge. It judges nothing itself.
//
//   node drive_m3o_chat.js BASE_URL TOKEN NAMES
//
// NAMES is "group" (the names the package's index.d.ts declares: group_id, group, groups)
// or "room" (the seed's: room_id, room, rooms). BASE_URL is e.g. http://127.0.0.1:8080.
//
// ChatService's constructor takes only a token and always talks to https://api.m3o.com/;
// the shared client underneath (@m3o/m3o-node's Client) takes an `address`, so the service's
// client is replaced by one made with the base URL, as an app pointing it elsewhere would.
'use strict';

const [base, token, names] = process.argv.slice(2);
if (!base || !token || !['group', 'room'].includes(names)) {
  console.error('usage: node drive_m3o_chat.js BASE_URL TOKEN group|room');
  process.exit(2);
}

const { ChatService } = require('m3o/chat');
const { Client } = require('@m3o/m3o-node');

const STEP_MS = 10000;
const idKey = names + '_id';
const one = names;
const many = names + 's';

const report = {
  names,
  base,
  packages: {},
  id: null,
  answered_as: null,
  steps: [],
  stream: { opened: false, frames: [], closed: null, errors: [], joined_visible: false },
  uncaught: [],
};
for (const pkg of ['m3o', '@m3o/m3o-node', 'ws', 'axios']) {
  try {
    report.packages[pkg] = require(pkg + '/package.json').version;
  } catch (e) {
    report.packages[pkg] = null;
  }
}
// ws emits 'error' on a refused upgrade, and the client listens only after 'open': Node
// then throws it from the event loop. Record it, as an app would see it crash.
process.on('uncaughtException', (e) => report.uncaught.push(String((e && e.message) || e)));

const svc = new ChatService(token);
svc.client = new Client({ token, address: base.replace(/\/?$/, '/') });

function timeout(ms, what) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error('timeout: ' + what)), ms));
}

function describeError(e) {
  // The client rejects with the answer's body when there was one, else with the error.
  if (!(e instanceof Error)) return { kind: 'api', body: e };
  return { kind: 'transport', message: String((e && e.message) || e) };
}

async function call(step, method, request) {
  const started = Date.now();
  try {
    const response = await Promise.race([svc[method](request), timeout(STEP_MS, method)]);
    report.steps.push({ step, method, request, ok: true, response, ms: Date.now() - started });
    return response;
  } catch (e) {
    report.steps.push({ step, method, request, ok: false, error: describeError(e), ms: Date.now() - started });
    return null;
  }
}

async function until(condition, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

const texts = () => report.stream.frames.filter((f) => f && f.message).map((f) => f.message.text);
const streamOver = () => report.stream.closed !== null || report.stream.frames.some((f) => f && !f.message);

async function main() {
  const created = await call('create', 'create', { name: 'npm-' + names, description: 'made by m3o@1.0.1783' });
  // An app written to the other edition reads a key that is not there (undefined); the
  // drive goes on with the id the answer did carry, to record what the next calls say.
  const other = names === 'group' ? 'room' : 'group';
  report.answered_as = created && (created[one] ? one : created[other] ? other : null);
  const id = created && report.answered_as && created[report.answered_as].id;
  report.id = id || null;
  if (!id) return;
  await call('invite', 'invite', { [idKey]: id, user_id: 'alice' });

  let stream = null;
  try {
    stream = await Promise.race([svc.join({ [idKey]: id, user_id: 'bob' }), timeout(STEP_MS, 'join')]);
  } catch (e) {
    report.stream.errors.push(String(e.message || e));
  }
  if (stream) {
    report.stream.opened = true;
    stream.onMessage((frame) => report.stream.frames.push(frame));
    stream.onError((e) => report.stream.errors.push(String(e.message || e)));
    stream.onClose((e) => {
      report.stream.closed = report.stream.closed || { message: e.message };
    });
    // The close code is not passed to onClose; read it from the connection it wraps.
    stream.conn.on('close', (code, reason) => {
      report.stream.closed = { code, reason: String(reason), message: 'closed with error ' + reason };
    });
    // Join adds the joiner; once bob is listed as a member, the stream is live.
    await until(async () => {
      if (streamOver()) return true;
      const listed = await svc.list({ user_id: 'bob' }).catch(() => null);
      report.stream.joined_visible = Boolean(listed && (listed[many] || []).some((g) => g.id === id));
      return report.stream.joined_visible;
    }, STEP_MS);
  }
  await call('send_own', 'send', { [idKey]: id, user_id: 'bob', text: 'own message' });
  await call('send', 'send', { [idKey]: id, user_id: 'alice', text: 'hello from npm', subject: 'npm', client: 'node' });
  await call('send_second', 'send', { [idKey]: id, user_id: 'alice', text: 'second' });
  if (stream) await until(() => texts().includes('second') || streamOver(), STEP_MS);

  await call('history', 'history', { [idKey]: id });
  await call('list', 'list', {});
  await call('list_user', 'list', { user_id: 'alice' });
  await call('kick', 'kick', { [idKey]: id, user_id: 'alice' });
  await call('send_kicked', 'send', { [idKey]: id, user_id: 'alice', text: 'after kick' });
  await call('leave', 'leave', { [idKey]: id, user_id: 'bob' });
  await call('invite_missing_user', 'invite', { [idKey]: id });
  await call('history_unknown', 'history', { [idKey]: '00000000-0000-4000-8000-000000000000' });
  await call('delete', 'delete', { [idKey]: id });
  await call('history_deleted', 'history', { [idKey]: id });
  if (stream) stream.conn.close();
}

Promise.race([main(), timeout(60000, 'the whole drive')])
  .catch((e) => report.uncaught.push(String(e.message || e)))
  .finally(() => {
    process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(0));
  });

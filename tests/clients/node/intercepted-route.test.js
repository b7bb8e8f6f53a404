'use strict';
// The intercepted route, called the way the user report does it: curl and a
// Node fetch POSTing {"from":{"id":...},"text":...} with a guest token, plus the
// client-chosen `id` legacy clients send. The upstream (which, like the vendor,
// answers an opaque 500 to a body with `id` or without `to`) must get the
// sanitized body: no `id`, the configured `to`, `from.id` kept. The client must
// get the upstream's answer unchanged.

const h = require('../lib/harness');
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startUpstream } = require('../lib/upstream');
const { startGuestgate } = require('../lib/guestgate');

const QUEUE = { id: 'queue-123' };
let upstream;
let gg;
let chat; // a guest chat created through guestgate: { id, jwt, member: { id } }
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'guestgate-curl-'));

const messagesPath = (convId) => `/api/v2/conversations/messaging/guest/conversations/${convId}/messages`;

// Runs curl; returns { status, headers (lower-cased), body: Buffer }.
function curl(args) {
  const hdr = path.join(tmp, `h-${Math.random()}`);
  const out = path.join(tmp, `b-${Math.random()}`);
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--noproxy', '*', '-D', hdr, '-o', out, '-w', '%{http_code}', ...args], (err, stdout, stderr) => {
      if (err) return reject(new Error(`curl failed: ${err.message}\n${stderr}`));
      const headers = {};
      for (const line of fs.readFileSync(hdr, 'latin1').split('\r\n').slice(1)) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status: Number(stdout), headers, body: fs.readFileSync(out) });
    });
  });
}

function lastRequestTo(p) {
  const recs = upstream.requests.filter((r) => r.path === p);
  return recs[recs.length - 1];
}

before(async () => {
  upstream = await startUpstream();
  gg = await startGuestgate({ upstreamUrl: upstream.url, to: QUEUE });
  // The chat is created the way the report says: "via the same API just
  // seconds before" (a pass-through route).
  const res = await curl(['-X', 'POST', `${gg.url}/api/v2/webchat/guest/conversations`,
    '-H', 'Content-Type: application/json',
    '-d', JSON.stringify({ organizationId: 'org-1', deploymentId: 'dep-1', routingTarget: { targetType: 'QUEUE', targetAddress: 'Chat Queue' }, memberInfo: { displayName: 'curl guest' } })]);
  assert.equal(res.status, 200, res.body.toString());
  chat = JSON.parse(res.body);
  assert.ok(chat.jwt && chat.member.id);
});

after(async () => {
  if (gg) await gg.stop();
  if (upstream) await upstream.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('curl as in the user report, plus a client id: upstream gets it sanitized, curl gets the answer', async () => {
  const sent = `{"id":"client-msg-0001","from":{"id":"${chat.member.id}"},"text":"Hello"}`;
  const args = (base) => ['-X', 'POST', `${base}${messagesPath(chat.id)}`,
    '-H', `Authorization: Bearer ${chat.jwt}`,
    '-H', 'Content-Type: application/json',
    '-d', sent];

  // Straight at the upstream the vendor behaviour shows: an opaque 500.
  const direct = await curl(args(upstream.url));
  assert.equal(direct.status, 500);

  const n = upstream.requests.length;
  const res = await curl(args(gg.url));
  const got = upstream.requests.slice(n);
  assert.equal(got.length, 1, 'exactly one request reached the upstream');
  const rec = got[0];
  assert.equal(rec.method, 'POST');
  assert.equal(rec.target, messagesPath(chat.id));
  const forwarded = JSON.parse(rec.body);
  assert.deepEqual(forwarded, { from: { id: chat.member.id }, text: 'Hello', to: QUEUE });
  assert.ok(!('id' in forwarded), 'the client id is stripped');
  assert.equal(rec.headers.authorization, `Bearer ${chat.jwt}`);
  assert.match(rec.headers['content-type'], /^application\/json/);
  assert.equal(Number(rec.headers['content-length']), rec.body.length);

  // curl got the upstream's answer unchanged (curl sends no Accept-Encoding,
  // so the upstream's bytes on the wire are the JSON itself).
  assert.equal(rec.response.status, 200);
  assert.equal(res.status, rec.response.status);
  assert.equal(res.body.toString('hex'), rec.response.wire.toString('hex'));
  for (const k of ['content-type', 'inin-correlation-id', 'cache-control', 'x-upstream-seq']) {
    assert.equal(res.headers[k], rec.response.headers[k], `response header ${k}`);
  }
  assert.equal(JSON.parse(res.body).reply.text, 'Thanks! Queue queue-123 received "Hello".');
});

test('curl with the report\'s exact body (no id, no to): guestgate adds the to', async () => {
  const sent = `{"from":{"id":"${chat.member.id}"},"text":"Hello"}`;
  const res = await curl(['-X', 'POST', `${gg.url}${messagesPath(chat.id)}`,
    '-H', `Authorization: Bearer ${chat.jwt}`, '-H', 'Content-Type: application/json', '-d', sent]);
  const rec = lastRequestTo(messagesPath(chat.id));
  assert.deepEqual(JSON.parse(rec.body), { from: { id: chat.member.id }, text: 'Hello', to: QUEUE });
  assert.equal(res.status, 200);
  assert.equal(res.body.toString(), rec.response.wire.toString());
});

test('Node fetch with a client id and its own to: id stripped, to overridden, answer relayed', async () => {
  const text = 'Grüße 👋 — "quoted", \\back\\slash, <tag>';
  const sent = { id: crypto.randomUUID(), from: { id: chat.member.id, nickname: 'Fetch Guest' }, text, to: { id: 'guest-picked-queue' } };
  // A number past double precision, written by hand (JSON.stringify would round it).
  const sentText = `${JSON.stringify(sent).slice(0, -1)},"metadata":{"big":12345678901234567890}}`;
  const n = upstream.requests.length;
  const res = await fetch(`${gg.url}${messagesPath(chat.id)}?source=fetch&x=1`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${chat.jwt}` },
    body: sentText,
  });
  const body = await res.text();
  const got = upstream.requests.slice(n);
  assert.equal(got.length, 1);
  const rec = got[0];
  assert.equal(rec.target, `${messagesPath(chat.id)}?source=fetch&x=1`, 'path and query forwarded as sent');
  const forwarded = JSON.parse(rec.body);
  assert.ok(!('id' in forwarded));
  assert.deepEqual(forwarded.from, sent.from, 'from (with its id) kept');
  assert.deepEqual(forwarded.to, QUEUE, 'the configured to replaces the client\'s');
  assert.equal(forwarded.text, text);
  // The big number keeps every digit (JSON.parse would round it): compare the raw text.
  assert.match(rec.body.toString(), /"big":12345678901234567890\b/);

  // fetch accepted gzip, so the upstream compressed; fetch decoded it.
  assert.equal(rec.response.headers['content-encoding'], 'gzip');
  assert.equal(res.status, rec.response.status);
  assert.equal(body, rec.response.body.toString('utf8'));
  assert.equal(res.headers.get('inin-correlation-id'), rec.response.headers['inin-correlation-id']);
  assert.equal(res.headers.get('content-type'), 'application/json');
  assert.equal(JSON.parse(body).reply.text, `Thanks! Queue queue-123 received "${text}".`);
});

test('an upstream refusal on the intercepted route reaches the client unchanged', async () => {
  const res = await fetch(`${gg.url}${messagesPath(chat.id)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer expired-token' },
    body: JSON.stringify({ id: 'x', from: { id: chat.member.id }, text: 'Hello' }),
  });
  const body = await res.text();
  const rec = lastRequestTo(messagesPath(chat.id));
  assert.equal(rec.headers.authorization, 'Bearer expired-token');
  assert.equal(res.status, 401);
  assert.equal(body, rec.response.body.toString('utf8'));
  assert.equal(JSON.parse(body).code, 'bad.credentials');
});

test('the create-chat call made with curl passed through unchanged', async () => {
  const create = upstream.requests.find((r) => r.path === '/api/v2/webchat/guest/conversations');
  assert.ok(create);
  assert.equal(create.headers['content-type'], 'application/json');
  assert.match(create.headers['user-agent'], /^curl\//);
  assert.equal(JSON.parse(create.body).memberInfo.displayName, 'curl guest');
  h.assertOnlyLoopback();
});

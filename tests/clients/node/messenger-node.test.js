'use strict';
// Node's built-in WebSocket (the WHATWG one, from undici: global in Node >= 22;
// on Node 20 and 21 behind --experimental-websocket, which run.sh passes)
// speaking the Messenger protocol through guestgate's [[websocket_rules]]
// (lib/messenger.js) to the Web-Messaging-like upstream (lib/webmessaging.js).
// Assertions are on what the upstream recorded and on what the client got.

const h = require('../lib/harness');
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startMessengerStack, CLIENT_DEPLOYMENT_ID } = require('../lib/messenger');

let stack;

before(async () => {
  stack = await startMessengerStack();
});

after(async () => {
  if (stack) await stack.stop();
});

// A WebSocket with its messages queued (next()) and its CloseEvent (closed).
function open(url, protocols) {
  assert.equal(typeof WebSocket, 'function',
    `Node ${process.version} has no global WebSocket: use Node >= 22, or node --experimental-websocket on Node 20/21 (run.sh adds it)`);
  const ws = new WebSocket(url, protocols);
  const queue = [];
  const waiting = [];
  ws.addEventListener('message', (e) => {
    const w = waiting.shift();
    if (w) w(e.data); else queue.push(e.data);
  });
  const closed = new Promise((resolve) => ws.addEventListener('close', (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean })));
  const opened = new Promise((resolve, reject) => {
    ws.addEventListener('open', () => resolve());
    ws.addEventListener('error', () => reject(new Error(`WebSocket ${url} failed to open`)));
  });
  const next = (timeoutMs = 10000) => (queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message from the server in time')), timeoutMs);
    waiting.push((d) => { clearTimeout(t); resolve(d); });
  }));
  const sendJson = (obj) => ws.send(JSON.stringify(obj));
  return { ws, opened, closed, next, sendJson };
}

function withTimeout(promise, label, ms = 10000) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out: ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

// Opens through `base`, configures a session; returns the client, the
// upstream's record of the connection and the token.
async function session(base, protocols) {
  const { upstream } = stack;
  const n = upstream.connections.length;
  const c = open(`${base}/v1?deploymentId=${CLIENT_DEPLOYMENT_ID}`, protocols);
  await c.opened;
  const token = crypto.randomUUID();
  c.sendJson({ action: 'configureSession', token, deploymentId: CLIENT_DEPLOYMENT_ID, startNew: false });
  const answer = JSON.parse(await c.next());
  assert.equal(answer.class, 'SessionResponse', JSON.stringify(answer));
  assert.equal(answer.code, 200);
  assert.equal(answer.body.connected, true);
  assert.equal(upstream.connections.length, n + 1);
  return { c, conn: upstream.connections[n], token };
}

function tamperedMessage(token, text) {
  return {
    action: 'onMessage',
    token,
    message: {
      type: 'Text',
      text,
      id: 'client-chosen-id',
      metadata: { customMessageId: 'c-1' },
      channel: { metadata: { customAttributes: { plan: 'gold' } } },
    },
    channel: { from: { nickname: 'Eve' }, to: { id: 'another-queue' }, messageId: 'client-chosen-id', time: '2026-01-01T00:00:00.000Z' },
    time: '2026-01-01T00:00:00.000Z',
  };
}

test('straight at the upstream the client\'s message.id and channel arrive, and compression is negotiated', async () => {
  const { c, conn, token } = await session(stack.upstream.wsUrl);
  c.sendJson(tamperedMessage(token, 'direct'));
  await c.next();
  const got = conn.received[1].json;
  assert.equal(got.message.id, 'client-chosen-id');
  assert.equal(got.channel.to.id, 'another-queue');
  assert.match(conn.headers['sec-websocket-extensions'], /permessage-deflate/, 'Node offers permessage-deflate');
  assert.equal(c.ws.extensions, 'permessage-deflate');
  c.ws.close(1000);
  await c.closed;
});

test('configureSession and onMessage are edited by the rules; unmatched frames and the upstream\'s answers are relayed unchanged', async () => {
  const { c, conn, token } = await session(stack.wsUrl, ['messenger-test', 'other']);

  // The upgrade request: query and subprotocol kept, compression offer removed.
  assert.equal(conn.target, `/v1?deploymentId=${CLIENT_DEPLOYMENT_ID}`);
  assert.equal(conn.headers['sec-websocket-protocol'], 'messenger-test, other');
  assert.equal(c.ws.protocol, 'messenger-test', 'the subprotocol the upstream chose reaches the client');
  assert.equal(conn.headers['sec-websocket-extensions'], undefined, 'guestgate removes Sec-WebSocket-Extensions');
  assert.equal(c.ws.extensions, '', 'nothing negotiated');

  assert.deepEqual(conn.received[0].json, { action: 'configureSession', token, deploymentId: stack.deploymentId, startNew: false });

  // A Text message with a client id and a channel.
  const sent = tamperedMessage(token, 'Hello from Node ✓');
  c.sendJson(sent);
  const echo = JSON.parse(await c.next());
  const got = conn.received[1].json;
  assert.equal(Object.hasOwn(got.message, 'id'), false, 'message.id removed');
  assert.equal(Object.hasOwn(got, 'channel'), false, 'channel removed');
  assert.equal(got.deploymentId, stack.deploymentId);
  const expected = structuredClone(sent);
  delete expected.message.id;
  delete expected.channel;
  expected.deploymentId = stack.deploymentId;
  assert.deepEqual(got, expected, 'nothing else changed');
  // The echo as the upstream sent it.
  assert.equal(echo.class, 'StructuredMessage');
  assert.equal(echo.body.text, 'Hello from Node ✓');
  assert.equal(JSON.stringify(echo), conn.sent[1].text);

  // Typing: an Event is allowed too; its id removed the same way.
  c.sendJson({ action: 'onMessage', token, message: { type: 'Event', id: 'typing-1', events: [{ eventType: 'Typing', typing: { type: 'On' } }] } });
  const typing = JSON.parse(await c.next());
  assert.deepEqual(typing.body.events, [{ eventType: 'Typing', typing: { type: 'On' } }]);
  assert.deepEqual(conn.received[2].json, {
    action: 'onMessage', token, message: { type: 'Event', events: [{ eventType: 'Typing', typing: { type: 'On' } }] }, deploymentId: stack.deploymentId,
  });

  // echo matches no rule: with unmatched = "forward" it is relayed as sent,
  // client id and channel included.
  const echoFrame = '{"action":"echo","token":"' + token + '","message":{"type":"Text","text":"ping","id":"e-1"},"channel":{"x":1}}';
  c.ws.send(echoFrame);
  JSON.parse(await c.next());
  assert.equal(conn.received[3].text, echoFrame, 'an unmatched message is relayed byte for byte');

  c.ws.close(1000, 'bye');
  const closed = await withTimeout(c.closed, 'client close');
  assert.equal(closed.code, 1000);
  await stack.upstream.waitFor(() => conn.closed, 'the upstream side to close');
  assert.deepEqual(conn.closed, { code: 1000, reason: 'bye' }, 'the client\'s close is relayed');
});

test('a text frame that is not JSON closes both sides with 1008 invalid-body and is not forwarded', async () => {
  const { c, conn } = await session(stack.wsUrl);
  c.ws.send('hello, this is not JSON');
  const closed = await withTimeout(c.closed, 'guestgate closing the client');
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, 'invalid-body');
  await stack.upstream.waitFor(() => conn.closed, 'the upstream side to close');
  assert.deepEqual(conn.closed, { code: 1008, reason: 'invalid-body' });
  assert.deepEqual(conn.received.map((r) => r.json && r.json.action), ['configureSession'], 'nothing of it reached the upstream');
  assert.equal(conn.sent.length, 1);
});

test('a binary frame closes both sides with 1003 and is not forwarded', async () => {
  const { c, conn } = await session(stack.wsUrl);
  c.ws.send(new Uint8Array([0x7b, 0x7d, 0x00, 0xff]));
  const closed = await withTimeout(c.closed, 'guestgate closing the client');
  assert.equal(closed.code, 1003);
  assert.equal(closed.reason, 'binary-not-allowed');
  await stack.upstream.waitFor(() => conn.closed, 'the upstream side to close');
  assert.equal(conn.closed.code, 1003);
  assert.deepEqual(conn.received.map((r) => r.kind), ['text'], 'no binary message reached the upstream');
});

test('only loopback was reached', () => {
  h.assertOnlyLoopback();
});

'use strict';
// The Web Messaging guest page (examples/messenger/) in Debian's Chromium,
// headless, speaking the Messenger protocol with the browser's own WebSocket.
// Three loopback ports: the page's origin (lib/static.js), guestgate with the
// messenger [[websocket_rules]] on /v1 (lib/messenger.js) and the
// Web-Messaging-like upstream (lib/webmessaging.js), which records the upgrade
// request and every frame it gets.
//
// The page sends a client `message.id` and a top-level `channel` on every
// message (messenger.js). Straight at the upstream they arrive; through
// guestgate they do not, the deployment is the configured one, and the page
// still shows the vendor's echo. A message type the rules do not allow closes
// the connection with 1008, which the page shows.

const h = require('../lib/harness');
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { launchChromium } = require('../lib/browser');
const { REPO_ROOT } = require('../lib/guestgate');
const { serveStatic } = require('../lib/static');
const { startMessengerStack, CLIENT_DEPLOYMENT_ID } = require('../lib/messenger');

const ARTIFACTS = path.join(__dirname, '..', '.artifacts');
const PAGE_DIR = path.join(REPO_ROOT, 'examples', 'messenger');

let stack;
let site;
let browser;
let chromiumRun; // the browser and its profile

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  stack = await startMessengerStack();
  site = await serveStatic(PAGE_DIR);
  chromiumRun = await launchChromium();
  browser = chromiumRun.context;
});

after(async () => {
  if (chromiumRun) await chromiumRun.close();
  if (site) await site.close();
  if (stack) await stack.stop();
});

// Opens the page with `gateway` as its WebSocket base and records the frames
// Chromium sends and receives on it (as the browser saw them).
async function openPage(gateway) {
  const page = await browser.newPage();
  const frames = { sent: [], received: [] };
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(m.text()));
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => frames.sent.push(f.payload));
    ws.on('framereceived', (f) => frames.received.push(f.payload));
  });
  await page.goto(`${site.origin}/index.html?gateway=${encodeURIComponent(gateway)}&deploymentId=${CLIENT_DEPLOYMENT_ID}`);
  return { page, frames, consoleLines };
}

async function startChat(page) {
  const { upstream } = stack;
  const n = upstream.connections.length;
  await page.click('#connect');
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
  assert.equal(upstream.connections.length, n + 1, 'one upgrade reached the upstream');
  return upstream.connections[n];
}

// The page's own frames, as the browser sent them.
function parsedSent(frames) {
  return frames.sent.map((p) => JSON.parse(p));
}

async function sendFromPage(page, text, conn, count) {
  await page.fill('#message', text);
  await page.click('#send');
  await page.waitForSelector(`#log li.inbound:nth-child(${count})`, { timeout: 15000 });
  await stack.upstream.waitFor(() => conn.sent.length >= 1 + count, 'the echo');
}

test('straight at the upstream, the page\'s message.id, channel and deflate offer all arrive (what guestgate is for)', async () => {
  const { page, frames } = await openPage(stack.upstream.wsUrl);
  try {
    const conn = await startChat(page);
    await sendFromPage(page, 'hello, direct', conn, 1);
    const [, onMessage] = conn.received.map((r) => r.json);
    assert.deepEqual(onMessage, parsedSent(frames)[1], 'the upstream got the page\'s frame as sent');
    assert.equal(typeof onMessage.message.id, 'string');
    assert.equal(onMessage.channel.to.id, 'any-queue-i-like');
    assert.equal(onMessage.deploymentId, undefined);
    assert.match(conn.headers['sec-websocket-extensions'] || '', /permessage-deflate/, 'Chromium offers compression');
    assert.equal(conn.extensions, 'permessage-deflate', 'and the upstream accepts it when it gets the offer');
  } finally {
    await page.close();
  }
});

test('through guestgate the page chats; the upstream gets the frames edited and the page shows the echo', async () => {
  const { page, frames, consoleLines } = await openPage(stack.wsUrl);
  try {
    const conn = await startChat(page);
    assert.equal(await page.textContent('#status'), 'Connected (new session)');

    // The upgrade request: path and query as the page sent them, Origin
    // kept, the compression offer removed (nothing negotiated).
    assert.equal(conn.target, `/v1?deploymentId=${CLIENT_DEPLOYMENT_ID}`);
    assert.equal(conn.headers.origin, site.origin);
    assert.equal(conn.headers['sec-websocket-extensions'], undefined, 'guestgate removes Sec-WebSocket-Extensions');
    assert.equal(conn.extensions, '');

    const text = 'Hello from Chromium over Web Messaging ✓';
    await sendFromPage(page, text, conn, 1);

    const sent = parsedSent(frames);
    assert.deepEqual(sent.map((f) => f.action), ['configureSession', 'onMessage']);
    const [pageSession, pageMessage] = sent;
    assert.equal(pageSession.deploymentId, CLIENT_DEPLOYMENT_ID);
    assert.equal(typeof pageMessage.message.id, 'string', 'the page sent its own message.id');
    assert.ok(pageMessage.channel, 'the page sent a top-level channel');

    const got = conn.received;
    assert.deepEqual(got.map((r) => r.kind), ['text', 'text']);
    const [session, message] = got.map((r) => r.json);
    // configureSession: only the deployment replaced.
    assert.deepEqual(session, { ...pageSession, deploymentId: stack.deploymentId });
    // onMessage: message.id and channel gone, deployment set, the rest as sent
    // (message.channel.metadata.customAttributes is not in this config's remove list).
    assert.equal(Object.hasOwn(message.message, 'id'), false, 'message.id removed');
    assert.equal(Object.hasOwn(message, 'channel'), false, 'channel removed');
    assert.equal(message.deploymentId, stack.deploymentId);
    const expected = structuredClone(pageMessage);
    delete expected.message.id;
    delete expected.channel;
    expected.deploymentId = stack.deploymentId;
    assert.deepEqual(message, expected);
    assert.equal(message.token, pageSession.token);
    assert.equal(message.message.text, text);

    // Upstream -> page: relayed unchanged, byte for byte.
    assert.deepEqual(frames.received, conn.sent.map((s) => s.text));
    // The page shows the vendor's echo with the server's id, not the page's.
    const echo = conn.sent[1].json.body;
    const li = page.locator('#log li.inbound').first();
    assert.equal(await li.locator('.text').textContent(), text);
    assert.equal(await li.getAttribute('data-id'), echo.id);
    assert.notEqual(echo.id, pageMessage.message.id);
    assert.equal(await li.locator('.who').textContent(), 'You');

    // A second message on the same connection: edited the same way.
    await sendFromPage(page, 'second one', conn, 2);
    const second = conn.received[2].json;
    assert.equal(second.message.text, 'second one');
    assert.equal(Object.hasOwn(second.message, 'id'), false);
    assert.equal(Object.hasOwn(second, 'channel'), false);
    assert.equal(await page.locator('#log li.inbound').nth(1).getAttribute('data-id'), conn.sent[2].json.body.id);

    await page.screenshot({ path: path.join(ARTIFACTS, 'messenger-chat.png') });
    assert.equal(await page.getAttribute('#status', 'data-state'), 'connected', 'still connected');
    assert.deepEqual(consoleLines.filter((l) => /WebSocket|error/i.test(l)), []);
  } finally {
    await page.close();
  }
});

test('a tampered message type makes guestgate close with 1008; the page shows the close code', async () => {
  const { page, frames } = await openPage(stack.wsUrl);
  try {
    const conn = await startChat(page);
    // As a tampered client (or someone at the console) would: message.type "Notice".
    await page.evaluate(() => window.guestChat.send('forged notice', { type: 'Notice' }));
    await page.waitForSelector('#status[data-state="closed"]', { timeout: 15000 });

    assert.equal(await page.getAttribute('#status', 'data-close-code'), '1008', 'CloseEvent.code');
    assert.equal(await page.getAttribute('#status', 'data-close-reason'), 'field-not-allowed', 'CloseEvent.reason');
    assert.equal(await page.textContent('#status'), 'Disconnected: 1008 field-not-allowed');
    await page.screenshot({ path: path.join(ARTIFACTS, 'messenger-refused.png') });

    // The browser sent the frame; nothing of it reached the upstream, which
    // got guestgate's close instead.
    assert.equal(parsedSent(frames)[1].message.type, 'Notice');
    await stack.upstream.waitFor(() => conn.closed, 'the upstream side to be closed');
    assert.deepEqual(conn.received.map((r) => r.json.action), ['configureSession']);
    assert.deepEqual(conn.closed, { code: 1008, reason: 'field-not-allowed' });
    assert.equal(conn.sent.length, 1, 'the upstream answered only the SessionResponse');
  } finally {
    await page.close();
  }
});

test('only loopback was reached', () => {
  h.assertOnlyLoopback();
});

'use strict';
// The custom chat widget (examples/widget/) in Debian's Chromium, headless.
// Three loopback ports: the page's origin, guestgate (CORS allowing only that
// origin) and the upstream. A second static server gives a second origin that
// guestgate does not allow: the browser must refuse that page's calls.

const h = require('../lib/harness');
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { launchChromium } = require('../lib/browser');
const { startUpstream } = require('../lib/upstream');
const { startGuestgate, REPO_ROOT } = require('../lib/guestgate');
const { serveStatic } = require('../lib/static');

const ARTIFACTS = path.join(__dirname, '..', '.artifacts');
const WIDGET_DIR = path.join(REPO_ROOT, 'examples', 'widget');
const MESSAGES_RE = /^\/api\/v2\/conversations\/messaging\/guest\/conversations\/[^/]+\/messages$/;

let upstream;
let gg;
let allowedSite;
let otherSite;
let browser; // a persistent context on a fresh user-data-dir
let chromiumRun; // the browser and its profile

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  upstream = await startUpstream();
  allowedSite = await serveStatic(WIDGET_DIR);
  otherSite = await serveStatic(WIDGET_DIR);
  gg = await startGuestgate({
    upstreamUrl: upstream.url,
    to: { id: 'queue-123' },
    cors: {
      allowed_origins: [allowedSite.origin],
      allowed_methods: ['GET', 'POST', 'OPTIONS'],
      allowed_headers: ['authorization', 'content-type'],
      allow_credentials: false,
      max_age_secs: 600,
    },
  });
  chromiumRun = await launchChromium();
  browser = chromiumRun.context;
});

after(async () => {
  if (chromiumRun) await chromiumRun.close();
  if (gg) await gg.stop();
  for (const s of [allowedSite, otherSite]) if (s) await s.close();
  if (upstream) await upstream.close();
});

async function openWidget(site) {
  const page = await browser.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(m.text()));
  const failedRequests = [];
  page.on('requestfailed', (r) => failedRequests.push(`${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  const gatewayResponses = [];
  page.on('response', async (r) => {
    if (r.url().startsWith(gg.url)) gatewayResponses.push({ method: r.request().method(), url: r.url(), status: r.status(), headers: await r.allHeaders() });
  });
  await page.goto(`${site.origin}/index.html?gateway=${encodeURIComponent(gg.url)}`);
  return { page, consoleLines, failedRequests, gatewayResponses };
}

test('a page on an allowed origin creates a chat and sends a message through guestgate', async () => {
  const { page, consoleLines, gatewayResponses } = await openWidget(allowedSite);
  try {
    const n = upstream.requests.length;
    await page.fill('#name', 'Chromium Guest');
    await page.click('#start');
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
    assert.equal(await page.textContent('#status'), 'Connected as Chromium Guest');

    const text = 'Hello from a real browser ✓';
    await page.fill('#message', text);
    await page.press('#message', 'Enter');
    await page.waitForSelector('#log li.agent', { timeout: 15000 });

    const got = upstream.requests.slice(n);
    assert.deepEqual(got.map((r) => r.method), ['POST', 'POST'], 'create + message, and no preflight reached the upstream');
    const [create, message] = got;
    assert.equal(create.path, '/api/v2/webchat/guest/conversations');
    assert.equal(JSON.parse(create.body).memberInfo.displayName, 'Chromium Guest');
    const chat = h.upstreamJson(create);

    // The message as the page sent it carried a client `id` and no `to`
    // (widget.js); the upstream got it sanitized.
    assert.match(message.path, MESSAGES_RE);
    assert.equal(message.path, `/api/v2/conversations/messaging/guest/conversations/${chat.id}/messages`);
    const forwarded = JSON.parse(message.body);
    assert.deepEqual(forwarded, { from: { id: chat.member.id }, text, to: { id: 'queue-123' } });
    assert.equal(message.headers.authorization, `Bearer ${chat.jwt}`);
    assert.equal(message.headers.origin, allowedSite.origin, 'the browser made a cross-origin call');
    assert.equal(message.response.status, 200);

    // The page shows the upstream's reply.
    const reply = h.upstreamJson(message).reply;
    const agentLine = (await page.textContent('#log li.agent')).trim();
    assert.equal(agentLine, `${reply.from.nickname}${reply.text}`);
    assert.equal(reply.text, `Thanks! Queue queue-123 received "${text}".`);
    assert.equal((await page.textContent('#log li.guest')).trim(), `You${text}`);

    // The browser let the page read both answers because guestgate (the
    // upstream sends no CORS headers) allowed this origin.
    const posts = gatewayResponses.filter((r) => r.method === 'POST');
    assert.equal(posts.length, 2, JSON.stringify(gatewayResponses, null, 1));
    for (const r of posts) assert.equal(r.headers['access-control-allow-origin'], allowedSite.origin, r.url);

    await page.screenshot({ path: path.join(ARTIFACTS, 'widget-allowed-origin.png') });
    assert.deepEqual(consoleLines.filter((l) => /CORS|Failed to load/i.test(l)), []);
  } finally {
    await page.close();
  }
});

test('a page on a non-allowed origin is refused by the browser (CORS)', async () => {
  const { page, consoleLines, failedRequests } = await openWidget(otherSite);
  try {
    const n = upstream.requests.length;
    await page.click('#start');
    await page.waitForSelector('#status[data-state="error"]', { timeout: 15000 });
    assert.match(await page.textContent('#status'), /not allowed by CORS/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'widget-refused-origin.png') });

    // Chromium's own verdict, not just a failed fetch.
    assert.ok(
      consoleLines.some((l) => l.includes(`from origin '${otherSite.origin}' has been blocked by CORS policy`)),
      `expected a CORS refusal in the console, got:\n${consoleLines.join('\n')}`,
    );
    assert.ok(failedRequests.some((l) => l.includes('/api/v2/webchat/guest/conversations')), failedRequests.join('\n'));
    // The preflight was answered (without CORS headers) by guestgate, so the
    // chat was never created upstream.
    assert.deepEqual(upstream.requests.slice(n).map((r) => `${r.method} ${r.path}`), []);
    assert.ok(upstream.requests.every((r) => r.headers.origin !== otherSite.origin));
  } finally {
    await page.close();
  }
});

test('guestgate answers preflights itself and never forwards them', () => {
  assert.ok(upstream.requests.length >= 2);
  assert.deepEqual(upstream.requests.filter((r) => r.method === 'OPTIONS'), []);
  h.assertOnlyLoopback();
});

'use strict';
// Shared set-up for the Node client tests. Require it before any SDK.
//
// - The vendor SDKs read ~/.genesyscloudjavascript*/config at load time (and
//   may take a `host` from it): HOME points at an empty temp dir instead.
// - axios honours HTTP(S)_PROXY: those are removed so loopback calls stay
//   loopback.
// - Every outgoing Node HTTP request and socket is watched; `assertOnlyLoopback`
//   fails a test if anything tried to reach a host other than 127.0.0.1/::1
//   (vendor telemetry, token refresh, a base path that did not take effect).

const assert = require('node:assert/strict');
const dc = require('node:diagnostics_channel');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const home = fs.mkdtempSync(path.join(os.tmpdir(), 'guestgate-clients-home-'));
process.on('exit', () => fs.rmSync(home, { recursive: true, force: true }));
process.env.HOME = home;
process.env.USERPROFILE = home;
for (const k of ['HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'http_proxy', 'https_proxy', 'all_proxy']) delete process.env[k];
process.env.NO_PROXY = process.env.no_proxy = '127.0.0.1,localhost,::1';

const LOOPBACK = new Set(['127.0.0.1', '::1', '[::1]', 'localhost']);
const outgoing = [];
dc.subscribe('http.client.request.start', ({ request }) => {
  outgoing.push({ host: request.host, hostHeader: request.getHeader('host'), path: request.path });
});

function assertOnlyLoopback() {
  const bad = outgoing.filter((r) => !LOOPBACK.has(r.host));
  assert.deepEqual(bad, [], 'a client tried to reach a non-loopback host');
}

// Headers a proxy legitimately changes or adds: connection management (RFC 9110
// section 7.6.1) and the usual forwarding/trace headers. Everything else must
// arrive at the upstream exactly as the client sent it.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
const PROXY_ADDED = new Set(['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', 'forwarded', 'via', 'x-request-id', 'x-real-ip']);

function endToEnd(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) {
    if (k === 'host' || HOP_BY_HOP.has(k)) continue;
    out[k] = v;
  }
  return out;
}

// Compares the request the upstream got straight from a client with the one it
// got from the same client call through guestgate: method, request-target
// (path and query, byte for byte), body bytes and every end-to-end header.
function assertSameRequest(direct, proxied, label = '') {
  assert.ok(direct, `${label}: no direct request recorded`);
  assert.ok(proxied, `${label}: no request reached the upstream through guestgate`);
  assert.equal(proxied.method, direct.method, `${label}: method`);
  assert.equal(proxied.target, direct.target, `${label}: path and query`);
  assert.equal(proxied.body.toString('hex'), direct.body.toString('hex'), `${label}: body bytes`);
  const d = endToEnd(direct.headers);
  const p = endToEnd(proxied.headers);
  const added = Object.keys(p).filter((k) => !(k in d));
  const unexpected = added.filter((k) => !PROXY_ADDED.has(k));
  assert.deepEqual(unexpected, [], `${label}: headers guestgate added that the client did not send`);
  for (const k of added) delete p[k];
  assert.deepEqual(p, d, `${label}: end-to-end headers`);
}

// The upstream's decoded JSON answer, as it sent it.
function upstreamJson(rec) {
  return JSON.parse(rec.response.body.toString('utf8'));
}

// Checks an SDK "extended response" against the response the upstream sent.
function assertSameResponse(sdkResponse, rec, label = '') {
  assert.ok(rec && rec.response, `${label}: upstream recorded no response`);
  assert.equal(sdkResponse.status, rec.response.status, `${label}: status`);
  assert.deepEqual(sdkResponse.body, upstreamJson(rec), `${label}: body`);
  for (const h of ['content-type', 'inin-correlation-id', 'cache-control', 'pragma', 'expires', 'x-upstream-seq']) {
    assert.equal(sdkResponse.headers[h], rec.response.headers[h], `${label}: response header ${h}`);
  }
}

// Makes the same SDK call twice, first with the SDK pointed straight at the
// upstream, then at guestgate (pointAt(baseUrl) sets the SDK's base URL), and
// checks the pass-through contract on the pair. Returns the proxied call's SDK
// response and both recorded requests.
function directAndThrough({ upstream, guestgate, pointAt }) {
  return async (label, call) => {
    pointAt(upstream.url);
    let n = upstream.requests.length;
    const directRes = await call();
    const direct = upstream.requests.slice(n);
    assert.equal(direct.length, 1, `${label}: the direct call should reach the upstream once`);
    assertSameResponse(directRes, direct[0], `${label} (direct)`);

    pointAt(guestgate.url);
    n = upstream.requests.length;
    const res = await call();
    const proxied = upstream.requests.slice(n);
    assert.equal(proxied.length, 1, `${label}: the call through guestgate should reach the upstream once`);
    assertSameRequest(direct[0], proxied[0], label);
    assertSameResponse(res, proxied[0], label);
    return { res, direct: direct[0], proxied: proxied[0] };
  };
}

module.exports = {
  outgoing,
  assertOnlyLoopback,
  assertSameRequest,
  assertSameResponse,
  directAndThrough,
  upstreamJson,
};

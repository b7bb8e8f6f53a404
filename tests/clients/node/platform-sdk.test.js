'use strict';
// The vendor's platform SDK (npm purecloud-platform-client-v2) through
// guestgate: pass-through routes, so the upstream must get exactly what the
// SDK sends and the SDK exactly what the upstream answers. Each call is made
// straight at the upstream and through guestgate and the pair is compared.

const h = require('../lib/harness'); // first: isolates HOME and proxies
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const platformClient = require('purecloud-platform-client-v2');
const { startUpstream } = require('../lib/upstream');
const { startGuestgate } = require('../lib/guestgate');

let upstream;
let gg;
const client = platformClient.ApiClient.instance;
const usersApi = new platformClient.UsersApi();
const conversationsApi = new platformClient.ConversationsApi();

// How a user points this SDK at guestgate: the SDK's own gateway setting
// (ApiClient.setGateway -> Configuration.getConfUrl builds every API URL from
// protocol, host and port).
function pointAt(baseUrl) {
  const u = new URL(baseUrl);
  client.setGateway({ host: u.hostname, port: Number(u.port), protocol: u.protocol.replace(':', '') });
}

let directAndThroughGuestgate;

before(async () => {
  upstream = await startUpstream();
  gg = await startGuestgate({ upstreamUrl: upstream.url, to: { id: 'queue-123' } });
  directAndThroughGuestgate = h.directAndThrough({ upstream, guestgate: gg, pointAt });
  client.setReturnExtendedResponses(true);
  client.setEnvironment(platformClient.PureCloudRegionHosts.us_east_1);
  // An access token an app would have from its OAuth flow; no refresh token is
  // set, so the SDK never tries to reach the vendor's login host.
  client.setAccessToken('platform-token-abc');
});

after(async () => {
  if (gg) await gg.stop();
  if (upstream) await upstream.close();
});

test('setGateway points the platform SDK at guestgate', () => {
  pointAt('http://127.0.0.1:8080');
  assert.equal(client.config.getConfUrl('api', client.config.basePath), 'http://127.0.0.1:8080');
});

test('UsersApi.getUsers: GET with query and bearer token passes through', async () => {
  const { res, proxied } = await directAndThroughGuestgate('getUsers', () =>
    usersApi.getUsers({ pageSize: 5, pageNumber: 2, expand: ['presence', 'routingStatus'], sortOrder: 'ASC', state: 'active' }));
  assert.equal(res.status, 200);
  assert.equal(res.body.pageNumber, 2);
  assert.equal(res.body.entities[0].presence.presenceDefinition.systemPresence, 'Available');
  assert.equal(proxied.path, '/api/v2/users');
  assert.match(proxied.query, /pageSize=5/);
  assert.match(proxied.query, /expand=presence(%2C|,)routingStatus/);
  assert.equal(proxied.headers.authorization, 'Bearer platform-token-abc');
});

test('ConversationsApi.postConversationsMessageCommunicationMessages: POST body bytes pass through', async () => {
  const body = { textBody: 'Agent reply — ünïcødé ✓, with an "id" inside text', id: 'client-side-id-must-survive-here' };
  const { res, proxied } = await directAndThroughGuestgate('agent message', () =>
    conversationsApi.postConversationsMessageCommunicationMessages('conv-abc', 'comm-def', body));
  assert.equal(res.status, 202);
  assert.equal(res.body.normalizedMessage.text, body.textBody);
  assert.equal(res.body.conversationId, 'conv-abc');
  // Not the intercepted route: the top-level `id` is NOT stripped and no `to` is added.
  assert.deepEqual(JSON.parse(proxied.body), body);
});

test('an upstream 404 error body reaches the SDK unchanged', async () => {
  const { proxied } = await directAndThroughGuestgate('404', async () => {
    try {
      await usersApi.getUser('no-such-user');
    } catch (e) {
      return e;
    }
    throw new Error('the SDK call should have been rejected');
  });
  assert.equal(proxied.response.status, 404);
  assert.equal(h.upstreamJson(proxied).code, 'not.found');
});

test('no SDK call left loopback', () => {
  assert.ok(h.outgoing.length >= 6, 'the SDK calls were observed');
  h.assertOnlyLoopback();
});

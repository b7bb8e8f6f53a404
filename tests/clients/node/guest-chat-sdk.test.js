'use strict';
// The vendor's guest chat SDK (npm purecloud-guest-chat-client) through
// guestgate. Its webchat routes are not the intercepted route, so guestgate
// must pass them through untouched: every call is made once straight at the
// upstream and once through guestgate, and the two requests the upstream
// received must be the same (method, path, query, body bytes, end-to-end
// headers); the SDK must get exactly what the upstream answered.

const h = require('../lib/harness'); // first: isolates HOME and proxies
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const guestChat = require('purecloud-guest-chat-client');
const { startUpstream } = require('../lib/upstream');
const { startGuestgate } = require('../lib/guestgate');

let upstream;
let gg;
const client = guestChat.ApiClient.instance;
const webChatApi = new guestChat.WebChatApi();

// How a user points this SDK at guestgate. setEnvironment() always produces
// `https://api.<environment>` (configuration.js), which cannot name a plain
// HTTP gateway on a port; every call is built from `client.config.basePath`
// (ApiClient.buildUrl), so a user behind a gateway sets that after
// setEnvironment(). A gateway served as https://api.<domain> would need only
// client.setEnvironment('<domain>').
//
// SDK 13.2.0 quirk: ApiClient.addHeaders() merges a call's headers *into*
// client.defaultHeaders when the call has no auth (postWebchatGuestConversations),
// and the logger then overwrites `Authorization` in that object with
// "[REDACTED]", so every later JWT call sends `Authorization: [REDACTED]`
// (a 401 from the vendor, with or without guestgate). Starting each call from
// the SDK's initial empty defaultHeaders keeps the direct and the proxied call
// identical and working.
function pointAt(baseUrl) {
  client.setEnvironment('mypurecloud.com');
  client.config.basePath = baseUrl;
  client.defaultHeaders = {};
}

let directAndThroughGuestgate;

before(async () => {
  upstream = await startUpstream();
  gg = await startGuestgate({ upstreamUrl: upstream.url, to: { id: 'queue-123' } });
  directAndThroughGuestgate = h.directAndThrough({ upstream, guestgate: gg, pointAt });
  client.setReturnExtendedResponses(true);
});

after(async () => {
  if (gg) await gg.stop();
  if (upstream) await upstream.close();
});

test('setEnvironment alone cannot name a loopback HTTP gateway (why tests set config.basePath)', () => {
  client.setEnvironment('http://127.0.0.1:8080');
  assert.equal(client.config.basePath, 'https://api.127.0.0.1:8080');
  client.setEnvironment('guestgate.example.com');
  assert.equal(client.config.basePath, 'https://api.guestgate.example.com');
});

test('guest chat SDK: create, send, typing, list and read through guestgate', async (t) => {
  let chat;
  await t.test('postWebchatGuestConversations returns the upstream id, jwt, member and event stream', async () => {
    const body = {
      organizationId: '12b1a3fe-7a80-4b50-45f5-df88c0f9efad',
      deploymentId: 'a3e316a7-ec8b-4fe9-5a49-dded9dcc097e',
      routingTarget: { targetType: 'QUEUE', targetAddress: 'Chat Queue' },
      memberInfo: { displayName: 'JavaScript Guest', customFields: { firstName: 'John', lastName: 'Doe' } },
    };
    const { res, proxied } = await directAndThroughGuestgate('create chat', () => webChatApi.postWebchatGuestConversations(body));
    assert.equal(res.status, 200);
    chat = res.body;
    assert.match(chat.id, /^conv-/);
    assert.equal(chat.jwt.split('.').length, 3);
    assert.match(chat.eventStreamUri, /^ws:\/\//);
    assert.match(chat.member.id, /^member-/);
    assert.deepEqual(JSON.parse(proxied.body), body);
    client.setJwt(chat.jwt);
  });

  await t.test('postWebchatGuestConversationMemberMessages (the SDK webchat route) passes through untouched', async () => {
    const text = 'Hello from the guest SDK — ünïcødé ✓ "quoted" {"id":"not-a-field"}';
    const { res, proxied } = await directAndThroughGuestgate('send message', () =>
      webChatApi.postWebchatGuestConversationMemberMessages(chat.id, chat.member.id, { body: text, bodyType: 'standard' }));
    assert.equal(res.body.body, text);
    assert.equal(res.body.sender.id, chat.member.id);
    // guestgate injected nothing here: the upstream got the SDK's body as is.
    assert.deepEqual(JSON.parse(proxied.body), { body: text, bodyType: 'standard' });
    assert.equal(proxied.headers.authorization, `Bearer ${chat.jwt}`);
  });

  await t.test('postWebchatGuestConversationMemberTyping', async () => {
    const { res, proxied } = await directAndThroughGuestgate('typing', () =>
      webChatApi.postWebchatGuestConversationMemberTyping(chat.id, chat.member.id));
    assert.equal(res.body.sender.id, chat.member.id);
    assert.equal(proxied.path, `/api/v2/webchat/guest/conversations/${chat.id}/members/${chat.member.id}/typing`);
  });

  await t.test('getWebchatGuestConversationMessages with query parameters', async () => {
    const { res, proxied } = await directAndThroughGuestgate('list messages', () =>
      webChatApi.getWebchatGuestConversationMessages(chat.id, { maxResults: 10, sortOrder: 'descending' }));
    // The SDK serializes unset optional parameters as empty values.
    assert.equal(proxied.query, '?after=&before=&sortOrder=descending&maxResults=10');
    assert.ok(res.body.entities.length >= 2, 'both sends are listed');
    assert.ok(res.body.entities.every((m) => m.conversation.id === chat.id));
  });

  await t.test('getWebchatGuestConversationMember', async () => {
    const { res } = await directAndThroughGuestgate('get member', () =>
      webChatApi.getWebchatGuestConversationMember(chat.id, chat.member.id));
    assert.equal(res.body.displayName, 'JavaScript Guest');
    assert.equal(res.body.role, 'CUSTOMER');
  });

  await t.test('an upstream error (401, bad JWT) reaches the SDK unchanged', async () => {
    client.setJwt('not-the-jwt');
    try {
      const { proxied } = await directAndThroughGuestgate('bad jwt', async () => {
        try {
          await webChatApi.postWebchatGuestConversationMemberTyping(chat.id, chat.member.id);
        } catch (e) {
          return e; // the SDK rejects with its extended error response
        }
        throw new Error('the SDK call should have been rejected');
      });
      assert.equal(proxied.response.status, 401);
      assert.equal(h.upstreamJson(proxied).code, 'bad.credentials');
    } finally {
      client.setJwt(chat.jwt);
    }
  });
});

test('no SDK call left loopback', () => {
  assert.ok(h.outgoing.length >= 12, 'the SDK calls were observed');
  h.assertOnlyLoopback();
});

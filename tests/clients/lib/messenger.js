'use strict';
// The Messenger (Web Messaging) set-up the messenger client tests share: the
// loopback Web-Messaging-like upstream (lib/webmessaging.js) and guestgate in
// front of it with [upstreams.webmessaging], [websocket] and two
// [[websocket_rules]] on /v1 (the contract of docs/websocket-rules.md):
//
// - messenger-session: configureSession needs a `token`; its `deploymentId`
//   is the configured one, whatever the client sent;
// - messenger-message: onMessage loses `message.id` and the top-level
//   `channel`, needs a `token`, `message.type` must be Text or Event, and its
//   `deploymentId` is set to the configured one.

const { startWebMessaging } = require('./webmessaging');
const { startGuestgate } = require('./guestgate');

// What guestgate is configured to send as the deployment, and what the
// clients put in the query and in their frames (a different one, as a page
// copied from another site would): the query passes through, the frames are
// edited.
const CONFIGURED_DEPLOYMENT_ID = 'f0c2a4e8-0000-4000-8000-00000000cafe';
const CLIENT_DEPLOYMENT_ID = '3b8f9d6e-1111-4111-8111-000000000bad';

function messengerRules(deploymentId = CONFIGURED_DEPLOYMENT_ID) {
  return [
    {
      name: 'messenger-session',
      path: '/v1',
      upstream: 'webmessaging',
      when: { '/action': 'configureSession' },
      require: ['/token'],
      set: { '/deploymentId': deploymentId },
    },
    {
      name: 'messenger-message',
      path: '/v1',
      upstream: 'webmessaging',
      when: { '/action': 'onMessage' },
      remove: ['/message/id', '/channel'],
      require: ['/token'],
      allow_binary: false,
      report_only: false,
      allow: { '/message/type': ['Text', 'Event'] },
      set: { '/deploymentId': deploymentId },
    },
  ];
}

// -> { upstream, guestgate, wsUrl, deploymentId, stop() }
async function startMessengerStack({ maxMessageBytes = 65536, unmatched = 'forward', deploymentId = CONFIGURED_DEPLOYMENT_ID } = {}) {
  const upstream = await startWebMessaging();
  let guestgate;
  try {
    guestgate = await startGuestgate({
      // [upstream] is required; nothing in these tests goes there.
      upstreamUrl: upstream.url,
      extra: {
        'upstreams.webmessaging': { base_url: upstream.url },
        websocket: { max_message_bytes: maxMessageBytes, unmatched },
      },
      tableArrays: { websocket_rules: messengerRules(deploymentId) },
    });
  } catch (e) {
    await upstream.close();
    throw e;
  }
  return {
    upstream,
    guestgate,
    wsUrl: guestgate.url.replace(/^http/, 'ws'),
    deploymentId,
    async stop() {
      await guestgate.stop();
      await upstream.close();
    },
  };
}

module.exports = { startMessengerStack, messengerRules, CONFIGURED_DEPLOYMENT_ID, CLIENT_DEPLOYMENT_ID };

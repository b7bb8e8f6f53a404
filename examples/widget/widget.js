// A minimal custom guest chat client that talks to Genesys Cloud through
// guestgate. Plain browser JavaScript, no build step, no SDK.
//
// 1. Start a chat:   POST {gateway}/api/v2/webchat/guest/conversations
//    (passed through by guestgate as is) -> { id, jwt, eventStreamUri, member }
// 2. Send messages:  POST {gateway}/api/v2/conversations/messaging/guest/conversations/{id}/messages
//    with the chat's JWT. Like many legacy clients this page puts its own `id`
//    on each message and no `to`; the vendor answers such a body with a 500.
//    guestgate removes the `id` and sets the `to` it is configured with, so the
//    page needs no change and never has to know the queue's id.
//
// The page runs on its own origin, so every call is a cross-origin request:
// guestgate answers the CORS preflight for origins listed in its [cors]
// section, and the browser refuses the call from any other origin.
//
// A production widget would also open `eventStreamUri` (a WebSocket) to hear
// from the agent. This example shows what the answer to each message says: the
// `reply` when it carries one (the test suite's upstream sends one), otherwise
// "Delivered.".
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? '';

  const params = new URLSearchParams(location.search);
  const gateway = (params.get('gateway') || meta('guestgate-url')).replace(/\/+$/, '');
  const chatSettings = {
    organizationId: meta('chat-organization-id'),
    deploymentId: meta('chat-deployment-id'),
    routingTarget: { targetType: 'QUEUE', targetAddress: meta('chat-queue-name') },
  };

  let chat = null; // { id, jwt, member: { id } } once started

  function setStatus(text, state) {
    $('status').textContent = text;
    $('status').dataset.state = state;
  }

  function addLine(kind, who, text) {
    const li = document.createElement('li');
    li.className = kind;
    if (who) {
      const w = document.createElement('span');
      w.className = 'who';
      w.textContent = who;
      li.append(w);
    }
    li.append(document.createTextNode(text)); // never innerHTML: messages are untrusted
    $('log').append(li);
    li.scrollIntoView({ block: 'end' });
    return li;
  }

  // fetch() rejects with a TypeError, and no status, when the browser blocks a
  // cross-origin call (CORS) or the network is down; an HTTP error is an answer.
  async function callJson(path, { method = 'POST', body, jwt } = {}) {
    const headers = { 'Content-Type': 'application/json' };
    if (jwt) headers.Authorization = `Bearer ${jwt}`;
    let res;
    try {
      res = await fetch(gateway + path, { method, headers, body: JSON.stringify(body) });
    } catch (e) {
      throw new Error(`Could not reach the chat service at ${gateway} (network error or this page's origin is not allowed by CORS)`);
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new Error(`The chat service answered ${res.status}${data?.message ? `: ${data.message}` : ''}`);
    return data;
  }

  // A client-chosen message id, as legacy clients send. guestgate strips it.
  function clientMessageId() {
    return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  }

  $('start-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const displayName = $('name').value.trim() || 'Guest';
    $('start').disabled = true;
    setStatus('Connecting…', 'busy');
    try {
      chat = await callJson('/api/v2/webchat/guest/conversations', {
        body: { ...chatSettings, memberInfo: { displayName } },
      });
      setStatus(`Connected as ${displayName}`, 'connected');
      addLine('system', '', `Chat ${chat.id} started.`);
      $('start-form').hidden = true;
      $('send-form').hidden = false;
      $('message').focus();
    } catch (e) {
      setStatus(e.message, 'error');
      $('start').disabled = false;
    }
  });

  $('send-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('message').value.trim();
    if (!text || !chat) return;
    $('message').value = '';
    addLine('guest', 'You', text);
    $('send').disabled = true;
    try {
      const sent = await callJson(
        `/api/v2/conversations/messaging/guest/conversations/${encodeURIComponent(chat.id)}/messages`,
        { jwt: chat.jwt, body: { id: clientMessageId(), from: { id: chat.member.id }, text } },
      );
      if (sent?.reply?.text) addLine('agent', sent.reply.from?.nickname || 'Agent', sent.reply.text);
      else addLine('system', '', 'Delivered.');
    } catch (e) {
      setStatus(e.message, 'error');
      addLine('system', '', `Not sent: ${e.message}`);
    } finally {
      $('send').disabled = false;
      $('message').focus();
    }
  });

  if (!gateway) setStatus('No guestgate URL configured', 'error');
})();

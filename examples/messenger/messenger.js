// A minimal guest chat over the vendor's Web Messaging WebSocket protocol (the
// one the Messenger widget speaks), through guestgate. Plain browser
// JavaScript, the browser's own WebSocket, no build step, no SDK.
//
// 1. Open    {gateway}/v1?deploymentId={deployment}   (a WebSocket)
// 2. Send    {"action":"configureSession","token":<random uuid>,"deploymentId":…}
//    and wait for the SessionResponse ({"class":"SessionResponse","body":{"connected":true,…}}).
// 3. Send    {"action":"onMessage","token":…,"message":{"type":"Text","text":…,"id":…},
//             "channel":{…},"time":…}
//    for each message. This page deliberately sends what a guest should not,
//    as a tampered client would: its own `message.id` and a top-level
//    `channel` (routing, sender, message id). guestgate's websocket rules
//    remove both and set the deployment before the frame reaches the vendor.
// 4. Show    every StructuredMessage the server sends back (the vendor echoes
//    each guest message with its own id), and the close code when the
//    connection ends (guestgate closes with 1008 on a message its rules
//    refuse, e.g. a `message.type` that is not allowed).
//
// From the browser console, `guestChat.send('hi', { type: 'Notice' })` sends a
// message with fields of your choosing merged into `message`: a tampered client.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? '';

  const params = new URLSearchParams(location.search);
  // ?gateway= may be given as ws(s):// or http(s)://; the WebSocket needs ws(s).
  const gateway = (params.get('gateway') || meta('guestgate-ws-url')).replace(/\/+$/, '').replace(/^http/, 'ws');
  const deploymentId = params.get('deploymentId') || meta('messenger-deployment-id');

  // The session token is the client's: a random uuid, kept for this page only.
  const token = crypto.randomUUID();
  let ws = null;
  let connected = false;

  function setStatus(text, state, extra = {}) {
    $('status').textContent = text;
    $('status').dataset.state = state;
    for (const [k, v] of Object.entries(extra)) $('status').dataset[k] = v;
  }

  function addLine(kind, who, text, id) {
    const li = document.createElement('li');
    li.className = kind;
    if (who) {
      const w = document.createElement('span');
      w.className = 'who';
      w.textContent = who;
      li.append(w);
    }
    const t = document.createElement('span');
    t.className = 'text';
    t.textContent = text; // never innerHTML: messages are untrusted
    li.append(t);
    if (id) {
      li.dataset.id = id;
      const i = document.createElement('span');
      i.className = 'id';
      i.textContent = `id ${id}`;
      li.append(i);
    }
    $('log').append(li);
    li.scrollIntoView({ block: 'end' });
    return li;
  }

  function sendFrame(frame) {
    ws.send(JSON.stringify(frame));
  }

  function connect() {
    $('connect').disabled = true;
    setStatus('Connecting…', 'busy');
    const url = `${gateway}/v1?deploymentId=${encodeURIComponent(deploymentId)}`;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      setStatus(`Cannot open ${url}: ${e.message}`, 'error');
      $('connect').disabled = false;
      return;
    }

    ws.addEventListener('open', () => {
      setStatus('Configuring session…', 'busy');
      sendFrame({
        action: 'configureSession',
        token,
        deploymentId,
        startNew: false,
        journeyContext: {
          customer: { id: token, idType: 'cookie' },
          customerSession: { id: crypto.randomUUID(), type: 'web' },
        },
      });
    });

    ws.addEventListener('message', (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        addLine('system', '', 'The server sent something that is not JSON.');
        return;
      }
      if (frame.class === 'SessionResponse' && frame.code === 200 && frame.body?.connected) {
        connected = true;
        setStatus(`Connected (${frame.body.newSession ? 'new session' : 'session resumed'})`, 'connected');
        $('connect').hidden = true;
        $('send-form').hidden = false;
        $('message').focus();
      } else if (frame.class === 'StructuredMessage' && frame.body?.type === 'Text') {
        const b = frame.body;
        const who = b.direction === 'Inbound' ? 'You' : (b.channel?.from?.nickname || 'Agent');
        addLine(b.direction === 'Inbound' ? 'inbound' : 'outbound', who, b.text ?? '', b.id);
      } else if (frame.type === 'response' && frame.code >= 400) {
        addLine('system', '', `The server answered ${frame.code}: ${typeof frame.body === 'string' ? frame.body : JSON.stringify(frame.body)}`);
      }
    });

    ws.addEventListener('close', (event) => {
      connected = false;
      $('send-form').hidden = true;
      $('connect').hidden = false;
      $('connect').disabled = false;
      // CloseEvent.code is what the other side (guestgate or the vendor) sent;
      // 1006 means the connection ended without a close frame.
      setStatus(`Disconnected: ${event.code}${event.reason ? ` ${event.reason}` : ''}`, 'closed', {
        closeCode: String(event.code),
        closeReason: event.reason,
      });
      addLine('system', '', `Connection closed (${event.code}${event.reason ? `: ${event.reason}` : ''}).`);
    });
  }

  // A client-chosen message id and a top-level channel, as a tampered client
  // sends them; guestgate removes both. `overrides` are merged into `message`.
  function send(text, overrides = {}) {
    if (!ws || !connected) throw new Error('not connected');
    const clientId = crypto.randomUUID();
    sendFrame({
      action: 'onMessage',
      token,
      message: {
        type: 'Text',
        text,
        id: clientId,
        channel: { metadata: { customAttributes: { page: location.pathname } } },
        ...overrides,
      },
      channel: {
        from: { nickname: 'Guest', id: token },
        to: { id: 'any-queue-i-like' },
        messageId: clientId,
        time: new Date().toISOString(),
      },
      time: new Date().toISOString(),
    });
    return clientId;
  }

  $('connect').addEventListener('click', connect);

  $('send-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('message').value.trim();
    if (!text) return;
    $('message').value = '';
    send(text);
  });

  window.guestChat = { send, token };

  if (!gateway) setStatus('No guestgate URL configured', 'error');
})();

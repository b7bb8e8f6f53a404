'use strict';
// A loopback stand-in for the vendor's Web Messaging WebSocket service
// (wss://webmessaging.{region}/v1?deploymentId=…), the one the Messenger
// widget speaks. A WebSocket server (npm `ws`) on an HTTP server.
//
// It records, per connection:
// - the upgrade request: request-target (path and query) exactly as received,
//   its headers (so a test can check the query, `Origin`, the subprotocol and
//   that no `sec-websocket-extensions` arrived), the subprotocol it chose;
// - every message it received, in order: text messages as received and
//   parsed (`json`, null when not JSON), binary ones as base64;
// - every message it sent;
// - how the connection ended (the close code and reason it received).
//
// It answers like the vendor (shapes as in the vendor's transport SDKs):
// - configureSession -> {"type":"response","class":"SessionResponse","code":200,
//   "body":{"connected":true,"newSession":<token not seen before>,"readOnly":false}}
// - onMessage with message.type "Text" -> the message echoed back as
//   {"type":"message","class":"StructuredMessage","code":200,"body":{"id":<server id>,
//   "channel":{"time":…,"messageId":<server id>},"type":"Text","text":…,
//   "direction":"Inbound","originatingEntity":"Human"}}; an "Event" (typing) is
//   echoed the same way with its `events`;
// - echo -> a StructuredMessage carrying the echoed text;
// - anything else, a message before configureSession, or text that is not
//   JSON -> {"type":"response","class":"string","code":400,"body":…}.
// It negotiates permessage-deflate when offered (as a server may): through
// guestgate no offer must ever arrive.
//
// Used in-process by the Node tests (startWebMessaging) and as a child process
// by the Python test through lib/messenger-stack.js, which reads the
// recordings at GET <url>/__upstream__/connections.

const http = require('node:http');
const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');

function now() {
  return new Date().toISOString();
}

function startWebMessaging({ host = '127.0.0.1', port = 0, path = '/v1' } = {}) {
  const connections = [];
  const tokens = new Set(); // sessions configured so far (newSession: false for a known token)
  const waiters = new Set();
  let seq = 0;
  let idCounter = 0;
  const serverId = () => `srv-${(++idCounter).toString().padStart(4, '0')}-${crypto.randomBytes(4).toString('hex')}`;

  function changed() {
    for (const w of [...waiters]) {
      let ok = false;
      try { ok = w.pred(); } catch { ok = false; }
      if (ok) { waiters.delete(w); clearTimeout(w.timer); w.resolve(); }
    }
  }

  // Resolves once pred() is true (checked on every recorded event); rejects
  // after timeoutMs with `label` and what was recorded.
  function waitFor(pred, label = 'condition', timeoutMs = 10000) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`web messaging upstream: timed out waiting for ${label}; recorded:\n${JSON.stringify(snapshot(), null, 1)}`));
      }, timeoutMs);
      waiters.add(w);
    });
  }

  function snapshot() {
    return connections.map((c) => ({
      seq: c.seq,
      target: c.target,
      path: c.path,
      query: c.query,
      headers: c.headers,
      rawHeaders: c.rawHeaders,
      protocol: c.protocol,
      extensions: c.extensions,
      received: c.received,
      sent: c.sent,
      closed: c.closed,
    }));
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://upstream.invalid');
    if (url.pathname === '/__upstream__/connections' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(snapshot()));
    }
    if (url.pathname === '/__upstream__/reset' && req.method === 'POST') {
      connections.length = 0;
      res.writeHead(204);
      return res.end();
    }
    // Like the vendor: the service is only reachable as a WebSocket.
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ message: 'Not found', code: 'not.found', status: 404 }));
  });

  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: true,
    handleProtocols: (protocols) => (protocols.size ? [...protocols][0] : false),
  });

  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://upstream.invalid');
    const conn = {
      seq: ++seq,
      target: req.url,
      path: url.pathname,
      query: url.search,
      deploymentId: url.searchParams.get('deploymentId'),
      headers: { ...req.headers },
      rawHeaders: req.rawHeaders.slice(),
      protocol: null,
      extensions: null,
      received: [],
      sent: [],
      closed: null,
      configured: false,
    };
    connections.push(conn);
    changed();
    if (url.pathname !== path || !conn.deploymentId) {
      // The vendor refuses an upgrade without a deployment.
      socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      conn.closed = { refused: 400 };
      changed();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      conn.protocol = ws.protocol || null; // null when none was chosen
      conn.extensions = ws.extensions; // the negotiated ones, '' for none
      const send = (obj) => {
        const text = JSON.stringify(obj);
        conn.sent.push({ at: now(), text, json: obj });
        ws.send(text);
        changed();
      };
      const fail = (code, body) => send({ type: 'response', class: 'string', code, body });

      ws.on('message', (data, isBinary) => {
        const buf = Buffer.isBuffer(data) ? data : Buffer.concat(Array.isArray(data) ? data : [Buffer.from(data)]);
        if (isBinary) {
          conn.received.push({ at: now(), kind: 'binary', base64: buf.toString('base64'), json: null });
          changed();
          return;
        }
        const text = buf.toString('utf8');
        let json = null;
        try { json = JSON.parse(text); } catch { json = null; }
        conn.received.push({ at: now(), kind: 'text', text, json });
        changed();
        if (!json || typeof json !== 'object' || Array.isArray(json)) return fail(400, 'Request failed: invalid JSON.');

        switch (json.action) {
          case 'configureSession': {
            if (typeof json.token !== 'string' || !json.token) return fail(400, 'token is required.');
            const newSession = !tokens.has(json.token);
            tokens.add(json.token);
            conn.configured = true;
            conn.token = json.token;
            return send({ type: 'response', class: 'SessionResponse', code: 200, body: { connected: true, newSession, readOnly: false } });
          }
          case 'onMessage': {
            if (!conn.configured || json.token !== conn.token) return fail(403, 'Session not configured.');
            const m = json.message || {};
            const id = serverId();
            const body = {
              id,
              channel: { time: now(), messageId: id },
              type: m.type,
              direction: 'Inbound',
              originatingEntity: 'Human',
            };
            if (m.type === 'Text') body.text = typeof m.text === 'string' ? m.text : '';
            else if (m.type === 'Event') body.events = Array.isArray(m.events) ? m.events : [];
            else return fail(400, `Unsupported message type ${m.type}.`);
            if (m.metadata) body.metadata = m.metadata;
            return send({ type: 'message', class: 'StructuredMessage', code: 200, body });
          }
          case 'echo': {
            const m = json.message || {};
            return send({
              type: 'message',
              class: 'StructuredMessage',
              code: 200,
              body: { text: m.text ?? '', type: 'Text', direction: 'Inbound', id: serverId(), metadata: { customMessageId: 'echo' } },
            });
          }
          default:
            return fail(400, `Unsupported action ${json.action}.`);
        }
      });
      ws.on('close', (code, reason) => {
        conn.closed = { code, reason: reason.toString('utf8') };
        changed();
      });
      ws.on('error', (e) => {
        conn.error = String(e && e.message);
        changed();
      });
      changed();
    });
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: actual } = server.address();
      resolve({
        url: `http://${host}:${actual}`,
        wsUrl: `ws://${host}:${actual}`,
        port: actual,
        connections,
        waitFor,
        snapshot,
        reset() { connections.length = 0; },
        close() {
          return new Promise((r) => {
            for (const c of wss.clients) c.terminate();
            server.closeAllConnections();
            server.close(() => r());
          });
        },
      });
    });
  });
}

module.exports = { startWebMessaging };

'use strict';
// A loopback stand-in for the Genesys Cloud (PureCloud) public API.
//
// It answers the routes the client tests use the way the vendor documents
// them (guest chat: create a chat -> id, jwt, eventStreamUri and member; send
// a message; typing; list messages; platform: list users, send an agent
// message) and records every request it receives byte for byte, together with
// the exact response it sent back, so a test can compare what a client sent,
// what reached the upstream through guestgate and what came back.
//
// Like the vendor it answers `{"status":..,"code":..,"message":..}` errors,
// sends `inin-correlation-id` and gzips JSON when the client accepts it. On
// the guest messages route it answers an opaque 500 to a body that carries a
// top-level `id` or lacks `to`: the vendor behaviour guestgate exists to work
// around.
//
// It never sends CORS headers: in the browser test any CORS header a page sees
// must have come from guestgate.
//
// Used in-process by the Node tests (startUpstream) and as a child process by
// the Python test through lib/stack.js.

const http = require('node:http');
const zlib = require('node:zlib');
const crypto = require('node:crypto');

const GUEST_MESSAGES_RE = /^\/api\/v2\/conversations\/messaging\/guest\/conversations\/([^/]+)\/messages$/;
const WEBCHAT_RE = /^\/api\/v2\/webchat\/guest\/conversations(?:\/([^/]+)(?:\/(members|messages)(?:\/([^/]+)(?:\/(messages|typing))?)?)?)?$/;
const AGENT_MESSAGE_RE = /^\/api\/v2\/conversations\/messages\/([^/]+)\/communications\/([^/]+)\/messages$/;

// Tokens the platform routes accept (a real org would issue them via OAuth).
const PLATFORM_TOKENS = new Set(['platform-token-abc', 'python-token-xyz']);

function b64url(obj) {
  return Buffer.from(JSON.stringify(obj)).toString('base64url');
}

class VendorError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function startUpstream({ host = '127.0.0.1', port = 0, compress = true } = {}) {
  const requests = [];
  const conversations = new Map(); // id -> { id, jwt, member, messages: [] }
  let seq = 0;
  let idCounter = 0;
  const newId = (prefix) => `${prefix}-${(++idCounter).toString().padStart(4, '0')}-${crypto.randomBytes(4).toString('hex')}`;

  function now() {
    return new Date().toISOString().replace(/\.\d{3}Z$/, '.000Z');
  }

  function requireGuestJwt(req, conv) {
    const auth = req.headers.authorization || '';
    if (!conv) throw new VendorError(404, 'not.found', 'The requested conversation could not be found.');
    if (auth !== `Bearer ${conv.jwt}`) throw new VendorError(401, 'bad.credentials', 'Invalid login credentials.');
  }

  function requirePlatformToken(req) {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization || '');
    if (!m || !PLATFORM_TOKENS.has(m[1])) {
      throw new VendorError(401, 'bad.credentials', 'Invalid login credentials.');
    }
  }

  function parseJson(body) {
    try {
      return JSON.parse(body.toString('utf8'));
    } catch {
      throw new VendorError(400, 'bad.request', 'The request could not be understood by the server due to malformed syntax.');
    }
  }

  function webchat(req, url, body, baseUrl) {
    const m = WEBCHAT_RE.exec(url.pathname);
    const [, convId, sub, subId, subSub] = m;
    const method = req.method;

    if (!convId && method === 'POST') {
      const b = parseJson(body);
      if (!b.organizationId || !b.deploymentId || !b.routingTarget || !b.memberInfo || !b.memberInfo.displayName) {
        throw new VendorError(400, 'invalid.value', 'organizationId, deploymentId, routingTarget and memberInfo.displayName are required.');
      }
      const id = newId('conv');
      const member = {
        id: newId('member'),
        displayName: b.memberInfo.displayName,
        role: 'CUSTOMER',
        joinDate: now(),
        authenticatedGuest: false,
        state: 'CONNECTED',
      };
      if (b.memberInfo.customFields) member.customFields = b.memberInfo.customFields;
      const jwt = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub: member.id, conversationId: id, org: b.organizationId })}.${crypto.randomBytes(16).toString('base64url')}`;
      const conv = { id, jwt, member, messages: [], guestMessages: [] };
      conversations.set(id, conv);
      return [200, {
        id,
        jwt,
        eventStreamUri: `${baseUrl.replace(/^http/, 'ws')}/v1/streaming/webchat/${id}`,
        member: { id: member.id },
      }];
    }

    const conv = conversations.get(convId);
    requireGuestJwt(req, conv);
    const convRef = { id: conv.id, selfUri: `/api/v2/webchat/guest/conversations/${conv.id}` };
    const memberRef = (mid) => ({ id: mid, selfUri: `/api/v2/webchat/guest/conversations/${conv.id}/members/${mid}` });

    if (sub === 'members' && subId && subSub === 'messages' && method === 'POST') {
      if (subId !== conv.member.id) throw new VendorError(403, 'not.authorized', 'You are not authorized to perform the requested action.');
      const b = parseJson(body);
      if (typeof b.body !== 'string') throw new VendorError(400, 'invalid.value', 'body is required.');
      const msg = {
        id: newId('msg'),
        conversation: convRef,
        sender: memberRef(subId),
        body: b.body,
        bodyType: b.bodyType || 'standard',
        timestamp: now(),
      };
      msg.selfUri = `/api/v2/webchat/guest/conversations/${conv.id}/messages/${msg.id}`;
      conv.messages.push(msg);
      return [200, msg];
    }
    if (sub === 'members' && subId && subSub === 'typing' && method === 'POST') {
      if (subId !== conv.member.id) throw new VendorError(403, 'not.authorized', 'You are not authorized to perform the requested action.');
      return [200, { id: newId('typing'), conversation: convRef, sender: memberRef(subId), timestamp: now() }];
    }
    if (sub === 'members' && subId && !subSub && method === 'GET') {
      if (subId !== conv.member.id) throw new VendorError(404, 'not.found', 'Member not found.');
      return [200, conv.member];
    }
    if (sub === 'messages' && !subId && method === 'GET') {
      const max = Math.min(Number(url.searchParams.get('maxResults') || 100), 100);
      let list = conv.messages.slice();
      if (url.searchParams.get('sortOrder') === 'descending') list.reverse();
      list = list.slice(0, max);
      return [200, {
        pageSize: list.length,
        entities: list,
        selfUri: `/api/v2/webchat/guest/conversations/${conv.id}/messages${url.search}`,
      }];
    }
    throw new VendorError(404, 'not.found', 'The requested operation was not found.');
  }

  function guestMessage(req, url, body) {
    // The route guestgate intercepts. Like the vendor (see the README), a body
    // that carries a client-chosen top-level `id` or lacks `to` gets an opaque
    // 500; guestgate strips the one and injects the other.
    if (req.method !== 'POST') throw new VendorError(405, 'method.not.allowed', 'Method not allowed.');
    const convId = decodeURIComponent(GUEST_MESSAGES_RE.exec(url.pathname)[1]);
    requireGuestJwt(req, conversations.get(convId));
    const b = parseJson(body);
    const opaque = () => new VendorError(500, 'internal.server.error', 'The server encountered an unexpected condition which prevented it from fulfilling the request.');
    if (b === null || typeof b !== 'object' || Array.isArray(b)) throw opaque();
    if (Object.prototype.hasOwnProperty.call(b, 'id')) throw opaque();
    if (!b.to || typeof b.to.id !== 'string') throw opaque();
    if (!b.from || typeof b.from.id !== 'string') throw new VendorError(400, 'invalid.value', 'from.id is required.');
    const text = typeof b.text === 'string' ? b.text : '';
    const msg = {
      id: newId('gmsg'),
      conversationId: convId,
      from: b.from,
      to: b.to,
      text,
      status: 'delivered',
      timestamp: now(),
      reply: {
        from: { id: 'agent-7', nickname: 'Ada' },
        text: `Thanks! Queue ${b.to.id} received "${text}".`,
      },
    };
    conversations.get(convId).guestMessages.push(msg);
    return [200, msg];
  }

  function platform(req, url, body) {
    if (url.pathname === '/api/v2/users' && req.method === 'GET') {
      requirePlatformToken(req);
      const pageSize = Number(url.searchParams.get('pageSize') || 25);
      const pageNumber = Number(url.searchParams.get('pageNumber') || 1);
      const expand = (url.searchParams.getAll('expand').join(',') || '').split(',').filter(Boolean);
      const entities = [1, 2].map((n) => {
        const u = { id: `user-${pageNumber}-${n}`, name: `Agent ${pageNumber}.${n}`, state: 'active', version: n, selfUri: `/api/v2/users/user-${pageNumber}-${n}` };
        if (expand.includes('presence')) u.presence = { presenceDefinition: { systemPresence: 'Available' } };
        return u;
      });
      return [200, { entities, pageSize, pageNumber, total: 40, pageCount: Math.ceil(40 / pageSize), selfUri: `/api/v2/users${url.search}` }];
    }
    const am = AGENT_MESSAGE_RE.exec(url.pathname);
    if (am && req.method === 'POST') {
      requirePlatformToken(req);
      const b = parseJson(body);
      const id = newId('amsg');
      return [202, {
        id,
        timestamp: now(),
        direction: 'outbound',
        messengerType: 'open',
        status: 'queued',
        normalizedMessage: { type: 'Text', text: b.textBody },
        conversationId: am[1],
        selfUri: `/api/v2/conversations/messages/${am[1]}/messages/${id}`,
      }];
    }
    throw new VendorError(404, 'not.found', 'The requested operation was not found.');
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const url = new URL(req.url, 'http://upstream.invalid');

      if (url.pathname.startsWith('/__upstream__/')) return control(req, res, url, body);

      const rec = {
        seq: ++seq,
        method: req.method,
        target: req.url, // request-target exactly as received (path + query)
        path: url.pathname,
        query: url.search,
        httpVersion: req.httpVersion,
        rawHeaders: req.rawHeaders.slice(),
        headers: { ...req.headers },
        body,
        response: null,
      };
      requests.push(rec);

      const baseUrl = `http://${host}:${server.address().port}`;
      let status;
      let payload;
      try {
        if (GUEST_MESSAGES_RE.test(url.pathname)) [status, payload] = guestMessage(req, url, body);
        else if (WEBCHAT_RE.test(url.pathname)) [status, payload] = webchat(req, url, body, baseUrl);
        else [status, payload] = platform(req, url, body);
      } catch (e) {
        if (!(e instanceof VendorError)) throw e;
        status = e.status;
        payload = { message: e.message, code: e.code, status: e.status, contextId: crypto.randomUUID(), details: [], errors: [] };
      }

      const json = Buffer.from(JSON.stringify(payload));
      const headers = {
        'content-type': 'application/json',
        'inin-correlation-id': crypto.randomUUID(),
        'cache-control': 'no-cache, no-store, must-revalidate',
        pragma: 'no-cache',
        expires: '0',
        'x-upstream-seq': String(rec.seq),
      };
      let wire = json;
      if (compress && /\bgzip\b/.test(req.headers['accept-encoding'] || '')) {
        wire = zlib.gzipSync(json);
        headers['content-encoding'] = 'gzip';
        headers.vary = 'Accept-Encoding';
      }
      headers['content-length'] = String(wire.length);
      rec.response = { status, headers, body: json, wire };
      res.writeHead(status, headers);
      res.end(wire);
    });
  });

  function control(req, res, url, body) {
    // Used by the Python test (through lib/stack.js) to read what was recorded.
    if (url.pathname === '/__upstream__/requests' && req.method === 'GET') {
      const out = requests.map((r) => ({
        seq: r.seq,
        method: r.method,
        target: r.target,
        path: r.path,
        query: r.query,
        rawHeaders: r.rawHeaders,
        headers: r.headers,
        body_b64: r.body.toString('base64'),
        response: r.response && {
          status: r.response.status,
          headers: r.response.headers,
          body_b64: r.response.body.toString('base64'),
        },
      }));
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify(out));
    }
    if (url.pathname === '/__upstream__/reset' && req.method === 'POST') {
      requests.length = 0;
      res.writeHead(204);
      return res.end();
    }
    res.writeHead(404);
    res.end();
  }

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { port: actual } = server.address();
      const url = `http://${host}:${actual}`;
      resolve({
        url,
        port: actual,
        requests,
        conversations,
        reset() { requests.length = 0; },
        close() {
          return new Promise((r) => {
            server.closeAllConnections();
            server.close(() => r());
          });
        },
      });
    });
  });
}

module.exports = { startUpstream };

// The same sanitizing guestgate does on the guest messages route:
// strict JSON parse, top-level object only, drop `id`, set `to`.
var TO = { id: "bench-queue-0001" };

function sanitize(text) {
    var msg = JSON.parse(text);
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
        throw new Error("body is not a JSON object");
    }
    delete msg.id;
    msg.to = TO;
    return JSON.stringify(msg);
}

// js_set variant: evaluated by proxy_set_body once the body has been read.
// A js_set handler cannot answer 400 by itself, so an invalid body is
// forwarded as an empty string (the benchmark never sends one).
function sanitizedBody(r) {
    try {
        return sanitize(r.requestText);
    } catch (e) {
        return "";
    }
}

// js_content variant: full control (400 on bad JSON), forwards with ngx.fetch.
async function content(r) {
    var body;
    try {
        body = sanitize(r.requestText);
    } catch (e) {
        r.return(400, '{"error":"invalid body"}');
        return;
    }
    var headers = {};
    for (var h in r.headersIn) {
        var l = h.toLowerCase();
        if (l !== "content-length" && l !== "connection" && l !== "host") {
            headers[h] = r.headersIn[h];
        }
    }
    try {
        var reply = await ngx.fetch("http://127.0.0.1:" + r.variables.bench_upstream_port + r.uri,
            { method: r.method, headers: headers, body: body });
        var text = await reply.text();
        var ct = reply.headers.get("Content-Type");
        if (ct) { r.headersOut["Content-Type"] = ct; }
        r.return(reply.status, text);
    } catch (e) {
        r.return(502, '{"error":"upstream"}');
    }
}

export default { sanitizedBody, content };

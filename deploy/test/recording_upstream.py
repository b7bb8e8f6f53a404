#!/usr/bin/env python3
"""Tiny recording upstream for deploy/test-container.sh.

Listens on 127.0.0.1 (an ephemeral port unless one is given), appends one JSON
line per request (method, path, headers, body) to RECORD_FILE and answers with
a fixed JSON body and an `x-upstream: recorder` header. Writes the bound port
to PORT_FILE once it listens.

usage: recording_upstream.py RECORD_FILE PORT_FILE [PORT]
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORD_FILE, PORT_FILE = sys.argv[1], sys.argv[2]
PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ANSWER = b'{"id":"upstream-message-1","status":"queued"}'


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        with open(RECORD_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.send_header("x-upstream", "recorder")
        self.end_headers()
        self.wfile.write(ANSWER)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: " + (fmt % args) + "\n")


server = ThreadingHTTPServer(("127.0.0.1", PORT), Recorder)
with open(PORT_FILE, "w", encoding="utf-8") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()

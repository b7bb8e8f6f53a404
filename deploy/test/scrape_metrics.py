#!/usr/bin/env python3
"""Runs the real guestgate binary, exercises every metric family, saves /metrics.

usage: scrape_metrics.py GUESTGATE_BINARY OUT_FILE

Starts a loopback upstream (HTTP and WebSocket, in this process), writes a
configuration with HTTP rules (one per outcome: edited, report-only, refused,
an unreachable upstream) and a WebSocket rule, starts the binary on loopback
ports, then sends requests so that the labelled series appear: 2xx/4xx/5xx,
the rejection reasons invalid-body, field-required, upstream-unreachable,
upstream-failed and upstream-timeout, edits, report-only changes, WebSocket
messages relayed/edited/refused and a 1008 close, one reload applied and one
refused. Also checked on the way: both guestgate_config_reloads_total series
are there at 0 before any reload, and guestgate_ready is 1 once the upstream
check connected. Writes the exposition to OUT_FILE; then, with a WebSocket
held open so the drain lasts, sends SIGTERM and checks that guestgate_ready
turns 0 while the proxy drains. Standard library only; only loopback
addresses are used. Exits non-zero (with the proxy's log) if
anything does not answer as expected.
"""
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wire import free_port, ws_accept, ws_frame, ws_unmask  # noqa: E402  (deploy/wire.py)

UPSTREAM_TIMEOUT_MS = 300


# Bound for the script's life and never listening: connecting is refused, and no
# other process can be given the port meanwhile (free_port's ports can be).
_CLOSED = socket.socket()
_CLOSED.bind(("127.0.0.1", 0))


def closed_port():
    return _CLOSED.getsockname()[1]


def read_frame(f):
    """One WebSocket frame from a file-like object: (opcode, payload)."""
    head = f.read(2)
    if len(head) < 2:
        return None, b""
    opcode = head[0] & 0x0F
    masked = head[1] & 0x80
    length = head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", f.read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", f.read(8))
    mask = f.read(4) if masked else b""
    payload = f.read(length)
    if masked:
        payload = ws_unmask(payload, mask)
    return opcode, payload


class Upstream(BaseHTTPRequestHandler):
    """/slow answers late, /broken closes without answering, /boom is a 503,
    a WebSocket upgrade echoes text messages, anything else is a 200."""

    protocol_version = "HTTP/1.1"

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        if self.path.startswith("/broken"):
            self.close_connection = True
            return
        if self.path.startswith("/slow"):
            time.sleep(UPSTREAM_TIMEOUT_MS / 1000 * 3)
        status = 503 if self.path.startswith("/boom") else 200
        body = b'{"ok":true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = ws_accept(key)
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            opcode, payload = read_frame(self.rfile)
            if opcode is None:
                return
            if opcode == 8:
                self.wfile.write(ws_frame(8, payload[:2], mask=False))
                self.wfile.flush()
                return
            if opcode == 1:
                self.wfile.write(ws_frame(1, payload, mask=False))
                self.wfile.flush()

    do_GET = do_POST = _handle

    def log_message(self, fmt, *args):
        pass


CONFIG = """\
[server]
listen = "127.0.0.1:{proxy}"

[admin]
listen = "127.0.0.1:{admin}"
config_watch_interval_secs = 0

[upstream]
base_url = "http://127.0.0.1:{upstream}"
response_timeout_ms = {timeout}

[upstreams.gone]
base_url = "http://127.0.0.1:{gone}"
connect_timeout_ms = 500

[[rules]]
name = "check-send"
path = "/api/messages"
remove = ["/id"]
require = ["/text"]
[rules.set]
"/to/id" = "queue-check"

[[rules]]
name = "check-report"
path = "/api/report"
report_only = true
remove = ["/id"]

[[rules]]
name = "check-gone"
path = "/api/gone"
upstream = "gone"
remove = ["/id"]

[[websocket_rules]]
name = "check-ws"
path = "/v1"
when = {{ "/action" = "onMessage" }}
remove = ["/message/id"]
require = ["/token"]
"""


def http(base, method, path, body=None):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def websocket_connect(port):
    """An upgraded WebSocket through guestgate: (socket, its reading file)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /v1?deploymentId=check HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    f = s.makefile("rb")
    status = f.readline()
    if b" 101 " not in status:
        raise RuntimeError(f"WebSocket upgrade answered {status!r}")
    while f.readline() not in (b"\r\n", b""):
        pass
    return s, f


def websocket_session(port):
    """A message edited, one relayed, one refused (guestgate closes with 1008)."""
    s, f = websocket_connect(port)
    got = []
    for msg in (
        {"action": "onMessage", "token": "t", "message": {"id": "m1", "type": "Text"}},
        {"action": "echo", "token": "t"},
    ):
        s.sendall(ws_frame(1, json.dumps(msg).encode(), mask=True))
        opcode, payload = read_frame(f)
        got.append((opcode, json.loads(payload) if opcode == 1 else payload))
    if got[0][0] != 1 or "id" in got[0][1].get("message", {}):
        raise RuntimeError(f"edited WebSocket message came back as {got[0]!r}")
    s.sendall(ws_frame(1, json.dumps({"action": "onMessage", "message": {}}).encode(), mask=True))
    opcode, payload = read_frame(f)
    code = struct.unpack("!H", payload[:2])[0] if opcode == 8 and len(payload) >= 2 else None
    if code != 1008:
        raise RuntimeError(f"refused WebSocket message: expected close 1008, got opcode {opcode} {payload!r}")
    s.sendall(ws_frame(8, payload[:2], mask=True))
    f.close()
    s.close()


def scrape(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text, name, labels=""):
    """The value of the series `name{labels}` in an exposition, or None."""
    series = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None


def reloads(admin):
    """(applied, refused) reloads in a scrape."""
    text = scrape(admin)
    return tuple(sample(text, "guestgate_config_reloads_total", f'result="{r}"') for r in ("ok", "refused"))


def wait_until(what, pred, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def main():
    binary, out = sys.argv[1], sys.argv[2]
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    ports = dict(
        proxy=free_port(), admin=free_port(), upstream=upstream.server_address[1],
        gone=closed_port(), timeout=UPSTREAM_TIMEOUT_MS,
    )
    work = tempfile.mkdtemp(prefix="guestgate-scrape.")
    config = os.path.join(work, "guestgate.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG.format(**ports))
    log = open(os.path.join(work, "guestgate.log"), "w+", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTGATE__")}
    proc = subprocess.Popen([binary, "--config", config], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{ports['proxy']}"
    try:
        wait_until("the admin listener", lambda: "guestgate_open_connections" in scrape(ports["admin"]))
        first = scrape(ports["admin"])
        for result in ("ok", "refused"):
            got = sample(first, "guestgate_config_reloads_total", f'result="{result}"')
            if got != 0:
                raise RuntimeError(f'guestgate_config_reloads_total{{result="{result}"}} before any reload: expected 0, got {got}')
        wait_until("guestgate_ready 1", lambda: sample(scrape(ports["admin"]), "guestgate_ready") == 1)
        expect = [
            ("POST", "/api/messages", '{"id":"c1","text":"hi"}', 200),
            ("POST", "/api/messages", '{"id":"c2"}', 400),
            ("POST", "/api/messages", "not json", 400),
            ("POST", "/api/report", '{"id":"c3"}', 200),
            ("POST", "/api/gone", '{"id":"c4"}', 502),
            ("GET", "/plain", None, 200),
            ("GET", "/boom", None, 503),
            ("GET", "/slow", None, 504),
            ("GET", "/broken", None, 502),
        ]
        for method, path, body, want in expect:
            got = http(base, method, path, body)
            if got != want:
                raise RuntimeError(f"{method} {path}: expected {want}, got {got}")
        websocket_session(ports["proxy"])
        proc.send_signal(signal.SIGHUP)
        wait_until("the applied reload", lambda: reloads(ports["admin"]) == (1, 0))
        with open(config, "a", encoding="utf-8") as f:
            f.write("\n[[rules]\n")
        proc.send_signal(signal.SIGHUP)
        wait_until("the refused reload", lambda: reloads(ports["admin"]) == (1, 1))
        # The WebSocket close is counted when guestgate's side of it ends.
        wait_until("the WebSocket close", lambda: "guestgate_websocket_closes_total{" in scrape(ports["admin"]))
        text = scrape(ports["admin"])
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"scraped {sum(1 for l in text.splitlines() if l.startswith('# TYPE'))} metric families "
              f"from {binary}")
        # Draining: an open WebSocket keeps the process in its drain.
        held, held_file = websocket_connect(ports["proxy"])
        proc.send_signal(signal.SIGTERM)
        wait_until("guestgate_ready 0 while draining", lambda: sample(scrape(ports["admin"]), "guestgate_ready") == 0)
        held.sendall(ws_frame(8, struct.pack("!H", 1000), mask=True))
        held_file.close()
        held.close()
        print("reload counters start at 0; guestgate_ready is 1 when ready and 0 while draining")
    except Exception as e:  # noqa: BLE001 - report any failure with the proxy's log
        log.flush()
        log.seek(0)
        sys.stderr.write(f"scrape_metrics: {e}\n--- guestgate log (last lines)\n")
        sys.stderr.write("".join(log.readlines()[-30:]))
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        upstream.shutdown()
        log.close()
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())

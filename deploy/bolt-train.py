#!/usr/bin/env python3
"""The training load of the shipped binary's BOLT layout (deploy/build-binary.sh).

    python3 deploy/bolt-train.py GUESTGATE [PROFILES_DIR]

With PROFILES_DIR, each guestgate process runs in its own directory under it,
where an instrumented binary whose profile path is relative writes its profile.

Runs the binary against an upstream of its own on loopback and sends it what a
deployment's hot path serves: guest messages on the [guest_messages] route, a
Web Chat v2 [[rules]] route, pass-through requests and Web Messaging frames
through [[websocket_rules]], at 32 and then 256 client connections. Twice:
plain HTTP, then TLS on both sides as deployments run it (clients over HTTPS to
a guestgate whose upstream is another guestgate over HTTPS, where the two
agree on HTTP/2, in front of the plain upstream). The counters of code that
runs here decide what BOLT lays out together; everything else is kept,
further away.

Every answer is checked (status 200; the upstream checks that the edits were
made), so a binary that misbehaves fails the build instead of being profiled;
build-binary.sh runs it again on the result. Standard library Python, plus the
openssl command for the TLS run's certificates: it also runs in the container
build's builder stage.
"""

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import free_port, ws_accept, ws_frame, ws_unmask  # noqa: E402  (deploy/wire.py)

QUEUE = "train-queue-0001"
GUEST_PATH = "/api/v2/conversations/messaging/guest/conversations/c0ffee00/messages"
WEBCHAT_PATH = "/api/v2/webchat/guest/conversations/c0ffee00/members/m1/messages"
PASS_PATH = "/api/v2/conversations/messaging/guest/conversations/c0ffee00/attachments"
GUEST_BODY = json.dumps(
    {
        "id": "c2f1a8e4-5b7d-4e0a-9f3c-6d2b1a0e9f87",
        "body": "Hi, I ordered a blue jacket last week (order #48213) and would like "
        "to change the delivery address. Could you help me?",
        "bodyType": "standard",
    }
).encode()
WEBCHAT_BODY = b'{"body":"Is anyone there?","bodyType":"standard"}'
WS_MESSAGE = json.dumps(
    {
        "action": "onMessage",
        "token": "00000000-0000-0000-0000-00000000cafe",
        "message": {"type": "Text", "text": "Where is my order #48213?", "id": "forged"},
        "channel": {"metadata": {"customAttributes": {"vip": "yes"}}},
    }
).encode()
# (client connections, requests or frames per connection) for each phase.
PHASES = [(32, 1000), (256, 125)]
# A run takes seconds; one that hangs fails the build instead of stopping it.
RUN_TIMEOUT_SECS = 300

CONFIG = """
[log]
level = "warn"
[upstream]
base_url = "{upstream}"
{ca_file}
[upstreams.webmessaging]
base_url = "{upstream}"
{ca_file}
[guest_messages]
to = {{ id = "{queue}" }}
[[rules]]
name = "webchat-send"
path = "/api/v2/webchat/guest/conversations/{{conversationId}}/members/{{memberId}}/messages"
require = ["/body"]
[rules.allow]
"/bodyType" = ["standard"]
[[websocket_rules]]
name = "messenger-message"
path = "/v1"
upstream = "webmessaging"
when = {{ "/action" = "onMessage" }}
remove = ["/message/id", "/channel"]
require = ["/token", "/message/type"]
[websocket_rules.allow]
"/message/type" = ["Text", "Event"]
"""
TLS_CONFIG = """
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
"""


class Refused(Exception):
    """An answer the training did not expect."""


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def read_body(reader, headers):
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    return b""


async def ws_read(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    return b0 & 0x0F, ws_unmask(data, key) if key else data


class Upstream:
    """Answers 200 to every request and every WebSocket message, and records
    requests that arrived without the configured edits."""

    def __init__(self):
        self.unedited = []
        self.connections = set()

    def check(self, path, body):
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if path == GUEST_PATH:
            ok = isinstance(value, dict) and "id" not in value and value.get("to") == {"id": QUEUE}
        elif path == "/v1":
            ok = isinstance(value, dict) and "channel" not in value and "id" not in value.get("message", {})
        else:
            ok = True
        if not ok:
            self.unedited.append((path, body[:200]))

    async def serve(self, reader, writer):
        self.connections.add(asyncio.current_task())
        try:
            while True:
                line, headers = await read_head(reader)
                path = line.split(" ")[1]
                if headers.get("upgrade", "").lower() == "websocket":
                    await self.websocket(reader, writer, headers)
                    return
                self.check(path, await read_body(reader, headers))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b'content-length: 35\r\n\r\n{"id":"upstream-1","status":"sent"}'
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.connections.discard(asyncio.current_task())

    async def websocket(self, reader, writer, headers):
        accept = ws_accept(headers["sec-websocket-key"])
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            f"sec-websocket-accept: {accept}\r\n\r\n".encode()
        )
        while True:
            opcode, data = await ws_read(reader)
            if opcode == 8:
                writer.write(ws_frame(8, data[:2], mask=False))
                await writer.drain()
                return
            if opcode == 9:
                writer.write(ws_frame(10, data, mask=False))
            elif opcode == 1:
                self.check("/v1", data)
                writer.write(ws_frame(1, b'{"type":"message","class":"StructuredMessage","code":200}', mask=False))
            await writer.drain()


async def connect(port, tls):
    if tls is None:
        return await asyncio.open_connection("127.0.0.1", port)
    return await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1")


async def http_client(port, tls, count, kinds):
    reader, writer = await connect(port, tls)
    try:
        for i in range(count):
            method, path, body = kinds[i % len(kinds)]
            writer.write(
                f"{method} {path} HTTP/1.1\r\nhost: guest.example\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode() + body
            )
            await writer.drain()
            status, headers = await read_head(reader)
            await read_body(reader, headers)
            if status.split(" ")[1] != "200":
                raise Refused(f"{method} {path}: {status}")
    finally:
        writer.close()


async def ws_client(port, tls, count):
    reader, writer = await connect(port, tls)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /v1?deploymentId=train HTTP/1.1\r\nhost: guest.example\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n".encode()
        )
        status, _ = await read_head(reader)
        if status.split(" ")[1] != "101":
            raise Refused(f"GET /v1: {status}")
        for _ in range(count):
            writer.write(ws_frame(1, WS_MESSAGE, mask=True))
            await writer.drain()
            opcode, data = await ws_read(reader)
            if opcode != 1:
                raise Refused(f"/v1 frame: opcode {opcode} {data[:100]!r}")
        writer.write(ws_frame(8, (1000).to_bytes(2, "big"), mask=True))
        await writer.drain()
        await ws_read(reader)
    finally:
        writer.close()


async def load(port, tls, upstream):
    kinds = [
        ("POST", GUEST_PATH, GUEST_BODY),
        ("POST", GUEST_PATH, GUEST_BODY),
        ("POST", WEBCHAT_PATH, WEBCHAT_BODY),
        ("POST", PASS_PATH, GUEST_BODY),
        ("GET", PASS_PATH, b""),
    ]
    for conns, count in PHASES:
        started = time.monotonic()
        tasks = [http_client(port, tls, count, kinds) for _ in range(conns)]
        tasks += [ws_client(port, tls, count) for _ in range(conns // 4)]
        await asyncio.gather(*tasks)
        took = time.monotonic() - started
        total = (conns + conns // 4) * count
        scheme = "https" if tls else "http"
        print(f"bolt-train: {scheme}, {conns} connections, {total} requests and frames in {took:.1f} s",
              file=sys.stderr)
    if upstream.unedited:
        raise Refused(f"{len(upstream.unedited)} unedited at the upstream, first: {upstream.unedited[0]}")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def running(pid):
    """Whether `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise Refused(f"guestgate exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise Refused(f"guestgate does not listen on {port}")


def certificates(work):
    """A CA and a certificate for 127.0.0.1 that it signed (rustls refuses a CA as a server's)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=guestgate training CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(work, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return {name: os.path.join(work, name) for name in ("ca.pem", "server.pem", "server.key")}


class Proxies:
    """guestgate processes, stopped so that BOLT's profile is complete."""

    def __init__(self, binary, work, profiles):
        self.binary, self.work, self.profiles, self.procs = binary, work, profiles, []

    async def start(self, name, upstream, certs=None):
        port = free_port()
        config = os.path.join(self.work, f"{name}.toml")
        with open(config, "w") as f:
            ca_file = f'ca_file = "{certs["ca.pem"]}"' if certs and upstream.startswith("https") else ""
            f.write(CONFIG.format(upstream=upstream, ca_file=ca_file, queue=QUEUE))
            if certs:
                f.write(TLS_CONFIG.format(cert=certs["server.pem"], key=certs["server.key"]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTGATE__")}
        env["GUESTGATE__SERVER__LISTEN"] = f"127.0.0.1:{port}"
        env["GUESTGATE__ADMIN__LISTEN"] = f"127.0.0.1:{free_port()}"
        cwd = None
        if self.profiles:
            cwd = os.path.join(self.profiles, name)
            os.makedirs(cwd, exist_ok=True)
        proc = subprocess.Popen([self.binary, "--config", config], env=env, cwd=cwd, stdout=subprocess.DEVNULL)
        self.procs.append(proc)
        await wait_port(port, proc)
        return port

    async def stop(self):
        # BOLT's instrumentation forks a process that writes the counters
        # every second and once more when guestgate has exited; the profile
        # is complete when that process is gone too. SIGKILL keeps shutdown
        # (and the signal handler's return, which BOLT cannot rewrite in
        # glibc) out of the profile.
        writers = [pid for proc in self.procs for pid in children(proc.pid)]
        procs, self.procs = self.procs, []
        for proc in procs:
            proc.kill()
            proc.wait()
        if self.profiles and len(writers) < len(procs):
            raise Refused("an instrumented guestgate had no profile writer (is /proc readable?)")
        for _ in range(100):
            if not any(running(pid) for pid in writers):
                return
            await asyncio.sleep(0.1)
        raise Refused(f"the profile writers {writers} did not exit")


async def run(binary, work, profiles, certs):
    upstream = Upstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, backlog=1024)
    origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    proxies = Proxies(binary, work, profiles)
    try:
        if certs is None:
            port, tls = await proxies.start("plain", origin), None
        else:
            inner = await proxies.start("inner", origin, certs)
            port = await proxies.start("outer", f"https://127.0.0.1:{inner}", certs)
            tls = ssl.create_default_context(cafile=certs["ca.pem"])
            tls.set_alpn_protocols(["http/1.1"])
        try:
            await asyncio.wait_for(load(port, tls, upstream), RUN_TIMEOUT_SECS)
        except asyncio.TimeoutError:
            raise Refused(f"the load did not finish in {RUN_TIMEOUT_SECS} s") from None
    finally:
        await proxies.stop()
        server.close()
        # guestgate's upstream connections closed when it exited.
        await asyncio.wait_for(asyncio.gather(*upstream.connections, return_exceptions=True), 5)


async def main(binary, profiles):
    with tempfile.TemporaryDirectory(prefix="guestgate-bolt-train-") as work:
        await run(binary, work, profiles, None)
        await run(binary, work, profiles, certificates(work))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    profiles = os.path.abspath(sys.argv[2]) if len(sys.argv) == 3 else None
    try:
        asyncio.run(main(binary, profiles))
    except (Refused, OSError, asyncio.IncompleteReadError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"bolt-train: {e}")

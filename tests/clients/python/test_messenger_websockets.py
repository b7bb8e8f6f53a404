"""Python's `websockets` (PyPI) speaking the Messenger (Web Messaging) protocol through guestgate.

guestgate runs with the messenger [[websocket_rules]] on /v1 in front of the
Web-Messaging-like loopback upstream; both are started by lib/messenger-stack.js
(the same upstream and rules the Node messenger tests use). The upstream
records the upgrade request and every message it receives; the tests read that
at GET <upstream>/__upstream__/connections and assert on it and on what the
client got.
"""

import contextlib
import json
import os
import subprocess
import time
import unittest
import urllib.request
import uuid

for _k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.dirname(HERE)

from loopback import outside_loopback

# The page origin the client claims (nothing listens there).
ORIGIN = "http://127.0.0.1:5173"


def _get_json(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return json.load(r)


def _message(token, text, **extra):
    """An onMessage as a tampered client sends it: its own message.id and a top-level channel."""
    frame = {
        "action": "onMessage",
        "token": token,
        "message": {"type": "Text", "text": text, "id": "py-client-id", "metadata": {"customMessageId": "py-1"}},
        "channel": {"from": {"nickname": "Mallory"}, "to": {"id": "another-queue"}, "messageId": "py-client-id"},
        "time": "2026-01-01T00:00:00.000Z",
    }
    frame.update(extra)
    return frame


def _edited(frame, deployment_id):
    """What the messenger-message rule makes of `frame`."""
    out = json.loads(json.dumps(frame))
    out["message"].pop("id", None)
    out.pop("channel", None)
    out["deploymentId"] = deployment_id
    return out


class _MessengerStack(unittest.TestCase):
    MAX_MESSAGE_BYTES = 65536

    @classmethod
    def setUpClass(cls):
        cls.stack = subprocess.Popen(
            ["node", os.path.join(CLIENTS, "lib", "messenger-stack.js"), "--max-message-bytes", str(cls.MAX_MESSAGE_BYTES)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = cls.stack.stdout.readline()
        if not line:
            err = cls.stack.stderr.read()
            cls.stack.wait()
            raise RuntimeError("lib/messenger-stack.js failed to start upstream and guestgate:\n" + err)
        info = json.loads(line)
        cls.upstream = info["upstream"]
        cls.upstream_ws = info["upstream"].replace("http", "ws", 1)
        cls.ws = info["ws"]
        cls.deployment_id = info["deploymentId"]
        cls.client_deployment_id = info["clientDeploymentId"]
        assert "max_message_bytes = %d" % cls.MAX_MESSAGE_BYTES in info["config"], info["config"]

    @classmethod
    def tearDownClass(cls):
        cls.stack.stdin.close()
        try:
            cls.stack.wait(timeout=15)
        except subprocess.TimeoutExpired:
            cls.stack.kill()
            cls.stack.wait()

    def tearDown(self):
        self.assertEqual(outside_loopback(), [], "nothing may leave loopback")

    def connections(self):
        return _get_json(self.upstream + "/__upstream__/connections")

    def wait_for(self, pred, label, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            conns = self.connections()
            if pred(conns):
                return conns
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {label}; upstream recorded:\n{json.dumps(conns, indent=1)}")
            time.sleep(0.05)

    @contextlib.contextmanager
    def open_session(self, base):
        """Connects through `base`, configures a session; yields (client, token, index of the upstream's record)."""
        n = len(self.connections())
        with connect(
            f"{base}/v1?deploymentId={self.client_deployment_id}",
            origin=ORIGIN, proxy=None, open_timeout=10, close_timeout=5,
        ) as ws:
            token = str(uuid.uuid4())
            ws.send(json.dumps({"action": "configureSession", "token": token, "deploymentId": self.client_deployment_id}))
            answer = json.loads(ws.recv(timeout=10))
            self.assertEqual(answer["class"], "SessionResponse", answer)
            self.assertEqual(answer["code"], 200)
            self.assertTrue(answer["body"]["connected"])
            self.assertEqual(len(self.connections()), n + 1, "one upgrade reached the upstream")
            yield ws, token, n

    def closed_by_guestgate(self, ws):
        """The close frame guestgate sent the client (recv raises once it arrives)."""
        with self.assertRaises(ConnectionClosed) as cm:
            while True:
                ws.recv(timeout=10)
        self.assertIsNotNone(cm.exception.rcvd, "guestgate sent a close frame")
        return cm.exception.rcvd

    def upstream_closed(self, i):
        conns = self.wait_for(lambda c: c[i]["closed"], "the upstream side to be closed")
        return conns[i]


class MessengerThroughGuestgate(_MessengerStack):
    def test_straight_at_the_upstream_the_tampered_fields_arrive(self):
        with self.open_session(self.upstream_ws) as (ws, token, i):
            ws.send(json.dumps(_message(token, "direct")))
            ws.recv(timeout=10)
        conn = self.connections()[i]
        got = conn["received"][1]["json"]
        self.assertEqual(got["message"]["id"], "py-client-id")
        self.assertEqual(got["channel"]["to"]["id"], "another-queue")
        self.assertIn("permessage-deflate", conn["headers"]["sec-websocket-extensions"], "websockets offers compression")
        self.assertEqual(conn["extensions"], "permessage-deflate")

    def test_configure_session_and_on_message_are_edited(self):
        with self.open_session(self.ws) as (ws, token, i):
            frame = _message(token, "Hello from Python websockets \u2713")
            ws.send(json.dumps(frame))
            echo = json.loads(ws.recv(timeout=10))
            # A message sent in fragments, each under the limit: reassembled, edited, forwarded whole.
            fragmented = _message(token, "in three fragments")
            text = json.dumps(fragmented)
            ws.send(iter([text[:20], text[20:45], text[45:]]))
            echo2 = json.loads(ws.recv(timeout=10))

        conn = self.connections()[i]
        self.assertEqual(conn["target"], f"/v1?deploymentId={self.client_deployment_id}", "query kept")
        self.assertEqual(conn["headers"]["origin"], ORIGIN, "Origin kept")
        self.assertNotIn("sec-websocket-extensions", conn["headers"], "Sec-WebSocket-Extensions removed")
        self.assertEqual(conn["extensions"], "")

        received = [r["json"] for r in conn["received"]]
        self.assertEqual([r["action"] for r in received], ["configureSession", "onMessage", "onMessage"])
        self.assertEqual(received[0], {"action": "configureSession", "token": token, "deploymentId": self.deployment_id})
        self.assertNotIn("id", received[1]["message"])
        self.assertNotIn("channel", received[1])
        self.assertEqual(received[1]["deploymentId"], self.deployment_id)
        self.assertEqual(received[1], _edited(frame, self.deployment_id))
        self.assertEqual(received[2], _edited(fragmented, self.deployment_id))

        # The client got the upstream's answers unchanged.
        self.assertEqual(echo, conn["sent"][1]["json"])
        self.assertEqual(echo["class"], "StructuredMessage")
        self.assertEqual(echo["body"]["text"], "Hello from Python websockets \u2713")
        self.assertEqual(echo2["body"]["text"], "in three fragments")
        # The client's normal close reached the upstream.
        self.assertEqual(self.upstream_closed(i)["closed"]["code"], 1000)

    def test_missing_token_closes_both_sides_with_1008_field_required(self):
        with self.open_session(self.ws) as (ws, token, i):
            frame = _message(token, "who am I?")
            del frame["token"]
            ws.send(json.dumps(frame))
            rcvd = self.closed_by_guestgate(ws)
        self.assertEqual(rcvd.code, 1008)
        self.assertEqual(rcvd.reason, "field-required")
        conn = self.upstream_closed(i)
        self.assertEqual(conn["closed"], {"code": 1008, "reason": "field-required"})
        self.assertEqual([r["json"]["action"] for r in conn["received"]], ["configureSession"], "nothing of it was forwarded")


class MessengerMessageLimit(_MessengerStack):
    MAX_MESSAGE_BYTES = 1024

    def test_a_message_under_the_limit_passes_one_over_closes_with_1009(self):
        with self.open_session(self.ws) as (ws, token, i):
            ws.send(json.dumps(_message(token, "small")))
            self.assertEqual(json.loads(ws.recv(timeout=10))["body"]["text"], "small")
            big = json.dumps(_message(token, "x" * 2000))
            self.assertGreater(len(big), self.MAX_MESSAGE_BYTES)
            ws.send(big)
            rcvd = self.closed_by_guestgate(ws)
        self.assertEqual(rcvd.code, 1009)
        self.assertEqual(rcvd.reason, "message-too-large")
        conn = self.upstream_closed(i)
        self.assertEqual(conn["closed"]["code"], 1009)
        self.assertEqual([r["json"]["message"]["text"] for r in conn["received"][1:]], ["small"], "the big one was not forwarded")

    def test_fragments_under_the_limit_adding_up_over_it_close_with_1009(self):
        with self.open_session(self.ws) as (ws, token, i):
            text = json.dumps(_message(token, "y" * 1500))
            parts = [text[k:k + 600] for k in range(0, len(text), 600)]
            self.assertTrue(all(len(p) < self.MAX_MESSAGE_BYTES for p in parts))
            try:
                ws.send(iter(parts))
            except ConnectionClosed:
                # guestgate may close before the last fragment is sent: the
                # limit is crossed on the way.
                pass
            rcvd = self.closed_by_guestgate(ws)
        self.assertEqual(rcvd.code, 1009)
        conn = self.upstream_closed(i)
        self.assertEqual(conn["closed"]["code"], 1009)
        self.assertEqual([r["json"]["action"] for r in conn["received"]], ["configureSession"])


if __name__ == "__main__":
    unittest.main(verbosity=2)

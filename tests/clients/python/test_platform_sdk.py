"""The vendor's Python SDK (PyPI PureCloudPlatformClientV2) through guestgate.

Pass-through routes: each call is made once straight at the loopback upstream
and once through guestgate; the two requests the upstream recorded must match
(method, path, query, body bytes, end-to-end headers) and the SDK must get the
upstream's answer unchanged. The upstream and guestgate are started by
lib/stack.js (the same upstream the Node tests use).
"""

import atexit
import base64
import json
import os
import shutil
import subprocess
import tempfile
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.dirname(HERE)

# The SDK reads (and watches, recursively, the folder of) ~/.genesyscloudpython/config
# on import: give it an empty home. And keep loopback calls off any proxy.
_HOME = tempfile.mkdtemp(prefix="guestgate-py-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["HOME"] = _HOME
for _k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_k, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

import PureCloudPlatformClientV2  # noqa: E402  (after HOME is set)
from PureCloudPlatformClientV2.rest import ApiException  # noqa: E402

from loopback import NETWORK, outside_loopback

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
PROXY_ADDED = {"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "forwarded", "via", "x-request-id", "x-real-ip"}
TOKEN = "python-token-xyz"


def _get_json(url):
    # No proxy handler: this must go to loopback directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        return json.load(r)


def _end_to_end(headers):
    return {k: v for k, v in headers.items() if k != "host" and k not in HOP_BY_HOP}


class PlatformSdkThroughGuestgate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stack = subprocess.Popen(
            ["node", os.path.join(CLIENTS, "lib", "stack.js"), "--to-id", "queue-123"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = cls.stack.stdout.readline()
        if not line:
            err = cls.stack.stderr.read()
            cls.stack.wait()
            raise RuntimeError("lib/stack.js failed to start upstream and guestgate:\n" + err)
        urls = json.loads(line)
        cls.upstream = urls["upstream"]
        cls.guestgate = urls["guestgate"]

    @classmethod
    def tearDownClass(cls):
        cls.stack.stdin.close()
        try:
            cls.stack.wait(timeout=15)
        except subprocess.TimeoutExpired:
            cls.stack.kill()
            cls.stack.wait()

    def recorded(self):
        return _get_json(self.upstream + "/__upstream__/requests")

    def client_for(self, base_url):
        # How a user points the SDK elsewhere: configuration.host (as for a
        # region, PureCloudRegionHosts.xx.get_api_host()), then an ApiClient.
        PureCloudPlatformClientV2.configuration.host = base_url
        client = PureCloudPlatformClientV2.api_client.ApiClient()
        client.access_token = TOKEN
        self.assertEqual(client.get_conf_url("api", client.host), base_url)
        return client

    def direct_and_through_guestgate(self, label, call):
        """call(api_client) -> SDK result or raised ApiException; returns (result, direct, proxied, client)."""
        out = []
        for base in (self.upstream, self.guestgate):
            client = self.client_for(base)
            n = len(self.recorded())
            try:
                result = call(client)
            except ApiException as e:  # an upstream error is an answer too
                result = e
            recs = self.recorded()[n:]
            self.assertEqual(len(recs), 1, f"{label}: one request should reach the upstream via {base}")
            self.assert_sdk_got(result, client, recs[0], f"{label} via {base}")
            out.append((result, recs[0], client))
        (_, direct, _), (result, proxied, client) = out
        self.assert_same_request(direct, proxied, label)
        self.assertTrue(any(kind == "connect" for kind, _ in NETWORK), "socket connects are observed")
        self.assertEqual(outside_loopback(), [], "nothing may leave loopback")
        return result, direct, proxied, client

    def assert_same_request(self, direct, proxied, label):
        self.assertEqual(proxied["method"], direct["method"], f"{label}: method")
        self.assertEqual(proxied["target"], direct["target"], f"{label}: path and query")
        self.assertEqual(proxied["body_b64"], direct["body_b64"], f"{label}: body bytes")
        d = _end_to_end(direct["headers"])
        p = _end_to_end(proxied["headers"])
        added = set(p) - set(d)
        self.assertEqual(added - PROXY_ADDED, set(), f"{label}: headers guestgate added that the SDK did not send")
        for k in added:
            del p[k]
        self.assertEqual(p, d, f"{label}: end-to-end headers")

    def assert_sdk_got(self, result, client, rec, label):
        resp = rec["response"]
        upstream_body = base64.b64decode(resp["body_b64"])
        if isinstance(result, ApiException):
            status, body, headers = result.status, result.body, result.headers
        else:
            last = client.last_response
            status, body, headers = last.status, last.data, last.getheaders()
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        self.assertEqual(status, resp["status"], f"{label}: status")
        self.assertEqual(body, upstream_body.decode("utf-8"), f"{label}: body")
        for h in ("content-type", "inin-correlation-id", "cache-control", "x-upstream-seq"):
            self.assertEqual(headers.get(h), resp["headers"][h], f"{label}: response header {h}")

    def test_get_users_passes_through(self):
        def call(client):
            return PureCloudPlatformClientV2.UsersApi(client).get_users(
                page_size=5, page_number=2, expand=["presence", "routingStatus"], sort_order="ASC")

        result, _, proxied, _ = self.direct_and_through_guestgate("get_users", call)
        self.assertEqual(proxied["path"], "/api/v2/users")
        self.assertIn("pageSize=5", proxied["query"])
        self.assertEqual(proxied["headers"]["authorization"], "Bearer " + TOKEN)
        self.assertEqual(proxied["headers"]["purecloud-sdk"], "269.0.0")
        # The SDK's model of the answer carries the upstream's values.
        self.assertEqual(result.page_number, 2)
        self.assertEqual([u.id for u in result.entities], ["user-2-1", "user-2-2"])
        self.assertEqual(result.entities[0].presence.presence_definition.system_presence, "Available")

    def test_post_agent_message_body_passes_through(self):
        body = PureCloudPlatformClientV2.AdditionalMessage()
        body.text_body = "Python agent reply \u2014 \u00fcn\u00efc\u00f8d\u00e9 \u2713"

        def call(client):
            return PureCloudPlatformClientV2.ConversationsApi(client).post_conversations_message_communication_messages(
                "conv-py", "comm-py", body)

        result, _, proxied, _ = self.direct_and_through_guestgate("agent message", call)
        self.assertEqual(json.loads(base64.b64decode(proxied["body_b64"])), {"textBody": body.text_body})
        self.assertEqual(proxied["response"]["status"], 202)
        self.assertEqual(result.normalized_message.text, body.text_body)
        self.assertEqual(result.conversation_id, "conv-py")

    def test_upstream_error_reaches_the_sdk_unchanged(self):
        def call(client):
            return PureCloudPlatformClientV2.UsersApi(client).get_user("no-such-user")

        result, _, proxied, _ = self.direct_and_through_guestgate("404", call)
        self.assertIsInstance(result, ApiException)
        self.assertEqual(result.status, 404)
        self.assertEqual(json.loads(result.body)["code"], "not.found")


if __name__ == "__main__":
    unittest.main(verbosity=2)

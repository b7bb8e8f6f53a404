"""Loopback peers' wire helpers for the deploy scripts (deploy/bolt-train.py,
deploy/test/scrape_metrics.py): free ports and WebSocket frames (RFC 6455).
Standard library only."""

import base64
import hashlib
import os
import socket

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ws_accept(key):
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def ws_unmask(payload, key):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_frame(opcode, payload, mask):
    """One final frame; masked as a client must send it."""
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes([0x80 | opcode, bit | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + ws_unmask(payload, key)

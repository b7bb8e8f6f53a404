#!/usr/bin/env python3
"""Minimal authoritative DNS stub for deploy/test-container.sh.

Answers UDP queries on ADDR:53: an A record 127.0.0.1 for NAME, an empty
NOERROR answer for other record types of NAME, NXDOMAIN for anything else.
Each query is appended to LOG_FILE as "QNAME QTYPE". It lets the test prove
that the static binary in the `scratch` image resolves names through DNS
(glibc's built-in nss_dns) using only loopback addresses.

usage: dns_stub.py ADDR NAME LOG_FILE
"""
import socket
import struct
import sys

ADDR, NAME, LOG_FILE = sys.argv[1], sys.argv[2].lower().rstrip("."), sys.argv[3]


def parse_question(msg):
    labels, i = [], 12
    while msg[i]:
        n = msg[i]
        labels.append(msg[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, _qclass = struct.unpack("!HH", msg[i + 1 : i + 5])
    return ".".join(labels).lower(), qtype, msg[12 : i + 5]


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((ADDR, 53))
while True:
    msg, peer = sock.recvfrom(512)
    if len(msg) < 17:
        continue
    try:
        qname, qtype, question = parse_question(msg)
    except (IndexError, struct.error):
        continue
    with open(LOG_FILE, "a", encoding="utf-8") as f:
        f.write(f"{qname} {qtype}\n")
    answers = b""
    if qname != NAME:
        flags, ancount = 0x8183, 0  # response, RD, RA, NXDOMAIN
    elif qtype == 1:
        flags, ancount = 0x8180, 1
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
    else:
        flags, ancount = 0x8180, 0  # NODATA (e.g. AAAA)
    header = msg[:2] + struct.pack("!HHHHH", flags | 0x0400, 1, ancount, 0, 0)
    sock.sendto(header + question + answers, peer)

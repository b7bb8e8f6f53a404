"""Every socket connect and name lookup in the test process (the SDKs
included) is recorded, so a test can fail if any went anywhere but loopback."""

import sys

NETWORK = []
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _audit(event, args):
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple):
            NETWORK.append(("connect", str(addr[0])))
    elif event == "socket.getaddrinfo":
        NETWORK.append(("getaddrinfo", str(args[0])))


sys.addaudithook(_audit)


def outside_loopback():
    """What was reached that is not a loopback address."""
    return [n for n in NETWORK if n[1] not in LOOPBACK]

#!/usr/bin/env python3
"""Open N keep-alive connections to 127.0.0.1:PORT, send one POST on each,
read the answer, then keep them all open and idle; read VmRSS/VmHWM of the
server's processes while they are open. Prints one JSON line.

usage: idle_conns.py PORT PATH BODY_FILE N PID[,PID...]
Bounded: at most N connections, each sends exactly one request; the whole
thing gives up after 120 s.
"""

import asyncio
import json
import sys
import time

PORT, PATH, BODY_FILE, N, PIDS = (int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                  [int(p) for p in sys.argv[5].split(",")])
BODY = open(BODY_FILE, "rb").read()
REQ = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nContent-Type: application/json\r\n"
       f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
OPENING = 50  # connections being opened/served at once


def status(pids):
    tot = {"VmRSS": 0, "VmHWM": 0}
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in tot:
                tot[k] += int(v.split()[0])
    return tot


async def one(sem, conns, failures):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
            writer.write(REQ)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            code = int(head.split(b" ", 2)[1])
            lower = head.lower()
            if b"content-length:" in lower:
                n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(n)
            elif b"transfer-encoding: chunked" in lower:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            if code != 200:
                failures.append(code)
            conns.append((reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            failures.append(repr(e))


async def main():
    sem = asyncio.Semaphore(OPENING)
    conns, failures = [], []
    await asyncio.wait_for(asyncio.gather(*(one(sem, conns, failures) for _ in range(N))), 100)
    await asyncio.sleep(2.0)  # idle
    # count connections the server has not closed (a closed one reads EOF at once)
    still_open = 0
    for reader, _ in conns:
        try:
            data = await asyncio.wait_for(reader.read(1), 0.001)
            if data:
                still_open += 1  # unexpected bytes, but open
        except asyncio.TimeoutError:
            still_open += 1
    st = status(PIDS)
    for _, writer in conns:
        writer.close()
    print(json.dumps({"open": still_open, "answered": len(conns), "failures": failures[:5],
                      "n_failures": len(failures), **st, "at": time.time()}))


asyncio.run(main())

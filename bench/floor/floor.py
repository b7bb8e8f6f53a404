#!/usr/bin/env python3
"""The floor experiment (see bench/NOTES.md): CPU per request (user and system) of a minimal hyper
proxy against nginx proxy_pass and guestgate, measured like bench.py (server on
core 1 with one worker, wrk with keep-alive connections and the shared nginx
upstream on core 0), rounds interleaved. Prints a markdown table, one row per
server and concurrency (CONNS, default 32; e.g. CONNS=32,256).

usage: floor.py FLOOR_BIN GUESTGATE_BIN [ROUNDS]
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR, GUESTGATE = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
CONNS = [int(c) for c in os.environ.get("CONNS", "32").split(",")]
UPSTREAM, PROXY = 19281, 19284
MSG = "/api/v2/conversations/messaging/guest/conversations/bench-conv/messages"
WORK = tempfile.mkdtemp(prefix="guestgate-floor-")


def nginx_conf(name, port):
    text = open(os.path.join(BENCH, "nginx", f"{name}.conf")).read()
    for k, v in {"@PID@": os.path.join(WORK, f"{name}.pid"), "@ERRLOG@": os.path.join(WORK, f"{name}.err"),
                 "@UPSTREAM_PORT@": str(UPSTREAM), "@PROXY_PORT@": str(port),
                 "@WORK@": WORK, "@BENCH@": BENCH}.items():
        text = text.replace(k, v)
    path = os.path.join(WORK, f"{name}.conf")
    open(path, "w").write(text)
    return ["nginx", "-p", WORK, "-c", path, "-g", "daemon off;"]


def start(cmd, core, env=None):
    p = subprocess.Popen(["taskset", "-c", core] + cmd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    port = UPSTREAM if core == "0" else PROXY
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{cmd[0]} did not start")


def cpu_ticks(pid):
    """(utime, stime) of a process (all threads) and its children (nginx workers)."""
    user = system = 0
    for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def wrk(path, seconds, conns):
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s",
                          os.path.join(BENCH, "lib", "post.lua"), f"http://127.0.0.1:{PROXY}{path}"],
                         env={**os.environ, "BENCH_BODY_FILE": os.path.join(BENCH, "lib", "message.json")},
                         capture_output=True, text=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1)), "Non-2xx" in out


gg_env = {**os.environ, "GUESTGATE__SERVER__LISTEN": f"127.0.0.1:{PROXY}",
          "GUESTGATE__UPSTREAM__BASE_URL": f"http://127.0.0.1:{UPSTREAM}",
          "GUESTGATE__GUEST_MESSAGES__TO__ID": "bench-queue", "RUST_LOG": "warn", "TOKIO_WORKER_THREADS": "1"}
TARGETS = [
    ("nginx proxy_pass", nginx_conf("proxy", PROXY), None, MSG),
    ("floor: hyper + hyper-util pooled client", [FLOOR, f"127.0.0.1:{PROXY}", f"127.0.0.1:{UPSTREAM}", "pool"], None, MSG),
    ("floor: hyper, a per-thread LIFO of idle upstream connections (guestgate's pool)",
     [FLOOR, f"127.0.0.1:{PROXY}", f"127.0.0.1:{UPSTREAM}", "lifo"], None, MSG),
    ("floor: hyper, one upstream connection per client connection",
     [FLOOR, f"127.0.0.1:{PROXY}", f"127.0.0.1:{UPSTREAM}", "direct"], None, MSG),
    ("guestgate, pass-through route", [GUESTGATE], gg_env, "/api/v2/bench/other"),
    ("guestgate, intercepted route", [GUESTGATE], gg_env, MSG),
]

hz = os.sysconf("SC_CLK_TCK")
upstream = start(nginx_conf("upstream", UPSTREAM), "0")
results = {(t[0], c): [] for t in TARGETS for c in CONNS}
try:
    for rnd in range(ROUNDS):
        for name, cmd, env, path in TARGETS[rnd % len(TARGETS):] + TARGETS[:rnd % len(TARGETS)]:
            p = start(cmd, "1", env)
            try:
                for conns in CONNS:
                    wrk(path, 1, conns)
                    before = cpu_ticks(p.pid)
                    n, non2xx = wrk(path, 6, conns)
                    user, system = (t1 - t0 for t0, t1 in zip(before, cpu_ticks(p.pid)))
                    if non2xx:
                        raise SystemExit(f"{name}: non-2xx answers")
                    results[(name, conns)].append((n / 6, user / hz / n * 1e6, system / hz / n * 1e6))
            finally:
                p.terminate()
                p.wait()
                time.sleep(0.3)
finally:
    upstream.terminate()

print(f"{ROUNDS} interleaved rounds of 6 s; medians [min-max]\n")
print("| server (core 1, one worker) | wrk -c | req/s | CPU µs per request | of it user | of it system |\n"
      "|---|---:|---:|---:|---:|---:|")
for conns in CONNS:
    for name, *_ in TARGETS:
        runs = results[(name, conns)]
        rps = [r[0] for r in runs]
        user, system = (statistics.median(r[i] for r in runs) for i in (1, 2))
        cpu = statistics.median(r[1] + r[2] for r in runs)
        print(f"| {name} | {conns} | {statistics.median(rps):,.0f} [{min(rps):,.0f}-{max(rps):,.0f}] | {cpu:.1f} "
              f"| {user:.2f} | {system:.2f} |")

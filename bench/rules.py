#!/usr/bin/env python3
"""A/B of the intercepted route's cost: two guestgate binaries, and the rule table.

    python3 bench/rules.py BASE_BIN NEW_BIN [RESULTS_FILE]

Runs, interleaved in rounds on loopback, with guestgate pinned to core 1 and
wrk plus an nginx `return 200` upstream on core 0 (c=32, 195-byte message):

  base      BASE_BIN with only [guest_messages]            (e.g. the previous commit)
  new       NEW_BIN with only [guest_messages]             (same configuration)
  new-20    NEW_BIN with 20 [[rules]], the request matching the last one

and reports requests/s and guestgate's CPU microseconds per request (utime +
stime from /proc over the run, divided by the requests wrk counted). Needs nginx
and wrk (bench/run.sh installs both). Nothing here talks to anything but
127.0.0.1.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "6"))
# One concurrency here; ab.py reads CONNS as a list, whose first entry this takes.
CONNS = int(os.environ.get("CONNS", "32").split(",")[0])
PORT = int(os.environ.get("BENCH_PORT_BASE", "18181"))
UPSTREAM, PROXY, ADMIN = PORT, PORT + 1, PORT + 2
CONV = "c0ffee00-1111-4222-8333-444455556666"
SHORTHAND_PATH = f"/api/v2/conversations/messaging/guest/conversations/{CONV}/messages"
RULE_PATH = f"/api/v2/bench/r19/{CONV}/messages"
TICKS = os.sysconf("SC_CLK_TCK")

NGINX = """worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_max_body_size 1m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 '{{"id":"7d1f3c2e","status":"accepted"}}'; }}
    }}
}}
"""

SHORTHAND = """[guest_messages]
to = { id = "bench-queue-0001" }
"""


def twenty_rules():
    """19 rules that do not match the request, then the one that does (same edits)."""
    out = []
    for i in range(20):
        out.append(
            f'[[rules]]\nname = "r{i}"\npath = "/api/v2/bench/r{i}/{{conversationId}}/messages"\n'
            f'remove = ["/id"]\n[rules.set]\n"/to" = {{ id = "bench-queue-0001" }}\n'
        )
    return "\n".join(out)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_port(port):
    import socket

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start_guestgate(binary, config, work, workers=1, cpus="1", prefix=()):
    """The proxy on PROXY, pinned to `cpus`, run through `prefix` (e.g. valgrind)."""
    path = os.path.join(work, "guestgate.toml")
    with open(path, "w") as f:
        f.write(config)
    env = dict(os.environ)
    env.update(
        {
            "GUESTGATE__SERVER__LISTEN": f"127.0.0.1:{PROXY}",
            "GUESTGATE__ADMIN__LISTEN": f"127.0.0.1:{ADMIN}",
            "GUESTGATE__UPSTREAM__BASE_URL": f"http://127.0.0.1:{UPSTREAM}",
            "GUESTGATE__LOG__LEVEL": "warn",
            "TOKIO_WORKER_THREADS": str(workers),
        }
    )
    env.pop("GUESTGATE__GUEST_MESSAGES__TO__ID", None)
    pin = ["taskset", "-c", cpus] if cpus else []
    proc = subprocess.Popen(
        pin + list(prefix) + [binary, "--config", path],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wait_port(PROXY)
    return proc


def check_forward(path):
    """The proxy answers 200 through the upstream (the edit itself is tested in tests/)."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
         "--data-binary", f"@{BENCH}/lib/message.json",
         f"http://127.0.0.1:{PROXY}{path}"],
        capture_output=True, text=True,
    ).stdout
    if out != "200":
        raise SystemExit(f"{path}: HTTP {out}")


def run_wrk(path, pid, conns=CONNS, cpus="0", threads=1):
    before = cpu_ticks(pid)
    pin = ["taskset", "-c", cpus] if cpus else []
    out = subprocess.run(
        pin + ["wrk", f"-t{threads}", f"-c{conns}", f"-d{DURATION}s",
         "-s", f"{BENCH}/lib/post.lua", f"http://127.0.0.1:{PROXY}{path}"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "BENCH_BODY_FILE": f"{BENCH}/lib/message.json"},
    ).stdout
    ticks = cpu_ticks(pid) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{path}: {non2xx.group(1)} non-2xx answers")
    return requests / DURATION, ticks / TICKS / requests * 1e6


# The two routes the A/B scripts measure: the [guest_messages] route and a
# path beside it that no rule intercepts.
ROUTES = [
    ("intercepted", SHORTHAND_PATH),
    ("pass-through", SHORTHAND_PATH.replace("/messages", "/attachments")),
]


def interleaved(rounds, conns_list, builds):
    """Every case of an A/B in its interleaved order: (round, conns, route, path,
    name, binary), each build right after the other on the same case."""
    for round_ in range(1, rounds + 1):
        for conns in conns_list:
            for route, path in ROUTES:
                for name, binary in builds:
                    yield round_, conns, route, path, name, binary


def builds_and_out(args, usage):
    """NAME=BINARY arguments and the optional `--out FILE` of ab.py and instructions.py."""
    args = list(args)
    out = None
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        del args[i:i + 2]
    builds = [a.split("=", 1) for a in args]
    if not builds or any(len(b) != 2 for b in builds):
        raise SystemExit(usage)
    return builds, out


def report(lines, out, mode="w"):
    """Prints the report and writes it to `out`, if given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, mode) as f:
            f.write(text)


def start_upstream(work):
    """The nginx `return 200` upstream on core 0."""
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(NGINX.format(work=work, port=UPSTREAM))
    nginx = subprocess.Popen(
        ["taskset", "-c", "0", "nginx", "-c", os.path.join(work, "nginx.conf"), "-g", "daemon off;"]
    )
    wait_port(UPSTREAM)
    return nginx


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    base, new = sys.argv[1], sys.argv[2]
    results_file = sys.argv[3] if len(sys.argv) > 3 else None
    work = tempfile.mkdtemp(prefix="guestgate-rules-ab-")
    nginx = start_upstream(work)
    targets = [
        ("base", base, SHORTHAND, SHORTHAND_PATH),
        ("new", new, SHORTHAND, SHORTHAND_PATH),
        ("new-20", new, twenty_rules(), RULE_PATH),
    ]
    seen = {name: [] for name, *_ in targets}
    try:
        for round_ in range(ROUNDS):
            for name, binary, config, path in targets:
                proc = start_guestgate(binary, config, work)
                try:
                    check_forward(path)
                    run_wrk(path, proc.pid)  # warm-up, not counted
                    seen[name].append(run_wrk(path, proc.pid))
                finally:
                    proc.terminate()
                    proc.wait()
                rps, us = seen[name][-1]
                print(f"round {round_ + 1} {name:7} {rps:9.0f} req/s {us:6.2f} us CPU/request", flush=True)
    finally:
        nginx.terminate()
        nginx.wait()
    lines = [
        f"Intercepted route, c={CONNS}, {ROUNDS} interleaved rounds of {DURATION} s "
        "(guestgate on core 1, wrk and nginx on core 0); median of rounds.",
        "",
        "| target | req/s | CPU us/request | vs base (CPU) |",
        "|---|---:|---:|---:|",
    ]
    base_us = statistics.median(us for _, us in seen["base"])
    for name, *_ in targets:
        rps = statistics.median(r for r, _ in seen[name])
        us = statistics.median(u for _, u in seen[name])
        lines.append(f"| {name} | {rps:.0f} | {us:.2f} | {us / base_us:.3f}x |")
    report = "\n".join(lines) + "\n"
    print(report)
    if results_file:
        with open(results_file, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()

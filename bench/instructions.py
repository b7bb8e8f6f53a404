#!/usr/bin/env python3
"""Instructions per request of guestgate builds, counted by valgrind: an A/B
that a noisy machine's wall-clock spread does not drown.

    python3 bench/instructions.py NAME=BINARY NAME=BINARY [...] [--out RESULTS_FILE]

Each binary serves [guest_messages] with one worker under `valgrind
--tool=cachegrind --cache-sim=no`, which counts the user-space instructions it
executes (Ir), in front of the nginx `return 200` upstream of bench/ab.py. For
every concurrency in CONNS (default 32,256) and both routes (intercepted and
pass-through) it runs twice, after the same check request: once serving FEW
requests (default 2000) and once MANY (default 10000), sent by `oha -n` over
that many keep-alive connections. The difference of the two totals divided by
MANY - FEW is the instructions per request, without start-up, connection
set-up and shutdown. ROUNDS (default 2) repeats it all, interleaved, and
the report gives each build's median and its ratio to the first.

FLOOR (default target/bench/release/floor, which bench/run.sh builds; FLOOR=
to skip) adds the floor of bench/floor, counted the same way: `direct` (hyper
with one upstream connection per client, no features) on the pass-through
route, `edit` (the same doing the intercepted route's edit with serde_json) on
the intercepted one: the instructions a hyper proxy spends on the job with
nothing on top, so the report shows what guestgate adds.

What this does not see: the kernel (most of a request's CPU on loopback,
bench/NOTES.md), cache misses and waiting. A change that saves instructions but
adds system calls or wake-ups shows here as a win, so bench/ab.py's wall-clock
run still decides what is kept. Needs valgrind, nginx and oha (bench/run.sh
installs nginx and oha; `apt-get install valgrind`); only 127.0.0.1 is used.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rules  # noqa: E402  (shares the upstream, the proxy's start and the check)

CONNS = [int(c) for c in os.environ.get("CONNS", "32,256").split(",")]
FEW = int(os.environ.get("FEW", "2000"))
MANY = int(os.environ.get("MANY", "10000"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
OHA = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")  # as bench.py finds it


def send(path, requests, conns):
    """`requests` POSTs of the bench message over `conns` connections; all must be 200."""
    out = subprocess.run(
        ["taskset", "-c", "0", OHA, "-n", str(requests), "-c", str(conns), "--no-tui",
         "--output-format", "json", "-m", "POST", "-T", "application/json",
         "-D", f"{rules.BENCH}/lib/message.json", f"http://127.0.0.1:{rules.PROXY}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    codes = json.loads(out)["statusCodeDistribution"]
    if codes != {"200": requests}:
        raise SystemExit(f"{path}: answers {codes}, expected {requests} x 200")


FLOOR = os.environ.get("FLOOR", os.path.join(rules.BENCH, "..", "target", "bench", "release", "floor"))
FLOOR_NAME = "floor"


# The floor's mode for each route: the same job, nothing else.
FLOOR_MODE = {rules.ROUTES[0][1]: "edit", rules.ROUTES[1][1]: "direct"}


def start_floor(work, prefix, path):
    """The floor, in the mode that does `path`'s job, on the proxy port, pinned to core 1, through `prefix`."""
    proc = subprocess.Popen(
        ["taskset", "-c", "1", *prefix, FLOOR, f"127.0.0.1:{rules.PROXY}",
         f"127.0.0.1:{rules.UPSTREAM}", FLOOR_MODE[path]],
        stdout=subprocess.DEVNULL,
    )
    rules.wait_port(rules.PROXY)
    return proc


def instructions(binary, work, path, requests, conns):
    """Ir of one proxy process (guestgate, or the floor when `binary` is None) that
    served the check request and `requests` more."""
    out = os.path.join(work, "cachegrind.out")
    valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--branch-sim=no",
                f"--cachegrind-out-file={out}", f"--log-file={work}/valgrind.log"]
    if binary is None:
        proc = start_floor(work, valgrind, path)
    else:
        proc = rules.start_guestgate(binary, rules.SHORTHAND, work, 1, "1", prefix=valgrind)
    try:
        rules.check_forward(path)
        send(path, requests, conns)
    finally:
        proc.terminate()
        proc.wait()
    # The floor has no signal handling: SIGTERM ends it, as it should.
    if proc.returncode != 0 and binary is not None:
        raise SystemExit(f"{binary} exited with {proc.returncode} under valgrind")
    with open(out) as f:
        summary = re.search(r"^summary: (\d+)", f.read(), re.M)
    os.remove(out)
    return int(summary.group(1))


def per_request(binary, work, path, conns):
    """Ir per request of one proxy (the floor when `binary` is None): FEW and then
    MANY requests, each in a process of its own, and the difference per request."""
    few = instructions(binary, work, path, FEW, conns)
    many = instructions(binary, work, path, MANY, conns)
    return (many - few) / (MANY - FEW)


def main():
    builds, out = rules.builds_and_out(sys.argv[1:], __doc__)
    if MANY <= FEW:
        raise SystemExit(__doc__)
    work = tempfile.mkdtemp(prefix="guestgate-instructions-")
    nginx = rules.start_upstream(work)
    seen = {}
    cases = list(rules.interleaved(ROUNDS, CONNS, builds))
    floor = bool(FLOOR) and os.path.exists(FLOOR)
    if floor:
        # After each round's last case of a route: the floor doing that route's job.
        last = {(r, c, route): (i, path) for i, (r, c, route, path, *_) in enumerate(cases)}
        for (round_, conns, route), (i, path) in sorted(last.items(), key=lambda kv: -kv[1][0]):
            cases.insert(i + 1, (round_, conns, route, path, FLOOR_NAME, None))
    try:
        for round_, conns, route, path, name, binary in cases:
            per = per_request(binary, work, path, conns)
            seen.setdefault((conns, route, name), []).append(per)
            print(f"round {round_} c={conns} {route:12} {name:10} "
                  f"{per:10.0f} instructions/request", flush=True)
    finally:
        nginx.terminate()
        nginx.wait()
    first = builds[0][0]
    lines = [
        f"User-space instructions per request (valgrind cachegrind, Ir), one guestgate worker; "
        f"({MANY} - {FEW} requests) per case, {ROUNDS} interleaved rounds, median; the spread "
        "is the lowest and highest round.",
        "",
        "| c | route | build | instructions/request | spread | vs " + first + " |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for conns in CONNS:
        for route, _ in rules.ROUTES:
            base = statistics.median(seen[(conns, route, first)])
            names = [name for name, _ in builds]
            if floor and (conns, route, FLOOR_NAME) in seen:
                names.append(FLOOR_NAME)
            for name in names:
                runs = seen[(conns, route, name)]
                med = statistics.median(runs)
                lines.append(f"| {conns} | {route} | {name} | {med:.0f} | "
                             f"{min(runs):.0f}-{max(runs):.0f} | {med / base:.3f}x |")
    rules.report(lines, out, "a")


if __name__ == "__main__":
    main()

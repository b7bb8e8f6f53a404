#!/usr/bin/env python3
"""A/B of guestgate builds on the hot path, in one interleaved run.

    python3 bench/ab.py NAME=BINARY NAME=BINARY [...] [--out RESULTS_FILE]

Each binary serves [guest_messages] with one worker on core 1, behind wrk on
core 0 in front of an nginx `return 200` upstream (also core 0), like
bench/rules.py. For every round, every concurrency in CONNS (default 32,256)
and both routes (the intercepted guest message route and a pass-through
route), each binary is started fresh, checked to answer 200, warmed up and
measured. Reported: median requests/s and guestgate CPU microseconds per
request (utime + stime over the run / requests), and each build's ratio to
the first one, also paired by round. The first binary runs twice per round
(CONTROL=0 turns that off): how far it differs from itself is the noise.
Needs nginx and wrk (bench/run.sh installs both); only 127.0.0.1 is used.
"""

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rules  # noqa: E402  (shares the A/B machinery)

CONNS = [int(c) for c in os.environ.get("CONNS", "32,256").split(",")]
# WORKERS=2: two guestgate workers, nothing pinned, wrk with two threads
# (load generator and upstream share the cores with guestgate).
WORKERS = int(os.environ.get("WORKERS", "1"))
PROXY_CPUS, WRK_CPUS = ("1", "0") if WORKERS == 1 else (None, None)
# CONTROL=1 (the default): the first binary is measured a second time in every
# round, under its name with "-again", so the report shows what the same build
# differs from itself on this machine in this run: the noise a difference must exceed.
CONTROL = os.environ.get("CONTROL", "1") == "1"


def main():
    builds, out = rules.builds_and_out(sys.argv[1:], __doc__)
    if len(builds) < 2:
        raise SystemExit(__doc__)
    if CONTROL:
        builds.append([f"{builds[0][0]}-again", builds[0][1]])
    work = tempfile.mkdtemp(prefix="guestgate-ab-")
    nginx = rules.start_upstream(work)
    seen = {}
    try:
        for round_, conns, route, path, name, binary in rules.interleaved(rules.ROUNDS, CONNS,
                                                                         builds):
            proc = rules.start_guestgate(binary, rules.SHORTHAND, work, WORKERS, PROXY_CPUS)
            try:
                rules.check_forward(path)
                wrk = (path, proc.pid, conns, WRK_CPUS, WORKERS)
                rules.run_wrk(*wrk)  # warm-up
                result = rules.run_wrk(*wrk)
            finally:
                proc.terminate()
                proc.wait()
            seen.setdefault((conns, route, name), []).append(result)
            print(f"round {round_} c={conns} {route:12} {name:10} "
                  f"{result[0]:9.0f} req/s {result[1]:6.2f} us CPU/request", flush=True)
    finally:
        nginx.terminate()
        nginx.wait()
    first = builds[0][0]
    setup = ("guestgate on core 1 (one worker), wrk and the nginx upstream on core 0"
             if WORKERS == 1 else
             f"guestgate with {WORKERS} workers, wrk ({WORKERS} threads) and the nginx upstream "
             "unpinned on the same cores")
    lines = [
        f"{rules.ROUNDS} interleaved rounds of {rules.DURATION} s; {setup}; medians.",
        "",
        f"| c | route | build | req/s | CPU us/request | req/s vs {first} | CPU vs {first} "
        f"| req/s vs {first}, paired by round |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    noise = []
    for conns in CONNS:
        for route, _ in rules.ROUTES:
            base = seen[(conns, route, first)]
            base_rps = statistics.median(r for r, _ in base)
            base_us = statistics.median(u for _, u in base)
            for name, _ in builds:
                runs = seen[(conns, route, name)]
                rps = statistics.median(r for r, _ in runs)
                us = statistics.median(u for _, u in runs)
                # Each round's ratio to the first build in that round, then their
                # median: drift between rounds cancels out.
                paired = statistics.median(r / b for (r, _), (b, _) in zip(runs, base))
                if CONTROL and name == builds[-1][0]:
                    noise.append(abs(paired - 1))
                lines.append(f"| {conns} | {route} | {name} | {rps:.0f} | {us:.2f} | "
                             f"{rps / base_rps:.3f}x | {us / base_us:.3f}x | {paired:.3f}x |")
    if noise:
        lines += ["", f"Control: {first} against itself ({builds[-1][0]}) differs by up to "
                      f"{max(noise) * 100:.1f} % (paired req/s); a difference within that is noise."]
    rules.report(lines, out)


if __name__ == "__main__":
    main()

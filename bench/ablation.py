#!/usr/bin/env python3
"""What each of guestgate's per-request features costs, in instructions: the
part of guestgate's distance from the floor (bench/floor) that is the
product's own behaviour, and the part that is not.

    python3 bench/ablation.py [--out RESULTS_FILE]
    python3 bench/ablation.py --build     (only builds; prints the binary's path)

Builds the working tree's tracked files with bench/ablation.patch
applied: a switch per feature, read from GUESTGATE_ABLATE (a bit mask), that
leaves the feature out. The patch is never merged; the switches exist only in
this build. Then, like bench/instructions.py (whose counting it uses), it
counts the user-space instructions per request under cachegrind, for both
routes at every concurrency in CONNS (default 32), of:

- that build with every feature (GUESTGATE_ABLATE=0: the same code as the tree
  but for the switches' few instructions);
- the same build without each feature in turn, and without all of them;
- the floor doing the same job with guestgate's pool design (`lifo` and
  `edit-lifo`), when FLOOR (default target/bench/release/floor) exists.

The features, bit by bit: 1 the request id (kept or generated, sent upstream
and returned) with the request's span and log line; 2 the forwarding headers
(X-Forwarded-For, -Proto, -Host, Forwarded); 4 the removal of hop-by-hop
headers and method overrides, request and response; 8 the metrics (request
counts, latencies, edit counts); 16 the checks on the request as received
(framing, target form); 32 the upstream response timeout; 64, on the
pass-through route only, the canonical path and the rule lookup (the path is
forwarded as received). Each is behaviour that tests pin; none can go. What
remains with all of them left out against the floor is the rest of
guestgate's request path (the pool, the connection's and the request's
futures and boxes, the clock reads), spread over many small costs
(bench/NOTES.md).

Counts, not the wall clock: the differences are a few hundred instructions
each, below what this kind of machine's run-to-run spread resolves (bench/ab.py
with a control shows it). Needs valgrind, nginx, oha and git; about 2 min to
build (into ABLATION_TARGET_DIR, by default $CARGO_TARGET_DIR/ablation or
target/bench/ablation) and about 4 min to count.
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instructions  # noqa: E402  (the counting)
import rules  # noqa: E402

ROOT = os.path.dirname(rules.BENCH)
TARGET = os.environ.get("ABLATION_TARGET_DIR", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target", "bench")), "ablation"))
CONNS = [int(c) for c in os.environ.get("CONNS", "32").split(",")]

FEATURES = [
    (1, "the request id, span and log line"),
    (2, "the forwarding headers"),
    (4, "hop-by-hop and method-override removal"),
    (8, "the metrics"),
    (16, "the request checks"),
    (32, "the upstream response timeout"),
    (64, "the canonical path and the rule lookup (pass-through only)"),
]
# The floor with guestgate's pool design, doing each route's job.
FLOOR_MODE = {rules.ROUTES[0][1]: "edit-lifo", rules.ROUTES[1][1]: "lifo"}


def build():
    """The tree with the patch, built with symbols; the binary's path."""
    tree = os.path.join(TARGET, "tree")
    subprocess.run(["rm", "-rf", tree], check=True)
    os.makedirs(tree)
    # The working tree's tracked files as they are (a commit of them that no
    # branch holds), or HEAD when nothing is changed.
    tree_commit = subprocess.run(["git", "-C", ROOT, "stash", "create"], capture_output=True,
                                 text=True, check=True).stdout.strip() or "HEAD"
    archive = subprocess.run(["git", "-C", ROOT, "archive", tree_commit], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    # The tree may lie inside this repository (target/): git must not find
    # it there, or it applies only what falls under the tree's path, silently.
    subprocess.run(["git", "apply", os.path.join(rules.BENCH, "ablation.patch")], cwd=tree,
                   check=True, env={**os.environ, "GIT_CEILING_DIRECTORIES": os.path.dirname(tree)})
    subprocess.run(["cargo", "build", "--locked", "--profile", "profiling"], cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": os.path.join(TARGET, "target")})
    return os.path.join(TARGET, "target", "profiling", "guestgate")


def count(binary, work, path, conns, mask):
    """Instructions per request of one case (`binary` None: the floor)."""
    os.environ["GUESTGATE_ABLATE"] = str(mask)
    return instructions.per_request(binary, work, path, conns)


def cases(route):
    """(name, mask) of every build counted on `route`; the rule lookup is
    what makes the intercepted route, so it is not left out there."""
    features = [(bit, name) for bit, name in FEATURES
                if route == "pass-through" or "pass-through only" not in name]
    return ([("every feature", 0)] + [(f"without {name}", bit) for bit, name in features]
            + [("without all of them", sum(bit for bit, _ in features))])


def measure(binary, conns_list=CONNS, floor=instructions.FLOOR, log=print):
    """{(conns, route, case): instructions per request}, the floor's under
    "floor" when `floor` (a floor binary) exists."""
    instructions.FLOOR = floor
    instructions.FLOOR_MODE.update(FLOOR_MODE)
    with_floor = bool(floor) and os.path.exists(floor)
    work = tempfile.mkdtemp(prefix="guestgate-ablation-")
    nginx = rules.start_upstream(work)
    seen = {}
    try:
        for conns in conns_list:
            for route, path in rules.ROUTES:
                for name, mask in cases(route) + ([("floor", None)] if with_floor else []):
                    seen[(conns, route, name)] = count(binary if mask is not None else None,
                                                       work, path, conns, mask or 0)
                    log(f"c={conns} {route:12} {name:45} "
                        f"{seen[(conns, route, name)]:8.0f} instructions/request")
    finally:
        os.environ.pop("GUESTGATE_ABLATE", None)
        nginx.terminate()
        nginx.wait()
    for conns in conns_list:
        for route, _ in rules.ROUTES:
            if seen[(conns, route, "every feature")] - seen[(conns, route, "without all of them")] < 500:
                raise SystemExit(f"c={conns} {route}: leaving the features out saved nothing; "
                                 "did bench/ablation.patch apply?")
    return seen


def table(seen):
    """The measurements as a markdown table."""
    lines = [
        "| c | route | build | instructions/request | saves | share of the distance from the floor |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for conns, route in dict.fromkeys((c, r) for c, r, _ in seen):
        every = seen[(conns, route, "every feature")]
        floor = seen.get((conns, route, "floor"))
        for name, _ in cases(route) + ([("floor", None)] if floor is not None else []):
            n = seen[(conns, route, name)]
            saves = every - n
            share = (f"{saves / (every - floor):.0%}"
                     if floor is not None and name.startswith("without") else "")
            saved = f"{saves:.0f}" if name != "floor" else f"(the distance) {saves:.0f}"
            lines.append(f"| {conns} | {route} | {name} | {n:.0f} | {saved} | {share} |")
    return lines


def main():
    args = sys.argv[1:]
    if args == ["--build"]:
        print(build())
        return
    if args and (len(args) != 2 or args[0] != "--out"):
        raise SystemExit(__doc__)
    seen = measure(build())
    rules.report([
        f"User-space instructions per request (valgrind cachegrind, Ir) of the checkout built with "
        f"bench/ablation.patch, one worker, ({instructions.MANY} - {instructions.FEW}) requests "
        "per case; a feature's cost is what leaving it out saves. The floor is bench/floor with "
        "guestgate's pool design (`lifo`, `edit-lifo`) doing the same job.",
        "",
        *table(seen),
    ], args[1] if args else None)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The training load for the floor's BOLT layout (bench/floor/bolt.sh).

    python3 bench/floor/bolt_train.py INSTRUMENTED_FLOOR PROFILES_DIR

Runs the instrumented floor in each mode that bounds a target (lifo, direct,
edit, edit-lifo), each in its own directory under PROFILES_DIR so that each
writes its own profile.fdata, on core 1 behind wrk at c=32 and c=256 and in
front of bench/rules.py's nginx upstream on core 0, as the benchmark runs it.
Every answer must be a 200. Only 127.0.0.1 is used.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rules  # noqa: E402  (the upstream, the wrk run and the ports)

MODES = ("lifo", "direct", "edit", "edit-lifo")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    binary, profiles = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    rules.DURATION = 4
    nginx = rules.start_upstream(tempfile.mkdtemp(prefix="floor-bolt-"))
    try:
        for mode in MODES:
            here = os.path.join(profiles, mode)
            os.makedirs(here, exist_ok=True)
            floor = subprocess.Popen(
                ["taskset", "-c", "1", binary, f"127.0.0.1:{rules.PROXY}", f"127.0.0.1:{rules.UPSTREAM}", mode],
                cwd=here,
            )
            try:
                rules.wait_port(rules.PROXY)
                rules.check_forward(rules.SHORTHAND_PATH)
                for conns in (32, 256):
                    rps, _ = rules.run_wrk(rules.SHORTHAND_PATH, floor.pid, conns)
                    print(f"floor {mode} c={conns}: {rps:,.0f} req/s (instrumented)", file=sys.stderr)
                # The instrumentation writes its counters every second; SIGKILL
                # leaves the signal handlers out of the profile.
                time.sleep(2.5)
            finally:
                floor.send_signal(signal.SIGKILL)
                floor.wait()
            time.sleep(1.5)  # the profile writer is a child of its own
            if not os.path.exists(os.path.join(here, "profile.fdata")):
                raise SystemExit(f"floor {mode}: no profile written")
    finally:
        nginx.terminate()
        nginx.wait()


if __name__ == "__main__":
    main()

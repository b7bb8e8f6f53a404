#!/usr/bin/env python3
"""guestgate benchmark orchestrator (issues 5 and 13). Started by bench/run.sh.

Starts one shared upstream (nginx `return 200`), nginx proxy_pass, nginx+njs,
nginx+lua (cjson), HAProxy, guestgate and the floor (bench/floor, a minimal
hyper proxy, pooled and direct; NO_FLOOR=1 leaves it out) on loopback, checks what each proxy
forwards, then measures all targets interleaved (round-robin, several rounds)
with wrk at several concurrencies, a fixed-rate latency run with oha
(coordinated-omission corrected), a multi-core section (2 workers each on the
same 2 cores as the load generator; MULTICORE=0 skips it), guestgate's peak
RSS with 1,000 idle keep-alive connections, and the criterion sanitizer
benchmark. Writes bench/results/<date>-<host>.md.

Every number in the results file comes from this run. Nothing here talks to
anything but 127.0.0.1.
"""

import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import ablation  # the instructions section (bench/ablation.py, beside this file)

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

QUICK = os.environ.get("QUICK", "0") == "1"
ROUNDS = int(os.environ.get("ROUNDS", "1" if QUICK else "3"))
DURATION = int(os.environ.get("DURATION", "4" if QUICK else "6"))
WARMUP = int(os.environ.get("WARMUP", "1"))
CONNS = [int(c) for c in os.environ.get("CONNS", "1,32,256").split(",")]
PIN = os.environ.get("PIN", "1") == "1"
NJS_MODE = os.environ.get("NJS_MODE", "js_set")  # js_set | fetch
FIXED_SECS = int(os.environ.get("FIXED_SECS", "4" if QUICK else "5"))
# Five: a fixed-rate p99 on a shared VM swings by 2-3x between rounds of one server
# (bench/NOTES.md), and a median of three is one round's figure.
FIXED_ROUNDS = int(os.environ.get("FIXED_ROUNDS", "1" if QUICK else "5"))
IDLE_CONNS = int(os.environ.get("IDLE_CONNS", "1000"))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target/bench"))
# The binary the image ships, as bench/run.sh builds it (deploy/build-binary.sh).
GUESTGATE = os.environ.get("GUESTGATE_BIN", os.path.join(TARGET_DIR, "image/guestgate"))
WORK = os.environ.get("BENCH_WORK", os.path.join(BENCH, ".work"))
RESULTS = os.environ.get("BENCH_RESULTS", os.path.join(BENCH, "results"))
SKIP_CRITERION = os.environ.get("SKIP_CRITERION", "0") == "1"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"  # /usr/sbin is not on every user's PATH
MULTICORE = os.environ.get("MULTICORE", "1") == "1"
MC_CONNS = [int(c) for c in os.environ.get("MC_CONNS", "32,256").split(",")]
MC_WORKERS = 2
NO_FLOOR = os.environ.get("NO_FLOOR", "0") == "1"
# bench/run.sh's floor is bench/floor/bolt.sh's; the plain release build otherwise.
FLOOR = os.environ.get("FLOOR_BIN", os.path.join(TARGET_DIR, "release/floor"))
# The profile section: guestgate's `profiling` build (the release build with symbols) and
# the floor under `perf record`, each at c=32 on core 1 (PROFILE=0 leaves it out).
PROFILE = os.environ.get("PROFILE", "1") == "1"
PROFILED = os.environ.get("PROFILED_BIN", os.path.join(TARGET_DIR, "profiling/guestgate"))
# bench/ablation.py's build (the checkout with a switch per feature), which bench/run.sh
# builds: the instructions section. ABLATION=0 leaves it out.
ABLATION = os.environ.get("ABLATION", "1") == "1"
ABLATION_BIN = os.environ.get("ABLATION_BIN", "")
PROFILE_SECS = int(os.environ.get("PROFILE_SECS", "4" if QUICK else "6"))

PORT_BASE = int(os.environ.get("BENCH_PORT_BASE", "18081"))
UPSTREAM_PORT = PORT_BASE
NGINX_PORT = PORT_BASE + 1
NJS_PORT = PORT_BASE + 2
GG_PORT = PORT_BASE + 3
GG_ADMIN_PORT = PORT_BASE + 4
GG_IDLE_PORT = PORT_BASE + 5
GG_IDLE_ADMIN_PORT = PORT_BASE + 6
NGINX_IDLE_PORT = PORT_BASE + 7
LUA_PORT = PORT_BASE + 8
HAPROXY_PORT = PORT_BASE + 9
FLOOR_POOL_PORT = PORT_BASE + 10
FLOOR_DIRECT_PORT = PORT_BASE + 11
FLOOR_EDIT_PORT = PORT_BASE + 12
FLOOR_LIFO_PORT = PORT_BASE + 13
FLOOR_EDIT_LIFO_PORT = PORT_BASE + 14
PORTS_USED = 15

QUEUE = "bench-queue-0001"
CONV = "c0ffee00-1111-4222-8333-444455556666"
MSG_PATH = f"/api/v2/conversations/messaging/guest/conversations/{CONV}/messages"
# Any other route is a streaming pass-through in guestgate.
PASS_PATH = f"/api/v2/conversations/messaging/guest/conversations/{CONV}/attachments"
BODY_FILE = os.path.join(BENCH, "lib/message.json")
LUA = os.path.join(BENCH, "lib/post.lua")
# lua-cjson's C module for LuaJIT (lua 5.1 ABI), /usr/lib/<multiarch>/lua/5.1/cjson.so
LUA_CPATH = os.path.dirname((glob.glob("/usr/lib/*/lua/5.1/cjson.so") or
                             ["/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so"])[0])

# Cores: servers under test on core 1, load generator + shared upstream on core 0.
PROXY_CPUS = "1" if PIN else None
LOADGEN_CPUS = "0" if PIN else None
SERVER_WORKERS = 1 if PIN else os.cpu_count()
# Multi-core section: servers with 2 workers, upstream and wrk all on cores 0-1.
MC_CPUS = "0,1" if PIN else None

TARGETS = [
    # key, label, port, path, pid source
    ("direct", "1. direct to upstream (nginx return 200)", UPSTREAM_PORT, MSG_PATH),
    ("nginx", "2. nginx proxy_pass (keepalive)", NGINX_PORT, MSG_PATH),
    ("njs", "3. nginx + njs sanitize", NJS_PORT, MSG_PATH),
    ("gg_msg", "4. guestgate, intercepted route", GG_PORT, MSG_PATH),
    ("gg_pass", "5. guestgate, pass-through route", GG_PORT, PASS_PATH),
    ("lua", "6. nginx + lua (cjson) sanitize", LUA_PORT, MSG_PATH),
    ("haproxy", "7. HAProxy (http-reuse always)", HAPROXY_PORT, MSG_PATH),
]
# The floor (bench/floor): a hyper reverse proxy with no features, forwarding the
# pass-through path; it bounds what guestgate's pass-through can reach on hyper.
# Rows 10 and 12 do the intercepted route's job (serde_json: parse, drop `id`, set
# `to`, serialize) and nothing else; they bound the intercepted targets the same way.
# Rows 11 and 12 hold upstream connections as guestgate's pool does (src/pool.rs).
FLOOR_TARGETS = [
    ("floor_pool", "8. floor: hyper, pooled client (no features)", FLOOR_POOL_PORT, PASS_PATH),
    ("floor_direct", "9. floor: hyper, one upstream connection per client (no features)", FLOOR_DIRECT_PORT,
     PASS_PATH),
    ("floor_edit", "10. floor: hyper + serde_json, the same edit, one upstream connection per client",
     FLOOR_EDIT_PORT, MSG_PATH),
    ("floor_lifo", "11. floor: hyper, guestgate's pool (per-thread LIFO of idle upstream connections; no features)",
     FLOOR_LIFO_PORT, PASS_PATH),
    ("floor_edit_lifo", "12. floor: hyper + serde_json, the same edit, guestgate's pool", FLOOR_EDIT_LIFO_PORT,
     MSG_PATH),
]
FLOOR_MODE = {"floor_pool": "pool", "floor_direct": "direct", "floor_edit": "edit", "floor_lifo": "lifo",
              "floor_edit_lifo": "edit-lifo"}
# The floors that bound each guestgate row: the same job with nothing else. At each
# concurrency the bound is the one of them with the most req/s in the run.
FLOOR_OF = {"gg_msg": ("floor_edit", "floor_edit_lifo"), "gg_pass": ("floor_direct", "floor_lifo")}
if not NO_FLOOR:
    TARGETS += FLOOR_TARGETS
LABEL = {t[0]: t[1] for t in TARGETS}
# Multi-core section: the same configurations with 2 workers (same keys).
MC_TARGETS = [
    ("nginx", "nginx proxy_pass", NGINX_PORT, MSG_PATH),
    ("lua", "nginx + lua (cjson) sanitize", LUA_PORT, MSG_PATH),
    ("gg_msg", "guestgate, intercepted route", GG_PORT, MSG_PATH),
    ("gg_pass", "guestgate, pass-through route", GG_PORT, PASS_PATH),
]
MC_LABEL = {t[0]: t[1] for t in MC_TARGETS}


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


def taskset(cpus, argv):
    return (["taskset", "-c", cpus] if cpus else []) + argv


def run_out(argv, **kw):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def first_line(argv):
    p = run_out(argv)
    text = (p.stdout or "") + (p.stderr or "")
    return text.strip().splitlines()[0].strip() if text.strip() else "?"


# ---------------------------------------------------------------- processes

class Servers:
    def __init__(self):
        self.nginx_pids = {}  # key -> Popen of the master (daemon off)
        self.procs = []
        self.gg = None
        self.haproxy = None
        self.floors = {}  # key -> Popen of the floor binary

    def start_floor(self, key, port, cpus):
        """bench/floor: `floor LISTEN UPSTREAM MODE` (FLOOR_MODE), one current_thread runtime (one thread)."""
        logf = open(os.path.join(WORK, f"{key}.log"), "w")
        p = subprocess.Popen(taskset(cpus, [FLOOR, f"127.0.0.1:{port}", f"127.0.0.1:{UPSTREAM_PORT}",
                                            FLOOR_MODE[key]]), stdout=logf, stderr=subprocess.STDOUT)
        self.floors[key] = p
        wait_port(port, proc=p)

    def stop_floors(self):
        for key in list(self.floors):
            p = self.floors.pop(key)
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def render(self, key, name, port, extra=None, workers=None, src=None):
        text = open(src or os.path.join(BENCH, "nginx", f"{name}.conf")).read()
        subs = {
            "@WORK@": WORK, "@BENCH@": BENCH, "@UPSTREAM_PORT@": str(UPSTREAM_PORT),
            "@PROXY_PORT@": str(port), "@PID@": os.path.join(WORK, f"{key}.pid"),
            "@ERRLOG@": os.path.join(WORK, f"{key}.error.log"), "@QUEUE@": QUEUE, "@LUA_CPATH@": LUA_CPATH,
        }
        subs.update(extra or {})
        for k, v in subs.items():
            text = text.replace(k, v)
        text = text.replace("worker_processes 1;", f"worker_processes {workers or SERVER_WORKERS};")
        out = os.path.join(WORK, f"{key}.conf")
        with open(out, "w") as f:
            f.write(text)
        return out

    def start_haproxy(self, port, cpus):
        """HAProxy in the foreground (`-db`: one process, `nbthread 1` in the file)."""
        conf = self.render("haproxy", "haproxy", port, src=os.path.join(BENCH, "haproxy", "haproxy.cfg"))
        errf = open(os.path.join(WORK, "haproxy.stderr.log"), "w")
        p = subprocess.Popen(taskset(cpus, [HAPROXY, "-db", "-f", conf]), stdout=errf, stderr=subprocess.STDOUT)
        self.haproxy = p
        wait_port(port, proc=p)

    def stop_haproxy(self):
        p, self.haproxy = self.haproxy, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)  # hard stop: closes the idle keep-alive connections at once
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start_nginx(self, key, name, port, cpus, extra=None, workers=None):
        conf = self.render(key, name, port, extra, workers)
        errf = open(os.path.join(WORK, f"{key}.stderr.log"), "w")
        p = subprocess.Popen(taskset(cpus, ["nginx", "-p", WORK, "-e", os.path.join(WORK, f"{key}.error.log"),
                                            "-c", conf, "-g", "daemon off;"]),
                             stdout=errf, stderr=subprocess.STDOUT)
        self.nginx_pids[key] = p
        wait_port(port, proc=p)

    def nginx_all_pids(self, key):
        master = self.nginx_pids[key].pid
        return [master] + children(master)

    def start_guestgate(self, port, admin_port, cpus, workers, binary=GUESTGATE):
        env = dict(os.environ)
        env.update({
            "GUESTGATE__SERVER__LISTEN": f"127.0.0.1:{port}",
            "GUESTGATE__UPSTREAM__BASE_URL": f"http://127.0.0.1:{UPSTREAM_PORT}",
            "GUESTGATE__GUEST_MESSAGES__TO__ID": QUEUE,
            "GUESTGATE__ADMIN__LISTEN": f"127.0.0.1:{admin_port}",
            "GUESTGATE__LOG__LEVEL": "warn",
            "RUST_LOG": "warn",
            "TOKIO_WORKER_THREADS": str(workers),
        })
        logf = open(os.path.join(WORK, f"guestgate-{port}.log"), "w")
        p = subprocess.Popen(taskset(cpus, [binary]), env=env, stdout=logf, stderr=subprocess.STDOUT,
                             cwd=WORK)
        self.procs.append(p)
        wait_port(port, proc=p)
        return p

    def stop_guestgate(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_nginx(self, key):
        p = self.nginx_pids.pop(key, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGQUIT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in self.procs:
            self.stop_guestgate(p)
        for key in list(self.nginx_pids):
            self.stop_nginx(key)
        self.stop_haproxy()
        self.stop_floors()


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


def wait_port(port, proc=None, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process for port {port} exited with {proc.returncode}; see {WORK}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- measurement helpers

CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pids):
    """User+system CPU seconds of processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK


def core_times():
    """Per-core (busy, total) jiffies for cpu0 and cpu1."""
    out = {}
    for line in open("/proc/stat"):
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()]
            idle = v[3] + v[4]
            out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def busy_pct(before, after):
    res = {}
    for c in after:
        db = after[c][0] - before[c][0]
        dt = after[c][1] - before[c][1]
        res[c] = 100.0 * db / dt if dt else 0.0
    return res


def http_post(port, path, body, headers=None, timeout=5.0):
    """One HTTP/1.1 request on a fresh connection; returns (status, body bytes)."""
    h = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
         "Content-Length": str(len(body)), "Connection": "close"}
    h.update(headers or {})
    req = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, buf = b"", rest
        while buf:
            size_line, _, buf = buf.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out += buf[:n]
            buf = buf[n + 2:]
        rest = out
    return status, rest


SANITIZING = ("njs", "gg_msg", "lua", "floor_edit", "floor_edit_lifo")


def verify(targets=TARGETS):
    """Check what each target forwards, through the upstream's echo route."""
    body = open(BODY_FILE, "rb").read()
    sent = json.loads(body)
    problems = []
    expect_sanitized = dict(sent)
    expect_sanitized.pop("id")
    expect_sanitized["to"] = {"id": QUEUE}
    checks = []
    for key, _label, port, path in targets:
        if key != "direct":
            checks.append((key, port, path.replace(CONV, "bench-echo"),
                           expect_sanitized if key in SANITIZING else sent))
    for key, port, path, expected in checks:
        try:
            status, got = http_post(port, path, body)
            got_json = json.loads(got)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{key}: {e}")
            continue
        if status != 200 or got_json != expected:
            problems.append(f"{key}: status {status}, forwarded {got[:300]!r}")
    # and the benchmark paths answer 200 with the upstream's body
    for key, _label, port, path in targets:
        status, got = http_post(port, path, body)
        if status != 200 or b"accepted" not in got:
            problems.append(f"{key}: {path} answered {status} {got[:200]!r}")
    # a bad body is refused by the sanitizing targets (not measured, shown)
    refusals = {}
    for key, _label, port, _path in targets:
        if key in SANITIZING:
            status, _ = http_post(port, MSG_PATH, b'{"id":1,')
            refusals[key] = status
    # nginx+lua answers 400 itself, like sanitize.js's js_content variant, for
    # anything that is not a JSON object (the js_set variant cannot)
    if "lua" in refusals:
        for bad in (b'{"id":1,', b"[]", b'"text"', b'{"a":NaN}', b""):
            status, got = http_post(LUA_PORT, MSG_PATH, bad)
            if status != 400 or got != b'{"error":"invalid body"}':
                problems.append(f"lua: body {bad!r} answered {status} {got[:200]!r}, not 400 invalid body")
    return problems, refusals


def wrk(key, port, path, conns, secs, cpus=LOADGEN_CPUS, threads=None):
    threads = threads or (1 if PIN else min(2, conns))
    argv = taskset(cpus, ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{secs}s",
                                  "--timeout", "10s", "-s", LUA, f"http://127.0.0.1:{port}{path}"])
    env = dict(os.environ, BENCH_BODY_FILE=BODY_FILE)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate(timeout=secs + 60)
    m = re.search(r"^BENCH_JSON (.*)$", out.decode(), re.M)
    if p.returncode != 0 or not m:
        raise SystemExit(f"wrk failed for {key} c={conns}: {out.decode()} {err.decode()}")
    return json.loads(m.group(1))


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_cpu(servers):
    """CPU seconds of every process this benchmark runs (all servers, idle or not)."""
    pids = [p for k in servers.nginx_pids for p in servers.nginx_all_pids(k)]
    if servers.gg is not None:
        pids.append(servers.gg.pid)
    if servers.haproxy is not None:
        pids.append(servers.haproxy.pid)
    pids += [p.pid for p in servers.floors.values()]
    return proc_cpu(pids)


def foreign_pct(c0, c1, own_s, wall):
    """CPU the rest of the machine (not this benchmark) used, in % of all cores."""
    busy = sum(c1[c][0] - c0[c][0] for c in c1) / CLK
    return max(0.0, 100.0 * (busy - own_s) / (wall * len(c1))) if wall > 0 else None


def measure(servers, key, port, path, conns, secs, cpus=LOADGEN_CPUS, threads=None):
    pids = target_pids(servers, key)
    up_pids = servers.nginx_all_pids("upstream")
    c0, p0, u0 = core_times(), proc_cpu(pids), proc_cpu(up_pids)
    b0, w0 = bench_cpu(servers), children_cpu()
    t0 = time.time()
    r = wrk(key, port, path, conns, secs, cpus, threads)
    wall = time.time() - t0
    c1, p1, u1 = core_times(), proc_cpu(pids), proc_cpu(up_pids)
    b1, w1 = bench_cpu(servers), children_cpu()
    r["foreign_pct"] = foreign_pct(c0, c1, (b1 - b0) + (w1 - w0), wall)
    secs_ = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / secs_
    r["errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    r["proxy_cpu_s"] = p1 - p0 if key != "direct" else None
    r["upstream_cpu_s"] = u1 - u0
    r["proxy_us_per_req"] = (p1 - p0) / r["requests"] * 1e6 if key != "direct" and r["requests"] else None
    r["proxy_cpu_pct"] = 100 * (p1 - p0) / wall if key != "direct" else None
    r["core_busy"] = busy_pct(c0, c1)
    return r


def target_pids(servers, key):
    if key == "direct":
        return servers.nginx_all_pids("upstream")
    if key in ("nginx", "njs", "lua"):
        return servers.nginx_all_pids(key)
    if key == "haproxy":
        return [servers.haproxy.pid]
    if key in servers.floors:
        return [servers.floors[key].pid]
    return [servers.gg.pid]


def oha_fixed(servers, key, port, path, rate, secs):
    pids = target_pids(servers, key)
    cpu0 = proc_cpu(pids)
    c0, b0, w0, t0 = core_times(), bench_cpu(servers), children_cpu(), time.time()
    res = _oha_fixed(key, port, path, rate, secs)
    if res is not None:
        res["foreign_pct"] = foreign_pct(c0, core_times(), (bench_cpu(servers) - b0) + (children_cpu() - w0),
                                         time.time() - t0)
    if res is not None and key != "direct" and res["ok"]:
        res["cpu_us"] = (proc_cpu(pids) - cpu0) / (res["ok"] + res["non200"]) * 1e6
    return res


def fixed_agg(rs):
    """Median over fixed-rate rounds (max: the worst round)."""
    return {
        "rps": med([r["rps"] for r in rs]), "ok": sum(r["ok"] for r in rs),
        "non200": sum(r["non200"] for r in rs), "errors": sum(r["errors"] for r in rs),
        "p50": med([r["p50"] for r in rs]), "p99": med([r["p99"] for r in rs]),
        "p999": med([r["p999"] for r in rs]), "max": max((r["max"] or 0) for r in rs),
        "cpu_us": med([r.get("cpu_us") for r in rs]), "foreign_pct": med([r.get("foreign_pct") for r in rs]),
        "p99_rounds": [r["p99"] for r in rs],
    }


def _oha_fixed(key, port, path, rate, secs):
    oha = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if not os.path.exists(oha):
        return None
    argv = taskset(LOADGEN_CPUS, [oha, "--no-tui", "--output-format", "json", "-z", f"{secs}s",
                                  "-c", "32", "-q", str(rate), "--latency-correction",
                                  "-m", "POST", "-D", BODY_FILE, "-H", "Content-Type: application/json",
                                  f"http://127.0.0.1:{port}{path}"])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    if p.returncode != 0:
        log(f"oha failed for {key}: {p.stderr[-500:]}")
        return None
    try:
        j = json.loads(p.stdout)
    except json.JSONDecodeError:
        log(f"oha output not JSON for {key}: {p.stdout[:300]}")
        return None
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    summary = j.get("summary", {})
    return {
        "rps": summary.get("requestsPerSec"),
        "ok": codes.get("200", 0),
        "non200": sum(v for k, v in codes.items() if k != "200"),
        "errors": sum(j.get("errorDistribution", {}).values()),
        "p50": pct.get("p50"), "p99": pct.get("p99"), "p999": pct.get("p99.9"),
        "max": summary.get("slowest"),
        "cpu_us": None,
    }


# ---------------------------------------------------------------- profile

PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*\S)\s*$")
PROFILE_TARGETS = [
    # key, label, port, path: what is profiled (the floor for comparison)
    ("gg_msg", "guestgate, intercepted route", GG_PORT, MSG_PATH),
    ("gg_pass", "guestgate, pass-through route", GG_PORT, PASS_PATH),
    ("floor_direct", "floor, one upstream connection per client", FLOOR_DIRECT_PORT, PASS_PATH),
    ("floor_edit", "floor doing the same edit, one upstream connection per client", FLOOR_EDIT_PORT, MSG_PATH),
]


def symbol_group(dso, kind, sym):
    """Where a sample's time goes: the kernel, a shared library, or (in the binary) the crate of the
    function; generic std/core/alloc code counts for the crate it was instantiated for."""
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel"
    if dso not in ("guestgate", "floor"):
        return dso
    if sym.startswith(("_rjem_", "je_")):
        return "jemalloc"
    name = sym.lstrip("<")
    crate = name.split("::", 1)[0] if "::" in name else "(other)"
    if crate in ("core", "alloc", "std") and "<" in name:
        inner = re.search(r"<+&?(?:mut )?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::", name[name.index("<"):])
        if inner and inner.group(1) not in ("core", "alloc", "std"):
            crate = inner.group(1)
    return crate


def perf_profile(key, port, path, pid, secs):
    """wrk at c=32 while `perf record` samples `pid` (on core 0, beside wrk); self time by symbol."""
    data = os.path.join(WORK, f"perf-{key}.data")
    with open(os.path.join(WORK, f"perf-{key}.log"), "w") as errf:
        rec = subprocess.Popen(taskset(LOADGEN_CPUS, ["perf", "record", "-q", "-F", "999", "-p", str(pid), "-o",
                                                      data, "--", "sleep", str(secs)]),
                               stdout=errf, stderr=subprocess.STDOUT)
        time.sleep(0.3)
        r = wrk(key, port, path, 32, secs)
        rec.wait(timeout=secs + 60)
    out = run_out(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio", "-q", "-n", "-g",
                   "none", "--percent-limit", "0"])
    rows, samples = [], 0
    for line in out.stdout.splitlines():
        m = PERF_LINE.match(line)
        if m:
            rows.append((float(m.group(1)), m.group(3), m.group(4), m.group(5)))
            samples += int(m.group(2))
    if rec.returncode != 0 or not rows:
        log(f"profile {key}: perf gave nothing (rc {rec.returncode}; see {WORK}/perf-{key}.log)")
        return None
    groups = {}
    for pct, dso, kind, sym in rows:
        g = symbol_group(dso, kind, sym)
        groups[g] = groups.get(g, 0.0) + pct
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "rows": rows[:12],
            "groups": sorted(groups.items(), key=lambda kv: -kv[1]),
            "samples": samples}


def profiles():
    """The profiling build of guestgate and the floor, each on core 1 alone, under perf at c=32."""
    if not PROFILE:
        return {}, "PROFILE=0"
    if not shutil.which("perf"):
        return {}, "perf not installed"
    if not os.path.exists(PROFILED):
        return {}, f"{PROFILED} not built (bench/run.sh builds it)"
    servers = Servers()
    try:
        servers.start_nginx("upstream", "upstream", UPSTREAM_PORT, LOADGEN_CPUS)
        servers.gg = servers.start_guestgate(GG_PORT, GG_ADMIN_PORT, PROXY_CPUS, 1, binary=PROFILED)
        targets = PROFILE_TARGETS if not NO_FLOOR else PROFILE_TARGETS[:2]
        for key, _l, port, _p in targets:
            if key in FLOOR_MODE:
                servers.start_floor(key, port, PROXY_CPUS)
        problems, _ = verify(targets)
        if problems:
            raise SystemExit("profile: forwarding check failed:\n  " + "\n  ".join(problems))
        out = {}
        for key, _l, port, path in targets:
            wrk(key, port, path, 32, WARMUP)
            pid = servers.floors[key].pid if key in servers.floors else servers.gg.pid
            out[key] = perf_profile(key, port, path, pid, PROFILE_SECS)
            log(f"profile {key}: {out[key] and out[key]['groups'][:4]}")
        return out, None
    finally:
        servers.stop_all()


def idle_rss(servers):
    """Fresh guestgate (and, for comparison, a fresh nginx proxy) with N idle conns."""
    res = {}
    script = os.path.join(BENCH, "lib/idle_conns.py")
    gg = servers.start_guestgate(GG_IDLE_PORT, GG_IDLE_ADMIN_PORT, PROXY_CPUS, SERVER_WORKERS)
    try:
        before = read_status(gg.pid)
        out = subprocess.run(taskset(LOADGEN_CPUS, [sys.executable, script, str(GG_IDLE_PORT), MSG_PATH,
                                                    BODY_FILE, str(IDLE_CONNS), str(gg.pid)]),
                             capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise SystemExit(f"idle_conns.py failed: {out.stdout} {out.stderr}")
        j = json.loads(out.stdout.strip().splitlines()[-1])
        res["guestgate"] = {"start": before, **j}
    finally:
        servers.stop_guestgate(gg)
    servers.start_nginx("nginx_idle", "proxy", NGINX_IDLE_PORT, PROXY_CPUS)
    try:
        pids = servers.nginx_all_pids("nginx_idle")
        out = subprocess.run(taskset(LOADGEN_CPUS, [sys.executable, script, str(NGINX_IDLE_PORT), MSG_PATH,
                                                    BODY_FILE, str(IDLE_CONNS), ",".join(map(str, pids))]),
                             capture_output=True, text=True, timeout=180)
        if out.returncode == 0:
            res["nginx"] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        servers.stop_nginx("nginx_idle")
    return res


def read_status(pid):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "Threads"):
            d[k] = int(v.split()[0])
    return d


def criterion():
    if SKIP_CRITERION:
        return None
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR)
    if QUICK:
        env["BENCH_QUICK"] = "1"
    p = subprocess.run(taskset(PROXY_CPUS, ["cargo", "bench", "--bench", "sanitize"]), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    open(os.path.join(WORK, "criterion.log"), "w").write(p.stdout + p.stderr)
    if p.returncode != 0:
        log("criterion failed; see", os.path.join(WORK, "criterion.log"))
        return None
    res = {}
    base = os.path.join(TARGET_DIR, "criterion")
    for group in ("sanitize_bytes", "parse_object", "sanitize_map", "serialize"):
        for name in ("200B", "16KiB"):
            f = os.path.join(base, group, name, "new", "estimates.json")
            if os.path.exists(f):
                e = json.load(open(f))
                res[f"{group}/{name}"] = {
                    "median_ns": e["median"]["point_estimate"],
                    "lo_ns": e["median"]["confidence_interval"]["lower_bound"],
                    "hi_ns": e["median"]["confidence_interval"]["upper_bound"],
                }
    return res


# ---------------------------------------------------------------- report

def describe_binary(path):
    """How a measured binary (guestgate, the floor) was built: linking, and whether BOLT laid it out."""
    linked = "dynamic" if "program interpreter" in run_out(["readelf", "-lW", path]).stdout else "static"
    bolt = ", laid out by BOLT" if ".note.bolt_info" in run_out(["readelf", "-SW", path]).stdout else ""
    shown = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
    return f"`{shown}` ({linked}{bolt})"


def machine_info():
    cpu, fields = "?", {}
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if not k and fields:
            break  # first processor only
        if k == "model name":
            cpu = v
        fields.setdefault(k, v)
    detail = [f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
              f"stepping {fields.get('stepping', '?')}", f"{fields.get('cpu MHz', '?')} MHz",
              f"cache {fields.get('cache size', '?')}"]
    if "hypervisor" in fields.get("flags", "").split():
        detail.append("virtual machine (hypervisor flag)")
    cpu = f"{cpu} ({', '.join(detail)})"
    osname = "?"
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    mem = "?"
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) // 1024} MiB"
    njs = first_line(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-http-js"])
    lua = first_line(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-http-lua"])
    cjson = first_line(["dpkg-query", "-W", "-f", "${Version}", "lua-cjson"])
    # the LuaJIT the module runs on (libluajit2-5.1-2, OpenResty's branch, or Debian's libluajit-5.1-2)
    luajit = "LuaJIT ?"
    m = re.search(r"libluajit\S* => (\S+)", run_out(["ldd", "/usr/lib/nginx/modules/ngx_http_lua_module.so"]).stdout)
    if m:
        owner = first_line(["dpkg", "-S", os.path.realpath(m.group(1))]).split(":")[0]
        luajit = f"{owner} {first_line(['dpkg-query', '-W', '-f', '${Version}', owner])}"
    oha = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    commit = first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = run_out(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "crates", "Cargo.toml", "Cargo.lock"]).stdout
    return {
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "mem": mem,
        "kernel": platform.release(), "os": osname,
        "nginx": first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "njs": njs,
        "lua": f"{lua}; lua-cjson {cjson}; {luajit}",
        "haproxy": first_line([HAPROXY, "-v"]).replace("HAProxy version ", "").split(" - ")[0],
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
        "oha": first_line([oha, "--version"]) if os.path.exists(oha) else "not installed",
        "rustc": first_line(["rustc", "--version"]),
        "guestgate": f"{commit}{' + uncommitted src changes' if dirty.strip() else ''}",
        "binary": describe_binary(GUESTGATE),
        "floor_binary": "not measured (NO_FLOOR=1)" if NO_FLOOR else describe_binary(FLOOR),
        "python": platform.python_version(),
    }


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_int(x):
    return "–" if x is None else f"{x:,.0f}"


def fmt_ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def ratio(a, b):
    return None if not a or not b else a / b


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}x"


def aggregate(runs):
    # runs[(key, conns)] = [result per round]
    agg = {}
    for (key, c), rs in runs.items():
        agg[(key, c)] = {
            "rps": med([r["rps"] for r in rs]),
            "rps_min": min(r["rps"] for r in rs), "rps_max": max(r["rps"] for r in rs),
            "p50": med([r["lat_p50_us"] for r in rs]), "p99": med([r["lat_p99_us"] for r in rs]),
            "p999": med([r["lat_p999_us"] for r in rs]),
            "cpu_us": med([r["proxy_us_per_req"] for r in rs]),
            "cpu_pct": med([r["proxy_cpu_pct"] for r in rs]),
            "core0": med([r["core_busy"].get(0) for r in rs]),
            "core1": med([r["core_busy"].get(1) for r in rs]),
            "foreign": med([r.get("foreign_pct") for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
        }
    return agg


def rps_cell(a):
    return "–" if not a else (f"{fmt_int(a['rps'])} [{fmt_int(a['rps_min'])}–{fmt_int(a['rps_max'])}]"
                              + (f" ⚠ {a['errors']} errors" if a["errors"] else ""))


def cpu_cell(a):
    if not a:
        return "–"
    own = "" if a["cpu_us"] is None else f"{a['cpu_us']:.1f} µs ({a['cpu_pct']:.0f}%); "
    other = "" if a["foreign"] is None else f"; other load {a['foreign']:.0f}%"
    return f"{own}cores {a['core0']:.0f}/{a['core1']:.0f}{other}"


def ablations():
    """bench/ablation.py's counts, with this run's floor: {(conns, route, case): instructions}."""
    if not ABLATION:
        return {}, "ABLATION=0"
    if not shutil.which("valgrind"):
        return {}, "valgrind not installed"
    if ABLATION_BIN.startswith("failed: "):
        return {}, ABLATION_BIN[len("failed: "):]
    if not ABLATION_BIN or not os.path.exists(ABLATION_BIN):
        return {}, "ABLATION_BIN not built (bench/run.sh builds it)"
    if not os.path.exists(ablation.instructions.OHA):
        return {}, "oha not installed"
    floor = "" if NO_FLOOR else FLOOR
    return ablation.measure(ABLATION_BIN, [32], floor, log=log), None


def section(w, title, shown, missing):
    """A section's title, then `missing` when it has nothing to show (`shown` empty); whether it has."""
    w(title)
    w("")
    if not shown:
        w(missing)
        w("")
    return bool(shown)


def ablation_section(w, seen, note):
    if not section(w, "## Instructions per request: guestgate's features and the floor (cachegrind, c=32, "
                   "same run)", seen, f"Not counted ({note})."):
        return
    w("What the distance from the floor in the profile above is made of, counted rather than timed: the "
      "user-space instructions a request costs (valgrind cachegrind, the difference between serving "
      "10,000 and 2,000 requests over 32 connections, one worker) for guestgate built from this checkout "
      "with `bench/ablation.patch` (a switch per feature, never merged; `bench/ablation.py`), with every "
      "feature and without each, and for the floor with guestgate's pool design doing the same job. "
      "The features are behaviour the tests pin: " + "; ".join(
          f"{bit}: {name}" for bit, name in ablation.FEATURES) + ". A feature's cost is what "
      "leaving it out saves; the rest of the distance is guestgate's request path beyond them. The kernel, "
      "most of a request's CPU here, is not counted.")
    w("")
    for line in ablation.table(seen):
        w(line)
    w("")


def profile_section(w, prof, note):
    if not section(w, "## Profile (perf, c=32, same run)", prof, f"Not profiled ({note})."):
        return
    w(f"`perf record -F 999` (self time, no call graphs) on the server's process for {PROFILE_SECS} s of wrk at "
      "c=32, each server alone on core 1 (the upstream, wrk and perf on core 0). guestgate is its `profiling` "
      "build (the release build with symbols, `cargo build --profile profiling`), started after the measured "
      "rounds with the same settings; the floors (rows 9 and 10) are the same binary as above. Shares are of the "
      "server's own samples: `kernel` is the system calls and the loopback TCP they run (on loopback the "
      "sender also runs the receiver's TCP processing); in the binary, a function counts for its crate "
      "(generic std code for the crate it was instantiated for), so `guestgate` is guestgate's own code and "
      "what the compiler inlined into it.")
    w("")
    keys = [k for k, *_ in PROFILE_TARGETS if prof.get(k)]
    groups = []
    for k in keys:
        for g, _pct in prof[k]["groups"][:8]:
            if g not in groups:
                groups.append(g)
    label = {k: l for k, l, *_ in PROFILE_TARGETS}
    w("| share of samples | " + " | ".join(label[k] for k in keys) + " |")
    w("|---|" + "---:|" * len(keys))
    w("| req/s under perf | " + " | ".join(fmt_int(prof[k]["rps"]) for k in keys) + " |")
    w("| samples | " + " | ".join(fmt_int(prof[k]["samples"]) for k in keys) + " |")
    for g in groups:
        cells = []
        for k in keys:
            pct = dict(prof[k]["groups"]).get(g)
            cells.append("–" if pct is None else f"{pct:.1f} %")
        w(f"| {g} | " + " | ".join(cells) + " |")
    w("")
    for k in keys:
        w(f"<details><summary>{label[k]}: the 12 hottest symbols (self)</summary>")
        w("")
        w("| self | where | symbol |")
        w("|---:|---|---|")
        for pct, dso, _kind, sym in prof[k]["rows"]:
            short = sym if len(sym) <= 140 else sym[:137] + "..."
            w(f"| {pct:.2f} % | {dso} | `{short.replace('|', '/')}` |")
        w("")
        w("</details>")
        w("")


def report(info, cfg, runs, mc_runs, fixed, fixed_rate, rss, crit, refusals, load_before, load_after, elapsed,
           prof=None, prof_note=None, abl=None, abl_note=None):
    agg = aggregate(runs)
    mc = aggregate(mc_runs)
    keys = [t[0] for t in TARGETS]
    L = []
    w = L.append
    w(f"# guestgate benchmark — {cfg['date']} — {info['host']}")
    w("")
    started = os.environ.get("BENCH_STARTED")
    total = f" ({(time.time() - int(started)) / 60:.1f} min with installs and builds)" if started else ""
    w(f"Written by `bench/run.sh`{' (QUICK=1)' if QUICK else ''}: {elapsed / 60:.1f} min of measuring{total}. "
      "Every figure below comes from this run.")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    for k, label in (("cpu", "CPU"), ("cores", "cores"), ("mem", "memory"), ("os", "OS"), ("kernel", "kernel"),
                     ("guestgate", "guestgate commit"), ("binary", "guestgate binary"),
                     ("floor_binary", "floor binary"), ("rustc", "rustc"), ("nginx", "nginx"),
                     ("njs", "njs (libnginx-mod-http-js)"), ("lua", "libnginx-mod-http-lua"),
                     ("haproxy", "HAProxy"), ("wrk", "wrk"), ("oha", "oha")):
        w(f"| {label} | {info[k]} |")
    w(f"| load average before / after | {load_before} / {load_after} |")
    w("")
    w("## Method")
    w("")
    if PIN:
        w("- CPU pinning (taskset): every server under test (nginx proxy, nginx+njs, nginx+lua, HAProxy, "
          "guestgate" + ("" if NO_FLOOR else ", the floor") + ") runs on "
          "**core 1** with **one** worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, "
          "guestgate `TOKIO_WORKER_THREADS=1`" + ("" if NO_FLOOR else ", the floor a `current_thread` runtime")
          + "); "
          "the load generator (wrk, one thread) and the shared upstream (nginx, one worker) share **core 0**. "
          "So each proxy gets the same CPU budget, one core, and does not fight the load generator for it "
          "(unless other work on the machine takes its share: see 'other load').")
    else:
        w(f"- No pinning: servers use {SERVER_WORKERS} workers, wrk 2 threads, all sharing both cores.")
    w(f"- Keep-alive clients: wrk 4.1 with a Lua script (POST, {os.path.getsize(BODY_FILE)}-byte guest message "
      "with a client `id`, `Content-Type` and `Authorization` headers), "
      f"concurrencies {', '.join(map(str, CONNS))}; {ROUNDS} round(s) of {DURATION} s per target and "
      "concurrency, targets round-robin within each round (start rotated every round) so drift hits all "
      f"alike; {WARMUP} s warm-up per target first. Figures are medians over rounds.")
    if PIN:
        w("- Target 1 (direct) shares core 0 with wrk, so its requests never cross cores: at c=1 it shows the "
          "cost of a cross-core hop for the others (all proxies pay two), not a limit they could reach.")
    w("- wrk is closed-loop: its latencies are service times under saturation and suffer from coordinated "
      "omission. The fixed-rate table below uses oha `-q` with `--latency-correction` (open-loop, corrected).")
    w(f"- nginx: access_log off, upstream `keepalive 1024`, `keepalive_requests` raised on both sides, "
      f"HTTP/1.1 to the upstream. njs implementation: `{NJS_MODE}` "
      f"({'js_set body rewrite + proxy_set_body through the keepalive pool' if NJS_MODE == 'js_set' else 'js_content + ngx.fetch'}).")
    w("- nginx + lua (`bench/nginx/lua.conf`, lua-nginx-module with cjson, what Kong's request-transformer "
      "runs on): `access_by_lua_block` reads the body (`ngx.req.read_body`, `get_body_data`), decodes it with "
      "cjson, removes `id`, sets `to`, re-encodes it, `ngx.req.set_body_data`, then `proxy_pass` through the "
      "same keepalive pool; a body that is not a JSON object is answered 400 by the Lua code.")
    w("- HAProxy (`bench/haproxy/haproxy.cfg`): `mode http`, `nbthread 1`, keep-alive on both sides, "
      "`http-reuse always` (idle upstream connections shared by all clients, like nginx's keepalive pool), "
      "no logging.")
    if NO_FLOOR:
        w("- The floor (bench/floor) was left out of this run (NO_FLOOR=1).")
    else:
        w("- The floor (rows 8 to 12, `bench/floor`; bench/run.sh lays it out by BOLT like guestgate's binary "
          "with `bench/floor/bolt.sh` unless FLOOR_BIN names another: see 'floor binary' above): a "
          "minimal hyper reverse proxy with no features (no routing, headers, logging, metrics or "
          "limits; the request body collected, the response streamed back), one `current_thread` tokio runtime "
          "on core 1 like the others, forwarding to the same shared upstream. "
          "Row 8 goes through hyper-util's pooled client (`floor … pool`); row 9 gives each client connection "
          "its own upstream connection over hyper's `client::conn::http1` (`floor … direct`); row 11 keeps "
          "idle upstream connections as guestgate's pool does (`floor … lifo`: a per-thread list, the most "
          "recently idle taken first, given back when the response body ends); all three forward the "
          "pass-through path. Rows 10 and 12 are rows 9 and 11 doing the intercepted route's job on its path "
          "(`floor … edit`, `floor … edit-lifo`: "
          "serde_json with guestgate's features parses the body, drops `id`, sets `to` and serializes it; "
          "anything but a JSON object gets a 400). It is what a "
          "hyper proxy reaches with nothing on top, measured in the same interleaved rounds, so it bounds the "
          "targets below: a target the floor misses too is beyond a featureless hyper proxy on this machine. "
          "Not in the multi-core section.")
    w("- Before measuring, each proxy's forwarded body was checked through the upstream's echo route "
      "(nginx/HAProxy/guestgate pass-through" + ("" if NO_FLOOR else "/floor") + ": unchanged; njs/nginx+lua/guestgate intercepted: `id` dropped, "
      "`to` set). Refusal of a malformed body: "
      + ", ".join(f"{n} → {refusals.get(k)}" for k, n in (("njs", "njs"), ("lua", "nginx+lua"),
                                                           ("gg_msg", "guestgate")))
      + (" (njs `js_set` cannot answer by itself: it forwards an empty body)." if NJS_MODE == "js_set" else "."))
    w("- **Shared machine.** 'other load' is the CPU that processes outside this benchmark used during a "
      "measurement (all cores' busy time from /proc/stat minus the CPU of every server, the upstream and the "
      "load generator), in % of the machine. When it is high the absolute req/s figures are low and noisy; "
      "the interleaved rounds spread that drift over all targets alike, so the ratios and the CPU per "
      "request stay comparable, but read the min–max spread before trusting a small difference.")
    w("- `proxy CPU` = user+system CPU time of the server's processes (all threads, from /proc) per request: "
      "it does not depend on which side of the machine was the bottleneck.")
    w("")
    w("## Throughput (requests/s, median of rounds [min–max])")
    w("")
    w("| target | " + " | ".join(f"c={c}" for c in CONNS) + " |")
    w("|---|" + "---:|" * len(CONNS))
    for k in keys:
        w(f"| {LABEL[k]} | " + " | ".join(rps_cell(agg.get((k, c))) for c in CONNS) + " |")
    w("")
    w("## Latency under saturation (wrk, closed loop): p50 / p99 / p99.9 in ms")
    w("")
    w("| target | " + " | ".join(f"c={c}" for c in CONNS) + " |")
    w("|---|" + "---:|" * len(CONNS))
    for k in keys:
        cells = []
        for c in CONNS:
            a = agg.get((k, c))
            cells.append("–" if not a else f"{fmt_ms(a['p50'])} / {fmt_ms(a['p99'])} / {fmt_ms(a['p999'])}")
        w(f"| {LABEL[k]} | " + " | ".join(cells) + " |")
    w("")
    w("## CPU: server CPU µs per request (and % of one core); core 0 / core 1 busy %")
    w("")
    w("| target | " + " | ".join(f"c={c}" for c in CONNS) + " |")
    w("|---|" + "---:|" * len(CONNS))
    for k in keys:
        w(f"| {LABEL[k]} | " + " | ".join(cpu_cell(agg.get((k, c))) for c in CONNS) + " |")
    w("")
    w("## Ratios (same run)")
    w("")
    w("| ratio | " + " | ".join(f"c={c}" for c in CONNS) + " |")
    w("|---|" + "---:|" * len(CONNS))

    def rr(a, b, field="rps", inv=False, src=agg, conns=CONNS):
        out = []
        for c in conns:
            x, y = src.get((a, c)), src.get((b, c))
            r = ratio(x and x[field], y and y[field])
            out.append(r if not inv or r is None else 1 / r)
        return out

    ratio_rows = [
        ("guestgate intercepted / nginx proxy_pass, req/s", rr("gg_msg", "nginx")),
        ("guestgate intercepted / nginx+njs, req/s", rr("gg_msg", "njs")),
        ("guestgate pass-through / nginx proxy_pass, req/s", rr("gg_pass", "nginx")),
        ("nginx proxy_pass / guestgate intercepted, CPU per request", rr("nginx", "gg_msg", "cpu_us")),
        ("nginx+njs / guestgate intercepted, CPU per request", rr("njs", "gg_msg", "cpu_us")),
        ("nginx proxy_pass / guestgate pass-through, CPU per request", rr("nginx", "gg_pass", "cpu_us")),
        ("guestgate intercepted p99 / nginx p99 (lower is better)", rr("gg_msg", "nginx", "p99")),
        ("guestgate intercepted / nginx+lua, req/s", rr("gg_msg", "lua")),
        ("guestgate pass-through / HAProxy, req/s", rr("gg_pass", "haproxy")),
        ("nginx+lua / guestgate intercepted, CPU per request", rr("lua", "gg_msg", "cpu_us")),
        ("HAProxy / guestgate pass-through, CPU per request", rr("haproxy", "gg_pass", "cpu_us")),
    ]
    if not NO_FLOOR:
        ratio_rows += [
            ("guestgate pass-through / floor (pooled), req/s", rr("gg_pass", "floor_pool")),
            ("guestgate pass-through / floor (direct), req/s", rr("gg_pass", "floor_direct")),
            ("floor (direct) / nginx proxy_pass, req/s", rr("floor_direct", "nginx")),
            ("floor (pooled) / guestgate pass-through, CPU per request", rr("floor_pool", "gg_pass", "cpu_us")),
            ("floor (direct) / guestgate pass-through, CPU per request", rr("floor_direct", "gg_pass", "cpu_us")),
            ("guestgate intercepted / floor (edit), req/s", rr("gg_msg", "floor_edit")),
            ("floor (edit) / nginx+lua, req/s", rr("floor_edit", "lua")),
            ("floor (edit) / nginx+njs, req/s", rr("floor_edit", "njs")),
            ("floor (edit) / guestgate intercepted, CPU per request", rr("floor_edit", "gg_msg", "cpu_us")),
            ("guestgate pass-through / floor (lifo), req/s", rr("gg_pass", "floor_lifo")),
            ("floor (lifo) / nginx proxy_pass, req/s", rr("floor_lifo", "nginx")),
            ("floor (lifo) / HAProxy, req/s", rr("floor_lifo", "haproxy")),
            ("floor (lifo) / guestgate pass-through, CPU per request", rr("floor_lifo", "gg_pass", "cpu_us")),
            ("guestgate intercepted / floor (edit-lifo), req/s", rr("gg_msg", "floor_edit_lifo")),
            ("floor (edit-lifo) / nginx+lua, req/s", rr("floor_edit_lifo", "lua")),
            ("floor (edit-lifo) / nginx+njs, req/s", rr("floor_edit_lifo", "njs")),
            ("floor (edit-lifo) / guestgate intercepted, CPU per request",
             rr("floor_edit_lifo", "gg_msg", "cpu_us")),
        ]
    for name, vals in ratio_rows:
        w(f"| {name} | " + " | ".join(fmt_ratio(v) for v in vals) + " |")
    w("")
    w("## Fixed-rate latency, 32 connections (oha, open loop, coordinated-omission corrected)")
    w("")
    if fixed:
        w(f"Rate {fixed_rate:,} requests/s (half of the slowest proxy's measured c=32 throughput, so every "
          f"target can keep up), {FIXED_ROUNDS} round(s) of {FIXED_SECS} s per target, interleaved like the "
          "throughput runs; medians over rounds (max: worst round). p50 / p99 / p99.9 / max in ms.")
        w("")
        w("| target | achieved req/s | p50 | p99 | p99.9 | max | p99 per round | non-200 / errors | "
          "server CPU µs/req | other load |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in keys:
            f = fixed.get(k)
            if not f:
                w(f"| {LABEL[k]} | – | – | – | – | – | – | – | – | – |")
                continue
            s = lambda v: "–" if v is None else f"{v * 1000:.2f}"  # noqa: E731
            w(f"| {LABEL[k]} | {fmt_int(f['rps'])} | {s(f['p50'])} | {s(f['p99'])} | {s(f['p999'])} | "
              f"{s(f['max'])} | {' / '.join(s(v) for v in f.get('p99_rounds', []))} | "
              f"{f['non200']} / {f['errors']} | "
              f"{'–' if f.get('cpu_us') is None else format(f['cpu_us'], '.1f')} | "
              f"{'–' if f.get('foreign_pct') is None else format(f['foreign_pct'], '.0f') + '%'} |")
        cpu = {k: (fixed.get(k) or {}).get("cpu_us") for k in keys}
        if all(cpu.get(k) for k in keys if k != "direct"):
            w("")
            w(f"At this same request rate the servers' CPU cost per request is the cleanest efficiency "
              f"comparison: guestgate intercepted {cpu['gg_msg']:.1f} µs, guestgate pass-through "
              f"{cpu['gg_pass']:.1f} µs, nginx proxy_pass {cpu['nginx']:.1f} µs, nginx+njs {cpu['njs']:.1f} µs, "
              f"nginx+lua {cpu['lua']:.1f} µs, HAProxy {cpu['haproxy']:.1f} µs"
              + ("" if NO_FLOOR else f", floor pooled {cpu['floor_pool']:.1f} µs, floor direct "
                                     f"{cpu['floor_direct']:.1f} µs, floor edit {cpu['floor_edit']:.1f} µs, "
                                     f"floor lifo {cpu['floor_lifo']:.1f} µs, floor edit-lifo "
                                     f"{cpu['floor_edit_lifo']:.1f} µs") + " "
              f"(guestgate intercepted uses {cpu['gg_msg'] / cpu['nginx']:.2f}x nginx's CPU per request).")
    else:
        w("oha not available: fixed-rate latency not measured (wrk figures above are closed-loop).")
    w("")
    w(f"## Multi-core: {MC_WORKERS} workers on {MC_WORKERS} cores (load generator shares the cores)")
    w("")
    if mc:
        w(f"guestgate `TOKIO_WORKER_THREADS={MC_WORKERS}` against nginx `worker_processes {MC_WORKERS}` (proxy_pass "
          f"and nginx+lua), the shared upstream with {MC_WORKERS} workers and wrk with {MC_WORKERS} threads, "
          + (f"everything pinned to cores {MC_CPUS} (taskset)" if MC_CPUS else "nothing pinned")
          + ": **the load generator and the upstream share the cores with the server under test**, so req/s is "
          "what the whole machine does with both sides on it, and a cheaper proxy leaves more CPU to wrk and the "
          f"upstream. Same configurations, forward checks, round-robin and {ROUNDS} round(s) of {DURATION} s as "
          "above; medians over rounds.")
        w("")
        mc_keys = [t[0] for t in MC_TARGETS]
        w("| target | " + " | ".join(f"req/s c={c}" for c in MC_CONNS) + " | "
          + " | ".join(f"CPU c={c}" for c in MC_CONNS) + " |")
        w("|---|" + "---:|" * (2 * len(MC_CONNS)))
        for k in mc_keys:
            w(f"| {MC_LABEL[k]} | " + " | ".join(rps_cell(mc.get((k, c))) for c in MC_CONNS) + " | "
              + " | ".join(cpu_cell(mc.get((k, c))) for c in MC_CONNS) + " |")
        w("")
        w("| ratio | " + " | ".join(f"c={c}" for c in MC_CONNS) + " |")
        w("|---|" + "---:|" * len(MC_CONNS))
        mc_rows = [
            ("guestgate intercepted / nginx+lua, req/s", rr("gg_msg", "lua", src=mc, conns=MC_CONNS)),
            ("guestgate pass-through / nginx proxy_pass, req/s", rr("gg_pass", "nginx", src=mc, conns=MC_CONNS)),
            ("nginx+lua / guestgate intercepted, CPU per request", rr("lua", "gg_msg", "cpu_us", src=mc,
                                                                      conns=MC_CONNS)),
            ("nginx proxy_pass / guestgate pass-through, CPU per request", rr("nginx", "gg_pass", "cpu_us", src=mc,
                                                                              conns=MC_CONNS)),
        ]
        for k in mc_keys:
            mc_rows.append((f"{MC_LABEL[k]}: {MC_WORKERS} workers / 1 worker (the table above), req/s", [
                ratio(mc.get((k, c), {}).get("rps"), agg.get((k, c), {}).get("rps")) for c in MC_CONNS]))
        for name, vals in mc_rows:
            w(f"| {name} | " + " | ".join(fmt_ratio(v) for v in vals) + " |")
        if PIN:
            w("")
            w("The last rows compare with the one-worker runs above, where the server had core 1 to itself and wrk "
              "and the upstream had core 0: a server that scales as well as nginx has the same factor as nginx.")
        if len(MC_CONNS) > 1:
            lo, hi = MC_CONNS[0], MC_CONNS[-1]
            w("")
            w(f"c={hi} / c={lo} with {MC_WORKERS} workers: " + ", ".join(
                f"{MC_LABEL[k]} {fmt_ratio(ratio(mc.get((k, hi), {}).get('rps'), mc.get((k, lo), {}).get('rps')))}"
                for k in mc_keys) + ".")
    else:
        w("not run (MULTICORE=0).")
    w("")
    w(f"## Memory with {IDLE_CONNS} idle keep-alive connections")
    w("")
    w("Fresh server; each connection sends one POST on the intercepted route, reads the answer, then idles; "
      "RSS read from /proc/<pid>/status while all connections are open (nginx: master + worker summed).")
    w("")
    w("| server | RSS at start | RSS with idle conns | peak RSS (VmHWM) | connections open |")
    w("|---|---:|---:|---:|---:|")
    g = rss.get("guestgate")
    if g:
        w(f"| guestgate | {g['start']['VmRSS'] / 1024:.1f} MiB | {g['VmRSS'] / 1024:.1f} MiB | "
          f"{g['VmHWM'] / 1024:.1f} MiB | {g['open']} |")
    n = rss.get("nginx")
    if n:
        w(f"| nginx proxy_pass (for comparison) | – | {n['VmRSS'] / 1024:.1f} MiB | {n['VmHWM'] / 1024:.1f} MiB | "
          f"{n['open']} |")
    w("")
    w("## Sanitizer micro-benchmark (criterion, `benches/sanitize.rs`)")
    w("")
    if crit:
        w("| benchmark | median | 95% CI |")
        w("|---|---:|---:|")
        for name, e in crit.items():
            w(f"| {name} | {e['median_ns'] / 1000:.3f} µs | {e['lo_ns'] / 1000:.3f}–{e['hi_ns'] / 1000:.3f} µs |")
    else:
        w("not run (SKIP_CRITERION=1 or failed).")
    w("")

    profile_section(w, prof or {}, prof_note)
    ablation_section(w, abl or {}, abl_note)
    # targets of issue 13: ratios at c=32 and c=256 from this run
    w("## Targets (issue 13)")
    w("")
    if prof:
        w("Where the CPU goes in this run is in the profile section above: a target that the floor misses too is "
          "bounded by hyper's request path and the kernel's loopback TCP, which the floor's profile shows; what "
          "guestgate adds is the distance between the two profiles.")
        w("")
    if NO_FLOOR:
        w("| target | result | met? |")
        w("|---|---|:---:|")
    else:
        w("For each target not met, the last column gives what the floor reaches against the same "
          "reference in this run, at each concurrency the faster of the two floors doing the same job (named in "
          "brackets): rows 9 and 11 (hyper with no features, one upstream connection per client or guestgate's "
          "pool) for the pass-through targets, rows 10 and 12 (the same, doing the intercepted route's edit with "
          "serde_json) for the intercepted ones, and all four for the fixed-rate p99. When the floor misses it "
          "too, the target is beyond a "
          "featureless hyper proxy doing that job here; when it meets it, guestgate's req/s against the floor's "
          "is the distance that is guestgate's own.")
        w("")
        w("| target | result | met? | bound (floor / reference) |")
        w("|---|---|:---:|---|")
    need = (32, 256)

    def at(k, c, field="rps"):
        a = agg.get((k, c))
        return a and a[field]

    def judge13(pairs, thr, higher=True):
        """pairs: [(name, value or None)]; met only if every value is measured and on the right side."""
        measured = [v for _n, v in pairs if v is not None]
        bad = [v for v in measured if (v < thr if higher else v > thr)]
        txt = ", ".join(f"{n}: {'not measured' if v is None else fmt_ratio(v)}" for n, v in pairs)
        if bad:
            return txt, "**no**"
        if len(measured) < len(pairs):
            return txt, "not measured" if not measured else "incomplete (rest yes)"
        return txt, "yes"

    def best_floor(key, c):
        """Of the floors doing guestgate row `key`'s job, the one with the most req/s at `c`."""
        return max(FLOOR_OF[key], key=lambda f: at(f, c) or 0)

    def features(route):
        """What guestgate's features are of its instructions beyond the floor at c=32 (the
        instructions section), or ""."""
        every = (abl or {}).get((32, route, "every feature"))
        floor = (abl or {}).get((32, route, "floor"))
        if every is None or floor is None or every <= floor:
            return ""
        saved = every - abl[(32, route, "without all of them")]
        return (f"; at c=32 its features are {saved:,.0f} of the {every - floor:,.0f} instructions a request "
                f"it runs beyond the floor ({saved / (every - floor):.0%}; the instructions section)")

    def bound(met, pairs, thr, floor, own=(), route=None):
        """The floor's own ratio for an unmet throughput target (pairs: [(name, floor ratio or None)]);
        `floor` names the floor, or is None when the pairs name theirs; `own` gives guestgate's
        req/s against that floor where the floor meets the target, the distance that is guestgate's,
        and `route` what its features are of it."""
        if NO_FLOOR:
            return ""
        if met == "yes":
            return " – (met) |"
        if met != "**no**":
            return " – |"
        vals = [v for _n, v in pairs if v is not None]
        if not vals:
            return " not measured |"
        txt = ("floor " if floor is None else f"floor {FLOOR_MODE[floor]} ") + "reaches " + ", ".join(
            f"{n}: {'not measured' if v is None else fmt_ratio(v)}" for n, v in pairs)
        below = [n for n, v in pairs if v is not None and v < thr]
        above = [n for n, v in pairs if v is not None and v >= thr]
        if below and above:
            verdict = (f"the floor misses it too at {', '.join(below)}: beyond a featureless hyper proxy there; "
                       f"it meets it at {', '.join(above)}")
        elif below:
            verdict = "the floor misses it too: beyond a featureless hyper proxy"
        else:
            verdict = "the floor meets it: the gap is in guestgate's own path"
        gaps = [f"{n}: {fmt_ratio(v)}" for n, v in own if n in above and v is not None]
        if gaps:
            verdict += f"; guestgate reaches {', '.join(gaps)} of the floor's req/s"
            if route and any(g.startswith("c=32") for g in gaps):
                verdict += features(route)
        return f" {txt} ({verdict}) |"

    for name, a, b, thr in (
        ("intercepted req/s ≥ 1.25x nginx+lua", "gg_msg", "lua", 1.25),
        ("intercepted req/s ≥ 1.5x nginx+njs", "gg_msg", "njs", 1.5),
        ("pass-through req/s ≥ 1.0x nginx proxy_pass", "gg_pass", "nginx", 1.0),
        ("pass-through req/s ≥ 0.95x HAProxy", "gg_pass", "haproxy", 0.95),
    ):
        results = [(f"c={c}", ratio(at(a, c), at(b, c))) for c in need]
        txt, met = judge13(results, thr)
        floors = [(c, best_floor(a, c)) for c in need]
        w(f"| {name} | {txt} | {met} |"
          + bound(met, [(f"c={c} ({FLOOR_MODE[f]})", ratio(at(f, c), at(b, c))) for c, f in floors], thr, None,
                  [(f"c={c} ({FLOOR_MODE[f]})", ratio(at(a, c), at(f, c)))
                   for (c, f), (_n, v) in zip(floors, results) if v is not None and v < thr],
                  "intercepted" if a == "gg_msg" else "pass-through"))
    txt, met = judge13([(route, ratio(at(k, 256), at(k, 32))) for k, route in
                        (("gg_msg", "intercepted"), ("gg_pass", "pass-through"))], 0.9)
    w(f"| guestgate c=256 req/s ≥ 0.9x its own c=32 | {txt} | {met} |"
      + bound(met, [(f"{FLOOR_MODE[f]} c=256 / c=32", ratio(at(f, 256), at(f, 32)))
                    for f in FLOOR_OF["gg_pass"] + FLOOR_OF["gg_msg"]], 0.9, None))
    na = "" if NO_FLOOR else " n/a |"

    def p99_bound(met):
        """The floors' fixed-rate p99 against nginx's, and whether the rounds overlap: a p99 on a
        shared VM moves by 2-3x between rounds of one server."""
        if NO_FLOOR:
            return ""
        if met:
            return " – (met) |"
        ref = fixed.get("nginx") or {}
        floors = [(FLOOR_MODE[f], (fixed.get(f) or {}).get("p99")) for f in FLOOR_OF["gg_msg"] + FLOOR_OF["gg_pass"]]
        floors = [(n, v) for n, v in floors if v is not None]
        if not floors:
            return " not measured |"
        txt = ", ".join(f"floor {n} {v * 1000:.2f} ms" for n, v in floors) + f" against nginx's {ref['p99'] * 1000:.2f} ms"
        meets = [n for n, v in floors if v <= ref["p99"]]
        verdict = (f"the floor {' and '.join(meets)} {'meets' if len(meets) == 1 else 'meet'} it" if meets
                   else "the floor misses it too: beyond a featureless hyper proxy")
        gr, nr = ([v for v in (src.get("p99_rounds") or []) if v is not None]
                  for src in (fixed.get("gg_msg") or {}, ref))
        if gr and nr:
            def span(rs):
                return f"{min(rs) * 1000:.2f}-{max(rs) * 1000:.2f} ms"
            overlap = min(gr) <= max(nr) and min(nr) <= max(gr)
            verdict += (f"; rounds {'overlap' if overlap else 'apart'}: guestgate intercepted {span(gr)}, "
                        f"nginx {span(nr)}")
        return f" {txt} ({verdict}) |"

    fg, fp, fn = ((fixed.get(k) or {}).get("p99") for k in ("gg_msg", "gg_pass", "nginx"))
    if fg is not None and fn is not None:
        w(f"| fixed-rate p99 at 32 connections ≤ nginx proxy_pass's | intercepted {fg * 1000:.2f} ms vs nginx "
          f"{fn * 1000:.2f} ms (pass-through {'–' if fp is None else format(fp * 1000, '.2f')} ms), "
          f"{fixed_rate:,} req/s | {'yes' if fg <= fn else '**no**'} |" + p99_bound(fg <= fn))
    else:
        w("| fixed-rate p99 at 32 connections ≤ nginx proxy_pass's | not measured (no oha, or c=32 not run) | "
          "not measured |" + na)
    if g:
        w(f"| RSS with {IDLE_CONNS} idle keep-alive connections ≤ 25 MiB | peak {g['VmHWM'] / 1024:.1f} MiB "
          f"(with them open {g['VmRSS'] / 1024:.1f} MiB; {g['open']} open) | "
          f"{'yes' if g['VmHWM'] <= 25 * 1024 and g['open'] >= IDLE_CONNS else '**no**'} |" + na)
    else:
        w(f"| RSS with {IDLE_CONNS} idle keep-alive connections ≤ 25 MiB | not measured | not measured |" + na)
    w("")
    w("## Targets (issue 5)")
    w("")
    w("| target | result | met? |")
    w("|---|---|:---:|")

    def judge(vals, thr, higher=True):
        vs = [v for v in vals if v is not None]
        if not vs:
            return "–", "not measured"
        ok = all(v >= thr for v in vs) if higher else all(v <= thr for v in vs)
        return ("yes" if ok else "**no**"), ", ".join(
            f"c={c}: {fmt_ratio(v)}" for c, v in zip(CONNS, vals))

    for name, vals, thr in (
        ("intercepted req/s ≥ 1.1x nginx proxy_pass", ratio_rows[0][1], 1.1),
        ("intercepted req/s ≥ 2.5x nginx+njs", ratio_rows[1][1], 2.5),
        ("pass-through req/s ≥ 1.1x nginx proxy_pass", ratio_rows[2][1], 1.1),
    ):
        met, txt = judge(vals, thr)
        w(f"| {name} | {txt} | {met} |")
    if 32 in CONNS:
        a, b = agg.get(("gg_msg", 32)), agg.get(("nginx", 32))
        if a and b:
            ok = None
            txt = ""
            if fixed and fixed.get("gg_msg") and fixed.get("nginx") and fixed["gg_msg"]["p99"] is not None:
                fg, fn = fixed["gg_msg"]["p99"], fixed["nginx"]["p99"]
                txt = f"fixed rate (oha): guestgate {fg * 1000:.2f} ms vs nginx {fn * 1000:.2f} ms; "
                ok = fg <= fn
            txt += (f"closed loop (wrk, saturated, for information): {fmt_ms(a['p99'])} ms vs "
                    f"{fmt_ms(b['p99'])} ms")
            met = "not measured (no oha)" if ok is None else ("yes" if ok else "**no**")
            w(f"| p99 at 32 connections ≤ nginx proxy_pass (fixed rate) | {txt} | {met} |")
    if g:
        w(f"| ≤ 30 MiB RSS with {IDLE_CONNS} idle connections | peak {g['VmHWM'] / 1024:.1f} MiB | "
          f"{'yes' if g['VmHWM'] <= 30 * 1024 and g['open'] >= IDLE_CONNS else '**no**'} |")
    if crit and "sanitize_bytes/200B" in crit:
        v = crit["sanitize_bytes/200B"]["median_ns"]
        w(f"| sanitizer ≤ 2 µs on the 200-byte message | {v / 1000:.3f} µs | {'yes' if v <= 2000 else '**no**'} |")
    w("")
    w("<details><summary>Raw per-round results</summary>")
    w("")
    w("| round | target | c | req/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/req | core0/core1 busy % "
      "| other load |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (key, c), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], keys.index(kv[0][0]))):
        for i, r in enumerate(rs):
            cpu = "–" if r["proxy_us_per_req"] is None else f"{r['proxy_us_per_req']:.1f}"
            w(f"| {i + 1} | {key} | {c} | {fmt_int(r['rps'])} | {fmt_ms(r['lat_p50_us'])} | {fmt_ms(r['lat_p99_us'])} | "
              f"{fmt_ms(r['lat_p999_us'])} | {r['errors']} | {cpu} | "
              f"{r['core_busy'].get(0, 0):.0f}/{r['core_busy'].get(1, 0):.0f} | "
              f"{'–' if r.get('foreign_pct') is None else format(r['foreign_pct'], '.0f') + '%'} |")
    w("")
    w("</details>")
    w("")
    return "\n".join(L)


# ---------------------------------------------------------------- main

def interleaved(servers, targets, conns_list, cpus=LOADGEN_CPUS, threads=None, tag=""):
    """Every target at every concurrency, ROUNDS rounds, start rotated every round."""
    runs = {}
    total = len(conns_list) * ROUNDS * len(targets)
    n = 0
    for c in conns_list:
        for rnd in range(ROUNDS):
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for key, _l, port, path in order:
                n += 1
                r = measure(servers, key, port, path, c, DURATION, cpus, threads)
                runs.setdefault((key, c), []).append(r)
                log(f"{tag}[{n}/{total}] c={c} round {rnd + 1} {key}: {r['rps']:,.0f} req/s "
                    f"p99 {r['lat_p99_us'] / 1000:.2f} ms errors {r['errors']} "
                    f"cores {r['core_busy'].get(0, 0):.0f}/{r['core_busy'].get(1, 0):.0f} "
                    f"other load {r['foreign_pct']:.0f}%")
    return runs


def multicore():
    """2 workers per server (guestgate TOKIO_WORKER_THREADS=2, nginx worker_processes 2), the shared
    upstream (2 workers) and wrk (2 threads) all on the same cores 0-1."""
    servers = Servers()
    try:
        servers.start_nginx("upstream", "upstream", UPSTREAM_PORT, MC_CPUS, workers=MC_WORKERS)
        servers.start_nginx("nginx", "proxy", NGINX_PORT, MC_CPUS, workers=MC_WORKERS)
        servers.start_nginx("lua", "lua", LUA_PORT, MC_CPUS, workers=MC_WORKERS)
        servers.gg = servers.start_guestgate(GG_PORT, GG_ADMIN_PORT, MC_CPUS, MC_WORKERS)
        problems, _ = verify(MC_TARGETS)
        if problems:
            raise SystemExit("multi-core forwarding check failed:\n  " + "\n  ".join(problems))
        log("multi-core: forwarding checked: ok")
        for key, _l, port, path in MC_TARGETS:
            log(f"multi-core warm-up {key}")
            wrk(key, port, path, 32, WARMUP, MC_CPUS, MC_WORKERS)
        return interleaved(servers, MC_TARGETS, MC_CONNS, MC_CPUS, MC_WORKERS, "multi-core ")
    finally:
        servers.stop_all()


def main():
    t_start = time.time()
    if not os.path.exists(GUESTGATE):
        raise SystemExit(f"{GUESTGATE} not built (bench/run.sh builds it)")
    if not NO_FLOOR and not os.path.exists(FLOOR):
        raise SystemExit(f"{FLOOR} not built (bench/run.sh builds it; NO_FLOOR=1 leaves the floor rows out)")
    if PIN and os.cpu_count() < 2:
        raise SystemExit("PIN=1 needs two cores")
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    for port in range(PORT_BASE, PORT_BASE + PORTS_USED):
        if not port_free(port):
            raise SystemExit(f"port {port} is busy (set BENCH_PORT_BASE)")
    info = machine_info()
    load_before = open("/proc/loadavg").read().split()[:3]
    servers = Servers()
    njs_loc = {
        "js_set": 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; '
                  'proxy_set_body $guest_body;',
        "fetch": f"set $bench_upstream_port {UPSTREAM_PORT}; js_content guest.content;",
    }[NJS_MODE]
    runs = {}
    mc_runs = {}
    prof, prof_note = {}, "not run"
    abl, abl_note = {}, "not run"
    fixed = {}
    fixed_rate = None
    try:
        servers.start_nginx("upstream", "upstream", UPSTREAM_PORT, LOADGEN_CPUS)
        servers.start_nginx("nginx", "proxy", NGINX_PORT, PROXY_CPUS)
        servers.start_nginx("njs", "njs", NJS_PORT, PROXY_CPUS, {"@NJS_LOCATION@": njs_loc})
        servers.start_nginx("lua", "lua", LUA_PORT, PROXY_CPUS)
        servers.start_haproxy(HAPROXY_PORT, PROXY_CPUS)
        servers.gg = servers.start_guestgate(GG_PORT, GG_ADMIN_PORT, PROXY_CPUS, SERVER_WORKERS)
        if not NO_FLOOR:
            for key, _l, port, _p in FLOOR_TARGETS:
                servers.start_floor(key, port, PROXY_CPUS)
        problems, refusals = verify()
        if problems:
            raise SystemExit("forwarding check failed:\n  " + "\n  ".join(problems))
        log("forwarding checked: ok; refusals", refusals)
        for key, _l, port, path in TARGETS:
            log(f"warm-up {key}")
            wrk(key, port, path, 32, WARMUP)
        runs = interleaved(servers, TARGETS, CONNS)
        gg_after = read_status(servers.gg.pid)
        log("guestgate after load:", gg_after)
        # fixed-rate latency at c=32, below everyone's capacity
        if 32 in CONNS:
            slowest = min(statistics.median(x["rps"] for x in runs[(k, 32)]) for k, *_ in TARGETS if k != "direct")
            fixed_rate = int(slowest * 0.5 / 100) * 100 or 100
            fixed_runs = {}
            for rnd in range(FIXED_ROUNDS):
                order = TARGETS[rnd % len(TARGETS):] + TARGETS[:rnd % len(TARGETS)]
                for key, _l, port, path in order:
                    f = oha_fixed(servers, key, port, path, fixed_rate, FIXED_SECS)
                    if f is None:
                        break
                    fixed_runs.setdefault(key, []).append(f)
                    log(f"fixed {fixed_rate}/s round {rnd + 1} {key}: p99 {f['p99'] * 1000:.2f} ms, "
                        f"other load {f['foreign_pct']:.0f}%")
            fixed = {k: fixed_agg(v) for k, v in fixed_runs.items()} if len(fixed_runs) == len(TARGETS) else {}
        servers.stop_all()
        log("profile section (perf)")
        prof, prof_note = profiles()
        log("instructions section (cachegrind)")
        abl, abl_note = ablations()
        if MULTICORE:
            log(f"multi-core section: {MC_WORKERS} workers, wrk on the same cores")
            mc_runs = multicore()
        servers = Servers()
        servers.start_nginx("upstream", "upstream", UPSTREAM_PORT, LOADGEN_CPUS)
        log(f"idle connections test ({IDLE_CONNS})")
        rss = idle_rss(servers)
        log("rss:", rss)
    finally:
        servers.stop_all()
    log("criterion sanitizer benchmark")
    crit = criterion()
    load_after = open("/proc/loadavg").read().split()[:3]
    now = datetime.datetime.now()
    cfg = {"date": now.strftime("%Y-%m-%d %H:%M")}
    md = report(info, cfg, runs, mc_runs, fixed, fixed_rate, rss, crit, refusals, " ".join(load_before),
                " ".join(load_after), time.time() - t_start, prof, prof_note, abl, abl_note)
    name = f"{now.strftime('%Y-%m-%d')}-{info['host']}{'-quick' if QUICK else ''}.md"
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        f.write(md)
    raw = {"info": info, "runs": {f"{k}@{c}": v for (k, c), v in runs.items()},
           "multicore_runs": {f"{k}@{c}": v for (k, c), v in mc_runs.items()}, "fixed": fixed,
           "fixed_rate": fixed_rate, "rss": rss, "profile": prof, "criterion": crit, "guestgate_after_load": gg_after,
           "instructions": {"@".join(map(str, k)): v for k, v in abl.items()}}
    with open(os.path.join(WORK, "last-run.json"), "w") as f:
        json.dump(raw, f, indent=1)
    print(md)
    log(f"written {path}")


if __name__ == "__main__":
    main()

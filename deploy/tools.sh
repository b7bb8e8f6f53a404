# shellcheck shell=bash disable=SC2034
# Sourced by the deploy/*.sh tests. Installs what they need on Debian (as
# root) unless GUESTGATE_SKIP_INSTALL=1:
#  - deploy_apt_install PKG...: apt-get install, waiting for the dpkg lock;
#  - ensure_deploy_venv: the Python tools pinned in deploy/requirements.txt, in
#    a venv at deploy/.venv (recreated when requirements.txt changes), never
#    in the system Python (Debian's is externally managed, PEP 668). Sets
#    DEPLOY_PY (the venv's python) and DEPLOY_BIN (its bin directory);
#  - ensure_promtool: promtool from Debian's `prometheus` package, when missing;
#  - shipped_binary: prints the path of GUESTGATE_BIN, or of the binary the
#    image ships, built by deploy/build-binary.sh (reused once built).

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY_VENV="$DEPLOY_DIR/.venv"
DEPLOY_PY="$DEPLOY_VENV/bin/python"
DEPLOY_BIN="$DEPLOY_VENV/bin"

deploy_apt_install() {
  if [ "${GUESTGATE_SKIP_INSTALL:-0}" = 1 ]; then
    echo "deploy: missing $* and GUESTGATE_SKIP_INSTALL=1" >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "deploy: need root to apt-get install $*" >&2
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
}

ensure_deploy_venv() {
  if [ -x "$DEPLOY_PY" ] && cmp -s "$DEPLOY_DIR/requirements.txt" "$DEPLOY_VENV/requirements.txt.installed"; then
    return 0
  fi
  if [ "${GUESTGATE_SKIP_INSTALL:-0}" = 1 ]; then
    echo "deploy: $DEPLOY_VENV is missing or stale and GUESTGATE_SKIP_INSTALL=1" >&2
    return 1
  fi
  echo "deploy: installing deploy/requirements.txt into deploy/.venv" >&2
  rm -rf "$DEPLOY_VENV"
  if ! python3 -m venv "$DEPLOY_VENV" >/dev/null 2>&1; then
    rm -rf "$DEPLOY_VENV"
    deploy_apt_install python3-venv || return 1
    python3 -m venv "$DEPLOY_VENV" || return 1
  fi
  "$DEPLOY_PY" -m pip install --quiet --disable-pip-version-check -r "$DEPLOY_DIR/requirements.txt" \
    && cp "$DEPLOY_DIR/requirements.txt" "$DEPLOY_VENV/requirements.txt.installed"
}

ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "deploy: installing Debian's prometheus package (for promtool)" >&2
  deploy_apt_install --no-install-recommends prometheus && command -v promtool >/dev/null 2>&1
}

shipped_binary() {
  if [ -n "${GUESTGATE_BIN:-}" ]; then
    echo "deploy: using prebuilt binary $GUESTGATE_BIN" >&2
    echo "$GUESTGATE_BIN"
    return 0
  fi
  echo "deploy: building the binary the image ships (deploy/build-binary.sh)" >&2
  bash "$DEPLOY_DIR/build-binary.sh"
}

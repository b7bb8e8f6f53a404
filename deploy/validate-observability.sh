#!/usr/bin/env bash
# Validates the Grafana dashboard and the Prometheus alert rules
# (docs/dashboards-and-alerts.md):
#  - `promtool check rules` on deploy/prometheus/rules.yml and on the spec of
#    the PrometheusRule deploy/prometheus/alerts.yaml, and the two hold the
#    same rules; every alert has for/severity/summary/description/runbook_url
#    (deploy/test/check_alerts.py);
#  - `promtool test rules deploy/prometheus/alerts.test.yml`;
#  - every metric, label and label value in the PromQL of the dashboard and of
#    both rule files is in a live scrape of the real binary's /metrics
#    (deploy/test/scrape_metrics.py, deploy/test/check_dashboard.py), and the
#    checker fails on a dashboard naming a metric that does not exist.
# The binary is the one the container image ships (deploy/build-binary.sh; built
# here, so that test finds it done), or GUESTGATE_BIN. promtool comes from
# Debian's prometheus package and PyYAML from deploy/requirements.txt, both
# installed when missing (deploy/tools.sh). Ends with the line
# `summary: N passed, M failed`; non-zero exit on any failure.
#
#   bash deploy/validate-observability.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROM="$ROOT/deploy/prometheus"
DASHBOARD="$ROOT/deploy/grafana/guestgate.json"
PASSED=0
FAILED=0
WORK="$(mktemp -d /tmp/guestgate-observability.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"; }
# check "description" command...: one assertion; the command's output is shown
# indented when it fails.
check() {
  local desc="$1"; shift
  if "$@" >"$WORK/out" 2>&1; then
    pass "$desc"
  else
    fail "$desc"
    sed 's/^/   | /' "$WORK/out"
  fi
}
die() {
  printf 'FATAL: %s\n' "$*" >&2
  echo "summary: $PASSED passed, $((FAILED + 1)) failed"
  exit 1
}
# Fails (exit 1) only if the command fails and its output contains TEXT.
fails_naming() { # text command...
  local text="$1"; shift
  ! "$@" >"$WORK/neg" 2>&1 && grep -qF -- "$text" "$WORK/neg"
}

# shellcheck source=deploy/tools.sh
. "$ROOT/deploy/tools.sh"
ensure_promtool || die "could not install promtool (Debian package prometheus)"
ensure_deploy_venv || die "could not install the tools in deploy/requirements.txt"
PY="$DEPLOY_PY"
echo "$(promtool --version 2>&1 | head -1)"

# ------------------------------------------------------------ alert rules
check "promtool check rules deploy/prometheus/rules.yml" \
  promtool check rules "$PROM/rules.yml"
check "alerts.yaml is a PrometheusRule with rules.yml's groups; every alert has for, severity, summary, description, a runbook anchor and tests (check_alerts.py)" \
  "$PY" "$ROOT/deploy/test/check_alerts.py" --spec-out "$WORK/prometheusrule-spec.yml"
check "promtool check rules on the PrometheusRule's spec" \
  promtool check rules "$WORK/prometheusrule-spec.yml"
check "promtool test rules deploy/prometheus/alerts.test.yml" \
  promtool test rules "$PROM/alerts.test.yml"

# ------------------------------------------------------------ live scrape
bin="$(shipped_binary)" || die "deploy/build-binary.sh failed"
[ -x "$bin" ] || die "no binary at $bin"

check "the real binary serves every metric family under HTTP and WebSocket rules (scrape_metrics.py)" \
  "$PY" "$ROOT/deploy/test/scrape_metrics.py" "$bin" "$WORK/metrics.txt"
[ -s "$WORK/metrics.txt" ] || die "no scrape to check against"
check "the PromQL checker's parser self-test" \
  "$PY" "$ROOT/deploy/test/check_dashboard.py" --self-test
check "dashboard and alert rules name only metrics, labels and values of the live scrape; the dashboard imports with \${datasource}" \
  "$PY" "$ROOT/deploy/test/check_dashboard.py" --scrape "$WORK/metrics.txt" \
    --dashboard "$DASHBOARD" --rules "$PROM/rules.yml" --rules "$PROM/alerts.yaml"

# The checker must really refuse what the binary does not export.
sed 's/guestgate_upgrades_total/guestgate_upgrades_opened_total/' "$DASHBOARD" >"$WORK/bogus.json"
check "the checker fails on a dashboard naming a metric that does not exist" \
  fails_naming "guestgate_upgrades_opened_total is not exported" \
    "$PY" "$ROOT/deploy/test/check_dashboard.py" --scrape "$WORK/metrics.txt" --dashboard "$WORK/bogus.json"
sed 's/reason="upstream-timeout"/cause="upstream-timeout"/' "$PROM/rules.yml" >"$WORK/bogus-rules.yml"
check "the checker fails on an alert selecting a label the metric does not have" \
  fails_naming "guestgate_rejected_total has no label 'cause'" \
    "$PY" "$ROOT/deploy/test/check_dashboard.py" --scrape "$WORK/metrics.txt" --rules "$WORK/bogus-rules.yml"

echo
echo "summary: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

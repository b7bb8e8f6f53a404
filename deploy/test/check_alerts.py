#!/usr/bin/env python3
"""Checks the alert rules in deploy/prometheus that promtool cannot.

usage: check_alerts.py [--spec-out FILE]   check; write the PrometheusRule's spec
                                           as a plain rules file to FILE (for promtool)
       check_alerts.py --write             make alerts.yaml from rules.yml

rules.yml (a plain Prometheus rules file) is the source; alerts.yaml is the
same groups as a PrometheusRule, its `spec` being rules.yml's text indented.
Checked: the PrometheusRule's kind, apiVersion and metadata; alerts.yaml is
exactly what --write makes, and its spec equals rules.yml as data; every
rule is an alert with `for`, a severity label (critical, warning or info),
summary, description and a runbook_url naming a heading of
docs/dashboards-and-alerts.md; alerts.test.yml has, for every alert, a case
where it fires and one where it does not, and tests no alert that does not
exist. Prints one line per problem; exits 1 if any.
"""
import argparse
import os
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROM = os.path.join(ROOT, "deploy", "prometheus")
RULES = os.path.join(PROM, "rules.yml")
OPERATOR = os.path.join(PROM, "alerts.yaml")
TESTS = os.path.join(PROM, "alerts.test.yml")
SEVERITIES = {"critical", "warning", "info"}

HEADER = """\
# guestgate's alerting rules as a PrometheusRule (prometheus-operator):
#
#   kubectl apply -n <namespace> -f deploy/prometheus/alerts.yaml
#
# Made from deploy/prometheus/rules.yml (the same groups as a plain rules
# file) by `python3 deploy/test/check_alerts.py --write`: edit rules.yml, then
# run that; the shipping tests fail when the two differ. Your Prometheus'
# ruleSelector may need a label here (kube-prometheus-stack: `release`).
# What each alert means: docs/dashboards-and-alerts.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: guestgate
  labels:
    app.kubernetes.io/name: guestgate
    app.kubernetes.io/component: alerting
spec:
"""


def generate(rules_text):
    """alerts.yaml's text: the header, then rules.yml from `groups:` on, indented."""
    lines = rules_text.splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.startswith("groups:"))
    body = "".join(("  " + l) if l.strip() else l for l in lines[start:])
    return HEADER + body


def anchor(heading):
    """GitHub's anchor for a heading (as tests/docs.rs computes it)."""
    return "".join(
        "-" if c == " " else c
        for c in heading.strip().lower()
        if c.isalnum() or c in "- _"
    )


def anchors(markdown):
    fenced, out = False, set()
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#"):
            out.add(anchor(line.lstrip("#")))
    return out


def check(spec_out):
    problems = []
    rules_text = open(RULES, encoding="utf-8").read()
    rules = yaml.safe_load(rules_text)
    operator_text = open(OPERATOR, encoding="utf-8").read()
    operator = yaml.safe_load(operator_text)

    if operator.get("apiVersion") != "monitoring.coreos.com/v1" or operator.get("kind") != "PrometheusRule":
        problems.append("alerts.yaml: not a monitoring.coreos.com/v1 PrometheusRule")
    if not operator.get("metadata", {}).get("name"):
        problems.append("alerts.yaml: metadata.name missing")
    if set(operator) - {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"alerts.yaml: unexpected top-level keys {sorted(set(operator) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
    if operator.get("spec") != rules:
        problems.append("alerts.yaml: spec differs from rules.yml as data")
    if operator_text != generate(rules_text):
        problems.append("alerts.yaml: not what rules.yml makes; run python3 deploy/test/check_alerts.py --write")
    if spec_out:
        with open(spec_out, "w", encoding="utf-8") as f:
            yaml.safe_dump(operator.get("spec"), f, sort_keys=False)

    doc_path = os.path.join(ROOT, "docs", "dashboards-and-alerts.md")
    doc_anchors = anchors(open(doc_path, encoding="utf-8").read()) if os.path.exists(doc_path) else set()
    alerts = []
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if not name:
                problems.append(f"group {group.get('name')}: a rule that is not an alert: {rule}")
                continue
            alerts.append(name)
            if "for" not in rule:
                problems.append(f"{name}: no `for`")
            if rule.get("labels", {}).get("severity") not in SEVERITIES:
                problems.append(f"{name}: severity label must be one of {sorted(SEVERITIES)}")
            ann = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not str(ann.get(key, "")).strip():
                    problems.append(f"{name}: no {key} annotation")
            url = str(ann.get("runbook_url", ""))
            path, _, frag = url.partition("#")
            if path != "docs/dashboards-and-alerts.md" or frag != name.lower():
                problems.append(f"{name}: runbook_url {url!r} must be docs/dashboards-and-alerts.md#{name.lower()}")
            elif frag not in doc_anchors:
                problems.append(f"{name}: docs/dashboards-and-alerts.md has no heading for #{frag}")
    if len(set(alerts)) != len(alerts):
        problems.append(f"alert names repeat: {alerts}")

    tests = yaml.safe_load(open(TESTS, encoding="utf-8"))
    if [os.path.normpath(os.path.join(PROM, f)) for f in tests.get("rule_files", [])] != [RULES]:
        problems.append(f"alerts.test.yml: rule_files must be [rules.yml], not {tests.get('rule_files')}")
    fires, quiet = set(), set()
    for case in tests.get("tests", []):
        for t in case.get("alert_rule_test", []):
            name = t.get("alertname")
            if name not in alerts:
                problems.append(f"alerts.test.yml: tests {name!r}, which is not an alert")
            (fires if t.get("exp_alerts") else quiet).add(name)
    for name in alerts:
        if name not in fires:
            problems.append(f"alerts.test.yml: no case where {name} fires")
        if name not in quiet:
            problems.append(f"alerts.test.yml: no case where {name} does not fire")
    for p in problems:
        print(p)
    if not problems:
        print(f"{len(alerts)} alerts checked: {', '.join(alerts)}")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--spec-out")
    args = ap.parse_args()
    if args.write:
        with open(OPERATOR, "w", encoding="utf-8") as f:
            f.write(generate(open(RULES, encoding="utf-8").read()))
        return 0
    return check(args.spec_out)


if __name__ == "__main__":
    sys.exit(main())

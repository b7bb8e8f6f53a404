#!/usr/bin/env python3
"""Checks that the dashboard and the alert rules ask only for what the binary exports.

usage: check_dashboard.py --scrape METRICS_FILE [--dashboard JSON]... [--rules YAML]...
       check_dashboard.py --self-test

METRICS_FILE is a scrape of the real binary's /metrics (deploy/test/scrape_metrics.py).
Its `# TYPE` lines give the metric families; a PromQL name is exported when
it is a family's series name (a counter `F` is queried as `F_total`, a
histogram as `F_bucket`, `F_sum` and `F_count`, a gauge as `F`) or `up`
(made by Prometheus for every scrape). Every PromQL expression in the
dashboard (panel targets, including rows' panels, annotations, the
`label_values(...)` of template variables) and in the rules files is parsed
and, for every metric it names:
  - the name must be exported;
  - every label in its selector must be one of that family's labels in the
    scrape, a target label Prometheus adds (job, instance, namespace, pod)
    or `le` on `_bucket`;
  - a value compared with `=`, or each word of a `=~"a|b"` list, must be a
    value the scrape shows for that label (other regexes must match one);
    values with a Grafana `$variable` are not checked;
and every label of `by`, `without`, `on`, `ignoring` and `group_left/right`
must be a label of a metric of the expression (or a target label, or `le`).
Unknown functions are errors too. The dashboard must also be importable:
schemaVersion >= 36, a `datasource` variable of type datasource
(prometheus), every panel and target on `${datasource}`, unique panel ids,
and panels covering the families guestgate's operators need.
Prints one line per problem; exits 1 if any.
"""
import argparse
import json
import re
import sys

import yaml

TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Families the dashboard must show (docs/dashboards-and-alerts.md lists the panels).
REQUIRED = [
    "guestgate_requests_total",
    "guestgate_request_duration_seconds_bucket",
    "guestgate_upstream_duration_seconds_bucket",
    "guestgate_rejected_total",
    "guestgate_edits_total",
    "guestgate_open_connections",
    "guestgate_open_upgrades",
    "guestgate_upgrades_total",
    "guestgate_websocket_messages_total",
    "guestgate_websocket_closes_total",
    "guestgate_config_reloads_total",
    "guestgate_ready",
]
SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    "summary": ["", "_sum", "_count"],
    "info": ["_info"],
    "stateset": [""],
    "gauge": [""],
    "unknown": [""],
}
SYNTHETIC = {"up": set()}  # series Prometheus makes per scrape, and their labels
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters",
    "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log10", "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round",
    "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc",
    "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time",
    "timestamp", "vector", "year",
    # `@ start()` / `@ end()`
    "start", "end",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)


class PromQLError(Exception):
    pass


def tokenize(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def parse(expr):
    """What a PromQL expression refers to.

    Returns (selectors, grouping, functions): selectors is a list of
    (metric_name, [(label, op, value)]), grouping the label names of
    by/without/on/ignoring/group_left/group_right, functions the names called.
    """
    toks = tokenize(expr)
    selectors, grouping, functions = [], [], []
    i = 0

    def matchers(j):
        """Label matchers from the token after `{`; returns (matchers, index after `}`)."""
        out = []
        while True:
            if j >= len(toks):
                raise PromQLError("unclosed {")
            kind, text = toks[j]
            if text == "}":
                return out, j + 1
            if text == ",":
                j += 1
                continue
            if kind not in ("ident", "string") or j + 2 >= len(toks):
                raise PromQLError(f"bad label matcher at {text!r}")
            label = unquote(text) if kind == "string" else text
            op, (vkind, value) = toks[j + 1][1], toks[j + 2]
            if op not in ("=", "!=", "=~", "!~") or vkind != "string":
                raise PromQLError(f"bad label matcher {label}{op}{value}")
            out.append((label, op, unquote(value)))
            j += 3

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if text == "[":
            while i < len(toks) and toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if text == "{":
            ms, i = matchers(i + 1)
            names = [v for l, op, v in ms if l == "__name__" and op == "="]
            if not names:
                raise PromQLError("a selector without a metric name")
            selectors.append((names[0], [m for m in ms if m[0] != "__name__"]))
            continue
        if kind != "ident":
            i += 1
            continue
        low = text.lower()
        if low in GROUPING:
            i += 1
            if nxt == "(":
                i += 1
                while i < len(toks) and toks[i][1] != ")":
                    if toks[i][0] in ("ident", "string"):
                        t = toks[i][1]
                        grouping.append(unquote(t) if toks[i][0] == "string" else t)
                    elif toks[i][1] != ",":
                        raise PromQLError(f"bad label list after {text}: {toks[i][1]!r}")
                    i += 1
                i += 1
            elif low not in ("group_left", "group_right"):
                raise PromQLError(f"{text} without a label list")
            continue
        if low in KEYWORDS:
            i += 1
            continue
        if low in AGGREGATIONS:
            functions.append(low)
            i += 1
            continue
        if nxt == "(":
            functions.append(text)
            if text not in FUNCTIONS:
                raise PromQLError(f"unknown function {text}()")
            i += 1
            continue
        # A metric name.
        if nxt == "{":
            ms, i = matchers(i + 2)
            selectors.append((text, ms))
        else:
            selectors.append((text, []))
            i += 1
    return selectors, grouping, functions


def read_scrape(text):
    """{series name: {label: set(values)}} for every exported series name."""
    types, labels = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, mtype = line.split(None, 3)
            types[family] = mtype.strip()
    for family, mtype in types.items():
        for suffix in SUFFIXES.get(mtype, [""]):
            # Prometheus' own text format names a counter family with its _total.
            name = family if (mtype == "counter" and family.endswith("_total")) else family + suffix
            labels[name] = {}
    sample = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s')
    pair = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = sample.match(line)
        if not m:
            continue
        name = m.group(1)
        if name not in labels:
            continue  # a sample of no declared family
        for label, value in pair.findall(m.group(2) or ""):
            labels[name].setdefault(label, set()).add(re.sub(r"\\(.)", r"\1", value))
    for name, ls in SYNTHETIC.items():
        labels.setdefault(name, {l: set() for l in ls})
    return labels


def check_expr(where, expr, exported, problems, used):
    try:
        selectors, grouping, _ = parse(expr)
    except PromQLError as e:
        problems.append(f"{where}: {e}: {expr}")
        return
    if not selectors:
        problems.append(f"{where}: names no metric: {expr}")
    known = set(TARGET_LABELS)
    for name, ms in selectors:
        used.add(name)
        if name not in exported:
            problems.append(f"{where}: {name} is not exported by the binary (not in the scrape's # TYPE families)")
            continue
        family_labels = exported[name]
        known |= set(family_labels)
        if name.endswith("_bucket"):
            known.add("le")
        for label, op, value in ms:
            if label in TARGET_LABELS or (label == "le" and name.endswith("_bucket")):
                continue
            if label not in family_labels:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(family_labels)})")
                continue
            seen = family_labels[label]
            if "$" in value or op in ("!=", "!~"):
                continue
            if op == "=":
                if value not in seen:
                    problems.append(f"{where}: {name}{{{label}={value!r}}}: the scrape shows only {sorted(seen)}")
            elif re.fullmatch(r"[\w.-]+(\|[\w.-]+)*", value):
                for word in value.split("|"):
                    if word not in seen:
                        problems.append(f"{where}: {name}{{{label}=~...{word!r}...}}: the scrape shows only {sorted(seen)}")
            elif not any(re.fullmatch(value, v) for v in seen):
                problems.append(f"{where}: {name}{{{label}=~{value!r}}} matches no value in the scrape {sorted(seen)}")
    for label in grouping:
        if label not in known:
            problems.append(f"{where}: grouping label {label!r} is on none of the expression's metrics")


def dashboard_exprs(dash, problems):
    """(where, expr) of every PromQL expression of a dashboard; checks its structure."""
    out = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"dashboard: schemaVersion {dash.get('schemaVersion')!r} (want >= 36)")
    variables = dash.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("name") == "datasource"]
    if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
        problems.append("dashboard: no `datasource` template variable of type datasource for prometheus")
    ds_ref = {"type": "prometheus", "uid": "${datasource}"}
    for v in variables:
        if v.get("type") != "query":
            continue
        if v.get("datasource") != ds_ref:
            problems.append(f"variable {v.get('name')}: datasource must be {ds_ref}")
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", q)
        if m:
            out.append((f"variable {v['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
            continue
        m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q)
        if m:
            out.append((f"variable {v['name']}", m.group(1)))
            continue
        problems.append(f"variable {v.get('name')}: query {q!r} is not label_values(metric, label) or query_result(...)")
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("builtIn"):
            continue
        if a.get("datasource") != ds_ref:
            problems.append(f"annotation {a.get('name')}: datasource must be {ds_ref}")
        if a.get("expr"):
            out.append((f"annotation {a.get('name')}", a["expr"]))
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            where = f"panel {p.get('id')} {p.get('title')!r}"
            if "gridPos" not in p:
                problems.append(f"{where}: no gridPos")
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            if p.get("datasource") != ds_ref:
                problems.append(f"{where}: datasource must be {ds_ref}")
            targets = p.get("targets", [])
            if not targets:
                problems.append(f"{where}: no targets")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs):
                problems.append(f"{where}: repeated refId {refs}")
            for t in targets:
                if t.get("datasource", ds_ref) != ds_ref:
                    problems.append(f"{where} target {t.get('refId')}: datasource must be {ds_ref}")
                if not t.get("expr"):
                    problems.append(f"{where} target {t.get('refId')}: no expr")
                else:
                    out.append((f"{where} {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"dashboard: panel ids must be unique and set: {ids}")
    return out


def rules_exprs(path, problems):
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    if doc.get("kind") == "PrometheusRule":
        doc = doc.get("spec", {})
    out = []
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            if not r.get("expr"):
                problems.append(f"{path}: rule {name}: no expr")
            else:
                out.append((f"{path}: {name}", r["expr"]))
    if not out:
        problems.append(f"{path}: no rules")
    return out


def self_test():
    """The parser on expressions whose metrics and labels are known."""
    cases = [
        ('histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{job=~"$job"}[$__rate_interval])))',
         ["a_bucket"], ["le", "route"]),
        ('sum(rate(a_total{status="5xx"}[5m])) by (job) / ignoring(reason) group_left sum(rate(b_total[5m]))',
         ["a_total", "b_total"], ["job", "reason"]),
        ('increase(x[15m]) > 0 or (x unless x offset 15m)', ["x", "x", "x"], []),
        ('up{job=~"(.+/)?guestgate"} == 0', ["up"], []),
        ('{__name__="c", rule=""} and on (instance) d', ["c", "d"], ["instance"]),
        ('sum without (pod) (e) / 1e3 + count_values("v", f) - time()', ["e", "f"], ["pod"]),
        ('max_over_time(g[1h:5m]) @ end() > bool 1', ["g"], []),
        ('sum by (rule) (rate(h_total{reason=~"upstream-.*", code!="1"}[1h30m])) # comment', ["h_total"], ["rule"]),
    ]
    bad = ["rate(x[5m]", "histogram_quantil(0.5, x)", "sum by x", "{job=\"a\"}"]
    failures = []
    for expr, names, groups in cases:
        try:
            sels, grp, _ = parse(expr)
        except PromQLError as e:
            failures.append(f"{expr}: {e}")
            continue
        if [s[0] for s in sels] != names or grp != groups:
            failures.append(f"{expr}: got {[s[0] for s in sels]} {grp}, want {names} {groups}")
    for expr in bad:
        try:
            parse(expr)
            # An unclosed call parses (PromQL would refuse it); no metric is lost.
            if expr != "rate(x[5m]":
                failures.append(f"{expr}: accepted")
        except PromQLError:
            pass
    scrape = read_scrape(
        "# TYPE a counter\na_total{route=\"x\"} 1\n# TYPE h histogram\n"
        "h_bucket{le=\"1\",route=\"x\"} 1\nh_sum{route=\"x\"} 1\nh_count{route=\"x\"} 1\n"
        "# TYPE g gauge\ng 0\n# EOF\n"
    )
    want = {"a_total", "h_bucket", "h_sum", "h_count", "g", "up"}
    if set(scrape) != want:
        failures.append(f"scrape names {sorted(scrape)}, want {sorted(want)}")
    problems = []
    check_expr("t", 'sum by (le, route) (h_bucket{route="x"}) + a{route="x"} + g{code="1"} + a_total{route="y"}',
               scrape, problems, set())
    if len(problems) != 3:
        failures.append(f"expected 3 problems (a, g's code, route y), got {problems}")
    for f in failures:
        print("self-test:", f)
    if not failures:
        print(f"self-test: {len(cases) + len(bad) + 2} parser and scrape cases passed")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrape")
    ap.add_argument("--dashboard", action="append", default=[])
    ap.add_argument("--rules", action="append", default=[])
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.scrape:
        ap.error("--scrape is required")
    exported = read_scrape(open(args.scrape, encoding="utf-8").read())
    problems = []
    count = 0
    for path in args.dashboard:
        used = set()
        for where, expr in dashboard_exprs(json.load(open(path, encoding="utf-8")), problems):
            check_expr(f"{path}: {where}", expr, exported, problems, used)
            count += 1
        for name in REQUIRED:
            if name not in used:
                problems.append(f"{path}: no panel shows {name}")
    for path in args.rules:
        for where, expr in rules_exprs(path, problems):
            check_expr(where, expr, exported, problems, set())
            count += 1
    for p in problems:
        print(p)
    if not problems:
        print(f"{count} PromQL expressions name only exported metrics, labels and values "
              f"({len(exported) - len(SYNTHETIC)} series names in the scrape)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

//! Prometheus metrics, served on the admin listener's `/metrics`.
//!
//! One registry per running proxy (not a global), so it survives reloads and
//! tests running several proxies in one process each see their own counts.
//! Labels are bounded: route kind, a fixed set of methods, status class,
//! refusal reason and configured field names.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::edit::{Changes, Op};
use crate::routing::RouteKind;

/// A label value shared with the configuration (a rule name, a pointer):
/// looking a series up clones a reference count, not the text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Shared(Arc<str>);

impl EncodeLabelValue for Shared {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    rule: Shared,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EditLabels {
    rule: Shared,
    op: &'static str,
    pointer: Shared,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleActionLabels {
    rule: Shared,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    rule: Shared,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabel {
    field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The trace exporter's counters. The exporter is one per process (it sits
/// in the process-wide log subscriber), so they are too, and every proxy's
/// registry exposes the same values.
pub struct TraceExportMetrics {
    dropped: Family<ReasonLabel, Counter>,
    failures: Counter,
}

impl TraceExportMetrics {
    /// Counts `spans` finished spans that were never exported: the queue was
    /// full (`queue_full`) or their batch failed (`export_failed`).
    pub fn dropped(&self, reason: &'static str, spans: u64) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(spans);
    }

    /// Spans dropped so far for `reason`.
    pub fn dropped_total(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&ReasonLabel { reason }).get()
    }

    /// Counts a batch the collector did not accept (unreachable, refused, timed out).
    pub fn failed(&self) {
        self.failures.inc();
    }
}

/// The process's trace exporter counters (zero while export is off).
pub fn trace_export() -> &'static TraceExportMetrics {
    static COUNTERS: OnceLock<TraceExportMetrics> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let dropped: Family<ReasonLabel, Counter> = Family::default();
        // Both series exist from the start, so alerts see 0 rather than nothing.
        for reason in ["queue_full", "export_failed"] {
            let _ = dropped.get_or_create(&ReasonLabel { reason });
        }
        TraceExportMetrics {
            dropped,
            failures: Counter::default(),
        }
    })
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// A histogram family's two series, one per route kind, looked up once:
/// observing one hashes no labels and takes no lock on the family. Both
/// series exist from the start.
struct ByRoute {
    intercepted: Histogram,
    pass_through: Histogram,
}

impl ByRoute {
    fn new(family: &Family<RouteLabel, Histogram, fn() -> Histogram>) -> Self {
        let series = |route: RouteKind| {
            family
                .get_or_create(&RouteLabel {
                    route: route.as_str(),
                })
                .clone()
        };
        Self {
            intercepted: series(RouteKind::Intercepted),
            pass_through: series(RouteKind::PassThrough),
        }
    }

    fn of(&self, route: RouteKind) -> &Histogram {
        match route {
            RouteKind::Intercepted => &self.intercepted,
            RouteKind::PassThrough => &self.pass_through,
        }
    }
}

/// The series one rule counts its requests and edits in (or, with no
/// rule, the pass-through's), each taken from its family at first use and
/// kept: counting a request or an edit then hashes no labels and takes no
/// lock. Built with the configuration generation ([`Metrics::series`]).
pub struct Series {
    route: RouteKind,
    rule: Shared,
    /// By [`METHODS`], then [`STATUS_CLASSES`].
    requests: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHODS.len()],
    /// By the rule's edit pointers.
    edits: Vec<EditSeries>,
    /// `[guest_messages]`: what happened to `to`, by [`Op`].
    to: [OnceLock<Counter>; 4],
}

/// One edit pointer's series.
struct EditSeries {
    pointer: Arc<str>,
    /// By [`Op`] (`kept` is not counted).
    by_op: [OnceLock<Counter>; 4],
    /// `[guest_messages]`: the field a strip removed.
    stripped: OnceLock<Counter>,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    edits: Family<EditLabels, Counter>,
    stripped: Family<FieldLabel, Counter>,
    to: Family<ActionLabel, Counter>,
    would_change: Family<RuleActionLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
    no_rule: Shared,
    upstream_latency: ByRoute,
    total_latency: ByRoute,
    retries: Counter,
    websocket_messages: Family<RuleActionLabels, Counter>,
    websocket_closes: Family<CodeLabel, Counter>,
    open_connections: Gauge,
    upgrades: Counter,
    open_upgrades: Gauge,
    reloads: Family<ResultLabel, Counter>,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (prefix `guestgate_`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("guestgate");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route kind (intercepted, pass_through), rule (empty when none applied), method and status class",
            requests.clone(),
        );
        let edits = Family::default();
        registry.register(
            "edits",
            "Body edits made, by rule, operation (removed, injected, overridden) and configured JSON Pointer",
            edits.clone(),
        );
        let stripped = Family::default();
        registry.register(
            "fields_stripped",
            "Top-level fields removed from guest messages ([guest_messages] route), by field name",
            stripped.clone(),
        );
        let to = Family::default();
        registry.register(
            "to",
            "What happened to the `to` field of guest messages ([guest_messages] route: injected, overridden, kept)",
            to.clone(),
        );
        let would_change = Family::default();
        registry.register(
            "report_only_would_change",
            "report_only mode: bodies forwarded unchanged that would have been changed or rejected, by rule and action (stripped, injected, overridden, rejected)",
            would_change.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "rejected",
            "Requests answered by the proxy with an error, by reason and rule (empty when none applied)",
            rejected.clone(),
        );
        let upstream_latency: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head",
            upstream_latency.clone(),
        );
        let total_latency: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request head to sending the response head",
            total_latency.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "upstream_retries",
            "Retries of the intercepted route (guest_messages.retry)",
            retries.clone(),
        );
        let websocket_messages = Family::default();
        registry.register(
            "websocket_messages",
            "Client messages on inspected WebSocket paths, by rule (empty when none matched) and action (relayed, edited, refused)",
            websocket_messages.clone(),
        );
        let websocket_closes = Family::default();
        registry.register(
            "websocket_closes",
            "Inspected WebSocket connections closed by guestgate, by close code",
            websocket_closes.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        let upgrades = Counter::default();
        registry.register(
            "upgrades",
            "Upgraded connections (WebSocket) spliced to the upstream",
            upgrades.clone(),
        );
        let open_upgrades = Gauge::default();
        registry.register(
            "open_upgrades",
            "Upgraded connections currently open",
            open_upgrades.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok, refused)",
            reloads.clone(),
        );
        // Both series exist from the start, so the first refusal is an
        // increase an alert can see.
        for result in ["ok", "refused"] {
            drop(reloads.get_or_create(&ResultLabel { result }));
        }
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while /readyz answers 200 (upstream reachable, not draining), else 0",
            ready.clone(),
        );
        let traces = trace_export();
        registry.register(
            "trace_spans_dropped",
            "Finished trace spans never exported, by reason (queue_full: the export queue was full; export_failed: their batch failed); process-wide",
            traces.dropped.clone(),
        );
        registry.register(
            "trace_export_failures",
            "Span batches the OTLP collector did not accept (unreachable, refused, timed out); process-wide",
            traces.failures.clone(),
        );
        Self {
            registry,
            requests,
            edits,
            stripped,
            to,
            would_change,
            rejected,
            no_rule: Shared(Arc::from("")),
            upstream_latency: ByRoute::new(&upstream_latency),
            total_latency: ByRoute::new(&total_latency),
            retries,
            websocket_messages,
            websocket_closes,
            open_connections,
            upgrades,
            open_upgrades,
            reloads,
            ready,
        }
    }

    fn rule_label(&self, rule: Option<&Arc<str>>) -> Shared {
        rule.map_or_else(|| self.no_rule.clone(), |r| Shared(r.clone()))
    }

    /// The series of requests under `rule` (none: pass-through, and
    /// requests refused before a rule applied) and of the edits at
    /// `pointers`, its edit pointers as configured.
    pub fn series(&self, route: RouteKind, rule: Option<&Arc<str>>, pointers: &[&str]) -> Series {
        let mut edits: Vec<EditSeries> = Vec::new();
        for pointer in pointers {
            if !edits.iter().any(|e| &*e.pointer == *pointer) {
                edits.push(EditSeries {
                    pointer: Arc::from(*pointer),
                    by_op: Default::default(),
                    stripped: OnceLock::new(),
                });
            }
        }
        Series {
            route,
            rule: self.rule_label(rule),
            requests: Default::default(),
            edits,
            to: Default::default(),
        }
    }

    /// Counts one answered request and its total latency.
    pub fn request(&self, series: &Series, method: &Method, status: StatusCode, took: Duration) {
        let (m, s) = (method_index(method), status_index(status));
        series.requests[m][s]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: series.route.as_str(),
                        rule: series.rule.clone(),
                        method: METHODS[m],
                        status: STATUS_CLASSES[s],
                    })
                    .clone()
            })
            .inc();
        self.total_latency
            .of(series.route)
            .observe(took.as_secs_f64());
    }

    /// Records how long the upstream took to answer.
    pub fn upstream_latency(&self, route: RouteKind, took: Duration) {
        self.upstream_latency.of(route).observe(took.as_secs_f64());
    }

    /// Counts what a rule's edits changed in one body. The `[guest_messages]`
    /// shorthand also counts in the series it had before rules existed.
    pub fn edited(&self, series: &Series, changes: &Changes, shorthand: bool) {
        for change in &changes.edits {
            let op = change.op as usize;
            let at = series.edits.iter().find(|e| e.pointer == change.pointer);
            let edit = || {
                self.edits
                    .get_or_create(&EditLabels {
                        rule: series.rule.clone(),
                        op: change.op.as_str(),
                        pointer: Shared(change.pointer.clone()),
                    })
                    .clone()
            };
            if change.op != Op::Kept {
                count(at.map(|at| &at.by_op[op]), edit);
            }
            if !shorthand {
                continue;
            }
            if &*change.pointer == "/to" {
                let to = || {
                    self.to
                        .get_or_create(&ActionLabel {
                            action: change.op.as_str(),
                        })
                        .clone()
                };
                series.to[op].get_or_init(to).inc();
            } else if change.op == Op::Removed {
                let stripped = || {
                    self.stripped
                        .get_or_create(&FieldLabel {
                            field: change.pointer[1..].to_owned(),
                        })
                        .clone()
                };
                count(at.map(|at| &at.stripped), stripped);
            }
        }
    }

    /// report_only: counts a change a rule did not make (`stripped`,
    /// `injected`, `overridden`, `rejected`).
    pub fn would_change(&self, rule: &Arc<str>, action: &'static str) {
        self.would_change
            .get_or_create(&RuleActionLabels {
                rule: Shared(rule.clone()),
                action,
            })
            .inc();
    }

    /// Counts a request the proxy answered with an error.
    pub fn rejected(&self, rule: Option<&Arc<str>>, reason: &'static str) {
        self.rejected
            .get_or_create(&RejectedLabels {
                rule: self.rule_label(rule),
                reason,
            })
            .inc();
    }

    /// Counts one client message on an inspected WebSocket.
    pub fn websocket_message(&self, rule: Option<&Arc<str>>, action: &'static str) {
        self.websocket_messages
            .get_or_create(&RuleActionLabels {
                rule: self.rule_label(rule),
                action,
            })
            .inc();
    }

    /// Counts an inspected WebSocket closed by guestgate with `code`.
    pub fn websocket_close(&self, code: u16) {
        self.websocket_closes
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// Counts one retry.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Records whether `/readyz` answers 200.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Marks a client connection open until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> OpenGuard {
        self.open_connections.inc();
        OpenGuard(self.open_connections.clone())
    }

    /// Counts an upgraded connection, open until the guard is dropped.
    pub fn upgrade(self: &Arc<Self>) -> OpenGuard {
        self.upgrades.inc();
        self.open_upgrades.inc();
        OpenGuard(self.open_upgrades.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements an "open" gauge when dropped, however the connection ends.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts one in the series kept in `slot` (resolved by `resolve` at first
/// use), or, for a pointer the series has no slot for, straight in its family.
fn count(slot: Option<&OnceLock<Counter>>, resolve: impl FnOnce() -> Counter) {
    match slot {
        Some(slot) => slot.get_or_init(resolve).inc(),
        None => resolve().inc(),
    };
}

/// The `method` label's values; any other method counts as `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];

/// The `status` label's values.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_labels() {
        let metrics = Arc::new(Metrics::new());
        let rule = Arc::from("webchat-send");
        let intercepted = metrics.series(RouteKind::Intercepted, Some(&rule), &["/id", "/to"]);
        let pass_through = metrics.series(RouteKind::PassThrough, None, &[]);
        metrics.request(
            &intercepted,
            &Method::POST,
            StatusCode::CREATED,
            Duration::from_millis(3),
        );
        metrics.request(
            &pass_through,
            &Method::from_bytes(b"PROPFIND").unwrap(),
            StatusCode::BAD_GATEWAY,
            Duration::from_millis(3),
        );
        // A series keeps counting in its family once resolved.
        metrics.request(
            &intercepted,
            &Method::POST,
            StatusCode::CREATED,
            Duration::from_millis(3),
        );
        let changes = Changes {
            edits: vec![
                crate::edit::Change {
                    op: Op::Removed,
                    pointer: Arc::from("/id"),
                },
                crate::edit::Change {
                    op: Op::Injected,
                    pointer: Arc::from("/to"),
                },
                // Not among the series' pointers: counted all the same.
                crate::edit::Change {
                    op: Op::Removed,
                    pointer: Arc::from("/x"),
                },
            ],
        };
        metrics.edited(&intercepted, &changes, true);
        metrics.edited(&intercepted, &changes, true);
        let guard = metrics.connection();
        let text = metrics.encode();
        assert!(text.contains(
            r#"guestgate_requests_total{route="intercepted",rule="webchat-send",method="POST",status="2xx"} 2"#
        ));
        for line in [
            r#"guestgate_edits_total{rule="webchat-send",op="removed",pointer="/id"} 2"#,
            r#"guestgate_edits_total{rule="webchat-send",op="injected",pointer="/to"} 2"#,
            r#"guestgate_edits_total{rule="webchat-send",op="removed",pointer="/x"} 2"#,
            r#"guestgate_fields_stripped_total{field="id"} 2"#,
            r#"guestgate_fields_stripped_total{field="x"} 2"#,
            r#"guestgate_to_total{action="injected"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains(r#"method="other",status="5xx"} 1"#));
        assert!(text.contains("guestgate_open_connections 1"));
        drop(guard);
        assert!(metrics.encode().contains("guestgate_open_connections 0"));
    }
}

//! Issue 14, "OpenTelemetry traces": the real binary exports to a loopback
//! OTLP receiver (protobuf over HTTP, and gRPC), and each test decodes what
//! arrived: span names and semantic-convention attributes, the parent/child
//! ids from the client's `traceparent` to the upstream's, sampling, the
//! standard `OTEL_*` variables and their precedence, and what a dead or
//! stalled collector costs (nothing a client can see; dropped spans are
//! counted). Secret-looking values sent by the client appear nowhere in the
//! exported bytes.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use tokio::net::TcpListener;

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const TEMPLATE: &str =
    "/api/v2/conversations/messaging/guest/conversations/{conversationId}/messages";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// One span as exported, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    span: Span,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    }

    fn str(&self, key: &str) -> Option<String> {
        match self.attr(key) {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(Value::IntValue(i)) => Some(i),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect()
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    fn status(&self) -> StatusCode {
        let code = self.span.status.as_ref().map_or(0, |s| s.code);
        StatusCode::try_from(code).unwrap_or(StatusCode::Unset)
    }

    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback OTLP receiver: `POST /v1/traces` (protobuf) and the gRPC
/// `TraceService/Export`, over HTTP/1.1 and h2c. Keeps every request body.
struct Collector {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<(bool, Bytes)>>>,
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let kept = kept.clone();
                        async move { Ok::<_, Infallible>(receive(request, &kept).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, bodies }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every exported request, decoded; `grpc` tells which way each came.
    fn requests(&self) -> Vec<(bool, ExportTraceServiceRequest)> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(grpc, body)| {
                let message = if *grpc { &body[5..] } else { &body[..] };
                (*grpc, ExportTraceServiceRequest::decode(message).unwrap())
            })
            .collect()
    }

    fn spans(&self) -> Vec<Exported> {
        let mut out = Vec::new();
        for (_, request) in self.requests() {
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.clone()?.value)
                    .map(|v| match v {
                        Value::StringValue(s) => s,
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        out.push(Exported {
                            service: service.clone(),
                            span,
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits (at most 15 s) until `n` spans have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Exported> {
        for _ in 0..600 {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} spans, got {:#?}", self.spans());
    }

    /// All bytes received, for the never-exported checks.
    fn raw(&self) -> Vec<u8> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.to_vec())
            .collect()
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn receive(request: Request<Incoming>, kept: &Mutex<Vec<(bool, Bytes)>>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    match path.as_str() {
        "/v1/traces" => {
            kept.lock().unwrap().push((false, body));
            Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        GRPC_EXPORT => {
            assert_eq!(body[0], 0, "an uncompressed gRPC message");
            kept.lock().unwrap().push((true, body));
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
        }
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
    }
}

/// A collector address that accepts connections and never answers.
async fn stalled_collector() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// The config with `[guest_messages]`, a rule sending to an upstream nobody
/// listens on, and `otlp` lines under `[telemetry.otlp]`.
fn config(otlp: &str) -> String {
    format!(
        "[guest_messages]\nto = {{ id = \"{QUEUE}\" }}\n\
         [upstreams.dead]\nbase_url = \"http://127.0.0.1:{}\"\n\
         [[rules]]\nname = \"dead\"\npath = \"/dead/{{id}}\"\nupstream = \"dead\"\n\
         [telemetry.otlp]\n{otlp}\n",
        closed_port()
    )
}

/// The binaries inherit the test's environment: each test states every
/// OTEL_* variable it depends on (empty counts as unset).
fn no_otel_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", ""),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ""),
        ("OTEL_SERVICE_NAME", ""),
        ("OTEL_TRACES_SAMPLER_ARG", ""),
    ]
}

fn with_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: HashMap<&str, &str> = no_otel_env().into_iter().collect();
    env.extend(extra.iter().copied());
    env.into_iter().collect()
}

fn one<'a>(spans: &'a [Exported], kind: SpanKind, what: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| s.kind() == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: expected one {kind:?} span in {spans:#?}"
    );
    found[0]
}

/// Parses `00-<trace>-<parent>-<flags>`.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn spans_follow_the_conventions_and_continue_the_trace() {
    let upstream = RecordingUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = Binary::start(
        &config(&format!("endpoint = \"{}\"", collector.url())),
        &upstream,
        &with_env(&[]),
    )
    .await;
    let path = "/api/v2/conversations/messaging/guest/conversations/SECRET-CONVERSATION/messages";
    let headers = format!(
        "Authorization: Bearer SECRET-TOKEN\r\nCookie: session=SECRET-COOKIE\r\n\
         traceparent: 00-{TRACE_ID}-{PARENT_ID}-01\r\ntracestate: vendor=opaque\r\n"
    );
    let response = raw(
        proxy.addr,
        &post(
            &format!("{path}?access_token=SECRET-QUERY"),
            &headers,
            br#"{"text":"SECRET-BODY","id":"SECRET-ID"}"#,
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body_str());
    let spans = collector.wait_for(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one(&spans, SpanKind::Server, "intercepted");
    let client = one(&spans, SpanKind::Client, "intercepted");

    assert_eq!(server.service, "guestgate");
    assert_eq!(server.span.name, format!("POST {TEMPLATE}"));
    assert_eq!(server.str("http.request.method").as_deref(), Some("POST"));
    assert_eq!(server.str("http.route").as_deref(), Some(TEMPLATE));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("url.scheme").as_deref(), Some("http"));
    assert_eq!(
        server.str("network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(
        server.str("guestgate.rule").as_deref(),
        Some("guest_messages")
    );
    assert_eq!(server.status(), StatusCode::Unset);
    // The client's trace goes on: same trace id, its span is the parent.
    assert_eq!(server.trace_id(), TRACE_ID);
    assert_eq!(server.parent_id(), PARENT_ID);
    assert_eq!(server.span.trace_state, "vendor=opaque");

    assert_eq!(client.span.name, "POST");
    assert_eq!(client.trace_id(), TRACE_ID);
    assert_eq!(client.parent_id(), server.span_id());
    assert_eq!(client.str("http.request.method").as_deref(), Some("POST"));
    assert_eq!(client.str("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(client.int("server.port"), Some(upstream.addr.port() as i64));
    assert_eq!(client.int("http.response.status_code"), Some(200));
    assert_eq!(client.status(), StatusCode::Unset);

    // The upstream sees the proxy's client span as the parent, and the
    // vendor's tracestate passed on.
    let received = upstream.only();
    let (trace, parent, flags) = traceparent(received.header("traceparent").unwrap());
    assert_eq!(
        (trace.as_str(), parent, flags.as_str()),
        (TRACE_ID, client.span_id(), "01")
    );
    assert_eq!(received.header("tracestate"), Some("vendor=opaque"));

    // Only the convention keys: no header, path, query or body anywhere.
    for span in [server, client] {
        for key in span.keys() {
            let allowed = [
                "http.request.method",
                "http.route",
                "http.response.status_code",
                "url.scheme",
                "network.protocol.version",
                "guestgate.rule",
                "server.address",
                "server.port",
                "error.type",
            ];
            assert!(
                allowed.contains(&key),
                "unexpected attribute {key} in {span:#?}"
            );
        }
    }
    let exported = String::from_utf8_lossy(&collector.raw()).into_owned();
    assert!(
        !exported.contains("SECRET-"),
        "a client value was exported: {exported:?}"
    );
}

#[tokio::test]
async fn pass_through_and_failures_have_their_own_names_and_statuses() {
    let upstream = RecordingUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = Binary::start(
        &config(&format!("endpoint = \"{}\"", collector.url())),
        &upstream,
        &with_env(&[]),
    )
    .await;
    // Pass-through, with no traceparent: a new trace.
    let response = raw(
        proxy.addr,
        b"GET /some/SECRET-PATH?q=SECRET-QUERY HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let spans = collector.wait_for(2).await;
    let server = one(&spans, SpanKind::Server, "pass-through");
    let client = one(&spans, SpanKind::Client, "pass-through");
    assert_eq!(server.span.name, "GET");
    assert_eq!(server.str("http.route"), None);
    assert_eq!(server.str("guestgate.rule"), None);
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.span.parent_span_id, Vec::<u8>::new(), "a root span");
    assert_eq!(client.parent_id(), server.span_id());
    assert_eq!(client.trace_id(), server.trace_id());
    let (trace, parent, _) = traceparent(upstream.only().header("traceparent").unwrap());
    assert_eq!((trace, parent), (server.trace_id(), client.span_id()));

    // A rule whose upstream is down: both spans failed, with the reason.
    let response = raw(proxy.addr, &post("/dead/SECRET-ID", "", b"{}")).await;
    response.assert_problem(502);
    let spans = collector.wait_for(4).await;
    let failed: Vec<Exported> = spans
        .into_iter()
        .filter(|s| s.trace_id() != server.trace_id())
        .collect();
    let server = one(&failed, SpanKind::Server, "failed");
    let client = one(&failed, SpanKind::Client, "failed");
    assert_eq!(server.span.name, "POST /dead/{id}");
    assert_eq!(server.str("guestgate.rule").as_deref(), Some("dead"));
    assert_eq!(server.int("http.response.status_code"), Some(502));
    assert_eq!(server.str("error.type").as_deref(), Some("502"));
    assert_eq!(server.status(), StatusCode::Error);
    assert_eq!(client.status(), StatusCode::Error);
    assert_eq!(
        client.str("error.type").as_deref(),
        Some("upstream-unreachable")
    );
    assert_eq!(client.int("http.response.status_code"), None);
    let exported = String::from_utf8_lossy(&collector.raw()).into_owned();
    assert!(
        !exported.contains("SECRET-"),
        "a client value was exported: {exported:?}"
    );
}

#[tokio::test]
async fn grpc_exports_the_same_spans() {
    let upstream = RecordingUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = Binary::start(
        &config(&format!(
            "endpoint = \"{}\"\nprotocol = \"grpc\"\nservice_name = \"edge\"",
            collector.url()
        )),
        &upstream,
        &with_env(&[]),
    )
    .await;
    let response = raw(proxy.addr, &post(ROUTE, "", b"{}")).await;
    assert_eq!(response.status, 200);
    let spans = collector.wait_for(2).await;
    assert!(collector.requests().iter().all(|(grpc, _)| *grpc));
    let server = one(&spans, SpanKind::Server, "grpc");
    assert_eq!(server.service, "edge");
    assert_eq!(server.span.name, format!("POST {TEMPLATE}"));
    let client = one(&spans, SpanKind::Client, "grpc");
    assert_eq!(client.parent_id(), server.span_id());
}

#[tokio::test]
async fn unsampled_traces_are_not_exported() {
    let upstream = RecordingUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = Binary::start(
        &config(&format!(
            "endpoint = \"{}\"\nsample_ratio = 0",
            collector.url()
        )),
        &upstream,
        &with_env(&[]),
    )
    .await;
    // No parent: the ratio (0) decides. An unsampled parent: not sampled.
    raw(proxy.addr, &post(ROUTE, "", b"{}")).await;
    let unsampled = "ffffffffffffffffffffffffffffffff";
    raw(
        proxy.addr,
        &post(
            ROUTE,
            &format!("traceparent: 00-{unsampled}-{PARENT_ID}-00\r\n"),
            b"{}",
        ),
    )
    .await;
    // The upstream still gets a context, marked unsampled, so it does not
    // record the trace either.
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        let (_, _, flags) = traceparent(request.header("traceparent").unwrap());
        assert_eq!(flags, "00");
    }
    assert_eq!(
        traceparent(seen[1].header("traceparent").unwrap()).0,
        unsampled
    );
    // A sampled parent is followed (parent-based), which also shows that
    // the exporter works and the two traces before were left out.
    raw(
        proxy.addr,
        &post(
            ROUTE,
            &format!("traceparent: 00-{TRACE_ID}-{PARENT_ID}-01\r\n"),
            b"{}",
        ),
    )
    .await;
    let spans = collector.wait_for(2).await;
    drop(proxy);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id() == TRACE_ID), "{spans:#?}");
}

#[tokio::test]
async fn the_standard_variables_are_honoured_and_guestgate_settings_win() {
    let upstream = RecordingUpstream::start().await;
    let from_env = Collector::start().await;
    let from_guestgate = Collector::start().await;
    let url = from_env.url();
    // Only OTEL_* variables.
    let proxy = Binary::start(
        &config(""),
        &upstream,
        &with_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
            ("OTEL_TRACES_SAMPLER_ARG", "1"),
        ]),
    )
    .await;
    raw(proxy.addr, &post(ROUTE, "", b"{}")).await;
    let spans = from_env.wait_for(2).await;
    assert!(
        spans.iter().all(|s| s.service == "edge-gateway"),
        "{spans:#?}"
    );
    drop(proxy);
    // GUESTGATE__TELEMETRY__OTLP__* and the file win over the OTEL_* ones.
    let other = from_guestgate.url();
    let proxy = Binary::start(
        &config("service_name = \"from-file\""),
        &upstream,
        &with_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_SERVICE_NAME", "edge-gateway"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("GUESTGATE__TELEMETRY__OTLP__ENDPOINT", other.as_str()),
            ("GUESTGATE__TELEMETRY__OTLP__SAMPLE_RATIO", "1"),
        ]),
    )
    .await;
    raw(proxy.addr, &post(ROUTE, "", b"{}")).await;
    let spans = from_guestgate.wait_for(2).await;
    assert!(spans.iter().all(|s| s.service == "from-file"), "{spans:#?}");
    assert_eq!(
        from_env.spans().len(),
        2,
        "nothing more went to OTEL_EXPORTER_OTLP_ENDPOINT"
    );
    // A bad endpoint is a configuration error naming where it came from.
    let (ok, _, stderr) = check(&config("endpoint = \"ftp://collector\""));
    assert!(!ok);
    assert!(stderr.contains("telemetry.otlp.endpoint: "), "{stderr}");
}

/// The same requests through a proxy exporting to a port nobody listens on
/// and through one without export: the answers are the same.
#[tokio::test]
async fn a_dead_collector_changes_nothing_for_clients() {
    let upstream = RecordingUpstream::start().await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let traced = Binary::start(
        &config(&format!("endpoint = \"{dead}\"")),
        &upstream,
        &with_env(&[]),
    )
    .await;
    let plain = Binary::start(&config(""), &upstream, &with_env(&[])).await;
    let requests: Vec<Vec<u8>> = vec![
        post(ROUTE, "X-Request-Id: r-1\r\n", br#"{"id":"x","text":"hi"}"#),
        post(ROUTE, "X-Request-Id: r-2\r\n", b"not json"),
        post("/dead/1", "X-Request-Id: r-3\r\n", b"{}"),
        b"GET /other HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\nX-Request-Id: r-4\r\n\r\n"
            .to_vec(),
    ];
    for _ in 0..3 {
        for request in &requests {
            let a = raw(traced.addr, request).await;
            let b = raw(plain.addr, request).await;
            assert_eq!(a.status, b.status, "{}\n{}", a.head, b.head);
            assert_eq!(a.body, b.body, "{}\n{}", a.body_str(), b.body_str());
            let headers = |r: &RawResponse| {
                let mut h: Vec<String> = r
                    .head
                    .lines()
                    .skip(1)
                    .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
                    .map(str::to_owned)
                    .collect();
                h.sort();
                h
            };
            assert_eq!(headers(&a), headers(&b));
        }
    }
    // Per round and proxy, the valid message and the pass-through reach it.
    assert_eq!(upstream.count(), 12);
    // The failure is counted and logged once, naming the endpoint.
    let mut failures = 0.0;
    for _ in 0..600 {
        failures = metric(
            &traced.metrics().await,
            "guestgate_trace_export_failures_total",
        );
        if failures >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(failures >= 1.0, "{}", traced.metrics().await);
    let warnings: Vec<serde_json::Value> = traced
        .log()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("trace export failed"))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{}", traced.log_text());
    assert_eq!(warnings[0]["level"], "WARN");
    assert!(
        warnings[0]["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with(&dead)),
        "{}",
        warnings[0]
    );
    assert_eq!(
        metric(
            &plain.metrics().await,
            "guestgate_trace_export_failures_total"
        ),
        0.0
    );
    // The log reads the same with export on: the request's own fields on
    // every line, nothing of the exported spans.
    let shape = |binary: &Binary| -> Vec<(String, Vec<String>)> {
        let mut lines: Vec<(String, Vec<String>)> = binary
            .log()
            .into_iter()
            .filter(|l| l["span"]["request_id"].is_string())
            .map(|l| {
                let mut keys: Vec<String> = l.as_object().unwrap().keys().cloned().collect();
                keys.extend(
                    l["span"]
                        .as_object()
                        .unwrap()
                        .keys()
                        .map(|k| format!("span.{k}")),
                );
                keys.retain(|k| k != "timestamp");
                keys.sort();
                (l["message"].as_str().unwrap_or_default().to_owned(), keys)
            })
            .collect();
        lines.sort();
        lines
    };
    let (traced_lines, plain_lines) = (shape(&traced), shape(&plain));
    assert!(
        traced_lines
            .iter()
            .any(|(message, _)| message == "upstream connect failed"),
        "{traced_lines:?}"
    );
    assert_eq!(traced_lines, plain_lines);
}

/// The value of a metric series (its first line starting with `series`).
fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

#[tokio::test]
async fn spans_a_full_queue_cannot_take_are_dropped_and_counted() {
    let upstream = RecordingUpstream::start().await;
    let stalled = stalled_collector().await;
    let proxy = Binary::start(
        &config(&format!(
            "endpoint = \"http://{stalled}\"\nmax_queue_size = 1"
        )),
        &upstream,
        &with_env(&[]),
    )
    .await;
    let before = proxy.metrics().await;
    assert_eq!(
        metric(
            &before,
            "guestgate_trace_spans_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
    // The first span's export hangs; the queue holds one more; the rest of
    // the ten spans find it full. Every request is answered all the same.
    for _ in 0..5 {
        let response = raw(proxy.addr, &post(ROUTE, "", b"{}")).await;
        assert_eq!(response.status, 200);
    }
    let mut dropped = 0.0;
    for _ in 0..400 {
        dropped = metric(
            &proxy.metrics().await,
            "guestgate_trace_spans_dropped_total{reason=\"queue_full\"}",
        );
        if dropped >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(dropped >= 1.0, "{}", proxy.metrics().await);
}

#[tokio::test]
async fn shutdown_sends_the_spans_still_queued() {
    let upstream = RecordingUpstream::start().await;
    let collector = Collector::start().await;
    let mut proxy = Binary::start(
        &config(&format!("endpoint = \"{}\"", collector.url())),
        &upstream,
        &with_env(&[]),
    )
    .await;
    let response = raw(proxy.addr, &post(ROUTE, "", b"{}")).await;
    assert_eq!(response.status, 200);
    // Stopped at once: the batch is sent by the shutdown, not its timer.
    let status = proxy.stop().await;
    assert!(status.success(), "{status}");
    assert_eq!(collector.spans().len(), 2, "{:#?}", collector.spans());
}

#[tokio::test]
async fn without_an_endpoint_the_client_trace_context_passes_untouched() {
    let upstream = RecordingUpstream::start().await;
    let proxy = Binary::start(&config(""), &upstream, &with_env(&[])).await;
    let value = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    raw(
        proxy.addr,
        &post(
            ROUTE,
            &format!("traceparent: {value}\r\ntracestate: vendor=opaque\r\n"),
            b"{}",
        ),
    )
    .await;
    let received = upstream.only();
    assert_eq!(received.header("traceparent"), Some(value.as_str()));
    assert_eq!(received.header("tracestate"), Some("vendor=opaque"));
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "guestgate_trace_spans_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
}

/// The ConfigMap's commented `[telemetry.otlp]` block, uncommented, is a
/// valid configuration that exports to the collector it names; the
/// Deployment shows the `OTEL_EXPORTER_OTLP_ENDPOINT` way.
#[test]
fn the_kubernetes_manifests_show_how_to_point_at_a_collector() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let configmap = std::fs::read_to_string(root.join("configmap.yaml")).unwrap();
    let (_, embedded) = configmap.split_once("guestgate.toml: |\n").unwrap();
    let mut toml = String::new();
    let mut uncommenting = false;
    for line in embedded.lines() {
        let line = line.strip_prefix("    ").unwrap_or(line);
        uncommenting = line == "# [telemetry.otlp]" || (uncommenting && line.starts_with("# "));
        toml.push_str(if uncommenting { &line[2..] } else { line });
        toml.push('\n');
    }
    assert!(toml.contains("\n[telemetry.otlp]\nendpoint = "), "{toml}");
    let (ok, stdout, stderr) = check(&toml);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(
            "# Trace export: http/protobuf to http://otel-collector.observability:4318/v1/traces"
        ),
        "{stdout}"
    );
    let deployment = std::fs::read_to_string(root.join("deployment.yaml")).unwrap();
    assert!(
        deployment.contains(
            "#   - name: OTEL_EXPORTER_OTLP_ENDPOINT\n          #     value: http://otel-collector.observability:4318"
        ),
        "{deployment}"
    );
}

/// Trace export is restart-only: a reload that turns it on keeps the
/// running process as it was and says so.
#[tokio::test]
async fn a_reload_does_not_change_trace_export() {
    let upstream = RecordingUpstream::start().await;
    let collector = Collector::start().await;
    let proxy = Binary::start(&config(""), &upstream, &with_env(&[])).await;
    proxy
        .reload(&config(&format!("endpoint = \"{}\"", collector.url())))
        .await;
    let warned = proxy.log().into_iter().any(|l| {
        l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("trace export settings take effect on restart"))
    });
    assert!(warned, "{}", proxy.log_text());
    let value = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    raw(
        proxy.addr,
        &post(ROUTE, &format!("traceparent: {value}\r\n"), b"{}"),
    )
    .await;
    assert_eq!(upstream.only().header("traceparent"), Some(value.as_str()));
    let mut stopping = proxy;
    assert!(stopping.stop().await.success());
    assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
}

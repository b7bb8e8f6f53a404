//! Issue 3, "Logs and secrets": the logs never carry credentials, cookies,
//! query strings, message text or client-chosen values, at any level, and
//! they do carry what an operator needs: request id, route, path, status,
//! latency, the refusal reason and the names of the fields changed.
//!
//! This is its own test binary because it installs the process-wide
//! subscriber, through `guestgate::telemetry::init_with_writer`, at `trace`:
//! hyper-util, h2 and (through the `log` bridge) rustls log their internals
//! too. One global subscriber means one format per process; it is `json`
//! here, and every assertion reads lines through [`Line`], which understands
//! the `text` format as well (checked by `the_line_reader_understands_both_formats`).
//!
//! The traffic runs once (`RUN`); each `#[test]` checks one promise on the
//! captured lines and prints the offending or missing lines when it fails.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use common::*;
use guestgate::telemetry::{LogFormat, LogSettings};
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A `MakeWriter` (through `Fn() -> Capture`) appending every line to one buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every marker starts with this, so a truncated or partial leak is caught too.
const MARKER_PREFIX: &str = "SECRET-";

/// Values that must never reach a log line, unique to this run.
struct Secrets {
    bearer: String,
    cookie: String,
    query: String,
    text: String,
    client_id: String,
    api_key: String,
    bad_body: String,
    duplicate_key: String,
}

impl Secrets {
    fn new() -> Self {
        let run = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let marker = |name: &str| format!("{MARKER_PREFIX}{name}-{run}");
        Self {
            bearer: marker("TOKEN"),
            cookie: marker("COOKIE"),
            query: marker("QUERY"),
            text: marker("MESSAGE-TEXT"),
            client_id: marker("CLIENT-ID"),
            api_key: marker("API-KEY"),
            bad_body: marker("REJECTED-BODY"),
            duplicate_key: marker("DUPLICATE-KEY"),
        }
    }

    fn all(&self) -> [(&'static str, &str); 8] {
        [
            ("Authorization bearer token", &self.bearer),
            ("Cookie value", &self.cookie),
            ("query string value", &self.query),
            ("message text", &self.text),
            ("client `id` value", &self.client_id),
            ("X-Api-Key value", &self.api_key),
            ("malformed body text", &self.bad_body),
            ("duplicate key name", &self.duplicate_key),
        ]
    }

    /// The credential headers every request carries, plus its request id.
    fn headers(&self, request_id: &str) -> String {
        format!(
            "Authorization: Bearer {}\r\nCookie: session={}; theme=dark\r\nX-Api-Key: {}\r\nX-Request-Id: {request_id}\r\nContent-Type: application/json\r\n",
            self.bearer, self.cookie, self.api_key
        )
    }

    /// A guest message with a client `id` (stripped) and no `to` (injected).
    fn message(&self) -> String {
        format!(
            r#"{{"id":"{}","from":{{"id":"guest-1","nickname":"Guest"}},"text":"{}"}}"#,
            self.client_id, self.text
        )
    }

    fn query(&self) -> String {
        format!("access_token={}&pageSize=25", self.query)
    }
}

/// What one request must leave in the logs.
struct Expected {
    request_id: &'static str,
    route: &'static str,
    path: &'static str,
    status: u16,
    /// The `reason` of the "request refused" line, for the proxy's own answers.
    refused: Option<&'static str>,
}

const PASS_PATH: &str = "/api/v2/webchat/guest/conversations/c/members/m/messages";

const EXPECTED: [Expected; 7] = [
    Expected {
        request_id: "logs-intercepted",
        route: "intercepted",
        path: ROUTE,
        status: 200,
        refused: None,
    },
    Expected {
        request_id: "logs-pass-through",
        route: "pass_through",
        path: PASS_PATH,
        status: 200,
        refused: None,
    },
    Expected {
        request_id: "logs-malformed-json",
        route: "intercepted",
        path: ROUTE,
        status: 400,
        refused: Some("invalid-body"),
    },
    Expected {
        request_id: "logs-duplicate-key",
        route: "intercepted",
        path: ROUTE,
        status: 400,
        refused: Some("invalid-body"),
    },
    Expected {
        request_id: "logs-upstream-unreachable",
        route: "intercepted",
        path: ROUTE,
        status: 502,
        refused: Some("upstream-unreachable"),
    },
    Expected {
        request_id: "logs-upstream-broke",
        route: "pass_through",
        path: PASS_PATH,
        status: 502,
        refused: Some("upstream-failed"),
    },
    Expected {
        request_id: "logs-tls-h2",
        route: "intercepted",
        path: ROUTE,
        status: 200,
        refused: None,
    },
];

struct Run {
    secrets: Secrets,
    logs: String,
}

static RUN: LazyLock<Run> = LazyLock::new(|| {
    // `init` lets RUST_LOG win over `log.level`; this test needs `trace`.
    // SAFETY: this runs before the runtime below exists, while every other
    // test thread of this binary is blocked on `RUN`; nothing else reads or
    // writes the environment concurrently.
    unsafe { std::env::remove_var("RUST_LOG") };
    let capture = Capture::default();
    let writer = capture.clone();
    guestgate::telemetry::init_with_writer(
        &LogSettings {
            format: LogFormat::Json,
            level: "trace".into(),
        },
        move || writer.clone(),
    );
    let secrets = Secrets::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(traffic(&secrets));
    drop(runtime);
    Run {
        secrets,
        logs: capture.text(),
    }
});

/// Sends every request of [`EXPECTED`] with all the secrets on board.
async fn traffic(secrets: &Secrets) {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let query = secrets.query();

    let ok = raw(
        proxy.addr,
        &post(
            &format!("{ROUTE}?{query}"),
            &secrets.headers("logs-intercepted"),
            secrets.message().as_bytes(),
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}\n{}", ok.head, ok.body_str());
    // The secrets really went through the proxy (so its code saw them).
    let got = upstream.only();
    assert_eq!(got.uri, format!("{ROUTE}?{query}"));
    assert!(got.body_str().contains(&secrets.text), "{}", got.body_str());
    assert!(!got.body_str().contains(&secrets.client_id));
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {}", secrets.bearer).as_str())
    );

    let pass = raw(
        proxy.addr,
        &post(
            &format!("{PASS_PATH}?{query}"),
            &secrets.headers("logs-pass-through"),
            secrets.message().as_bytes(),
        ),
    )
    .await;
    assert_eq!(pass.status, 200, "{}\n{}", pass.head, pass.body_str());
    assert_eq!(
        upstream.requests().last().unwrap().body_str(),
        secrets.message()
    );

    let malformed = format!(
        r#"{{"id":"{}","text":"{}""#,
        secrets.client_id, secrets.bad_body
    );
    raw(
        proxy.addr,
        &post(
            &format!("{ROUTE}?{query}"),
            &secrets.headers("logs-malformed-json"),
            malformed.as_bytes(),
        ),
    )
    .await
    .assert_problem(400);

    // The refusal's detail names the key (to the client); the logs must not.
    let duplicate = format!(r#"{{"{0}":1,"{0}":2}}"#, secrets.duplicate_key);
    raw(
        proxy.addr,
        &post(
            &format!("{ROUTE}?{query}"),
            &secrets.headers("logs-duplicate-key"),
            duplicate.as_bytes(),
        ),
    )
    .await
    .assert_problem(400);
    assert_eq!(upstream.count(), 2, "refused requests reached the upstream");

    let dead = closed_port();
    let unreachable_proxy = proxy_to(&format!("http://127.0.0.1:{dead}"), &[]).await;
    raw(
        unreachable_proxy.addr,
        &post(
            &format!("{ROUTE}?{query}"),
            &secrets.headers("logs-upstream-unreachable"),
            secrets.message().as_bytes(),
        ),
    )
    .await
    .assert_problem(502);

    let breaking = breaking_upstream().await;
    let broken_proxy = proxy_to(&format!("http://{breaking}"), &[]).await;
    raw(
        broken_proxy.addr,
        &post(
            &format!("{PASS_PATH}?{query}"),
            &secrets.headers("logs-upstream-broke"),
            secrets.message().as_bytes(),
        ),
    )
    .await
    .assert_problem(502);

    tls_h2_message(&upstream, secrets).await;

    proxy.shutdown().await;
    unreachable_proxy.shutdown().await;
    broken_proxy.shutdown().await;
}

/// An upstream that reads the request head and closes without answering.
async fn breaking_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while find(&seen, b"\r\n\r\n").is_none() {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// The guest message over TLS and HTTP/2 (ALPN), so rustls and h2 log too.
async fn tls_h2_message(upstream: &RecordingUpstream, secrets: &Secrets) {
    let dir = std::env::temp_dir().join(format!("guestgate-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let proxy = proxy(
        upstream,
        &[
            (
                "GUESTGATE__SERVER__TLS__CERT_FILE",
                &cert_file.display().to_string(),
            ),
            (
                "GUESTGATE__SERVER__TLS__KEY_FILE",
                &key_file.display().to_string(),
            ),
        ],
    )
    .await;
    let tls = client_tls_trusting(cert.cert.der());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let url = format!(
        "https://localhost:{}{ROUTE}?{}",
        proxy.addr.port(),
        secrets.query()
    );
    let response = client
        .request(
            Request::post(url)
                .header("authorization", format!("Bearer {}", secrets.bearer))
                .header("cookie", format!("session={}", secrets.cookie))
                .header("x-api-key", &secrets.api_key)
                .header("x-request-id", "logs-tls-h2")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(secrets.message())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{body:?}");
    drop(client);
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------ reading lines

/// One log line, JSON or text, read as `field -> value` (span fields
/// included; string values without quotes).
struct Line<'a> {
    raw: &'a str,
    json: bool,
    level: Option<String>,
    fields: BTreeMap<String, String>,
}

impl<'a> Line<'a> {
    fn parse(raw: &'a str) -> Self {
        match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Object(object)) => Self::from_json(raw, object),
            _ => Self::from_text(raw),
        }
    }

    fn from_json(raw: &'a str, object: serde_json::Map<String, serde_json::Value>) -> Self {
        fn add(fields: &mut BTreeMap<String, String>, key: &str, value: &serde_json::Value) {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            fields.entry(key.to_owned()).or_insert(value);
        }
        let mut fields = BTreeMap::new();
        for (key, value) in &object {
            match (key.as_str(), value) {
                // Unflattened events and the current span nest their fields.
                ("fields" | "span", serde_json::Value::Object(inner)) => {
                    for (k, v) in inner {
                        if k != "name" {
                            add(&mut fields, k, v);
                        }
                    }
                }
                ("spans", _) => {}
                _ => add(&mut fields, key, value),
            }
        }
        Self {
            raw,
            json: true,
            level: fields.get("level").cloned(),
            fields,
        }
    }

    /// `2026-...Z  INFO request{request_id=a route=intercepted}: request finished status=200 latency_ms=1.2`
    fn from_text(raw: &'a str) -> Self {
        let level = raw
            .split_whitespace()
            .find(|w| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(w))
            .map(str::to_owned);
        let mut fields = BTreeMap::new();
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let key_start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let boundary = key_start == 0 || matches!(bytes[key_start - 1], b' ' | b'{');
            if i > key_start && boundary && bytes.get(i) == Some(&b'=') {
                let key = &raw[key_start..i];
                i += 1;
                let value_start = i;
                let (mut depth, mut quoted) = (0i32, false);
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if quoted => i += 1,
                        b'"' => quoted = !quoted,
                        b'[' | b'(' if !quoted => depth += 1,
                        b']' | b')' if !quoted => depth -= 1,
                        b' ' | b'}' if !quoted && depth <= 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                let value = &raw[value_start..i.min(bytes.len())];
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                fields
                    .entry(key.to_owned())
                    .or_insert_with(|| value.to_owned());
            } else if i == key_start {
                i += 1;
            }
        }
        Self {
            raw,
            json: false,
            level,
            fields,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// True when the line's message is `message` (text lines: contains it).
    fn says(&self, message: &str) -> bool {
        if self.json {
            self.get("message") == Some(message)
        } else {
            self.raw.contains(message)
        }
    }
}

fn lines() -> Vec<Line<'static>> {
    RUN.logs.lines().map(Line::parse).collect()
}

fn of_request<'l>(lines: &'l [Line<'static>], request_id: &str) -> Vec<&'l Line<'static>> {
    lines
        .iter()
        .filter(|l| l.get("request_id") == Some(request_id))
        .collect()
}

fn show(lines: &[&Line]) -> String {
    lines.iter().map(|l| format!("  {}\n", l.raw)).collect()
}

/// Panics with every failure, each followed by the lines it is about.
fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} problem(s) in the captured logs ({} lines):\n\n{}",
        failures.len(),
        RUN.logs.lines().count(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------- checks

#[test]
fn trace_level_was_in_force() {
    let lines = lines();
    let count = |level: &str| {
        lines
            .iter()
            .filter(|l| l.level.as_deref() == Some(level))
            .count()
    };
    let (trace, debug) = (count("TRACE"), count("DEBUG"));
    assert!(
        trace > 0 && debug > 0,
        "expected TRACE and DEBUG lines (is RUST_LOG overriding log.level?): {trace} TRACE, {debug} DEBUG in\n{}",
        RUN.logs
    );
    // The TLS handshake logged through the `log` bridge (rustls) or tracing.
    let tls_lines = lines
        .iter()
        .filter(|l| {
            let lower = l.raw.to_ascii_lowercase();
            lower.contains("tls") || lower.contains("ciphersuite") || lower.contains("alpn")
        })
        .count();
    assert!(tls_lines > 0, "no TLS internals were logged:\n{}", RUN.logs);
}

#[test]
fn no_secret_reaches_any_log_line() {
    let mut failures = Vec::new();
    for line in RUN.logs.lines() {
        let named: Vec<&str> = RUN
            .secrets
            .all()
            .into_iter()
            .filter(|(_, marker)| line.contains(marker))
            .map(|(what, _)| what)
            .collect();
        if !named.is_empty() {
            failures.push(format!("leaked {}:\n  {line}\n", named.join(", ")));
        } else if line.contains(MARKER_PREFIX) {
            failures.push(format!("leaked part of a secret:\n  {line}\n"));
        }
    }
    report(failures);
}

#[test]
fn every_request_logs_its_id_route_path_status_and_latency() {
    let lines = lines();
    let mut failures = Vec::new();
    for expected in &EXPECTED {
        let ours = of_request(&lines, expected.request_id);
        let finished: Vec<&Line> = ours
            .iter()
            .copied()
            .filter(|l| l.says("request finished"))
            .collect();
        let [line] = finished.as_slice() else {
            failures.push(format!(
                "{}: expected one \"request finished\" line carrying request_id={}, found {}; the request's lines:\n{}",
                expected.request_id,
                expected.request_id,
                finished.len(),
                show(&ours)
            ));
            continue;
        };
        let mut problems = Vec::new();
        let status = expected.status.to_string();
        for (key, want) in [
            ("route", expected.route),
            ("path", expected.path),
            ("status", status.as_str()),
        ] {
            if line.get(key) != Some(want) {
                problems.push(format!("{key} = {:?}, expected {want:?}", line.get(key)));
            }
        }
        // Milliseconds rounded to the microsecond: `0.379`, not `0.37925200000000003`.
        match line.get("latency_ms") {
            Some(text)
                if text.parse::<f64>().is_ok_and(|ms| ms >= 0.0)
                    && text
                        .split_once('.')
                        .is_none_or(|(_, decimals)| decimals.len() <= 3) => {}
            other => problems.push(format!(
                "latency_ms = {other:?}, expected milliseconds with at most 3 decimals"
            )),
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  {}\n",
                expected.request_id,
                problems.join("; "),
                line.raw
            ));
        }
    }
    report(failures);
}

#[test]
fn refusals_log_their_reason_and_only_refusals_do() {
    let lines = lines();
    let mut failures = Vec::new();
    for expected in &EXPECTED {
        let ours = of_request(&lines, expected.request_id);
        let reasons: Vec<&str> = ours
            .iter()
            .filter(|l| l.says("request refused"))
            .map(|l| l.get("reason").unwrap_or("<no reason field>"))
            .collect();
        let want: Vec<&str> = expected.refused.into_iter().collect();
        if reasons != want {
            failures.push(format!(
                "{}: \"request refused\" reasons {reasons:?}, expected {want:?}; the request's lines:\n{}",
                expected.request_id,
                show(&ours)
            ));
        }
    }
    report(failures);
}

#[test]
fn upstream_failures_are_logged_with_the_request() {
    let lines = lines();
    let mut failures = Vec::new();
    for (request_id, message) in [
        ("logs-upstream-unreachable", "upstream connect failed"),
        ("logs-upstream-broke", "upstream request failed"),
    ] {
        let ours = of_request(&lines, request_id);
        let found: Vec<&&Line> = ours.iter().filter(|l| l.says(message)).collect();
        match found.as_slice() {
            [line] if line.level.as_deref() == Some("WARN") && line.get("error").is_some() => {}
            _ => failures.push(format!(
                "{request_id}: expected one WARN \"{message}\" line with an error field; the request's lines:\n{}",
                show(&ours)
            )),
        }
    }
    report(failures);
}

#[test]
fn edited_bodies_log_the_rule_and_the_pointers_changed() {
    let lines = lines();
    let mut failures = Vec::new();
    for request_id in ["logs-intercepted", "logs-tls-h2"] {
        let ours = of_request(&lines, request_id);
        let edited: Vec<&&Line> = ours.iter().filter(|l| l.says("body edited")).collect();
        let [line] = edited.as_slice() else {
            failures.push(format!(
                "{request_id}: expected one \"body edited\" line, found {}; the request's lines:\n{}",
                edited.len(),
                show(&ours)
            ));
            continue;
        };
        // `id` was removed, `to` was injected (the body had none).
        let got = (
            line.get("rule"),
            line.get("removed"),
            line.get("injected"),
            line.get("overridden"),
        );
        let want = (
            Some("guest_messages"),
            Some(r#"["/id"]"#),
            Some(r#"["/to"]"#),
            Some("[]"),
        );
        if got != want {
            failures.push(format!(
                "{request_id}: expected (rule, removed, injected, overridden) {want:?}, got {got:?}:\n  {}\n",
                line.raw
            ));
        }
    }
    report(failures);
}

/// The reader above against real `text` output, produced by a local
/// subscriber set up like `telemetry`'s text branch (the global one is json).
#[test]
fn the_line_reader_understands_both_formats() {
    let emit = |json: bool| {
        let capture = Capture::default();
        let writer = capture.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_target(false)
            .with_ansi(false);
        let emit = || {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                method = "POST",
                path = "/a/b",
                route = tracing::field::Empty,
            );
            span.record("route", "intercepted");
            span.in_scope(|| {
                tracing::info!(
                    stripped = ?vec!["id", "x y"],
                    to = "injected",
                    "guest message sanitized"
                );
                tracing::warn!(error = %"client error (Connect)", "upstream connect failed");
                tracing::info!(status = 200u16, latency_ms = 1.5f64, "request finished");
            });
        };
        if json {
            let subscriber = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        capture.text()
    };
    for json in [false, true] {
        let text = emit(json);
        let lines: Vec<Line> = text.lines().map(Line::parse).collect();
        assert_eq!(lines.len(), 3, "{text}");
        for line in &lines {
            assert_eq!(line.json, json, "{}", line.raw);
            assert_eq!(line.get("request_id"), Some("r-1"), "{}", line.raw);
            assert_eq!(line.get("route"), Some("intercepted"), "{}", line.raw);
            assert_eq!(line.get("path"), Some("/a/b"), "{}", line.raw);
        }
        assert!(lines[0].says("guest message sanitized"), "{}", lines[0].raw);
        assert_eq!(lines[0].get("stripped"), Some(r#"["id", "x y"]"#));
        assert_eq!(lines[0].get("to"), Some("injected"));
        assert_eq!(lines[1].level.as_deref(), Some("WARN"), "{}", lines[1].raw);
        // A Display value with spaces is not delimited in text; only its start is read.
        assert!(
            lines[1]
                .get("error")
                .is_some_and(|e| e.starts_with("client")),
            "{}",
            lines[1].raw
        );
        assert!(lines[2].says("request finished"), "{}", lines[2].raw);
        assert_eq!(lines[2].get("status"), Some("200"), "{}", lines[2].raw);
        assert_eq!(lines[2].get("latency_ms"), Some("1.5"), "{}", lines[2].raw);
    }
}

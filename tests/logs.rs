//! Logs never carry secrets or message text, at any level, and do carry what
//! an operator needs: request id, route, status, latency and changed fields.
//!
//! Its own test binary: it installs the global subscriber at `trace`, so the
//! internals of hyper, h2 and rustls log too.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use guestgate::config::{LogFormat, LogSettings};

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

const SECRETS: [&str; 6] = [
    "SECRET-BEARER-7f3a",
    "SECRET-COOKIE-91c2",
    "SECRET-QUERY-55ab",
    "SECRET-MESSAGE-TEXT-e0d4",
    "SECRET-CLIENT-ID-b7e1",
    "SECRET-BAD-BODY-4c9d",
];

#[tokio::test]
async fn logs_have_no_secrets_and_say_what_happened() {
    // SAFETY: set before any other thread of this test binary reads the environment.
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

    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let headers = format!(
        "Authorization: Bearer {}\r\nCookie: session={}\r\nX-Request-Id: trace-me-42\r\n",
        SECRETS[0], SECRETS[1]
    );
    let body = format!(
        r#"{{"id":"{}","from":{{"id":"g"}},"text":"{}"}}"#,
        SECRETS[4], SECRETS[3]
    );
    let route_with_query = format!("{ROUTE}?access_token={}", SECRETS[2]);
    let ok = raw(
        proxy.addr,
        &post(&route_with_query, &headers, body.as_bytes()),
    )
    .await;
    assert_eq!(ok.status, 200);
    let pass = raw(
        proxy.addr,
        &post(
            &format!("/api/v2/other?access_token={}", SECRETS[2]),
            &headers,
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(pass.status, 200);
    let bad = raw(
        proxy.addr,
        &post(
            ROUTE,
            &headers,
            format!("{{\"text\":\"{}\"", SECRETS[5]).as_bytes(),
        ),
    )
    .await;
    bad.assert_problem(400);
    let failing = proxy_to("http://127.0.0.1:9", &[]).await;
    let unreachable = raw(failing.addr, &post(ROUTE, &headers, body.as_bytes())).await;
    unreachable.assert_problem(502);
    proxy.shutdown().await;
    failing.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty());
    for line in logs.lines() {
        for secret in SECRETS {
            assert!(!line.contains(secret), "{secret} leaked in: {line}");
        }
        assert!(
            !line.to_ascii_lowercase().contains("bearer"),
            "credential in: {line}"
        );
    }
    let ours: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["span"]["request_id"] == "trace-me-42")
        .collect();
    let finished: Vec<&serde_json::Value> = ours
        .iter()
        .filter(|v| v["message"] == "request finished")
        .collect();
    assert_eq!(finished.len(), 4, "one line per request:\n{logs}");
    let statuses: Vec<u64> = finished
        .iter()
        .map(|v| v["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 400, 502]);
    assert!(finished.iter().all(|v| v["latency_ms"].is_number()));
    let routes: Vec<&str> = finished
        .iter()
        .map(|v| v["span"]["route"].as_str().unwrap())
        .collect();
    assert_eq!(
        routes,
        ["intercepted", "pass_through", "intercepted", "intercepted"]
    );
    let sanitized = ours
        .iter()
        .find(|v| v["message"] == "guest message sanitized")
        .expect("the change is logged");
    assert_eq!(sanitized["stripped"], r#"["id"]"#);
    assert_eq!(sanitized["to"], "injected");
    let refused: Vec<&str> = ours
        .iter()
        .filter(|v| v["message"] == "request refused")
        .map(|v| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["invalid-body", "upstream-unreachable"]);
}

//! Operations: admin endpoints, metrics, reload, report_only, per-origin
//! targets, CORS, h2c, TLS with ALPN, WebSocket and retries, each against a
//! real recording upstream on loopback.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const DIRTY: &str = r#"{"id":"client-id","from":{"id":"guest-1"},"text":"hello"}"#;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = client.request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn post_message(addr: std::net::SocketAddr) -> http::request::Builder {
    Request::post(format!("http://{addr}{ROUTE}")).header("content-type", "application/json")
}

async fn get_text(client: &HttpClient, url: String) -> (StatusCode, String) {
    let (status, _, body) = send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of one Prometheus series: `name` with at least `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let ok = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse().unwrap())
        })
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("guestgate-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Starts the proxy from a config file plus an explicit environment, so a
/// reload reads the same layers.
async fn proxy_from_file(file: &Path, upstream: &RecordingUpstream) -> guestgate::Running {
    let env = HashMap::from([
        ("GUESTGATE__SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("GUESTGATE__ADMIN__LISTEN".into(), "127.0.0.1:0".into()),
        (
            "GUESTGATE__UPSTREAM__BASE_URL".into(),
            format!("http://{}", upstream.addr),
        ),
    ]);
    let source = guestgate::gateway::ConfigSource {
        file: Some(file.to_owned()),
        env: Some(env),
    };
    let config = source.load().expect("valid config");
    guestgate::start_with_source(config, source)
        .await
        .expect("proxy starts")
}

fn to_of(recorded: &Recorded) -> Value {
    serde_json::from_slice::<Value>(&recorded.body).unwrap()["to"].clone()
}

// ---------------------------------------------------------------- admin

#[tokio::test]
async fn metrics_are_scraped_and_count_what_happened() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let client = http1();
    let (status, _, _) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let with_to = r#"{"text":"x","to":{"id":"chosen-by-guest"}}"#;
    send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from(with_to)))
            .unwrap(),
    )
    .await;
    let (status, _, _) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from("[1,2]")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get_text(
        &client,
        format!("http://{}/api/v2/users/me?x=1", proxy.addr),
    )
    .await;
    assert_eq!(status, 200);

    let admin = proxy.admin_addr.unwrap();
    let (status, text) = get_text(&client, format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    let m = |name, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} in\n{text}"))
    };
    let intercepted = [("route", "intercepted"), ("method", "POST")];
    assert_eq!(
        m(
            "guestgate_requests_total",
            &[intercepted[0], intercepted[1], ("status", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "guestgate_requests_total",
            &[intercepted[0], intercepted[1], ("status", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        m(
            "guestgate_requests_total",
            &[
                ("route", "pass_through"),
                ("method", "GET"),
                ("status", "2xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        m("guestgate_fields_stripped_total", &[("field", "id")]),
        1.0
    );
    assert_eq!(m("guestgate_to_total", &[("action", "injected")]), 1.0);
    assert_eq!(m("guestgate_to_total", &[("action", "overridden")]), 1.0);
    assert_eq!(
        m("guestgate_rejected_total", &[("reason", "invalid-body")]),
        1.0
    );
    assert_eq!(
        m(
            "guestgate_upstream_duration_seconds_count",
            &[("route", "intercepted")]
        ),
        2.0
    );
    assert_eq!(
        m(
            "guestgate_request_duration_seconds_count",
            &[("route", "intercepted")]
        ),
        3.0
    );
    assert!(m("guestgate_open_connections", &[]) >= 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn healthz_and_readyz_follow_the_upstream() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__ADMIN__READINESS_INTERVAL_SECS", "1")],
    )
    .await;
    let client = http1();
    let admin = proxy.admin_addr.unwrap();
    assert_eq!(
        get_text(&client, format!("http://{admin}/healthz")).await.0,
        200
    );
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        ready = get_text(&client, format!("http://{admin}/readyz")).await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, 200);
    assert!(proxy.metrics().contains("\nguestgate_ready 1\n"));
    // The readiness checks connected, but sent no request.
    assert_eq!(upstream.count(), 0);
    proxy.shutdown().await;

    let proxy = proxy_to(&format!("http://127.0.0.1:{}", closed_port()), &[]).await;
    let admin = proxy.admin_addr.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = get_text(&client, format!("http://{admin}/readyz")).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not ready"), "{text}");
    assert!(proxy.metrics().contains("\nguestgate_ready 0\n"));
    assert_eq!(
        get_text(&client, format!("http://{admin}/healthz")).await.0,
        200
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- reload

#[tokio::test]
async fn reload_under_load_loses_no_request() {
    let upstream = RecordingUpstream::start().await;
    let dir = temp_dir("reload");
    let file = dir.join("guestgate.toml");
    std::fs::write(&file, "[guest_messages]\nto = { id = \"queue-a\" }\n").unwrap();
    let proxy = Arc::new(proxy_from_file(&file, &upstream).await);
    // Both series exist before any reload, so an alert sees the first refusal.
    for result in ["ok", "refused"] {
        let count = metric(
            &proxy.metrics(),
            "guestgate_config_reloads_total",
            &[("result", result)],
        );
        assert_eq!(count, Some(0.0), "{result}");
    }
    let addr = proxy.addr;
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (sent, stop) = (sent.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = http1();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _, body) = send(
                    &client,
                    post_message(addr)
                        .body(Full::new(Bytes::from(DIRTY)))
                        .unwrap(),
                )
                .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.push((status, body));
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, "[guest_messages]\nto = { id = \"queue-b\" }\n").unwrap();
    proxy.reload().expect("valid new config");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An invalid config is refused and queue-b stays in force.
    std::fs::write(&file, "[guest_messages]\nto = { }\n").unwrap();
    let refused = proxy.reload().unwrap_err();
    assert!(
        refused.problems[0].starts_with("guest_messages.to:"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        assert_eq!(worker.await.unwrap(), vec![]);
    }
    let requests = upstream.requests();
    assert_eq!(
        requests.len(),
        sent.load(Ordering::Relaxed),
        "every request reached the upstream"
    );
    let tos: Vec<Value> = requests.iter().map(to_of).collect();
    let first_b = tos
        .iter()
        .position(|t| *t == json!({"id": "queue-b"}))
        .expect("the new target was used");
    assert!(first_b > 0, "the old target was used before the reload");
    assert!(
        tos[..first_b]
            .iter()
            .all(|t| *t == json!({"id": "queue-a"}))
    );
    // Concurrent requests that started before the reload may finish after
    // later ones, but never later than a handful of positions.
    let late_a = tos[first_b..]
        .iter()
        .filter(|t| **t == json!({"id": "queue-a"}))
        .count();
    assert!(late_a <= 8, "{late_a} old-config requests after the switch");
    assert!(
        tos.iter()
            .all(|t| *t == json!({"id": "queue-a"}) || *t == json!({"id": "queue-b"}))
    );
    assert_eq!(tos.last().unwrap(), &json!({"id": "queue-b"}));
    let metrics = proxy.metrics();
    assert_eq!(
        metric(
            &metrics,
            "guestgate_config_reloads_total",
            &[("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "guestgate_config_reloads_total",
            &[("result", "refused")]
        ),
        Some(1.0)
    );
    Arc::into_inner(proxy).unwrap().shutdown().await;
}

/// The real binary: SIGHUP reloads, and so does a changed file on its own.
#[tokio::test]
async fn the_binary_reloads_on_sighup_and_on_file_change() {
    let upstream = RecordingUpstream::start().await;
    let config = |queue: &str, watch: u32| {
        format!(
            "[admin]\nconfig_watch_interval_secs = {watch}\n[guest_messages]\nto = {{ id = \"{queue}\" }}\n"
        )
    };
    // The watch interval comes from the file, not the harness's variable.
    let mut proxy = Binary::start(
        &config("queue-a", 0),
        &upstream,
        &[("GUESTGATE__ADMIN__CONFIG_WATCH_INTERVAL_SECS", "")],
    )
    .await;
    let addr = proxy.addr;
    let client = http1();
    let last_to = |expect: &'static str| {
        let client = client.clone();
        let upstream = &upstream;
        async move {
            for _ in 0..100 {
                if let Ok(response) = client
                    .request(
                        post_message(addr)
                            .body(Full::new(Bytes::from(DIRTY)))
                            .unwrap(),
                    )
                    .await
                {
                    let _ = response.into_body().collect().await;
                    if upstream.requests().last().map(to_of) == Some(json!({"id": expect})) {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(last_to("queue-a").await, "proxy started with queue-a");
    proxy.reload(&config("queue-b", 1)).await;
    assert!(last_to("queue-b").await, "SIGHUP applied queue-b");
    // The reloaded config watches its file every second: no signal needed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy.write_config(&config("queue-c", 1));
    assert!(last_to("queue-c").await, "file change applied queue-c");
    let status = proxy.stop().await;
    assert!(status.success(), "graceful exit: {status}");
}

// ---------------------------------------------------------------- sanitizing modes

#[tokio::test]
async fn report_only_forwards_unchanged_and_counts() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__GUEST_MESSAGES__REPORT_ONLY", "true")],
    )
    .await;
    let client = http1();
    let (status, _, _) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from("not json")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 200,
        "report_only forwards even what it would reject"
    );
    let requests = upstream.requests();
    assert_eq!(requests[0].body_str(), DIRTY);
    assert_eq!(requests[1].body_str(), "not json");
    let metrics = proxy.metrics();
    let would = |action| {
        metric(
            &metrics,
            "guestgate_report_only_would_change_total",
            &[("action", action)],
        )
    };
    assert_eq!(would("stripped"), Some(1.0));
    assert_eq!(would("injected"), Some(1.0));
    assert_eq!(would("rejected"), Some(1.0));
    assert_eq!(
        metric(
            &metrics,
            "guestgate_fields_stripped_total",
            &[("field", "id")]
        ),
        None
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn targets_follow_the_origin_with_a_default() {
    let upstream = RecordingUpstream::start().await;
    let dir = temp_dir("origins");
    let file = dir.join("guestgate.toml");
    std::fs::write(
        &file,
        r#"[guest_messages]
to = { id = "queue-default" }
[guest_messages.to_by_origin]
"https://shop.example.com" = { id = "queue-shop" }
"support.example.com" = { id = "queue-support", type = "queue" }
"#,
    )
    .unwrap();
    let proxy = proxy_from_file(&file, &upstream).await;
    let client = http1();
    for (origin, host) in [
        (Some("https://shop.example.com"), None),
        (Some("https://SUPPORT.example.com"), None),
        (None, Some("support.example.com:8443")),
        (Some("https://other.example.com"), None),
        (None, None),
    ] {
        let mut request = post_message(proxy.addr);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let (status, _, _) = send(
            &client,
            request.body(Full::new(Bytes::from(DIRTY))).unwrap(),
        )
        .await;
        assert_eq!(status, 200);
    }
    let tos: Vec<Value> = upstream.requests().iter().map(to_of).collect();
    assert_eq!(
        tos,
        [
            json!({"id": "queue-shop"}),
            json!({"id": "queue-support", "type": "queue"}),
            json!({"id": "queue-support", "type": "queue"}),
            json!({"id": "queue-default"}),
            json!({"id": "queue-default"}),
        ]
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- CORS

#[tokio::test]
async fn cors_preflight_is_answered_by_the_proxy() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[
            (
                "GUESTGATE__CORS__ALLOWED_ORIGINS",
                "https://widget.example.org, https://*.shop.example",
            ),
            ("GUESTGATE__CORS__MAX_AGE_SECS", "900"),
        ],
    )
    .await;
    let client = http1();
    let preflight = |origin: &str| {
        Request::options(format!("http://{}{ROUTE}", proxy.addr))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for origin in ["https://widget.example.org", "https://eu.shop.example"] {
        let (status, headers, _) = send(&client, preflight(origin)).await;
        assert!(status.is_success(), "{status}");
        assert_eq!(headers["access-control-allow-origin"], origin);
        let methods = headers["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("POST"), "{methods}");
        let allowed = headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("content-type") && allowed.contains("authorization"));
        assert_eq!(headers["access-control-max-age"], "900");
        assert!(headers.contains_key("x-request-id"));
    }
    for origin in ["https://evil.example", "https://shop.example"] {
        let (_, headers, _) = send(&client, preflight(origin)).await;
        let cors: Vec<_> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{origin}: {cors:?}");
    }
    assert_eq!(upstream.count(), 0, "preflights never reach the upstream");
    // An OPTIONS that is not a preflight is the upstream's business.
    let (status, headers, _) = send(
        &client,
        Request::options(format!("http://{}/api/v2/things", proxy.addr))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "recording");
    assert_eq!(upstream.only().method, "OPTIONS");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_credentialed_cross_origin_post_is_sanitized_and_readable() {
    // The upstream answers with its own permissive CORS, which must not leak.
    let upstream = RecordingUpstream::start_with(|_| {
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("access-control-allow-origin", "*")
            .body(Full::new(Bytes::from_static(br#"{"id":"m-1"}"#)))
            .unwrap()
    })
    .await;
    let proxy = proxy(
        &upstream,
        &[
            (
                "GUESTGATE__CORS__ALLOWED_ORIGINS",
                "https://widget.example.org",
            ),
            ("GUESTGATE__CORS__ALLOW_CREDENTIALS", "true"),
        ],
    )
    .await;
    let client = http1();
    let (status, headers, body) = send(
        &client,
        post_message(proxy.addr)
            .header("origin", "https://widget.example.org")
            .header("cookie", "session=abc")
            .header("authorization", "Bearer guest-jwt")
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body, r#"{"id":"m-1"}"#);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://widget.example.org"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(
        headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
    let received = upstream.only();
    assert_eq!(
        received.body_str(),
        r#"{"from":{"id":"guest-1"},"text":"hello","to":{"id":"queue-1"}}"#
    );
    assert_eq!(received.header("cookie"), Some("session=abc"));
    assert_eq!(received.header("authorization"), Some("Bearer guest-jwt"));
    // Another origin gets the answer but no CORS header, not even the upstream's.
    let (status, headers, _) = send(
        &client,
        post_message(proxy.addr)
            .header("origin", "https://evil.example")
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let cors: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{cors:?}");
    // So does a request without Origin, and caches learn the answer varies by it.
    let (status, headers, _) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    assert!(!headers.contains_key("access-control-allow-origin"));
    assert!(
        headers.get_all("vary").iter().any(|v| v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")),
        "{headers:?}"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- protocols

#[tokio::test]
async fn an_h2c_request_is_sanitized() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = client
        .request(
            post_message(proxy.addr)
                .body(Full::new(Bytes::from(DIRTY)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.only().body_str(),
        r#"{"from":{"id":"guest-1"},"text":"hello","to":{"id":"queue-1"}}"#
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn tls_negotiates_http2_by_alpn_and_still_serves_http1() {
    let upstream = RecordingUpstream::start().await;
    let dir = temp_dir("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let cert_file = dir.join("cert.pem").display().to_string();
    let key_file = dir.join("key.pem").display().to_string();
    let proxy = proxy(
        &upstream,
        &[
            ("GUESTGATE__SERVER__TLS__CERT_FILE", &cert_file),
            ("GUESTGATE__SERVER__TLS__KEY_FILE", &key_file),
        ],
    )
    .await;
    let tls = client_tls_trusting(cert.cert.der());
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_only();
        let connector = if h2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build(connector);
        let url = format!("https://localhost:{}{ROUTE}", proxy.addr.port());
        let response = client
            .request(
                Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(DIRTY)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
    }
    for received in upstream.requests() {
        assert_eq!(received.header("x-forwarded-proto"), Some("https"));
        assert!(!received.body_str().contains("client-id"));
    }
    assert_eq!(upstream.count(), 2);
    proxy.shutdown().await;
}

/// A WebSocket echo server on loopback, counting its connections.
async fn websocket_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return; // readiness checks connect without a handshake
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy_and_idles_out() {
    let echo = websocket_echo().await;
    let proxy = proxy_to(
        &format!("http://{echo}"),
        &[("GUESTGATE__SERVER__UPGRADE_IDLE_TIMEOUT_SECS", "1")],
    )
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(
        format!("ws://{}/api/v2/notifications", proxy.addr),
        stream,
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("ping-1")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping-1"));
    ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2])
    );
    let metrics = proxy.metrics();
    assert_eq!(metric(&metrics, "guestgate_upgrades_total", &[]), Some(1.0));
    assert_eq!(metric(&metrics, "guestgate_open_upgrades", &[]), Some(1.0));
    // Silence for longer than the idle timeout closes the spliced connection.
    let ended = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "closed after the idle timeout: {ended:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metric(&proxy.metrics(), "guestgate_open_upgrades", &[]),
        Some(0.0)
    );
    proxy.shutdown().await;
}

/// Opens a WebSocket through the proxy (to whatever upstream it fronts).
async fn websocket_through(
    proxy: &guestgate::Running,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://{}/api/v2/notifications", proxy.addr);
    let (ws, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("handshake through the proxy");
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn a_websocket_holds_its_connection_slot_until_it_closes() {
    let echo = websocket_echo().await;
    let proxy = proxy_to(
        &format!("http://{echo}"),
        &[("GUESTGATE__SERVER__MAX_CONNECTIONS", "1")],
    )
    .await;
    let mut ws = websocket_through(&proxy).await;
    let second = tokio::spawn(raw(
        proxy.addr,
        b"GET /api/v2/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the tunnel holds the only slot: nobody else is served"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let answered = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the tunnel closed")
        .unwrap();
    assert!(answered.status >= 200, "{answered:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_websockets_and_closes_them_when_the_grace_period_ends() {
    let echo = websocket_echo().await;
    let proxy = proxy_to(&format!("http://{echo}"), &[]).await;
    let mut ws = websocket_through(&proxy).await;
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(Message::text("during the drain")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("during the drain")
    );
    assert!(!shutdown.is_finished(), "the drain waits for the tunnel");
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown completes once the tunnel closed")
        .unwrap();

    // A tunnel still open when the grace period ends is closed.
    let proxy = proxy_to(
        &format!("http://{echo}"),
        &[("GUESTGATE__SERVER__SHUTDOWN_TIMEOUT_SECS", "1")],
    )
    .await;
    let mut ws = websocket_through(&proxy).await;
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown())
        .await
        .expect("shutdown ends after its timeout");
    let ended = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(ended, Ok(None) | Ok(Some(Err(_)))),
        "closed by the proxy: {ended:?}"
    );
}

// ---------------------------------------------------------------- retry

#[tokio::test]
async fn retries_are_opt_in_and_resend_the_same_sanitized_body() {
    let failures = Arc::new(AtomicUsize::new(0));
    let counter = failures.clone();
    let upstream = RecordingUpstream::start_with(move |_| {
        let status = if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            503
        } else {
            201
        };
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(format!("{status}"))))
            .unwrap()
    })
    .await;
    let client = http1();
    // Off by default: the first 503 goes back to the client.
    let proxy = proxy(&upstream, &[]).await;
    let (status, _, _) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(upstream.count(), 1);
    proxy.shutdown().await;

    failures.store(0, Ordering::SeqCst);
    let proxy = proxy_to(
        &format!("http://{}", upstream.addr),
        &[
            ("GUESTGATE__GUEST_MESSAGES__RETRY__ATTEMPTS", "3"),
            ("GUESTGATE__GUEST_MESSAGES__RETRY__BACKOFF_MS", "10"),
        ],
    )
    .await;
    let (status, _, body) = send(
        &client,
        post_message(proxy.addr)
            .body(Full::new(Bytes::from(DIRTY)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body, "201");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 4);
    for r in &requests[1..] {
        assert_eq!(r.body, requests[0].body);
        assert!(!r.body_str().contains("client-id"));
    }
    assert_eq!(
        metric(&proxy.metrics(), "guestgate_upstream_retries_total", &[]),
        Some(2.0)
    );
    // Pass-through routes are never retried.
    failures.store(0, Ordering::SeqCst);
    let (status, _) = get_text(&client, format!("http://{}/api/v2/other", proxy.addr)).await;
    assert_eq!(status, 503);
    assert_eq!(upstream.count(), 5);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- CLI

fn guestgate_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_guestgate"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("GUESTGATE") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

#[test]
fn check_prints_the_effective_settings_or_one_line_per_problem() {
    let ok = guestgate_cli(
        &["check"],
        &[
            ("GUESTGATE__GUEST_MESSAGES__TO__ID", "queue-9"),
            ("GUESTGATE__UPSTREAM__BASE_URL", "http://127.0.0.1:9/prefix"),
        ],
    );
    assert!(ok.status.success());
    let out = String::from_utf8(ok.stdout).unwrap();
    let parsed: toml::Table = out.parse().expect("check prints TOML");
    assert_eq!(
        parsed["guest_messages"]["to"]["id"].as_str(),
        Some("queue-9")
    );
    assert_eq!(
        parsed["upstream"]["base_url"].as_str(),
        Some("http://127.0.0.1:9/prefix")
    );
    let bad = guestgate_cli(
        &["check"],
        &[
            ("GUESTGATE__SERVER__LISTEN", "nowhere"),
            ("GUESTGATE__CORS__ALLOWED_ORIGINS", "*"),
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8(bad.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().any(|l| l.contains("server.listen: ")));
    assert!(lines.iter().any(|l| l.contains("guest_messages.to: ")));
    assert!(lines.iter().any(|l| l.contains("cors.allowed_origins: ")));
}

#[tokio::test]
async fn healthcheck_exits_0_only_when_the_admin_listener_answers() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let listen = format!("0.0.0.0:{}", proxy.admin_addr.unwrap().port());
    let healthcheck = move |listen: String| {
        tokio::task::spawn_blocking(move || {
            guestgate_cli(
                &["healthcheck"],
                &[
                    ("GUESTGATE__GUEST_MESSAGES__TO__ID", "q"),
                    ("GUESTGATE__ADMIN__LISTEN", &listen),
                ],
            )
        })
    };
    let ok = healthcheck(listen).await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    proxy.shutdown().await;
    // Not the port just released: a parallel test may be given it.
    let down = healthcheck(format!("0.0.0.0:{}", closed_port()))
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
}

/// An HTTPS upstream offering h2 and http/1.1 by ALPN, recording the HTTP
/// version of each request it gets; HTTP/1.1 upgrades become a byte echo.
async fn tls_upstream(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<Version>>>) {
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |mut request: Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(request.version());
                        // Upgrades get a 101 and then an echo of raw bytes.
                        let upgrade = request
                            .headers()
                            .contains_key("upgrade")
                            .then(|| hyper::upgrade::on(&mut request));
                        async move {
                            let Some(upgrade) = upgrade else {
                                return Ok::<_, std::convert::Infallible>(Response::new(
                                    Full::new(Bytes::from_static(b"{}")),
                                ));
                            };
                            tokio::spawn(async move {
                                let Ok(upgraded) = upgrade.await else {
                                    return;
                                };
                                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                                let mut buf = [0u8; 256];
                                while let Ok(n @ 1..) = io.read(&mut buf).await {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            });
                            Ok(Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(Full::new(Bytes::new()))
                                .unwrap())
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, versions)
}

/// [`tls_upstream`] with a fresh certificate for `localhost`: its base URL,
/// the path of a CA file that trusts it (in the returned directory), and
/// the versions it records.
async fn tls_upstream_with_ca(
    name: &str,
) -> (String, String, Arc<std::sync::Mutex<Vec<Version>>>, TempDir) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (addr, versions) = tls_upstream(&cert).await;
    let dir = temp_dir(name);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let ca = ca.display().to_string();
    (
        format!("https://localhost:{}", addr.port()),
        ca,
        versions,
        dir,
    )
}

#[tokio::test]
async fn a_websocket_reaches_an_https_upstream_over_http1_while_requests_use_http2() {
    let (base, ca, versions, _dir) = tls_upstream_with_ca("upstream-ca-ws").await;
    let proxy = proxy_to(&base, &[("GUESTGATE__UPSTREAM__CA_FILE", &ca)]).await;
    let (status, _) = get_text(&http1(), format!("http://{}/api/v2/x", proxy.addr)).await;
    assert_eq!(status, 200);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(&websocket_upgrade("/api/v2/notifications"))
        .await
        .unwrap();
    let switched = read_response(&mut client).await;
    assert_eq!(switched.status, 101, "{}", switched.head);
    client.write_all(b"ping over tls").await.unwrap();
    let mut echoed = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut echoed))
        .await
        .expect("echoed through the tunnel")
        .unwrap();
    assert_eq!(&echoed, b"ping over tls");
    assert_eq!(
        *versions.lock().unwrap(),
        vec![Version::HTTP_2, Version::HTTP_11]
    );
    drop(client);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_https_upstream_is_reached_over_pooled_http2() {
    let (base, ca, versions, _dir) = tls_upstream_with_ca("upstream-ca").await;
    // Without the private CA the upstream's certificate is refused: 502.
    let untrusted = proxy_to(&base, &[]).await;
    let (status, _) = get_text(&http1(), format!("http://{}/api/v2/x", untrusted.addr)).await;
    assert_eq!(status, 502);
    untrusted.shutdown().await;
    assert!(versions.lock().unwrap().is_empty());

    let proxy = proxy_to(&base, &[("GUESTGATE__UPSTREAM__CA_FILE", &ca)]).await;
    let client = http1();
    for _ in 0..3 {
        let (status, _, _) = send(
            &client,
            post_message(proxy.addr)
                .body(Full::new(Bytes::from(DIRTY)))
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(*versions.lock().unwrap(), vec![Version::HTTP_2; 3]);
    proxy.shutdown().await;
    let bad = guestgate_cli(
        &["check"],
        &[
            ("GUESTGATE__GUEST_MESSAGES__TO__ID", "q"),
            ("GUESTGATE__UPSTREAM__CA_FILE", "/nonexistent/ca.pem"),
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("upstream.ca_file: "));
}

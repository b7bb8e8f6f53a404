//! Attacks on the boundary, written with raw sockets where a client library
//! would normalize the input away. Each test asserts what the upstream did or
//! did not receive.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SANITIZED: &str = r#"{"from":{"id":"g"},"text":"hi","to":{"id":"queue-1"}}"#;
const DIRTY: &[u8] = br#"{"id":"evil","from":{"id":"g"},"text":"hi"}"#;

// ---------------------------------------------------------------- route matching

#[tokio::test]
async fn every_spelling_of_the_route_is_sanitized_and_forwarded_canonically() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let spellings = [
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages/",
        "//api//v2/conversations/messaging/guest/conversations/conv-1/messages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/%6Dessages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/%6dessages",
        "/api/v2/conversations/messaging/guest/./conversations/conv-1/messages",
        "/api/v2/conversations/messaging/guest/x/../conversations/conv-1/messages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/%2e%2e/conv-1/messages",
        "/API/V2/CONVERSATIONS/Messaging/Guest/Conversations/conv-1/MESSAGES",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages;jsessionid=1",
        "/api/v2;v=1/conversations/messaging/guest/conversations/conv-1;x/messages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages?x=1&id=2",
        // Tomcat-style servers drop `;params` before resolving dot segments.
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages/x/..;/",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages/x/%2E%2E;a=b",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/;x/messages/.;y",
    ];
    for path in spellings {
        let response = raw(
            proxy.addr,
            &post(path, "Content-Type: application/json\r\n", DIRTY),
        )
        .await;
        assert_eq!(response.status, 200, "{path}: {}", response.body_str());
        let got = upstream.requests().pop().unwrap();
        assert_eq!(got.body_str(), SANITIZED, "{path}");
        let expected_query = path
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        assert_eq!(got.uri, format!("{ROUTE}{expected_query}"), "{path}");
    }
    // Method names are case-sensitive in HTTP, but not in every server.
    let response = raw(
        proxy.addr,
        &[b"post".as_slice(), &post(ROUTE, "", DIRTY)[4..]].concat(),
    )
    .await;
    assert_eq!(response.status, 200);
    let got = upstream.requests().pop().unwrap();
    assert_eq!(got.method, "POST");
    assert_eq!(got.body_str(), SANITIZED);
    proxy.shutdown().await;
}

#[tokio::test]
async fn ambiguous_targets_are_refused_and_not_forwarded() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let targets = [
        "/api/v2/conversations/messaging/guest/conversations/conv-1%2Fx/messages",
        "/api/v2/conversations/messaging/guest/conversations%2fconv-1/messages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1%5Cmessages",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages%3Bx",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages%",
        "/api/v2/conversations/messaging/guest/conversations/conv-1/messages%zz",
        "http://upstream.example/api/v2/conversations/messaging/guest/conversations/conv-1/messages",
        "*",
    ];
    for target in targets {
        let response = raw(proxy.addr, &post(target, "", DIRTY)).await;
        assert_eq!(response.status, 400, "{target}: {}", response.head);
        if response.header("content-type").as_deref() == Some("application/problem+json") {
            response.assert_problem(400);
        }
    }
    let connect = raw(
        proxy.addr,
        b"CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n",
    )
    .await;
    assert!(connect.status >= 400, "{}", connect.head);
    assert_eq!(upstream.count(), 0, "{:#?}", upstream.requests());
    proxy.shutdown().await;
}

#[tokio::test]
async fn method_override_headers_never_reach_the_upstream() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let overrides =
        "X-HTTP-Method-Override: POST\r\nX-Method-Override: POST\r\nX-HTTP-Method: POST\r\n";
    raw(
        proxy.addr,
        format!("GET {ROUTE} HTTP/1.1\r\nHost: x\r\n{overrides}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    raw(proxy.addr, &post("/api/v2/other", overrides, b"{}")).await;
    raw(proxy.addr, &post(ROUTE, overrides, DIRTY)).await;
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    for got in &seen {
        for name in [
            "x-http-method-override",
            "x-method-override",
            "x-http-method",
        ] {
            assert!(
                got.header(name).is_none(),
                "{name} forwarded on {} {}",
                got.method,
                got.uri
            );
        }
    }
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[2].body_str(), SANITIZED);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- bodies

#[tokio::test]
async fn the_body_is_sanitized_whatever_the_content_type() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    for content_type in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/json; charset=utf-8\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "Content-Type: application/json; charset=iso-8859-1\r\n",
    ] {
        let response = raw(proxy.addr, &post(ROUTE, content_type, DIRTY)).await;
        assert_eq!(response.status, 200, "{content_type:?}");
        let got = upstream.requests().pop().unwrap();
        assert_eq!(got.body_str(), SANITIZED, "{content_type:?}");
        assert_eq!(got.header("content-type"), Some("application/json"));
    }
    let form = raw(
        proxy.addr,
        &post(
            ROUTE,
            "Content-Type: application/x-www-form-urlencoded\r\n",
            b"id=evil&text=hi",
        ),
    )
    .await;
    form.assert_problem(400);
    assert_eq!(upstream.count(), 5);
    proxy.shutdown().await;
}

#[tokio::test]
async fn tricky_json_becomes_one_canonical_object_or_a_400() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let accepted: [(&[u8], &str); 3] = [
        (
            br#"{"\u0069\u0064":"evil","text":"hi"}"#,
            r#"{"text":"hi","to":{"id":"queue-1"}}"#,
        ),
        (
            b"\xEF\xBB\xBF{\"id\":1,\"text\":\"hi\"}",
            r#"{"text":"hi","to":{"id":"queue-1"}}"#,
        ),
        (
            b" \r\n\t{\"text\" : \"hi\" }\n",
            r#"{"text":"hi","to":{"id":"queue-1"}}"#,
        ),
    ];
    for (body, expected) in accepted {
        let response = raw(proxy.addr, &post(ROUTE, "", body)).await;
        assert_eq!(response.status, 200, "{body:?}: {}", response.body_str());
        assert_eq!(upstream.requests().pop().unwrap().body_str(), expected);
    }
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
    let refused: Vec<Vec<u8>> = vec![
        br#"{"id":"a","id":"b"}"#.to_vec(),
        br#"{"to":{"id":"a"},"\u0074o":{"id":"b"}}"#.to_vec(),
        b"{\"text\":\"\xC3\x28\"}".to_vec(),
        b"{\"text\":\"hi\"}{\"id\":\"smuggled\"}".to_vec(),
        b"{\"text\":\"hi\"}\x00".to_vec(),
        deep.into_bytes(),
        b"\xFF\xFE{\x00}\x00".to_vec(),
    ];
    for body in refused {
        let response = raw(proxy.addr, &post(ROUTE, "", &body)).await;
        response.assert_problem(400);
    }
    assert_eq!(upstream.count(), 3);
    proxy.shutdown().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

#[tokio::test]
async fn compressed_bodies_are_decoded_sanitized_and_forwarded_plain() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    for (encoding, body) in [
        ("gzip", gzip(DIRTY)),
        ("GZIP", gzip(DIRTY)),
        ("x-gzip", gzip(DIRTY)),
        ("deflate", deflate(DIRTY)),
        ("br", brotli(DIRTY)),
        ("identity", DIRTY.to_vec()),
    ] {
        let response = raw(
            proxy.addr,
            &post(ROUTE, &format!("Content-Encoding: {encoding}\r\n"), &body),
        )
        .await;
        assert_eq!(response.status, 200, "{encoding}: {}", response.body_str());
        let got = upstream.requests().pop().unwrap();
        assert_eq!(got.body_str(), SANITIZED, "{encoding}");
        assert!(got.header("content-encoding").is_none(), "{encoding}");
    }
    let corrupt = raw(
        proxy.addr,
        &post(ROUTE, "Content-Encoding: gzip\r\n", b"not gzip at all"),
    )
    .await;
    corrupt.assert_problem(400);
    assert_eq!(upstream.count(), 6);
    proxy.shutdown().await;
}

#[tokio::test]
async fn decompression_bombs_get_413() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let mut payload = b"{\"text\":\"".to_vec();
    payload.extend(std::iter::repeat_n(b'a', 50 * 1024 * 1024));
    payload.extend_from_slice(b"\"}");
    for (encoding, body) in [("gzip", gzip(&payload)), ("br", brotli(&payload))] {
        assert!(
            body.len() < 65536,
            "the bomb itself is small: {}",
            body.len()
        );
        let response = raw(
            proxy.addr,
            &post(ROUTE, &format!("Content-Encoding: {encoding}\r\n"), &body),
        )
        .await;
        response.assert_problem(413);
    }
    assert_eq!(upstream.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_and_expect_continue_bodies_are_sanitized_too() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let mut chunked = format!("POST {ROUTE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
    for piece in DIRTY.chunks(7) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = raw(proxy.addr, &chunked).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.requests().pop().unwrap().body_str(), SANITIZED);

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(format!("POST {ROUTE} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", DIRTY.len()).as_bytes())
        .await
        .unwrap();
    let mut interim = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert!(
        interim[..n].starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim[..n])
    );
    stream.write_all(DIRTY).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    let got = upstream.requests().pop().unwrap();
    assert_eq!(got.body_str(), SANITIZED);
    assert!(got.header("expect").is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_requests_get_the_same_treatment() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c prior-knowledge handshake");
    tokio::spawn(connection);
    let send = |path: &str, body: &'static [u8]| {
        http::Request::post(format!("http://proxy.test{path}"))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let response = sender
        .send_request(send(
            "/api/v2/conversations/messaging/guest/conversations/conv-1//messages/",
            DIRTY,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        &br#"{"id":"server-generated","ok":true}"#[..]
    );
    let got = upstream.requests().pop().unwrap();
    assert_eq!(got.uri, ROUTE);
    assert_eq!(got.body_str(), SANITIZED);
    assert_eq!(got.header("x-forwarded-host"), Some("proxy.test"));

    let response = sender
        .send_request(send(ROUTE, b"[not an object]"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = sender
        .send_request(send("/api/v2/other%2Fpath", b"{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(upstream.count(), 1);
    proxy.shutdown().await;
}

// Multi-threaded, so a server task that spins cannot stall the test's own timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_are_told_apart_even_when_the_first_bytes_trickle_in() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__SERVER__HEADER_READ_TIMEOUT_MS", "300")],
    )
    .await;
    // "P" could start the HTTP/2 preface ("PRI * HTTP/2.0...") or "POST".
    let mut split = TcpStream::connect(proxy.addr).await.unwrap();
    split.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    split
        .write_all(&post("/api/v2/other", "", b"{}")[1..])
        .await
        .unwrap();
    let response = read_response(&mut split).await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.requests().pop().unwrap().uri, "/api/v2/other");
    // The HTTP/2 preface in two parts is still HTTP/2: the server answers
    // with its SETTINGS frame, not an HTTP/1 error.
    let mut h2 = TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h2.write_all(b"\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frame_head = [0u8; 9];
    h2.read_exact(&mut frame_head).await.unwrap();
    assert_eq!(frame_head[3], 0x04, "a SETTINGS frame: {frame_head:?}");
    // hyper has no header read timeout for HTTP/2: one that sends no
    // request is closed at the first request's deadline all the same.
    let closed =
        tokio::time::timeout(Duration::from_secs(5), h2.read_to_end(&mut Vec::new())).await;
    assert!(
        closed.is_ok(),
        "h2c connection without a request closed by the proxy"
    );
    // One that sends part of it and then closes its side is not waited on
    // (nor spun on) until a header timeout far longer than this test.
    let patient = common::proxy(
        &upstream,
        &[("GUESTGATE__SERVER__HEADER_READ_TIMEOUT_MS", "600000")],
    )
    .await;
    let mut half = TcpStream::connect(patient.addr).await.unwrap();
    half.write_all(b"PRI").await.unwrap();
    half.shutdown().await.unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "half-closed connection closed by the proxy");
    patient.shutdown().await;
    // A client that stops inside the preface is dropped like a silent one.
    let mut stuck = TcpStream::connect(proxy.addr).await.unwrap();
    stuck.write_all(b"PRI * HTTP/2").await.unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "connection closed by the proxy");
    assert_eq!(upstream.count(), 1);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn desync_framing_is_refused_before_forwarding() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let attacks: [&[u8]; 5] = [
        b"POST /api/v2/other HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
        b"POST /api/v2/other HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\n{}",
        b"POST /api/v2/other HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /api/v2/other HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        b"POST /api/v2/other HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for attack in attacks {
        let response = raw(proxy.addr, attack).await;
        assert_eq!(
            response.status,
            400,
            "{}\n{}",
            String::from_utf8_lossy(attack),
            response.head
        );
    }
    assert_eq!(upstream.count(), 0, "{:#?}", upstream.requests());
    proxy.shutdown().await;
}

/// Content-Length together with Transfer-Encoding, and a repeated identical
/// Content-Length, are unambiguous under RFC 9112 section 6.3: hyper drops
/// the Content-Length, reads the chunked body and closes the connection
/// after answering. The upstream gets one request framed by the proxy, and
/// whatever the client smuggled after the chunked body is never read.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let chunked_dirty = format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        DIRTY.len(),
        std::str::from_utf8(DIRTY).unwrap()
    );
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let attacks = [
        format!(
            "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_dirty}{smuggled}"
        ),
        format!(
            "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_dirty}{smuggled}"
        ),
        format!(
            "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {0}\r\nContent-Length: {0}\r\n\r\n{1}",
            DIRTY.len(),
            std::str::from_utf8(DIRTY).unwrap()
        ),
    ];
    for attack in &attacks {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(attack.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("the proxy closes the connection after one answer")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "one answer only: {text}"
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    let requests = upstream.requests();
    let on_route: Vec<_> = requests.iter().filter(|r| r.uri == ROUTE).collect();
    assert_eq!(on_route.len(), 3, "{requests:#?}");
    for request in on_route {
        assert_eq!(request.body, SANITIZED.as_bytes());
        assert_eq!(request.header("content-length"), Some("53"));
        assert_eq!(request.header("transfer-encoding"), None);
    }
    assert_eq!(requests.len(), 3, "nothing smuggled: {requests:#?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = raw(proxy.addr, big.as_bytes()).await;
    assert_eq!(response.status, 431, "{}", response.head);
    assert_eq!(upstream.count(), 0);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn trickled_headers_hit_the_header_read_timeout() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__SERVER__HEADER_READ_TIMEOUT_MS", "300")],
    )
    .await;
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "connection closed by the proxy");
    // An idle connection that never sends anything is freed the same way.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "idle connection closed by the proxy");
    let ok = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.count(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn every_request_head_on_a_kept_alive_connection_has_the_header_read_timeout() {
    let upstream = RecordingUpstream::start_delayed(Duration::from_millis(700), |_| {
        http::Response::builder()
            .status(200)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__SERVER__HEADER_READ_TIMEOUT_MS", "300")],
    )
    .await;
    let get = b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Requests 200 ms apart, and an upstream slower than the timeout: the
    // timeout runs only while a head is awaited, and restarts for each one.
    for _ in 0..4 {
        client.write_all(get).await.unwrap();
        assert_eq!(read_response(&mut client).await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then half a head: the connection is closed, nothing more forwarded.
    client.write_all(b"GET /kept HTTP/1.1\r\nHo").await.unwrap();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut Vec::new())).await;
    assert!(
        closed.is_ok(),
        "a trickled second head closes the connection"
    );
    // A kept-alive connection left idle is closed the same way.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);
    let closed =
        tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "an idle kept-alive connection is closed");
    assert_eq!(upstream.count(), 5);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_body_and_response_timeouts_hold_for_every_request_of_a_connection_and_over_http2() {
    // Slower than the response timeout by far: a 504 can only come from it.
    let upstream = RecordingUpstream::start_delayed(Duration::from_millis(2000), |_| {
        http::Response::builder()
            .status(200)
            .body(Full::new(Bytes::from_static(b"late")))
            .unwrap()
    })
    .await;
    let proxy = proxy(
        &upstream,
        &[
            ("GUESTGATE__UPSTREAM__RESPONSE_TIMEOUT_MS", "300"),
            ("GUESTGATE__SERVER__BODY_READ_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Each request on the kept-alive connection has its own response
    // timeout, intercepted or passed through, the one after a timeout fired
    // included; then a body that stops short gets the body read timeout.
    for path in [ROUTE, "/api/v2/other", ROUTE] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            DIRTY.len()
        );
        client
            .write_all(&[head.as_bytes(), DIRTY].concat())
            .await
            .unwrap();
        let response = read_response(&mut client).await;
        let problem = response.assert_problem(504);
        assert_eq!(
            problem["type"],
            "tag:guestgate,2026:problem:upstream-timeout"
        );
    }
    client
        .write_all(
            format!("POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{").as_bytes(),
        )
        .await
        .unwrap();
    read_response(&mut client).await.assert_problem(408);
    assert_eq!(upstream.count(), 3);

    // HTTP/2 streams run in tasks of their own, on tokio's timer.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c prior-knowledge handshake");
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://proxy.test{ROUTE}"))
        .body(Full::new(Bytes::from_static(DIRTY)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 504);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_vanishing_mid_upload_forwards_nothing() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client
            .write_all(
                format!(
                    "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"id\":\"x\","
                )
                .as_bytes(),
            )
            .await
            .unwrap();
    }
    let mut chunked = TcpStream::connect(proxy.addr).await.unwrap();
    chunked
        .write_all(format!("POST {ROUTE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"id\"").as_bytes())
        .await
        .unwrap();
    drop(chunked);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = raw(proxy.addr, &post(ROUTE, "", DIRTY)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.only().body_str(), SANITIZED);
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_bodies_get_408() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__SERVER__BODY_READ_TIMEOUT_MS", "300")],
    )
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!("POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{").as_bytes(),
        )
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    response.assert_problem(408);
    assert_eq!(upstream.count(), 0);
    proxy.shutdown().await;
}

/// SO_LINGER 0: dropping the socket sends a TCP reset instead of a FIN.
#[allow(deprecated)] // the blocking-on-drop concern does not apply to a zero linger
fn reset_on_drop(socket: &TcpStream) {
    let _ = socket.set_linger(Some(Duration::ZERO));
}

/// An upstream that, for paths starting with `/reset`, sends a response head
/// and part of the body, then resets; other paths get a whole answer.
async fn resetting_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if buf[..n].starts_with(b"GET /reset") {
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
                        .await;
                    reset_on_drop(&socket);
                } else {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    addr
}

/// An upstream that answers every request head with `101` to `protocol`
/// and then records every byte it gets, as a tunnel endpoint would.
async fn switching_upstream(
    protocol: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut answered = false;
                while let Ok(n @ 1..) = socket.read(&mut buf).await {
                    let head_done = {
                        let mut all = record.lock().unwrap();
                        all.extend_from_slice(&buf[..n]);
                        find(&all, b"\r\n\r\n").is_some()
                    };
                    if !answered && head_done {
                        answered = true;
                        let head = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n"
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn only_websocket_upgrades_open_a_tunnel_so_h2c_cannot_smuggle() {
    let (addr, received) = switching_upstream("h2c").await;
    let proxy = proxy_to(&format!("http://{addr}"), &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    // The upgrade was not asked for upstream, so its 101 is not relayed.
    read_response(&mut client).await.assert_problem(502);
    let upstream_saw = String::from_utf8_lossy(&received.lock().unwrap()).to_lowercase();
    assert!(
        upstream_saw.starts_with("get / http/1.1\r\n"),
        "{upstream_saw}"
    );
    assert!(!upstream_saw.contains("upgrade"), "{upstream_saw}");
    assert!(!upstream_saw.contains("http2-settings"), "{upstream_saw}");
    // Whatever the client sends next is a new request, never tunnelled bytes.
    let smuggled = post(ROUTE, "", DIRTY);
    let _ = client.write_all(&smuggled).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), read_response(&mut client)).await;
    let upstream_saw = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(!upstream_saw.contains("evil"), "{upstream_saw}");
    proxy.shutdown().await;

    // A WebSocket request answered with a switch to another protocol: 502.
    let (addr, _) = switching_upstream("h2c").await;
    let proxy = proxy_to(&format!("http://{addr}"), &[]).await;
    raw(proxy.addr, &websocket_upgrade("/ws"))
        .await
        .assert_problem(502);
    proxy.shutdown().await;

    // Both protocols allowed, but the client asked for the other one: 502.
    let (addr, _) = switching_upstream("websocket").await;
    let proxy = proxy_to(
        &format!("http://{addr}"),
        &[(
            "GUESTGATE__SERVER__UPGRADE_PROTOCOLS",
            "websocket,echo-proto",
        )],
    )
    .await;
    raw(
        proxy.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo-proto\r\n\r\n",
    )
    .await
    .assert_problem(502);
    proxy.shutdown().await;

    // The same request switched to WebSocket is a tunnel.
    let (addr, received) = switching_upstream("websocket").await;
    let proxy = proxy_to(&format!("http://{addr}"), &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&websocket_upgrade("/ws")).await.unwrap();
    let switched = read_response(&mut client).await;
    assert_eq!(switched.status, 101, "{}", switched.head);
    client.write_all(b"tunnelled bytes").await.unwrap();
    let tunnelled = async {
        while find(&received.lock().unwrap(), b"tunnelled bytes").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), tunnelled)
        .await
        .expect("bytes after a WebSocket 101 reach the upstream");
    drop(client);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_reset_mid_response_does_not_hurt_other_requests() {
    let addr = resetting_upstream().await;
    let proxy = proxy_to(&format!("http://{addr}"), &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
        .await
        .expect("the client connection is closed, not left hanging");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.len() < 1000, "the truncated body is not padded");
    // A reset before the head is a 502.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let early = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            reset_on_drop(&socket);
            drop(socket);
        }
    });
    let proxy2 = proxy_to(&format!("http://{early}"), &[]).await;
    raw(proxy2.addr, &post(ROUTE, "", DIRTY))
        .await
        .assert_problem(502);
    // The first proxy still serves whole answers.
    let again = raw(
        proxy.addr,
        b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, b"ok");
    proxy.shutdown().await;
    proxy2.shutdown().await;
}

#[tokio::test]
async fn huge_responses_stream_through() {
    const SIZE: usize = 64 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Every connection (the readiness check opens one too) gets the answer.
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n");
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![b'x'; 1 << 20];
                for _ in 0..SIZE >> 20 {
                    if socket.write_all(&block).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = proxy_to(&format!("http://{addr}"), &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = client.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total > SIZE, "whole body relayed: {total}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_block_new_clients() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        raw(
            proxy.addr,
            b"GET /after-idle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("a new client is served next to 2000 idle connections");
    assert_eq!(response.status, 200);
    drop(idle);
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_are_freed_by_the_header_timeout() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[
            ("GUESTGATE__SERVER__MAX_CONNECTIONS", "50"),
            ("GUESTGATE__SERVER__HEADER_READ_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // The cap holds 50 at a time; each idle batch is dropped after 300 ms.
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        raw(
            proxy.addr,
            b"GET /after-idle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("a new client is served once idle connections are freed");
    assert_eq!(response.status, 200);
    drop(idle);
    proxy.shutdown().await;
}

async fn boom() -> &'static str {
    panic!("boom")
}

/// Serves `app` on a loopback port until the test ends.
async fn serve_app<C: guestgate::server::Connections>(app: C) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = guestgate::server::Limits {
        header_read_timeout: Duration::from_secs(5),
        max_header_bytes: 16384,
        max_connections: 10,
        idle_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(1),
    };
    tokio::spawn(guestgate::server::serve(
        listener,
        std::sync::Arc::new(app),
        limits,
        std::future::pending(),
    ));
    addr
}

/// GET /panic answers a 500 problem with a request id; GET /ok still
/// answers "fine" afterwards.
async fn assert_panic_isolated(addr: std::net::SocketAddr) {
    let response = raw(
        addr,
        b"GET /panic HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    response.assert_problem(500);
    assert!(response.header("x-request-id").is_some());
    let ok = raw(
        addr,
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body_str(), "fine");
}

#[tokio::test]
async fn a_panicking_request_gets_500_and_the_server_keeps_serving() {
    let app = axum::Router::new()
        .route("/panic", axum::routing::get(boom))
        .route("/ok", axum::routing::get(|| async { "fine" }));
    assert_panic_isolated(serve_app(app).await).await;
}

/// Panics as it is called, before it has a future to poll.
struct PanicsWhenCalled;

impl guestgate::server::Connections for PanicsWhenCalled {
    fn call(
        &self,
        request: axum::extract::Request,
        _client: guestgate::connection::ClientInfo,
    ) -> impl Future<Output = axum::response::Response> + Send + use<> {
        assert_ne!(request.uri().path(), "/panic", "boom");
        std::future::ready(axum::response::Response::new(axum::body::Body::from(
            "fine",
        )))
    }
}

#[tokio::test]
async fn a_handler_panicking_as_it_starts_gets_500_too() {
    assert_panic_isolated(serve_app(PanicsWhenCalled).await).await;
}

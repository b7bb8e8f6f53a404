//! The core promise, checked against what a real upstream received.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn guest_message_is_sanitized_and_the_answer_relayed() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let body = br#"{"id":"client-id","from":{"id":"guest-id"},"text":"Hello","big":123456789012345678901234567890123,"z":{"b":1,"a":2},"u":"\u00e9t\u00e9 \ud83d\ude00"}"#;
    let response = raw(
        proxy.addr,
        &post(
            ROUTE,
            "Content-Type: application/json\r\nAuthorization: Bearer guest-token\r\n",
            body,
        ),
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream").as_deref(), Some("recording"));
    assert_eq!(
        response.body_str(),
        r#"{"id":"server-generated","ok":true}"#
    );

    let got = upstream.only();
    assert_eq!(got.method, "POST");
    assert_eq!(got.uri, ROUTE);
    assert_eq!(
        got.body_str(),
        r#"{"from":{"id":"guest-id"},"text":"Hello","big":123456789012345678901234567890123,"z":{"b":1,"a":2},"u":"été 😀","to":{"id":"queue-1"}}"#
    );
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("authorization"), Some("Bearer guest-token"));
    assert_eq!(got.header("host"), Some(upstream.addr.to_string().as_str()));
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(got.header("x-forwarded-host"), Some("proxy.test"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_to_is_overridden_by_default_and_kept_with_if_missing() {
    let upstream = RecordingUpstream::start().await;
    let body = br#"{"to":{"id":"someone-else"},"text":"x"}"#;

    let overriding = proxy(&upstream, &[]).await;
    raw(overriding.addr, &post(ROUTE, "", body)).await;
    overriding.shutdown().await;

    let keeping = proxy(
        &upstream,
        &[("GUESTGATE__GUEST_MESSAGES__TO_POLICY", "if_missing")],
    )
    .await;
    raw(keeping.addr, &post(ROUTE, "", body)).await;
    keeping.shutdown().await;

    let seen = upstream.requests();
    assert_eq!(seen[0].body_str(), r#"{"to":{"id":"queue-1"},"text":"x"}"#);
    assert_eq!(
        seen[1].body_str(),
        r#"{"to":{"id":"someone-else"},"text":"x"}"#
    );
}

#[tokio::test]
async fn other_routes_pass_through_untouched() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let request = b"GET /api/v2/webchat/guest/conversations/c/messages?pageSize=25&after=a%20b HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer t\r\nX-Custom: kept\r\nConnection: close\r\n\r\n";
    let response = raw(proxy.addr, request).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body_str(),
        r#"{"id":"server-generated","ok":true}"#
    );
    let got = upstream.only();
    assert_eq!(got.method, "GET");
    assert_eq!(
        got.uri,
        "/api/v2/webchat/guest/conversations/c/messages?pageSize=25&after=a%20b"
    );
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(got.header("authorization"), Some("Bearer t"));
    assert!(got.body.is_empty());

    // A body on another route, even with a client `id`, is forwarded byte for byte.
    let body = br#"{"id":"keep-me", "text" : "not sanitized here"}"#;
    raw(
        proxy.addr,
        &post(
            "/api/v2/webchat/guest/conversations/c/members/m/messages",
            "Content-Type: text/plain\r\n",
            body,
        ),
    )
    .await;
    let got = upstream.requests().pop().unwrap();
    assert_eq!(&got.body[..], body);
    assert_eq!(got.header("content-type"), Some("text/plain"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn other_methods_on_the_guest_route_pass_through() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    let response = raw(
        proxy.addr,
        format!("GET {ROUTE}?pageSize=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream.only().uri, format!("{ROUTE}?pageSize=5"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_bodies_stream_through_without_buffering() {
    // The upstream reports each chunk as it arrives; the client only sends the
    // second chunk after the upstream has seen the first.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (first_seen_tx, first_seen_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let upstream = tokio::spawn(async move {
        let mut socket = accept_request(&listener).await;
        let mut received = Vec::new();
        let mut first = Some(first_seen_tx);
        loop {
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "proxy closed early");
            received.extend_from_slice(&buf[..n]);
            if let Some(pos) = find(&received, b"first-part") {
                if let Some(tx) = first.take() {
                    let _ = tx.send(received[..pos].to_vec());
                }
            }
            if find(&received, b"0\r\n\r\n").is_some() {
                break;
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await
            .unwrap();
        received
    });
    let proxy = proxy_to(&format!("http://{upstream_addr}"), &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\na\r\nfirst-part\r\n")
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), first_seen_rx)
        .await
        .expect("upstream saw the first chunk before the body was complete")
        .unwrap();
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    client
        .write_all(b"b\r\nsecond-part\r\n0\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "ok");
    let received = upstream.await.unwrap();
    let body_start = find(&received, b"\r\n\r\n").unwrap() + 4;
    // Chunk framing is hop-by-hop; the data must arrive whole and in order.
    assert_eq!(dechunk(&received[body_start..]), b"first-partsecond-part");
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_responses_stream_back_as_they_are_produced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut socket = accept_request(&listener).await;
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await.unwrap();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n6\r\nevent1\r\n")
            .await
            .unwrap();
        let _ = release_rx.await;
        socket.write_all(b"6\r\nevent2\r\n0\r\n\r\n").await.unwrap();
    });
    let proxy = proxy_to(&format!("http://{upstream_addr}"), &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while find(&seen, b"event1").is_none() {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("first event relayed before the upstream finished")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(find(&seen, b"event2").is_none());
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    release_tx.send(()).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(find(&rest, b"event2").is_some());
    proxy.shutdown().await;
}

#[tokio::test]
async fn upgrades_are_spliced_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let mut socket = accept_request(&listener).await;
        let mut head = Vec::new();
        while find(&head, b"\r\n\r\n").is_none() {
            let mut buf = [0u8; 1024];
            let n = socket.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo-proto\r\nX-Upstream: yes\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).await.unwrap();
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&buf[..n]);
        socket.write_all(&reply).await.unwrap();
        String::from_utf8(head).unwrap()
    });
    // Any protocol the operator lists can be upgraded to (WebSocket by default).
    let proxy = proxy_to(
        &format!("http://{upstream_addr}"),
        &[(
            "GUESTGATE__SERVER__UPGRADE_PROTOCOLS",
            "websocket, echo-proto",
        )],
    )
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo-proto\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("upgrade").as_deref(), Some("echo-proto"));
    assert_eq!(response.header("x-upstream").as_deref(), Some("yes"));
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"echo:ping");
    let head = upstream.await.unwrap().to_ascii_lowercase();
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("upgrade: echo-proto"), "{head}");
    // Upgrades go through hyper-util's client: the client's Host is not
    // forwarded, the upstream's is.
    assert_eq!(head.matches("\r\nhost: ").count(), 1, "{head}");
    assert!(
        head.contains(&format!("\r\nhost: {upstream_addr}\r\n")),
        "{head}"
    );
    drop(client);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_400_problems_and_are_not_forwarded() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    for body in [
        &b"{not json"[..],
        b"[1,2,3]",
        b"\"text\"",
        b"",
        b"{\"a\":1} trailing",
        b"{\"id\":1,\"id\":2}",
    ] {
        let response = raw(
            proxy.addr,
            &post(ROUTE, "Content-Type: application/json\r\n", body),
        )
        .await;
        let problem = response.assert_problem(400);
        assert!(
            problem["detail"].as_str().unwrap().contains("body"),
            "{problem}"
        );
    }
    assert_eq!(upstream.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[("GUESTGATE__SERVER__MAX_BODY_BYTES", "100")]).await;
    let body = format!(r#"{{"text":"{}"}}"#, "x".repeat(200));
    let response = raw(proxy.addr, &post(ROUTE, "", body.as_bytes())).await;
    response.assert_problem(413);
    let ok = raw(proxy.addr, &post(ROUTE, "", br#"{"text":"small"}"#)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.count(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_encodings_get_415() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    for encoding in ["zstd", "compress", "gzip, br", "x-custom"] {
        let response = raw(
            proxy.addr,
            &post(ROUTE, &format!("Content-Encoding: {encoding}\r\n"), b"{}"),
        )
        .await;
        response.assert_problem(415);
        assert_eq!(
            response.header("accept-encoding").as_deref(),
            Some("gzip, deflate, br")
        );
    }
    assert_eq!(upstream.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_gets_502() {
    let proxy = proxy_to(&format!("http://127.0.0.1:{}", closed_port()), &[]).await;
    let response = raw(proxy.addr, &post(ROUTE, "", br#"{"text":"x"}"#)).await;
    let problem = response.assert_problem(502);
    assert_eq!(
        problem["type"],
        "tag:guestgate,2026:problem:upstream-unreachable"
    );
    let response = raw(
        proxy.addr,
        b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    response.assert_problem(502);
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_gets_504() {
    let upstream = RecordingUpstream::start_delayed(Duration::from_millis(1500), |_| {
        Response::new(Full::new(Bytes::from_static(b"late")))
    })
    .await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__UPSTREAM__RESPONSE_TIMEOUT_MS", "300")],
    )
    .await;
    let response = raw(proxy.addr, &post(ROUTE, "", br#"{"text":"x"}"#)).await;
    let problem = response.assert_problem(504);
    assert_eq!(
        problem["type"],
        "tag:guestgate,2026:problem:upstream-timeout"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_are_relayed_unchanged() {
    let upstream = RecordingUpstream::start_with(|_| {
        Response::builder()
            .status(500)
            .header("content-type", "application/json")
            .header("inin-correlation-id", "abc")
            .body(Full::new(Bytes::from_static(
                br#"{"message":"vendor says no","code":"internal.server.error"}"#,
            )))
            .unwrap()
    })
    .await;
    let proxy = proxy(&upstream, &[]).await;
    let response = raw(proxy.addr, &post(ROUTE, "", br#"{"text":"x"}"#)).await;
    assert_eq!(response.status, 500);
    assert_eq!(
        response.header("inin-correlation-id").as_deref(),
        Some("abc")
    );
    assert_eq!(
        response.body_str(),
        r#"{"message":"vendor says no","code":"internal.server.error"}"#
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let upstream = RecordingUpstream::start_delayed(Duration::from_millis(500), |_| {
        Response::new(Full::new(Bytes::from_static(b"finished")))
    })
    .await;
    let proxy = proxy(&upstream, &[]).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move {
        raw(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.shutdown().await;
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_str(), "finished");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

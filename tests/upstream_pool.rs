//! guestgate's own HTTP/1 upstream pool and its per-core workers, asserted
//! on what the upstream really saw: which connections requests came on.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8] = br#"{"id":"client-id","text":"hello"}"#;
const PASS: &str = "/api/v2/conversations/messaging/guest/conversations/conv-1/attachments";

fn connections(upstream: &RecordingUpstream) -> HashSet<std::net::SocketAddr> {
    upstream.requests().iter().map(|r| r.peer).collect()
}

/// Sends one request on a keep-alive connection and reads its answer.
async fn exchange(stream: &mut TcpStream, path: &str) -> RawResponse {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(BODY).await.unwrap();
    read_response(stream).await
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(&upstream, &[]).await;
    // Separate client connections, one after the other, both routes.
    for path in [ROUTE, PASS, ROUTE, PASS, ROUTE] {
        let response = raw(proxy.addr, &post(path, "", BODY)).await;
        assert_eq!(response.status, 200);
    }
    assert_eq!(upstream.count(), 5);
    assert_eq!(connections(&upstream).len(), 1, "{:?}", upstream.requests());
    // The edits still apply on a reused connection.
    let last = upstream.requests().pop().unwrap();
    assert!(!last.body_str().contains("client-id"));
    assert_eq!(
        last.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert!(
        last.uri.starts_with("/api/v2/"),
        "origin form: {}",
        last.uri
    );
}

#[tokio::test]
async fn concurrent_clients_get_their_own_connections_and_give_them_back() {
    let upstream = RecordingUpstream::start_delayed(Duration::from_millis(50), |_| {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
    })
    .await;
    let proxy = proxy(&upstream, &[]).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Four requests in flight at once need four upstream connections...
    let answers =
        futures_util::future::join_all(clients.iter_mut().map(|stream| exchange(stream, ROUTE)))
            .await;
    assert!(answers.iter().all(|r| r.status == 200));
    let first = connections(&upstream);
    assert_eq!(first.len(), 4);
    // ...and the next ones, one at a time, take idle ones instead of opening more.
    for stream in &mut clients {
        assert_eq!(exchange(stream, PASS).await.status, 200);
    }
    assert_eq!(connections(&upstream), first);
}

#[tokio::test]
async fn no_idle_connections_kept_when_the_pool_size_is_zero() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__UPSTREAM__POOL_MAX_IDLE_PER_HOST", "0")],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(raw(proxy.addr, &post(ROUTE, "", BODY)).await.status, 200);
    }
    assert_eq!(connections(&upstream).len(), 3);
}

/// An upstream that answers one request per connection with a keep-alive
/// response, then closes the connection without saying so.
async fn closing_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut accepted = 0;
        while accepted < 3 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let mut seen = Vec::new();
            // Read the head and the body (Content-Length); the readiness
            // probe's connections send nothing.
            let complete = loop {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break false;
                }
                seen.extend_from_slice(&buf[..n]);
                if let Some(end) = find(&seen, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if seen.len() >= end + 4 + length {
                        break true;
                    }
                }
            };
            if !complete {
                continue;
            }
            accepted += 1;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                .await
                .unwrap();
            drop(stream);
        }
        accepted
    });
    (addr, task)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    let (addr, upstream) = closing_upstream().await;
    let proxy = proxy_to(&format!("http://{addr}"), &[]).await;
    for _ in 0..3 {
        let response = raw(proxy.addr, &post(ROUTE, "", BODY)).await;
        assert_eq!(response.status, 200, "{}", response.body_str());
        // Let the proxy see the close, as a client's think time would.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.await.unwrap(), 3);
}

#[tokio::test]
async fn an_unreachable_upstream_is_still_a_502_problem() {
    let port = closed_port();
    let proxy = proxy_to(&format!("http://127.0.0.1:{port}"), &[]).await;
    let response = raw(proxy.addr, &post(PASS, "", BODY)).await;
    let problem = response.assert_problem(502);
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("upstream-unreachable")
    );
}

const WORKERS_CONFIG: &str = r#"
[guest_messages]
to = { id = "queue-1" }
"#;

#[tokio::test]
async fn several_workers_share_the_port_and_serve_every_connection() {
    let upstream = RecordingUpstream::start().await;
    let mut proxy =
        Binary::start(WORKERS_CONFIG, &upstream, &[("TOKIO_WORKER_THREADS", "3")]).await;
    let pid = proxy.pid();
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    };
    // The first listener accepts before the other workers have started.
    let mut names = threads();
    for _ in 0..200 {
        if names
            .iter()
            .filter(|n| n.starts_with("guestgate-worke"))
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        names = threads();
    }
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("guestgate-worke"))
            .count(),
        2,
        "two worker threads besides the main one: {names:?}"
    );
    let answers = futures_util::future::join_all(
        (0..64).map(|_| async { raw(proxy.addr, &post(ROUTE, "", BODY)).await }),
    )
    .await;
    assert!(answers.iter().all(|r| r.status == 200));
    let requests = upstream.requests();
    assert_eq!(requests.len(), 64);
    assert!(
        requests
            .iter()
            .all(|r| !r.body_str().contains("client-id") && r.body_str().contains("queue-1"))
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("guestgate_requests_total")
                && l.contains("rule=\"guest_messages\"")
                && l.ends_with(" 64")),
        "every worker counts into the same metrics:\n{metrics}"
    );
    // SIGTERM drains every worker and exits cleanly.
    assert!(proxy.stop().await.success());
}

#[tokio::test]
async fn an_idle_connection_past_the_idle_timeout_is_not_reused() {
    let upstream = RecordingUpstream::start().await;
    let proxy = proxy(
        &upstream,
        &[("GUESTGATE__UPSTREAM__POOL_IDLE_TIMEOUT_SECS", "1")],
    )
    .await;
    assert_eq!(raw(proxy.addr, &post(ROUTE, "", BODY)).await.status, 200);
    assert_eq!(raw(proxy.addr, &post(PASS, "", BODY)).await.status, 200);
    assert_eq!(connections(&upstream).len(), 1, "reused within the timeout");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(raw(proxy.addr, &post(ROUTE, "", BODY)).await.status, 200);
    assert_eq!(connections(&upstream).len(), 2, "a new one after it");
}

#[tokio::test]
async fn a_streamed_upload_and_a_streamed_answer_leave_the_connection_reusable() {
    const UP: usize = 8 * 1024 * 1024;
    let upstream = RecordingUpstream::start_with(|seen| {
        // Answers with half as many bytes as it received: 4 MiB, more than
        // the socket buffers hold, so the answer streams too.
        let answer = vec![b'r'; seen.body.len() / 2];
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer)))
    })
    .await;
    let proxy = proxy(&upstream, &[]).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("POST {PASS} HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    // Chunked, in pieces, so the upstream request streams while it is sent.
    let piece = vec![b'u'; 64 * 1024];
    for _ in 0..UP / piece.len() {
        client
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        client.write_all(&piece).await.unwrap();
        client.write_all(b"\r\n").await.unwrap();
    }
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), UP / 2);
    assert!(response.body.iter().all(|&b| b == b'r'));
    let got = upstream.only();
    assert_eq!(got.body.len(), UP);
    assert!(got.body.iter().all(|&b| b == b'u'));
    // The same client connection, then another: one upstream connection.
    assert_eq!(exchange(&mut client, ROUTE).await.status, 200);
    assert_eq!(raw(proxy.addr, &post(PASS, "", BODY)).await.status, 200);
    assert_eq!(upstream.count(), 3);
    assert_eq!(connections(&upstream).len(), 1, "{:?}", upstream.requests());
    proxy.shutdown().await;
}

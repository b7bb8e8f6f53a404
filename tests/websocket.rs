//! `[[websocket_rules]]` through the real binary: a tokio-tungstenite client
//! talks to guestgate, which talks to a loopback Web-Messaging-like upstream
//! that records the upgrade request and every frame it receives and answers
//! like the vendor. Assertions are on what the upstream really received.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Binary, RecordingUpstream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    /// Path and query of each upgrade request.
    uris: Vec<String>,
    /// Request headers of each upgrade request, lower-case names.
    headers: Vec<Vec<(String, String)>>,
    /// Every message received, in order (text, binary, ping, close).
    messages: Vec<Message>,
}

/// A Web-Messaging-like upstream: SessionResponse to configureSession,
/// onMessage echoed as a structured message, everything recorded.
struct MessagingUpstream {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl MessagingUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                tokio::spawn(async move {
                    let record = seen.clone();
                    // The handshake's error type is tungstenite's, large or not.
                    #[allow(clippy::result_large_err)]
                    let callback = move |request: &Request, mut response: Response| {
                        let mut seen = record.lock().unwrap();
                        seen.uris.push(request.uri().to_string());
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        seen.headers.push(headers);
                        if let Some(protocol) = request.headers().get("sec-websocket-protocol") {
                            let first = protocol.to_str().unwrap().split(',').next().unwrap();
                            response
                                .headers_mut()
                                .insert("sec-websocket-protocol", first.trim().parse().unwrap());
                        }
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        seen.lock().unwrap().messages.push(message.clone());
                        let Message::Text(text) = &message else {
                            continue;
                        };
                        let Ok(frame) = serde_json::from_str::<Value>(text) else {
                            continue;
                        };
                        if frame["action"] == "closeSession" {
                            let bye = CloseFrame {
                                code: CloseCode::Normal,
                                reason: "bye".into(),
                            };
                            let _ = ws.close(Some(bye)).await;
                            continue;
                        }
                        let answer = match frame["action"].as_str() {
                            Some("configureSession") => json!({
                                "type": "response", "class": "SessionResponse", "code": 200,
                                "body": {"connected": true, "newSession": true}
                            }),
                            Some("onMessage") => json!({
                                "type": "message", "class": "StructuredMessage", "code": 200,
                                "body": {"id": "server-1", "type": "Text", "direction": "Inbound",
                                         "text": frame["message"]["text"]}
                            }),
                            _ => continue,
                        };
                        if ws.send(Message::text(answer.to_string())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, seen }
    }

    /// The JSON text messages received so far.
    fn texts(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => serde_json::from_str(t).ok(),
                _ => None,
            })
            .collect()
    }

    fn messages(&self) -> Vec<Message> {
        self.seen.lock().unwrap().messages.clone()
    }
}

fn config(upstream: &MessagingUpstream, extra: &str) -> String {
    format!(
        r#"
[upstreams.webmessaging]
base_url = "http://{}"

[websocket]
max_message_bytes = 1024
{extra}

[[websocket_rules]]
name = "messenger-session"
path = "/v1"
upstream = "webmessaging"
when = {{ "/action" = "configureSession" }}
require = ["/token"]
[websocket_rules.set]
"/deploymentId" = "dep-server"

[[websocket_rules]]
name = "messenger-message"
path = "/v1"
upstream = "webmessaging"
when = {{ "/action" = "onMessage" }}
remove = ["/message/id", "/channel"]
require = ["/token"]
[websocket_rules.allow]
"/message/type" = ["Text", "Event"]
"#,
        upstream.addr
    )
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(proxy: &Binary) -> Client {
    let mut request = format!("ws://{}/v1?deploymentId=dep-client", proxy.addr)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", "https://shop.example.com".parse().unwrap());
    headers.insert("sec-websocket-protocol", "messenger".parse().unwrap());
    headers.insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "messenger");
    client
}

async fn next_text(client: &mut Client) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The close frame the client gets (after any messages still in flight).
async fn close_of(client: &mut Client) -> Option<CloseFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

/// Waits until the upstream has recorded a close and returns its frame.
async fn upstream_close(upstream: &MessagingUpstream) -> Option<CloseFrame> {
    for _ in 0..100 {
        if let Some(Message::Close(frame)) = upstream
            .messages()
            .into_iter()
            .find(|m| matches!(m, Message::Close(_)))
        {
            return frame;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream saw no close: {:?}", upstream.messages());
}

fn session() -> Message {
    Message::text(
        json!({"action": "configureSession", "token": "t-1", "deploymentId": "dep-other", "startNew": false})
            .to_string(),
    )
}

#[tokio::test]
async fn messages_are_edited_and_answers_relayed_unchanged() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let proxy = Binary::start(&config(&upstream, ""), &default, &[]).await;
    let mut client = connect(&proxy).await;
    client.send(session()).await.unwrap();
    let answer = next_text(&mut client).await;
    assert_eq!(answer["class"], "SessionResponse");
    let message = json!({
        "action": "onMessage", "token": "t-1",
        "message": {"type": "Text", "text": "Hello SECRET-TEXT", "id": "client-id",
                    "channel": {"metadata": {"customAttributes": {"tier": "gold"}}}},
        "channel": {"from": {"id": "forged"}, "to": {"id": "other"}},
        "time": "2026-12-01T00:00:00Z"
    });
    client
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
    let echo = next_text(&mut client).await;
    assert_eq!(echo["class"], "StructuredMessage");
    assert_eq!(echo["body"]["text"], "Hello SECRET-TEXT");
    // A frame for no rule (echo) is relayed as sent.
    client
        .send(Message::text(r#"{"action":"echo","token":"t-1"}"#))
        .await
        .unwrap();
    client
        .send(Message::Ping(Bytes::from_static(b"hb")))
        .await
        .unwrap();
    client.close(None).await.unwrap();
    for _ in 0..100 {
        if upstream
            .messages()
            .iter()
            .any(|m| matches!(m, Message::Close(_)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let texts = upstream.texts();
    assert_eq!(
        texts,
        [
            json!({"action": "configureSession", "token": "t-1", "deploymentId": "dep-server", "startNew": false}),
            json!({
                "action": "onMessage", "token": "t-1",
                "message": {"type": "Text", "text": "Hello SECRET-TEXT",
                            "channel": {"metadata": {"customAttributes": {"tier": "gold"}}}},
                "time": "2026-12-01T00:00:00Z"
            }),
            json!({"action": "echo", "token": "t-1"}),
        ]
    );
    let messages = upstream.messages();
    assert!(
        messages
            .iter()
            .any(|m| *m == Message::Ping(Bytes::from_static(b"hb"))),
        "{messages:?}"
    );
    let (uris, headers) = {
        let seen = upstream.seen.lock().unwrap();
        (seen.uris.clone(), seen.headers[0].clone())
    };
    assert_eq!(uris, ["/v1?deploymentId=dep-client"]);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("origin").as_deref(),
        Some("https://shop.example.com")
    );
    assert_eq!(
        header("sec-websocket-protocol").as_deref(),
        Some("messenger")
    );
    assert_eq!(header("sec-websocket-extensions"), None, "no compression");
    let metrics = proxy.metrics().await;
    for series in [
        r#"guestgate_websocket_messages_total{rule="messenger-message",action="edited"} 1"#,
        r#"guestgate_websocket_messages_total{rule="messenger-session",action="edited"} 1"#,
        r#"guestgate_websocket_messages_total{rule="",action="relayed"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let log = proxy.log_text();
    assert!(log.contains("messenger-message"), "{log}");
    assert!(
        !log.contains("SECRET-TEXT") && !log.contains("t-1"),
        "{log}"
    );
}

/// One connection per refusal: the client and the upstream both get the
/// close code and the reason; nothing of the refused message is forwarded.
#[tokio::test]
async fn refused_messages_close_both_sides_with_the_problem_type() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let proxy = Binary::start(&config(&upstream, ""), &default, &[]).await;
    let cases: [(Message, u16, &str); 5] = [
        (Message::text("not json SECRET"), 1008, "invalid-body"),
        (
            Message::text(r#"{"action":"onMessage","token":"t","a":1,"a":2}"#),
            1008,
            "invalid-body",
        ),
        (
            Message::text(r#"{"action":"onMessage","token":"t","message":{"type":"Notice"}}"#),
            1008,
            "field-not-allowed",
        ),
        (
            Message::text(r#"{"action":"configureSession"}"#),
            1008,
            "field-required",
        ),
        (
            Message::binary(Bytes::from_static(b"\x00\x01")),
            1003,
            "binary-not-allowed",
        ),
    ];
    for (i, (message, code, reason)) in cases.into_iter().enumerate() {
        let mut client = connect(&proxy).await;
        client.send(message).await.unwrap();
        let frame = close_of(&mut client).await.expect("a close frame");
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (code, reason),
            "case {i}"
        );
        let frame = upstream_close(&upstream)
            .await
            .expect("a close frame upstream");
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (code, reason),
            "case {i}"
        );
        let messages = upstream.messages();
        assert_eq!(messages.len(), 1, "case {i}: only the close: {messages:?}");
        upstream.seen.lock().unwrap().messages.clear();
    }
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"guestgate_websocket_closes_total{code="1008"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"guestgate_websocket_closes_total{code="1003"} 1"#),
        "{metrics}"
    );
    assert!(!proxy.log_text().contains("SECRET"));
}

/// Sends `text` as a text frame of its first `at` bytes and a continuation.
async fn send_in_two(
    client: &mut Client,
    text: &str,
    at: usize,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (a, b) = text.split_at(at);
    let first = Frame::message(a.as_bytes().to_vec(), OpCode::Data(Data::Text), false);
    client.send(Message::Frame(first)).await?;
    let rest = Frame::message(b.as_bytes().to_vec(), OpCode::Data(Data::Continue), true);
    client.send(Message::Frame(rest)).await
}

#[tokio::test]
async fn fragments_are_reassembled_up_to_the_limit() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let proxy = Binary::start(&config(&upstream, ""), &default, &[]).await;
    let mut client = connect(&proxy).await;
    let text =
        r#"{"action":"onMessage","token":"t","message":{"type":"Text","text":"in two","id":"x"}}"#;
    send_in_two(&mut client, text, 20).await.unwrap();
    assert_eq!(next_text(&mut client).await["body"]["text"], "in two");
    assert_eq!(
        upstream.texts(),
        [json!({"action":"onMessage","token":"t","message":{"type":"Text","text":"in two"}})]
    );
    // Over websocket.max_message_bytes (1024 here), also when fragmented: 1009.
    let big = format!(
        r#"{{"action":"onMessage","token":"t","pad":"{}"}}"#,
        "x".repeat(1100)
    );
    // The second fragment may meet a closed connection.
    let _ = send_in_two(&mut client, &big, 600).await;
    let frame = close_of(&mut client).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    assert_eq!(upstream.texts().len(), 1, "nothing of the large message");
}

#[tokio::test]
async fn unmatched_refuse_report_only_and_binary_allowed() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let refuse = config(&upstream, "unmatched = \"refuse\"");
    let proxy = Binary::start(&refuse, &default, &[]).await;
    let mut client = connect(&proxy).await;
    client
        .send(Message::text(r#"{"action":"echo","token":"t"}"#))
        .await
        .unwrap();
    let frame = close_of(&mut client).await.unwrap();
    assert_eq!(u16::from(frame.code), 1008);
    assert!(upstream.texts().is_empty());
    drop(proxy);

    let upstream = MessagingUpstream::start().await;
    let lenient = config(&upstream, "").replace(
        "name = \"messenger-message\"",
        "name = \"messenger-message\"\nreport_only = true\nallow_binary = true",
    );
    let proxy = Binary::start(&lenient, &default, &[]).await;
    let mut client = connect(&proxy).await;
    let notice = r#"{"action":"onMessage","token":"t","message":{"type":"Notice","id":"x"}}"#;
    client.send(Message::text(notice)).await.unwrap();
    next_text(&mut client).await;
    client
        .send(Message::binary(Bytes::from_static(b"\x01")))
        .await
        .unwrap();
    client.close(None).await.unwrap();
    upstream_close(&upstream).await;
    let messages = upstream.messages();
    assert_eq!(
        messages[0],
        Message::text(notice),
        "report_only relays as sent"
    );
    assert_eq!(messages[1], Message::binary(Bytes::from_static(b"\x01")));
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"guestgate_report_only_would_change_total{rule="messenger-message",action="rejected"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn check_lists_websocket_rules_and_names_their_problems() {
    let upstream = MessagingUpstream::start().await;
    let (ok, stdout, stderr) = common::check(&config(&upstream, ""));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(r#"ws messenger-message /v1 -> webmessaging when /action="onMessage""#),
        "{stdout}"
    );
    let bad = r#"
[websocket]
unmatched = "drop"
"#;
    let (ok, _, stderr) = common::check(bad);
    assert!(!ok);
    assert!(stderr.contains("websocket.unmatched"), "{stderr}");
    let bad = r#"
[guest_messages]
to = { id = "q" }
[[websocket_rules]]
name = "a"
path = "/v1"
upstream = "nowhere"
when = { "/m/*" = 1 }
remove = ["x"]
"#;
    let (ok, _, stderr) = common::check(bad);
    assert!(!ok);
    for problem in [
        r#"websocket_rules[0].upstream: "nowhere" is not defined"#,
        r#"websocket_rules[0].when."/m/*": must name one field"#,
        r#"websocket_rules[0].remove."x": "#,
    ] {
        assert!(stderr.contains(problem), "{problem} in\n{stderr}");
    }
}

/// The Web Messaging preset edits what the Messenger widget sends.
#[tokio::test]
async fn the_web_messaging_preset_loads_and_edits() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let preset = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/examples/web-messaging.toml"
    ))
    .unwrap();
    let base = format!("http://{}", upstream.addr);
    let proxy = Binary::start(
        &preset,
        &default,
        &[(
            "GUESTGATE__UPSTREAMS__WEBMESSAGING__BASE_URL",
            base.as_str(),
        )],
    )
    .await;
    let mut client = connect(&proxy).await;
    client.send(session()).await.unwrap();
    next_text(&mut client).await;
    let message = json!({"action": "onMessage", "token": "t-1",
        "message": {"type": "Text", "text": "hi", "id": "x",
                    "channel": {"metadata": {"customAttributes": {"vip": true}}}},
        "channel": {"to": {"id": "other"}}});
    client
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
    next_text(&mut client).await;
    assert_eq!(
        upstream.texts(),
        [
            json!({"action": "configureSession", "token": "t-1", "deploymentId": "00000000-0000-0000-0000-000000000001", "startNew": false}),
            json!({"action": "onMessage", "token": "t-1", "message": {"type": "Text", "text": "hi", "channel": {"metadata": {}}}}),
        ]
    );
}

/// A reload applies to new connections; an open one keeps its rules.
#[tokio::test]
async fn reload_applies_to_new_connections() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let first = config(&upstream, "");
    let proxy = Binary::start(&first, &default, &[]).await;
    let mut old = connect(&proxy).await;
    proxy
        .reload(&first.replace("dep-server", "dep-reloaded"))
        .await;
    let mut new = connect(&proxy).await;
    old.send(session()).await.unwrap();
    next_text(&mut old).await;
    new.send(session()).await.unwrap();
    next_text(&mut new).await;
    let deployments: Vec<Value> = upstream
        .texts()
        .iter()
        .map(|t| t["deploymentId"].clone())
        .collect();
    assert_eq!(deployments, [json!("dep-server"), json!("dep-reloaded")]);
}

/// The upstream ending a session: its close reaches the client as sent, and
/// guestgate counts no close of its own.
#[tokio::test]
async fn an_upstream_close_is_relayed_as_sent() {
    let upstream = MessagingUpstream::start().await;
    let default = RecordingUpstream::start().await;
    let proxy = Binary::start(&config(&upstream, ""), &default, &[]).await;
    let mut client = connect(&proxy).await;
    client
        .send(Message::text(r#"{"action":"closeSession","token":"t"}"#))
        .await
        .unwrap();
    let frame = close_of(&mut client).await.expect("a close frame");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1000, "bye")
    );
    // The client's answer ends it; give guestgate a moment to see that.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.next()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = proxy.metrics().await;
    assert!(
        !metrics.contains("guestgate_websocket_closes_total{"),
        "{metrics}"
    );
    assert!(
        !proxy.log_text().contains("closed by guestgate"),
        "{}",
        proxy.log_text()
    );
}

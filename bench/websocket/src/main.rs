//! `upstream ADDR`: a Web-Messaging-like WebSocket server that answers every
//! text message with a structured message carrying it (`{"type":"message",
//! "class":"StructuredMessage","body":<what it received>}`).
//!
//! `load URL CONNS SECONDS`: CONNS connections, each sending a ~300-byte
//! Messenger `onMessage` frame (with a client `message.id` and a `channel`)
//! and waiting for the answer before the next; prints
//! `{"messages":N,"seconds":S}`.
//!
//! `probe URL`: sends one such frame and prints the answer (run.sh checks
//! what the upstream received through each path).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const FRAME: &str = r#"{"action":"onMessage","token":"6f1c2d3e-4b5a-4978-8c9d-0e1f2a3b4c5d","message":{"type":"Text","text":"Hello, I would like to change the delivery address of my order 48213, please.","id":"client-chosen-id","metadata":{"customMessageId":"m-1"}},"channel":{"from":{"id":"forged"},"to":{"id":"other-queue"}},"time":"2026-12-01T10:00:00.000Z"}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.get(1).map(String::as_str) {
        Some("upstream") => runtime.block_on(upstream(&args[2])),
        Some("load") => runtime.block_on(load(
            &args[2],
            args[3].parse().expect("CONNS"),
            args[4].parse().expect("SECONDS"),
        )),
        Some("probe") => runtime.block_on(probe(&args[2])),
        _ => {
            eprintln!("usage: upstream ADDR | load URL CONNS SECONDS | probe URL");
            std::process::exit(2);
        }
    }
}

async fn upstream(addr: &str) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    let answer = format!(
                        r#"{{"type":"message","class":"StructuredMessage","code":200,"body":{text}}}"#
                    );
                    if ws.send(Message::text(answer)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

async fn load(url: &str, conns: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
            let mut done = 0u64;
            while Instant::now() < deadline {
                ws.send(Message::text(FRAME)).await.expect("send");
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => done += 1,
                    other => panic!("expected an answer, got {other:?}"),
                }
            }
            let _ = ws.close(None).await;
            done
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a load task");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(r#"{{"messages":{total},"seconds":{seconds:.3}}}"#);
}

async fn probe(url: &str) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    ws.send(Message::text(FRAME)).await.expect("send");
    match ws.next().await {
        Some(Ok(Message::Text(text))) => println!("{text}"),
        other => panic!("expected an answer, got {other:?}"),
    }
    let _ = ws.close(None).await;
}

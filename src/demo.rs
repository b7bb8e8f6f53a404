//! `guestgate demo`: the proxy in front of a built-in echo upstream, so a
//! newcomer sees the sanitizing without a vendor account.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use http::header;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Conversation id used in the printed example.
pub const DEMO_CONVERSATION: &str = "demo-conversation";

/// Starts an upstream on a loopback port that answers every request with a
/// JSON description of what it received (credentials masked).
pub async fn start_echo_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(echo);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn echo(request: Request) -> Json<Value> {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let shown = match *name {
                header::AUTHORIZATION | header::COOKIE => "<masked>".to_owned(),
                _ => String::from_utf8_lossy(value.as_bytes()).into_owned(),
            };
            (name.as_str().to_owned(), Value::String(shown))
        })
        .collect();
    let body = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Json(json!({
        "echo": "what the upstream received",
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": body,
    }))
}

/// Environment overrides for demo mode: the echo upstream, and a demo `to`
/// unless the user configured one.
pub fn demo_env(upstream: SocketAddr) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    env.insert(
        "GUESTGATE__UPSTREAM__BASE_URL".into(),
        format!("http://{upstream}"),
    );
    env.entry("GUESTGATE__GUEST_MESSAGES__TO__ID".into())
        .or_insert_with(|| "demo-queue-id".into());
    env
}

/// The example request printed at start-up.
pub fn example_curl(proxy: SocketAddr) -> String {
    format!(
        "curl -s -X POST 'http://{proxy}/api/v2/conversations/messaging/guest/conversations/{DEMO_CONVERSATION}/messages' \\\n  -H 'Content-Type: application/json' -H 'Authorization: Bearer demo-token' \\\n  -d '{{\"id\":\"client-chosen-id\",\"from\":{{\"id\":\"guest-1\"}},\"text\":\"Hello\"}}'"
    )
}

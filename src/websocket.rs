//! WebSocket message rules: on an upgrade path with `[[websocket_rules]]`,
//! the tunnel is not a blind splice but two WebSocket endpoints (the
//! tokio-tungstenite codec over hyper's upgraded connections) with every
//! client→upstream text message parsed, matched to a rule by its `when`
//! values and edited like an HTTP rule's body. Upstream→client messages,
//! pings, pongs and closes are relayed unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::connection::Lease;
use crate::edit::{self, Edits, Op};
use crate::metrics::Metrics;
use crate::pointer::Pointer;
use crate::routing::{CanonicalPath, RouteTemplate};
use crate::rules::{self, EditSettings};
use crate::sanitize;

/// What to do with a text message no rule's `when` matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Relay it unchanged (it must still be one JSON object).
    #[default]
    Forward,
    /// Close both sides with 1008.
    Refuse,
}

/// `[websocket]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Largest reassembled client message on a rules path (1009 beyond).
    pub max_message_bytes: usize,
    /// A text message on a rules path that no rule's `when` matches.
    pub unmatched: Unmatched,
}

/// `[[websocket_rules]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketRuleSettings {
    /// Unique among WebSocket rules, `[a-z0-9_-]`.
    pub name: String,
    /// The upgrade request's path (route template).
    pub path: String,
    /// A name from `[upstreams]`; `[upstream]` when absent.
    #[serde(default)]
    pub upstream: Option<String>,
    /// JSON Pointer → value: the messages this rule applies to.
    #[serde(default)]
    pub when: BTreeMap<String, Value>,
    /// JSON Pointers removed.
    #[serde(default, deserialize_with = "crate::de::string_list")]
    pub remove: Vec<String>,
    /// JSON Pointers required after the edits.
    #[serde(default, deserialize_with = "crate::de::string_list")]
    pub require: Vec<String>,
    /// Relay the client's binary messages (refused with 1003 otherwise).
    #[serde(default)]
    pub allow_binary: bool,
    /// Relay unchanged, only log and count.
    #[serde(default)]
    pub report_only: bool,
    /// Values always written.
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    /// Values written where absent.
    #[serde(default)]
    pub set_if_missing: BTreeMap<String, Value>,
    /// Values a present field may have.
    #[serde(default)]
    pub allow: BTreeMap<String, Vec<Value>>,
}

/// One compiled WebSocket rule.
#[derive(Debug)]
pub struct MessageRule {
    /// The rule's name (shared with metric labels).
    pub name: Arc<str>,
    when: Vec<(Pointer, Value)>,
    edits: Edits,
    report_only: bool,
}

impl MessageRule {
    fn applies_to(&self, message: &Map<String, Value>) -> bool {
        self.when
            .iter()
            .all(|(pointer, value)| pointer.get(message) == Some(value))
    }
}

/// The rules of one upgrade path, in file order.
#[derive(Debug)]
pub struct MessageRoute {
    route: RouteTemplate,
    /// Index into the configuration's upstreams.
    pub upstream: usize,
    rules: Vec<MessageRule>,
    allow_binary: bool,
    max_message_bytes: usize,
    unmatched: Unmatched,
}

/// Every upgrade path with WebSocket rules.
#[derive(Debug, Clone, Default)]
pub struct MessageRules {
    routes: Vec<Arc<MessageRoute>>,
}

impl MessageRules {
    /// The rules for an upgrade request's canonical path, if it has any.
    pub fn lookup(&self, path: &CanonicalPath) -> Option<&Arc<MessageRoute>> {
        self.routes.iter().find(|r| r.route.matches(path).is_some())
    }

    /// One line per path and rule, for `guestgate check`.
    pub fn describe(&self, upstreams: &[String]) -> String {
        let mut out = String::new();
        for route in &self.routes {
            let upstream = upstreams.get(route.upstream).map_or("?", String::as_str);
            for rule in &route.rules {
                let when: Vec<String> = rule.when.iter().map(|(p, v)| format!("{p}={v}")).collect();
                out.push_str(&format!(
                    "ws {} {} -> {upstream} when {}\n",
                    rule.name,
                    route.route,
                    if when.is_empty() {
                        "any".to_owned()
                    } else {
                        when.join(",")
                    }
                ));
            }
        }
        out
    }
}

/// Compiles `[websocket]` and `[[websocket_rules]]`, one line per problem
/// (`websocket_rules[1].allow."/a": …`).
pub fn compile(
    settings: &WebSocketSettings,
    rules: &[WebSocketRuleSettings],
    upstreams: &[String],
    problems: &mut Vec<String>,
) -> MessageRules {
    if settings.max_message_bytes == 0 {
        problems.push("websocket.max_message_bytes: must be greater than 0".into());
    }
    let mut table = MessageRules::default();
    let mut routes: Vec<(String, MessageRoute)> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("websocket_rules[{i}]");
        let before = problems.len();
        rules::check_name(&at, &rule.name, problems);
        if names.contains(&rule.name.as_str()) {
            problems.push(format!("{at}.name: {:?} is used twice", rule.name));
        }
        names.push(&rule.name);
        let template = RouteTemplate::parse(&rule.path)
            .map_err(|e| problems.push(format!("{at}.path: {e}")))
            .ok();
        let upstream = rules::upstream_index(&at, rule.upstream.as_deref(), upstreams, problems);
        let mut when = Vec::new();
        for (text, value) in &rule.when {
            if let Some(p) = rules::pointer(&at, "when", text, problems) {
                if p.has_wildcard() {
                    problems.push(format!("{at}.when.{text:?}: must name one field, no `*`"));
                }
                when.push((p, value.clone()));
            }
        }
        let edits = rules::compile_edits(
            &at,
            EditSettings {
                remove: &rule.remove,
                require: &rule.require,
                set: &rule.set,
                set_if_missing: &rule.set_if_missing,
                allow: &rule.allow,
            },
            problems,
        );
        let (Some(template), Some(upstream)) = (template, upstream) else {
            continue;
        };
        if problems.len() > before {
            continue;
        }
        let compiled = MessageRule {
            name: Arc::from(rule.name.as_str()),
            when,
            edits,
            report_only: rule.report_only,
        };
        let key = template.to_string().to_ascii_lowercase();
        match routes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, route)) => {
                if route.upstream != upstream {
                    problems.push(format!(
                        "{at}.upstream: the rules of path {} must share one upstream",
                        rule.path
                    ));
                }
                route.allow_binary |= rule.allow_binary;
                route.rules.push(compiled);
            }
            None => routes.push((
                key,
                MessageRoute {
                    route: template,
                    upstream,
                    rules: vec![compiled],
                    allow_binary: rule.allow_binary,
                    max_message_bytes: settings.max_message_bytes,
                    unmatched: settings.unmatched,
                },
            )),
        }
    }
    table.routes = routes.into_iter().map(|(_, r)| Arc::new(r)).collect();
    table
}

/// What becomes of one client message.
enum Verdict {
    /// Send this to the upstream.
    Forward(Message),
    /// Close both sides.
    Close(CloseCode, &'static str),
}

/// Decides about one client→upstream message.
fn judge(route: &MessageRoute, message: Message, metrics: &Metrics) -> Verdict {
    let text = match message {
        Message::Text(text) => text,
        Message::Binary(_) if !route.allow_binary => {
            metrics.websocket_message(None, "refused");
            return Verdict::Close(CloseCode::Unsupported, "binary-not-allowed");
        }
        other => return Verdict::Forward(other),
    };
    let mut body = match sanitize::parse_object(text.as_bytes()) {
        Ok(body) => body,
        Err(e) => {
            tracing::info!(error = %e, "websocket message is not one JSON object");
            metrics.websocket_message(None, "refused");
            return Verdict::Close(CloseCode::Policy, "invalid-body");
        }
    };
    let Some(rule) = route.rules.iter().find(|r| r.applies_to(&body)) else {
        return match route.unmatched {
            Unmatched::Forward => {
                metrics.websocket_message(None, "relayed");
                Verdict::Forward(Message::Text(text))
            }
            Unmatched::Refuse => {
                metrics.websocket_message(None, "refused");
                Verdict::Close(CloseCode::Policy, "unmatched-message")
            }
        };
    };
    let result = edit::apply(&mut body, &rule.edits);
    if rule.report_only {
        let action = match &result {
            Ok(changes) if changes.modified() => "edited",
            Ok(_) => "relayed",
            Err(_) => "refused",
        };
        tracing::info!(
            rule = &*rule.name,
            would = action,
            "report_only: websocket message relayed unchanged"
        );
        if action != "relayed" {
            metrics.would_change(
                &rule.name,
                if action == "edited" {
                    "overridden"
                } else {
                    "rejected"
                },
            );
        }
        metrics.websocket_message(Some(&rule.name), "relayed");
        return Verdict::Forward(Message::Text(text));
    }
    match result {
        Ok(changes) => {
            let action = if changes.modified() {
                "edited"
            } else {
                "relayed"
            };
            tracing::info!(
                rule = &*rule.name,
                removed = ?changes.pointers(Op::Removed),
                injected = ?changes.pointers(Op::Injected),
                overridden = ?changes.pointers(Op::Overridden),
                "websocket message {action}"
            );
            metrics.websocket_message(Some(&rule.name), action);
            let out = serde_json::to_string(&body).expect("a JSON map always serializes");
            Verdict::Forward(Message::text(out))
        }
        Err(e) => {
            tracing::info!(rule = &*rule.name, reason = e.reason(), error = %e, "websocket message refused");
            metrics.websocket_message(Some(&rule.name), "refused");
            Verdict::Close(CloseCode::Policy, e.reason())
        }
    }
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Runs an inspected tunnel between the upgraded client and upstream
/// connections until either side closes, no message moved for `idle`, or
/// the server closes the `lease`. `guard` lives as long as the tunnel.
pub fn inspect<G: Send + 'static>(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: Arc<MessageRoute>,
    idle: Duration,
    metrics: Arc<Metrics>,
    guard: G,
    lease: Option<Lease>,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let limit = route.max_message_bytes;
        let client_config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let client = WebSocketStream::from_raw_socket(
            TokioIo::new(client),
            Role::Server,
            Some(client_config),
        )
        .await;
        let upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, None).await;
        let closed = crate::connection::closed(lease);
        relay(client, upstream, &route, idle, &metrics, closed).await;
    });
}

/// Relays until the end; returns the close code guestgate sent, if it closed.
async fn relay<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    route: &MessageRoute,
    idle: Duration,
    metrics: &Metrics,
    closed: impl Future<Output = ()>,
) -> Option<CloseCode>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = client.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    tokio::pin!(closed);
    let ours = loop {
        tokio::select! {
            message = from_client.next() => match message {
                Some(Ok(message)) => match judge(route, message, metrics) {
                    Verdict::Forward(message) => {
                        // A close answering the upstream's own may find it gone.
                        let closing = matches!(message, Message::Close(_));
                        match to_upstream.send(message).await {
                            Ok(()) => {}
                            Err(_) if closing => break None,
                            Err(_) => break Some((CloseCode::Error, "upstream-failed")),
                        }
                    }
                    Verdict::Close(code, reason) => break Some((code, reason)),
                },
                Some(Err(tungstenite::Error::Capacity(_))) => {
                    break Some((CloseCode::Size, "message-too-large"));
                }
                Some(Err(tungstenite::Error::Protocol(_))) => {
                    break Some((CloseCode::Protocol, "protocol-error"));
                }
                Some(Err(tungstenite::Error::Utf8(_))) => {
                    break Some((CloseCode::Invalid, "invalid-utf8"));
                }
                Some(Err(_)) | None => {
                    let _ = to_upstream.close().await;
                    break None;
                }
            },
            message = from_upstream.next() => match message {
                Some(Ok(message)) => {
                    if to_client.send(message).await.is_err() {
                        let _ = to_upstream.close().await;
                        break None;
                    }
                }
                Some(Err(_)) | None => {
                    let _ = to_client.close().await;
                    break None;
                }
            },
            () = tokio::time::sleep(idle) => break Some((CloseCode::Away, "idle-timeout")),
            () = &mut closed => break Some((CloseCode::Away, "server-shutting-down")),
        }
    };
    let (code, reason) = ours?;
    tracing::info!(
        code = u16::from(code),
        reason,
        "websocket closed by guestgate"
    );
    metrics.websocket_close(u16::from(code));
    let _ = tokio::join!(
        to_client.send(close(code, reason)),
        to_upstream.send(close(code, reason))
    );
    // Let both peers answer the close (so they see the code, not a reset),
    // reading what is still in flight but relaying none of it.
    let drain = async {
        tokio::join!(
            // A message over the limit keeps failing as its remaining
            // fragments arrive; they are read (not left for a reset) until
            // the client's close.
            async {
                while let Some(Ok(_) | Err(tungstenite::Error::Capacity(_))) =
                    from_client.next().await
                {}
            },
            async { while let Some(Ok(_)) = from_upstream.next().await {} },
        )
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    Some(code)
}

//! Logging set-up and per-request identity.
//!
//! Log lines carry a request id, the route kind, status and latency, and the
//! names of fields changed; never header values, query strings or bodies,
//! which hold tokens and message text.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderName, HeaderValue};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use serde::{Deserialize, Serialize};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// Default filter directive when `RUST_LOG` is unset.
    pub level: String,
}

/// The header carrying the request id to the upstream and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Installs the global subscriber writing to stdout; `RUST_LOG` wins over
/// `log.level`. Calling it twice is harmless (tests start several proxies).
pub fn init(settings: &LogSettings) {
    init_with_writer(settings, std::io::stdout);
}

/// Like [`init`], writing somewhere else (tests capture logs with this).
pub fn init_with_writer<W>(settings: &LogSettings, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
    };
}

/// A client id is kept when it is short and made of safe characters, so it
/// can go into logs and upstream headers without escaping.
fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

/// A process-unique id: a random per-process prefix and a counter.
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.write_u32(std::process::id());
        format!("{:016x}", hasher.finish())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix}-{n:x}")).expect("hex is a valid header value")
}

/// Wraps the handling of one request: keeps a sane incoming `X-Request-Id`
/// or sets a new one, sends it upstream, returns it to the client, and runs
/// `handler` inside the request's log span.
pub async fn traced<F, Fut>(mut request: Request, handler: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let id = match request.headers().get(&REQUEST_ID_HEADER) {
        Some(value) if is_sane(value) => value.clone(),
        _ => generate(),
    };
    request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or_default(),
        method = %request.method(),
        path = %request.uri().path(),
        route = tracing::field::Empty,
        rule = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut response = tracing::Instrument::instrument(handler(request), span.clone()).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_only_when_sane() {
        assert!(is_sane(&HeaderValue::from_static("abc-123_X.y:z")));
        assert!(!is_sane(&HeaderValue::from_static("")));
        assert!(!is_sane(&HeaderValue::from_static("has space")));
        assert!(!is_sane(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(is_sane(&a));
    }
}

//! Logging set-up and per-request identity.
//!
//! Log lines carry a request id, the route kind, status and latency, and the
//! names of fields changed; never header values, query strings or bodies,
//! which hold tokens and message text. The same subscriber carries the
//! OpenTelemetry layer when trace export is on ([`crate::otel`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderName, HeaderValue};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::otel::{ExportConfig, Pipeline, ServerSpan};

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
    let _ = install(settings, writer, None);
}

/// Like [`init`], with trace export when `export` is set; the returned
/// pipeline flushes the spans still queued at shutdown. Must run inside the
/// Tokio runtime (the export task is spawned on it). Fails when the exporter
/// cannot be built.
pub fn init_with_export(
    settings: &LogSettings,
    export: Option<&ExportConfig>,
) -> Result<Option<Pipeline>, String> {
    install(settings, std::io::stdout, export)
}

/// The log layer, filtered by `RUST_LOG` or `log.level`, and, with
/// `export`, the OpenTelemetry layer beside it. With export, each layer has
/// its own filter: the log level never hides a span from export, and the
/// exported spans never show in the log.
fn install<W>(
    settings: &LogSettings,
    writer: W,
    export: Option<&ExportConfig>,
) -> Result<Option<Pipeline>, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let Some(export) = export else {
        // Export off: one global filter, nothing else in the subscriber.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(settings, writer))
            .try_init();
        return Ok(None);
    };
    let (otel, pipeline) = crate::otel::layer::<Registry>(export)?;
    let logs = log_layer(settings, writer).with_filter(filter.and(crate::otel::not_exported()));
    if tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .try_init()
        .is_ok()
    {
        crate::otel::mark_enabled();
    }
    Ok(Some(pipeline))
}

/// The log line formatter for `log.format`.
fn log_layer<S, W>(settings: &LogSettings, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false);
    match settings.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    }
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

/// A process-unique id: a random per-process prefix and a counter,
/// `{prefix:016x}-{counter:x}`, written digit by digit (through `format!` it
/// took about 1,300 instructions a request, bench/NOTES.md).
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
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
        hex16(hasher.finish())
    });
    id(prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `{n:016x}`.
fn hex16(n: u64) -> [u8; 16] {
    let mut text = [0u8; 16];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[(n >> (60 - 4 * i) & 0xf) as usize];
    }
    text
}

/// `{prefix}-{n:x}`.
fn id(prefix: &[u8; 16], n: u64) -> HeaderValue {
    let mut text = [0u8; 33];
    text[..16].copy_from_slice(prefix);
    text[16] = b'-';
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in text[17..17 + digits].iter_mut().enumerate() {
        *digit = HEX[(n >> (4 * (digits - 1 - i)) & 0xf) as usize];
    }
    crate::headers::chunked_value(&text[..17 + digits]).expect("hex is a valid header value")
}

/// Wraps the handling of one request: keeps a sane incoming `X-Request-Id`
/// or sets a new one, sends it upstream, returns it to the client, and runs
/// `handler` inside the request's log span (and, with trace export on,
/// inside its SERVER span).
///
/// The work before `handler` runs here; the future returned holds only what
/// is needed after it.
pub fn traced<F, Fut>(mut request: Request, handler: F) -> impl Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let id = match request.headers().get(&REQUEST_ID_HEADER) {
        Some(value) if is_sane(value) => value.clone(),
        _ => generate(),
    };
    request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    let exported = ServerSpan::start(&mut request);
    let span = tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or_default(),
        method = %request.method(),
        path = %request.uri().path(),
        route = tracing::field::Empty,
        rule = tracing::field::Empty,
    );
    // Only the log line reads it: no clock read where it is filtered out.
    let started = tracing::enabled!(tracing::Level::INFO).then(std::time::Instant::now);
    // Started inside the spans it is then polled in: the stages before the
    // upstream run as `handler` is called.
    let handling = {
        let _server = exported.as_ref().map(ServerSpan::enter);
        let _request = span.enter();
        handler(request)
    };
    let handling = tracing::Instrument::instrument(handling, span.clone());
    let handling = match &exported {
        Some(server) => Either::Left(server.instrument(handling)),
        None => Either::Right(handling),
    };
    // Combinators, not an async block: that would keep `handling` twice.
    handling.map(move |mut response| {
        if let Some(server) = &exported {
            server.finish(response.status());
        }
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
        span.in_scope(|| {
            tracing::info!(
                status = response.status().as_u16(),
                latency_ms = started.map(|started| millis(started.elapsed())),
                "request finished"
            );
        });
        response
    })
}

/// Milliseconds rounded to the microsecond (`0.379`, not `0.37925200000000003`).
fn millis(took: Duration) -> f64 {
    (took.as_secs_f64() * 1_000_000.0).round() / 1000.0
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
        for (prefix, n) in [
            (0, 1),
            (0xfedc_ba98_7654_3210, 0x1f),
            (u64::MAX, u64::MAX),
            (7, 0),
        ] {
            assert_eq!(
                id(&hex16(prefix), n),
                format!("{prefix:016x}-{n:x}").as_str()
            );
        }
    }

    #[test]
    fn latency_is_rounded_to_three_decimals() {
        assert_eq!(millis(Duration::from_nanos(379_252)).to_string(), "0.379");
        assert_eq!(millis(Duration::from_nanos(379_500)).to_string(), "0.38");
        assert_eq!(millis(Duration::from_millis(1500)).to_string(), "1500");
        assert_eq!(
            serde_json::to_string(&millis(Duration::from_nanos(12_345_678))).unwrap(),
            "12.346"
        );
    }
}

//! The upstream side: where requests go (`[upstream]`), the pooled client
//! that sends them, and the retry loop of intercepted routes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::FutureExt;
use http::header;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};

use crate::deadline::{self, Deadlines, Elapsed};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pool::{Http1Pool, SendError};
use crate::routing::RouteKind;

/// `[upstream]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Base URL every request is forwarded to.
    pub base_url: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout_ms: u64,
    /// Time allowed until the upstream's response head.
    pub response_timeout_ms: u64,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout_secs: u64,
    /// Idle pooled connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// Extra PEM CA certificates trusted for an `https` upstream.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[upstreams.NAME]`: another upstream a rule can send to. Settings left
/// out are taken from `[upstream]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedUpstreamSettings {
    /// Base URL of this upstream.
    pub base_url: String,
    /// See `upstream.connect_timeout_ms`.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// See `upstream.response_timeout_ms`.
    #[serde(default)]
    pub response_timeout_ms: Option<u64>,
    /// See `upstream.pool_idle_timeout_secs`.
    #[serde(default)]
    pub pool_idle_timeout_secs: Option<u64>,
    /// See `upstream.pool_max_idle_per_host`.
    #[serde(default)]
    pub pool_max_idle_per_host: Option<usize>,
    /// See `upstream.ca_file`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl NamedUpstreamSettings {
    /// The full settings of this upstream, `[upstream]` filling the gaps.
    pub fn over(&self, default: &UpstreamSettings) -> UpstreamSettings {
        UpstreamSettings {
            base_url: self.base_url.clone(),
            connect_timeout_ms: self
                .connect_timeout_ms
                .unwrap_or(default.connect_timeout_ms),
            response_timeout_ms: self
                .response_timeout_ms
                .unwrap_or(default.response_timeout_ms),
            pool_idle_timeout_secs: self
                .pool_idle_timeout_secs
                .unwrap_or(default.pool_idle_timeout_secs),
            pool_max_idle_per_host: self
                .pool_max_idle_per_host
                .unwrap_or(default.pool_max_idle_per_host),
            ca_file: self.ca_file.clone().or_else(|| default.ca_file.clone()),
        }
    }
}

/// `[guest_messages.retry]`, `[rules.retry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Tries in all, including the first; 1 disables retrying.
    pub attempts: u32,
    /// Base delay before the first retry; doubles per retry, with full jitter.
    pub backoff_ms: u64,
    /// Upper bound of one delay.
    pub max_backoff_ms: u64,
    /// Upstream statuses that are retried (connect failures always are).
    #[serde(deserialize_with = "crate::de::status_list")]
    pub statuses: Vec<u16>,
}

impl Default for RetrySettings {
    /// Off: one try. The other values apply once `attempts` is raised.
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff_ms: 100,
            max_backoff_ms: 2000,
            statuses: vec![500, 502, 503, 504],
        }
    }
}

impl RetrySettings {
    /// Adds a line per problem, each naming the setting under `prefix`.
    pub fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if !(1..=10).contains(&self.attempts) {
            problems.push(format!(
                "{prefix}.attempts: must be between 1 (no retry) and 10"
            ));
        }
        if let Some(bad) = self.statuses.iter().find(|s| !(100..=599).contains(*s)) {
            problems.push(format!("{prefix}.statuses: {bad} is not an HTTP status"));
        }
    }
}

/// The upstream base URL, split for request building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and optional port.
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash (often empty).
    pub path_prefix: String,
}

/// An upstream exchange under way, until the response head.
pub type Sending =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

/// The clients to one configured upstream.
pub struct Upstream {
    /// guestgate's own per-worker HTTP/1 pool, for a plain `http` upstream.
    http1: Option<Http1Pool>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// HTTP/1.1 only, for upgrade requests: HTTP/2 has no `Upgrade`, and an
    /// https upstream would otherwise be reached over h2 (ALPN).
    upgrades: Client<HttpsConnector<HttpConnector>, Body>,
    connector: HttpsConnector<HttpConnector>,
    base: BaseUrl,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Upstream {
    /// Builds the client; no connection is made until the first request.
    pub fn new(settings: &UpstreamSettings, base: BaseUrl, tls: &rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        let tls = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
        };
        let https = tls().enable_http2().wrap_connector(http.clone());
        let client = |connector| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(settings.pool_idle_timeout_secs))
                .pool_max_idle_per_host(settings.pool_max_idle_per_host)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector)
        };
        let http1 = (base.scheme == http::uri::Scheme::HTTP).then(|| {
            let port = base.authority.port_u16().unwrap_or(80);
            Http1Pool::new(
                format!("{}:{port}", base.authority.host()),
                http::HeaderValue::from_str(base.authority.as_str())
                    .expect("an authority is a valid header value"),
                Duration::from_millis(settings.connect_timeout_ms),
                Duration::from_secs(settings.pool_idle_timeout_secs),
                settings.pool_max_idle_per_host,
            )
        });
        Self {
            http1,
            client: client(https.clone()),
            upgrades: client(tls().wrap_connector(http)),
            connector: https,
            base,
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            response_timeout: Duration::from_millis(settings.response_timeout_ms),
        }
    }

    /// Opens (and drops) one TCP connection, with the TLS handshake for
    /// https, to tell whether the upstream is reachable; `/readyz` caches it.
    pub async fn probe(&self) -> Result<(), String> {
        let uri = self.uri_for("/", None);
        let connect = tower::ServiceExt::oneshot(self.connector.clone(), uri);
        match tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), connect).await {
            Ok(Ok(_connection)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.base.authority)),
            Err(_) => Err(format!("connect to {} timed out", self.base.authority)),
        }
    }

    /// The absolute upstream URI for a canonical path and the client's query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Uri {
        let mut pq = String::with_capacity(self.base.path_prefix.len() + path.len() + 32);
        pq.push_str(&self.base.path_prefix);
        pq.push_str(path);
        if let Some(query) = query {
            pq.push('?');
            pq.push_str(query);
        }
        let pq = PathAndQuery::try_from(pq).expect("canonical path and validated query");
        self.absolute(pq)
    }

    /// Like [`Upstream::uri_for`] with the client's target as received. When
    /// that target is already `path` (no base path, the canonical spelling:
    /// the usual request), its parsed form is reused rather than built and
    /// parsed again.
    pub fn uri_for_target(&self, path: &str, target: &Uri) -> Uri {
        match target.path_and_query() {
            Some(pq) if self.base.path_prefix.is_empty() && pq.path() == path => {
                self.absolute(pq.clone())
            }
            _ => self.uri_for(path, target.query()),
        }
    }

    fn absolute(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.base.scheme.clone());
        parts.authority = Some(self.base.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("scheme, authority and path form a URI")
    }

    /// Sends a prepared request and waits for the response head. Only
    /// upgrade requests keep an `Upgrade` header (see [`prepare_headers`]).
    /// The client's `Host` is replaced by the upstream's.
    ///
    /// Boxed, and owning what it uses: the exchange's state is a few
    /// hundred bytes, and every caller up to the connection would otherwise
    /// hold (and move) room for it.
    ///
    /// The response timeout runs from `sent_at`, the caller's clock reading
    /// for the exchange's latency, on the client connection's `deadlines`
    /// when it has them (HTTP/1).
    pub fn send(
        &self,
        mut request: Request<Body>,
        deadlines: Option<&Deadlines>,
        sent_at: Instant,
    ) -> Sending {
        let upgrade = request.headers().contains_key(header::UPGRADE);
        let timeout = self.response_timeout;
        match &self.http1 {
            Some(pool) if !upgrade => {
                Box::pin(send_http1(request, pool, timeout, deadlines, sent_at))
            }
            _ => {
                // hyper-util's client sets the upstream's over HTTP/1;
                // HTTP/2 carries it as `:authority`.
                request.headers_mut().remove(header::HOST);
                let client = if upgrade {
                    self.upgrades.clone()
                } else {
                    self.client.clone()
                };
                Box::pin(send_pooled(
                    request,
                    client,
                    timeout,
                    deadlines.cloned(),
                    sent_at,
                ))
            }
        }
    }

    /// Sends an intercepted route's edited request, retrying per its `retry`
    /// settings. The body is complete in memory, so every attempt sends the
    /// same bytes; each attempt's latency goes to `metrics` under `route`.
    ///
    /// The request is borrowed from the caller's future, which holds it
    /// once; only a retry's wait is boxed, so the usual single attempt
    /// carries no room for a timer.
    pub async fn send_with_retry(
        &self,
        retry: &RetrySettings,
        request: &mut Request<Bytes>,
        metrics: &Metrics,
        route: RouteKind,
        deadlines: Option<&Deadlines>,
    ) -> Result<Response<Body>, ProxyError> {
        let mut attempt = 1;
        loop {
            let last = attempt >= retry.attempts;
            let delay = {
                let started = Instant::now();
                let result = self
                    .send(attempt_request(request, last), deadlines, started)
                    .await;
                metrics.upstream_latency(route, started.elapsed());
                let retryable = match &result {
                    Ok(response) => retry.statuses.contains(&response.status().as_u16()),
                    Err(ProxyError::UpstreamUnreachable) => true,
                    Err(_) => false,
                };
                if !retryable || last {
                    return result;
                }
                let delay = backoff(retry.backoff_ms, retry.max_backoff_ms, attempt);
                tracing::info!(
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    status = result.as_ref().ok().map(|r| r.status().as_u16()),
                    "retrying guest message"
                );
                metrics.retry();
                delay
            };
            Box::pin(tokio::time::sleep(delay)).await;
            attempt += 1;
        }
    }
}

/// One attempt's request: the same bytes each time; the last attempt takes
/// the headers, earlier ones send copies.
fn attempt_request(request: &mut Request<Bytes>, last: bool) -> Request<Body> {
    let mut outgoing = Request::new(Body::from(request.body().clone()));
    *outgoing.method_mut() = request.method().clone();
    *outgoing.uri_mut() = request.uri().clone();
    *outgoing.headers_mut() = if last {
        std::mem::take(request.headers_mut())
    } else {
        request.headers().clone()
    };
    outgoing
}

/// Over guestgate's own HTTP/1 pool, the URI in origin form.
fn send_http1(
    mut request: Request<Body>,
    pool: &Http1Pool,
    timeout: Duration,
    deadlines: Option<&Deadlines>,
    sent_at: Instant,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + use<> {
    if let Some(target) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = Uri::from(target);
    }
    let sending = pool.send(request, sent_at);
    deadline::timeout(deadlines, sent_at, timeout, sending).map(move |sent| settle(timeout, sent))
}

/// Over hyper-util's pooled client: `https` (HTTP/2 by ALPN) and upgrades.
async fn send_pooled(
    request: Request<Body>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
    deadlines: Option<Deadlines>,
    sent_at: Instant,
) -> Result<Response<Body>, ProxyError> {
    let pending = async {
        match client.request(request).await {
            Ok(response) => Ok(response.map(Body::new)),
            Err(e) if e.is_connect() => Err(SendError::Connect(e.to_string())),
            Err(e) => Err(SendError::Request(e.into())),
        }
    };
    settle(
        timeout,
        deadline::timeout(deadlines.as_ref(), sent_at, timeout, pending).await,
    )
}

/// The proxy's answer to one exchange, whichever client carried it:
/// past the response timeout, no connection, or a failed exchange.
fn settle(
    timeout: Duration,
    sent: Result<Result<Response<Body>, SendError>, Elapsed>,
) -> Result<Response<Body>, ProxyError> {
    match sent {
        Err(_) => Err(ProxyError::UpstreamTimeout(timeout.as_millis() as u64)),
        Ok(Err(SendError::Connect(e))) => {
            tracing::warn!(error = %e, "upstream connect failed");
            Err(ProxyError::UpstreamUnreachable)
        }
        Ok(Err(SendError::Request(e))) => {
            tracing::warn!(error = %e, "upstream request failed");
            Err(ProxyError::UpstreamFailed)
        }
        Ok(Ok(response)) => Ok(response),
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(n-1))].
fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let ceiling = base_ms
        .saturating_mul(1u64 << (attempt - 1).min(20))
        .min(max_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

/// Splits and checks a configured base URL.
pub fn parse_base_url(value: &str) -> Result<BaseUrl, String> {
    let uri: Uri = value
        .trim()
        .parse()
        .map_err(|e| format!("{value:?} is not a URL ({e})"))?;
    let scheme = uri
        .scheme()
        .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
        .cloned()
        .ok_or_else(|| format!("{value:?} must start with http:// or https://"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{value:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{value:?} must not contain user info"));
    }
    if uri.query().is_some() {
        return Err(format!("{value:?} must not have a query string"));
    }
    Ok(BaseUrl {
        scheme,
        authority,
        path_prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

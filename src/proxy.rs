//! The request handler: refuse what is ambiguous, sanitize the guest messages
//! route, pass everything else through as a stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, ServiceExt};
use tower_http::decompression::RequestDecompressionLayer;

use crate::config::Config;
use crate::error::ProxyError;
use crate::forward::{self, ClientInfo, Upstream};
use crate::metrics::Metrics;
use crate::routing::{CanonicalPath, PathError};
use crate::sanitize::{self, Policy};

/// Everything a request needs, swapped as a whole on reload.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// The pooled upstream client.
    pub upstream: Upstream,
    /// Shared with every generation, so counts survive reloads.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Builds the state (and upstream client) for a configuration.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Self {
        let upstream = Upstream::new(&config);
        Self {
            config,
            upstream,
            metrics,
        }
    }
}

/// Which kind of route a request took, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The sanitized guest messages route.
    Intercepted,
    /// Everything else.
    PassThrough,
}

impl RouteKind {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Intercepted => "intercepted",
            RouteKind::PassThrough => "pass_through",
        }
    }
}

/// Answers one proxied request from `client`: every path goes through here.
pub async fn handle(state: Arc<AppState>, request: Request, client: ClientInfo) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let mut route = RouteKind::PassThrough;
    let response = proxy(&state, request, client, &mut route)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    tracing::Span::current().record("route", route.as_str());
    if let Some(rejected) = response.extensions().get::<crate::error::Rejected>() {
        tracing::info!(
            route = route.as_str(),
            reason = rejected.0,
            status = response.status().as_u16(),
            "request refused"
        );
        state.metrics.rejected(rejected.0);
    }
    state.metrics.request(
        route.as_str(),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

/// The proxy as an axum router (every path), for the layers that need one
/// (CORS); the client comes from the `ClientInfo` extension.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(move |request: Request| {
        let client = request
            .extensions()
            .get::<ClientInfo>()
            .copied()
            .unwrap_or(ClientInfo {
                peer: ([0, 0, 0, 0], 0).into(),
                tls: false,
            });
        handle(state.clone(), request, client)
    })
}

async fn proxy(
    state: &Arc<AppState>,
    request: Request,
    client: ClientInfo,
    route: &mut RouteKind,
) -> Result<Response, ProxyError> {
    check_framing(request.headers(), request.version())?;
    check_target(&request)?;
    let path = CanonicalPath::parse(request.uri().path())?;
    let is_post = request.method().as_str().eq_ignore_ascii_case("POST");
    match state.config.route.matches(&path) {
        Some(route_path) if is_post => {
            *route = RouteKind::Intercepted;
            Box::pin(intercept(state.clone(), request, client, route_path)).await
        }
        _ => pass_through(state, request, client, path.as_path()).await,
    }
}

/// Refuses framing that a downstream parser could read differently (request
/// smuggling): Content-Length together with Transfer-Encoding, or several
/// Content-Length values.
fn check_framing(headers: &HeaderMap, version: Version) -> Result<(), ProxyError> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err(ProxyError::Framing("repeated Content-Length"));
    }
    if lengths == 1
        && headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.contains(','))
    {
        return Err(ProxyError::Framing("Content-Length with several values"));
    }
    if version <= Version::HTTP_11 && lengths > 0 && headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(ProxyError::Framing("Content-Length with Transfer-Encoding"));
    }
    Ok(())
}

/// Only origin-form targets (`/path?query`) are accepted over HTTP/1; HTTP/2
/// always carries scheme and authority as pseudo-headers.
fn check_target(request: &Request) -> Result<(), ProxyError> {
    let uri = request.uri();
    let absolute = uri.scheme().is_some() || uri.authority().is_some();
    if request.method() == Method::CONNECT || (request.version() <= Version::HTTP_11 && absolute) {
        return Err(PathError::NotOriginForm.into());
    }
    Ok(())
}

fn original_host(request: &Request) -> Option<HeaderValue> {
    request.headers().get(header::HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Streams any other request to the upstream and the response back, untouched
/// but for hop-by-hop headers and the canonical path.
async fn pass_through(
    state: &AppState,
    mut request: Request,
    client: ClientInfo,
    path: &str,
) -> Result<Response, ProxyError> {
    let protocols = &state.config.settings.server.upgrade_protocols;
    let asked = forward::upgrade_request(request.headers(), request.version(), protocols);
    let upgrade = asked.is_some();
    let client_upgrade = upgrade
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    let lease = client_upgrade
        .is_some()
        .then(|| request.extensions_mut().remove::<forward::Lease>())
        .flatten();
    let host = original_host(&request);
    let uri = state.upstream.uri_for(path, request.uri().query());
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    forward::prepare_headers(&mut headers, client, host, upgrade);
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    let started = Instant::now();
    let mut response = state.upstream.send(outgoing).await?;
    let took = started.elapsed();
    state
        .metrics
        .upstream_latency(RouteKind::PassThrough.as_str(), took);
    tracing::debug!(
        upstream_ms = took.as_millis() as u64,
        status = response.status().as_u16(),
        "upstream answered"
    );
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A switch nobody asked for, or to another protocol, is not relayed.
        let asked = asked.unwrap_or_default();
        match client_upgrade.filter(|_| forward::upgrades_to(response.headers(), &asked)) {
            Some(client_upgrade) => {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let idle =
                    Duration::from_secs(state.config.settings.server.upgrade_idle_timeout_secs);
                forward::splice_upgrade(
                    client_upgrade,
                    upstream_upgrade,
                    idle,
                    state.metrics.upgrade(),
                    lease,
                );
            }
            None => {
                tracing::warn!("upstream switched protocols unasked; not relayed");
                return Err(ProxyError::UpstreamFailed);
            }
        }
    }
    forward::prepare_response(&mut response);
    Ok(response)
}

/// The only encodings decoded on the intercepted route, by canonical token.
fn content_encoding(headers: &HeaderMap) -> Result<Option<&'static str>, ProxyError> {
    let mut tokens = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| ProxyError::UnsupportedEncoding("<non-ASCII>".into()))?;
        tokens.extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()));
    }
    tokens.retain(|t| !t.eq_ignore_ascii_case("identity"));
    match tokens.as_slice() {
        [] => Ok(None),
        [one] if one.eq_ignore_ascii_case("gzip") || one.eq_ignore_ascii_case("x-gzip") => {
            Ok(Some("gzip"))
        }
        [one] if one.eq_ignore_ascii_case("deflate") => Ok(Some("deflate")),
        [one] if one.eq_ignore_ascii_case("br") => Ok(Some("br")),
        _ => Err(ProxyError::UnsupportedEncoding(tokens.join(", "))),
    }
}

/// Reads, decodes and sanitizes the whole body, then forwards the canonical
/// object. The body is never forwarded in any other form.
async fn intercept(
    state: Arc<AppState>,
    mut request: Request,
    client: ClientInfo,
    route_path: String,
) -> Result<Response, ProxyError> {
    let encoding = content_encoding(request.headers())?;
    let headers = request.headers_mut();
    headers.remove(header::CONTENT_ENCODING);
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    if encoding.is_none() {
        let (parts, body) = request.into_parts();
        let body = read_limited(&state, body, false).await?;
        return forward_sanitized(&state, parts, client, body, &route_path).await;
    }
    let limit = state.config.settings.server.max_body_bytes;
    // The compressed stream may not be larger than the decoded limit either.
    let request = request.map(|body| Body::new(Limited::new(body, limit)));
    let inner_state = state.clone();
    let decoded = tower::service_fn(move |request: http::Request<_>| {
        let state = inner_state.clone();
        let route_path = route_path.clone();
        async move {
            let (parts, body) = http::Request::into_parts(request);
            let result = match read_limited(&state, body, true).await {
                Ok(bytes) => forward_sanitized(&state, parts, client, bytes, &route_path).await,
                Err(e) => Err(e),
            };
            Ok::<_, Infallible>(result.unwrap_or_else(IntoResponse::into_response))
        }
    });
    let service = RequestDecompressionLayer::new().layer(decoded);
    let response = service
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    Ok(response.map(Body::new))
}

/// Collects a body up to `server.max_body_bytes` within `server.body_read_timeout_ms`.
async fn read_limited<B>(state: &AppState, body: B, encoded: bool) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = state.config.settings.server.max_body_bytes;
    let timeout = state.config.body_read_timeout();
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(ProxyError::BodyTimeout(timeout.as_millis() as u64)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if is_length_limit(error.as_ref()) => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Ok(Err(error)) if encoded => Err(ProxyError::Undecodable(error.to_string())),
        Ok(Err(_)) => Err(ProxyError::BodyRead),
    }
}

fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<LengthLimitError>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| is_length_limit(inner)) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

async fn forward_sanitized(
    state: &AppState,
    parts: http::request::Parts,
    client: ClientInfo,
    body: Bytes,
    route_path: &str,
) -> Result<Response, ProxyError> {
    let policy = state.config.policy_for(&parts.headers);
    let report_only = state.config.settings.guest_messages.report_only;
    let (body, content_type) = if report_only {
        report_only_body(state, body, policy, &parts.headers)
    } else {
        let (sanitized, changes) = sanitize::sanitize_bytes(&body, policy)?;
        tracing::info!(
            stripped = ?changes.stripped,
            to = changes.to.as_str(),
            "guest message sanitized"
        );
        state.metrics.sanitized(&changes);
        (sanitized, HeaderValue::from_static("application/json"))
    };
    let request = Request::from_parts(parts, Body::empty());
    let host = original_host(&request);
    let uri = state.upstream.uri_for(route_path, request.uri().query());
    let (parts, _) = request.into_parts();
    let mut headers = parts.headers;
    forward::prepare_headers(&mut headers, client, host, false);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut response = send_with_retry(state, &uri, headers, body).await?;
    forward::prepare_response(&mut response);
    Ok(response)
}

/// report_only: the decoded body goes upstream as the client sent it; what
/// the sanitizer would have done is logged and counted.
fn report_only_body(
    state: &AppState,
    body: Bytes,
    policy: &Policy,
    headers: &HeaderMap,
) -> (Bytes, HeaderValue) {
    match sanitize::sanitize_bytes(&body, policy) {
        Ok((_, changes)) => {
            tracing::info!(
                would_strip = ?changes.stripped,
                would_set_to = changes.to.as_str(),
                "report_only: guest message forwarded unchanged"
            );
            for _ in &changes.stripped {
                state.metrics.would_change("stripped");
            }
            if changes.to != sanitize::ToChange::Kept {
                state.metrics.would_change(changes.to.as_str());
            }
        }
        Err(e) => {
            tracing::info!(would_reject = %e, "report_only: guest message forwarded unchanged");
            state.metrics.would_change("rejected");
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    (body, content_type)
}

/// Sends the sanitized message, retrying per `guest_messages.retry`. The
/// body is already complete in memory, so every attempt sends the same bytes.
async fn send_with_retry(
    state: &AppState,
    uri: &http::Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ProxyError> {
    let retry = &state.config.settings.guest_messages.retry;
    let mut attempt = 1;
    loop {
        let last = attempt >= retry.attempts;
        let mut outgoing = http::Request::new(Body::from(body.clone()));
        *outgoing.method_mut() = Method::POST;
        *outgoing.uri_mut() = uri.clone();
        // The last attempt takes the headers; earlier ones send copies.
        *outgoing.headers_mut() = if last {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };
        let started = Instant::now();
        let result = state.upstream.send(outgoing).await;
        state
            .metrics
            .upstream_latency(RouteKind::Intercepted.as_str(), started.elapsed());
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
        state.metrics.retry();
        drop(result);
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(n-1))].
fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let ceiling = base_ms
        .saturating_mul(1u64 << (attempt - 1).min(20))
        .min(max_ms);
    Duration::from_millis(fastrand::u64(0..=ceiling))
}

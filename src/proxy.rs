//! The request handler: refuse what is ambiguous, sanitize the guest messages
//! route, pass everything else through as a stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
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
use crate::routing::{CanonicalPath, PathError};
use crate::sanitize;

/// Everything a request needs, swapped as a whole on reload.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// The pooled upstream client.
    pub upstream: Upstream,
}

impl AppState {
    /// Builds the state (and upstream client) for a configuration.
    pub fn new(config: Config) -> Self {
        let upstream = Upstream::new(&config);
        Self { config, upstream }
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

/// The axum handler behind every path.
pub async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match proxy(state, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(
                reason = error.reason(),
                status = error.status().as_u16(),
                "request refused"
            );
            error.into_response()
        }
    }
}

async fn proxy(state: Arc<AppState>, request: Request) -> Result<Response, ProxyError> {
    check_framing(request.headers(), request.version())?;
    check_target(&request)?;
    let path = CanonicalPath::parse(request.uri().path())?;
    let is_post = request.method().as_str().eq_ignore_ascii_case("POST");
    match state.config.route.matches(&path) {
        Some(route_path) if is_post => intercept(state, request, route_path).await,
        _ => pass_through(&state, request, &path.as_path()).await,
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

fn client_info(request: &Request) -> ClientInfo {
    request
        .extensions()
        .get::<ClientInfo>()
        .copied()
        .unwrap_or(ClientInfo {
            peer: ([0, 0, 0, 0], 0).into(),
            tls: false,
        })
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
    path: &str,
) -> Result<Response, ProxyError> {
    let upgrade = forward::is_upgrade(request.headers(), request.version());
    let client_upgrade = upgrade
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    let client = client_info(&request);
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
    tracing::debug!(
        upstream_ms = started.elapsed().as_millis() as u64,
        status = response.status().as_u16(),
        "upstream answered"
    );
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        match client_upgrade {
            Some(client_upgrade) => {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                forward::splice_upgrade(client_upgrade, upstream_upgrade);
            }
            None => return Err(ProxyError::UpstreamFailed),
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
    route_path: String,
) -> Result<Response, ProxyError> {
    let encoding = content_encoding(request.headers())?;
    let headers = request.headers_mut();
    headers.remove(header::CONTENT_ENCODING);
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
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
            let result = match read_limited(&state, body, encoding.is_some()).await {
                Ok(bytes) => forward_sanitized(&state, parts, bytes, &route_path).await,
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
    body: Bytes,
    route_path: &str,
) -> Result<Response, ProxyError> {
    let (sanitized, changes) = sanitize::sanitize_bytes(&body, &state.config.policy)?;
    tracing::info!(
        stripped = ?changes.stripped,
        to = changes.to.as_str(),
        "guest message sanitized"
    );
    let request = Request::from_parts(parts, Body::empty());
    let client = client_info(&request);
    let host = original_host(&request);
    let uri = state.upstream.uri_for(route_path, request.uri().query());
    let (parts, _) = request.into_parts();
    let mut headers = parts.headers;
    forward::prepare_headers(&mut headers, client, host, false);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(sanitized.len()));
    let mut outgoing = http::Request::new(Body::from(sanitized));
    *outgoing.method_mut() = Method::POST;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    let mut response = state.upstream.send(outgoing).await?;
    forward::prepare_response(&mut response);
    Ok(response)
}

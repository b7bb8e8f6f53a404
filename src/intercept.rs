//! Intercepted routes: read the whole body (decoded, within the size and
//! time limits), edit it, and forward the edited object. The body is never
//! forwarded in any other form.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, ServiceExt};
use tower_http::decompression::RequestDecompressionLayer;

use crate::connection::ClientInfo;
use crate::error::ProxyError;
use crate::gateway::Generation;
use crate::headers;
use crate::routing::RouteKind;
use crate::sanitize::{self, Policy};

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

/// Reads, decodes and edits the whole body, then forwards the edited object.
pub async fn intercept(
    generation: Arc<Generation>,
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
        let body = read_limited(&generation, body, false).await?;
        return forward_edited(&generation, parts, client, body, &route_path).await;
    }
    let limit = generation.config.settings.server.max_body_bytes;
    // The compressed stream may not be larger than the decoded limit either.
    let request = request.map(|body| Body::new(Limited::new(body, limit)));
    // tower-http decodes; our errors come back out as the service's error.
    let decoded = tower::service_fn(move |request: http::Request<_>| {
        let generation = generation.clone();
        let route_path = route_path.clone();
        async move {
            let (parts, body) = http::Request::into_parts(request);
            let bytes = read_limited(&generation, body, true).await?;
            forward_edited(&generation, parts, client, bytes, &route_path).await
        }
    });
    let service = RequestDecompressionLayer::new().layer(decoded);
    let response = service.oneshot(request).await?;
    Ok(response.map(Body::new))
}

/// Collects a body up to `server.max_body_bytes` within `server.body_read_timeout_ms`.
async fn read_limited<B>(
    generation: &Generation,
    body: B,
    encoded: bool,
) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = generation.config.settings.server.max_body_bytes;
    let timeout = generation.config.body_read_timeout();
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

async fn forward_edited(
    generation: &Generation,
    parts: http::request::Parts,
    client: ClientInfo,
    body: Bytes,
    route_path: &str,
) -> Result<Response, ProxyError> {
    let policy = generation.config.policy_for(&parts.headers);
    let report_only = generation.config.settings.guest_messages.report_only;
    let (body, content_type) = if report_only {
        report_only_body(generation, body, policy, &parts.headers)
    } else {
        let (sanitized, changes) = sanitize::sanitize_bytes(&body, policy)?;
        tracing::info!(
            stripped = ?changes.stripped,
            to = changes.to.as_str(),
            "guest message sanitized"
        );
        generation.metrics.sanitized(&changes);
        (sanitized, HeaderValue::from_static("application/json"))
    };
    let request = Request::from_parts(parts, Body::empty());
    let host = headers::original_host(&request);
    let uri = generation
        .upstream
        .uri_for(route_path, request.uri().query());
    let (parts, _) = request.into_parts();
    let mut headers = parts.headers;
    headers::prepare_headers(&mut headers, client, host, false);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let retry = &generation.config.settings.guest_messages.retry;
    let mut response = generation
        .upstream
        .send_with_retry(
            retry,
            &uri,
            headers,
            body,
            &generation.metrics,
            RouteKind::Intercepted.as_str(),
        )
        .await?;
    headers::prepare_response(&mut response);
    Ok(response)
}

/// report_only: the decoded body goes upstream as the client sent it; what
/// the sanitizer would have done is logged and counted.
fn report_only_body(
    generation: &Generation,
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
                generation.metrics.would_change("stripped");
            }
            if changes.to != sanitize::ToChange::Kept {
                generation.metrics.would_change(changes.to.as_str());
            }
        }
        Err(e) => {
            tracing::info!(would_reject = %e, "report_only: guest message forwarded unchanged");
            generation.metrics.would_change("rejected");
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    (body, content_type)
}

//! Intercepted routes: read the whole body (decoded, within the size and
//! time limits), edit it, and forward the edited object. The body is never
//! forwarded in any other form.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{self, Either};
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, ServiceExt};
use tower_http::decompression::RequestDecompressionLayer;

use crate::connection::ClientInfo;
use crate::deadline::{self, Deadlines};
use crate::edit::{Edits, Op};
use crate::error::ProxyError;
use crate::gateway::Generation;
use crate::headers;
use crate::otel;
use crate::routing::RouteKind;
use crate::rules::{BodyKind, Rule, RuleIndex};
use crate::sanitize::{self, BodyError};

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

/// An intercepted request's answer under way.
pub type Intercepting = Pin<Box<dyn Future<Output = Result<Response, ProxyError>> + Send>>;

/// Reads, decodes and edits the whole body, then forwards the edited object.
///
/// Boxed, one box per path, each holding only its own state: the usual
/// request's is small, while a decoder's is several KiB. The work between
/// the body and the upstream is a plain function ([`edit`]).
pub fn intercept(
    generation: Arc<Generation>,
    index: RuleIndex,
    rule: Arc<Rule>,
    mut request: Request,
    client: ClientInfo,
    route_path: String,
) -> Intercepting {
    let encoding = match content_encoding(request.headers()) {
        Ok(encoding) => encoding,
        Err(error) => return Box::pin(future::ready(Err(error))),
    };
    // Without an encoding to decode (none, or `identity`), [`edit`] removes
    // the header with the others it rewrites.
    if let Some(encoding) = encoding {
        request
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        return Box::pin(intercept_encoded(
            generation, index, rule, request, client, route_path,
        ));
    }
    let (parts, body) = request.into_parts();
    let reading = read_limited(&generation, body, false, client.deadlines.as_ref());
    Box::pin(reading.then(move |read| {
        match read
            .and_then(|body| edit(&generation, index, &rule, parts, &client, body, &route_path))
        {
            Ok(edited) => Either::Left(send_edited(generation, rule, edited, client.deadlines)),
            Err(error) => Either::Right(future::ready(Err(error))),
        }
    }))
}

/// Decodes a gzip, deflate or br body (tower-http), then edits and forwards it.
async fn intercept_encoded(
    generation: Arc<Generation>,
    index: RuleIndex,
    rule: Arc<Rule>,
    request: Request,
    client: ClientInfo,
    route_path: String,
) -> Result<Response, ProxyError> {
    let limit = generation.config.limits.max_body_bytes;
    // The compressed stream may not be larger than the decoded limit either.
    let request = request.map(|body| Body::new(Limited::new(body, limit)));
    // tower-http decodes; our errors come back out as the service's error.
    let decoded = tower::service_fn(move |request: http::Request<_>| {
        let generation = generation.clone();
        let rule = rule.clone();
        let route_path = route_path.clone();
        let client = client.clone();
        async move {
            let (parts, body) = http::Request::into_parts(request);
            let deadlines = client.deadlines.as_ref();
            let bytes = read_limited(&generation, body, true, deadlines).await?;
            let edited = edit(
                &generation,
                index,
                &rule,
                parts,
                &client,
                bytes,
                &route_path,
            )?;
            send_edited(generation, rule, edited, client.deadlines).await
        }
    });
    let service = RequestDecompressionLayer::new().layer(decoded);
    let response = service.oneshot(request).await?;
    Ok(response.map(Body::new))
}

/// Collects a body up to `server.max_body_bytes` within `server.body_read_timeout_ms`.
fn read_limited<B>(
    generation: &Generation,
    body: B,
    encoded: bool,
    deadlines: Option<&Deadlines>,
) -> impl Future<Output = Result<Bytes, ProxyError>> + Send + use<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = generation.config.limits.max_body_bytes;
    let timeout = generation.config.limits.body_read_timeout;
    let collect = Limited::new(body, limit).collect();
    deadline::timeout(deadlines, Instant::now(), timeout, collect).map(move |read| match read {
        Err(_) => Err(ProxyError::BodyTimeout(timeout.as_millis() as u64)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if is_length_limit(error.as_ref()) => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Ok(Err(error)) if encoded => Err(ProxyError::Undecodable(error.to_string())),
        Ok(Err(_)) => Err(ProxyError::BodyRead),
    })
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

/// An edited request, ready for its upstream.
struct Edited {
    outgoing: Request<Bytes>,
    traced: Option<otel::ClientSpan>,
}

/// Applies the rule to a read body (or, `report_only`, only records what
/// it would do) and makes the request ready for the rule's upstream.
fn edit(
    generation: &Generation,
    index: RuleIndex,
    rule: &Rule,
    parts: http::request::Parts,
    client: &ClientInfo,
    body: Bytes,
    route_path: &str,
) -> Result<Edited, ProxyError> {
    let edits = rule.edits_for(&parts.headers);
    let (body, content_type) = if rule.body == BodyKind::Empty {
        if !body.is_empty() {
            if !rule.report_only {
                return Err(BodyError::NotEmpty.into());
            }
            tracing::info!(
                rule = &*rule.name,
                would_reject = %BodyError::NotEmpty,
                "report_only: body forwarded unchanged"
            );
            generation.metrics.would_change(&rule.name, "rejected");
        }
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        (body, content_type)
    } else if rule.report_only {
        report_only_body(generation, rule, body, edits, &parts.headers)
    } else {
        let (edited, changes) = sanitize::sanitize_bytes(&body, edits)?;
        tracing::info!(
            rule = &*rule.name,
            removed = ?changes.pointers(Op::Removed),
            injected = ?changes.pointers(Op::Injected),
            overridden = ?changes.pointers(Op::Overridden),
            "body edited"
        );
        generation
            .metrics
            .edited(generation.series(Some(index)), &changes, rule.shorthand);
        (edited, Some(HeaderValue::from_static("application/json")))
    };
    let upstream = &generation.upstreams[rule.upstream];
    let request = Request::from_parts(parts, Body::empty());
    let host = headers::original_host(&request);
    let uri = upstream.uri_for_target(route_path, request.uri());
    let (parts, _) = request.into_parts();
    let mut headers = parts.headers;
    headers::prepare_headers(&mut headers, client, host, false);
    headers.remove(header::CONTENT_ENCODING);
    match content_type {
        Some(value) => headers.insert(header::CONTENT_TYPE, value),
        None => headers.remove(header::CONTENT_TYPE),
    };
    headers.insert(header::CONTENT_LENGTH, headers::length_value(body.len()));
    let method = canonical_method(parts.method);
    let traced = otel::ClientSpan::start(&method, &uri, &mut headers);
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    Ok(Edited { outgoing, traced })
}

/// Sends an edited request (with the rule's retries) and relays the answer.
fn send_edited(
    generation: Arc<Generation>,
    rule: Arc<Rule>,
    edited: Edited,
    deadlines: Option<Deadlines>,
) -> impl Future<Output = Result<Response, ProxyError>> + Send + 'static {
    let Edited {
        mut outgoing,
        traced,
    } = edited;
    // The request is held here once and lent to the attempts.
    async move {
        let upstream = &generation.upstreams[rule.upstream];
        let mut response = otel::send(
            traced,
            upstream.send_with_retry(
                &rule.retry,
                &mut outgoing,
                &generation.metrics,
                RouteKind::Intercepted,
                deadlines.as_ref(),
            ),
        )
        .await?;
        headers::prepare_response(&mut response);
        Ok(response)
    }
}

/// The method in capitals: a rule matches `post` as POST (not every server
/// tells them apart), so the upstream is sent the one it surely knows.
fn canonical_method(method: http::Method) -> http::Method {
    let name = method.as_str();
    if name.bytes().any(|b| b.is_ascii_lowercase()) {
        http::Method::from_bytes(name.to_ascii_uppercase().as_bytes()).unwrap_or(method)
    } else {
        method
    }
}

/// report_only: the decoded body goes upstream as the client sent it; what
/// the rule would have done is logged and counted.
fn report_only_body(
    generation: &Generation,
    rule: &Rule,
    body: Bytes,
    edits: &Edits,
    headers: &HeaderMap,
) -> (Bytes, Option<HeaderValue>) {
    let metrics = &generation.metrics;
    match sanitize::sanitize_bytes(&body, edits) {
        Ok((_, changes)) => {
            tracing::info!(
                rule = &*rule.name,
                would_remove = ?changes.pointers(Op::Removed),
                would_inject = ?changes.pointers(Op::Injected),
                would_override = ?changes.pointers(Op::Overridden),
                "report_only: body forwarded unchanged"
            );
            for change in changes.edits.iter().filter(|c| c.op != Op::Kept) {
                let action = match change.op {
                    Op::Removed => "stripped",
                    op => op.as_str(),
                };
                metrics.would_change(&rule.name, action);
            }
        }
        Err(e) => {
            tracing::info!(
                rule = &*rule.name,
                would_reject = %e,
                "report_only: body forwarded unchanged"
            );
            metrics.would_change(&rule.name, "rejected");
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    (body, Some(content_type))
}

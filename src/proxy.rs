//! The request path, top to bottom: refuse what is ambiguous, canonicalize
//! the path, look the route up, then either edit the body of an intercepted
//! route ([`crate::intercept`]) or stream the request through untouched.
//! [`handle`] runs the stages and records their [`Outcome`] once.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};

use crate::connection::{ClientInfo, Lease};
use crate::error::ProxyError;
use crate::gateway::Generation;
use crate::headers;
use crate::intercept;
use crate::otel;
use crate::routing::{CanonicalPath, PathError, RouteKind};
use crate::rules::{Rule, RuleIndex};
use crate::upgrade;
use crate::websocket::{self, MessageRoute};

/// What became of one request: the route it took and either the response
/// to relay or the error the proxy answers with.
pub struct Outcome {
    /// The route kind.
    pub route: RouteKind,
    /// The rule that applied, and its place in the table.
    pub rule: Option<(RuleIndex, Arc<Rule>)>,
    /// The upstream's response, or why the proxy answers itself.
    pub result: Result<Response, ProxyError>,
}

/// Answers one proxied request from `client`: every path goes through here.
pub async fn handle(
    generation: Arc<Generation>,
    mut request: Request,
    client: ClientInfo,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let exported = otel::ServerSpan::take(&mut request);
    let outcome = serve(&generation, request, client).await;
    if let Some(server) = &exported {
        server.record_route(outcome.rule.as_ref().map(|(_, rule)| &**rule), client.tls);
    }
    let route = outcome.route.as_str();
    let rule = outcome.rule.as_ref().map(|(_, rule)| &rule.name);
    let span = tracing::Span::current();
    span.record("route", route);
    if let Some(rule) = rule {
        span.record("rule", &**rule);
    }
    let response = match outcome.result {
        Ok(response) => response,
        Err(error) => {
            let reason = error.reason();
            let response = error.into_problem(rule.map(|r| &**r));
            tracing::info!(
                route,
                rule = rule.map(|r| &**r),
                reason,
                status = response.status().as_u16(),
                "request refused"
            );
            generation.metrics.rejected(rule, reason);
            response
        }
    };
    let series = generation.series(outcome.rule.as_ref().map(|(index, _)| *index));
    generation
        .metrics
        .request(series, &method, response.status(), started.elapsed());
    response
}

/// The stages: checks on the request as received, the canonical path, the
/// route lookup, then the route's own handling.
async fn serve(generation: &Arc<Generation>, request: Request, client: ClientInfo) -> Outcome {
    let pass_through = |result| Outcome {
        route: RouteKind::PassThrough,
        rule: None,
        result,
    };
    if let Err(e) = check_request(&request) {
        return pass_through(Err(e));
    }
    let path = match CanonicalPath::parse(request.uri().path()) {
        Ok(path) => path,
        Err(e) => return pass_through(Err(e.into())),
    };
    match generation.config.rules.lookup(request.method(), &path) {
        Some((index, rule, route_path)) => Outcome {
            route: RouteKind::Intercepted,
            rule: Some((index, rule.clone())),
            result: Box::pin(intercept::intercept(
                generation.clone(),
                index,
                rule.clone(),
                request,
                client,
                route_path,
            ))
            .await,
        },
        None => pass_through(forward(generation, request, client, &path).await),
    }
}

/// Refuses what a downstream parser could read differently from us.
fn check_request(request: &Request) -> Result<(), ProxyError> {
    check_framing(request.headers(), request.version())?;
    check_target(request)
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

/// Streams any other request to the upstream and the response back, untouched
/// but for hop-by-hop headers and the canonical path. An upgrade request
/// answered with 101 becomes a tunnel: spliced blindly, or, on a path with
/// WebSocket rules (`inspected`), message by message.
async fn forward(
    generation: &Generation,
    mut request: Request,
    client: ClientInfo,
    path: &CanonicalPath,
) -> Result<Response, ProxyError> {
    let protocols = &generation.config.limits.upgrade_protocols;
    let asked = upgrade::upgrade_request(request.headers(), request.version(), protocols);
    // Only upgrade requests look for WebSocket rules.
    let inspected: Option<Arc<MessageRoute>> = asked
        .as_ref()
        .and_then(|_| generation.config.websocket.lookup(path).cloned());
    // On a path with WebSocket rules only WebSocket becomes a tunnel.
    let asked = asked.filter(|names| {
        inspected.is_none() || names.iter().all(|n| n.eq_ignore_ascii_case("websocket"))
    });
    let upgrade = asked.is_some();
    let inspected = inspected.filter(|_| upgrade);
    let client_upgrade = upgrade
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    let lease = client_upgrade
        .is_some()
        .then(|| request.extensions_mut().remove::<Lease>())
        .flatten();
    let host = headers::original_host(&request);
    let upstream = &generation.upstreams[inspected.as_ref().map_or(0, |r| r.upstream)];
    let uri = upstream.uri_for_target(path.as_path(), request.uri());
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    headers::prepare_headers(&mut headers, client, host, upgrade);
    if inspected.is_some() {
        // Compressed frames could not be inspected: no permessage-deflate.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    let traced = otel::ClientSpan::start(&parts.method, &uri, &mut headers);
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    let started = Instant::now();
    let mut response = otel::send(traced, upstream.send(outgoing)).await?;
    let took = started.elapsed();
    generation
        .metrics
        .upstream_latency(RouteKind::PassThrough, took);
    tracing::debug!(
        upstream_ms = took.as_millis() as u64,
        status = response.status().as_u16(),
        "upstream answered"
    );
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A switch nobody asked for, or to another protocol, is not relayed.
        let asked = asked.unwrap_or_default();
        match client_upgrade.filter(|_| upgrade::upgrades_to(response.headers(), &asked)) {
            Some(_)
                if inspected.is_some()
                    && response
                        .headers()
                        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS) =>
            {
                tracing::warn!(
                    "upstream negotiated a WebSocket extension nobody asked for; not relayed"
                );
                return Err(ProxyError::UpstreamFailed);
            }
            Some(client_upgrade) => {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let idle = generation.config.limits.upgrade_idle_timeout;
                let guard = generation.metrics.upgrade();
                match inspected {
                    Some(route) => websocket::inspect(
                        client_upgrade,
                        upstream_upgrade,
                        route,
                        idle,
                        generation.metrics.clone(),
                        guard,
                        lease,
                    ),
                    None => upgrade::splice_upgrade(
                        client_upgrade,
                        upstream_upgrade,
                        idle,
                        guard,
                        lease,
                    ),
                }
            }
            None => {
                tracing::warn!("upstream switched protocols unasked; not relayed");
                return Err(ProxyError::UpstreamFailed);
            }
        }
    }
    headers::prepare_response(&mut response);
    Ok(response)
}

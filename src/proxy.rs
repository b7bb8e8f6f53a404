//! The request path, top to bottom: refuse what is ambiguous, canonicalize
//! the path, look the route up ([`route`]), then either edit the body of an
//! intercepted route ([`crate::intercept`]) or make the request ready for the
//! upstream untouched ([`forward`]) and exchange it ([`exchange`]).
//! [`handle`] runs the stages and records their [`Outcome`] once.
//!
//! Everything before the upstream is a plain function, and each future holds
//! only what it needs after its await: a request's futures are boxed and
//! polled at every wake-up, so their size is paid in copies and in cache
//! misses with many connections (bench/NOTES.md).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::{self, Either};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};
use hyper::upgrade::OnUpgrade;

use crate::connection::{ClientInfo, Lease};
use crate::deadline::Deadlines;
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

/// Where a request goes, decided before anything is awaited.
enum Route {
    /// Refused as received.
    Refused(ProxyError),
    /// An intercepted route: its rule edits the body.
    Intercepted {
        index: RuleIndex,
        rule: Arc<Rule>,
        request: Request,
        client: ClientInfo,
        route_path: String,
    },
    /// Any other request, ready for its upstream.
    PassThrough(Forward),
}

/// Answers one proxied request from `client`: every path goes through here.
///
/// The stages before the upstream run here; the future returned is built
/// from combinators, which hold each part once (an async block would keep
/// a second copy of what it awaits).
pub fn handle(
    generation: Arc<Generation>,
    mut request: Request,
    client: ClientInfo,
) -> impl Future<Output = Response> + Send + 'static {
    let started = Instant::now();
    let method = request.method().clone();
    let exported = otel::ServerSpan::take(&mut request);
    let tls = client.tls;
    let outcome = match route(&generation, request, client) {
        Route::Refused(error) => Either::Left(future::ready(Outcome {
            route: RouteKind::PassThrough,
            rule: None,
            result: Err(error),
        })),
        Route::Intercepted {
            index,
            rule,
            request,
            client,
            route_path,
        } => {
            let editing = intercept::intercept(
                generation.clone(),
                index,
                rule.clone(),
                request,
                client,
                route_path,
            );
            Either::Right(Either::Left(editing.map(move |result| Outcome {
                route: RouteKind::Intercepted,
                rule: Some((index, rule)),
                result,
            })))
        }
        Route::PassThrough(forward) => Either::Right(Either::Right(
            exchange(generation.clone(), forward).map(|result| Outcome {
                route: RouteKind::PassThrough,
                rule: None,
                result,
            }),
        )),
    };
    outcome.map(move |outcome| answer(&generation, outcome, exported, tls, &method, started))
}

/// The response to a request's [`Outcome`], recorded in its span, its
/// trace and the metrics.
fn answer(
    generation: &Generation,
    outcome: Outcome,
    exported: Option<otel::ServerSpan>,
    tls: bool,
    method: &Method,
    started: Instant,
) -> Response {
    if let Some(server) = &exported {
        server.record_route(outcome.rule.as_ref().map(|(_, rule)| &**rule), tls);
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
        .request(series, method, response.status(), started.elapsed());
    response
}

/// The stages before the upstream: checks on the request as received, the
/// canonical path, the route lookup and, for any other request, making it
/// ready for its upstream.
fn route(generation: &Generation, request: Request, client: ClientInfo) -> Route {
    if let Err(e) = check_request(&request) {
        return Route::Refused(e);
    }
    let path = match CanonicalPath::parse(request.uri().path()) {
        Ok(path) => path,
        Err(e) => return Route::Refused(e.into()),
    };
    match generation.config.rules.lookup(request.method(), &path) {
        Some((index, rule, route_path)) => Route::Intercepted {
            index,
            rule: rule.clone(),
            request,
            client,
            route_path,
        },
        None => Route::PassThrough(forward(generation, request, client, &path)),
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
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(length) = lengths.next() else {
        return Ok(());
    };
    if lengths.next().is_some() {
        return Err(ProxyError::Framing("repeated Content-Length"));
    }
    if length.to_str().map_or(true, |v| v.contains(',')) {
        return Err(ProxyError::Framing("Content-Length with several values"));
    }
    if version <= Version::HTTP_11 && headers.contains_key(header::TRANSFER_ENCODING) {
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

/// Any other request, made ready for its upstream.
struct Forward {
    /// Index into the generation's upstreams.
    upstream: usize,
    outgoing: http::Request<axum::body::Body>,
    traced: Option<otel::ClientSpan>,
    /// The client connection's timer, for the response timeout.
    deadlines: Option<Deadlines>,
    /// Set for an upgrade request (boxed: rare, and a few words).
    upgrading: Option<Box<Upgrading>>,
}

/// What an upgrade request's answer needs to become a tunnel.
struct Upgrading {
    /// The protocols the client asked for.
    asked: Vec<String>,
    /// The client's side of the tunnel.
    client: Option<OnUpgrade>,
    /// The connection's slot, which the tunnel takes over.
    lease: Option<Lease>,
    /// The path's WebSocket rules: the tunnel is inspected message by message.
    inspected: Option<Arc<MessageRoute>>,
}

/// Makes a request ready for the upstream, untouched but for hop-by-hop
/// headers and the canonical path. Only upgrade requests look for WebSocket
/// rules, and on a path with some, only WebSocket becomes a tunnel.
fn forward(
    generation: &Generation,
    mut request: Request,
    client: ClientInfo,
    path: &CanonicalPath,
) -> Forward {
    let protocols = &generation.config.limits.upgrade_protocols;
    let asked = upgrade::upgrade_request(request.headers(), request.version(), protocols);
    let inspected: Option<Arc<MessageRoute>> = asked
        .as_ref()
        .and_then(|_| generation.config.websocket.lookup(path).cloned());
    let asked = asked.filter(|names| {
        inspected.is_none() || names.iter().all(|n| n.eq_ignore_ascii_case("websocket"))
    });
    let upgrade = asked.is_some();
    let inspected = inspected.filter(|_| upgrade);
    let client_upgrade = upgrade
        .then(|| request.extensions_mut().remove::<OnUpgrade>())
        .flatten();
    let lease = client_upgrade
        .is_some()
        .then(|| request.extensions_mut().remove::<Lease>())
        .flatten();
    let host = headers::original_host(&request);
    let upstream = inspected.as_ref().map_or(0, |r| r.upstream);
    let uri = generation.upstreams[upstream].uri_for_target(path.as_path(), request.uri());
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    headers::prepare_headers(&mut headers, &client, host, upgrade);
    if inspected.is_some() {
        // Compressed frames could not be inspected: no permessage-deflate.
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    let traced = otel::ClientSpan::start(&parts.method, &uri, &mut headers);
    let mut outgoing = http::Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    Forward {
        upstream,
        outgoing,
        traced,
        deadlines: client.deadlines,
        upgrading: asked.map(|asked| {
            Box::new(Upgrading {
                asked,
                client: client_upgrade,
                lease,
                inspected,
            })
        }),
    }
}

/// Streams a request to its upstream and the response back. An upgrade
/// request answered with 101 becomes a tunnel ([`tunnel`]).
fn exchange(
    generation: Arc<Generation>,
    forward: Forward,
) -> impl Future<Output = Result<Response, ProxyError>> + Send + 'static {
    let Forward {
        upstream,
        outgoing,
        traced,
        deadlines,
        upgrading,
    } = forward;
    let started = Instant::now();
    let sending = generation.upstreams[upstream].send(outgoing, deadlines.as_ref(), started);
    otel::send(traced, sending).map(move |result| {
        let mut response = result?;
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
            tunnel(&generation, &mut response, upgrading)?;
        }
        headers::prepare_response(&mut response);
        Ok(response)
    })
}

/// Answers a 101: the tunnel the client asked for, spliced blindly or, on a
/// path with WebSocket rules, inspected message by message. A switch nobody
/// asked for, to another protocol, or with a WebSocket extension nobody
/// offered is not relayed.
fn tunnel(
    generation: &Generation,
    response: &mut Response,
    upgrading: Option<Box<Upgrading>>,
) -> Result<(), ProxyError> {
    let (client, asked, lease, inspected) = match upgrading {
        Some(upgrading) => {
            let Upgrading {
                asked,
                client,
                lease,
                inspected,
            } = *upgrading;
            (client, asked, lease, inspected)
        }
        None => (None, Vec::new(), None, None),
    };
    match client.filter(|_| upgrade::upgrades_to(response.headers(), &asked)) {
        Some(_)
            if inspected.is_some()
                && response
                    .headers()
                    .contains_key(header::SEC_WEBSOCKET_EXTENSIONS) =>
        {
            tracing::warn!(
                "upstream negotiated a WebSocket extension nobody asked for; not relayed"
            );
            Err(ProxyError::UpstreamFailed)
        }
        Some(client_upgrade) => {
            let upstream_upgrade = hyper::upgrade::on(response);
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
                None => {
                    upgrade::splice_upgrade(client_upgrade, upstream_upgrade, idle, guard, lease)
                }
            }
            Ok(())
        }
        None => {
            tracing::warn!("upstream switched protocols unasked; not relayed");
            Err(ProxyError::UpstreamFailed)
        }
    }
}

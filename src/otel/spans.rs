//! The two spans of a proxied request and the W3C trace context around them.
//!
//! Attributes follow the OpenTelemetry HTTP semantic conventions, limited to
//! what the proxy knows without reading client data: the method, the route
//! template of the rule that applied, the status, the scheme and protocol
//! version, the upstream's host and port. Never header values, the path, the
//! query string or a body: they carry tokens, ids and message text.

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use futures_util::FutureExt;
use futures_util::future::Either;
use http::header::{HeaderMap, HeaderName};
use http::{Method, Response, StatusCode, Uri, Version};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ProxyError;
use crate::rules::Rule;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The SERVER span of one request, from its head to its response head.
#[derive(Clone)]
pub struct ServerSpan {
    span: tracing::Span,
    method: &'static str,
}

impl ServerSpan {
    /// With export on: a SERVER span continuing the request's `traceparent`
    /// and `tracestate` (a new trace without them), also left in the
    /// request's extensions for [`ServerSpan::take`]. `None`, having read
    /// nothing, with export off.
    pub fn start(request: &mut Request) -> Option<Self> {
        if !super::enabled() {
            return None;
        }
        let method = method_attribute(request.method());
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let span = tracing::info_span!(
            target: super::TARGET,
            "server",
            otel.name = span_name(method),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = Empty,
            http.response.status_code = Empty,
            url.scheme = Empty,
            network.protocol.version = protocol_version(request.version()),
            guestgate.rule = Empty,
            error.type = Empty,
        );
        // Fails only when the span is disabled, and then there is nothing to trace.
        let _ = span.set_parent(parent);
        let this = Self { span, method };
        request.extensions_mut().insert(this.clone());
        Some(this)
    }

    /// The span [`ServerSpan::start`] left in `request`, for the handler
    /// to record what it learns.
    pub fn take(request: &mut Request) -> Option<Self> {
        if !super::enabled() {
            return None;
        }
        request.extensions_mut().remove::<Self>()
    }

    /// Enters the span, for work done before the future [`ServerSpan::instrument`]
    /// wraps is polled.
    pub fn enter(&self) -> tracing::span::Entered<'_> {
        self.span.enter()
    }

    /// Runs `future` inside the span, so the upstream call's span is its child.
    pub fn instrument<F: Future>(&self, future: F) -> tracing::instrument::Instrumented<F> {
        future.instrument(self.span.clone())
    }

    /// Records the rule that applied (its route template names the span)
    /// and the scheme the client used.
    pub fn record_route(&self, rule: Option<&Rule>, tls: bool) {
        self.span
            .record("url.scheme", if tls { "https" } else { "http" });
        if let Some(rule) = rule {
            let route = rule.route().to_string();
            // The span has started (its name went to the sampler): renamed
            // through OpenTelemetry, as `otel.name` no longer applies.
            let name = format!("{} {route}", span_name(self.method));
            self.span.context().span().update_name(name);
            self.span.record("http.route", route);
            self.span.record("guestgate.rule", &*rule.name);
        }
    }

    /// Records the status answered; 5xx marks the span as failed.
    pub fn finish(&self, status: StatusCode) {
        self.span
            .record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", status.as_str());
        }
    }
}

/// The CLIENT span of one upstream call (retries of an intercepted route
/// included).
pub struct ClientSpan(tracing::Span);

impl ClientSpan {
    /// With export on: a CLIENT span, child of the current server span, for
    /// a request about to go to `uri`; its `traceparent` (and `tracestate`)
    /// replace whatever the client sent in `headers`. `None`, touching
    /// nothing, with export off.
    pub fn start(method: &Method, uri: &Uri, headers: &mut HeaderMap) -> Option<Self> {
        if !super::enabled() {
            return None;
        }
        let method = method_attribute(method);
        let host = uri.host().unwrap_or_default();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let span = tracing::info_span!(
            target: super::TARGET,
            "client",
            otel.name = span_name(method),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            server.address = host.trim_start_matches('[').trim_end_matches(']'),
            server.port = i64::from(port),
            http.response.status_code = Empty,
            network.protocol.version = Empty,
            error.type = Empty,
        );
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
        Some(Self(span))
    }

    /// Awaits `send` inside the span and records its outcome: the status
    /// (4xx and 5xx mark the span as failed, as the conventions have it for
    /// clients) or the failure.
    fn send<F>(self, send: F) -> impl Future<Output = Result<Response<Body>, ProxyError>>
    where
        F: Future<Output = Result<Response<Body>, ProxyError>>,
    {
        send.instrument(self.0.clone()).map(move |result| {
            let span = &self.0;
            match &result {
                Ok(response) => {
                    let status = response.status();
                    span.record("http.response.status_code", i64::from(status.as_u16()));
                    span.record(
                        "network.protocol.version",
                        protocol_version(response.version()),
                    );
                    if status.is_client_error() || status.is_server_error() {
                        span.record("otel.status_code", "ERROR");
                        span.record("error.type", status.as_str());
                    }
                }
                Err(error) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", error.reason());
                }
            }
            result
        })
    }
}

/// Awaits an upstream call, inside `span` when there is one.
pub fn send<F>(
    span: Option<ClientSpan>,
    send: F,
) -> impl Future<Output = Result<Response<Body>, ProxyError>>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    match span {
        Some(span) => Either::Left(span.send(send)),
        None => Either::Right(send),
    }
}

/// `http.request.method`: the known methods, `_OTHER` for the rest (a
/// client-chosen token is neither bounded nor safe to export).
fn method_attribute(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The span name's method part: `HTTP` stands for `_OTHER`.
fn span_name(method: &'static str) -> &'static str {
    if method == "_OTHER" { "HTTP" } else { method }
}

/// `network.protocol.version`
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values() {
        assert_eq!(method_attribute(&Method::POST), "POST");
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_attribute(&odd), "_OTHER");
        assert_eq!(span_name(method_attribute(&odd)), "HTTP");
        assert_eq!(protocol_version(Version::HTTP_11), "1.1");
        assert_eq!(protocol_version(Version::HTTP_2), "2");
    }

    #[test]
    fn nothing_is_read_or_written_with_export_off() {
        let mut request = Request::new(Body::empty());
        request.headers_mut().insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        assert!(ServerSpan::start(&mut request).is_none());
        assert!(request.extensions().get::<ServerSpan>().is_none());
        let mut headers = request.headers().clone();
        let uri: Uri = "http://upstream:8080/x".parse().unwrap();
        assert!(ClientSpan::start(&Method::GET, &uri, &mut headers).is_none());
        assert_eq!(&headers, request.headers());
    }
}

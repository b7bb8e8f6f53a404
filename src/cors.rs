//! CORS for browser widgets: the proxy answers preflights itself and decides
//! which origins may read responses, so the upstream's own CORS policy (or
//! lack of one) never matters to a widget.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use serde::{Deserialize, Serialize};

/// `[cors]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed to call through the proxy: exact (`https://a.example`)
    /// or one leading wildcard label (`https://*.example.com`). Empty disables CORS.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub allowed_origins: Vec<String>,
    /// Methods allowed in preflight answers.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub allowed_methods: Vec<String>,
    /// Request headers allowed in preflight answers.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub allowed_headers: Vec<String>,
    /// Response headers a page may read beyond the CORS-safelisted ones.
    #[serde(deserialize_with = "crate::de::string_list")]
    pub expose_headers: Vec<String>,
    /// Allow cookies and Authorization on cross-origin requests.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age_secs: u64,
}

/// One `cors.allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://shop.example.com` (scheme, host and port compared exactly).
    Exact(String),
    /// `https://*.example.com`: any subdomain (one label or more) of
    /// `example.com` over that scheme, but not `example.com` itself.
    Subdomains {
        /// `https://`
        scheme: String,
        /// `.example.com`, with its port if one was given.
        suffix: String,
    },
}

impl OriginPattern {
    /// Parses an entry; origins are ASCII and compared in lower case.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim().to_ascii_lowercase();
        let (scheme, host) = entry
            .split_once("://")
            .ok_or_else(|| format!("{entry:?} is not an origin like https://shop.example.com"))?;
        if !matches!(scheme, "http" | "https") {
            return Err(format!("{entry:?} must start with http:// or https://"));
        }
        let valid = |h: &str| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        };
        match host.strip_prefix("*.") {
            Some(rest) if valid(rest) && rest.contains('.') => Ok(Self::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{rest}"),
            }),
            None if valid(host) => Ok(Self::Exact(entry)),
            _ => Err(format!(
                "{entry:?} is not an origin like https://shop.example.com or https://*.example.com (no path, no other wildcard)"
            )),
        }
    }

    /// True when a request's `Origin` header value is allowed by this entry.
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        match self {
            Self::Exact(exact) => origin == *exact,
            Self::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|label| {
                    !label.is_empty()
                        && label.split('.').all(|l| {
                            !l.is_empty()
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                }),
        }
    }
}

/// Validates `[cors]`, adding one line per problem; returns the parsed origins.
pub fn check_settings(cors: &CorsSettings, problems: &mut Vec<String>) -> Vec<OriginPattern> {
    let mut origins = Vec::new();
    for entry in &cors.allowed_origins {
        if entry.trim() == "*" {
            problems.push(
                "cors.allowed_origins: \"*\" is not accepted; list the widget origins (patterns like https://*.example.com work)".into(),
            );
            continue;
        }
        match OriginPattern::parse(entry) {
            Ok(origin) => origins.push(origin),
            Err(e) => problems.push(format!("cors.allowed_origins: {e}")),
        }
    }
    for method in &cors.allowed_methods {
        if method.parse::<Method>().is_err() {
            problems.push(format!("cors.allowed_methods: {method:?} is not a method"));
        }
    }
    for (name, list) in [
        ("cors.allowed_headers", &cors.allowed_headers),
        ("cors.expose_headers", &cors.expose_headers),
    ] {
        for header in list {
            if header.trim() == "*" || header.parse::<HeaderName>().is_err() {
                problems.push(format!("{name}: {header:?} is not a header name"));
            }
        }
    }
    origins
}

/// CORS for one configuration, when origins are configured.
///
/// Only browser CORS traffic goes through the CORS layer: requests with an
/// `Origin`, where an `OPTIONS` also carries `Access-Control-Request-Method`
/// (a preflight, answered here without touching the upstream). Other
/// `OPTIONS` requests and requests without `Origin` pass through untouched.
/// The upstream's own `Access-Control-*` response headers are removed on
/// CORS traffic, so an upstream answering `*` cannot open the API to other
/// sites, and a disallowed origin gets no `Access-Control-*` header at all.
#[derive(Clone)]
pub struct Cors {
    origins: Arc<Vec<OriginPattern>>,
    with_cors: Router,
}

impl Cors {
    /// Wraps the proxy's router in the configured CORS policy; `None` when
    /// no origin is allowed (then no request is treated as CORS traffic).
    pub fn new(proxy: Router, cors: &CorsSettings, origins: &[OriginPattern]) -> Option<Self> {
        if origins.is_empty() {
            return None;
        }
        let origins = Arc::new(origins.to_vec());
        let predicate = origins.clone();
        let parse_headers = |list: &[String]| -> Vec<HeaderName> {
            list.iter().filter_map(|h| h.parse().ok()).collect()
        };
        let layer = CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin, _| {
                is_allowed(&predicate, origin)
            }))
            .allow_methods(
                cors.allowed_methods
                    .iter()
                    .filter_map(|m| m.parse().ok())
                    .collect::<Vec<Method>>(),
            )
            .allow_headers(parse_headers(&cors.allowed_headers))
            .expose_headers(parse_headers(&cors.expose_headers))
            .allow_credentials(cors.allow_credentials)
            .max_age(Duration::from_secs(cors.max_age_secs));
        let with_cors = proxy
            .layer(axum::middleware::map_response(strip_cors_headers))
            .layer(layer);
        Some(Self { origins, with_cors })
    }

    /// Whether a request is browser CORS traffic (see [`Cors`]).
    pub fn applies(request: &Request) -> bool {
        request.headers().contains_key(header::ORIGIN)
            && (request.method() != Method::OPTIONS
                || request
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD))
    }

    /// Finishes a response to a request that is not CORS traffic while CORS
    /// is on: the upstream's own `Access-Control-*` headers are removed (only
    /// the configured policy speaks for the proxy) and `Vary: Origin` tells
    /// caches that the answer to a cross-origin request would differ.
    pub fn not_cross_origin(mut response: Response) -> Response {
        let headers = response.headers_mut();
        strip_cors(headers);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        response
    }

    /// Answers CORS traffic: preflights here, the rest through the proxy.
    pub async fn call(&self, request: Request) -> Response {
        let allowed = request
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|origin| is_allowed(&self.origins, origin));
        let response = self
            .with_cors
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        if allowed {
            response
        } else {
            strip_cors_headers(response).await
        }
    }
}

fn is_allowed(origins: &[OriginPattern], origin: &HeaderValue) -> bool {
    origin
        .to_str()
        .is_ok_and(|origin| origins.iter().any(|p| p.matches(origin)))
}

/// Removes every `Access-Control-*` response header.
async fn strip_cors_headers(mut response: Response) -> Response {
    strip_cors(response.headers_mut());
    response
}

fn strip_cors(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let exact = OriginPattern::parse("https://Shop.example.com").unwrap();
        assert!(exact.matches("https://shop.example.com"));
        assert!(!exact.matches("http://shop.example.com"));
        assert!(!exact.matches("https://shop.example.com:8443"));
        let wild = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://evil-example.com"));
        assert!(!wild.matches("https://a.example.com.evil.net"));
        assert!(!wild.matches("http://a.example.com"));
        assert!(!wild.matches("https://a..example.com"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "shop.example.com",
            "ftp://x.example",
            "https://*.com",
            "https://a.*.example.com",
            "https://x.example/path",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }
}

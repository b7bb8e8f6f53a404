//! Forwarding to the upstream: header rewriting, the pooled client, and
//! protocol upgrades (WebSocket) spliced both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::config::{BaseUrl, Config};
use crate::error::ProxyError;

/// Headers that a client may use to make a framework treat a request as another method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
];

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and common legacy ones): they
/// describe one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request headers never forwarded: hop-by-hop ones, `Upgrade` (put back
/// for upgrade requests), `Expect` (answered here), `Host` (the client sets
/// the upstream's) and method overrides.
const REQUEST_DROPPED: [HeaderName; 14] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    header::HOST,
    HeaderName::from_static(METHOD_OVERRIDE_HEADERS[0]),
    HeaderName::from_static(METHOD_OVERRIDE_HEADERS[1]),
    HeaderName::from_static(METHOD_OVERRIDE_HEADERS[2]),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The pooled client to the one configured upstream.
#[derive(Clone)]
pub struct Upstream {
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
    pub fn new(config: &Config) -> Self {
        let settings = &config.settings.upstream;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        let tls = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config.upstream_tls.as_ref().clone())
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
        Self {
            client: client(https.clone()),
            upgrades: client(tls().wrap_connector(http)),
            connector: https,
            base: config.upstream.clone(),
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
        Uri::builder()
            .scheme(self.base.scheme.clone())
            .authority(self.base.authority.clone())
            .path_and_query(pq)
            .build()
            .expect("canonical path and validated query form a valid URI")
    }

    /// Sends a prepared request and waits for the response head. Only
    /// upgrade requests keep an `Upgrade` header (see [`prepare_headers`]).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let client = if request.headers().contains_key(header::UPGRADE) {
            &self.upgrades
        } else {
            &self.client
        };
        let pending = client.request(request);
        match tokio::time::timeout(self.response_timeout, pending).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(
                self.response_timeout.as_millis() as u64,
            )),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(error = %e, "upstream connect failed");
                Err(ProxyError::UpstreamUnreachable)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                Err(ProxyError::UpstreamFailed)
            }
            Ok(Ok(response)) => Ok(response.map(Body::new)),
        }
    }
}

/// The protocols an HTTP/1.1 request asks to switch to, when it is an
/// upgrade request listing only protocols in `allowed` (e.g. WebSocket);
/// `None` otherwise, and the request is forwarded as a plain one.
pub fn upgrade_request(
    headers: &HeaderMap,
    version: Version,
    allowed: &[String],
) -> Option<Vec<String>> {
    if version != Version::HTTP_11
        || !connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let names = upgrade_names(headers);
    only(&names, allowed).then_some(names)
}

/// True when `headers` carry an `Upgrade` listing only protocols in
/// `allowed`: a 101 answer must switch to what the request asked for.
pub fn upgrades_to(headers: &HeaderMap, allowed: &[String]) -> bool {
    only(&upgrade_names(headers), allowed)
}

fn only(names: &[String], allowed: &[String]) -> bool {
    !names.is_empty()
        && names
            .iter()
            .all(|name| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// The protocol names (any `/version` aside) that `Upgrade` lists; none
/// when a value is not visible ASCII.
fn upgrade_names(headers: &HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for value in headers.get_all(header::UPGRADE) {
        let Ok(value) = value.to_str() else {
            return Vec::new();
        };
        let protocols = value.split(',').map(str::trim).filter(|p| !p.is_empty());
        names.extend(protocols.map(|p| p.split('/').next().unwrap_or_default().to_owned()));
    }
    names
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_all(headers, &HOP_BY_HOP);
}

/// Removes `names` and the headers the Connection header names (which is
/// one of `names`). Looking through the few headers a message has first is
/// cheaper than a hash lookup per name when, as usual, none is there.
fn remove_all(headers: &mut HeaderMap, names: &[HeaderName]) {
    if !headers.keys().any(|name| names.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(names) {
        headers.remove(name);
    }
}

/// Who the client was and how it reached us, for the X-Forwarded-* headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the client connection used TLS.
    pub tls: bool,
}

/// Rewrites a client request's headers for the upstream: hop-by-hop headers and
/// method overrides removed, Host left to the client (it sets the upstream's),
/// X-Forwarded-For/-Proto/-Host added. Upgrade requests keep their Upgrade header.
pub fn prepare_headers(
    headers: &mut HeaderMap,
    client: ClientInfo,
    host: Option<HeaderValue>,
    upgrade: bool,
) {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    remove_all(headers, &REQUEST_DROPPED);
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    let ip = client.peer.ip();
    append_hop(headers, X_FORWARDED_FOR, &ip.to_string(), |_| true);
    if headers.contains_key(header::FORWARDED) {
        // RFC 7239: only appended to, so an upstream reading it finds this
        // hop last, as in X-Forwarded-For.
        let proto = if client.tls { "https" } else { "http" };
        let node = match ip {
            std::net::IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
        };
        append_hop(headers, header::FORWARDED, &node, quotes_closed);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    );
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// Appends `hop` to a list header, joining every line the client sent. A
/// list with a line that is not visible ASCII or fails `valid` is replaced
/// by `hop` alone.
fn append_hop(headers: &mut HeaderMap, name: HeaderName, hop: &str, valid: fn(&str) -> bool) {
    let mut list = String::new();
    for prior in headers.get_all(&name) {
        match prior.to_str() {
            Ok(prior) if valid(prior) => {
                let prior = prior.trim();
                if !prior.is_empty() {
                    list.push_str(prior);
                    list.push_str(", ");
                }
            }
            _ => {
                list.clear();
                break;
            }
        }
    }
    list.push_str(hop);
    if let Ok(value) = HeaderValue::try_from(list) {
        headers.insert(name, value);
    }
}

/// True when every quoted string in a `Forwarded` line is closed, so an
/// element appended after it stands on its own (RFC 7239 section 4).
fn quotes_closed(line: &str) -> bool {
    let mut quoted = false;
    let mut bytes = line.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'"' => quoted = !quoted,
            b'\\' if quoted && bytes.next().is_none() => return false,
            _ => {}
        }
    }
    !quoted
}

/// Cleans an upstream response for the client: hop-by-hop headers removed
/// (the client connection has its own framing), everything else unchanged.
pub fn prepare_response(response: &mut Response<Body>) {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upgrade = response.headers().get(header::UPGRADE).cloned();
        strip_hop_by_hop(response.headers_mut());
        if let Some(upgrade) = upgrade {
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, upgrade);
        }
    } else {
        strip_hop_by_hop(response.headers_mut());
    }
}

/// What a tunnel keeps of the client connection it takes over: the
/// connection's slot under `server.max_connections` (so tunnels are capped
/// and the shutdown drain waits for them), and word of the server closing
/// when the drain time is up. The server puts one on every upgrade request.
#[derive(Clone)]
pub struct Lease {
    _slot: Arc<OwnedSemaphorePermit>,
    closing: watch::Receiver<bool>,
}

impl Lease {
    /// A lease on `slot` that ends when `closing` turns true.
    pub fn new(slot: Arc<OwnedSemaphorePermit>, closing: watch::Receiver<bool>) -> Self {
        Self {
            _slot: slot,
            closing,
        }
    }

    /// Resolves when the server closes its remaining connections (or is gone).
    pub async fn closed(&mut self) {
        let _ = self.closing.wait_for(|closing| *closing).await;
    }
}

/// Splices an upgraded client connection to the upgraded upstream connection
/// until either side closes, no byte moved either way for `idle`, or the
/// server closes the `lease`. `guard` lives as long as the splice (it keeps
/// the open-upgrades gauge).
pub fn splice_upgrade<G: Send + 'static>(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    guard: G,
    lease: Option<Lease>,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let closed = async move {
            match lease {
                Some(mut lease) => lease.closed().await,
                None => std::future::pending().await,
            }
        };
        let run = async {
            let (client, upstream) = tokio::try_join!(client, upstream)
                .map_err(|e| std::io::Error::other(format!("upgrade did not complete: {e}")))?;
            splice(TokioIo::new(client), TokioIo::new(upstream), idle).await
        };
        let result = tokio::select! {
            result = run => result,
            () = closed => Err(std::io::Error::other("server shutting down")),
        };
        match result {
            Ok((up, down)) => tracing::debug!(
                bytes_up = up,
                bytes_down = down,
                "upgraded connection closed"
            ),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
        }
    });
}

/// Copies both ways; every read restarts the idle timer. A side that closes
/// its write half has the close passed on; the splice ends when both did.
async fn splice<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let mut a_buf = vec![0u8; 16 * 1024];
    let mut b_buf = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    let (mut up, mut down) = (0u64, 0u64);
    while a_open || b_open {
        tokio::select! {
            read = a_read.read(&mut a_buf), if a_open => match read? {
                0 => { a_open = false; b_write.shutdown().await?; }
                n => { b_write.write_all(&a_buf[..n]).await?; up += n as u64; }
            },
            read = b_read.read(&mut b_buf), if b_open => match read? {
                0 => { b_open = false; a_write.shutdown().await?; }
                n => { a_write.write_all(&b_buf[..n]).await?; down += n as u64; }
            },
            () = tokio::time::sleep(idle) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
    }
    Ok((up, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo {
            peer: "10.1.2.3:5555".parse().unwrap(),
            tls: false,
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret-Hop".parse().unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-http-method-override", "DELETE".parse().unwrap());
        h.insert(header::EXPECT, "100-continue".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        h.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
        prepare_headers(
            &mut h,
            client(),
            Some("proxy.example".parse().unwrap()),
            false,
        );
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "authorization",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "proxy.example");
    }

    #[test]
    fn forwarding_lists_are_joined_and_appended_to() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        h.append(header::FORWARDED, "for=1.1.1.1".parse().unwrap());
        let v6 = ClientInfo {
            peer: "[2001:db8::1]:443".parse().unwrap(),
            tls: true,
        };
        prepare_headers(&mut h, v6, None, false);
        assert_eq!(
            h["x-forwarded-for"],
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 2001:db8::1"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h[header::FORWARDED],
            "for=1.1.1.1, for=\"[2001:db8::1]\";proto=https"
        );
        // Not sent, not invented; not ASCII or an unclosed quote (which would
        // swallow this hop's element), replaced.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        prepare_headers(&mut h, client(), None, false);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert!(!h.contains_key(header::FORWARDED));
        for bad in [&b"for=\xff"[..], b"for=6.6.6.6, x=\"", b"x=\"a\\\""] {
            h.insert(header::FORWARDED, HeaderValue::from_bytes(bad).unwrap());
            prepare_headers(&mut h, client(), None, false);
            assert_eq!(h[header::FORWARDED], "for=10.1.2.3;proto=http");
        }
        h.insert(
            header::FORWARDED,
            r#"for="[::1]";x="a\"b,c""#.parse().unwrap(),
        );
        prepare_headers(&mut h, client(), None, false);
        assert_eq!(
            h[header::FORWARDED],
            r#"for="[::1]";x="a\"b,c", for=10.1.2.3;proto=http"#
        );
    }

    #[test]
    fn upgrade_requests_keep_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        let allowed = ["websocket".to_owned()];
        assert_eq!(
            upgrade_request(&h, Version::HTTP_11, &allowed),
            Some(vec!["websocket".to_owned()])
        );
        assert!(upgrade_request(&h, Version::HTTP_2, &allowed).is_none());
        prepare_headers(&mut h, client(), None, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn only_allowed_protocols_are_upgrades() {
        let allowed = ["websocket".to_owned()];
        let upgrade = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
            h.insert(header::UPGRADE, value.parse().unwrap());
            upgrade_request(&h, Version::HTTP_11, &allowed).is_some()
        };
        assert!(upgrade("websocket"));
        assert!(upgrade("WebSocket"));
        assert!(upgrade("websocket/13"));
        assert!(!upgrade("h2c"));
        assert!(!upgrade("websocket, h2c"));
        assert!(!upgrade(" , "));
        assert!(!upgrade("TLS/1.3"));
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(
            upgrade_request(&h, Version::HTTP_11, &allowed).is_none(),
            "no Connection: upgrade"
        );
        h.insert(header::CONNECTION, "upgrade".parse().unwrap());
        h.append(header::UPGRADE, "h2c".parse().unwrap());
        assert!(
            upgrade_request(&h, Version::HTTP_11, &allowed).is_none(),
            "h2c on a second line"
        );
        h.remove(header::UPGRADE);
        assert!(
            upgrade_request(&h, Version::HTTP_11, &allowed).is_none(),
            "no Upgrade"
        );
    }
}

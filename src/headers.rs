//! Header rewriting between client and upstream: hop-by-hop headers and
//! method overrides removed, this hop added to the forwarding headers.

use std::cell::RefCell;
use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::connection::ClientInfo;

/// Headers that a client may use to make a framework treat a request as another method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
];

/// Every header either removal below can drop, in the order of their bits.
/// A static, not a const: a const array of `HeaderName`s is built and dropped
/// again at every use.
static REMOVABLE: [HeaderName; 14] = [
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

/// The bit of `name` in [`REMOVABLE`], 0 for any other header: one `match`
/// on the (lower-case) name instead of comparing it with every entry.
fn removable_bit(name: &str) -> u32 {
    match name {
        "connection" => 1 << 0,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authenticate" => 1 << 3,
        "proxy-authorization" => 1 << 4,
        "te" => 1 << 5,
        "trailer" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "upgrade" => 1 << 8,
        "expect" => 1 << 9,
        "host" => 1 << 10,
        "x-http-method-override" => 1 << 11,
        "x-method-override" => 1 << 12,
        "x-http-method" => 1 << 13,
        _ => 0,
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and common legacy ones): they
/// describe one connection and are never forwarded.
const HOP_BY_HOP: u32 = (1 << 8) - 1;

/// `Host` in [`REMOVABLE`].
const HOST_BIT: u32 = 1 << 10;

/// Request headers never forwarded: hop-by-hop ones, `Upgrade` (put back
/// for upgrade requests), `Expect` (answered here) and method overrides.
/// `Host` is the sending client's to set ([`crate::upstream::Upstream::send`]):
/// the HTTP/1 pool overwrites it in place, one map lookup instead of a
/// removal here and an insertion there.
const REQUEST_DROPPED: u32 = ((1 << 14) - 1) & !HOST_BIT;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The tokens of every `Connection` header line.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
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
    remove_all(headers, HOP_BY_HOP);
}

/// Removes the headers of `set` (bits of [`REMOVABLE`], `Connection`
/// among them) and those the Connection header names. One pass over the
/// few headers a message has finds which of them are there, so only those
/// are looked up again to be removed; the usual request has none, the
/// usual response one (`Connection: keep-alive`).
fn remove_all(headers: &mut HeaderMap, set: u32) {
    debug_assert!(set & 1 != 0);
    let mut present = headers
        .keys()
        .fold(0, |present, name| present | removable_bit(name.as_str()))
        & set;
    if present == 0 {
        return;
    }
    if present & 1 != 0 && remove_keep_alive(headers) {
        present &= !1;
    } else if present & 1 != 0 {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                !REMOVABLE
                    .iter()
                    .enumerate()
                    .any(|(i, n)| set & (1 << i) != 0 && t.eq_ignore_ascii_case(n.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in REMOVABLE.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes the usual `Connection: keep-alive`, which names no header beyond
/// the hop-by-hop ones, with the one lookup that finds it; false (nothing
/// removed) for any other `Connection`, which is then read token by token.
fn remove_keep_alive(headers: &mut HeaderMap) -> bool {
    let Ok(Entry::Occupied(connection)) = headers.try_entry(header::CONNECTION) else {
        return false;
    };
    let mut lines = connection.iter();
    match (lines.next(), lines.next()) {
        (Some(line), None) if line.as_bytes().eq_ignore_ascii_case(b"keep-alive") => {
            connection.remove();
            true
        }
        _ => false,
    }
}

/// Rewrites a client request's headers for the upstream: hop-by-hop headers and
/// method overrides removed, Host left to the sending client (it sets the upstream's),
/// X-Forwarded-For/-Proto/-Host added. Upgrade requests keep their Upgrade header.
pub fn prepare_headers(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<HeaderValue>,
    upgrade: bool,
) {
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    remove_all(headers, REQUEST_DROPPED);
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    let ip = client.peer.ip();
    append_hop(headers, X_FORWARDED_FOR, address_value(ip), |_| true);
    if headers.contains_key(header::FORWARDED) {
        // RFC 7239: only appended to, so an upstream reading it finds this
        // hop last, as in X-Forwarded-For.
        let proto = if client.tls { "https" } else { "http" };
        let node = match ip {
            IpAddr::V4(ip) => format!("for={ip};proto={proto}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={proto}"),
        };
        if let Ok(node) = HeaderValue::try_from(node) {
            append_hop(headers, header::FORWARDED, node, quotes_closed);
        }
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
/// by `hop` alone. The name is looked up once, through its entry.
fn append_hop(
    headers: &mut HeaderMap,
    name: HeaderName,
    hop: HeaderValue,
    valid: fn(&str) -> bool,
) {
    let mut prior_lines = match headers.entry(name) {
        Entry::Vacant(vacant) => {
            vacant.insert(hop);
            return;
        }
        Entry::Occupied(prior_lines) => prior_lines,
    };
    let mut list = String::new();
    for prior in prior_lines.iter() {
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
    if list.is_empty() {
        prior_lines.insert(hop);
        return;
    }
    list.push_str(hop.to_str().unwrap_or_default());
    if let Ok(value) = HeaderValue::try_from(list) {
        prior_lines.insert(value);
    }
}

/// The client's address as a header value. IPv4, nearly every client, is
/// written digit by digit: through `Display` it took about 1,500
/// instructions a request (bench/NOTES.md).
fn address_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(ip) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            chunked_value(&text[..len]).expect("digits and dots are a header value")
        }
        IpAddr::V6(ip) => {
            HeaderValue::try_from(ip.to_string()).expect("an IPv6 address is a header value")
        }
    }
}

/// A `Content-Length` value in the thread's chunk ([`chunked_value`]);
/// `HeaderValue::from(usize)` formats into an allocation of its own.
pub fn length_value(length: usize) -> HeaderValue {
    chunked_value(itoa::Buffer::new().format(length).as_bytes()).expect("digits are a header value")
}

thread_local! {
    /// Where [`chunked_value`] writes: the rest of this thread's last chunk.
    static CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(CHUNK_SIZE));
}

/// The size of the chunks that generated header values share.
const CHUNK_SIZE: usize = 4096;

/// A header value that guestgate writes for a request (its id, the client's
/// address, an edited body's length), copied into a chunk this thread shares between such values:
/// no allocation of its own, and a clone is a reference count, where a
/// value of its own is allocated, and allocated again when first cloned.
/// A full chunk is replaced (or, once its values are dropped, reused) by
/// `BytesMut`'s reserve, as hyper does with its read buffer.
pub(crate) fn chunked_value(text: &[u8]) -> Result<HeaderValue, header::InvalidHeaderValue> {
    CHUNK.with_borrow_mut(|chunk| {
        chunk.reserve(text.len());
        chunk.extend_from_slice(text);
        HeaderValue::from_maybe_shared(chunk.split().freeze())
    })
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
pub fn prepare_response<B>(response: &mut Response<B>) {
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

/// The client's `Host` (HTTP/1) or `:authority` (HTTP/2), for `X-Forwarded-Host`.
pub fn original_host<B>(request: &http::Request<B>) -> Option<HeaderValue> {
    request.headers().get(header::HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo {
            peer: "10.1.2.3:5555".parse().unwrap(),
            tls: false,
            deadlines: None,
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
            &client(),
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
            deadlines: None,
        };
        prepare_headers(&mut h, &v6, None, false);
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
        prepare_headers(&mut h, &client(), None, false);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert!(!h.contains_key(header::FORWARDED));
        for bad in [&b"for=\xff"[..], b"for=6.6.6.6, x=\"", b"x=\"a\\\""] {
            h.insert(header::FORWARDED, HeaderValue::from_bytes(bad).unwrap());
            prepare_headers(&mut h, &client(), None, false);
            assert_eq!(h[header::FORWARDED], "for=10.1.2.3;proto=http");
        }
        h.insert(
            header::FORWARDED,
            r#"for="[::1]";x="a\"b,c""#.parse().unwrap(),
        );
        prepare_headers(&mut h, &client(), None, false);
        assert_eq!(
            h[header::FORWARDED],
            r#"for="[::1]";x="a\"b,c", for=10.1.2.3;proto=http"#
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for octet in 0..=255u8 {
            for ip in [
                [octet, 0, 9, 10],
                [99, octet, 100, 255],
                [1, 10, octet, 199],
                [200, 20, 2, octet],
            ] {
                let ip = IpAddr::from(ip);
                assert_eq!(address_value(ip), ip.to_string().as_str());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(address_value(v6), "2001:db8::1");
    }

    #[test]
    fn lengths_are_written_as_display_writes_them() {
        for length in [0, 7, 10, 99, 195, 1000, 65_536, 1 << 20, usize::MAX] {
            assert_eq!(length_value(length), length.to_string().as_str());
        }
    }

    #[test]
    fn chunked_values_stay_apart_across_chunks() {
        let values: Vec<HeaderValue> = (0..2 * CHUNK_SIZE / 7)
            .map(|i| chunked_value(format!("v-{i:04}").as_bytes()).unwrap())
            .collect();
        for (i, value) in values.iter().enumerate() {
            assert_eq!(value, format!("v-{i:04}").as_str());
        }
        assert!(chunked_value(b"bad\nvalue").is_err());
    }

    #[test]
    fn keep_alive_alone_and_beside_other_connection_lines() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
        // A second Connection line still has its tokens read.
        h.append(header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(header::CONNECTION, "x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn every_removable_header_has_its_bit() {
        for (i, name) in REMOVABLE.iter().enumerate() {
            assert_eq!(removable_bit(name.as_str()), 1 << i, "{name}");
        }
        assert_eq!(removable_bit("content-type"), 0);
        assert_eq!(removable_bit("host"), HOST_BIT);
    }
}

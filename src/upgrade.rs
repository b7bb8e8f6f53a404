//! Protocol upgrades (WebSocket): which requests may become tunnels, and
//! the splice that carries an upgraded connection both ways.

use std::time::Duration;

use http::Version;
use http::header::{self, HeaderMap};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::connection::Lease;
use crate::headers::connection_tokens;

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
        let closed = crate::connection::closed(lease);
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
    use crate::connection::ClientInfo;
    use crate::headers::prepare_headers;
    use http::header::{self, HeaderMap};

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
        prepare_headers(
            &mut h,
            &ClientInfo {
                peer: "10.1.2.3:5555".parse().unwrap(),
                tls: false,
                deadlines: None,
            },
            None,
            true,
        );
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

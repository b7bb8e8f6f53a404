//! What a request knows of the client connection it came on: the peer and
//! whether it used TLS (for the forwarding headers), and, for an upgrade
//! request, the lease a tunnel keeps on the connection's slot.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::deadline::Deadlines;
use crate::shutdown::{Phase, Shutdown};

/// Who the client was and how it reached us (for the X-Forwarded-*
/// headers), and the connection's timer for the request's deadlines.
#[derive(Clone)]
pub struct ClientInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the client connection used TLS.
    pub tls: bool,
    /// An HTTP/1 connection's deadlines, which the request's timeouts run
    /// on; `None` where the request runs in a task of its own (HTTP/2).
    pub deadlines: Option<Deadlines>,
}

/// What a tunnel keeps of the client connection it takes over: the
/// connection's slot under `server.max_connections` (so tunnels are capped
/// and the shutdown drain waits for them), and word of the server closing
/// when the drain time is up. The server puts one on every upgrade request.
#[derive(Clone)]
pub struct Lease {
    _slot: Arc<OwnedSemaphorePermit>,
    shutdown: Shutdown,
}

impl Lease {
    /// A lease on `slot` that ends when `shutdown` reaches [`Phase::Closing`].
    pub fn new(slot: Arc<OwnedSemaphorePermit>, shutdown: Shutdown) -> Self {
        Self {
            _slot: slot,
            shutdown,
        }
    }

    /// Resolves when the server closes its remaining connections (or is gone).
    pub async fn closed(&self) {
        self.shutdown.wait(Phase::Closing).await
    }
}

/// Resolves when `lease` ends, as [`Lease::closed`]; never when there is
/// none (nothing then bounds the tunnel but its own end).
pub async fn closed(lease: Option<Lease>) {
    match lease {
        Some(lease) => lease.closed().await,
        None => std::future::pending().await,
    }
}

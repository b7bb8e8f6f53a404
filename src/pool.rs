//! guestgate's own keep-alive pool of HTTP/1 connections to a plain `http`
//! upstream, over hyper's low-level client (`hyper::client::conn::http1`).
//!
//! Each worker thread keeps its own idle connections, taken and given back
//! without locks or hashing: with one single-threaded runtime per core, a
//! request never touches another core's pool. A connection goes back to the
//! pool when its response body has been read to the end, so the next request
//! (often the same client's) finds it ready. hyper-util's pooled client
//! remains for `https` upstreams (TLS, HTTP/2 over ALPN) and upgrades.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{self, Either};
use http::{HeaderValue, Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request could not be sent: the upstream could not be reached, or
/// the exchange failed after the connection was made.
#[derive(Debug)]
pub enum SendError {
    /// Connecting failed or timed out.
    Connect(String),
    /// The request or the response head failed on an open connection.
    Request(Box<dyn std::error::Error + Send + Sync>),
}

/// One upstream's pool: where to connect and how long idle connections live.
/// The idle connections themselves are per worker thread (see [`IDLE`]).
pub struct Http1Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header every request carries.
    host: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// An idle connection and since when it has been idle.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections, per pool, oldest first. A pool that
    /// is gone (an old configuration) is dropped with its connections on a
    /// later visit.
    static IDLE: RefCell<Vec<(Weak<Shared>, VecDeque<Idle>)>> = const { RefCell::new(Vec::new()) };
}

impl Http1Pool {
    /// A pool for `address` (`host:port`), sending `host` as the `Host` header.
    pub fn new(
        address: String,
        host: HeaderValue,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                address,
                host,
                connect_timeout,
                idle_timeout,
                max_idle,
            }),
        }
    }

    /// Sends `request` (its URI in origin form) over an idle connection, or
    /// a new one. A request that an idle connection closed under could not
    /// take is sent once more on a new connection; it was never written.
    ///
    /// The usual case, an idle connection ready to take the request, hands
    /// it over here and the future only waits for the response head; waiting
    /// for a connection to become ready, or opening one, is boxed, so the
    /// usual case does not carry room for it (`bench/NOTES.md`). `now`
    /// tells which idle connections have expired.
    pub fn send(
        &self,
        mut request: Request<Body>,
        now: Instant,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + use<> {
        request
            .headers_mut()
            .insert(http::header::HOST, self.shared.host.clone());
        let shared = self.shared.clone();
        match shared.take_idle(now) {
            Some(sender) if sender.is_ready() => Either::Left(send_ready(shared, sender, request)),
            idle => Either::Right(Box::pin(send_waiting(shared, idle, request))),
        }
    }
}

type Sent = Result<Response<Body>, SendError>;

/// Over `sender`, ready to take the request: the request is handed over
/// now and the future waits for the response head. A request the connection
/// closed under before taking it goes on a new connection.
fn send_ready(
    shared: Arc<Shared>,
    mut sender: SendRequest<Body>,
    request: Request<Body>,
) -> impl Future<Output = Sent> + Send + use<> {
    sender
        .try_send_request(request)
        .then(move |sent| match sent {
            Ok(response) => Either::Left(future::ready(Ok(pooled(shared, response, sender)))),
            Err(mut e) => match e.take_message() {
                Some(unsent) => Either::Right(Box::pin(send_new(shared, unsent))),
                None => Either::Left(future::ready(Err(SendError::Request(
                    e.into_error().into(),
                )))),
            },
        })
}

/// Over `idle` once it is ready, or over a new connection.
async fn send_waiting(
    shared: Arc<Shared>,
    idle: Option<SendRequest<Body>>,
    request: Request<Body>,
) -> Sent {
    if let Some(mut sender) = idle {
        if sender.ready().await.is_ok() {
            return send_ready(shared, sender, request).await;
        }
    }
    send_new(shared, request).await
}

/// Over a new connection.
async fn send_new(shared: Arc<Shared>, request: Request<Body>) -> Sent {
    let mut sender = shared.connect().await?;
    match sender.send_request(request).await {
        Ok(response) => Ok(pooled(shared, response, sender)),
        Err(e) => Err(SendError::Request(e.into())),
    }
}

/// The response, its body giving the connection back when read to the end.
fn pooled(
    shared: Arc<Shared>,
    response: Response<Incoming>,
    sender: SendRequest<Body>,
) -> Response<Body> {
    response.map(|body| {
        Body::new(PooledBody {
            body,
            lease: Some((sender, shared)),
        })
    })
}

impl Shared {
    /// The most recently idle connection still open, dropping expired ones.
    fn take_idle(self: &Arc<Self>, now: Instant) -> Option<SendRequest<Body>> {
        IDLE.with_borrow_mut(|pools| {
            let at = self.idle_list(pools)?;
            let idle = &mut pools[at].1;
            // Oldest first: the expired ones are at the front.
            if let Some(expired) = now.checked_sub(self.idle_timeout) {
                while idle.front().is_some_and(|c| c.since <= expired) {
                    idle.pop_front();
                }
            }
            while let Some(connection) = idle.pop_back() {
                if !connection.sender.is_closed() {
                    return Some(connection.sender);
                }
            }
            None
        })
    }

    /// Keeps a connection whose exchange is complete, unless the pool is full.
    fn give_back(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        IDLE.with_borrow_mut(|pools| {
            let at = self.idle_list(pools).unwrap_or_else(|| {
                pools.push((Arc::downgrade(self), VecDeque::new()));
                pools.len() - 1
            });
            let idle = &mut pools[at].1;
            if idle.len() < self.max_idle {
                idle.push_back(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }

    /// Where this pool's idle list is among this thread's. Lists of dropped
    /// pools (an old configuration's) go, with their connections, when the
    /// thread has more than one.
    fn idle_list(
        self: &Arc<Self>,
        pools: &mut Vec<(Weak<Shared>, VecDeque<Idle>)>,
    ) -> Option<usize> {
        if pools.len() > 1 {
            pools.retain(|(pool, _)| pool.strong_count() > 0);
        }
        let me = Arc::as_ptr(self);
        pools
            .iter()
            .position(|(pool, _)| std::ptr::eq(pool.as_ptr(), me))
    }

    /// Opens a connection; its task runs until the upstream or the pool
    /// lets it go (dropping every sender closes an idle connection).
    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let connecting = TcpStream::connect(self.address.as_str());
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(format!("{}: {e}", self.address))),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "{}: connect timed out after {} ms",
                    self.address,
                    self.connect_timeout.as_millis()
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body that gives its connection back to the pool once it has
/// been read to the end (a body dropped early takes its connection along).
struct PooledBody {
    body: Incoming,
    lease: Option<(SendRequest<Body>, Arc<Shared>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.lease.take() {
            pool.give_back(sender);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => self.lease = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    /// An empty body (a 204, a HEAD answer) is never polled.
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

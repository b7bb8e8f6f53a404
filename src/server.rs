//! Listeners, connection handling and graceful shutdown.
//!
//! The accept loop is ours rather than `axum::serve` because a proxy needs what
//! that helper does not expose: a header-read timeout, a head size limit, a
//! connection cap, HTTP/1 upgrades together with h2c, and a drain deadline.
//! Requests go to a plain hyper service rather than through a router, and
//! each connection holds only its own protocol's state: this is the hot path,
//! and what an idle keep-alive connection costs (`bench/NOTES.md`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::config::Config;
use crate::connection::{ClientInfo, Lease};
use crate::deadline::{Deadlines, Watch};
use crate::error::ProxyError;
use crate::gateway::{ConfigSource, Gateway};
use crate::metrics::OpenGuard;
use crate::shutdown::{Phase, Shutdown, Wait};
use crate::telemetry;

/// Starts a request's handling and runs it to its response under a panic
/// guard: a handler that panics, starting or polled, answers a 500 problem
/// and the server keeps serving.
///
/// Combinators, not an `async fn`: that would keep the handler's future
/// twice, in a box allocated for every request.
fn catch_panic<Fut>(start: impl FnOnce() -> Fut) -> impl Future<Output = Response>
where
    Fut: Future<Output = Response>,
{
    match catch_unwind(AssertUnwindSafe(start)) {
        Ok(handling) => Either::Left(
            AssertUnwindSafe(handling)
                .catch_unwind()
                .map(|result| result.unwrap_or_else(|_| panicked())),
        ),
        // Lazy: a ready response would take room in every request's box.
        Err(_) => Either::Right(futures_util::future::lazy(|_| panicked())),
    }
}

fn panicked() -> Response {
    tracing::error!("request handler panicked");
    ProxyError::Internal.into_response()
}

/// Connection-level limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See `server.header_read_timeout_ms`.
    pub header_read_timeout: Duration,
    /// See `server.max_header_bytes`.
    pub max_header_bytes: usize,
    /// See `server.max_connections`.
    pub max_connections: usize,
    /// See `server.idle_timeout_secs`.
    pub idle_timeout: Duration,
    /// See `server.shutdown_timeout_secs`.
    pub shutdown_timeout: Duration,
}

impl Limits {
    /// Reads the limits from a configuration.
    pub fn from_config(config: &Config) -> Self {
        let server = &config.settings.server;
        Self {
            header_read_timeout: config.header_read_timeout(),
            max_header_bytes: server.max_header_bytes,
            max_connections: server.max_connections,
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
            shutdown_timeout: config.shutdown_timeout(),
        }
    }
}

/// hyper's HTTP/1 and HTTP/2 connection settings, from the limits.
struct Protocols {
    http1: http1::Builder,
    header_read_timeout: Duration,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: &Limits) -> Self {
        let mut http1 = http1::Builder::new();
        // The header read timeout is set per connection, on its own timer.
        http1.max_buf_size(limits.max_header_bytes).keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(256)
            .keep_alive_interval(limits.idle_timeout / 2)
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1,
            header_read_timeout: limits.header_read_timeout,
            http2,
        }
    }
}

/// What a listener serves: the handler for each request (looked up per
/// request, so a reload applies to kept-alive connections too), TLS, and the
/// open-connections gauge.
pub trait Connections: Send + Sync + 'static {
    /// Answers one request from `client`.
    fn call(
        &self,
        request: Request,
        client: ClientInfo,
    ) -> impl Future<Output = Response> + Send + use<Self>;
    /// TLS for new connections; `None` serves plain HTTP/1.1 and h2c.
    fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        None
    }
    /// Counts a connection as open while the guard lives.
    fn opened(&self) -> Option<OpenGuard> {
        None
    }
}

/// Any axum router can be served (with request ids, logs and panic
/// isolation); the client's address is in the `ClientInfo` extension.
impl Connections for Router {
    fn call(
        &self,
        mut request: Request,
        client: ClientInfo,
    ) -> impl Future<Output = Response> + Send + use<> {
        request.extensions_mut().insert(client);
        let response = self.clone().oneshot(request);
        async move { response.await.unwrap_or_else(|never| match never {}) }
    }
}

impl Connections for Gateway {
    fn call(
        &self,
        request: Request,
        client: ClientInfo,
    ) -> impl Future<Output = Response> + Send + use<> {
        // Boxed by the generation: the wrappers around it (span, panic
        // guard, hyper's dispatcher) then move a pointer.
        self.current().call(request, client)
    }
    fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current().config.tls.clone()
    }
    fn opened(&self) -> Option<OpenGuard> {
        Some(self.metrics.connection())
    }
}

/// Serves on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for up to `limits.shutdown_timeout`.
pub async fn serve<C: Connections>(
    listener: TcpListener,
    app: Arc<C>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    serve_with_slots(listener, app, limits, slots, shutdown).await
}

/// Like [`serve`], with connection slots shared by every worker's listener.
/// One permit per open connection (or tunnel that took one over): holding
/// all of them again means every connection has closed.
async fn serve_with_slots<C: Connections>(
    listener: TcpListener,
    app: Arc<C>,
    limits: Limits,
    slots: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) {
    let protocols = Arc::new(Protocols::new(&limits));
    // Draining: finish what is in flight; closing: drop what is left (also
    // when this future is dropped before the drain is over).
    let phases = CloseOnDrop(Shutdown::new());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let lease = Lease::new(Arc::new(permit), phases.0.clone());
        let tls = app.tls();
        let connection = Connection {
            client: ClientInfo {
                peer,
                tls: tls.is_some(),
                deadlines: None,
            },
            app: app.clone(),
            protocols: protocols.clone(),
            shutdown: phases.0.clone(),
            lease,
            open: app.opened(),
            // One deadline for the first request head, whatever comes before
            // it (the preface peek, the TLS handshake).
            deadline: tokio::time::Instant::now() + limits.header_read_timeout,
        };
        tokio::spawn(connection.task(stream, tls));
    }
    drop(listener);
    let open = limits.max_connections - slots.available_permits();
    tracing::info!(open_connections = open, "draining connections");
    phases.0.enter(Phase::Draining);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        let open = limits.max_connections - slots.available_permits();
        tracing::warn!(
            open_connections = open,
            "shutdown timeout reached; closing remaining connections"
        );
        phases.0.enter(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire_many(all)).await;
    }
}

/// A listener's shutdown signal that closes what is left when dropped.
struct CloseOnDrop(Shutdown);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.enter(Phase::Closing);
    }
}

/// The HTTP/2 client preface, which an h2c client with prior knowledge
/// sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells h2c (prior knowledge) from HTTP/1 by peeking at the first bytes,
/// without consuming them: hyper then reads the connection from its start,
/// and each connection holds only its own protocol's state and buffers.
async fn starts_with_h2_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut head = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut head).await?;
    if let Some(h2) = classify(&head[..n]) {
        return Ok(h2);
    }
    // Part of the preface so far. Peeked bytes keep the socket readable, so
    // readiness is cleared after each look and the task sleeps until more
    // bytes arrive: a client stalled here costs no CPU. The caller bounds
    // the wait. A closed read side cannot be cleared; it ends the wait
    // (HTTP/1, which then sees the end of the stream).
    let peeker = peek_handle(stream)?;
    loop {
        let ready = stream.ready(tokio::io::Interest::READABLE).await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let n = peeker.peek(&mut head)?;
            classify(&head[..n]).ok_or_else(|| io::ErrorKind::WouldBlock.into())
        });
        match peeked {
            Ok(h2) => return Ok(h2),
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            Err(_) if ready.is_read_closed() => return Ok(false),
            Err(_) => tokio::task::consume_budget().await,
        }
    }
}

/// `Some(true)` for the whole preface, `Some(false)` for anything else
/// (EOF included), `None` while the bytes so far start the preface.
fn classify(head: &[u8]) -> Option<bool> {
    if head.is_empty() || head != &H2_PREFACE[..head.len()] {
        Some(false)
    } else if head.len() == H2_PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// A std handle on the same socket, whose `peek` can run inside `try_io`.
/// It is only used while bytes are waiting, so it never blocks.
fn peek_handle(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    #[cfg(unix)]
    let owned = std::os::fd::AsFd::as_fd(stream).try_clone_to_owned()?;
    #[cfg(windows)]
    let owned = std::os::windows::io::AsSocket::as_socket(stream).try_clone_to_owned()?;
    Ok(owned.into())
}

/// One accepted connection, before its protocol is known.
struct Connection<C> {
    app: Arc<C>,
    client: ClientInfo,
    protocols: Arc<Protocols>,
    shutdown: Shutdown,
    lease: Lease,
    open: Option<OpenGuard>,
    deadline: tokio::time::Instant,
}

impl<C: Connections> Connection<C> {
    /// The connection's task: its start (the protocol told apart, or the
    /// TLS handshake), then serving. The start is boxed: it is over before
    /// the first request is read, and TLS's is several KiB.
    fn task(self, stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>) -> Task {
        let starting: Starting = match tls {
            None => Box::pin(self.start_plain(stream)),
            Some(tls) => Box::pin(self.start_tls(stream, tls)),
        };
        Task::Starting { starting }
    }

    /// Cleartext: HTTP/2 with prior knowledge or HTTP/1.1, told apart by
    /// the first bytes, within the first request's deadline.
    async fn start_plain(self, stream: TcpStream) -> Option<Serving> {
        let told = tokio::time::timeout_at(self.deadline, starts_with_h2_preface(&stream)).await;
        let h2 = self.started(
            told,
            "connection failed",
            "no request within the header read timeout",
        )?;
        Some(self.serve(stream, h2))
    }

    /// TLS: the handshake within the first request's deadline, then the
    /// protocol ALPN chose.
    async fn start_tls(self, stream: TcpStream, tls: Arc<rustls::ServerConfig>) -> Option<Serving> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let accepted = tokio::time::timeout_at(self.deadline, acceptor.accept(stream)).await;
        let stream = self.started(accepted, "TLS handshake failed", "TLS handshake timed out")?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Some(self.serve(stream, h2))
    }

    /// What a start gave, or `None` (logged) when it failed or ran out of time.
    fn started<T>(
        &self,
        result: Result<io::Result<T>, tokio::time::error::Elapsed>,
        failed: &str,
        timed_out: &str,
    ) -> Option<T> {
        let peer = self.client.peer;
        match result {
            Ok(Ok(started)) => Some(started),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "{failed}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "{timed_out}");
                None
            }
        }
    }

    /// Serves HTTP/2 or HTTP/1.1 (with upgrades). hyper's connection is
    /// boxed: its state is a few KiB, and an idle HTTP/1 connection should
    /// not also hold room for HTTP/2's.
    fn serve<I>(self, io: I, h2: bool) -> Serving
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // The connection's one timer: the first request's deadline and, on
        // HTTP/1, hyper's header read timeout and its requests' timeouts.
        // HTTP/2 requests run in tasks of their own and keep tokio's.
        let deadlines = Deadlines::with_first_request_by(self.deadline.into_std());
        let client = ClientInfo {
            deadlines: (!h2).then(|| deadlines.clone()),
            ..self.client
        };
        let service = connection_service(self.app, client, deadlines.clone(), self.lease.clone());
        let io = TokioIo::new(io);
        let (connection, limit): (Pin<Box<dyn Served>>, _) = if h2 {
            let connection = self.protocols.http2.serve_connection(io, service);
            let graceful = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
            (
                Box::pin(WithShutdown {
                    connection,
                    graceful,
                }),
                None,
            )
        } else {
            let mut http1 = self.protocols.http1.clone();
            let limit = self.protocols.header_read_timeout;
            http1.timer(deadlines.clone()).header_read_timeout(limit);
            let connection = http1.serve_connection(io, service).with_upgrades();
            let graceful = |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
            (
                Box::pin(WithShutdown {
                    connection,
                    graceful,
                }),
                Some(limit),
            )
        };
        Serving {
            connection,
            watch: deadlines.watch(limit),
            drain: self.shutdown.wait(Phase::Draining),
            close: self.shutdown.wait(Phase::Closing),
            draining: false,
            _lease: self.lease,
            _open: self.open,
        }
    }
}

type Starting = Pin<Box<dyn Future<Output = Option<Serving>> + Send>>;

pin_project! {
    /// A connection's task: one future, whose state while serving is
    /// [`Serving`]'s own.
    #[project = TaskState]
    enum Task {
        Starting { starting: Starting },
        Serving {
            #[pin]
            serving: Serving,
        },
    }
}

impl Future for Task {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                TaskState::Starting { starting } => match ready!(starting.as_mut().poll(cx)) {
                    Some(serving) => self.set(Task::Serving { serving }),
                    None => return Poll::Ready(()),
                },
                TaskState::Serving { serving } => return serving.poll(cx),
            }
        }
    }
}

/// hyper's connection, either protocol, with its graceful shutdown: the
/// connection's task is one type whatever it serves.
trait Served: Future<Output = hyper::Result<()>> + Send {
    /// Finishes the request in flight, answers it with `Connection: close`
    /// (HTTP/1) or GOAWAY (HTTP/2), then ends.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

pin_project! {
    struct WithShutdown<F, G> {
        #[pin]
        connection: F,
        graceful: G,
    }
}

impl<F: Future, G> Future for WithShutdown<F, G> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().connection.poll(cx)
    }
}

impl<F, G> Served for WithShutdown<F, G>
where
    F: Future<Output = hyper::Result<()>> + Send,
    G: Fn(Pin<&mut F>) + Send,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.project();
        (this.graceful)(this.connection)
    }
}

pin_project! {
    /// A connection being served, and what ends it besides its client: no
    /// first request by its deadline (hyper's own header read timeout only
    /// starts once HTTP/1 has been told apart, and HTTP/2 has none), and the
    /// listener's shutdown: the drain, then the close at its end.
    ///
    /// Written by hand, not as nested `async fn`s and `select!`: it is
    /// polled at every wake-up of the task, several times a request, and
    /// each of those kept a state of its own there (bench/NOTES.md).
    struct Serving {
        connection: Pin<Box<dyn Served>>,
        #[pin]
        watch: Watch,
        // Made once and cheap to poll again (src/shutdown.rs).
        drain: Wait,
        close: Wait,
        draining: bool,
        // The connection's slot and its place in the open-connections
        // gauge, held until it ends.
        _lease: Lease,
        _open: Option<OpenGuard>,
    }
}

impl Future for Serving {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(result) = this.connection.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Poll::Ready(());
            }
            // Wakes the task for a due deadline (hyper then finds its sleep
            // due); resolves only when no request came in time.
            if this.watch.as_mut().poll(cx).is_ready() {
                tracing::debug!("no request within the header read timeout");
                return Poll::Ready(());
            }
            if !*this.draining {
                if Pin::new(&mut *this.drain).poll(cx).is_ready() {
                    *this.draining = true;
                    this.connection.as_mut().graceful_shutdown();
                    // hyper may be done at once (an idle connection).
                    continue;
                }
            } else if Pin::new(&mut *this.close).poll(cx).is_ready() {
                tracing::debug!("closed at the end of the shutdown drain");
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
    }
}

/// A request's future, boxed: hyper keeps a slot for it in every
/// connection, so its size is paid per open connection, not per request.
type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

fn connection_service<C: Connections>(
    app: Arc<C>,
    client: ClientInfo,
    deadlines: Deadlines,
    lease: Lease,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = ResponseFuture,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(
        move |mut request: hyper::Request<Incoming>| -> ResponseFuture {
            deadlines.requested();
            // A tunnel outlives this connection's task: it takes over the slot.
            if request
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some()
            {
                request.extensions_mut().insert(lease.clone());
            }
            let app = app.clone();
            let client = client.clone();
            // Started inside the request's span, under the panic guard.
            let handler = move |request| catch_panic(move || app.call(request, client));
            let answering = telemetry::traced(request.map(Body::new), handler);
            Box::pin(answering.map(Ok))
        },
    )
}

/// A started proxy (and admin listener), as tests and `main` use it.
pub struct Running {
    /// The proxy's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The admin listener's bound address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Reloads the configuration (what SIGHUP does); an invalid one is
    /// refused and the current one stays in force.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        self.gateway.reload()
    }

    /// Reloads on every SIGHUP for as long as the proxy runs (Unix only).
    pub fn reload_on_sighup(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hup = signal(SignalKind::hangup())?;
            let gateway = Arc::downgrade(&self.gateway);
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let Some(gateway) = gateway.upgrade() else {
                        return;
                    };
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = gateway.reload();
                }
            });
        }
        Ok(())
    }

    /// The metrics in Prometheus text format (what the admin `/metrics` serves).
    pub fn metrics(&self) -> String {
        self.gateway.metrics.encode()
    }

    /// Starts graceful shutdown and waits until it is complete.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds the listeners and starts serving in the background, with the
/// process environment as configuration source for reloads.
pub async fn start(config: Config) -> io::Result<Running> {
    start_with_source(config, ConfigSource::default()).await
}

/// Like [`start`]; `source` is what [`Running::reload`] (SIGHUP) reads again.
/// Everything runs on the caller's runtime.
pub async fn start_with_source(config: Config, source: ConfigSource) -> io::Result<Running> {
    start_workers(config, source, 1).await
}

/// Like [`start_with_source`], with `workers` listeners on the same address
/// (`SO_REUSEPORT`, the kernel spreads new connections over them). The
/// caller's runtime serves the first one, the admin listener and reloads;
/// each other one gets a thread with a single-threaded runtime of its own,
/// so a connection, its requests and their upstream connections stay on one
/// core (like nginx's worker processes). All share the configuration, the
/// metrics and `server.max_connections`.
pub async fn start_workers(
    config: Config,
    source: ConfigSource,
    workers: usize,
) -> io::Result<Running> {
    let workers = workers.max(1);
    let listener = bind(config.listen, workers > 1)?;
    let addr = listener.local_addr()?;
    let admin = match config.admin_listen {
        Some(admin_addr) => Some(TcpListener::bind(admin_addr).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let limits = Limits::from_config(&config);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let gateway = Gateway::new(config, source);
    let (stop_workers, workers_stopping) = watch::channel(false);
    let mut finished = Vec::with_capacity(workers - 1);
    for index in 1..workers {
        finished.push(spawn_worker(
            index,
            addr,
            gateway.clone(),
            limits.clone(),
            slots.clone(),
            workers_stopping.clone(),
        )?);
    }
    gateway.spawn_readiness();
    gateway.spawn_file_watch();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = gateway.clone();
    let task = tokio::spawn(async move {
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        let admin_task = admin.map(|listener| {
            let admin_app = crate::admin::router(serving.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, admin_app)
                    .with_graceful_shutdown(async {
                        let _ = admin_stopped.await;
                    })
                    .await;
            })
        });
        serve_with_slots(listener, serving.clone(), limits, slots, async {
            let _ = stopped.await;
            serving.start_draining();
            stop_workers.send_replace(true);
        })
        .await;
        for worker in finished {
            let _ = worker.await;
        }
        let _ = admin_stop.send(());
        if let Some(mut admin_task) = admin_task {
            // Probes and scrapes are quick; a stalled admin client must not
            // keep the process from exiting.
            if tokio::time::timeout(Duration::from_secs(1), &mut admin_task)
                .await
                .is_err()
            {
                admin_task.abort();
            }
        }
    });
    tracing::info!(%addr, admin = ?admin_addr, workers, "guestgate listening");
    Ok(Running {
        addr,
        admin_addr,
        gateway,
        stop: Some(stop),
        task,
    })
}

/// A listening socket; `shared` lets other workers' sockets bind the same
/// address (`SO_REUSEPORT`).
fn bind(addr: SocketAddr, shared: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if shared {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    if shared {
        return Err(io::Error::other("several workers need SO_REUSEPORT (Unix)"));
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Starts worker `index`: a thread with its own single-threaded runtime and
/// listener on `addr`, serving until `stopping`. The receiver resolves when
/// it has drained; binding errors are returned before it starts.
fn spawn_worker(
    index: usize,
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    limits: Limits,
    slots: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
) -> io::Result<oneshot::Receiver<()>> {
    let (bound, bound_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("guestgate-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match bind(addr, true) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                let _ = bound.send(Ok(()));
                let shutdown = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                serve_with_slots(listener, gateway, limits, slots, shutdown).await;
                let _ = done.send(());
            });
        })?;
    bound_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("worker thread ended while binding")))?;
    Ok(finished)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

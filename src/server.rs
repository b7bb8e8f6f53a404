//! Listeners, connection handling and graceful shutdown.
//!
//! The accept loop is ours rather than `axum::serve` because a proxy needs what
//! that helper does not expose: a header-read timeout, a head size limit, a
//! connection cap, HTTP/1 upgrades together with h2c, and a drain deadline.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::config::Config;
use crate::error::ProxyError;
use crate::forward::ClientInfo;
use crate::gateway::{ConfigSource, Gateway};
use crate::metrics::OpenGuard;
use crate::telemetry;

/// Answers a request whose handler panicked: a 500 problem, and the server
/// keeps serving.
async fn catch_panic(handler: impl Future<Output = Response>) -> Response {
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("request handler panicked");
            ProxyError::Internal.into_response()
        }
    }
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

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(Duration::from_secs(20));
    builder
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
    ) -> impl Future<Output = Response> + Send + 'static;
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
    ) -> impl Future<Output = Response> + Send + 'static {
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
    ) -> impl Future<Output = Response> + Send + 'static {
        // Boxed once here: the handler's future is several KiB, and the
        // wrappers around it (span, panic guard, hyper's dispatcher) would
        // otherwise copy it on every request.
        Box::pin(self.current().call(request, client))
    }
    fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current().state.config.tls.clone()
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
    let builder = Arc::new(connection_builder(&limits));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _open = app.opened();
            let tls = app.tls();
            let client = ClientInfo {
                peer,
                tls: tls.is_some(),
            };
            match tls {
                None => run_connection(stream, app, client, &builder, watcher, timeout).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            run_connection(stream, app, client, &builder, watcher, timeout).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(in_flight = graceful.count(), "draining connections");
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on one accepted connection.
async fn run_connection<C, I>(
    io: I,
    app: Arc<C>,
    client: ClientInfo,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    timeout: Duration,
) where
    C: Connections,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let first_request = Arc::new(Notify::new());
    let service = connection_service(app, client, first_request.clone());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    drive(
        watcher.watch(connection.into_owned()),
        &first_request,
        timeout,
    )
    .await;
}

/// Runs a connection, dropping it if no request arrives within `timeout`.
/// hyper's own header-read timeout only starts once HTTP/1 has been told
/// apart from HTTP/2, so a client that sends nothing (or a slow HTTP/2
/// preface) would otherwise hold its slot forever.
async fn drive<F, E>(connection: F, first_request: &Notify, timeout: Duration)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let deadline = async {
        if tokio::time::timeout(timeout, first_request.notified())
            .await
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = connection => if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        },
        () = deadline => tracing::debug!("no request within the header read timeout"),
    }
}

fn connection_service<C: Connections>(
    app: Arc<C>,
    client: ClientInfo,
    first_request: Arc<Notify>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        first_request.notify_one();
        let app = app.clone();
        async move {
            let request = request.map(Body::new);
            let handler = |request| catch_panic(async move { app.call(request, client).await });
            let response = telemetry::traced(request, handler).await;
            Ok(response)
        }
    })
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
pub async fn start_with_source(config: Config, source: ConfigSource) -> io::Result<Running> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let admin = match config.admin_listen {
        Some(admin_addr) => Some(TcpListener::bind(admin_addr).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let limits = Limits::from_config(&config);
    let gateway = Gateway::new(config, source);
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
        serve(listener, serving.clone(), limits, async {
            let _ = stopped.await;
            serving.start_draining();
        })
        .await;
        let _ = admin_stop.send(());
        if let Some(admin_task) = admin_task {
            let _ = admin_task.await;
        }
    });
    tracing::info!(%addr, admin = ?admin_addr, "guestgate listening");
    Ok(Running {
        addr,
        admin_addr,
        gateway,
        stop: Some(stop),
        task,
    })
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

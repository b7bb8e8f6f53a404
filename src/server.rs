//! Listeners, connection handling and graceful shutdown.
//!
//! The accept loop is ours rather than `axum::serve` because a proxy needs what
//! that helper does not expose: a header-read timeout, a head size limit, a
//! connection cap, HTTP/1 upgrades together with h2c, and a drain deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::Config;
use crate::forward::ClientInfo;
use crate::proxy::{self, AppState};

/// Builds the proxy's router: every path goes to the proxy handler.
pub fn router(state: Arc<AppState>) -> Router {
    with_middleware(Router::new().fallback(proxy::handle).with_state(state))
}

/// The middleware every proxied request goes through: request id and log
/// span outermost, then panic isolation (a panicking request gets a 500
/// problem and the server keeps serving).
pub fn with_middleware(router: Router) -> Router {
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(crate::telemetry::request_span))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("request handler panicked");
    axum::response::IntoResponse::into_response(crate::error::ProxyError::Internal)
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

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish for up to `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let builder = connection_builder(&limits);
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
        let service = connection_service(app.clone(), ClientInfo { peer, tls: false });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_bytes_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper's header-read timeout starts once the protocol is known;
            // a client that sends nothing (or a slow h2 preface) is dropped here.
            if tokio::time::timeout(first_bytes_timeout, protocol_known(&stream))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "no request within the header read timeout");
                drop(permit);
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
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

/// The HTTP/2 client preface; hyper-util's protocol detection waits for it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Resolves once the first bytes tell HTTP/1 from HTTP/2 (or the peer
/// closed), without consuming them.
async fn protocol_known(stream: &tokio::net::TcpStream) {
    let mut buf = [0u8; 24];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn connection_service(
    app: Router,
    client: ClientInfo,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone,
> {
    let service = app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(client);
        request
    });
    hyper_util::service::TowerToHyperService::new(service)
}

/// A started proxy (and admin listener), as tests and `main` use it.
pub struct Running {
    /// The proxy's bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The admin listener's bound address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts graceful shutdown and waits until it is complete.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds the listeners and starts serving in the background.
pub async fn start(config: Config) -> io::Result<Running> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let admin = match config.admin_listen {
        Some(admin_addr) => Some(TcpListener::bind(admin_addr).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let limits = Limits::from_config(&config);
    let state = Arc::new(AppState::new(config));
    let app = router(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        let admin_task = admin.map(|listener| {
            let admin_app = crate::admin::router(state.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, admin_app)
                    .with_graceful_shutdown(async {
                        let _ = admin_stopped.await;
                    })
                    .await;
            })
        });
        serve(listener, app, limits, async {
            let _ = stopped.await;
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

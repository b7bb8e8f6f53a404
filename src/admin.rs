//! The admin listener: liveness, readiness and metrics for orchestrators and
//! Prometheus, kept off the proxy port so browsers and the upstream never
//! reach it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::gateway::Gateway;

/// Routes of the admin listener.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

/// Ready when the configuration is loaded (it always is once serving) and
/// the last cached upstream connect check passed; 503 with the reason otherwise.
async fn readyz(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    match gateway.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
}

/// `guestgate healthcheck`: GETs `/healthz` on the admin address (a wildcard
/// listen address is reached through loopback); `Ok` on 200.
pub async fn healthcheck(admin: SocketAddr) -> Result<(), String> {
    let ip = match admin.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let target = SocketAddr::new(ip, admin.port());
    let uri = format!("http://{target}/healthz");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let request = http::Request::get(&uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(3), client.request(request))
        .await
        .map_err(|_| format!("{uri}: no answer within 3 s"))?
        .map_err(|e| format!("{uri}: {e}"))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{uri}: status {status}"))
    }
}

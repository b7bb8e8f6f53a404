//! The admin listener: liveness for orchestrators, kept off the proxy port so
//! it is never exposed to browsers or the upstream.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::proxy::AppState;

/// Routes of the admin listener.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

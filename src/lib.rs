//! guestgate: a reverse proxy that makes guest chat messages acceptable to the
//! vendor API (no client `id`, a configured `to`) and passes everything else
//! through untouched.
//!
//! The binary is a thin CLI over this library; tests drive the library.

pub mod admin;
pub mod config;
pub mod connection;
pub mod cors;
mod de;
pub mod deadline;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod intercept;
pub mod metrics;
pub mod otel;
pub mod pool;
pub mod proxy;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod websocket;

// The pure parts (paths, pointers, edits, the sanitizer) are their own crate,
// so the fuzzer builds them without the server; they keep their paths here.
pub use guestgate_core::{edit, pointer, routing, sanitize};

pub use config::Config;
pub use server::{Running, start, start_with_source, start_workers};

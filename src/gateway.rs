//! The live configuration, swapped atomically on reload, and the readiness
//! check that `/readyz` reports.
//!
//! Each request loads the current [`Generation`] once and keeps it to the end, so a
//! reload never changes the rules under a request in flight.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http::header;

use crate::config::{Config, ConfigError};
use crate::connection::ClientInfo;
use crate::cors::Cors;
use crate::error::ProxyError;
use crate::metrics::{Metrics, Series};
use crate::proxy;
use crate::routing::RouteKind;
use crate::rules::RuleIndex;
use crate::upstream::Upstream;

/// Where the configuration comes from, so a reload reads the same layers.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The `--config` file, if any.
    pub file: Option<PathBuf>,
    /// An explicit environment instead of the process one (tests, demo).
    pub env: Option<HashMap<String, String>>,
}

impl ConfigSource {
    /// Loads and validates the layered configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load_with_env(self.file.as_deref(), self.env.clone())
    }
}

/// One configuration generation: the validated configuration and what is
/// built from it (upstream client, CORS policy). Each request loads the
/// current one once and keeps it to the end; a reload swaps in a new one.
pub struct Generation {
    /// The validated configuration.
    pub config: Config,
    /// A pooled client per configured upstream, `[upstream]` first (rules
    /// refer to them by index).
    pub upstreams: Vec<Upstream>,
    /// Shared with every generation, so counts survive reloads.
    pub metrics: Arc<Metrics>,
    /// Each rule's metric series, by [`RuleIndex`].
    rule_series: Vec<Series>,
    /// The series of requests no rule applied to.
    pass_through_series: Series,
    /// Set when `cors.allowed_origins` is.
    cors: Option<Cors>,
}

impl Generation {
    /// Builds a generation (and its upstream client) for a configuration.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|this: &Weak<Generation>| {
            let upstreams = config
                .upstreams
                .iter()
                .map(|u| Upstream::new(&u.settings, u.base.clone(), &u.tls))
                .collect();
            // The CORS router calls back into this generation; a weak
            // reference, so a replaced generation is freed.
            let this = this.clone();
            let proxy = Router::new().fallback(move |request: Request| {
                let this = this.clone();
                async move {
                    let client = request.extensions().get::<ClientInfo>().cloned();
                    let client = client.unwrap_or(ClientInfo {
                        peer: ([0, 0, 0, 0], 0).into(),
                        tls: false,
                        deadlines: None,
                    });
                    match this.upgrade() {
                        Some(generation) => proxy::handle(generation, request, client).await,
                        None => ProxyError::Internal.into_response(),
                    }
                }
            });
            let cors = Cors::new(proxy, &config.settings.cors, &config.cors_origins);
            let rule_series = config
                .rules
                .rules()
                .iter()
                .map(|rule| {
                    metrics.series(RouteKind::Intercepted, Some(&rule.name), &rule.pointers())
                })
                .collect();
            let pass_through_series = metrics.series(RouteKind::PassThrough, None, &[]);
            Self {
                config,
                upstreams,
                metrics,
                rule_series,
                pass_through_series,
                cors,
            }
        })
    }

    /// The metric series of the rule at `rule`, or of requests no rule applied to.
    pub fn series(&self, rule: Option<RuleIndex>) -> &Series {
        rule.and_then(|RuleIndex(i)| self.rule_series.get(i))
            .unwrap_or(&self.pass_through_series)
    }

    /// Answers one request under this generation's rules: browser CORS
    /// traffic through the CORS layer, everything else straight to the proxy.
    ///
    /// Boxed here, once: the request's future is polled at every wake-up of
    /// its connection and moved by every wrapper around it, and a box per
    /// path holds only that path's state.
    pub fn call(self: Arc<Self>, mut request: Request, client: ClientInfo) -> Answering {
        match &self.cors {
            Some(cors) if Cors::applies(&request) => {
                request.extensions_mut().insert(client);
                let cors = cors.clone();
                Box::pin(async move {
                    // Held while the CORS layer answers: the proxy behind it
                    // reaches this generation through a weak reference.
                    let _generation = self;
                    cors.call(request).await
                })
            }
            Some(_) if !request.headers().contains_key(header::ORIGIN) => {
                Box::pin(proxy::handle(self, request, client).map(Cors::not_cross_origin))
            }
            // Without CORS, and for a cross-origin OPTIONS that is not a
            // preflight: the upstream answers.
            _ => Box::pin(proxy::handle(self, request, client)),
        }
    }
}

/// A request being answered (see [`Generation::call`]).
pub type Answering = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The running proxy's shared core.
pub struct Gateway {
    live: ArcSwap<Generation>,
    /// Metrics, kept across reloads.
    pub metrics: Arc<Metrics>,
    source: ConfigSource,
    ready: AtomicBool,
    draining: AtomicBool,
    readiness_detail: Mutex<String>,
}

impl Gateway {
    /// Builds the first generation from an already validated config.
    pub fn new(config: Config, source: ConfigSource) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        let live = Generation::new(config, metrics.clone());
        Arc::new(Self {
            live: ArcSwap::new(live),
            metrics,
            source,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            readiness_detail: Mutex::new("upstream not checked yet".into()),
        })
    }

    /// The current generation.
    pub fn current(&self) -> Arc<Generation> {
        self.live.load_full()
    }

    /// Re-reads the configuration sources. A valid configuration replaces the
    /// current one for new requests; an invalid one is refused, logged, and
    /// the current one stays in force.
    pub fn reload(&self) -> Result<(), ConfigError> {
        match self.source.load() {
            Ok(config) => {
                let old = self.current();
                warn_restart_only(&old.config, &config);
                self.live
                    .store(Generation::new(config, self.metrics.clone()));
                self.metrics.reload(true);
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reload(false);
                for problem in &e.problems {
                    tracing::error!(problem = %problem, "configuration reload refused; the previous configuration stays in force");
                }
                Err(e)
            }
        }
    }

    /// `/readyz`: `Ok` when the last upstream check succeeded and the proxy
    /// is not draining; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self.detail())
        }
    }

    fn detail(&self) -> String {
        self.readiness_detail
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Marks the proxy as shutting down, so `/readyz` fails and load
    /// balancers stop sending new requests while in-flight ones drain.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.set_ready(false);
    }

    /// Runs one upstream connect check and caches its result.
    pub async fn check_upstream(&self) {
        let generation = self.current();
        let result = generation.upstreams[0].probe().await;
        if let Err(e) = &result {
            if self.ready.load(Ordering::Relaxed) || self.detail() != *e {
                tracing::warn!(error = %e, "upstream readiness check failed");
            }
        }
        if let Ok(mut detail) = self.readiness_detail.lock() {
            *detail = result.as_ref().err().cloned().unwrap_or_default();
        }
        self.ready.store(result.is_ok(), Ordering::Relaxed);
        self.metrics
            .set_ready(result.is_ok() && !self.draining.load(Ordering::Relaxed));
    }

    /// Checks the upstream every `admin.readiness_interval_secs` until the
    /// gateway is dropped.
    pub fn spawn_readiness(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(gateway) = weak.upgrade() {
                gateway.check_upstream().await;
                let interval = gateway
                    .current()
                    .config
                    .settings
                    .admin
                    .readiness_interval_secs;
                drop(gateway);
                tokio::time::sleep(Duration::from_secs(interval)).await;
            }
        });
    }

    /// Reloads when the `--config` file changes (checked every
    /// `admin.config_watch_interval_secs`; 0 turns this off). Works with
    /// editors that replace the file and with Kubernetes ConfigMap volumes,
    /// whose files are swapped through symlinks.
    pub fn spawn_file_watch(self: &Arc<Self>) {
        let Some(file) = self.source.file.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = fingerprint(&file);
            loop {
                let interval = match weak.upgrade() {
                    Some(g) => g.current().config.settings.admin.config_watch_interval_secs,
                    None => return,
                };
                if interval == 0 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                tokio::time::sleep(Duration::from_secs(interval)).await;
                let now = fingerprint(&file);
                if now != last {
                    last = now;
                    let Some(gateway) = weak.upgrade() else {
                        return;
                    };
                    tracing::info!(file = %file.display(), "configuration file changed");
                    let _ = gateway.reload();
                }
            }
        });
    }
}

/// What tells a changed file: its content's modification time and length,
/// following symlinks (a ConfigMap update swaps the `..data` link).
fn fingerprint(file: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Settings bound to sockets and connection handling only change on
/// restart, and so does trace export (its layer sits in the process-wide
/// log subscriber, installed once).
fn warn_restart_only(old: &Config, new: &Config) {
    let (a, b) = (&old.settings.server, &new.settings.server);
    let changed = old.listen != new.listen
        || old.admin_listen != new.admin_listen
        || a.max_header_bytes != b.max_header_bytes
        || a.header_read_timeout_ms != b.header_read_timeout_ms
        || a.max_connections != b.max_connections
        || a.idle_timeout_secs != b.idle_timeout_secs
        || a.shutdown_timeout_secs != b.shutdown_timeout_secs
        || old.settings.log.format != new.settings.log.format
        || old.settings.log.level != new.settings.log.level
        || old.otlp != new.otlp;
    if changed {
        tracing::warn!(
            "listen addresses, connection limits, logging and trace export settings take effect on restart; the rest of the new configuration is in force"
        );
    }
}

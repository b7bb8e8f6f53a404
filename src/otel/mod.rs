//! OpenTelemetry trace export (`[telemetry.otlp]`), off by default.
//!
//! With an endpoint configured, each request gets a SERVER span continuing
//! the client's W3C trace context and each upstream call a CLIENT span whose
//! context goes upstream in `traceparent` ([`spans`]); finished spans go to
//! the collector in batches through a bounded queue ([`export`]).
//!
//! These spans have their own target, [`TARGET`]: only the OpenTelemetry
//! layer sees them, and the log layer never does, so log lines read the same
//! with export on or off. With export off nothing of this is installed,
//! [`enabled`] is false, and the request path makes no span and reads or
//! writes no trace header.

mod export;
mod settings;
mod spans;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

pub use export::{EXPORT_TIMEOUT, Pipeline};
pub use settings::{
    DEFAULT_SERVICE_NAME, ENV_ENDPOINT, ENV_PROTOCOL, ENV_SAMPLER_ARG, ENV_SERVICE_NAME,
    ENV_TRACES_ENDPOINT, ENV_TRACES_PROTOCOL, ExportConfig, OtlpProtocol, OtlpSettings,
    TelemetrySettings, resolve,
};
pub use spans::{ClientSpan, ServerSpan, send};

/// The tracing target of the exported spans (not a module path, so no log
/// event ever matches it).
pub const TARGET: &str = "guestgate_otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether trace export is installed: the one check the request path makes.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OpenTelemetry layer for `config`, seeing only [`TARGET`] spans, and
/// its export task (started on the current Tokio runtime). The request path
/// makes spans once [`mark_enabled`] is called, after the layer is installed.
pub fn layer<S>(config: &ExportConfig) -> Result<(impl Layer<S> + use<S>, Pipeline), String>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let (processor, pipeline) = export::start(config, &resource)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("guestgate");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    Ok((layer, pipeline))
}

/// Turns span making on; for [`crate::telemetry`], once the layer is installed.
pub(crate) fn mark_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// A filter for the log layer that leaves the exported spans out.
pub fn not_exported() -> Targets {
    Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_target(TARGET, tracing_subscriber::filter::LevelFilter::OFF)
}

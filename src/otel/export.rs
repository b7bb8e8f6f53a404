//! From a finished span to the collector without ever holding up a request:
//! [`QueueProcessor`] puts each finished span into a bounded queue with
//! `try_send` (a full queue drops the span and counts it), and one task on
//! the proxy's runtime takes batches off the queue and sends them, one
//! export at a time, each bounded by [`EXPORT_TIMEOUT`].
//!
//! The SDK's own `BatchSpanProcessor` is not used: it counts drops only
//! internally, and it exports from a thread of its own that has no Tokio
//! runtime, which the OTLP clients here need.

use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

use super::settings::{ExportConfig, OtlpProtocol};

/// Spans per export request, at most.
const MAX_BATCH: usize = 512;
/// How long a batch waits for more spans before it is sent anyway.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The longest one export may take, retries included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed exports are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Hands finished spans to the export task; never blocks.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(span) {
            crate::metrics::trace_export().dropped("queue_full", 1);
        }
    }

    /// Flushing is asynchronous: [`Pipeline::shutdown`].
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The running export task; [`Pipeline::shutdown`] flushes it.
#[derive(Debug)]
pub struct Pipeline {
    flush: oneshot::Sender<oneshot::Sender<()>>,
}

impl Pipeline {
    /// Sends what is queued, waiting at most `timeout`; spans that finish
    /// later are not exported. For the end of the process.
    pub async fn shutdown(self, timeout: Duration) {
        let (done, flushed) = oneshot::channel();
        if self.flush.send(done).is_ok() && tokio::time::timeout(timeout, flushed).await.is_err() {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "trace export did not finish before shutdown; the remaining spans are lost"
            );
        }
    }
}

/// Builds the OTLP exporter for `config` and starts the export task on the
/// current Tokio runtime.
pub fn start(
    config: &ExportConfig,
    resource: &Resource,
) -> Result<(QueueProcessor, Pipeline), String> {
    let mut exporter = exporter(config)?;
    exporter.set_resource(resource);
    let (queue, spans) = mpsc::channel(config.max_queue_size);
    let (flush, flushes) = oneshot::channel();
    let task = Exporter {
        exporter,
        batch: config.max_queue_size.min(MAX_BATCH),
        endpoint: config.endpoint.to_string(),
        warned: None,
    };
    tokio::spawn(task.run(spans, flushes));
    Ok((QueueProcessor { queue }, Pipeline { flush }))
}

/// The OTLP client: HTTP over the proxy's own hyper/rustls stack (no second
/// HTTP client in the binary), or tonic for gRPC.
fn exporter(config: &ExportConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let endpoint = config.endpoint.to_string();
    let https = config.endpoint.scheme() == Some(&http::uri::Scheme::HTTPS);
    let built = match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let tls = crate::tls::upstream_client_config(None).map_err(|e| e.to_string())?;
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(Duration::from_secs(5)));
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client =
                opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
        OtlpProtocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT);
            let builder = if https {
                builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_webpki_roots(),
                )
            } else {
                builder
            };
            builder.build()
        }
    };
    built.map_err(|e| format!("telemetry.otlp: cannot build the exporter: {e}"))
}

/// The export task's state.
struct Exporter {
    exporter: opentelemetry_otlp::SpanExporter,
    batch: usize,
    endpoint: String,
    warned: Option<Instant>,
}

impl Exporter {
    /// Batches spans off the queue until a flush is asked for, then sends
    /// what is left and answers it.
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        mut flushes: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch = Vec::with_capacity(self.batch);
        let mut flush = None;
        // False once the pipeline is gone without asking for a flush.
        let mut listening = true;
        while flush.is_none() {
            tokio::select! {
                received = spans.recv_many(&mut batch, self.batch) => {
                    if received == 0 {
                        return;
                    }
                }
                asked = &mut flushes, if listening => match asked {
                    Ok(done) => flush = Some(done),
                    Err(_) => listening = false,
                },
            }
            // Fill the batch for a while, unless a flush is asked for.
            let deadline = tokio::time::sleep(BATCH_DELAY);
            tokio::pin!(deadline);
            while flush.is_none() && batch.len() < self.batch {
                let room = self.batch - batch.len();
                tokio::select! {
                    received = spans.recv_many(&mut batch, room) => {
                        if received == 0 {
                            break;
                        }
                    }
                    () = &mut deadline => break,
                    asked = &mut flushes, if listening => match asked {
                        Ok(done) => flush = Some(done),
                        Err(_) => listening = false,
                    },
                }
            }
            if !batch.is_empty() {
                self.export(std::mem::take(&mut batch)).await;
            }
        }
        // Shutting down: what is queued now, then nothing more.
        spans.close();
        while spans.recv_many(&mut batch, self.batch).await > 0 {
            self.export(std::mem::take(&mut batch)).await;
        }
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }

    /// One export; a failure loses the batch, is counted, and is logged at
    /// most once per [`WARN_INTERVAL`].
    async fn export(&mut self, batch: Vec<SpanData>) {
        let spans = batch.len() as u64;
        let error = match tokio::time::timeout(EXPORT_TIMEOUT, self.exporter.export(batch)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", EXPORT_TIMEOUT.as_secs()),
        };
        let counters = crate::metrics::trace_export();
        counters.failed();
        counters.dropped("export_failed", spans);
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
            self.warned = Some(Instant::now());
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %error,
                spans,
                "trace export failed; the spans are lost (logged at most once a minute; see guestgate_trace_export_failures_total)"
            );
        }
    }
}

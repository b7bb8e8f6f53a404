//! From a finished span to the collector without ever holding up a request:
//! [`QueueProcessor`] puts each finished span into a bounded queue with
//! `try_send` (a full queue drops the span and counts it), and one task on
//! the runtime that started it takes batches off the queue and sends them,
//! one export at a time, each bounded by [`EXPORT_TIMEOUT`]. The task is
//! woken once per full batch or by its own timer, not once per span, so the
//! threads serving requests hardly ever wake another thread.
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
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use super::settings::{ExportConfig, OtlpProtocol};

/// Spans per export request, at most.
const MAX_BATCH: usize = 512;
/// How long a span waits at most for its batch to fill before it is sent.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The longest one export may take, retries included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed exports are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Hands finished spans to the export task; never blocks.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    /// Woken when a batch is waiting.
    batch_ready: Arc<Notify>,
    batch: usize,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.queue.try_send(span) {
            Ok(()) => {
                if self.queue.max_capacity() - self.queue.capacity() >= self.batch {
                    self.batch_ready.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::trace_export().dropped("queue_full", 1);
            }
            // After shutdown: nothing is exported any more.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
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
    Ok(spawn(
        exporter,
        config.max_queue_size,
        config.endpoint.to_string(),
    ))
}

/// Starts the export task around `exporter`, with a queue of `queue_size`.
fn spawn<E: SpanExporter + 'static>(
    exporter: E,
    queue_size: usize,
    endpoint: String,
) -> (QueueProcessor, Pipeline) {
    let (queue, spans) = mpsc::channel(queue_size);
    let (flush, flushes) = oneshot::channel();
    let batch_ready = Arc::new(Notify::new());
    let batch = queue_size.min(MAX_BATCH);
    let task = Exporter {
        exporter,
        batch,
        endpoint,
        warned: None,
    };
    tokio::spawn(task.run(spans, batch_ready.clone(), flushes));
    let processor = QueueProcessor {
        queue,
        batch_ready,
        batch,
    };
    (processor, Pipeline { flush })
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
struct Exporter<E> {
    exporter: E,
    batch: usize,
    endpoint: String,
    warned: Option<Instant>,
}

impl<E: SpanExporter> Exporter<E> {
    /// Sends the queue, batch by batch, whenever a batch is ready or the
    /// timer ticks, until a flush is asked for; then sends what is left
    /// and answers it.
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        batch_ready: Arc<Notify>,
        mut flushes: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let mut timer = tokio::time::interval(BATCH_DELAY);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // False once the pipeline is gone without asking for a flush.
        let mut listening = true;
        let flush = loop {
            tokio::select! {
                () = batch_ready.notified() => {}
                _ = timer.tick() => {}
                asked = &mut flushes, if listening => match asked {
                    Ok(done) => break Some(done),
                    Err(_) => listening = false,
                },
            }
            if !self.send_queued(&mut spans).await {
                break None;
            }
        };
        // Shutting down: what is queued now, then nothing more.
        spans.close();
        self.send_queued(&mut spans).await;
        if let Some(done) = flush {
            let _ = done.send(());
        }
    }

    /// Exports what the queue holds, in batches; false once the queue is
    /// closed and empty.
    async fn send_queued(&mut self, spans: &mut mpsc::Receiver<SpanData>) -> bool {
        loop {
            let mut batch = Vec::with_capacity(self.batch.min(spans.len()));
            while batch.len() < self.batch {
                match spans.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        if !batch.is_empty() {
                            self.export(batch).await;
                        }
                        return false;
                    }
                }
            }
            if batch.is_empty() {
                return true;
            }
            let full = batch.len() == self.batch;
            self.export(batch).await;
            if !full {
                return true;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::sync::Mutex;
    use std::time::SystemTime;

    /// Records batch sizes; answers each export once `gate` has a permit.
    #[derive(Debug, Clone)]
    struct Recording {
        batches: Arc<Mutex<Vec<usize>>>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl SpanExporter for Recording {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.gate.acquire().await.expect("open").forget();
            self.batches.lock().unwrap().push(batch.len());
            Ok(())
        }
    }

    fn span(n: u64) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(u128::from(n) + 1),
                SpanId::from(n + 1),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "s".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..400 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_shutdown_flushes() {
        let exporter = Recording {
            batches: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let (processor, pipeline) = spawn(exporter.clone(), 4, "test".into());
        let dropped = || crate::metrics::trace_export().dropped_total("queue_full");
        let before = dropped();
        // A full batch (4) wakes the task, whose export then waits at the gate.
        for n in 0..4 {
            processor.on_end(span(n));
        }
        until("the first batch is taken", || {
            processor.queue.capacity() == 4
        })
        .await;
        // Four more fill the queue again; the fifth finds it full.
        for n in 4..9 {
            processor.on_end(span(n));
        }
        assert_eq!(dropped() - before, 1);
        // Shutdown sends the first batch and what is queued.
        exporter.gate.add_permits(10);
        pipeline.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*exporter.batches.lock().unwrap(), [4, 4]);
        // Spans after shutdown are neither exported nor counted as dropped.
        processor.on_end(span(10));
        assert_eq!(dropped() - before, 1);
    }

    #[tokio::test]
    async fn a_partial_batch_goes_with_the_timer() {
        let exporter = Recording {
            batches: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(10)),
        };
        let (processor, _pipeline) = spawn(exporter.clone(), 100, "test".into());
        processor.on_end(span(1));
        processor.on_end(span(2));
        let batches = exporter.batches.clone();
        until("the timer sends the partial batch", move || {
            *batches.lock().unwrap() == [2]
        })
        .await;
    }
}

//! The span queue between the request path and the OTLP exporter. Ending a span never waits:
//! it is put on a bounded queue, or dropped and counted when the queue is full. One tokio task
//! takes spans off the queue in batches and exports them, so a slow or dead collector costs
//! spans, never request time.
//!
//! The SDK's own batch processors count their drops only in a log line at shutdown, and the
//! thread-based one runs exports outside tokio (where the hyper HTTP client cannot run); this
//! one counts every lost span in `weir_telemetry_dropped_spans_total` and exports on the
//! gateway's runtime.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Sizes and times of the queue (validated: all greater than zero).
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub scheduled_delay: Duration,
    pub export_timeout: Duration,
}

/// `weir_telemetry_dropped_spans_total{reason}`: spans that never reached the collector.
#[derive(Clone)]
pub struct Dropped {
    /// The queue was full when the span ended.
    pub queue_full: IntCounter,
    /// The export of the span's batch failed or timed out.
    pub export_failed: IntCounter,
    /// The span ended after the exporter was shut down.
    pub shutdown: IntCounter,
}

impl Dropped {
    /// Creates the counter (every reason at zero) and registers it in `registry`.
    pub fn register(registry: &Registry) -> Dropped {
        let vec = IntCounterVec::new(
            Opts::new(
                "weir_telemetry_dropped_spans_total",
                "Spans that never reached the trace collector: the export queue was full, the \
                 export failed or timed out, or the span ended after shutdown.",
            ),
            &["reason"],
        )
        .expect("static counter definition");
        if let Err(e) = registry.register(Box::new(vec.clone())) {
            tracing::debug!(error = %e, "dropped-spans counter already registered");
        }
        Dropped {
            queue_full: vec.with_label_values(&["queue_full"]),
            export_failed: vec.with_label_values(&["export_failed"]),
            shutdown: vec.with_label_values(&["shutdown"]),
        }
    }
}

enum Control {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The `SpanProcessor` the tracer provider calls when a span ends.
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    dropped: Dropped,
}

impl std::fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProcessor")
            .field("capacity", &self.spans.max_capacity())
            .finish()
    }
}

/// Owner of the export task: flushes and stops it.
pub struct QueueHandle {
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

/// Starts the export task on the current tokio runtime (the caller checks there is one).
pub fn start<E>(exporter: E, config: QueueConfig, dropped: Dropped) -> (QueueProcessor, QueueHandle)
where
    E: SpanExporter + 'static,
{
    let (spans, rx) = mpsc::channel(config.max_queue_size);
    let (control, control_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(exporter, rx, control_rx, config, dropped.clone()));
    let processor = QueueProcessor {
        spans,
        control: control.clone(),
        dropped,
    };
    (processor, QueueHandle { control, task })
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped.queue_full.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => self.dropped.shutdown.inc(),
        }
    }

    /// Asks for a flush without waiting for it (this is called on request threads, where
    /// blocking is not allowed); the gateway awaits [`QueueHandle::shutdown`] instead.
    fn force_flush(&self) -> OTelSdkResult {
        let (done, _) = oneshot::channel();
        let _ = self.control.send(Control::Flush(done));
        Ok(())
    }

    /// Asks the task to export what is queued and stop, without waiting (see `force_flush`).
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let (done, _) = oneshot::channel();
        let _ = self.control.send(Control::Shutdown(done));
        Ok(())
    }
}

impl QueueHandle {
    /// Exports every span queued so far, shuts the exporter down and ends the task, waiting
    /// at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let (done, rx) = oneshot::channel();
        let _ = self.control.send(Control::Shutdown(done));
        let finished = matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())));
        if !finished {
            self.task.abort();
        }
        finished
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
    config: QueueConfig,
    dropped: Dropped,
) {
    let max = config.max_export_batch_size.clamp(1, config.max_queue_size);
    let mut out = Exporter {
        exporter,
        timeout: config.export_timeout,
        dropped,
        failing: false,
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(max);
    let mut tick = tokio::time::interval(config.scheduled_delay);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.reset();
    loop {
        let room = max - batch.len();
        tokio::select! {
            biased;
            msg = control.recv() => {
                while let Ok(span) = rx.try_recv() {
                    batch.push(span);
                    if batch.len() >= max {
                        out.export(&mut batch).await;
                    }
                }
                out.export(&mut batch).await;
                match msg {
                    Some(Control::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(Control::Shutdown(done)) => {
                        let _ = out.exporter.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
            }
            n = rx.recv_many(&mut batch, room) => {
                if n == 0 {
                    // Every sender is gone: the provider was dropped.
                    out.export(&mut batch).await;
                    let _ = out.exporter.shutdown();
                    return;
                }
                if batch.len() >= max {
                    out.export(&mut batch).await;
                    tick.reset();
                }
            }
            _ = tick.tick() => out.export(&mut batch).await,
        }
    }
}

struct Exporter<E> {
    exporter: E,
    timeout: Duration,
    dropped: Dropped,
    /// The last export failed: log again only when it recovers.
    failing: bool,
}

impl<E: SpanExporter> Exporter<E> {
    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::replace(batch, Vec::with_capacity(batch.capacity()));
        let n = spans.len() as u64;
        let error = match tokio::time::timeout(self.timeout, self.exporter.export(spans)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        match error {
            None if self.failing => {
                self.failing = false;
                tracing::info!("trace export works again");
            }
            None => {}
            Some(error) => {
                self.dropped.export_failed.inc_by(n);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(%error, spans = n, "trace export failed; spans are dropped (and counted) until it works again");
                }
            }
        }
    }
}

//! The simulator's Prometheus metrics, named and labelled like vLLM's, in a per-instance registry,
//! and the tracker that moves each request through waiting, running and finished.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::handlers::Sim;

/// Why a request finished: the `finished_reason` label of `vllm:request_success_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Stop,
    Length,
    Abort,
    Error,
}

const REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// All metrics of one simulator instance.
pub(crate) struct Metrics {
    registry: Registry,
    pub running: IntGauge,
    pub waiting: IntGauge,
    kv_cache: Gauge,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    success: [IntCounter; 5],
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
}

impl Metrics {
    pub fn new(model: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .const_label("engine", "0")
                .const_label("model_name", model)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help)
                .const_label("engine", "0")
                .const_label("model_name", model)
                .buckets(buckets.to_vec());
            let h = Histogram::with_opts(opts)?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let running = IntGauge::with_opts(opts(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
        ))?;
        let waiting = IntGauge::with_opts(opts(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
        ))?;
        let kv_cache = Gauge::with_opts(opts(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
        ))?;
        let prompt_tokens = IntCounter::with_opts(opts(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
        ))?;
        let generation_tokens = IntCounter::with_opts(opts(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
        ))?;
        let success_vec = IntCounterVec::new(
            opts(
                "vllm:request_success_total",
                "Count of successfully processed requests.",
            ),
            &["finished_reason"],
        )?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(kv_cache.clone()))?;
        registry.register(Box::new(prompt_tokens.clone()))?;
        registry.register(Box::new(generation_tokens.clone()))?;
        registry.register(Box::new(success_vec.clone()))?;
        let success = REASONS.map(|reason| success_vec.with_label_values(&[reason]));
        let ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )?;
        let itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )?;
        let e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_BUCKETS,
        )?;
        let queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_BUCKETS,
        )?;
        Ok(Self {
            registry,
            running,
            waiting,
            kv_cache,
            prompt_tokens,
            generation_tokens,
            success,
            ttft,
            itl,
            e2e,
            queue,
        })
    }

    /// Counts one finished request.
    pub fn finished(&self, reason: Reason) {
        let index = match reason {
            Reason::Stop => 0,
            Reason::Length => 1,
            Reason::Abort => 2,
            Reason::Error => 3,
        };
        self.success[index].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, max_num_seqs: usize) -> String {
        let seqs = max_num_seqs.max(1) as f64;
        self.kv_cache
            .set((self.running.get().max(0) as f64 / seqs).min(1.0));
        let mut out = String::with_capacity(8 * 1024);
        if let Err(err) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(%err, "sim: encoding metrics failed");
        }
        out
    }
}

/// The content type vLLM gives `/metrics`.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=1.0.0; charset=utf-8";

enum State {
    Waiting,
    Running {
        _permit: Option<OwnedSemaphorePermit>,
        last_token: Option<Instant>,
    },
    Done,
}

/// Follows one generation through waiting, running and finished, keeping the gauges and
/// counters right; dropping it unfinished counts an abort.
pub(crate) struct Tracker {
    sim: Arc<Sim>,
    arrival: Instant,
    state: State,
}

impl Tracker {
    pub fn new(sim: Arc<Sim>) -> Self {
        sim.metrics.waiting.inc();
        Self {
            sim,
            arrival: Instant::now(),
            state: State::Waiting,
        }
    }

    pub fn sim(&self) -> &Arc<Sim> {
        &self.sim
    }

    pub fn admit(&mut self, permit: OwnedSemaphorePermit, prompt_tokens: u32, now: Instant) {
        self.run(Some(permit), prompt_tokens, now);
    }

    /// Counts the request as running without taking a generation slot (the hostile faults).
    pub fn admit_unslotted(&mut self, prompt_tokens: u32, now: Instant) {
        self.run(None, prompt_tokens, now);
    }

    fn run(&mut self, permit: Option<OwnedSemaphorePermit>, prompt_tokens: u32, now: Instant) {
        if let State::Waiting = self.state {
            let m = &self.sim.metrics;
            m.waiting.dec();
            m.running.inc();
            m.prompt_tokens.inc_by(u64::from(prompt_tokens));
            m.queue
                .observe(now.duration_since(self.arrival).as_secs_f64());
            self.state = State::Running {
                _permit: permit,
                last_token: None,
            };
        }
    }

    /// Records one output token produced at `now`.
    pub fn token(&mut self, now: Instant) {
        if let State::Running { last_token, .. } = &mut self.state {
            let m = &self.sim.metrics;
            m.generation_tokens.inc();
            match last_token {
                None => m
                    .ttft
                    .observe(now.duration_since(self.arrival).as_secs_f64()),
                Some(last) => m.itl.observe(now.duration_since(*last).as_secs_f64()),
            }
            *last_token = Some(now);
        }
    }

    /// Records `count` tokens of a non-streamed generation whose first token came at `first`.
    pub fn tokens(&mut self, count: u32, first: Instant, itl: Duration) {
        if let State::Running { last_token, .. } = &mut self.state {
            let m = &self.sim.metrics;
            m.generation_tokens.inc_by(u64::from(count));
            if count > 0 {
                m.ttft
                    .observe(first.duration_since(self.arrival).as_secs_f64());
                *last_token = Some(first);
            }
            for _ in 1..count.min(10_000) {
                m.itl.observe(itl.as_secs_f64());
            }
        }
    }

    pub fn finish(&mut self, reason: Reason) {
        let m = &self.sim.metrics;
        match self.state {
            State::Waiting => m.waiting.dec(),
            State::Running { .. } => m.running.dec(),
            State::Done => return,
        }
        m.finished(reason);
        m.e2e.observe(self.arrival.elapsed().as_secs_f64());
        // Releases the permit.
        self.state = State::Done;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Reason::Abort);
    }
}

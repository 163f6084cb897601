//! Routing and the endpoint handlers of the simulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::clock;
use super::flood::{self, Ask, Patterns};
use super::metrics::{self, Metrics, Reason, Tracker};
use super::pydantic::{ApiError, json_str};
use super::render::{self, Chunks, Finish, Full};
use super::reply::{
    ENGINE_ERROR, JSON, SSE, detail, error, header_ms, injected, read_body, respond,
};
use super::request::{self, Kind, Plan};
use super::stream::{Generation, SimBody, Stream, Timing, jitter, later};
use super::{Fault, SimConfig};

/// Most inputs in one embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 2048;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// State shared by every connection of one simulator instance.
pub(crate) struct Sim {
    pub cfg: SimConfig,
    /// The model name as a JSON string literal.
    pub model_json: String,
    pub fingerprint: String,
    pub semaphore: Arc<Semaphore>,
    pub metrics: Metrics,
    pub shutdown: Arc<Notify>,
    pub stopping: AtomicBool,
    /// The flood frames of the hostile faults, built on first use.
    pub patterns: Patterns,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Result<Self, prometheus::Error> {
        let metrics = Metrics::new(&cfg.model)?;
        let model_json = json_str(&cfg.model);
        let identity = format!("{}/{}", cfg.model, cfg.max_model_len);
        let fingerprint = format!(
            "vllm-0.32.0-{:08x}",
            render::hash(identity.as_bytes()) as u32
        );
        let permits = cfg.max_num_seqs.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Self {
            model_json,
            fingerprint,
            semaphore: Arc::new(Semaphore::new(permits)),
            metrics,
            shutdown: Arc::new(Notify::new()),
            stopping: AtomicBool::new(false),
            patterns: Patterns::default(),
            cfg,
        })
    }

    /// Tells stalled generations to end: the server is stopping.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }

    async fn until_shutdown(&self) {
        let notified = self.shutdown.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            notified.await;
        }
    }

    pub fn created(&self) -> u64 {
        self.cfg.fixed_created.unwrap_or_else(unix_now)
    }

    /// Routes one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<SimBody> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = *req.method() == Method::POST;
        if !self.authorized(&req) {
            let body = SimBody::full(Bytes::from_static(br#"{"error":"Unauthorized"}"#));
            return respond(StatusCode::UNAUTHORIZED, Some(JSON), body);
        }
        match req.uri().path() {
            "/v1/chat/completions" if post => self.generate(Kind::Chat, req).await,
            "/v1/completions" if post => self.generate(Kind::Completion, req).await,
            "/v1/embeddings" if post => self.embeddings(req).await,
            "/v1/models" if get => {
                let created = self.created();
                let perm = render::mix(render::hash(self.cfg.model.as_bytes()), created);
                let body = render::models(&self.model_json, self.cfg.max_model_len, created, perm);
                respond(StatusCode::OK, Some(JSON), SimBody::full(body))
            }
            "/health" if get => respond(StatusCode::OK, None, SimBody::full(Bytes::new())),
            "/metrics" if get => {
                let text = self.metrics.render(self.cfg.max_num_seqs);
                respond(
                    StatusCode::OK,
                    Some(metrics::CONTENT_TYPE),
                    SimBody::full(text),
                )
            }
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/models"
            | "/health"
            | "/metrics" => detail(StatusCode::METHOD_NOT_ALLOWED),
            _ => detail(StatusCode::NOT_FOUND),
        }
    }

    /// vLLM's `--api-key` check: only the `/v1` routes need the key.
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(key) = &self.cfg.api_key else {
            return true;
        };
        if !req.uri().path().starts_with("/v1") {
            return true;
        }
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        given == Some(format!("Bearer {key}").as_str())
    }

    fn overrides(&self, headers: &HeaderMap) -> Result<(Timing, Option<Fault>), ApiError> {
        let cfg = &self.cfg;
        let timing = Timing {
            ttft: header_ms(headers, "x-sim-ttft-ms")?.unwrap_or(cfg.ttft),
            ttft_jitter: cfg.ttft_jitter,
            itl: header_ms(headers, "x-sim-itl-ms")?.unwrap_or(cfg.itl),
            itl_jitter: cfg.itl_jitter,
        };
        let fault = match headers.get("x-sim-fault") {
            None => cfg.fault,
            Some(value) => {
                let parsed = value
                    .to_str()
                    .map_err(|e| e.to_string())
                    .and_then(str::parse);
                match parsed {
                    Ok(fault) => Some(fault),
                    Err(message) => {
                        let message = format!("invalid x-sim-fault header: {message}");
                        return Err(ApiError::openai(
                            StatusCode::BAD_REQUEST,
                            "BadRequestError",
                            &message,
                            None,
                        ));
                    }
                }
            }
        };
        Ok((timing, fault))
    }

    async fn generate(self: Arc<Self>, kind: Kind, req: Request<Incoming>) -> Response<SimBody> {
        let (parts, body) = req.into_parts();
        let (timing, fault) = match self.overrides(&parts.headers) {
            Ok(o) => o,
            Err(e) => return error(e),
        };
        let raw = match read_body(body).await {
            Ok(raw) => raw,
            Err(e) => return error(e),
        };
        let plan = match request::parse(kind, &raw, &self.cfg.model, self.cfg.max_model_len) {
            Ok(plan) => plan,
            Err(e) => return error(e),
        };
        let seed = match parts.headers.get("x-request-id") {
            Some(id) => render::hash(id.as_bytes()),
            None => fastrand::u64(..),
        };
        if let Some(Fault::Http(code)) = fault {
            self.metrics.finished(Reason::Error);
            return injected(code, &format!("weir sim: injected HTTP {code} fault"));
        }
        // 53 random bits as a fraction in [0, 1).
        let draw = (render::mix(seed, 4) >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.cfg.error_rate {
            self.metrics.finished(Reason::Error);
            return injected(500, ENGINE_ERROR);
        }
        let (tokens, finish) = output_length(&plan, seed);
        let id_prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        let id = format!("{id_prefix}-{:016x}", render::mix(seed, 1));
        let created = self.created();
        if let Some(fault) = fault.filter(|f| flood::hostile(*f)) {
            let ask = Ask {
                kind,
                plan: &plan,
                id: &id,
                created,
            };
            return flood::answer(&self, fault, &ask);
        }
        let tracker = Tracker::new(self.clone());
        if plan.stream {
            let chunks = Chunks::new(
                kind,
                &id,
                created,
                &self.model_json,
                plan.prompt_tokens,
                plan.continuous_usage,
            );
            let generation = Generation {
                chunks,
                tokens,
                finish,
                include_usage: plan.include_usage,
                fault,
                timing,
                prompt_tokens: plan.prompt_tokens,
                seed,
                chat: kind == Kind::Chat,
            };
            let stream = Stream::new(generation, tracker);
            return respond(StatusCode::OK, Some(SSE), SimBody::Stream(Box::new(stream)));
        }
        let done = Done {
            kind,
            plan: &plan,
            id: &id,
            created,
            seed,
            tokens,
            finish,
        };
        self.complete(tracker, &done, timing, fault).await
    }

    /// A non-streamed generation: answers once the whole output would have been generated.
    async fn complete(
        &self,
        mut tracker: Tracker,
        d: &Done<'_>,
        timing: Timing,
        fault: Option<Fault>,
    ) -> Response<SimBody> {
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return injected(500, ENGINE_ERROR);
        };
        let admitted = Instant::now();
        tracker.admit(permit, d.plan.prompt_tokens, admitted);
        let mut rng = fastrand::Rng::with_seed(render::mix(d.seed, 5));
        let first = later(
            admitted,
            timing
                .ttft
                .saturating_add(jitter(&mut rng, timing.ttft_jitter)),
        );
        let token_time = |count: u32, rng: &mut fastrand::Rng| {
            if timing.itl_jitter.is_zero() {
                return later(first, timing.itl.saturating_mul(count.saturating_sub(1)));
            }
            let mut t = first;
            for _ in 1..count {
                t = later(t, timing.itl.saturating_add(jitter(rng, timing.itl_jitter)));
            }
            t
        };
        let produced = match fault {
            Some(Fault::Stall { .. }) => {
                // No answer until the client leaves (abort) or the server stops.
                self.until_shutdown().await;
                let body = SimBody::Broken {
                    head: None,
                    yielded: false,
                };
                return respond(StatusCode::OK, Some(JSON), body);
            }
            Some(Fault::ErrorEvent { after } | Fault::Close { after }) => after.min(d.tokens),
            // The hostile faults are answered before a generation starts.
            _ => d.tokens,
        };
        clock::Sleep::until(token_time(produced.max(1), &mut rng)).await;
        tracker.tokens(produced, first, timing.itl);
        if let Some(Fault::ErrorEvent { .. }) = fault {
            tracker.finish(Reason::Error);
            return injected(500, ENGINE_ERROR);
        }
        let mut words = fastrand::Rng::with_seed(render::mix(d.seed, 3));
        let mut text = String::with_capacity(d.tokens as usize * 8);
        for index in 0..d.tokens {
            text.push_str(render::token(&mut words, index, d.tokens, d.finish));
        }
        let body = render::full(&Full {
            kind: d.kind,
            id: d.id,
            created: d.created,
            model_json: &self.model_json,
            text: &text,
            finish: d.finish,
            fingerprint: &self.fingerprint,
            prompt_tokens: d.plan.prompt_tokens,
            completion_tokens: d.tokens,
        });
        if let Some(Fault::Close { .. }) = fault {
            // Headers and half of the body, then the connection breaks.
            tracker.finish(Reason::Error);
            let mut head = Bytes::from(body);
            head.truncate(head.len() / 2);
            let body = SimBody::Broken {
                head: Some(head),
                yielded: false,
            };
            return respond(StatusCode::OK, Some(JSON), body);
        }
        tracker.finish(match d.finish {
            Finish::Stop => Reason::Stop,
            Finish::Length => Reason::Length,
        });
        respond(StatusCode::OK, Some(JSON), SimBody::full(body))
    }

    async fn embeddings(self: Arc<Self>, req: Request<Incoming>) -> Response<SimBody> {
        let (parts, body) = req.into_parts();
        let (timing, _) = match self.overrides(&parts.headers) {
            Ok(o) => o,
            Err(e) => return error(e),
        };
        let raw = match read_body(body).await {
            Ok(raw) => raw,
            Err(e) => return error(e),
        };
        let (prompt_tokens, inputs) =
            match request::parse_embeddings(&raw, &self.cfg.model, self.cfg.max_model_len) {
                Ok(parsed) => parsed,
                Err(e) => return error(e),
            };
        if inputs > MAX_EMBEDDING_INPUTS {
            let message =
                format!("weir sim embeds at most {MAX_EMBEDDING_INPUTS} inputs per request.");
            return error(ApiError::openai(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                &message,
                Some("input"),
            ));
        }
        let seed = match parts.headers.get("x-request-id") {
            Some(id) => render::hash(id.as_bytes()),
            None => fastrand::u64(..),
        };
        clock::Sleep::until(later(Instant::now(), timing.ttft)).await;
        self.metrics.prompt_tokens.inc_by(u64::from(prompt_tokens));
        let body = render::embeddings(
            render::mix(seed, 1),
            self.created(),
            &self.model_json,
            inputs,
            prompt_tokens,
        );
        respond(StatusCode::OK, Some(JSON), SimBody::full(body))
    }
}

/// How many tokens a generation produces and why it stops: `max_tokens` with `ignore_eos`,
/// a length drawn from the seed otherwise.
fn output_length(plan: &Plan, seed: u64) -> (u32, Finish) {
    let max = plan.max_tokens.max(1);
    if plan.ignore_eos {
        return (max, Finish::Length);
    }
    let n = 1 + (render::mix(seed, 2) % u64::from(max)) as u32;
    let finish = if n < max {
        Finish::Stop
    } else {
        Finish::Length
    };
    (n, finish)
}

/// What a non-streamed generation answers.
struct Done<'a> {
    kind: Kind,
    plan: &'a Plan,
    id: &'a str,
    created: u64,
    seed: u64,
    tokens: u32,
    finish: Finish,
}

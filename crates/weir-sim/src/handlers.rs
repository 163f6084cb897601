//! Routing and the endpoint handlers of the simulator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::cache::PrefixCache;
use super::clock;
use super::flood::Patterns;
use super::metrics::{self, Metrics};
use super::pooling::Pool;
use super::pydantic::{ApiError, json_str};
use super::render;
use super::reply::{JSON, detail, error, header_ms, read_body, respond};
use super::request::{self, Api};
use super::stream::{SimBody, Timing, later};
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
    pub cache: PrefixCache,
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
            cache: PrefixCache::new(cfg.prefix_cache_blocks),
            cfg,
        })
    }

    /// Tells stalled generations to end: the server is stopping.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }

    pub(crate) async fn until_shutdown(&self) {
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
            "/v1/chat/completions" if post => self.generate(Api::Chat, req).await,
            "/v1/completions" if post => self.generate(Api::Completion, req).await,
            "/v1/responses" if post => self.generate(Api::Responses, req).await,
            "/v1/messages" if post => self.generate(Api::Messages, req).await,
            "/v1/embeddings" if post => self.embeddings(req).await,
            "/pooling" if post => self.pool(Pool::Pooling, req).await,
            "/classify" if post => self.pool(Pool::Classify, req).await,
            "/score" | "/v1/score" if post => self.pool(Pool::Score, req).await,
            "/rerank" | "/v1/rerank" | "/v2/rerank" if post => self.pool(Pool::Rerank, req).await,
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
            | "/v1/responses"
            | "/v1/messages"
            | "/v1/embeddings"
            | "/pooling"
            | "/classify"
            | "/score"
            | "/v1/score"
            | "/rerank"
            | "/v1/rerank"
            | "/v2/rerank"
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

    pub(crate) fn overrides(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Timing, Option<Fault>), ApiError> {
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

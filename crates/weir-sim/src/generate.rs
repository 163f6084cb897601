//! Generation requests of every API (chat, completions, Responses, Messages): validation,
//! faults, the prefix cache, and the answer streamed or whole.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::clock;
use super::flood::{self, Ask};
use super::frames::Frames;
use super::handlers::Sim;
use super::metrics::{Reason, Tracker};
use super::output::{self, Collected, Shape};
use super::pydantic::ApiError;
use super::render::{self, Chunks, Details, Finish, Full};
use super::reply::{ENGINE_ERROR, JSON, SSE, error, injected_error, read_body, respond};
use super::request::{self, Api, Plan};
use super::stream::{Generation, SimBody, Stream, Timing, jitter, later};
use super::{Fault, messages, responses};

/// Everything an answer is made from.
struct Answer {
    api: Api,
    plan: Plan,
    id: String,
    created: u64,
    seed: u64,
    tokens: u32,
    finish: Finish,
    shape: Shape,
    /// Prompt tokens found in the prefix cache.
    cached: u32,
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

/// A validated request and how it is to be answered.
struct Asked {
    plan: Plan,
    timing: Timing,
    fault: Option<Fault>,
    /// `x-sim-reasoning` and `x-sim-tool-call`.
    reasoning: u32,
    tool: bool,
    seed: u64,
}

impl Sim {
    /// A generation request of `api`; errors on `/v1/messages` are Anthropic-shaped.
    pub(crate) async fn generate(
        self: Arc<Self>,
        api: Api,
        req: Request<Incoming>,
    ) -> Response<SimBody> {
        let shaped = |e: ApiError| match api {
            Api::Messages => error(messages::anthropic(e)),
            _ => error(e),
        };
        let asked = match self.asked(api, req).await {
            Ok(asked) => asked,
            Err(e) => return shaped(e),
        };
        if let Err(e) = self.injected(asked.fault, asked.seed) {
            return shaped(e);
        }
        let (timing, fault) = (asked.timing, asked.fault);
        let a = self.answer(api, asked);
        if let Some(fault) = fault.filter(|f| flood::hostile(*f)) {
            let Some(kind) = api.kind() else {
                let message = format!(
                    "weir sim: x-sim-fault {fault} is simulated on chat and completions only"
                );
                let e =
                    ApiError::openai(StatusCode::BAD_REQUEST, "BadRequestError", &message, None);
                return shaped(e);
            };
            let (plan, id, created) = (&a.plan, &a.id, a.created);
            return flood::answer(
                &self,
                fault,
                &Ask {
                    kind,
                    plan,
                    id,
                    created,
                },
            );
        }
        let tracker = Tracker::new(self.clone());
        if a.plan.stream {
            let generation = Generation {
                frames: self.frames(&a),
                shape: a.shape,
                tokens: a.tokens,
                finish: a.finish,
                include_usage: a.plan.include_usage,
                fault,
                timing,
                prompt_tokens: a.plan.prompt_tokens,
                seed: a.seed,
            };
            let stream = Stream::new(generation, tracker);
            return respond(StatusCode::OK, Some(SSE), SimBody::Stream(Box::new(stream)));
        }
        match self.complete(tracker, &a, timing, fault).await {
            Ok(response) => response,
            Err(e) => shaped(e),
        }
    }

    /// The request's headers and body, validated.
    async fn asked(&self, api: Api, req: Request<Incoming>) -> Result<Asked, ApiError> {
        let (parts, body) = req.into_parts();
        let (timing, fault) = self.overrides(&parts.headers)?;
        let (reasoning, tool) = output::headers(&parts.headers)?;
        let plan = self.parse(api, &read_body(body).await?)?;
        let seed = match parts.headers.get("x-request-id") {
            Some(id) => render::hash(id.as_bytes()),
            None => fastrand::u64(..),
        };
        Ok(Asked {
            plan,
            timing,
            fault,
            reasoning,
            tool,
            seed,
        })
    }

    /// The injected failures answered at once: `http=CODE` and `--error-rate`.
    fn injected(&self, fault: Option<Fault>, seed: u64) -> Result<(), ApiError> {
        if let Some(Fault::Http(code)) = fault {
            self.metrics.finished(Reason::Error);
            let message = format!("weir sim: injected HTTP {code} fault");
            return Err(injected_error(code, &message));
        }
        // 53 random bits as a fraction in [0, 1).
        let draw = (render::mix(seed, 4) >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.cfg.error_rate {
            self.metrics.finished(Reason::Error);
            return Err(injected_error(500, ENGINE_ERROR));
        }
        Ok(())
    }

    /// What the answer is: its length, id, shape and cached prompt tokens.
    fn answer(&self, api: Api, asked: Asked) -> Answer {
        let Asked { plan, seed, .. } = asked;
        let (tokens, finish) = output_length(&plan, seed);
        let prefix = match api {
            Api::Chat | Api::Messages => "chatcmpl-",
            Api::Completion => "cmpl-",
            Api::Responses => "resp_",
        };
        let shape = match api {
            Api::Completion => Shape::default(),
            _ => Shape::new(asked.reasoning, asked.tool, plan.tool_name.as_deref(), seed),
        };
        Answer {
            api,
            id: format!("{prefix}{:016x}", render::mix(seed, 1)),
            created: self.created(),
            seed,
            tokens,
            finish,
            shape,
            cached: self.cache.lookup(&plan.prompt_key, plan.prompt_tokens),
            plan,
        }
    }

    fn parse(&self, api: Api, raw: &[u8]) -> Result<Plan, ApiError> {
        let (model, len) = (self.cfg.model.as_str(), self.cfg.max_model_len);
        match api {
            Api::Chat => request::parse(request::Kind::Chat, raw, model, len),
            Api::Completion => request::parse(request::Kind::Completion, raw, model, len),
            Api::Responses => responses::parse(raw, model, len),
            Api::Messages => messages::parse(raw, model, len),
        }
    }

    fn details(&self, a: &Answer) -> Details {
        Details {
            cached: self.cfg.enable_prompt_tokens_details.then_some(a.cached),
            reasoning: a.shape.reasoning_tokens(a.tokens),
        }
    }

    fn responses_head(&self, a: &Answer) -> responses::Head {
        let mut head =
            responses::Head::new(a.id.clone(), a.created, &self.model_json, &a.plan, a.seed);
        head.cached = a.cached;
        head.shape = a.shape.clone();
        head
    }

    fn messages_head(&self, a: &Answer) -> messages::Head {
        let shape = a.shape.clone();
        messages::Head::new(a.id.clone(), &self.model_json, &a.plan, a.cached, shape)
    }

    /// The stream's bytes, per API.
    fn frames(&self, a: &Answer) -> Frames {
        match a.api.kind() {
            Some(kind) => {
                let p = &a.plan;
                let chunks = Chunks::new(
                    kind,
                    &a.id,
                    a.created,
                    &self.model_json,
                    p.prompt_tokens,
                    p.continuous_usage,
                );
                Frames::OpenAi(chunks.with(self.details(a), a.shape.tool.clone()))
            }
            None if a.api == Api::Responses => Frames::Responses(Box::new(
                responses::events::Frames::new(self.responses_head(a)),
            )),
            None => Frames::Messages(Box::new(messages::Frames::new(self.messages_head(a)))),
        }
    }

    /// A non-streamed body, per API.
    fn body(&self, a: &Answer) -> String {
        let out = Collected::generate(&a.shape, a.seed, a.tokens, a.finish);
        match a.api.kind() {
            Some(kind) => render::full(&Full {
                kind,
                id: &a.id,
                created: a.created,
                model_json: &self.model_json,
                out: &out,
                tool: a.shape.tool.as_ref(),
                finish: a.finish,
                fingerprint: &self.fingerprint,
                prompt_tokens: a.plan.prompt_tokens,
                completion_tokens: a.tokens,
                details: self.details(a),
            }),
            None if a.api == Api::Responses => {
                responses::body(&self.responses_head(a), &out, a.tokens, a.finish)
            }
            None => messages::body(&self.messages_head(a), &out, a.tokens, a.finish),
        }
    }

    /// A non-streamed generation: answers once the whole output would have been generated.
    async fn complete(
        &self,
        mut tracker: Tracker,
        a: &Answer,
        timing: Timing,
        fault: Option<Fault>,
    ) -> Result<Response<SimBody>, ApiError> {
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return Err(injected_error(500, ENGINE_ERROR));
        };
        let admitted = Instant::now();
        tracker.admit(permit, a.plan.prompt_tokens, admitted);
        let mut rng = fastrand::Rng::with_seed(render::mix(a.seed, 5));
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
                return Ok(respond(StatusCode::OK, Some(JSON), body));
            }
            Some(Fault::ErrorEvent { after } | Fault::Close { after }) => after.min(a.tokens),
            // The hostile faults are answered before a generation starts.
            _ => a.tokens,
        };
        clock::Sleep::until(token_time(produced.max(1), &mut rng)).await;
        tracker.tokens(produced, first, timing.itl);
        if let Some(Fault::ErrorEvent { .. }) = fault {
            tracker.finish(Reason::Error);
            return Err(injected_error(500, ENGINE_ERROR));
        }
        let body = self.body(a);
        if let Some(Fault::Close { .. }) = fault {
            // Headers and half of the body, then the connection breaks.
            tracker.finish(Reason::Error);
            let mut head = Bytes::from(body);
            head.truncate(head.len() / 2);
            let body = SimBody::Broken {
                head: Some(head),
                yielded: false,
            };
            return Ok(respond(StatusCode::OK, Some(JSON), body));
        }
        tracker.finish(match a.finish {
            Finish::Stop => Reason::Stop,
            Finish::Length => Reason::Length,
        });
        Ok(respond(StatusCode::OK, Some(JSON), SimBody::full(body)))
    }
}

//! The pooling APIs besides embeddings, answered as vLLM 0.32 answers them, with usage:
//! `POST /pooling`, `/classify`, `/score` and `/v1/score`, `/rerank`, `/v1/rerank` and
//! `/v2/rerank`.
//!
//! Shapes followed (vLLM's `vllm/entrypoints/pooling/{pooling,classify,scoring}/protocol.py`
//! and `scoring/serving.py`): `PoolingResponse` (`pool-…`, `data[].object: "pooling"`),
//! `ClassificationResponse` (`classify-…`, `label`, `probs`, `num_classes`), `ScoreResponse`
//! (`score-…`, `data[].object: "score"`), `RerankResponse` (`id`, `model`, `usage` with
//! `prompt_tokens` and `total_tokens`, `results` sorted by `relevance_score`, `top_n` kept,
//! each with `document: {"text", "multi_modal": null}`). `usage` is vLLM's `UsageInfo`
//! (`prompt_tokens`, `total_tokens`, `completion_tokens: 0`, both details `null`) except on
//! rerank. Scores are deterministic in the texts; a pair costs the tokens of both texts
//! plus 3 (a cross-encoder's special tokens).

use std::fmt::Write as _;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::clock;
use super::handlers::Sim;
use super::metrics::Reason;
use super::pydantic::{ApiError, PyError, check_model_type, json_str, parse_object, validation};
use super::render::{self, Details, UsageAt, write_usage};
use super::reply::{JSON, error, read_body, respond};
use super::request::{chat_prompt, check_model, content_text, parse_inputs, tokens_of_text};
use super::stream::{SimBody, later};

/// Which pooling API a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Pooling,
    Classify,
    Score,
    Rerank,
}

/// A validated pooling request.
struct Pooled {
    prompt_tokens: u32,
    /// Inputs (pooling, classify); the texts of each pair (score); the documents (rerank).
    items: Vec<(String, String)>,
    top_n: usize,
}

/// A score in (0, 1), deterministic in the texts, never printed in exponent form.
fn score(a: &str, b: &str) -> f64 {
    let h = render::mix(render::hash(a.as_bytes()) ^ render::hash(b.as_bytes()), 11);
    0.001 + 0.998 * ((h >> 11) as f64 / (1u64 << 53) as f64)
}

fn too_long(tokens: u64, max_model_len: u32) -> ApiError {
    let message = format!(
        "This model's maximum context length is {max_model_len} tokens. However, you requested \
         {tokens} tokens in the input. Please reduce the length of the input. \
         (parameter=input_tokens, value={tokens})"
    );
    ApiError::bad_request(&message, "input_tokens")
}

/// One side of a score or rerank request: a string or a list of them (multimodal
/// entries count their text parts).
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => content_text(other.get("content")).into_owned(),
            })
            .collect(),
        other => vec![content_text(other.get("content")).into_owned()],
    }
}

/// Pairs `a` with `b` as vLLM does: 1:1, 1:N or N:N.
fn pairs(a: Vec<String>, b: Vec<String>) -> Result<Vec<(String, String)>, ApiError> {
    if a.len() == 1 {
        Ok(b.into_iter().map(|b| (a[0].clone(), b)).collect())
    } else if a.len() == b.len() {
        Ok(a.into_iter().zip(b).collect())
    } else {
        let message = "Input lengths must be either 1:1, 1:N or N:N";
        Err(ApiError::bad_request(message, "data_1"))
    }
}

fn parse(pool: Pool, body: &Map<String, Value>, model: &str, len: u32) -> Result<Pooled, ApiError> {
    let mut pooled = Pooled {
        prompt_tokens: 0,
        items: Vec::new(),
        top_n: 0,
    };
    if matches!(pool, Pool::Pooling | Pool::Classify) {
        let (tokens, inputs) = match body.get("messages") {
            Some(Value::Array(m)) if !body.contains_key("input") => {
                let mut errors = Vec::new();
                check_model(check_model_type(body, &mut errors), model)?;
                let tokens = chat_prompt(m, &mut Vec::new());
                if tokens > u64::from(len) {
                    return Err(too_long(tokens, len));
                }
                (tokens as u32, 1)
            }
            _ => parse_inputs(body, model, len)?,
        };
        pooled.prompt_tokens = tokens;
        pooled.items = (0..inputs)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        return Ok(pooled);
    }
    let names: &[(&str, &str)] = match pool {
        Pool::Rerank => &[("query", "documents")],
        _ => &[
            ("text_1", "text_2"),
            ("queries", "documents"),
            ("queries", "items"),
            ("data_1", "data_2"),
        ],
    };
    let found = names
        .iter()
        .find_map(|(a, b)| Some((body.get(*a)?, body.get(*b)?)));
    let mut errors = Vec::new();
    let requested = check_model_type(body, &mut errors);
    let Some((a, b)) = found else {
        let whole = Value::Object(body.clone());
        for side in [names[0].0, names[0].1] {
            if !body.contains_key(side) {
                let loc = format!("body.{side}");
                errors.push(PyError::new("missing", &loc, "Field required", &whole));
            }
        }
        return Err(validation(&errors));
    };
    if !errors.is_empty() {
        return Err(validation(&errors));
    }
    check_model(requested, model)?;
    pooled.items = pairs(texts(a), texts(b))?;
    pooled.top_n = body.get("top_n").and_then(Value::as_u64).unwrap_or(0) as usize;
    let mut total = 0u64;
    for (a, b) in &pooled.items {
        let tokens = tokens_of_text(a.len()) + tokens_of_text(b.len()) + 3;
        if tokens > u64::from(len) {
            return Err(too_long(tokens, len));
        }
        total += tokens;
    }
    pooled.prompt_tokens = u32::try_from(total).unwrap_or(u32::MAX);
    Ok(pooled)
}

/// vLLM's `UsageInfo` of a pooling answer.
fn usage(prompt_tokens: u32) -> String {
    let mut out = String::new();
    write_usage(
        &mut out,
        prompt_tokens,
        0,
        Details::default(),
        UsageAt::Body,
    );
    out
}

fn render(pool: Pool, p: &Pooled, id: u64, created: u64, model_json: &str) -> String {
    if pool == Pool::Rerank {
        return rerank(p, id, model_json);
    }
    let mut data = String::new();
    for (index, (a, b)) in p.items.iter().enumerate() {
        if index > 0 {
            data.push(',');
        }
        let s = score(a, b);
        let _ = match pool {
            Pool::Pooling => {
                let mut rng = fastrand::Rng::with_seed(render::mix(id, index as u64));
                let v: Vec<String> = (0..16)
                    .map(|_| format!("{}", rng.f32() * 2.0 - 1.0))
                    .collect();
                write!(
                    data,
                    r#"{{"index":{index},"object":"pooling","data":[{}]}}"#,
                    v.join(",")
                )
            }
            Pool::Classify => {
                let label = if s > 0.5 { "LABEL_1" } else { "LABEL_0" };
                let probs = format!("{},{s}", 1.0 - s);
                write!(
                    data,
                    r#"{{"index":{index},"label":"{label}","probs":[{probs}],"num_classes":2}}"#
                )
            }
            _ => write!(data, r#"{{"index":{index},"object":"score","score":{s}}}"#),
        };
    }
    let usage = usage(p.prompt_tokens);
    let head = match pool {
        Pool::Pooling => "pool",
        Pool::Classify => "classify",
        _ => "score",
    };
    format!(
        r#"{{"id":"{head}-{id:016x}","object":"list","created":{created},"model":{model_json},"data":[{data}],{usage}}}"#
    )
}

/// The rerank answer: documents by relevance, the best `top_n` (all when 0).
fn rerank(p: &Pooled, id: u64, model_json: &str) -> String {
    let mut results: Vec<(usize, &str, f64)> = p
        .items
        .iter()
        .enumerate()
        .map(|(i, (q, d))| (i, d.as_str(), score(q, d)))
        .collect();
    results.sort_by(|x, y| y.2.total_cmp(&x.2));
    if p.top_n > 0 {
        results.truncate(p.top_n);
    }
    let results: Vec<String> = results
        .iter()
        .map(|(index, doc, s)| {
            format!(
                r#"{{"index":{index},"document":{{"text":{},"multi_modal":null}},"relevance_score":{s}}}"#,
                json_str(doc)
            )
        })
        .collect();
    let n = p.prompt_tokens;
    format!(
        r#"{{"id":"score-{id:016x}","model":{model_json},"usage":{{"prompt_tokens":{n},"total_tokens":{n}}},"results":[{}]}}"#,
        results.join(",")
    )
}

impl Sim {
    /// A pooling request: answered after the TTFT, counted as a finished request of its
    /// prompt tokens.
    pub(crate) async fn pool(
        self: Arc<Self>,
        pool: Pool,
        req: Request<Incoming>,
    ) -> Response<SimBody> {
        let (parts, body) = req.into_parts();
        let (timing, _) = match self.overrides(&parts.headers) {
            Ok(o) => o,
            Err(e) => return error(e),
        };
        let (model, len) = (self.cfg.model.as_str(), self.cfg.max_model_len);
        let parsed = match read_body(body).await {
            Ok(raw) => parse_object(&raw).and_then(|b| parse(pool, &b, model, len)),
            Err(e) => Err(e),
        };
        let pooled = match parsed {
            Ok(p) => p,
            Err(e) => return error(e),
        };
        let seed = match parts.headers.get("x-request-id") {
            Some(id) => render::hash(id.as_bytes()),
            None => fastrand::u64(..),
        };
        clock::Sleep::until(later(Instant::now(), timing.ttft)).await;
        let m = &self.metrics;
        m.prompt_tokens.inc_by(u64::from(pooled.prompt_tokens));
        m.finished(Reason::Stop);
        let body = render(
            pool,
            &pooled,
            render::mix(seed, 1),
            self.created(),
            &self.model_json,
        );
        respond(StatusCode::OK, Some(JSON), SimBody::full(body))
    }
}

//! `weir sim`: a fast fake vLLM 0.32 OpenAI-compatible server for tests, demos and benchmarks.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses` (OpenAI
//! Responses API), `POST /v1/messages` (Anthropic Messages API), `POST /v1/embeddings`, the
//! pooling APIs `POST /pooling`, `/classify`, `/score`, `/v1/score`, `/rerank`, `/v1/rerank`,
//! `/v2/rerank`, and `GET /v1/models`, `GET /health`, `GET /metrics`. Responses copy vLLM 0.32's
//! framing, JSON key order, null fields, content types and error bodies (Anthropic-shaped on
//! `/v1/messages`).
//!
//! Behaviour worth knowing:
//! - Only `n = 1` is supported; `n > 1` is answered with a 400 `BadRequestError` (param `n`).
//! - Without `max_tokens`/`max_completion_tokens`, chat generates at most
//!   `min(64, max_model_len - prompt_tokens)` tokens and completions at most
//!   `min(16, max_model_len - prompt_tokens)` (vLLM's completions default).
//!   `prompt_tokens + max_tokens > max_model_len` caps the output, as vLLM does.
//! - Output length: `ignore_eos: true` gives exactly `max_tokens` tokens (`"length"`); otherwise a
//!   length in `1..=max_tokens` drawn from the request seed, ending with an EOS token (empty text,
//!   `"stop"`) when shorter than `max_tokens`.
//! - Responses and Messages take `max_output_tokens` / `max_tokens` as chat takes `max_tokens`
//!   (Responses caps it to the context instead of refusing it, as vLLM does; without it at
//!   most 64 tokens) and honour `ignore_eos` too (not a field of those APIs: a simulator
//!   extension, so that a benchmark gets exact lengths). Their streams end with
//!   `response.completed` / `message_stop`, never `[DONE]`.
//! - Prefix cache: prompts are cut into blocks of 16 tokens (4 bytes of message text a
//!   token) and a request reuses the leading blocks an earlier one left (at most
//!   `--prefix-cache-blocks` block hashes are kept, least recently used dropped first). The
//!   cached tokens are `input_tokens_details.cached_tokens` on Responses,
//!   `cache_read_input_tokens` on Messages, and, with `--enable-prompt-tokens-details` (as
//!   vLLM's flag), `prompt_tokens_details.cached_tokens` on chat and completions.
//! - `x-sim-reasoning: N`: the first N output tokens are reasoning (chat `delta.reasoning`,
//!   vLLM 0.32's field; Responses `response.reasoning_text.delta`; Messages `thinking_delta`),
//!   counted in `completion_tokens_details.reasoning_tokens` (chat) and
//!   `output_tokens_details.reasoning_tokens` (Responses). `x-sim-tool-call: 1`: the rest of
//!   the output is a call of the request's first tool (`sim_tool` without one), its
//!   arguments `{"input": "<words>"}` streamed a token at a time (chat `tool_calls` deltas,
//!   finish reason `tool_calls`; Responses `response.function_call_arguments.delta`; Messages
//!   `input_json_delta`, stop reason `tool_use`). Completions ignore both.
//! - The seed is a hash of the `x-request-id` header (random without one): it fixes the response
//!   id, the text and the length, so equal requests with equal ids get identical bytes when
//!   `fixed_created` is set.
//! - The `traceparent` a request came with is echoed in the `x-sim-traceparent` response header.
//! - Per-request overrides: `x-sim-ttft-ms`, `x-sim-itl-ms` (milliseconds, fractions allowed) and
//!   `x-sim-fault` (see [`Fault`]); an invalid value is answered with a 400.
//! - Only a single prompt per completions request is supported (a batch is a 400).
//! - Streams get their headers at once; the chat role chunk follows admission (at once unless
//!   `max_num_seqs` generations are running), then TTFT, then one chunk per token every ITL.
//!   The TTFT is kept to the microsecond (give or take the kernel's timer slack), the ITL to
//!   tokio's millisecond ticks (see `clock`).
//! - Injected failures (`http=`, `--error-rate`, `error-event`, `close`) count as
//!   `finished_reason="error"`; a client leaving mid-generation counts as `"abort"`.
//! - The hostile faults (`endless-event`, `finish-flood`, `token-flood`, `junk-flood`,
//!   `huge-json=MiB`) take no generation slot and make no token metrics: each counts as running
//!   while it is sent, then as `"abort"` (the client left) or `"length"` (a huge body sent
//!   whole). A flood sends one shared buffer over and over, allocating nothing per event.
//!   They are simulated on chat and completions only (a 400 elsewhere).
//! - Pooling requests (embeddings aside, whose metrics are as before) count their prompt
//!   tokens and a `finished_reason="stop"` success; generations of every API count as chat's.

mod cache;
mod clock;
mod flood;
mod frames;
mod generate;
mod handlers;
mod messages;
mod metrics;
mod output;
mod pooling;
mod pydantic;
mod render;
mod reply;
mod request;
mod responses;
mod stream;
mod usage;

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Configuration of the simulator; also the command-line arguments of `weir sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Served model name (the only name requests may use).
    #[arg(long, default_value = "tiny-llama")]
    pub model: String,
    /// Context length: prompt plus output tokens.
    #[arg(long, default_value_t = 512)]
    pub max_model_len: u32,
    /// Time to first token, counted from admission (e.g. "20ms").
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub ttft: Duration,
    /// Uniform random extra time added to each TTFT (0 to this).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub ttft_jitter: Duration,
    /// Inter-token latency: the delay between two output tokens.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub itl: Duration,
    /// Uniform random extra time added to each inter-token delay (0 to this).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub itl_jitter: Duration,
    /// Concurrent generations; more requests wait in a queue (vllm:num_requests_waiting).
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Fraction (0 to 1) of generation requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fault applied to every generation request: http=CODE, error-event=N, close=N, stall=N,
    /// endless-event, finish-flood, token-flood, junk-flood or huge-json=MiB (see `Fault`).
    #[arg(long)]
    pub fault: Option<Fault>,
    /// If set, every "created" field carries this value (for byte comparisons).
    #[arg(long)]
    pub fixed_created: Option<u64>,
    /// As `vllm serve --api-key`: requests to `/v1/*` need `Authorization: Bearer <key>`, or
    /// get vLLM's 401 `{"error":"Unauthorized"}`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// As `vllm serve --enable-prompt-tokens-details`: chat and completions usage carries
    /// `prompt_tokens_details` (`cached_tokens` from the prefix cache).
    #[arg(long)]
    pub enable_prompt_tokens_details: bool,
    /// Blocks of 16 prompt tokens the prefix cache remembers (0: no prefix caching).
    #[arg(long, default_value_t = 16_384)]
    pub prefix_cache_blocks: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            model: "tiny-llama".to_owned(),
            max_model_len: 512,
            ttft: Duration::from_millis(20),
            ttft_jitter: Duration::ZERO,
            itl: Duration::from_millis(10),
            itl_jitter: Duration::ZERO,
            max_num_seqs: 256,
            error_rate: 0.0,
            fault: None,
            fixed_created: None,
            api_key: None,
            enable_prompt_tokens_details: false,
            prefix_cache_blocks: 16_384,
        }
    }
}

impl SimConfig {
    /// The defaults with no delays at all: for tests that only care about bytes.
    pub fn fast() -> Self {
        Self {
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            ..Self::default()
        }
    }
}

/// A fault injected into a generation request (`--fault` or the `x-sim-fault` header).
///
/// Syntax: `http=CODE` (answer with that status, 400..=599, and an OpenAI error body),
/// `error-event=N` (after N content tokens send vLLM's mid-stream error event, then `[DONE]`),
/// `close=N` (after N content tokens abort the connection without ending the body),
/// `stall=N` (after N content tokens send nothing more until the client goes away).
/// N larger than the output length means "after the last token, before the usage chunk and
/// `[DONE]`". Non-streamed requests get a 500 for `error-event`, a broken body for `close` and
/// no answer for `stall`.
///
/// Hostile backends, with no generation behind them: a streamed request gets its headers and
/// (chat) the role chunk, then, as fast as the client takes them and until it goes away,
/// - `endless-event`: `data: {...}` lines for ever, never the blank line that ends an event;
/// - `finish-flood`: chunks that each carry `"finish_reason":"stop"`, never `[DONE]`;
/// - `token-flood`: chunks of one character of content each;
/// - `junk-flood`: SSE comment lines (`: x`), never a token.
///
/// A non-streamed request with one of those gets a 200 JSON body whose content string never
/// ends. `huge-json=MiB` (0..=4096) answers a non-streamed request with a 200 JSON body whose
/// content is that many MiB (262,144 tokens per MiB), ending with a valid usage, sent with its
/// `content-length`; a streamed request gets that content in one event, then the usage chunk
/// (when asked for) and `[DONE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status.
    Http(u16),
    /// Send an error event after `after` content tokens.
    ErrorEvent {
        /// Content tokens sent first.
        after: u32,
    },
    /// Abort the connection after `after` content tokens.
    Close {
        /// Content tokens sent first.
        after: u32,
    },
    /// Stop sending after `after` content tokens.
    Stall {
        /// Content tokens sent first.
        after: u32,
    },
    /// `data:` lines for ever, never ending the event.
    EndlessEvent,
    /// Chunks with a finish reason, for ever.
    FinishFlood,
    /// One-character content chunks, for ever.
    TokenFlood,
    /// SSE comment lines, for ever.
    JunkFlood,
    /// A body (or event) with this many MiB of content.
    HugeJson {
        /// Content size in MiB.
        mib: u32,
    },
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "invalid fault {s:?}: expected http=CODE, error-event=N, close=N, stall=N, \
                 endless-event, finish-flood, token-flood, junk-flood or huge-json=MiB"
            )
        };
        match s.trim() {
            "endless-event" => return Ok(Fault::EndlessEvent),
            "finish-flood" => return Ok(Fault::FinishFlood),
            "token-flood" => return Ok(Fault::TokenFlood),
            "junk-flood" => return Ok(Fault::JunkFlood),
            _ => {}
        }
        let (kind, value) = s.trim().split_once('=').ok_or_else(usage)?;
        let value = value.trim();
        match kind.trim() {
            "http" => match value.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => Ok(Fault::Http(code)),
                _ => Err(format!(
                    "invalid fault {s:?}: the status must be in 400..=599"
                )),
            },
            "huge-json" => match value.parse::<u32>() {
                Ok(mib) if mib <= flood::MAX_HUGE_MIB => Ok(Fault::HugeJson { mib }),
                _ => Err(format!(
                    "invalid fault {s:?}: the size must be in 0..={} MiB",
                    flood::MAX_HUGE_MIB
                )),
            },
            kind => {
                let after = value.parse::<u32>().map_err(|_| usage())?;
                match kind {
                    "error-event" => Ok(Fault::ErrorEvent { after }),
                    "close" => Ok(Fault::Close { after }),
                    "stall" => Ok(Fault::Stall { after }),
                    _ => Err(usage()),
                }
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Http(code) => write!(f, "http={code}"),
            Fault::ErrorEvent { after } => write!(f, "error-event={after}"),
            Fault::Close { after } => write!(f, "close={after}"),
            Fault::Stall { after } => write!(f, "stall={after}"),
            Fault::EndlessEvent => f.write_str("endless-event"),
            Fault::FinishFlood => f.write_str("finish-flood"),
            Fault::TokenFlood => f.write_str("token-flood"),
            Fault::JunkFlood => f.write_str("junk-flood"),
            Fault::HugeJson { mib } => write!(f, "huge-json={mib}"),
        }
    }
}

/// Serve until `shutdown` resolves (graceful: in-flight streams may finish, stalled ones are cut).
/// Speaks HTTP/1.1 and h2c on the same listener.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sim = Arc::new(handlers::Sim::new(config).map_err(std::io::Error::other)?);
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::debug!(%err, "sim: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Best effort: a failure only costs latency.
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        let service = hyper::service::service_fn(move |req: http::Request<_>| {
            let sim = sim.clone();
            // Echoed so tests can see the trace context the backend was given.
            let traceparent = req.headers().get("traceparent").cloned();
            async move {
                let mut res = sim.handle(req).await;
                if let Some(tp) = traceparent {
                    res.headers_mut().insert("x-sim-traceparent", tp);
                }
                Ok::<_, Infallible>(res)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::trace!(%err, "sim: connection ended with an error");
            }
        });
    }
    drop(listener);
    sim.begin_shutdown();
    graceful.shutdown().await;
    Ok(())
}

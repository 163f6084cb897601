//! Byte-level rendering of vLLM's response bodies and SSE chunks, in vLLM's key order.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use super::output::{Collected, Piece, Tool};
use super::request::Kind;
pub(crate) use super::usage::{Details, UsageAt, write_usage};

/// Output vocabulary: one token per entry, none of which needs JSON escaping.
const VOCAB: [&str; 64] = [
    " the", " weir", "ing", " river", " flow", " water", " stone", " a", " of", " and", "ed",
    " to", " in", " is", ",", ".", " that", " it", " with", " as", " for", " was", " on", "er",
    " be", " at", " by", " this", " from", " or", "s", " an", " which", " but", " not", " are",
    " mill", " dam", " fish", " pool", " bank", " current", " over", " under", " through",
    " salmon", " gate", " level", " spill", " old", " new", " high", " low", "ly", " we", " they",
    " when", " where", " its", " all", " more", " some", " crest", " sluice",
];

/// The `data: [DONE]` event that ends every stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// vLLM's mid-stream error event (Python `json.dumps` spacing).
pub(crate) const ERROR_EVENT: &[u8] =
    b"data: {\"error\": {\"message\": \"EngineCore encountered an \
issue. See stack trace (above) for the root cause.\", \"type\": \"InternalServerError\", \
\"param\": null, \"code\": 500}}\n\n";

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// SplitMix64: spreads a seed into independent-looking values.
pub(crate) fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of some bytes, then mixed: the seed of a request with an `x-request-id`.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(h, 0)
}

/// Token `index` (0-based) of a generation: vocabulary words, or EOS (empty) as the last
/// token of a generation that stopped.
pub(crate) fn token(
    rng: &mut fastrand::Rng,
    index: u32,
    tokens: u32,
    finish: Finish,
) -> &'static str {
    let word = VOCAB[rng.usize(..VOCAB.len())];
    if finish == Finish::Stop && index + 1 == tokens {
        ""
    } else {
        word
    }
}

/// Everything that is the same in every chunk of one streamed response.
pub(crate) struct Chunks {
    kind: Kind,
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":[`
    prefix: String,
    prompt_tokens: u32,
    continuous_usage: bool,
    details: Details,
    tool: Option<Tool>,
}

impl Chunks {
    pub fn new(
        kind: Kind,
        id: &str,
        created: u64,
        model_json: &str,
        prompt_tokens: u32,
        continuous_usage: bool,
    ) -> Self {
        let object = match kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let prefix = format!(
            r#"data: {{"id":"{id}","object":"{object}","created":{created},"model":{model_json},"choices":["#
        );
        Self {
            kind,
            prefix,
            prompt_tokens,
            continuous_usage,
            details: Details::default(),
            tool: None,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Usage details and the function call (chat only) of this stream.
    pub fn with(mut self, details: Details, tool: Option<Tool>) -> Self {
        self.details = details;
        self.tool = tool.filter(|_| self.kind == Kind::Chat);
        self
    }

    fn start(&self, extra: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(self.prefix.len() + 200 + extra);
        buf.put_slice(self.prefix.as_bytes());
        buf
    }

    fn usage(&self, buf: &mut BytesMut, completion_tokens: u32, at: UsageAt) {
        write_usage(
            &mut Writer(buf),
            self.prompt_tokens,
            completion_tokens,
            self.details,
            at,
        );
    }

    /// The first chat chunk: the assistant role with empty content.
    pub fn role(&self) -> Bytes {
        let mut buf = self.start(0);
        buf.put_slice(
            br#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#,
        );
        if self.continuous_usage {
            buf.put_u8(b',');
            self.usage(&mut buf, 0, UsageAt::Continuous);
        }
        buf.put_slice(b",\"prompt_token_ids\":null,\"prompt_text\":null}\n\n");
        buf.freeze()
    }

    /// A chat delta: content, reasoning or a piece of the function call's arguments.
    fn delta(&self, buf: &mut BytesMut, piece: Piece) {
        match (piece, &self.tool) {
            (Piece::Reasoning(w), _) => {
                buf.put_slice(br#"{"reasoning":""#);
                buf.put_slice(w.as_bytes());
                buf.put_slice(br#""}"#);
            }
            (Piece::Args { first: true, .. }, Some(tool)) => {
                let _ = write!(
                    Writer(buf),
                    r#"{{"tool_calls":[{{"id":"chatcmpl-tool-{}","type":"function","index":0,"function":{{"name":{},"arguments":""#,
                    tool.id,
                    tool.name_json
                );
                buf.put_slice(piece.json().as_bytes());
                buf.put_slice(br#""}}]}"#);
            }
            (Piece::Args { .. }, _) => {
                buf.put_slice(br#"{"tool_calls":[{"index":0,"function":{"arguments":""#);
                buf.put_slice(piece.json().as_bytes());
                buf.put_slice(br#""}}]}"#);
            }
            (Piece::Text(w), _) => {
                buf.put_slice(br#"{"content":""#);
                buf.put_slice(w.as_bytes());
                buf.put_slice(br#""}"#);
            }
        }
    }

    fn finish_reason(&self, finish: Finish) -> &'static str {
        if self.tool.is_some() {
            "tool_calls"
        } else {
            finish.as_str()
        }
    }

    /// A content chunk; `finish` on the last token; `fingerprint` when no usage chunk follows.
    pub fn token(
        &self,
        piece: Piece,
        completion_tokens: u32,
        finish: Option<Finish>,
        fingerprint: Option<&str>,
    ) -> Bytes {
        let mut buf = self.start(32);
        let finish_field = |buf: &mut BytesMut| match finish {
            None => buf.put_slice(br#""finish_reason":null"#),
            Some(f) => {
                let _ = write!(
                    Writer(buf),
                    r#""finish_reason":"{}""#,
                    self.finish_reason(f)
                );
            }
        };
        match self.kind {
            Kind::Chat => {
                buf.put_slice(br#"{"index":0,"delta":"#);
                self.delta(&mut buf, piece);
                buf.put_slice(br#","logprobs":null,"#);
                finish_field(&mut buf);
                if finish.is_some() {
                    buf.put_slice(br#","stop_reason":null"#);
                }
                buf.put_slice(br#","token_ids":null}]"#);
            }
            Kind::Completion => {
                buf.put_slice(br#"{"index":0,"text":""#);
                buf.put_slice(piece.json().as_bytes());
                buf.put_slice(br#"","logprobs":null,"#);
                finish_field(&mut buf);
                buf.put_slice(br#","stop_reason":null,"prompt_token_ids":null,"token_ids":null}]"#);
            }
        }
        if self.continuous_usage {
            buf.put_u8(b',');
            self.usage(&mut buf, completion_tokens, UsageAt::Continuous);
        }
        if let Some(fp) = fingerprint {
            let _ = write!(Writer(&mut buf), r#","system_fingerprint":"{fp}""#);
        }
        buf.put_slice(b"}\n\n");
        buf.freeze()
    }

    /// The final usage chunk (`stream_options.include_usage`), which carries the fingerprint.
    pub fn usage_chunk(&self, completion_tokens: u32, fingerprint: &str) -> Bytes {
        let mut buf = self.start(0);
        buf.put_slice(b"],");
        self.usage(&mut buf, completion_tokens, UsageAt::Final);
        let _ = write!(
            Writer(&mut buf),
            r#","system_fingerprint":"{fingerprint}"}}"#
        );
        buf.put_slice(b"\n\n");
        buf.freeze()
    }
}

/// `fmt::Write` into a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// Fields of a non-streamed response.
pub(crate) struct Full<'a> {
    pub kind: Kind,
    pub id: &'a str,
    pub created: u64,
    pub model_json: &'a str,
    pub out: &'a Collected,
    pub tool: Option<&'a Tool>,
    pub finish: Finish,
    pub fingerprint: &'a str,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub details: Details,
}

/// A JSON string literal of `s` (which needs no escaping), or `null` when empty.
fn string_or_null(s: &str) -> String {
    if s.is_empty() {
        "null".to_owned()
    } else {
        format!("\"{s}\"")
    }
}

/// A non-streamed chat or completions body, as vLLM 0.32 shapes it.
pub(crate) fn full(f: &Full<'_>) -> String {
    let mut usage = String::with_capacity(200);
    write_usage(
        &mut usage,
        f.prompt_tokens,
        f.completion_tokens,
        f.details,
        UsageAt::Body,
    );
    let (id, created, model, text, fp) = (
        f.id,
        f.created,
        f.model_json,
        f.out.text.as_str(),
        f.fingerprint,
    );
    match f.kind {
        Kind::Chat => {
            let tool = f.tool.filter(|_| f.out.called);
            let (content, calls, finish) = match tool {
                // A reasoning-only answer has no content; a plain one always has some.
                None if !f.out.reasoning.is_empty() => {
                    (string_or_null(text), String::new(), f.finish.as_str())
                }
                None => (format!("\"{text}\""), String::new(), f.finish.as_str()),
                Some(t) => (
                    string_or_null(text),
                    format!(
                        r#","tool_calls":[{{"id":"chatcmpl-tool-{}","type":"function","function":{{"name":{},"arguments":"{}"}}}}]"#,
                        t.id, t.name_json, f.out.args
                    ),
                    "tool_calls",
                ),
            };
            let reasoning = string_or_null(&f.out.reasoning);
            format!(
                r#"{{"id":"{id}","object":"chat.completion","created":{created},"model":{model},"choices":[{{"index":0,"message":{{"role":"assistant","content":{content},"refusal":null,"annotations":null,"audio":null,"function_call":null{calls},"reasoning":{reasoning}}},"logprobs":null,"finish_reason":"{finish}","stop_reason":null,"token_ids":null,"routed_experts":null}}],"service_tier":null,"system_fingerprint":"{fp}",{usage},"prompt_logprobs":null,"prompt_token_ids":null,"prompt_text":null,"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}}"#
            )
        }
        Kind::Completion => {
            let finish = f.finish.as_str();
            format!(
                r#"{{"id":"{id}","object":"text_completion","created":{created},"model":{model},"choices":[{{"index":0,"text":"{text}","logprobs":null,"finish_reason":"{finish}","stop_reason":null,"token_ids":null,"prompt_logprobs":null,"prompt_token_ids":null,"routed_experts":null}}],"service_tier":null,"system_fingerprint":"{fp}",{usage},"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}}"#
            )
        }
    }
}

/// The `/v1/models` body.
pub(crate) fn models(model_json: &str, max_model_len: u32, created: u64, perm_id: u64) -> String {
    format!(
        r#"{{"object":"list","data":[{{"id":{model_json},"object":"model","created":{created},"owned_by":"vllm","root":{model_json},"parent":null,"max_model_len":{max_model_len},"permission":[{{"id":"modelperm-{perm_id:016x}","object":"model_permission","created":{created},"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}}]}}]}}"#
    )
}

/// An embeddings body: `inputs` deterministic unit vectors of 16 dimensions.
pub(crate) fn embeddings(
    id: u64,
    created: u64,
    model_json: &str,
    inputs: usize,
    prompt_tokens: u32,
) -> String {
    let mut out = format!(
        r#"{{"id":"embd-{id:016x}","object":"list","created":{created},"model":{model_json},"data":["#
    );
    for index in 0..inputs {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"index":{index},"object":"embedding","embedding":["#
        );
        let mut rng = fastrand::Rng::with_seed(mix(id, index as u64));
        let v: Vec<f32> = (0..16).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let norm = v
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::EPSILON);
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}", x / norm);
        }
        out.push_str("]}");
    }
    let _ = write!(
        out,
        r#"],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens},"completion_tokens":0,"prompt_tokens_details":null}}}}"#
    );
    out
}

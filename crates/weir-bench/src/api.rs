//! The APIs `weir bench` can load (`--api`): each one's path, request body and headers.

use serde::Serialize;

use super::BenchArgs;

/// Which API the load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /v1/chat/completions`.
    #[default]
    Chat,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses` (OpenAI Responses API).
    Responses,
    /// `POST /v1/messages` (Anthropic Messages API).
    Messages,
    /// `POST /v1/embeddings` (never streamed: no TTFT).
    Embeddings,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
            Api::Embeddings => "/v1/embeddings",
        }
    }

    /// Whether requests of this API are streamed (unless `--no-stream`).
    pub fn streams(self) -> bool {
        self != Api::Embeddings
    }

    /// Headers the API needs, unless `--header` gives them.
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Api::Messages => &[("anthropic-version", "2023-06-01")],
            _ => &[],
        }
    }
}

/// A prompt of about `tokens` tokens.
fn prompt(tokens: usize) -> String {
    let words = [
        "weir", "river", "flow", "stone", "water", "gate", "level", "bank",
    ];
    (0..tokens)
        .map(|i| words[i % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of every request of a run. `ignore_eos` goes to every generation API (vLLM
/// honours it on chat and completions and ignores it elsewhere; `weir sim` honours it on all).
pub(crate) fn request_body(args: &BenchArgs, api: Api, model: &str) -> serde_json::Value {
    let prompt = prompt(args.prompt_tokens);
    let stream = !args.no_stream && api.streams();
    let max = args.max_tokens;
    let messages = serde_json::json!([{"role": "user", "content": prompt}]);
    let mut body = match api {
        Api::Embeddings => return serde_json::json!({"model": model, "input": prompt}),
        Api::Chat => serde_json::json!({"model": model, "messages": messages, "max_tokens": max}),
        Api::Completions => {
            serde_json::json!({"model": model, "prompt": prompt, "max_tokens": max})
        }
        Api::Responses => {
            serde_json::json!({"model": model, "input": prompt, "max_output_tokens": max})
        }
        Api::Messages => {
            serde_json::json!({"model": model, "messages": messages, "max_tokens": max})
        }
    };
    body["ignore_eos"] = true.into();
    body["stream"] = stream.into();
    if stream && matches!(api, Api::Chat | Api::Completions) {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_per_api() {
        let args = BenchArgs {
            prompt_tokens: 3,
            max_tokens: 7,
            ..BenchArgs::default()
        };
        let b = request_body(&args, Api::Responses, "tiny-llama");
        assert_eq!(
            (&b["input"], &b["max_output_tokens"], &b["stream"]),
            (&"weir river flow".into(), &7.into(), &true.into())
        );
        assert!(b.get("stream_options").is_none());
        let b = request_body(&args, Api::Messages, "tiny-llama");
        assert_eq!(b["messages"][0]["content"], "weir river flow");
        assert_eq!((&b["max_tokens"], &b["stream"]), (&7.into(), &true.into()));
        let b = request_body(&args, Api::Embeddings, "tiny-llama");
        assert_eq!(b.as_object().unwrap().len(), 2);
        assert_eq!(b["input"], "weir river flow");
        let b = request_body(&args, Api::Chat, "tiny-llama");
        assert_eq!(b["stream_options"]["include_usage"], true);
        let whole = BenchArgs {
            no_stream: true,
            ..args
        };
        let b = request_body(&whole, Api::Completions, "tiny-llama");
        assert_eq!(
            (&b["stream"], b.get("stream_options")),
            (&false.into(), None)
        );
        assert_eq!(Api::Messages.headers()[0].0, "anthropic-version");
    }
}

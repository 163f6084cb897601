//! What an event (or a whole body) tells the measurement, for every API: read by
//! `weir_sse`'s classifier, the same the gateway uses, so the two measure alike.

use super::Api;

/// What one event says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Carries output (text, reasoning or tool-call arguments): a token for TTFT and ITL.
    pub content: bool,
    /// The stream's last event.
    pub end: bool,
    pub error: bool,
    /// Prompt tokens, when reported.
    pub input: Option<u64>,
    /// Output tokens, when reported.
    pub output: Option<u64>,
}

impl Api {
    fn sse(self) -> weir_sse::Api {
        match self {
            Api::Completions => weir_sse::Api::Completions,
            Api::Responses => weir_sse::Api::Responses,
            Api::Messages => weir_sse::Api::Messages,
            Api::Chat | Api::Embeddings => weir_sse::Api::Chat,
        }
    }
}

fn info(i: &weir_sse::EventInfo<'_>) -> Info {
    Info {
        content: i.content,
        end: i.end || i.done,
        error: i.error || i.invalid,
        input: i.usage.filter(|u| u.has_input()).map(|u| u.prompt_tokens),
        output: i
            .usage
            .filter(|u| u.has_output())
            .map(|u| u.completion_tokens),
    }
}

/// One streamed event of `api`, named `name` (its `event:` line, if any).
pub fn event(api: Api, name: Option<&[u8]>, data: &[u8]) -> Info {
    info(&weir_sse::classify_event(api.sse(), name, data))
}

/// A whole non-streamed body of `api`.
pub fn body(api: Api, body: &[u8]) -> Info {
    let i = weir_sse::classify_body(api.sse(), body);
    Info {
        error: i.error || i.invalid,
        ..info(&i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_reads_as_the_gateway_reads_it() {
        let delta = br#"{"delta":"info","type":"response.output_text.delta"}"#;
        assert!(event(Api::Responses, None, delta).content);
        let done = br#"{"response":{"status":"incomplete","usage":{"input_tokens":19,"input_tokens_details":{"cached_tokens":16},"output_tokens":16}},"type":"response.completed"}"#;
        let i = event(Api::Responses, None, done);
        assert_eq!((i.end, i.input, i.output), (true, Some(19), Some(16)));
        let start = br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":14,"output_tokens":0}}}"#;
        let i = event(Api::Messages, None, start);
        assert_eq!((i.input, i.output), (Some(14), None));
        assert!(event(Api::Messages, None, br#"{"type":"message_stop"}"#).end);
        let embed = br#"{"object":"list","data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        assert_eq!(body(Api::Embeddings, embed).input, Some(9));
        let err = br#"{"type":"error","error":{"type":"NotFoundError","message":"x"}}"#;
        assert!(body(Api::Messages, err).error);
    }
}

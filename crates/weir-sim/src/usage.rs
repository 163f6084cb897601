//! vLLM's `UsageInfo` on chat and completions: the counts, then `prompt_tokens_details`
//! (`cached_tokens`, `created_cache_tokens`: `--enable-prompt-tokens-details`) and
//! `completion_tokens_details` (`reasoning_tokens`), each where vLLM 0.32 shows it.

/// What a usage object reports beyond the counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Details {
    /// `prompt_tokens_details.cached_tokens`, when the simulator runs with
    /// `--enable-prompt-tokens-details`.
    pub cached: Option<u32>,
    /// Reasoning tokens of the whole generation; 0 leaves `completion_tokens_details` out
    /// (or `null`).
    pub reasoning: u32,
}

/// Where a usage object is written: each place shows the details its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UsageAt {
    /// The last chunk of a stream (`include_usage`): details only when there are some.
    Final,
    /// Every chunk (`continuous_usage_stats`): `completion_tokens_details` always there.
    Continuous,
    /// A non-streamed body: both details always there, `null` when empty.
    Body,
}

/// Writes `"usage":{...}` in vLLM's key order.
pub(crate) fn write_usage(
    out: &mut dyn std::fmt::Write,
    prompt: u32,
    completion: u32,
    details: Details,
    at: UsageAt,
) {
    let total = u64::from(prompt) + u64::from(completion);
    let _ = write!(
        out,
        r#""usage":{{"prompt_tokens":{prompt},"total_tokens":{total},"completion_tokens":{completion}"#
    );
    match (details.cached, at) {
        (Some(cached), _) => {
            let _ = write!(
                out,
                r#","prompt_tokens_details":{{"cached_tokens":{cached},"created_cache_tokens":0}}"#
            );
        }
        (None, UsageAt::Body) => {
            let _ = out.write_str(r#","prompt_tokens_details":null"#);
        }
        (None, _) => {}
    }
    let reasoning = details.reasoning.min(completion);
    match (details.reasoning, at) {
        (0, UsageAt::Final) => {}
        (0, _) => {
            let _ = out.write_str(r#","completion_tokens_details":null"#);
        }
        (_, _) => {
            let _ = write!(
                out,
                r#","completion_tokens_details":{{"reasoning_tokens":{reasoning}}}"#
            );
        }
    }
    let _ = out.write_char('}');
}

//! Per-event cost of the parser and the classifier on vLLM's chat captures, for counting
//! instructions under callgrind: run it with two iteration counts and divide the difference
//! by the events it adds (startup and file reading cancel out).
//!
//!     cargo build --release -p weir-sse --example event_cost
//!     valgrind --tool=callgrind target/release/examples/event_cost classify 1
//!     valgrind --tool=callgrind target/release/examples/event_cost classify 101
//!
//! Modes: `classify` (the events' data, already split), `event` (the same through
//! `classify_event(Api::Chat, ..)`), `parse` (the parser alone, the whole capture in one
//! chunk) and `both` (parser and classifier, as the gateway runs them); `responses` and
//! `messages` run parser and classifier on those APIs' captures instead; `body` reads the
//! non-streamed chat capture (`classify_body`) once per iteration; `prompt` checks and skips
//! a chat request with a 16 KiB prompt, as the gateway's request inspection does.

use std::hint::black_box;

use weir_sse::{Api, SseParser, classify, classify_body, classify_event};

const CAPTURES: [&str; 5] = [
    "chat_stream_usage.sse",
    "chat_stream_continuous_usage.sse",
    "chat_stream_no_usage.sse",
    "chat_stream_usage_prompt_details.sse",
    "completions_stream.sse",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "both".into());
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vllm-0.32.0/"
    );
    let (api, captures) = match mode.as_str() {
        "responses" => (Api::Responses, &["responses_stream.sse"][..]),
        "messages" => (Api::Messages, &["messages_stream.sse"][..]),
        _ => (Api::Chat, &CAPTURES[..]),
    };
    let streams: Vec<Vec<u8>> = captures
        .iter()
        .map(|f| std::fs::read(format!("{dir}{f}")).expect("capture"))
        .collect();
    let mut events: Vec<Vec<u8>> = Vec::new();
    for s in &streams {
        SseParser::default().feed(s, |e| events.push(e.data.to_vec()));
    }
    let body = std::fs::read(format!("{dir}chat_nonstream.json")).expect("capture");
    let prompt = request_body(PROMPT_BYTES);
    let mut seen = 0usize;
    for _ in 0..iterations {
        match mode.as_str() {
            "classify" => {
                for e in &events {
                    let info = classify(black_box(e));
                    seen += usize::from(black_box(&info).content);
                }
            }
            "event" => {
                for e in &events {
                    let info = classify_event(Api::Chat, None, black_box(e));
                    seen += usize::from(black_box(&info).content);
                }
            }
            "body" => {
                let info = classify_body(Api::Chat, black_box(&body));
                seen += usize::from(black_box(&info).content);
            }
            "prompt" => {
                let text = simdutf8::basic::from_utf8(black_box(&prompt)).expect("UTF-8");
                let mut s = weir_sse::scan::Scan::new(text);
                seen += usize::from(s.skip().is_some());
            }
            "responses" | "messages" => {
                for s in &streams {
                    SseParser::default().feed(black_box(s), |e| {
                        let info = classify_event(api, e.name, e.data);
                        seen += usize::from(black_box(&info).content);
                    });
                }
            }
            "parse" => {
                for s in &streams {
                    SseParser::default().feed(black_box(s), |e| {
                        seen += black_box(e.data).len();
                    });
                }
            }
            _ => {
                for s in &streams {
                    SseParser::default().feed(black_box(s), |e| {
                        let info = classify(e.data);
                        seen += usize::from(black_box(&info).content);
                    });
                }
            }
        }
    }
    println!("{} events per iteration; {seen}", events.len());
}

/// The prompt's length in the `prompt` mode: about 4,000 tokens of English text.
const PROMPT_BYTES: usize = 16 * 1024;

/// A chat request whose one message is `len` bytes of prose, as a client sends it: a
/// sentence of about 90 bytes, a line break (`\n` in JSON) after each, a quoted phrase
/// (`\"`) in every fourth.
fn request_body(len: usize) -> Vec<u8> {
    let sentences = [
        "The gateway reads every request that passes through it, and it measures each one.",
        "Operators open the slowest traces to see where the time of a request went.",
        "A long prompt is mostly plain text, with a line break after each sentence.",
        "Some sentences quote a phrase, such as \\\"time to first token\\\", in the text.",
    ];
    let mut content = String::new();
    for s in sentences.iter().cycle() {
        if content.len() >= len {
            break;
        }
        content.push_str(s);
        content.push_str("\\n");
    }
    format!(
        r#"{{"model":"tiny-llama","messages":[{{"role":"system","content":"You are brief."}},{{"role":"user","content":"{content}"}}],"max_tokens":1,"stream":false}}"#
    )
    .into_bytes()
}

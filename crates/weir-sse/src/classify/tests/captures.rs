//! vLLM 0.32's own captures, streamed and not: each classifies as measurement expects, and
//! the sequence of (name, classification) does not depend on how the stream is cut.

use proptest::prelude::*;

use super::*;
use crate::SseParser;

pub(super) fn fixture(name: &str) -> Vec<u8> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vllm-0.32.0/"
    );
    std::fs::read(format!("{dir}{name}")).expect("capture")
}

const STREAMS: [(&str, Api); 7] = [
    ("chat_stream_usage.sse", Api::Chat),
    ("chat_stream_continuous_usage.sse", Api::Chat),
    ("chat_stream_no_usage.sse", Api::Chat),
    ("chat_stream_usage_prompt_details.sse", Api::Chat),
    ("completions_stream.sse", Api::Completions),
    ("responses_stream.sse", Api::Responses),
    ("messages_stream.sse", Api::Messages),
];

/// (name, classification) of each event, owned: `Debug` shows a borrowed and an owned
/// string alike, so any two cuttings compare equal.
type Seq = Vec<(Option<Vec<u8>>, String)>;

fn sequence(api: Api, chunks: &[&[u8]]) -> Seq {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            let info = classify_event(api, e.name, e.data);
            out.push((e.name.map(<[u8]>::to_vec), format!("{info:?}")));
        });
    }
    assert!(p.at_boundary() && !p.degraded);
    out
}

/// What measurement takes from a whole stream.
#[derive(Debug, PartialEq)]
struct Summary {
    events: usize,
    /// Index of the first content-bearing event (TTFT) and of the first answer event.
    first_content: Option<usize>,
    first_answer: Option<usize>,
    content_events: usize,
    /// Every event's usage merged in order.
    usage: Option<Usage>,
    /// Index of the event that ended the stream (the last one).
    end: Option<usize>,
    finished: Vec<(u32, String)>,
    model: Option<String>,
    errors: usize,
    invalid: usize,
}

fn summarise(api: Api, stream: &[u8]) -> Summary {
    let mut s = Summary {
        events: 0,
        first_content: None,
        first_answer: None,
        content_events: 0,
        usage: None,
        end: None,
        finished: Vec::new(),
        model: None,
        errors: 0,
        invalid: 0,
    };
    SseParser::default().feed(stream, |e| {
        let i = classify_event(api, e.name, e.data);
        let n = s.events;
        s.events += 1;
        if i.content {
            s.content_events += 1;
            s.first_content.get_or_insert(n);
        }
        if i.answer {
            s.first_answer.get_or_insert(n);
        }
        if let Some(u) = i.usage {
            s.usage.get_or_insert(u).merge(&u);
        }
        if i.end {
            s.end = Some(n);
        }
        s.finished
            .extend(i.finished.iter().map(|(c, r)| (*c, r.to_string())));
        if s.model.is_none() {
            s.model = i.model.map(Cow::into_owned);
        }
        s.errors += usize::from(i.error);
        s.invalid += usize::from(i.invalid);
    });
    s
}

fn usage(prompt: u64, completion: u64, cached: Option<u64>, reasoning: Option<u64>) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
        reasoning_tokens: reasoning,
        reported: Reported::Both,
    }
}

#[test]
fn every_stream_capture_classifies_as_expected() {
    let expect = |events, first, content, usage, reason: &str| Summary {
        events,
        first_content: Some(first),
        first_answer: Some(first),
        content_events: content,
        usage,
        end: Some(events - 1),
        finished: vec![(0, reason.to_string())],
        model: Some("tiny-llama".to_string()),
        errors: 0,
        invalid: 0,
    };
    let want = [
        // Role chunk, 32 tokens of which two detokenise to "", the usage chunk, [DONE].
        expect(35, 1, 30, Some(usage(18, 32, None, None)), "length"),
        // Usage on every chunk: the last one wins.
        expect(35, 1, 29, Some(usage(18, 32, None, None)), "length"),
        expect(10, 1, 7, None, "length"),
        expect(11, 1, 7, Some(usage(46, 8, Some(0), None)), "length"),
        // Completions: no role chunk; empty `text` chunks are not tokens.
        expect(18, 0, 15, Some(usage(4, 16, None, None)), "length"),
        // Responses: four opening events, 15 text deltas; usage and finish in the final
        // `response.completed` (status incomplete: its reason).
        expect(
            23,
            4,
            15,
            Some(usage(19, 16, Some(0), Some(0))),
            "max_output_tokens",
        ),
        // Messages: message_start, content_block_start, 14 text deltas; input usage in
        // message_start, completed by message_delta; ended by message_stop.
        expect(19, 2, 14, Some(usage(14, 16, Some(0), None)), "max_tokens"),
    ];
    for ((file, api), want) in STREAMS.iter().zip(want) {
        assert_eq!(summarise(*api, &fixture(file)), want, "{file}");
    }
}

#[test]
fn messages_capture_reports_input_first() {
    let mut seen = Vec::new();
    SseParser::default().feed(&fixture("messages_stream.sse"), |e| {
        if let Some(u) = classify_event(Api::Messages, e.name, e.data).usage {
            seen.push(u);
        }
    });
    let start = Usage {
        reported: Reported::Input,
        ..usage(14, 0, None, None)
    };
    assert_eq!(seen, [start, usage(14, 16, Some(0), None)]);
}

#[test]
fn every_body_capture_classifies_as_expected() {
    for (file, api, want, reason) in [
        (
            "chat_nonstream.json",
            Api::Chat,
            usage(18, 32, None, None),
            "length",
        ),
        (
            "completions_nonstream.json",
            Api::Completions,
            usage(4, 16, None, None),
            "length",
        ),
        (
            "responses_nonstream.json",
            Api::Responses,
            usage(19, 16, Some(0), Some(0)),
            "max_output_tokens",
        ),
        (
            "messages_nonstream.json",
            Api::Messages,
            usage(14, 16, Some(0), None),
            "max_tokens",
        ),
    ] {
        let body = fixture(file);
        let i = classify_body(api, &body);
        assert!(i.content && i.answer && !i.error && !i.invalid, "{file}");
        assert_eq!(i.usage, Some(want), "{file}");
        assert_eq!(i.finished, vec![(0, Cow::Borrowed(reason))], "{file}");
        assert_eq!(i.model.as_deref(), Some("tiny-llama"), "{file}");
    }
    for (file, api) in [
        ("err_unknown_model.body", Api::Chat),
        ("err_responses_unknown_model.body", Api::Responses),
        ("err_messages_unknown_model.body", Api::Messages),
    ] {
        let body = fixture(file);
        let i = classify_body(api, &body);
        assert!(i.error && !i.invalid && i.usage.is_none(), "{file}");
    }
}

#[test]
fn every_two_way_cut_of_every_capture_classifies_the_same() {
    for (file, api) in STREAMS {
        let s = fixture(file);
        let whole = sequence(api, &[&s]);
        assert!(
            whole.iter().any(|e| e.0.is_some()) == matches!(api, Api::Responses | Api::Messages)
        );
        for at in 0..=s.len() {
            let (a, b) = s.split_at(at);
            assert_eq!(sequence(api, &[a, b]), whole, "{file} cut at {at}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_cutting_of_any_capture_classifies_the_same(
        which in 0..STREAMS.len(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let (file, api) = STREAMS[which];
        let s = fixture(file);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).collect();
        at.sort_unstable();
        at.push(s.len());
        let mut chunks = Vec::new();
        let mut from = 0;
        for to in at {
            chunks.push(&s[from..to]);
            from = to;
        }
        prop_assert_eq!(sequence(api, &chunks), sequence(api, &[&s]));
    }
}

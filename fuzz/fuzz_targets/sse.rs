//! Fuzzes the SSE parser and event classification: any bytes, cut into chunks anywhere,
//! must parse without a panic, give the same events (data and `event:` name) and the same
//! classification for every API however they are cut, and never hold more than
//! `max_line + max_event` bytes, with the default limits and with small ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sse::{Api, SseParser, classify_event};

fuzz_target!(|input: &[u8]| {
    // The first byte chooses where to cut and the small limits; the rest is the stream.
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let at = usize::from(cut) * stream.len() / 255;
    let small = (1 + usize::from(cut & 0x0f) * 16, usize::from(cut >> 4) * 40);
    for limits in [(4096, 4096), small] {
        let whole = events(limits, stream, &[stream]);
        let (a, b) = stream.split_at(at.min(stream.len()));
        assert_eq!(events(limits, stream, &[a, b, &[]]), whole);
        // Small pieces (single bytes for short streams: slow under ASan for long ones).
        let size = if stream.len() <= 1024 {
            1
        } else {
            2 + usize::from(cut % 13)
        };
        let pieces: Vec<&[u8]> = stream.chunks(size).collect();
        assert_eq!(events(limits, stream, &pieces), whole);
    }
});

/// An event's data, name, place, and what each API's classifier makes of it.
type Seen = (Vec<u8>, Option<Vec<u8>>, u64, u64, [(bool, bool, bool, bool); 4]);
type Found = (Vec<Seen>, bool, u64, bool);

const APIS: [Api; 4] = [Api::Chat, Api::Completions, Api::Responses, Api::Messages];

/// The events found in `chunks` (the pieces of `stream`) and the parser's state at the end;
/// checks the memory bound after every chunk.
fn events((max_line, max_event): (usize, usize), stream: &[u8], chunks: &[&[u8]]) -> Found {
    let mut p = SseParser::with_limits(max_line, max_event);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            let kinds = APIS.map(|api| {
                let i = classify_event(api, e.name, e.data);
                assert!(!i.answer || i.content, "an answer is content");
                (i.content, i.answer, i.end, i.invalid)
            });
            let name = e.name.map(<[u8]>::to_vec);
            assert!(e.start <= e.end && e.data.len() + name.as_ref().map_or(0, Vec::len) <= max_event);
            // An event's end falls after a `\r` whose `\n` came in the next chunk: move it
            // past that `\n` so that every cutting compares equal.
            let mut end = e.end;
            let at = end as usize;
            if stream[at - 1] == b'\r' && stream.get(at) == Some(&b'\n') {
                end += 1;
            }
            out.push((e.data.to_vec(), name, e.start, end, kinds));
        });
        assert!(p.held() <= max_line + max_event, "held {}", p.held());
    }
    (out, p.degraded, p.release_limit(), p.at_boundary())
}

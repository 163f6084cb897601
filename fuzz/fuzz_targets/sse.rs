//! Fuzzes the SSE parser and event classification: any bytes, cut into chunks anywhere,
//! must parse without a panic, give the same events however they are cut, and never hold
//! more than the line cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sse::{SseParser, classify};

fuzz_target!(|input: &[u8]| {
    // The first byte chooses where to cut; the rest is the stream.
    let Some((&cut, stream)) = input.split_first() else { return };
    let whole = events(&[stream]);
    let at = usize::from(cut) * stream.len() / 255;
    let (a, b) = stream.split_at(at.min(stream.len()));
    assert_eq!(events(&[a, b]), whole);
    let bytes: Vec<&[u8]> = stream.chunks(7).collect();
    assert_eq!(events(&bytes), whole);
});

fn events(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool, bool, bool)> {
    let mut p = SseParser::new(4096);
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            let i = classify(e.data);
            assert!(e.start <= e.end);
            out.push((e.data.to_vec(), i.content, i.done, i.invalid));
        });
    }
    out
}

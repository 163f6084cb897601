use proptest::prelude::*;

use super::*;

fn events(chunks: &[&[u8]]) -> Vec<(String, u64, u64)> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            out.push((String::from_utf8_lossy(e.data).into_owned(), e.start, e.end))
        });
    }
    out
}

/// The (name, data) of each event, however the stream is cut.
fn named(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
    let mut p = SseParser::default();
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            let name = e.name.map(|n| String::from_utf8_lossy(n).into_owned());
            out.push((name, String::from_utf8_lossy(e.data).into_owned()))
        });
    }
    out
}

#[test]
fn line_endings_comments_and_multiline_data() {
    let s = b": keep-alive\n\ndata: a\r\ndata:b\r\rid: 7\nevent: x\ndata\n\ndata: [DONE]\n\n";
    let got = events(&[s]);
    let data: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(data, ["a\nb", "", "[DONE]"]);
    // Offsets: the comment event spans 0..14, then "data: a\r\ndata:b\r\r" = 14..31.
    assert_eq!((got[0].1, got[0].2), (14, 31));
    assert_eq!(got[2].2, s.len() as u64);
}

#[test]
fn crlf_split_across_chunks() {
    let got = events(&[b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n"]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "x");
    // The blank line's `\r` ends the event; its `\n` came in the next chunk.
    assert_eq!((got[0].1, got[0].2), (0, 10));
    assert_eq!(got[1].0, "y");
    assert_eq!((got[1].1, got[1].2), (11, 22));
}

#[test]
fn overlong_line_is_skipped_and_marked() {
    let mut p = SseParser::new(8);
    let mut out = Vec::new();
    for c in [&b"data: 0123"[..], b"456789abc", b"\n\ndata: ok\n\n"] {
        p.feed(c, |e| out.push(e.data.to_vec()));
    }
    assert!(p.degraded);
    assert_eq!(out, vec![b"ok".to_vec()]);
    assert!(p.at_boundary());
}

/// Events found: (data, name, start, end).
type Found = Vec<(Vec<u8>, Option<Vec<u8>>, u64, u64)>;

/// Feeds `chunks` to `p`, checking the memory bound after every call; returns the events.
fn feed_all(p: &mut SseParser, chunks: &[&[u8]], bound: usize) -> Found {
    let mut out = Vec::new();
    for c in chunks {
        p.feed(c, |e| {
            out.push((e.data.to_vec(), e.name.map(<[u8]>::to_vec), e.start, e.end))
        });
        assert!(p.held() <= bound, "held {} > bound {bound}", p.held());
    }
    out
}

#[test]
fn endless_event_stays_bounded_and_the_next_one_is_parsed() {
    let (max_line, max_event) = (64, 256);
    let bound = max_line + max_event;
    let mut p = SseParser::with_limits(max_line, max_event);
    assert_eq!(feed_all(&mut p, &[b"data: a\n\n"], bound).len(), 1);
    let lines = b"data: 0123456789\n".repeat(4096);
    // The same endless event, cut in several ways (whole, odd sizes, single bytes).
    for size in [lines.len(), 4093, 100, 17, 1] {
        let chunks: Vec<&[u8]> = lines.chunks(size).collect();
        assert!(feed_all(&mut p, &chunks, bound).is_empty());
    }
    assert!(p.degraded && !p.at_boundary());
    assert_eq!(p.release_limit(), 9);
    let end = p.offset() + 1;
    let got = feed_all(&mut p, &[b"\n", b"data: ok\n", b"\n"], bound);
    assert_eq!(got, vec![(b"ok".to_vec(), None, end, end + 10)]);
    assert!(p.at_boundary());

    // `new` bounds the event by the line cap: held stays under twice that.
    let mut p = SseParser::new(1024);
    let chunks: Vec<&[u8]> = lines.chunks(1000).collect();
    for _ in 0..16 {
        assert!(feed_all(&mut p, &chunks, 2048).is_empty());
    }
    assert_eq!(feed_all(&mut p, &[b"\ndata: ok\n\n"], 2048).len(), 1);
}

#[test]
fn event_limit_is_exact_and_cut_independent() {
    let s = b"data: 0123\ndata: 456\n\ndata: 0123\ndata: 4567\n\n: c\n\ndata: ok\n\n";
    for size in [s.len(), 5, 1] {
        let mut p = SseParser::with_limits(16, 8);
        let chunks: Vec<&[u8]> = s.chunks(size).collect();
        let got = feed_all(&mut p, &chunks, 24);
        let data: Vec<&[u8]> = got.iter().map(|e| &e.0[..]).collect();
        assert_eq!(data, [&b"0123\n456"[..], b"ok"]);
        assert_eq!((got[1].2, got[1].3), (50, 60));
        assert!(p.degraded && p.at_boundary());
    }
}

#[test]
fn long_line_is_skipped_however_it_is_cut() {
    let s = b"data: 012345678\n\ndata: ab\n\n";
    for size in [s.len(), 3, 1] {
        let mut p = SseParser::new(8);
        let chunks: Vec<&[u8]> = s.chunks(size).collect();
        let got = feed_all(&mut p, &chunks, 16);
        assert_eq!(got, vec![(b"ab".to_vec(), None, 17, 27)]);
        assert!(p.degraded && p.at_boundary());
    }
}

#[test]
fn empty_chunk_keeps_a_pending_crlf() {
    let got = events(&[b"data: x\r", b"", b"\ndata: y\n\n"]);
    assert_eq!(got, [("x\ny".to_string(), 0, 18)]);
}

/// Every way of cutting `s` in two and in three, and byte by byte.
fn cuttings(s: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut out = vec![vec![s], s.chunks(1).collect()];
    for i in 0..=s.len() {
        out.push(vec![&s[..i], &s[i..]]);
        for j in i..=s.len() {
            out.push(vec![&s[..i], &s[i..j], &s[j..]]);
        }
    }
    out
}

#[test]
fn names_are_found_however_the_stream_is_cut() {
    let s = b"event: response.created\ndata: {\"a\":1}\n\n\
        data: x\nevent: late\r\n\r\n\
        event: first\nevent: second\ndata: y\ndata: z\n\n\
        event: no-data\n\n\
        data: unnamed\n\n\
        event\ndata: empty name\n\n\
        : comment\nevent:tight\nid: 3\ndata: w\r\r";
    let want = [
        (Some("response.created"), "{\"a\":1}"),
        (Some("late"), "x"),
        (Some("second"), "y\nz"),
        (None, "unnamed"),
        (Some(""), "empty name"),
        (Some("tight"), "w"),
    ];
    let want: Vec<(Option<String>, String)> = want
        .iter()
        .map(|(n, d)| (n.map(str::to_string), d.to_string()))
        .collect();
    for chunks in cuttings(s) {
        assert_eq!(named(&chunks), want, "{chunks:?}");
    }
}

#[test]
fn over_long_name_is_dropped_and_marked() {
    let long = "n".repeat(MAX_EVENT_NAME + 1);
    let s = format!(
        "event: kept\nevent: {long}\ndata: d\n\nevent: {}\ndata: e\n\n",
        &long[1..]
    );
    for size in [s.len(), 7, 1] {
        let mut p = SseParser::new(1024);
        let chunks: Vec<&[u8]> = s.as_bytes().chunks(size).collect();
        let got = feed_all(&mut p, &chunks, 2048);
        let names: Vec<Option<&[u8]>> = got.iter().map(|e| e.1.as_deref()).collect();
        assert_eq!(names, [Some(&b"kept"[..]), Some(&long.as_bytes()[1..])]);
        assert!(p.degraded && p.at_boundary());
    }
}

#[test]
fn the_name_counts_against_the_event_bound() {
    let s = b"event: abcd\ndata: 1234\n\nevent: abcde\ndata: 1234\n\ndata: 1234\nevent: abcde\n\n\
        event: toolongname\n\ndata: ok\n\n";
    for chunks in cuttings(s) {
        let mut p = SseParser::with_limits(64, 8);
        let got = feed_all(&mut p, &chunks, 72);
        let want = vec![
            (b"1234".to_vec(), Some(b"abcd".to_vec()), 0, 24),
            (b"ok".to_vec(), None, s.len() as u64 - 10, s.len() as u64),
        ];
        assert_eq!(got, want);
        assert!(p.degraded && p.at_boundary());
    }
}

#[test]
fn degenerate_streams_parse_in_linear_time_and_bounded_memory() {
    // Millions of blank lines (`\r`) and of tiny data lines in one event.
    let crs = vec![b'\r'; 4 << 20];
    let tiny = b"data:\n".repeat(1 << 20);
    for size in [crs.len(), 4096, 3] {
        let mut p = SseParser::with_limits(16, 1 << 20);
        let chunks: Vec<&[u8]> = crs.chunks(size).collect();
        assert!(feed_all(&mut p, &chunks, 0).is_empty());
        assert!(p.at_boundary() && p.release_limit() == crs.len() as u64);
        let chunks: Vec<&[u8]> = tiny.chunks(size).collect();
        assert!(feed_all(&mut p, &chunks, 16 + (1 << 20)).is_empty());
        let got = feed_all(&mut p, &[b"\n"], 16 + (1 << 20));
        assert_eq!(got[0].0, vec![b'\n'; (1 << 20) - 1]);
        assert!(!p.degraded);
    }
}

/// Feeds `stream` cut at `cuts` (positions, repeats giving empty chunks), checking the bound
/// after every call. Event ends are reported just past a `\r` when its `\n` came in the next
/// chunk: they are moved past that `\n` so that any two cuttings compare equal.
fn run(limits: (usize, usize), stream: &[u8], mut at: Vec<usize>) -> (Found, bool, u64, bool) {
    at.sort_unstable();
    at.push(stream.len());
    let mut chunks = Vec::new();
    let mut from = 0;
    for to in at {
        chunks.push(&stream[from..to]);
        from = to;
    }
    let mut p = SseParser::with_limits(limits.0, limits.1);
    let mut got = feed_all(&mut p, &chunks, limits.0 + limits.1);
    for e in &mut got {
        let end = e.3 as usize;
        if stream[end - 1] == b'\r' && stream.get(end) == Some(&b'\n') {
            e.3 += 1;
        }
    }
    assert_eq!(p.offset(), stream.len() as u64);
    (got, p.degraded, p.release_limit(), p.at_boundary())
}

/// Cut positions in a stream of `len` bytes (repeats give empty chunks).
fn at(cuts: &[prop::sample::Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|i| i.index(len + 1)).collect()
}

/// Bytes that look like an event stream more often than not.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            &b"data: "[..], b"data:", b"data", b"\n", b"\r", b"\r\n", b"\n\n", b"x", b"yz",
            b": c", b"id: 1", b"0123456789", b"event: ", b"event:", b"event",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

/// What a line of a well-formed event sets.
#[derive(Debug, Clone)]
enum Sets {
    Data(String),
    Name(String),
    Nothing,
}

/// A line of a well-formed event: (field line without its ending, what it sets).
fn line() -> impl Strategy<Value = (String, Sets)> {
    // The one space after the colon is not part of the value; another one is.
    let sep = |v: &str| {
        if v.starts_with(' ') || v.len() % 2 == 0 {
            " "
        } else {
            ""
        }
    };
    prop_oneof![
        "[a-z :{}\"]{0,12}".prop_map(move |v| (format!("data:{}{v}", sep(&v)), Sets::Data(v))),
        Just(("data".to_string(), Sets::Data(String::new()))),
        "[a-z. _]{0,12}".prop_map(move |v| (format!("event:{}{v}", sep(&v)), Sets::Name(v))),
        Just(("event".to_string(), Sets::Name(String::new()))),
        "[a-z ]{0,8}".prop_map(|c| (format!(":{c}"), Sets::Nothing)),
        ("id|retry|datax|dat|eventx|even", "[a-z0-9 ]{0,6}")
            .prop_map(|(f, v)| (format!("{f}:{v}"), Sets::Nothing)),
    ]
}

type Events = Vec<Vec<((String, Sets), usize)>>;

/// Renders well-formed events; returns the stream, the events expected (data, name, start,
/// end) and the tightest limits (longest line; largest joined data plus name an event reaches)
/// that still accept them.
fn render(events: &Events) -> (Vec<u8>, Found, (usize, usize)) {
    const ENDINGS: [&str; 3] = ["\n", "\r", "\r\n"];
    let (mut s, mut want, mut limits) = (String::new(), Vec::new(), (0, 0));
    for lines in events {
        let start = s.len() as u64;
        let mut data: Option<String> = None;
        let mut name: Option<String> = None;
        for ((text, sets), ending) in lines {
            s.push_str(text);
            s.push_str(ENDINGS[*ending]);
            limits.0 = limits.0.max(text.len());
            match sets {
                Sets::Data(v) => data = Some(data.map_or(v.clone(), |d| format!("{d}\n{v}"))),
                Sets::Name(v) => name = Some(v.clone()),
                Sets::Nothing => {}
            }
            let size = data.as_ref().map_or(0, String::len) + name.as_ref().map_or(0, String::len);
            limits.1 = limits.1.max(size);
        }
        // The blank line; after a lone `\r`, a lone `\n` would only complete that ending.
        s.push_str(if s.ends_with('\r') { "\r" } else { "\n" });
        if let Some(d) = data {
            let name = name.map(String::into_bytes);
            want.push((d.into_bytes(), name, start, s.len() as u64));
        }
    }
    (s.into_bytes(), want, limits)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_stream_is_bounded_and_cut_independent(
        s in stream(),
        max_line in 0usize..24,
        max_event in 0usize..48,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let limits = (max_line, max_event);
        let whole = run(limits, &s, Vec::new());
        prop_assert_eq!(&run(limits, &s, at(&cuts, s.len())), &whole);
        prop_assert_eq!(&run(limits, &s, (0..s.len()).collect()), &whole);
    }

    #[test]
    fn well_formed_events_are_found_however_cut(
        events in prop::collection::vec(prop::collection::vec((line(), 0usize..3), 0..5), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let (s, want, limits) = render(&events);
        let (got, degraded, release, boundary) = run(limits, &s, at(&cuts, s.len()));
        prop_assert_eq!(got, want);
        prop_assert!(!degraded && boundary);
        prop_assert_eq!(release, s.len() as u64);
    }
}

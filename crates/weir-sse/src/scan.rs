//! A one-pass JSON reader for the shapes read on every token and every short request (chat
//! and completions events and bodies, request bodies): the caller takes the few members it
//! needs and skips the rest, and every step declines (`None`) where the reader is not
//! certain that serde's typed parse would read the text the same way: a key with an escape,
//! a `\u` escape of a surrogate, a number of a typed field that is not a plain integer in
//! range, a member given twice, nesting deeper than [`MAX_DEPTH`], and anything that is not
//! JSON. The caller then reads the text with serde, whose verdict stands. What is read never
//! differs from serde's reading (the classifier's and the gateway's inspection tests hold
//! the two to each other); only its cost does.

/// Deeper than this, the reader declines (serde_json's own limit is 128).
pub const MAX_DEPTH: u32 = 64;

/// A reader over one JSON text.
pub struct Scan<'a> {
    text: &'a str,
    at: usize,
    /// Objects and arrays open around `at`.
    depth: u32,
}

impl<'a> Scan<'a> {
    /// A reader at the start of `text` (already known to be UTF-8: it is a `str`).
    pub fn new(text: &'a str) -> Self {
        Scan {
            text,
            at: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed when it is `c`.
    #[inline]
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let hit = self.peek() == Some(c);
        self.at += usize::from(hit);
        hit
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// Nothing but whitespace is left.
    pub fn end(mut self) -> Option<()> {
        self.ws();
        (self.at == self.text.len()).then_some(())
    }

    #[inline]
    fn literal<const N: usize>(&mut self, word: &[u8; N]) -> Option<()> {
        let next = self.bytes().get(self.at..self.at + N)?;
        (next == word).then(|| self.at += N)
    }

    /// Consumes a `null` when one comes next.
    #[inline]
    pub fn null(&mut self) -> bool {
        self.ws();
        self.literal(b"null").is_some()
    }

    /// A string without escapes, borrowed: declines one with an escape (serde would unescape
    /// it into a copy).
    #[inline]
    pub fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = self.special()?;
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Both ends are at ASCII bytes: character boundaries.
        self.text.get(start..end)
    }

    /// Any string, its escapes checked.
    #[inline]
    fn skip_string(&mut self) -> Option<()> {
        self.expect(b'"')?;
        loop {
            self.at = self.special()?;
            match self.bytes()[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.escape()?,
                _ => return None,
            }
        }
    }

    /// One escape, at its backslash.
    fn escape(&mut self) -> Option<()> {
        let kind = *self.bytes().get(self.at + 1)?;
        self.at += 2;
        match kind {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => {
                let hex = self.text.get(self.at..self.at + 4)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let unit = u16::from_str_radix(hex, 16).ok()?;
                self.at += 4;
                // Surrogates (pairs or lone) are left to serde.
                (!(0xD800..=0xDFFF).contains(&unit)).then_some(())
            }
            _ => None,
        }
    }

    /// A plain integer (no sign, fraction or exponent) that fits a `u64` (at most 20 digits).
    #[inline]
    pub fn u64(&mut self) -> Option<u64> {
        self.ws();
        let digits = self.bytes()[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.text[self.at..self.at + digits];
        if digits == 0 || digits > 20 || (digits > 1 && text.starts_with('0')) {
            return None;
        }
        self.at += digits;
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        text.parse().ok()
    }

    /// Any number, by JSON's grammar.
    fn skip_number(&mut self) -> Option<()> {
        self.at += usize::from(self.peek() == Some(b'-'));
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        // A digit right after a leading zero: not a number serde reads.
        (!self.peek().is_some_and(|b| b.is_ascii_digit())).then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// Any value, checked.
    pub fn skip(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => self.object(|s, _| s.skip()),
            b'[' => self.array(Scan::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.skip_number(),
        }
    }

    /// Any value, checked, as its text (what serde's `RawValue` borrows).
    pub fn raw(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        self.skip()?;
        self.text.get(start..self.at)
    }

    /// An object: `member` is called with each key, at its value, and must consume it.
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.items(b'{', b'}', |s| {
            let key = s.string()?;
            s.expect(b':')?;
            member(s, key)
        })
    }

    /// An array: `element` is called at each element and must consume it.
    pub fn array(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.items(b'[', b']', element)
    }

    /// `open`, items separated by commas (none after the last), `close`; one level deeper
    /// while inside.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.expect(open)?;
        self.depth += 1;
        if !self.eat(close) {
            loop {
                item(self)?;
                if self.eat(close) {
                    break;
                }
                self.expect(b',')?;
            }
        }
        self.depth -= 1;
        Some(())
    }
}

impl Scan<'_> {
    /// Where the first byte from here that a string cannot simply contain is; `None` when
    /// none comes (the string does not end).
    #[inline]
    fn special(&self) -> Option<usize> {
        special_from(self.bytes(), self.at)
    }
}

/// Whether `bytes` can stand inside a JSON string as they are: no `"`, `\` or control
/// character (what a writer of JSON escapes).
pub fn plain(bytes: &[u8]) -> bool {
    special_from(bytes, 0).is_none()
}

/// Where the first byte at or after `at` that a JSON string cannot simply contain is (`"`,
/// `\` or a control character); `None` when there is none. One block of sixteen bytes (keys
/// and short values end there), then blocks of 32 (a long value such as a prompt), then
/// eight bytes at a time and one by one at the end.
#[inline]
fn special_from(bytes: &[u8], mut at: usize) -> Option<usize> {
    let Some(block) = bytes.get(at..at + 16) else {
        return words(bytes, at);
    };
    if let Some(p) = in_16(block) {
        return Some(at + p);
    }
    at += 16;
    while let Some(block) = bytes.get(at..at + 32) {
        if let Some(p) = in_32(block) {
            return Some(at + p);
        }
        at += 32;
    }
    words(bytes, at)
}

/// A byte a string cannot simply contain.
#[inline]
fn is_special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// 0xFF for each special byte of a block, 0 for each other: written so that the compiler
/// makes it a few vector compares (no `unsafe`), read then as integers.
#[inline]
fn marks<const N: usize>(block: &[u8]) -> Option<[u8; N]> {
    let block: &[u8; N] = block.try_into().ok()?;
    Some(std::array::from_fn(|i| {
        if is_special(block[i]) { 0xFF } else { 0 }
    }))
}

/// The first special byte of a 16-byte block.
#[inline]
fn in_16(block: &[u8]) -> Option<usize> {
    let mask = u128::from_le_bytes(marks::<16>(block)?);
    (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize)
}

/// The first special byte of a 32-byte block.
#[inline]
fn in_32(block: &[u8]) -> Option<usize> {
    let marks = marks::<32>(block)?;
    let (lo, hi) = marks.split_at(16);
    let [lo, hi] = [lo, hi].map(|h| u128::from_le_bytes(h.try_into().unwrap_or_default()));
    if lo | hi == 0 {
        return None;
    }
    let bit = if lo != 0 {
        lo.trailing_zeros()
    } else {
        128 + hi.trailing_zeros()
    };
    Some((bit / 8) as usize)
}

/// From `at`, eight bytes at a time, then byte by byte: the end of a text.
///
/// In a little-endian word, `(w - 0x20..) & !w & 0x80..` has the high bit of each byte
/// below 0x20 set, and at most false ones above a true one (a borrow runs upwards only);
/// the same holds for `w ^ c..` below 1, a byte equal to `c`. So the lowest bit set in the
/// union is the first such byte.
fn words(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    while let Some(word) = bytes.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let hits = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes.get(at..)?;
    tail.iter().position(|&b| is_special(b)).map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Scan, is_special};

    /// Runs of plain text (ASCII and not) of any length up to a few hundred bytes, each
    /// followed by one byte or character of any kind, special or not.
    fn texts() -> impl Strategy<Value = String> {
        let run = (0usize..200, prop_oneof![Just('a'), Just('é'), Just(' ')]);
        let after = prop_oneof![
            Just('"'),
            Just('\\'),
            (0u8..0x20).prop_map(char::from),
            Just('\u{7f}'),
            Just('~'),
            any::<char>(),
        ];
        prop::collection::vec((run, after), 0..6).prop_map(|parts| {
            let mut text = String::new();
            for ((len, c), after) in parts {
                text.extend(std::iter::repeat_n(c, len));
                text.push(after);
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The blocks and the words each find the first special byte from any place in any
        /// text: the one a byte-by-byte look finds.
        #[test]
        fn special_finds_the_first_special_byte(text in texts(), from in any::<prop::sample::Index>()) {
            let at = from.index(text.len() + 1);
            let expected = text.as_bytes()[at..].iter().position(|&b| is_special(b)).map(|p| at + p);
            let scan = Scan { text: &text, at, depth: 0 };
            prop_assert_eq!(scan.special(), expected);
            prop_assert_eq!(super::plain(&text.as_bytes()[at..]), expected.is_none());
            prop_assert_eq!(super::words(text.as_bytes(), at), expected);
        }

        /// The vector UTF-8 check that every text passes before it is read (simdutf8's)
        /// says what std's says, on texts long enough for its vector path: runs of ASCII and
        /// characters of every width, with any bytes among them.
        #[test]
        fn the_utf8_check_is_stds(parts in prop::collection::vec(prop_oneof![
            "[a-z ]{0,40}".prop_map(String::into_bytes),
            any::<char>().prop_map(|c| c.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..3),
        ], 0..60)) {
            let bytes = parts.concat();
            prop_assert_eq!(
                simdutf8::basic::from_utf8(&bytes).is_ok(),
                std::str::from_utf8(&bytes).is_ok()
            );
        }
    }
}

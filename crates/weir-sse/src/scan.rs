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
    /// Where the first byte from here that a string cannot simply contain is (`"`, `\` or a
    /// control character), eight bytes at a time (read on past the string's end: the text
    /// goes on); `None` when none comes (the string does not end).
    ///
    /// In a little-endian word, `(w - 0x20..) & !w & 0x80..` has the high bit of each byte
    /// below 0x20 set, and at most false ones above a true one (a borrow runs upwards only);
    /// the same holds for `w ^ c..` below 1, a byte equal to `c`. So the lowest bit set in
    /// the union is the first such byte.
    #[inline]
    fn special(&self) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
        let bytes = self.bytes();
        let mut at = self.at;
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
        let p = tail
            .iter()
            .position(|&b| b < 0x20 || b == b'"' || b == b'\\')?;
        Some(at + p)
    }
}

//! The incremental event-stream parser: finds events (`data:` and `event:` fields) in the
//! bytes as they pass, keeping only the unfinished tail of a line and the data and name of an
//! event that spans chunks, both bounded.

mod event;

use event::Borrowed;

/// One complete event: its joined `data`, its `event:` name (the last one given; None when the
/// event had no `event` field) and where it sits in the stream (absolute offsets, `end` just
/// past the blank line that closed it).
#[derive(Debug)]
pub struct Event<'a> {
    pub data: &'a [u8],
    pub name: Option<&'a [u8]>,
    pub start: u64,
    pub end: u64,
}

/// Longest `event:` name kept: a longer one is dropped like an over-long line (the line is
/// ignored and `degraded` set). The names of every API served are under 64 bytes.
pub const MAX_EVENT_NAME: usize = 128;

/// Incremental WHATWG event-stream parser. Only `data` and `event` fields matter (`id`,
/// `retry` and comments are ignored); an event is reported at its blank line when it has data.
///
/// Two limits bound what it holds, whatever the input: a line longer than `max_line` (its
/// terminator not counted) is skipped, and an event whose joined data plus name would exceed
/// `max_event` is dropped whole, up to its blank line. Either sets `degraded`, as does a name
/// longer than [`MAX_EVENT_NAME`] (dropped). The limits apply the same way however the stream
/// is cut into chunks, so the events found never depend on the cuts, and
/// [`SseParser::held`] never exceeds `max_line + max_event`.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of a line that began in an earlier chunk and has not ended yet.
    tail: Vec<u8>,
    /// Joined `data` of the current event when it cannot be borrowed from one chunk, followed
    /// by its name when that cannot be borrowed either (`name_owned` bytes at the end).
    data: Vec<u8>,
    has_data: bool,
    /// Length of the current event's name held at the end of `data`, if it is held there.
    name_owned: Option<usize>,
    /// The previous chunk ended in `\r`: a leading `\n` completes that line ending.
    skip_lf: bool,
    /// The rest of the current line is ignored (too long, or inside a dropped event).
    skip_line: bool,
    /// The current event's data grew past `max_event`: the rest of it is ignored.
    skip_event: bool,
    max_line: usize,
    max_event: usize,
    /// Absolute offset of the first byte not yet fed.
    offset: u64,
    /// Absolute offset where the current event began.
    event_start: u64,
    /// Set once a line or an event had to be skipped for its size: measurements may be
    /// incomplete.
    pub degraded: bool,
}

/// Default cap on one SSE line held across chunks.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    /// A parser that skips lines longer than `max_line` and events whose data (and name)
    /// would be longer than `max_line` too: `with_limits(max_line, max_line)`.
    pub fn new(max_line: usize) -> Self {
        SseParser::with_limits(max_line, max_line)
    }

    /// A parser that skips lines longer than `max_line` bytes and drops events whose joined
    /// data (data lines joined by `\n`) plus name would be longer than `max_event` bytes.
    pub fn with_limits(max_line: usize, max_event: usize) -> Self {
        SseParser {
            tail: Vec::new(),
            data: Vec::new(),
            has_data: false,
            name_owned: None,
            skip_lf: false,
            skip_line: false,
            skip_event: false,
            max_line,
            max_event,
            offset: 0,
            event_start: 0,
            degraded: false,
        }
    }

    /// Absolute offset of the next byte to be fed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the last complete event (or comment block) ends: bytes before it are whole.
    pub fn release_limit(&self) -> u64 {
        self.event_start
    }

    /// True when bytes fed so far end exactly at an event boundary.
    pub fn at_boundary(&self) -> bool {
        self.tail.is_empty()
            && !self.has_data
            && !self.skip_line
            && !self.skip_event
            && self.event_start == self.offset
    }

    /// Bytes of memory the parser holds between (and during) calls to `feed`: the capacity
    /// of its line and event buffers (the event name is held in the latter). Never more than
    /// `max_line + max_event`.
    pub fn held(&self) -> usize {
        self.tail.capacity() + self.data.capacity()
    }

    /// Feeds one network chunk; `on_event` is called for every event completed in it.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        if chunk.is_empty() {
            // Nothing to do, and a pending `\r` must still meet the `\n` of the next chunk.
            return;
        }
        let base = self.offset;
        self.offset += chunk.len() as u64;
        let mut pos = 0;
        if self.skip_lf {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                pos = 1;
                if self.event_start == base {
                    self.event_start = base + 1;
                }
            }
        }
        // The event's first data line and name, while they lie in this chunk uncopied.
        let mut borrowed = Borrowed::default();
        while pos < chunk.len() {
            let Some(rel) = memchr::memchr2(b'\n', b'\r', &chunk[pos..]) else {
                // Unfinished line: keep it (bounded), and any borrowed data it follows.
                self.spill(chunk, &mut borrowed);
                self.hold(&chunk[pos..]);
                return;
            };
            let eol = pos + rel;
            let next = if chunk[eol] == b'\r' {
                if eol + 1 < chunk.len() {
                    if chunk[eol + 1] == b'\n' {
                        eol + 2
                    } else {
                        eol + 1
                    }
                } else {
                    self.skip_lf = true;
                    eol + 1
                }
            } else {
                eol + 1
            };
            if self.skip_line {
                self.skip_line = false;
            } else if !self.tail.is_empty() {
                // Only the first line of a chunk can have begun in an earlier one, so
                // nothing is borrowed yet.
                self.finish_held(&chunk[pos..eol]);
            } else if eol == pos {
                self.dispatch(chunk, &mut borrowed, base + next as u64, &mut on_event);
            } else {
                self.field(chunk, pos, eol, &mut borrowed);
            }
            pos = next;
        }
        self.spill(chunk, &mut borrowed);
    }

    /// Keeps the start of a line that continues in the next chunk, or skips the line when
    /// it is already too long (or its event is being dropped: only its end matters then).
    fn hold(&mut self, rest: &[u8]) {
        if self.skip_line || self.skip_event {
            self.skip_line = true;
        } else if self.tail.len() + rest.len() > self.max_line {
            self.skip_line = true;
            self.degraded = true;
            self.tail = Vec::new();
        } else {
            extend_capped(&mut self.tail, rest, self.max_line);
        }
    }

    /// The line held in `tail` ends with `rest` (possibly empty; the line is not).
    fn finish_held(&mut self, rest: &[u8]) {
        if self.tail.len() + rest.len() > self.max_line {
            self.degraded = true;
            self.tail = Vec::new();
            return;
        }
        let mut line = std::mem::take(&mut self.tail);
        extend_capped(&mut line, rest, self.max_line);
        self.owned_field(&line);
        line.clear();
        self.tail = line;
    }
}

/// Appends `bytes` to `v`, growing it (amortized, by doubling) but never past `limit` bytes
/// of capacity when the result fits in `limit`: `Vec`'s own growth could double past it.
#[inline]
fn extend_capped(v: &mut Vec<u8>, bytes: &[u8], limit: usize) {
    if bytes.len() > v.capacity() - v.len() {
        grow_capped(v, bytes.len(), limit);
    }
    v.extend_from_slice(bytes);
}

#[cold]
#[inline(never)]
fn grow_capped(v: &mut Vec<u8>, add: usize, limit: usize) {
    let need = v.len() + add;
    let want = v.capacity().saturating_mul(2).clamp(need, limit.max(need));
    v.reserve_exact(want - v.len());
}

#[cfg(test)]
mod tests;

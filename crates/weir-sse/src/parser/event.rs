//! Assembling the current event from its lines: data joined, name kept, both borrowed from
//! the chunk while they can be, the event bounded as a whole.

use super::{Event, MAX_EVENT_NAME, SseParser, extend_capped};

/// The current event's first data line and its name, when they lie in the current chunk
/// (`chunk[start..end]`) and have not been copied.
#[derive(Default)]
pub(super) struct Borrowed {
    data: Option<(usize, usize)>,
    name: Option<(usize, usize)>,
}

/// The fields the parser reads.
enum Field {
    Data,
    Event,
}

impl SseParser {
    /// A complete non-empty line lying inside `chunk[start..end]`.
    pub(super) fn field(&mut self, chunk: &[u8], start: usize, end: usize, b: &mut Borrowed) {
        let line = &chunk[start..end];
        if line.len() > self.max_line {
            self.degraded = true;
            return;
        }
        if self.skip_event {
            return;
        }
        // The value ends the line: it lies at `chunk[end - v.len()..end]`.
        match field_value(line) {
            Some((Field::Data, v)) if !self.has_data => {
                // The first data line (the common case): borrowed.
                if v.len() + self.name_len(b) > self.max_event {
                    self.drop_event(b);
                } else {
                    self.has_data = true;
                    b.data = Some((end - v.len(), end));
                }
            }
            Some((Field::Data, v)) => {
                if self.data_len(b) + 1 + v.len() + self.name_len(b) > self.max_event {
                    self.drop_event(b);
                } else {
                    self.spill_data(chunk, b);
                    self.push_data(&[b"\n", v]);
                }
            }
            Some((Field::Event, v)) => {
                let fits = self.name_fits(self.data_len(b), v.len(), b);
                if fits {
                    self.forget_owned_name();
                    b.name = Some((end - v.len(), end));
                }
            }
            None => {}
        }
    }

    /// A complete non-empty line that had to be assembled from two chunks (nothing of the
    /// current chunk is borrowed yet).
    pub(super) fn owned_field(&mut self, line: &[u8]) {
        if self.skip_event {
            return;
        }
        let b = &mut Borrowed::default();
        match field_value(line) {
            Some((Field::Data, v)) => {
                let size = self.joined(self.data_len(b), v.len()) + self.name_len(b);
                if size > self.max_event {
                    self.drop_event(b);
                } else if self.has_data {
                    self.push_data(&[b"\n", v]);
                } else {
                    self.has_data = true;
                    self.push_data(&[v]);
                }
            }
            Some((Field::Event, v)) => {
                let fits = self.name_fits(self.data_len(b), v.len(), b);
                if fits {
                    self.set_owned_name(v);
                }
            }
            None => {}
        }
    }

    /// Length of the event's data once a value of `add` bytes joins the `held` bytes.
    fn joined(&self, held: usize, add: usize) -> usize {
        if self.has_data { held + 1 + add } else { add }
    }

    /// Bytes of joined data the current event has.
    fn data_len(&self, b: &Borrowed) -> usize {
        match b.data {
            Some((s, e)) => e - s,
            None => self.data.len() - self.name_owned.unwrap_or(0),
        }
    }

    /// Bytes of the current event's name.
    fn name_len(&self, b: &Borrowed) -> usize {
        match b.name {
            Some((s, e)) => e - s,
            None => self.name_owned.unwrap_or(0),
        }
    }

    /// Whether a name of `len` bytes may replace the event's name: not when it is too long
    /// (the line is dropped) or when the event would outgrow `max_event` (the event is).
    fn name_fits(&mut self, data: usize, len: usize, b: &mut Borrowed) -> bool {
        if len > MAX_EVENT_NAME {
            self.degraded = true;
            false
        } else if data + len > self.max_event {
            self.drop_event(b);
            false
        } else {
            true
        }
    }

    /// The event is too large: forget its data and name, ignore it up to its blank line.
    fn drop_event(&mut self, b: &mut Borrowed) {
        *b = Borrowed::default();
        self.data = Vec::new();
        self.has_data = false;
        self.name_owned = None;
        self.skip_event = true;
        self.degraded = true;
    }

    /// Appends data bytes to the owned buffer, before the name held there if any (moved
    /// after them: at most [`MAX_EVENT_NAME`] bytes).
    fn push_data(&mut self, parts: &[&[u8]]) {
        let n = self.name_owned.unwrap_or(0);
        if n == 0 {
            for p in parts {
                extend_capped(&mut self.data, p, self.max_event);
            }
            return;
        }
        let mut name = [0u8; MAX_EVENT_NAME];
        let at = self.data.len() - n;
        name[..n].copy_from_slice(&self.data[at..]);
        self.data.truncate(at);
        for p in parts {
            extend_capped(&mut self.data, p, self.max_event);
        }
        extend_capped(&mut self.data, &name[..n], self.max_event);
    }

    /// Drops the name held at the end of the owned buffer, if any.
    fn forget_owned_name(&mut self) {
        if let Some(n) = self.name_owned.take() {
            self.data.truncate(self.data.len() - n);
        }
    }

    /// Holds `name` at the end of the owned buffer, in place of any name held there.
    fn set_owned_name(&mut self, name: &[u8]) {
        self.forget_owned_name();
        extend_capped(&mut self.data, name, self.max_event);
        self.name_owned = Some(name.len());
    }

    /// Moves borrowed data into the owned buffer (the event gains another data line).
    fn spill_data(&mut self, chunk: &[u8], b: &mut Borrowed) {
        if let Some((s, e)) = b.data.take() {
            self.push_data(&[&chunk[s..e]]);
        }
    }

    /// Moves borrowed data and name into the owned buffer (the event continues past this
    /// chunk).
    pub(super) fn spill(&mut self, chunk: &[u8], b: &mut Borrowed) {
        self.spill_data(chunk, b);
        if let Some((s, e)) = b.name.take() {
            self.set_owned_name(&chunk[s..e]);
        }
    }

    pub(super) fn dispatch(
        &mut self,
        chunk: &[u8],
        b: &mut Borrowed,
        end: u64,
        on_event: &mut impl FnMut(Event<'_>),
    ) {
        let start = self.event_start;
        self.event_start = end;
        self.skip_event = false;
        let owned_name = self.name_owned.take();
        let (data, name) = (b.data.take(), b.name.take());
        if std::mem::take(&mut self.has_data) {
            let at = self.data.len() - owned_name.unwrap_or(0);
            on_event(Event {
                data: match data {
                    Some((s, e)) => &chunk[s..e],
                    None => &self.data[..at],
                },
                name: match (name, owned_name) {
                    (Some((s, e)), _) => Some(&chunk[s..e]),
                    (None, Some(_)) => Some(&self.data[at..]),
                    (None, None) => None,
                },
                start,
                end,
            });
        }
        self.data.clear();
    }
}

/// The field a line sets and its value, or None for comments and other fields.
fn field_value(line: &[u8]) -> Option<(Field, &[u8])> {
    let (field, rest) = if let Some(rest) = line.strip_prefix(b"data") {
        (Field::Data, rest)
    } else {
        (Field::Event, line.strip_prefix(b"event")?)
    };
    match rest.first() {
        None => Some((field, rest)),
        Some(b':') => {
            let v = &rest[1..];
            Some((field, v.strip_prefix(b" ").unwrap_or(v)))
        }
        Some(_) => None,
    }
}

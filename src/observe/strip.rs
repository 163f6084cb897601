//! Usage stripping, inside the body observer: removes the usage-only chunk the gateway asked
//! for, so a client that did not ask for usage gets the bytes vLLM sends without it.

use bytes::{Buf, Bytes, BytesMut};

use weir_sse as sse;

/// A decision about one event while stripping the injected usage chunk.
#[derive(Debug)]
pub(super) enum Action {
    /// Remove this usage-only event; its `system_fingerprint` moves to the held finish event.
    Cut {
        start: u64,
        end: u64,
        fingerprint: Option<String>,
    },
    /// The last choice finished here: hold the event until we know what follows.
    Hold { start: u64, end: u64 },
    /// Any other event while holding: release what is held, unchanged.
    Release { start: u64 },
}

/// Removes the usage-only chunk the gateway asked for, so the client gets the bytes the
/// backend would have sent without it. vLLM puts `system_fingerprint` on the last chunk
/// before `[DONE]`, so when the usage chunk goes, its fingerprint moves to the finish chunk.
///
/// Only whole events are released while stripping; in the usual case (a frame of whole
/// events, nothing to remove) the frame goes on as it came, without a copy.
pub(super) struct Strip {
    n: u32,
    finished: Vec<u32>,
    /// Bytes received and not yet released, starting at stream offset `pending_start`.
    pub(super) pending: BytesMut,
    pending_start: u64,
    /// Everything before this offset is released or removed.
    cursor: u64,
    /// The finish event being held back.
    pub(super) held: Option<(u64, u64)>,
}

impl Strip {
    pub(super) fn new(n: u32) -> Strip {
        Strip {
            n,
            finished: Vec::new(),
            pending: BytesMut::new(),
            pending_start: 0,
            cursor: 0,
            held: None,
        }
    }

    pub(super) fn decide(
        &mut self,
        e: &sse::Event<'_>,
        info: &sse::EventInfo<'_>,
        holding: bool,
        out: &mut Vec<Action>,
    ) {
        let holding = holding || out.iter().any(|a| matches!(a, Action::Hold { .. }));
        if info.usage_only && !info.content {
            let fingerprint = info.system_fingerprint.as_deref().map(str::to_string);
            out.push(Action::Cut {
                start: e.start,
                end: e.end,
                fingerprint,
            });
            return;
        }
        if holding {
            out.push(Action::Release { start: e.start });
        }
        for (index, _) in &info.finished {
            // Only the choices asked for: a backend's other indexes cannot grow the list.
            if *index < self.n && !self.finished.contains(index) {
                self.finished.push(*index);
            }
        }
        if !info.finished.is_empty()
            && self.finished.len() >= self.n as usize
            && info.system_fingerprint.is_none()
        {
            out.push(Action::Hold {
                start: e.start,
                end: e.end,
            });
        }
    }

    /// Applies this frame's decisions; `limit` is where the last complete event ends.
    pub(super) fn apply(
        &mut self,
        chunk: Bytes,
        base: u64,
        limit: u64,
        actions: Vec<Action>,
    ) -> Option<Bytes> {
        let frame_end = base + chunk.len() as u64;
        if actions.is_empty()
            && self.pending.is_empty()
            && self.held.is_none()
            && limit == frame_end
        {
            self.cursor = frame_end;
            self.pending_start = frame_end;
            return Some(chunk);
        }
        if self.pending.is_empty() {
            self.pending_start = base;
        }
        self.pending.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        for a in actions {
            match a {
                Action::Cut {
                    start,
                    end,
                    fingerprint,
                } => {
                    if let Some((hs, he)) = self.held.take() {
                        self.emit_finish(&mut out, hs, he, fingerprint.as_deref());
                        self.cursor = he;
                    }
                    self.emit(&mut out, start);
                    self.cursor = end;
                }
                Action::Hold { start, end } => {
                    self.emit(&mut out, start);
                    self.held = Some((start, end));
                }
                Action::Release { start } => {
                    self.held = None;
                    self.emit(&mut out, start);
                }
            }
        }
        if self.held.is_none() {
            self.emit(&mut out, limit.max(self.cursor));
        }
        self.pending
            .advance((self.cursor - self.pending_start) as usize);
        self.pending_start = self.cursor;
        (!out.is_empty()).then(|| out.freeze())
    }

    /// Releases pending bytes up to stream offset `to`.
    fn emit(&mut self, out: &mut BytesMut, to: u64) {
        if to > self.cursor {
            let a = (self.cursor - self.pending_start) as usize;
            let b = (to - self.pending_start) as usize;
            out.extend_from_slice(&self.pending[a..b]);
            self.cursor = to;
        }
    }

    /// Releases the held finish event with the usage chunk's fingerprint added.
    fn emit_finish(&mut self, out: &mut BytesMut, start: u64, end: u64, fingerprint: Option<&str>) {
        self.emit(out, start);
        let a = (start - self.pending_start) as usize;
        let b = (end - self.pending_start) as usize;
        let event = &self.pending[a..b];
        match (fingerprint, event.iter().rposition(|&c| c == b'}')) {
            (Some(fp), Some(close)) => {
                out.extend_from_slice(&event[..close]);
                out.extend_from_slice(b",\"system_fingerprint\":");
                out.extend_from_slice(serde_json::Value::from(fp).to_string().as_bytes());
                out.extend_from_slice(&event[close..]);
            }
            _ => out.extend_from_slice(event),
        }
        self.cursor = end;
    }

    /// The stream ended: release everything.
    pub(super) fn flush(&mut self) -> Option<Bytes> {
        self.held = None;
        let out = self.pending.split().freeze();
        self.cursor = self.pending_start + out.len() as u64;
        self.pending_start = self.cursor;
        (!out.is_empty()).then_some(out)
    }
}

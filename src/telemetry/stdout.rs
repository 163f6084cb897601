//! Standard output for log lines: one `write(2)` per line, with no lock in the process.
//!
//! std's `Stdout` holds a process-wide lock across each line's write system call. With a
//! worker per core writing an access line per request, the workers queued on that lock:
//! with two workers, one request in four had a worker wait on the futex and be woken by
//! the other. The kernel keeps a single write whole without it: writes to one open regular
//! file do not interleave, and a write of up to `PIPE_BUF` bytes (4 KiB) to a pipe is
//! atomic. A longer line, or the rest of a line the kernel took only part of (a full pipe),
//! is written under a lock, so that two such lines do not interleave with each other.
//!
//! A per-core worker (`workers.rs`), and the one thread of a gateway given one core, gathers
//! its lines instead, up to one atomic write's worth,
//! and writes them in one call: when the next line would not fit, when its event loop is
//! about to go idle (tokio's park hook), once a second while it is busy, and when its thread
//! ends. A busy worker makes one write of several access lines instead of one per line (what
//! nginx's `access_log ... buffer=` does), and an idle gateway's lines are out as soon as
//! the worker has nothing else to do.

use std::cell::RefCell;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

/// The most a single write to a pipe keeps whole (POSIX requires at least 512; Linux 4096).
const ATOMIC_WRITE: usize = 4096;

/// Writes longer than [`ATOMIC_WRITE`], or what is left of a short one.
static LONG: Mutex<()> = Mutex::new(());

thread_local! {
    /// This worker thread's lines not yet written; `None` on every other thread.
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Lines gathered for one write: never more than one atomic write holds, in the order they
/// came.
#[derive(Default)]
struct Batch(Vec<u8>);

impl Batch {
    /// Adds `line`; what is gathered is written first when the two would not fit in one
    /// atomic write, and a line longer than that is written on its own after it.
    fn add(
        &mut self,
        line: &[u8],
        mut write: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.0.len() + line.len() > ATOMIC_WRITE {
            self.flush(&mut write)?;
        }
        if line.len() > ATOMIC_WRITE {
            return write(line);
        }
        self.0.extend_from_slice(line);
        Ok(())
    }

    /// Writes what is gathered (gone even if the write fails: it has nowhere else to go).
    fn flush(&mut self, mut write: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let written = write(&self.0);
        self.0.clear();
        written
    }
}

/// Gathers the lines written on this thread from now on (see the module's text); they are
/// written by [`flush_here`], which the thread must call when it is idle, and when the
/// returned guard is dropped.
pub fn batch_here() -> Batching {
    BATCH.with(|b| *b.borrow_mut() = Some(Batch(Vec::with_capacity(ATOMIC_WRITE))));
    Batching(())
}

/// Writes the lines gathered on this thread.
pub fn flush_here() {
    BATCH.with(|b| {
        if let Ok(mut batch) = b.try_borrow_mut()
            && let Some(lines) = batch.as_mut()
        {
            // A log line that cannot be written has nowhere to be reported.
            let _ = lines.flush(write_whole);
        }
    });
}

/// Writes this thread's gathered lines once a second, for a loop too busy to go idle (a task
/// on the thread's own single-threaded runtime).
pub async fn flush_every_second() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_here();
    }
}

/// Writes what is gathered and stops gathering when dropped (at the end of the worker's
/// thread, or its unwinding).
pub struct Batching(());

impl Drop for Batching {
    fn drop(&mut self) {
        flush_here();
        BATCH.with(|b| {
            if let Ok(mut batch) = b.try_borrow_mut() {
                *batch = None;
            }
        });
    }
}

/// Standard output, a log line at a time (the `MakeWriter` of the log layer).
#[derive(Debug, Default, Clone, Copy)]
pub struct LineOut;

impl LineOut {
    pub fn new() -> LineOut {
        LineOut
    }
}

/// One `write(2)` on standard output.
fn write_once(buf: &[u8]) -> io::Result<usize> {
    let out = io::stdout();
    rustix::io::write(out.as_fd(), buf).map_err(io::Error::from)
}

impl Write for LineOut {
    /// All of `buf`, as [`Write::write_all`] writes it (in the batch's order).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    /// The whole of `buf`: added to this worker's batch, else written at once.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let batched = BATCH.with(|b| {
            let mut batch = b.try_borrow_mut().ok()?;
            Some(batch.as_mut()?.add(buf, write_whole))
        });
        batched.unwrap_or_else(|| write_whole(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The whole of `buf`: in one system call when it fits in an atomic write, else (and for
/// what a short write left) under the lock.
fn write_whole(mut buf: &[u8]) -> io::Result<()> {
    if buf.len() <= ATOMIC_WRITE {
        loop {
            match write_once(buf) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let _held = LONG.lock().unwrap_or_else(|e| e.into_inner());
    while !buf.is_empty() {
        match write_once(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{ATOMIC_WRITE, Batch};

    proptest! {
        /// Whatever the lines' lengths, a batch writes them all, in their order, each whole
        /// in one write; no write is longer than an atomic write unless it is one line that
        /// is; and only a line that would not fit sends what is gathered.
        #[test]
        fn a_batch_writes_every_line_whole_and_in_order(
            lengths in prop::collection::vec(prop_oneof![1usize..800, 3000usize..6000], 0..40),
        ) {
            let lines: Vec<Vec<u8>> = lengths
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let mut line = vec![b'a' + (i % 26) as u8; n - 1];
                    line.push(b'\n');
                    line
                })
                .collect();
            let mut writes: Vec<Vec<u8>> = Vec::new();
            let mut batch = Batch::default();
            for line in &lines {
                let before = batch.0.len();
                let count = writes.len();
                batch
                    .add(line, |w| {
                        writes.push(w.to_vec());
                        Ok(())
                    })
                    .unwrap();
                if before + line.len() <= ATOMIC_WRITE {
                    prop_assert_eq!(writes.len(), count, "a line that fits is gathered");
                }
            }
            batch
                .flush(|w| {
                    writes.push(w.to_vec());
                    Ok(())
                })
                .unwrap();
            prop_assert_eq!(writes.concat(), lines.concat());
            let mut written = writes.iter().flat_map(|w| w.split_inclusive(|&b| b == b'\n'));
            for line in &lines {
                prop_assert_eq!(written.next(), Some(line.as_slice()));
            }
            for w in &writes {
                prop_assert!(!w.is_empty());
                prop_assert!(
                    w.len() <= ATOMIC_WRITE || lines.iter().any(|l| l == w),
                    "a write of {} bytes that is not one line",
                    w.len()
                );
            }
        }
    }
}

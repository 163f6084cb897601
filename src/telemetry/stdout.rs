//! Standard output for log lines: one `write(2)` per line, with no lock in the process.
//!
//! std's `Stdout` holds a process-wide lock across each line's write system call. With a
//! worker per core writing an access line per request, the workers queued on that lock:
//! with two workers, one request in four had a worker wait on the futex and be woken by
//! the other. The kernel keeps a single write whole without it: writes to one open regular
//! file do not interleave, and a write of up to `PIPE_BUF` bytes (4 KiB) to a pipe is
//! atomic. A longer line, or the rest of a line the kernel took only part of (a full pipe),
//! is written under a lock, so that two such lines do not interleave with each other.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

/// The most a single write to a pipe keeps whole (POSIX requires at least 512; Linux 4096).
const ATOMIC_WRITE: usize = 4096;

/// Writes longer than [`ATOMIC_WRITE`], or what is left of a short one.
static LONG: Mutex<()> = Mutex::new(());

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
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_once(buf)
    }

    /// The whole of `buf`: in one system call when it fits in an atomic write, else (and
    /// for what a short write left) under the lock.
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
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

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

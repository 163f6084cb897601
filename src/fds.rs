//! File descriptors. Every client connection and every backend connection is one, so at
//! start the process raises its soft `RLIMIT_NOFILE` to the hard limit (as nginx's
//! `worker_rlimit_nofile` or Go's runtime do) and sizes its descriptor table for the
//! connections it expects. The kernel grows that table by doubling, and in a process with
//! more than one thread each growth waits for an RCU grace period: measured here, 5–28 ms
//! during which the one worker thread serves nothing, at 256, 512, 1024, … descriptors. Done
//! once at start, it costs a few bytes per descriptor of kernel memory and no stall later.

use std::fs::File;
use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors beyond the connections: listeners, the runtime's own, logs, health checks.
const SPARE: u64 = 64;

/// Sized up to this many descriptors at most when the connections are not bounded.
const UNBOUNDED_TABLE: u64 = 65_536;

/// What [`prepare`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// Descriptors the table has room for without growing.
    pub table: u64,
}

/// Raises the soft limit to the hard one and sizes the descriptor table for `descriptors`
/// (capped by the limit; `None`: as many as the limit allows, up to 65,536).
pub fn prepare(descriptors: Option<u64>) -> io::Result<Prepared> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let soft_before = current.unwrap_or(u64::MAX);
    let mut soft = soft_before;
    if let Some(hard) = maximum.filter(|&h| h > soft_before) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum,
            },
        )?;
        soft = hard;
    }
    let want = descriptors
        .map_or(UNBOUNDED_TABLE, |d| d.saturating_add(SPARE))
        .min(soft);
    let table = size_table(want)?;
    Ok(Prepared {
        soft_before,
        soft,
        table,
    })
}

/// Makes the table hold `n` descriptors: a descriptor numbered `n - 1` is opened and closed.
fn size_table(n: u64) -> io::Result<u64> {
    let Some(top) = n.checked_sub(1).and_then(|t| i32::try_from(t).ok()) else {
        return Ok(0);
    };
    let null = File::open("/dev/null")?;
    let high = rustix::io::fcntl_dupfd_cloexec(&null, top)?;
    drop(high);
    Ok(n)
}

/// Descriptors for a gateway of `max_connections` clients (0: unbounded): one for each
/// client, and two for its backend connection (the socket, and the handle a timer closes it
/// with when the client stopped reading).
pub fn for_gateway(max_connections: usize) -> Option<u64> {
    (max_connections > 0).then(|| (max_connections as u64).saturating_mul(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_the_hard_one_and_the_table_is_sized() {
        let Rlimit { maximum, .. } = getrlimit(Resource::Nofile);
        let p = prepare(Some(3000)).unwrap();
        assert_eq!(Some(p.soft), maximum.or(Some(p.soft_before)));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(p.soft));
        assert_eq!(p.table, (3000 + SPARE).min(p.soft));
        // The descriptor it opened to size the table is closed again.
        let top = i32::try_from(p.table - 1).unwrap();
        let null = File::open("/dev/null").unwrap();
        let fd = rustix::io::fcntl_dupfd_cloexec(&null, top).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(fd.as_raw_fd(), top);
    }
}

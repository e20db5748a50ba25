//! Forking a worker for an accepted client.
//!
//! This is the connect path's hot spot, so the child does as little as it
//! can: it drops every descriptor it inherited except its client and the
//! pooled-socket range with at most three `close_range` calls, and goes
//! straight to serving. The parent only closes its copy of the client.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::fds;

use crate::pooled_sockets::PooledSockets;
use crate::sys;
use crate::worker::{self, Context, Peer};

pub enum Forked {
    Parent(i32),
}

/// Forks; in the child, serves the client and exits (never returns). When
/// the fork fails the client is answered `53300` and closed, so that it
/// learns why rather than seeing its connection drop.
pub fn spawn_worker(ctx: &Context<'_>, client: OwnedFd, peer: &Peer) -> std::io::Result<Forked> {
    // The child takes the client out; after a failed fork the parent still
    // has it to answer, and after a successful one drops its copy here.
    let slot = Cell::new(Some(client));
    let forked = sys::process::fork_child(|| {
        let Some(client) = slot.take() else {
            return 2;
        };
        crate::logging::before_closing_inherited();
        close_inherited(
            client.as_raw_fd(),
            crate::logging::inherited_descriptor(),
            ctx.sockets,
        );
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker::run(ctx, client, peer)
        }))
        .unwrap_or_else(|_| {
            log::error!("{peer}: worker panicked");
            2
        })
    });
    match forked {
        Ok(pid) => Ok(Forked::Parent(pid)),
        Err(e) => {
            if let Some(client) = slot.take() {
                fds::refuse(
                    client,
                    fds::TOO_MANY,
                    "sorry, too many clients already (cannot start a worker process)",
                );
            }
            Err(e)
        }
    }
}

/// Closes everything from fd 3 up but the client, the log file and the
/// pooled range.
fn close_inherited(client: RawFd, log: Option<RawFd>, sockets: &PooledSockets) {
    let log = log.unwrap_or(client);
    for (lo, hi) in ranges_to_close([client, log], sockets.base(), sockets.end()) {
        // Only fails for an inverted range, which ranges_to_close never
        // yields; a descriptor left open costs nothing but a slot.
        let _ = sys::fd::close_range(lo, hi);
    }
}

/// The inclusive ranges of [3, ∞) minus the `keep` descriptors and
/// `[pool_lo, pool_hi)`.
pub fn ranges_to_close(keep: [RawFd; 2], pool_lo: RawFd, pool_hi: RawFd) -> Vec<(u32, u32)> {
    let mut kept = [
        (keep[0], keep[0] + 1),
        (keep[1], keep[1] + 1),
        (pool_lo, pool_hi),
    ];
    kept.sort();
    let mut out = Vec::with_capacity(4);
    let mut from: i64 = 3;
    for (lo, hi) in kept {
        let (lo, hi) = (lo as i64, hi as i64);
        if lo > from {
            out.push((from as u32, (lo - 1) as u32));
        }
        from = from.max(hi);
    }
    out.push((from as u32, u32::MAX));
    out
}

/// Forks a helper that serves one remote administrator (see
/// `management::remote`); the parent gets its pid. When the fork fails the
/// administrator is answered `53300`, as a client would be.
pub fn spawn_admin(ctx: &Context<'_>, client: OwnedFd, peer: &str) -> std::io::Result<i32> {
    let slot = Cell::new(Some(client));
    let forked = sys::process::fork_child(|| {
        let Some(client) = slot.take() else {
            return 2;
        };
        crate::logging::before_closing_inherited();
        close_inherited(
            client.as_raw_fd(),
            crate::logging::inherited_descriptor(),
            ctx.sockets,
        );
        crate::worker::signals::install(client.as_raw_fd());
        crate::process_title::set(&format!("pgcorral: management {peer}"));
        let timeout = ctx
            .config
            .main
            .authentication_timeout
            .max(std::time::Duration::from_secs(1));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::management::remote::serve(
                client,
                peer,
                ctx.credentials,
                ctx.management_path,
                timeout,
            )
        }))
        .unwrap_or(2)
    });
    if forked.is_err() {
        if let Some(client) = slot.take() {
            fds::refuse(
                client,
                fds::TOO_MANY,
                "sorry, too many clients already (cannot start a process for it)",
            );
        }
    }
    forked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_skip_the_client_and_the_pool() {
        assert_eq!(
            ranges_to_close([9, 9], 1024, 1124),
            vec![(3, 8), (10, 1023), (1124, u32::MAX)]
        );
        assert_eq!(
            ranges_to_close([3, 3], 1024, 1124),
            vec![(4, 1023), (1124, u32::MAX)]
        );
        // A client above the pool range, and a log file below the client.
        assert_eq!(
            ranges_to_close([2000, 5], 1024, 1124),
            vec![(3, 4), (6, 1023), (1124, 1999), (2001, u32::MAX)]
        );
    }
}

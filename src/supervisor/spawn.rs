//! Forking a worker.
//!
//! The child does as little as it can before serving: it drops every
//! descriptor it inherited except its client (when it was forked for one),
//! its channel to the supervisor (when it may serve more than one client),
//! the log file and the pooled-socket range, with one `close_range` call
//! per gap between them (at most five). The parent only closes its copies.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::fds;

use crate::pooled_sockets::PooledSockets;
use crate::sys;
use crate::worker::{self, Context, Peer};

pub enum Forked {
    Parent(i32),
}

/// Forks a worker; in the child, serves `client` if there is one, then
/// the clients the supervisor sends over `channel` if there is one, and
/// exits (never returns). When the fork fails a client is answered `53300`
/// and closed, so that it learns why rather than seeing its connection
/// drop.
pub fn spawn_worker(
    ctx: &Context<'_>,
    client: Option<(OwnedFd, Peer)>,
    channel: Option<OwnedFd>,
) -> std::io::Result<Forked> {
    // The child takes the client out; after a failed fork the parent still
    // has it to answer, and after a successful one drops its copy here.
    let first = Cell::new(client);
    let forked = sys::process::fork_child(|| {
        let client = first.take();
        crate::logging::before_closing_inherited();
        let keep = [
            client.as_ref().map(|(c, _)| c.as_raw_fd()),
            channel.as_ref().map(AsRawFd::as_raw_fd),
            crate::logging::inherited_descriptor(),
        ];
        close_inherited(&keep.into_iter().flatten().collect::<Vec<_>>(), ctx.sockets);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker::reuse::serve_clients(ctx, client, channel.as_ref())
        }))
        .unwrap_or_else(|_| {
            log::error!("worker panicked");
            2
        })
    });
    match forked {
        Ok(pid) => Ok(Forked::Parent(pid)),
        Err(e) => {
            if let Some((client, _)) = first.take() {
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

/// Closes everything from fd 3 up but `keep` and the pooled range.
fn close_inherited(keep: &[RawFd], sockets: &PooledSockets) {
    for (lo, hi) in ranges_to_close(keep, sockets.base(), sockets.end()) {
        // Only fails for an inverted range, which ranges_to_close never
        // yields; a descriptor left open costs nothing but a slot.
        let _ = sys::fd::close_range(lo, hi);
    }
}

/// The inclusive ranges of [3, ∞) minus the `keep` descriptors and
/// `[pool_lo, pool_hi)`.
pub fn ranges_to_close(keep: &[RawFd], pool_lo: RawFd, pool_hi: RawFd) -> Vec<(u32, u32)> {
    let mut kept: Vec<(RawFd, RawFd)> = keep.iter().map(|&fd| (fd, fd + 1)).collect();
    kept.push((pool_lo, pool_hi));
    kept.sort();
    let mut out = Vec::with_capacity(kept.len() + 1);
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
        let keep = [
            Some(client.as_raw_fd()),
            crate::logging::inherited_descriptor(),
        ];
        close_inherited(&keep.into_iter().flatten().collect::<Vec<_>>(), ctx.sockets);
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
            ranges_to_close(&[9, 9], 1024, 1124),
            vec![(3, 8), (10, 1023), (1124, u32::MAX)]
        );
        assert_eq!(
            ranges_to_close(&[3], 1024, 1124),
            vec![(4, 1023), (1124, u32::MAX)]
        );
        // A client above the pool range, and a log file below the client.
        assert_eq!(
            ranges_to_close(&[2000, 5], 1024, 1124),
            vec![(3, 4), (6, 1023), (1124, 1999), (2001, u32::MAX)]
        );
        // A client, a channel and a log file.
        assert_eq!(
            ranges_to_close(&[7, 4, 9], 64, 74),
            vec![(3, 3), (5, 6), (8, 8), (10, 63), (74, u32::MAX)]
        );
    }
}

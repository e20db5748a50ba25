//! A worker's life: one client at a time, as many as `worker_max_clients`,
//! taking each from the supervisor over its channel (a `SOCK_SEQPACKET`
//! socket pair).
//!
//! The supervisor sends a client as one message: the client's socket
//! attached (SCM_RIGHTS) and its peer address as text (empty for the Unix
//! socket). The worker answers `READY` when it is idle again, and nothing
//! when it exits instead; the supervisor only ever sends a client to a
//! worker that said it is idle (or was just forked), so a client is never
//! sent to a worker on its way out. End of stream on the channel tells an
//! idle worker to exit.
//!
//! A worker takes another client only when the last one left it as it was
//! before: no panic (that ends the process), no SIGQUIT (shutdown, `flush
//! all`), no protocol desynchronisation, and no slot still held. Everything
//! it kept for a client lives in that client's `Session` and is dropped
//! with it; what survives is pool-wide, not per client: the cache of
//! pooled sockets (`attach::Sockets`), pruned of connections that are gone.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::attach::Sockets;
use super::{signals, Context, Peer};
use crate::pipeline::Outcome;
use crate::slot::SlotState;
use crate::sys::scm::{self, ScmError};

/// The worker's answer: it is idle and takes another client.
pub const READY: u8 = b'R';
/// Room for a peer address as text (`[ipv6%scope]:port` fits).
const PEER_MAX: usize = 128;

/// The process title of a worker waiting for a client; tests and `ps`
/// tell idle workers by it.
pub const IDLE_TITLE: &str = "pgcorral: idle worker";

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Scm(#[from] ScmError),
    #[error("a client message carried {0} descriptors instead of one")]
    Descriptors(usize),
    #[error("a client message with an unreadable peer address")]
    Peer,
}

/// Sends `client` to a worker. Never waits: the supervisor's end is
/// non-blocking, and a worker has at most this one message queued.
pub fn send_client(
    channel: BorrowedFd<'_>,
    client: BorrowedFd<'_>,
    peer: &Peer,
) -> Result<(), ChannelError> {
    let text = peer.addr.map(|a| a.to_string()).unwrap_or_default();
    scm::send(channel, text.as_bytes(), &[client])?;
    Ok(())
}

/// The next client, or `None` when the supervisor closed the channel.
fn receive_client(channel: BorrowedFd<'_>) -> Result<Option<(OwnedFd, Peer)>, ChannelError> {
    let mut buf = [0u8; PEER_MAX];
    let mut fds = Vec::with_capacity(1);
    let n = scm::recv(channel, &mut buf, &mut fds)?;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if fds.len() != 1 {
        return Err(ChannelError::Descriptors(fds.len()));
    }
    let addr = match &buf[..n] {
        [] => None,
        text => Some(
            std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(ChannelError::Peer)?,
        ),
    };
    Ok(fds.pop().map(|fd| (fd, Peer { addr })))
}

/// Whether an outcome leaves this process in doubt, so that it serves no
/// other client: the two sides were out of step.
fn desynchronised(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::ClientProtocol(_) | Outcome::ServerProtocol(_) | Outcome::ServerLost(_)
    )
}

/// A slot this process still owns, if any: a client that left one behind
/// was not handed back cleanly, and the supervisor reclaims it once this
/// process is gone.
fn slot_still_held(ctx: &Context<'_>, me: i32) -> Option<usize> {
    ctx.segment.slots().iter().position(|s| {
        let (state, owner) = s.snapshot();
        owner == me && !matches!(state, SlotState::NotInit | SlotState::Free)
    })
}

/// Serves `first`, then clients from `channel` until the supervisor closes
/// it, `worker_max_clients` is reached or a client ends abnormally. Returns
/// the exit status.
pub fn serve_clients(
    ctx: &Context<'_>,
    first: Option<(OwnedFd, Peer)>,
    channel: Option<&OwnedFd>,
) -> i32 {
    // What the supervisor set up for itself is undone once per process.
    signals::install(-1);
    let me = std::process::id() as i32;
    let limit = ctx.config.main.worker_max_clients;
    let mut sockets = Sockets::new();
    let mut next = first;
    let mut served = 0usize;
    loop {
        let (client, peer) = match next.take() {
            Some(c) => c,
            None => {
                let Some(channel) = channel else {
                    return 0;
                };
                idle();
                match receive_client(channel.as_fd()) {
                    Ok(Some(c)) => c,
                    Ok(None) => return 0,
                    Err(e) => {
                        log::error!("worker channel: {e}");
                        return 1;
                    }
                }
            }
        };
        let ended = super::run(ctx, client, &peer, &mut sockets);
        served += 1;
        let Some(channel) = channel else {
            return ended.status;
        };
        if ended.outcome.as_ref().is_some_and(desynchronised)
            || signals::STOP.load(Ordering::SeqCst)
        {
            return ended.status;
        }
        if let Some(i) = slot_still_held(ctx, me) {
            log::warn!("{peer}: slot {i} still held after the client left; worker exits");
            return 1;
        }
        if served >= limit {
            log::debug!("worker served {served} clients (worker_max_clients); exits");
            return 0;
        }
        sockets.prune(ctx.segment);
        if scm::send(channel.as_fd(), &[READY], &[]).is_err() {
            // The supervisor is gone or let go of this worker.
            return 0;
        }
    }
}

/// Between clients: nothing of the last client shows (`run` has pointed
/// SIGQUIT's goodbye away from it; SIGQUIT now ends the process at once).
fn idle() {
    crate::process_title::set(IDLE_TITLE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_client_travels_with_its_peer_and_end_of_stream_means_exit() {
        let (supervisor, worker) = crate::sys::local::seqpacket_pair().unwrap();
        let (client, mut far) = UnixStream::pair().unwrap();
        let peer = Peer {
            addr: Some("[::1]:5432".parse().unwrap()),
        };
        send_client(supervisor.as_fd(), client.as_fd(), &peer).unwrap();
        drop(client);
        let (got, got_peer) = receive_client(worker.as_fd()).unwrap().unwrap();
        assert_eq!(got_peer.addr, peer.addr);
        let mut got = UnixStream::from(got);
        got.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        far.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");

        let local = Peer { addr: None };
        send_client(supervisor.as_fd(), got.as_fd(), &local).unwrap();
        let (_, got_peer) = receive_client(worker.as_fd()).unwrap().unwrap();
        assert!(got_peer.addr.is_none());

        // A message without a descriptor is refused, not taken for a client.
        scm::send(supervisor.as_fd(), b"x", &[]).unwrap();
        assert!(matches!(
            receive_client(worker.as_fd()),
            Err(ChannelError::Descriptors(0))
        ));
        drop(supervisor);
        assert!(receive_client(worker.as_fd()).unwrap().is_none());
    }

    #[test]
    fn only_desynchronisation_ends_a_worker() {
        assert!(desynchronised(&Outcome::ServerLost("x".into())));
        assert!(!desynchronised(&Outcome::ClientTerminated));
        assert!(!desynchronised(&Outcome::ClientClosed));
    }
}

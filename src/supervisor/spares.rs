//! Workers kept between clients: spares forked ahead of demand, handed
//! each accepted client over their channel (`worker::reuse`).
//!
//! The supervisor accepts every client itself and passes its socket to an
//! idle worker (SCM_RIGHTS), so the checks it makes on accept (`max_clients`,
//! running out of descriptors) and its count of clients stay where they
//! were, and no worker ever serves a client with a configuration older than
//! the supervisor's: each worker records the generation of what it copied
//! at fork (configuration, log file), and a worker of an older generation
//! gets no more clients and is let go, idle at once, busy when it says it
//! is idle again. With no idle worker the client is not kept waiting: a
//! worker is forked for it, as it would be without spares.
//!
//! The number of idle workers is kept between `workers_min_spare` (room
//! under `max_clients` permitting) and `workers_max_spare` from the event
//! loop, at most `FORKS_PER_TURN` forks a turn, so the loop never stalls on
//! a burst of forks. A worker is let go by closing the supervisor's end of
//! its channel; it exits when it reads end of stream.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::spawn::{self, Forked};
use super::{Mode, Supervisor, WORKER_FIRST};
use crate::sys;
use crate::sys::scm::{self, ScmError};
use crate::worker::reuse;
use crate::worker::Peer;

/// Forks topping up the spares in one turn of the event loop.
const FORKS_PER_TURN: usize = 8;
/// After a failed fork, spares are not topped up for this long.
const FORK_BACKOFF: Duration = Duration::from_secs(1);

struct Channel {
    /// The supervisor's end, non-blocking.
    fd: OwnedFd,
    generation: u64,
}

/// The workers that may serve more than one client, by pid.
#[derive(Default)]
pub(super) struct Spares {
    channels: HashMap<i32, Channel>,
    /// Idle workers, the one idle longest first; a client goes to the last.
    idle: Vec<i32>,
    /// Let go and not reaped yet: they serve no client.
    leaving: HashSet<i32>,
    /// What a worker forked now copies; bumped when that changes.
    generation: u64,
    not_before: Option<Instant>,
}

impl Spares {
    pub(super) fn idle(&self) -> usize {
        self.idle.len()
    }

    /// Children that serve no client: idle or on their way out.
    fn without_client(&self) -> usize {
        self.idle.len() + self.leaving.len()
    }
}

impl Supervisor {
    /// Clients being served: every child but the idle workers and those
    /// let go (remote management sessions count, as `max_clients` says).
    pub(super) fn clients(&self) -> usize {
        self.workers
            .len()
            .saturating_sub(self.spares.without_client())
    }

    /// Gives an accepted client to the idle worker that became idle last,
    /// or to a worker forked for it.
    pub(super) fn hand_off(&mut self, client: OwnedFd, peer: Peer) {
        while let Some(pid) = self.spares.idle.pop() {
            let Some(channel) = self.spares.channels.get(&pid) else {
                continue;
            };
            match reuse::send_client(channel.fd.as_fd(), client.as_fd(), &peer) {
                // Our copy of the client closes here; the worker has its own.
                Ok(()) => return,
                Err(e) => {
                    log::debug!("worker {pid} cannot take a client ({e}); trying another");
                    self.let_go(pid);
                }
            }
        }
        if let Err(e) = self.fork_worker(Some((client, peer))) {
            log::error!("{peer}: cannot fork a worker: {e}");
        }
    }

    /// Forks a worker, for `client` or as a spare. A worker that may serve
    /// several clients gets a channel; with `worker_max_clients = 1` it
    /// serves its one client and exits, as a worker forked per client.
    fn fork_worker(&mut self, client: Option<(OwnedFd, Peer)>) -> io::Result<()> {
        let spare = client.is_none();
        let (ours, theirs) = if self.config.main.worker_max_clients > 1 {
            match channel() {
                Ok((o, t)) => (Some(o), Some(t)),
                Err(e) if spare => return Err(e),
                // The client is served all the same, by a worker that
                // exits after it.
                Err(e) => {
                    log::warn!("no channel for a new worker ({e}); it serves one client");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let Forked::Parent(pid) = spawn::spawn_worker(&self.context(), client, theirs)?;
        self.workers.insert(pid);
        let Some(fd) = ours else {
            return Ok(());
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&raw),
            Token(WORKER_FIRST + pid as usize),
            Interest::READABLE,
        ) {
            // Unheard, it could never be given a client: let it go now
            // (it exits at end of stream once its client, if any, leaves).
            log::error!("worker {pid}: cannot watch its channel: {e}");
            self.spares.leaving.insert(pid);
            return Ok(());
        }
        self.spares.channels.insert(
            pid,
            Channel {
                fd,
                generation: self.spares.generation,
            },
        );
        if spare {
            self.spares.idle.push(pid);
        }
        Ok(())
    }

    /// A worker's channel is readable: it is idle again, or leaving.
    pub(super) fn on_worker_readable(&mut self, pid: i32) {
        loop {
            let Some(channel) = self.spares.channels.get(&pid) else {
                return;
            };
            let mut buf = [0u8; 8];
            // A worker never sends descriptors; any that came are closed.
            let mut fds = Vec::new();
            match scm::recv(channel.fd.as_fd(), &mut buf, &mut fds) {
                Ok(1) if buf[0] == reuse::READY => {
                    let current = channel.generation == self.spares.generation;
                    if current && self.mode == Mode::Running {
                        if !self.spares.idle.contains(&pid) {
                            self.spares.idle.push(pid);
                        }
                    } else {
                        self.let_go(pid);
                    }
                }
                Err(ScmError::Recv(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                // End of stream (it exits), or something no worker says.
                _ => {
                    self.let_go(pid);
                    return;
                }
            }
        }
    }

    /// Closes our end of a worker's channel: an idle worker exits at once,
    /// a busy one after its client.
    fn let_go(&mut self, pid: i32) {
        self.spares.idle.retain(|&p| p != pid);
        if let Some(channel) = self.spares.channels.remove(&pid) {
            let raw = channel.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            self.spares.leaving.insert(pid);
        }
    }

    /// A child was reaped.
    pub(super) fn forget_spare(&mut self, pid: i32) {
        self.let_go(pid);
        self.spares.leaving.remove(&pid);
    }

    /// What workers copied at fork changed (configuration, log file): the
    /// idle ones go now, the busy ones after their client.
    pub(super) fn workers_outdated(&mut self) {
        self.spares.generation += 1;
        self.let_go_idle();
    }

    pub(super) fn let_go_idle(&mut self) {
        for pid in std::mem::take(&mut self.spares.idle) {
            self.let_go(pid);
        }
    }

    /// Keeps the idle workers between the two bounds; never waits.
    pub(super) fn tend_spares(&mut self) {
        if self.mode != Mode::Running || self.segment.shutting_down() {
            return;
        }
        let main = &self.config.main;
        let (cap, low, high) = (
            main.max_clients,
            main.workers_min_spare,
            main.workers_max_spare,
        );
        let reusable = main.worker_max_clients > 1;
        // Too many idle, or more workers than max_clients allows after a
        // reload lowered it: the one idle longest goes first.
        while let Some(&oldest) = self.spares.idle.first() {
            let idle = self.spares.idle();
            if !reusable || idle > high || self.clients() + idle > cap {
                self.let_go(oldest);
            } else {
                break;
            }
        }
        if !reusable || self.spares.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        for _ in 0..FORKS_PER_TURN {
            let idle = self.spares.idle();
            if idle >= low || self.clients() + idle >= cap {
                break;
            }
            if let Err(e) = self.fork_worker(None) {
                log::error!("cannot fork a spare worker: {e}");
                self.spares.not_before = Some(Instant::now() + FORK_BACKOFF);
                return;
            }
        }
        self.spares.not_before = None;
    }
}

/// A worker's channel: the supervisor's end (non-blocking) and the
/// worker's.
fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = sys::local::seqpacket_pair()?;
    sys::sock::set_nonblocking(ours.as_fd(), true)?;
    Ok((ours, theirs))
}

//! The sockets of the slots a worker holds: the pooled ones it inherited
//! at fork, copies the supervisor sends it, and the connections it opens
//! (filled into their slot by `server::fill_slot`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{Context, WorkerError};
use crate::auth::proof::AuthProof;
use crate::config::Validation;
use crate::management::client::ManagementClient;
use crate::management::ManagementError;
use crate::pool::{self, Verdict};
use crate::protocol::StartupMessage;
use crate::segment::Segment;
use crate::server::{self, Login};
use crate::slot::SlotState;

/// The sockets a worker can use: the pooled ones it inherited at fork, the
/// ones it opened, and copies the supervisor sent it, by slot generation.
pub struct Sockets {
    cache: HashMap<usize, (u64, OwnedFd)>,
    /// Notices the server sent while the last connection this worker
    /// opened started, for the client's greeting.
    startup_notices: Vec<u8>,
}

impl Sockets {
    pub fn new() -> Self {
        Sockets {
            cache: HashMap::new(),
            startup_notices: Vec::new(),
        }
    }

    /// The socket of a pooled slot this worker now holds.
    pub fn pooled(&mut self, ctx: &Context<'_>, index: usize) -> Result<RawFd, WorkerError> {
        let generation = ctx.segment.slots()[index].generation();
        if let Some(fd) = ctx.sockets.get(index, generation) {
            return Ok(fd.as_raw_fd());
        }
        if let Some((g, fd)) = self.cache.get(&index) {
            if *g == generation {
                return Ok(fd.as_raw_fd());
            }
        }
        // One connection per request: the supervisor then holds a
        // descriptor only for workers that are asking it something, not
        // one for every client that ever did.
        let (fd, got) = ManagementClient::connect(ctx.management_path)?.get_socket(index)?;
        if got != generation {
            return Err(ManagementError::Refused(format!(
                "slot {index}: supervisor has generation {got}, slot has {generation}"
            ))
            .into());
        }
        Ok(self.keep(index, generation, fd))
    }

    /// Keeps a socket this worker opened or was sent.
    pub fn keep(&mut self, index: usize, generation: u64, fd: OwnedFd) -> RawFd {
        let raw = fd.as_raw_fd();
        self.cache.insert(index, (generation, fd));
        raw
    }

    /// The start-up notices of the connection opened last, once: they
    /// belong to the client it was opened for, never to a later one.
    pub fn take_startup_notices(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.startup_notices)
    }

    /// Drops our copy of a slot's socket (its connection was thrown away).
    pub fn forget(&mut self, index: usize) {
        self.cache.remove(&index);
    }

    /// Between clients: drops the copies of connections that are gone (the
    /// slot emptied or holding another socket now), so that a worker serving
    /// client after client keeps no dead server socket open, and whatever
    /// notices are left of the last client.
    pub fn prune(&mut self, segment: &Segment) {
        self.startup_notices = Vec::new();
        self.cache.retain(|&index, (generation, _)| {
            segment.slots().get(index).is_some_and(|slot| {
                slot.generation() == *generation
                    && !matches!(slot.state(), SlotState::NotInit | SlotState::Remove)
            })
        });
    }
}

impl Default for Sockets {
    fn default() -> Self {
        Self::new()
    }
}

/// Connects a new server connection for an INIT slot and fills the slot
/// with it (now IN_USE by `me`). A relayed login keeps what the client
/// proved; one pgcorral answered itself leaves nothing for later clients to
/// prove.
pub fn open_new(
    ctx: &Context<'_>,
    sockets: &mut Sockets,
    index: usize,
    me: i32,
    startup: &StartupMessage,
    login: Login<'_>,
) -> Result<RawFd, WorkerError> {
    let relayed = matches!(login, Login::Relay(_));
    // The server the pool recorded for the slot: the segment's primary,
    // which a `switch-to` changes for workers forked before it too.
    let (conn, proof) = server::connect(
        ctx.config.server_at(ctx.segment.slots()[index].server()),
        startup.user().unwrap_or_default(),
        startup.database(),
        &startup.params,
        login,
        connect_timeout(ctx),
    )?;
    let proof = if relayed { proof } else { AuthProof::Nothing };
    let generation = server::fill_slot(
        ctx.segment,
        index,
        me,
        &conn,
        &proof,
        // Closed when this returns, as in `Sockets::pooled`.
        &mut None,
        ctx.management_path,
    )?;
    sockets.startup_notices = conn.notices;
    Ok(sockets.keep(index, generation, conn.fd))
}

/// With `validation = "foreground"`, tests a pooled connection before it
/// is used; a dead one is closed and false tells the caller to acquire
/// again.
pub fn validate(
    ctx: &Context<'_>,
    sockets: &mut Sockets,
    index: usize,
    me: i32,
    fd: RawFd,
) -> bool {
    if ctx.config.main.validation != Validation::Foreground {
        return true;
    }
    // SAFETY: the slot's socket, open while this worker holds the slot.
    let server = unsafe { BorrowedFd::borrow_raw(fd) };
    match server::probe::probe(server, connect_timeout(ctx)) {
        Ok(()) => true,
        Err(e) => {
            let slot = &ctx.segment.slots()[index];
            log::info!(
                "slot {index}: backend {} failed validation ({e})",
                slot.backend_pid()
            );
            sockets.forget(index);
            pool::check_in(ctx.segment, index, me, Verdict::Dirty);
            false
        }
    }
}

pub fn connect_timeout(ctx: &Context<'_>) -> Duration {
    server::wait_limit(ctx.config.main.authentication_timeout)
}

//! Getting the socket of a slot the worker holds, opening new server
//! connections, and bringing a connection's session parameters in line with
//! the client's before it is used.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::auth_proof::AuthProof;
use super::io::{self, FdIo};
use super::server_connect::{self, Login};
use super::{Context, WorkerError};
use crate::config::Validation;
use crate::management::client::ManagementClient;
use crate::management::ManagementError;
use crate::pipeline::params::{self, Params};
use crate::pool;
use crate::protocol::tag::backend;
use crate::protocol::{self, ErrorResponse, StartupMessage};
use crate::slot::Slot;

/// The sockets a worker can use: the pooled ones it inherited at fork, the
/// ones it opened, and copies the supervisor sent it, by slot generation.
pub struct Sockets {
    cache: HashMap<usize, (u64, OwnedFd)>,
    management: Option<ManagementClient>,
}

impl Sockets {
    pub fn new() -> Self {
        Sockets {
            cache: HashMap::new(),
            management: None,
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
        let mgmt = match &mut self.management {
            Some(m) => m,
            None => self
                .management
                .insert(ManagementClient::connect(ctx.management_path)?),
        };
        let (fd, got) = match mgmt.get_socket(index) {
            Ok(x) => x,
            Err(e) => {
                // A broken connection is reopened next time.
                self.management = None;
                return Err(e.into());
            }
        };
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

    /// Drops our copy of a slot's socket (its connection was thrown away).
    pub fn forget(&mut self, index: usize) {
        self.cache.remove(&index);
    }

    /// Hands a new connection's socket to the supervisor (which must hold it
    /// before the slot can become FREE), then publishes the slot.
    pub fn transfer(
        &mut self,
        ctx: &Context<'_>,
        index: usize,
        me: i32,
        generation: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<(), WorkerError> {
        let mgmt = match &mut self.management {
            Some(m) => m,
            None => self
                .management
                .insert(ManagementClient::connect(ctx.management_path)?),
        };
        if let Err(e) = mgmt.transfer(index, generation, fd) {
            self.management = None;
            return Err(e.into());
        }
        if !pool::publish_new(ctx.segment, index, me) {
            return Err(ManagementError::Refused(format!("slot {index} was taken from us")).into());
        }
        Ok(())
    }
}

impl Default for Sockets {
    fn default() -> Self {
        Self::new()
    }
}

/// Connects a new server connection for an INIT slot, records it in the
/// slot, and hands its socket to the supervisor. `relayed` says whether the
/// client answered the server's challenge (its proof is kept) or pgcorral
/// did (nothing to check later clients against).
#[allow(clippy::too_many_arguments)]
pub fn open_new(
    ctx: &Context<'_>,
    sockets: &mut Sockets,
    index: usize,
    me: i32,
    startup: &StartupMessage,
    login: Login<'_>,
) -> Result<RawFd, WorkerError> {
    let slot = &ctx.segment.slots()[index];
    let relayed = matches!(login, Login::Relay(_));
    // The server the pool recorded for the slot: the segment's primary,
    // which a `switch-to` changes for workers forked before it too.
    let (conn, proof) = server_connect::connect(
        ctx.config.server_at(slot.server()),
        startup.user().unwrap_or_default(),
        startup.database(),
        &startup.params,
        login,
        connect_timeout(ctx),
    )?;
    let proof = if relayed { proof } else { AuthProof::Nothing };
    if !slot.set_startup(&conn.startup) {
        return Err(WorkerError::StartupTooLarge(conn.startup.len()));
    }
    slot.set_proof(&proof.encode());
    slot.clear_prepared();
    slot.set_backend(conn.backend_pid, conn.backend_key);
    let generation = slot.bump_generation();
    sockets.transfer(ctx, index, me, generation, conn.fd.as_fd())?;
    Ok(sockets.keep(index, generation, conn.fd))
}

/// With `validation = "foreground"`, tests a pooled connection before it
/// is used; a dead one is thrown away (the supervisor closes it) and false
/// tells the caller to acquire again.
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
    match crate::supervisor::validation::probe(server, connect_timeout(ctx)) {
        Ok(()) => true,
        Err(e) => {
            let slot = &ctx.segment.slots()[index];
            log::info!(
                "slot {index}: backend {} failed validation ({e})",
                slot.backend_pid()
            );
            sockets.forget(index);
            pool::discard(ctx.segment, index, me);
            false
        }
    }
}

pub fn connect_timeout(ctx: &Context<'_>) -> Duration {
    let t = ctx.config.main.authentication_timeout;
    if t.is_zero() {
        Duration::from_secs(10)
    } else {
        t.max(Duration::from_secs(1))
    }
}

/// Sets on the server whatever tracked parameter differs from `desired`,
/// and records the server's new values in the slot. The connection must be
/// idle; it is left idle.
pub fn sync_params(
    ctx: &Context<'_>,
    server: BorrowedFd<'_>,
    slot: &Slot,
    desired: &Params,
) -> Result<(), WorkerError> {
    let Some(sql) = desired.differences(&Params::from_startup(slot.startup())) else {
        return Ok(());
    };
    let fail = |what: String| WorkerError::ParameterSync(what);
    io::set_nonblocking(server, false).map_err(|e| fail(e.to_string()))?;
    io::set_timeouts(server, Some(connect_timeout(ctx))).map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::with_capacity(sql.len() + 8);
    protocol::query(&mut out, &sql);
    io::write_all(server, &out).map_err(|e| fail(e.to_string()))?;
    let mut error = None;
    loop {
        let msg = protocol::read_message(&mut FdIo(server), 64 * 1024)
            .map_err(|e| fail(e.to_string()))?;
        match msg.tag {
            backend::PARAMETER_STATUS => {
                if let Ok((k, v)) = protocol::parse_parameter_status(&msg.body) {
                    slot.set_startup(&params::startup_with(slot.startup(), &k, &v));
                }
            }
            backend::ERROR_RESPONSE => {
                error = Some(
                    ErrorResponse::parse(&msg.body)
                        .map(|e| e.message)
                        .unwrap_or_else(|_| "unreadable error".into()),
                )
            }
            backend::READY_FOR_QUERY => {
                if msg.body.first() != Some(&b'I') {
                    return Err(fail("server not idle after SET".into()));
                }
                break;
            }
            _ => {}
        }
    }
    io::set_timeouts(server, None).map_err(|e| fail(e.to_string()))?;
    match error {
        Some(e) => Err(fail(format!("{sql}: {e}"))),
        None => Ok(()),
    }
}

/// Runs `server_reset_query` (DISCARD ALL) on an idle connection before it
/// goes back to the pool, recording what the server reports. False when
/// the connection cannot be vouched for afterwards.
pub fn reset(ctx: &Context<'_>, server: BorrowedFd<'_>, slot: &Slot) -> bool {
    let run = || -> Result<bool, String> {
        io::set_nonblocking(server, false).map_err(|e| e.to_string())?;
        io::set_timeouts(server, Some(connect_timeout(ctx))).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(32);
        protocol::query(&mut out, "DISCARD ALL");
        io::write_all(server, &out).map_err(|e| e.to_string())?;
        // Whatever the answer, the statements are gone or the connection is.
        slot.clear_prepared();
        let mut ok = true;
        loop {
            let msg =
                protocol::read_message(&mut FdIo(server), 64 * 1024).map_err(|e| e.to_string())?;
            match msg.tag {
                backend::PARAMETER_STATUS => {
                    if let Ok((k, v)) = protocol::parse_parameter_status(&msg.body) {
                        slot.set_startup(&params::startup_with(slot.startup(), &k, &v));
                    }
                }
                backend::ERROR_RESPONSE => ok = false,
                backend::READY_FOR_QUERY => {
                    io::set_timeouts(server, None).map_err(|e| e.to_string())?;
                    return Ok(ok && msg.body.first() == Some(&b'I'));
                }
                _ => {}
            }
        }
    };
    match run() {
        Ok(ok) => ok,
        Err(e) => {
            log::warn!("reset of backend {} failed: {e}", slot.backend_pid());
            false
        }
    }
}

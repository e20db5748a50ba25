//! The one way a worker gets a server connection, at session start and at
//! every transaction-mode attach: a pooled one (proved by a pass-through
//! client, validated) or a new one, logged in with the client's settings
//! in both cases (`pool::Want::settings`), then brought in line with the
//! parameters the client expects.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use super::attach::{self, Sockets};
use super::{Context, WorkerError};
use crate::auth::client as client_auth;
use crate::auth::proof::AuthProof;
use crate::management::ManagementError;
use crate::pool::{self, Acquired, Verdict, Want};
use crate::protocol::StartupMessage;
use crate::server::params::Desired;
use crate::server::{self, Login};

/// A connection the worker holds IN_USE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub index: usize,
    /// The slot's socket, open while the worker holds the slot (kept by
    /// its `Sockets` or the inherited pooled range).
    pub fd: RawFd,
    /// Opened for this request rather than taken from the pool.
    pub fresh: bool,
}

impl Held {
    /// The slot's socket.
    pub fn server(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` stays open while the worker holds the slot (its
        // `Sockets` or the inherited pooled range keep it), and a `Held`
        // is let go when the slot is checked in or closed; the borrow
        // lasts no longer than the `Held` it comes from.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

/// What a connection is asked for.
pub struct Request<'a> {
    pub want: Want<'a>,
    pub startup: &'a StartupMessage,
    /// How a new connection logs in to the server.
    pub login: Login<'a>,
    /// A pass-through client that must prove what the client that opened
    /// a pooled connection proved, before it is given it.
    pub prove: Option<(BorrowedFd<'a>, &'a str)>,
    /// The tracked parameters the client named or set itself; for the
    /// others it expects the connection's login values.
    pub desired: &'a Desired,
}

/// Waits up to `blocking_timeout` for a connection. Any connection found
/// unusable on the way is closed and another tried; the client only sees
/// an error when none can be had or its own proof fails.
pub fn acquire(
    ctx: &Context<'_>,
    sockets: &mut Sockets,
    me: i32,
    req: &Request<'_>,
) -> Result<Held, WorkerError> {
    let deadline = Instant::now() + ctx.config.main.blocking_timeout;
    let held = loop {
        let taken = match pool::acquire(ctx.segment, req.want, me, deadline)? {
            Acquired::Pooled(i) => take_pooled(ctx, sockets, me, i, req)?,
            Acquired::New(i) => Some(open(ctx, sockets, me, i, req)?),
        };
        if let Some(held) = taken {
            break held;
        }
    };
    let slot = &ctx.segment.slots()[held.index];
    let server = held.server();
    let timeout = attach::connect_timeout(ctx);
    if let Err(e) = server::session::sync_params(server, held.index, slot, req.desired, timeout) {
        sockets.forget(held.index);
        pool::check_in(ctx.segment, held.index, me, Verdict::Dirty);
        return Err(WorkerError::ParameterSync(e));
    }
    Ok(held)
}

/// A pooled connection `me` now holds, or `None` when it turned out
/// unusable (closed) and another must be acquired.
fn take_pooled(
    ctx: &Context<'_>,
    sockets: &mut Sockets,
    me: i32,
    index: usize,
    req: &Request<'_>,
) -> Result<Option<Held>, WorkerError> {
    let slot = &ctx.segment.slots()[index];
    if !pool::may_be_shared(slot) {
        // `check_in` never pools such a connection; should one be found
        // anyway it is closed, not turned into the client's error.
        log::warn!("slot {index}: a connection that may not be shared was pooled; closing it");
        sockets.forget(index);
        pool::check_in(ctx.segment, index, me, Verdict::Clean);
        return Ok(None);
    }
    if let Some((client, user)) = req.prove {
        let proof = AuthProof::decode(&slot.proof());
        if let Err(e) = client_auth::check_pooled(client, user, &proof) {
            // Nothing reached the server: the connection goes back untouched.
            pool::check_in(ctx.segment, index, me, Verdict::Clean);
            return Err(e.into());
        }
    }
    let fd = match sockets.pooled(ctx, index) {
        Ok(fd) => fd,
        // The supervisor had no descriptor to answer with: the connection
        // is fine and stays pooled; this client is turned away.
        Err(e @ WorkerError::Management(ManagementError::OutOfDescriptors)) => {
            pool::check_in(ctx.segment, index, me, Verdict::Clean);
            return Err(e);
        }
        Err(e) => {
            // Without its socket the connection is of no use to anyone.
            log::warn!("slot {index}: {e}; closing it");
            pool::check_in(ctx.segment, index, me, Verdict::Dirty);
            return Ok(None);
        }
    };
    // SAFETY: the slot's socket, open while we hold the slot.
    let server = unsafe { BorrowedFd::borrow_raw(fd) };
    if !server::probe::quiet(server) {
        // Its backend ended (terminated, server restarted) or spoke out of
        // turn while idle: found for free, before the client's query could
        // fail on it. The supervisor closes it; another is acquired.
        log::info!(
            "slot {index}: pooled backend {} is gone; closing it",
            slot.backend_pid()
        );
        sockets.forget(index);
        pool::check_in(ctx.segment, index, me, Verdict::Dirty);
        return Ok(None);
    }
    if !attach::validate(ctx, sockets, index, me, fd) {
        return Ok(None);
    }
    Ok(Some(Held {
        index,
        fd,
        fresh: false,
    }))
}

fn open(
    ctx: &Context<'_>,
    sockets: &mut Sockets,
    me: i32,
    index: usize,
    req: &Request<'_>,
) -> Result<Held, WorkerError> {
    match attach::open_new(ctx, sockets, index, me, req.startup, req.login) {
        Ok(fd) => Ok(Held {
            index,
            fd,
            fresh: true,
        }),
        Err(e) => {
            pool::abandon_new(ctx.segment, index, me);
            Err(e)
        }
    }
}

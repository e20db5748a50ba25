//! The worker's side of transaction pooling: a server connection for each
//! transaction, with the client's parameters and cancel key moved along.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use super::attach::{self, Sockets};
use super::server_connect::Login;
use super::{client_auth::Admission, Context, WorkerError};
use crate::pipeline::params::{self, Params};
use crate::pipeline::prepared::{self, ServerStatements};
use crate::pipeline::transaction::Attach;
use crate::pool::{self, Acquired, PoolError, Want};
use crate::protocol::{sqlstate, ErrorResponse, StartupMessage};

pub struct WorkerAttach<'a> {
    pub ctx: &'a Context<'a>,
    pub me: i32,
    pub database: String,
    pub user: String,
    pub limit: Option<usize>,
    pub startup: &'a StartupMessage,
    pub admission: &'a Admission,
    pub sockets: Sockets,
    /// What the client expects the tracked parameters to be.
    pub desired: Params,
    /// Secret half of the client's cancel key.
    pub secret: i32,
    pub held: Option<usize>,
    pub statements: SlotStatements<'a>,
}

impl WorkerAttach<'_> {
    fn get(&mut self) -> Result<(usize, RawFd), WorkerError> {
        let want = Want {
            database: &self.database,
            user: &self.user,
            limit: self.limit,
        };
        let deadline = Instant::now() + self.ctx.config.main.blocking_timeout;
        let (index, fd) = loop {
            let got = pool::acquire(self.ctx.segment, want, self.me, deadline)?;
            match got {
                Acquired::Pooled(i) => match self.sockets.pooled(self.ctx, i) {
                    Ok(fd) => {
                        if !attach::validate(self.ctx, &mut self.sockets, i, self.me, fd) {
                            continue;
                        }
                        break (i, fd);
                    }
                    Err(e) => {
                        pool::discard(self.ctx.segment, i, self.me);
                        return Err(e);
                    }
                },
                Acquired::New(i) => {
                    // Mid-session the client cannot be asked for its password
                    // again: a new connection needs the vault, or a server
                    // that asks for none.
                    let login = match self.admission {
                        Admission::Vault { server_password } => Login::Password(server_password),
                        Admission::PassThrough { .. } => Login::Trust,
                    };
                    match attach::open_new(
                        self.ctx,
                        &mut self.sockets,
                        i,
                        self.me,
                        self.startup,
                        login,
                    ) {
                        Ok(fd) => break (i, fd),
                        Err(e) => {
                            pool::abandon_new(self.ctx.segment, i, self.me);
                            return Err(e);
                        }
                    }
                }
            }
        };
        let slot = &self.ctx.segment.slots()[index];
        // SAFETY: `fd` is the slot's socket, kept open by `self.sockets`
        // or by the inherited pooled range for as long as we hold the slot.
        let server = unsafe { BorrowedFd::borrow_raw(fd) };
        let synced = attach::sync_params(self.ctx, server, slot, &self.desired).and_then(|_| {
            super::io::set_nonblocking(server, true)
                .map_err(|e| WorkerError::ParameterSync(e.to_string()))
        });
        if let Err(e) = synced {
            self.sockets.forget(index);
            pool::discard(self.ctx.segment, index, self.me);
            return Err(e);
        }
        slot.set_client_key(self.secret);
        Ok((index, fd))
    }
}

/// The attached slot's record of prepared statements, seen through the
/// server-side names the rewriter uses.
pub struct SlotStatements<'a> {
    pub slot: Option<&'a crate::slot::Slot>,
}

impl ServerStatements for SlotStatements<'_> {
    fn contains(&self, server_name: &str) -> bool {
        match (self.slot, prepared::server_name_hash(server_name)) {
            (Some(slot), Some(h)) => slot.has_prepared(h),
            _ => false,
        }
    }

    fn insert(&mut self, server_name: &str) -> Option<String> {
        let (slot, h) = (self.slot?, prepared::server_name_hash(server_name)?);
        slot.add_prepared(h).map(prepared::server_name)
    }

    fn remove(&mut self, server_name: &str) {
        if let (Some(slot), Some(h)) = (self.slot, prepared::server_name_hash(server_name)) {
            slot.remove_prepared(h);
        }
    }

    fn clear(&mut self) {
        if let Some(slot) = self.slot {
            slot.clear_prepared();
        }
    }
}

impl Attach for WorkerAttach<'_> {
    fn attach(&mut self) -> Result<RawFd, ErrorResponse> {
        match self.get() {
            Ok((index, fd)) => {
                self.held = Some(index);
                self.statements.slot = Some(&self.ctx.segment.slots()[index]);
                Ok(fd)
            }
            Err(e) => {
                log::warn!("{}/{}: no server connection: {e}", self.user, self.database);
                Err(match e {
                    WorkerError::Pool(PoolError::Timeout(_)) => ErrorResponse::fatal(
                        sqlstate::TOO_MANY_CONNECTIONS,
                        "no server connection available: all are in use (blocking_timeout reached)",
                    ),
                    WorkerError::Pool(PoolError::ShuttingDown) => ErrorResponse::fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "the pooler is shutting down",
                    ),
                    other => ErrorResponse::fatal(sqlstate::CONNECTION_FAILURE, other.to_string()),
                })
            }
        }
    }

    fn detach(&mut self, clean: bool) {
        self.statements.slot = None;
        let Some(index) = self.held.take() else {
            return;
        };
        let slot = &self.ctx.segment.slots()[index];
        slot.set_client_key(0);
        if clean {
            pool::release(self.ctx.segment, index, self.me);
        } else {
            self.sockets.forget(index);
            pool::discard(self.ctx.segment, index, self.me);
        }
    }

    fn statements(&mut self) -> &mut dyn ServerStatements {
        &mut self.statements
    }

    fn parameter(&mut self, name: &str, value: &str) {
        self.desired.set(name, value);
        if let Some(index) = self.held {
            let slot = &self.ctx.segment.slots()[index];
            slot.set_startup(&params::startup_with(slot.startup(), name, value));
        }
    }
}

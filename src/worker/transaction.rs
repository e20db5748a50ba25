//! The worker's side of transaction pooling: a server connection for each
//! transaction, with the client's parameters and cancel key moved along.
//! A connection that may not be shared (relayed SCRAM login) is pinned: it
//! stays with its client for the whole session and is closed when the
//! client leaves.

use std::os::fd::{BorrowedFd, RawFd};

use super::acquire::{self, Held, Request};
use super::attach::Sockets;
use super::{Context, WorkerError};
use crate::auth::Admission;
use crate::pipeline::params::{self, Params};
use crate::pipeline::prepared::{self, ServerStatements};
use crate::pipeline::transaction::Attach;
use crate::pool::{self, Verdict, Want};
use crate::protocol::{sqlstate, ErrorResponse, StartupMessage};
use crate::server::Login;

pub struct WorkerAttach<'a> {
    pub ctx: &'a Context<'a>,
    pub me: i32,
    pub database: String,
    pub user: String,
    pub limit: Option<usize>,
    pub startup: &'a StartupMessage,
    pub admission: &'a Admission,
    pub sockets: Sockets,
    /// The tracked parameters the client named at start-up or has set
    /// since; the others are the attached connection's login values.
    pub desired: Params,
    /// Secret half of the client's cancel key.
    pub secret: i32,
    /// The connection attached now, if any.
    pub held: Option<usize>,
    /// A connection kept for this client between transactions.
    pub pinned: Option<Held>,
    pub statements: SlotStatements<'a>,
}

impl WorkerAttach<'_> {
    fn get(&mut self) -> Result<Held, WorkerError> {
        let held = match self.pinned {
            Some(held) => held,
            None => {
                // Mid-session the client cannot be asked for its password
                // again: a new connection needs the vault, or a server
                // that asks for none.
                let login = match self.admission {
                    Admission::Vault { server_password } => Login::Password(server_password),
                    Admission::PassThrough { .. } => Login::Trust,
                };
                let req = Request {
                    want: Want {
                        database: &self.database,
                        user: &self.user,
                        limit: self.limit,
                        settings: crate::server::settings::hash(
                            self.ctx.statement_key,
                            &self.startup.params,
                        ),
                    },
                    startup: self.startup,
                    login,
                    prove: None,
                    desired: &self.desired,
                };
                acquire::acquire(self.ctx, &mut self.sockets, self.me, &req)?
            }
        };
        // SAFETY: the slot's socket, open while we hold the slot (`Held`).
        let server = unsafe { BorrowedFd::borrow_raw(held.fd) };
        if let Err(e) = crate::fdio::set_nonblocking(server, true) {
            self.close(held.index);
            return Err(WorkerError::ClientProtocol(e.into()));
        }
        if !pool::may_be_shared(&self.ctx.segment.slots()[held.index]) {
            self.pinned = Some(held);
        }
        self.ctx.segment.slots()[held.index].set_client_key(self.secret);
        Ok(held)
    }

    fn close(&mut self, index: usize) {
        if self.pinned.is_some_and(|p| p.index == index) {
            self.pinned = None;
        }
        self.sockets.forget(index);
        pool::check_in(self.ctx.segment, index, self.me, Verdict::Dirty);
    }
}

impl Drop for WorkerAttach<'_> {
    /// The client left: a connection still attached is in no known state,
    /// and a pinned one goes with its client.
    fn drop(&mut self) {
        if let Some(index) = self.held.take() {
            self.ctx.segment.slots()[index].set_client_key(0);
            self.close(index);
        }
        if let Some(pinned) = self.pinned.take() {
            pool::check_in(self.ctx.segment, pinned.index, self.me, Verdict::Clean);
        }
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
            Ok(held) => {
                self.held = Some(held.index);
                self.statements.slot = Some(&self.ctx.segment.slots()[held.index]);
                Ok(held.fd)
            }
            Err(e) => {
                log::warn!("{}/{}: no server connection: {e}", self.user, self.database);
                Err(e.response().unwrap_or_else(|| {
                    ErrorResponse::fatal(sqlstate::CONNECTION_FAILURE, e.to_string())
                }))
            }
        }
    }

    fn detach(&mut self, clean: bool) {
        self.statements.slot = None;
        let Some(index) = self.held.take() else {
            return;
        };
        self.ctx.segment.slots()[index].set_client_key(0);
        if !clean {
            self.close(index);
        } else if self.pinned.is_none() {
            pool::check_in(self.ctx.segment, index, self.me, Verdict::Clean);
        }
    }

    fn statements(&mut self) -> &mut dyn ServerStatements {
        &mut self.statements
    }

    fn parameter(&mut self, name: &str, value: &str) {
        self.desired.set(name, value);
        if let Some(index) = self.held {
            let slot = &self.ctx.segment.slots()[index];
            slot.set_startup(&params::startup_with(&slot.startup(), name, value));
        }
    }
}

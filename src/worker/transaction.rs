//! The worker's side of transaction pooling: a server connection for each
//! transaction, with the client's parameters, settings and cancel key
//! moved along. A client's session-level settings are read from the
//! connection and reset when a transaction may have changed them, and set
//! again on the connection its next transaction gets
//! (`server::settings_follow`), so a connection goes back to the pool in
//! its login state. A connection that may not be shared (relayed SCRAM
//! login) is pinned: it stays with its client for the whole session and is
//! closed when the client leaves. So is one the client has left session
//! state on that cannot follow it (see `pipeline::session_sql`); that one
//! is reset with `DISCARD ALL` when the client leaves and goes back to the
//! pool.

use std::os::fd::RawFd;

use super::acquire::{self, Held, Request};
use super::attach::Sockets;
use super::{Context, WorkerError};
use crate::auth::Admission;
use crate::pipeline::prepared::{self, ServerStatements};
use crate::pipeline::session_sql::PinReason;
use crate::pipeline::transaction::Attach;
use crate::pool::{self, Verdict, Want};
use crate::protocol::{sqlstate, ErrorResponse, StartupMessage};
use crate::server::params::{self, Desired};
use crate::server::settings_follow::{self, ClientSettings};
use crate::server::Login;

pub struct WorkerAttach<'a> {
    pub ctx: &'a Context<'a>,
    pub me: i32,
    pub database: String,
    pub user: String,
    pub limit: Option<usize>,
    pub startup: &'a StartupMessage,
    pub admission: &'a Admission,
    pub sockets: &'a mut Sockets,
    /// The tracked parameters the client named at start-up or has set
    /// since; the others are the attached connection's login values.
    pub desired: Desired,
    /// The pool key of the client's login settings (`server::settings`).
    pub settings_key: u64,
    /// Secret half of the client's cancel key.
    pub secret: i32,
    /// The connection attached now, if any.
    pub held: Option<Held>,
    /// A connection kept for this client between transactions.
    pub pinned: Option<Held>,
    /// `pinned` holds session state of the client's (counted in the
    /// segment until the client leaves or the connection is lost).
    pub state_pinned: bool,
    /// The client's session-level settings as the server last reported
    /// them; set on every connection it is given.
    pub settings: ClientSettings,
    /// The transaction running may have changed them.
    pub settings_changed: bool,
    /// Qualified setting names the client has set or reset: placeholders
    /// the server is asked for by name.
    pub custom_names: Vec<String>,
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
                        settings: self.settings_key,
                    },
                    startup: self.startup,
                    login,
                    prove: None,
                    desired: &self.desired,
                };
                acquire::acquire(self.ctx, self.sockets, self.me, &req)?
            }
        };
        if !pool::may_be_shared(&self.ctx.segment.slots()[held.index]) {
            self.pinned = Some(held);
        }
        self.ctx.segment.slots()[held.index].set_client_key(self.secret);
        Ok(held)
    }

    fn close(&mut self, index: usize) {
        if self.pinned.is_some_and(|p| p.index == index) {
            self.pinned = None;
            self.unpinned();
        }
        self.sockets.forget(index);
        pool::check_in(self.ctx.segment, index, self.me, Verdict::Dirty);
    }

    /// Sets the client's settings on a connection just taken from the
    /// pool. One the server refuses fails the client's statement and is
    /// dropped from the record, as the server refused it; the connection is
    /// reset and given back.
    fn restore(&mut self, held: Held) -> Result<(), ErrorResponse> {
        let slot = &self.ctx.segment.slots()[held.index];
        let server = held.server();
        let timeout = super::attach::connect_timeout(self.ctx);
        let failure = match settings_follow::replay(server, slot, &self.settings, timeout) {
            Ok(None) => return Ok(()),
            Ok(Some(refused)) => {
                log::warn!(
                    "{}/{}: the server refused to set {} again ({}); dropped",
                    self.user,
                    self.database,
                    refused.names.join(", "),
                    refused.error.message
                );
                for name in &refused.names {
                    self.settings.remove(name);
                }
                let mut error = refused.error;
                error.severity = "ERROR".into();
                error.detail.get_or_insert_with(|| {
                    format!(
                        "The session setting {} could not be restored on a pooled connection and was dropped.",
                        refused.names.join(", ")
                    )
                });
                error
            }
            Err(e) => {
                log::warn!(
                    "{}/{}: setting the session settings on backend {} failed: {e}",
                    self.user,
                    self.database,
                    slot.backend_pid()
                );
                ErrorResponse::error(
                    sqlstate::CONNECTION_FAILURE,
                    format!("the session settings could not be restored: {e}"),
                )
            }
        };
        let verdict = match settings_follow::reset(server, slot, timeout) {
            Ok(()) => Verdict::Clean,
            Err(_) => {
                self.sockets.forget(held.index);
                Verdict::ResetFailed
            }
        };
        slot.set_client_key(0);
        pool::check_in(self.ctx.segment, held.index, self.me, verdict);
        Err(failure)
    }

    /// Reads the client's settings off the connection it leaves and
    /// returns the connection to its login state: how it may go back.
    fn release_settings(&mut self, held: Held) -> Verdict {
        self.settings_changed = false;
        let slot = &self.ctx.segment.slots()[held.index];
        let server = held.server();
        let timeout = super::attach::connect_timeout(self.ctx);
        match settings_follow::capture_and_reset(
            server,
            slot,
            &self.user,
            &self.custom_names,
            timeout,
        ) {
            Ok(settings) => {
                self.settings = settings;
                Verdict::Clean
            }
            Err(e) => {
                // The client's record stays as it was; the connection,
                // in an unknown state, is closed.
                log::warn!(
                    "{}/{}: reading and resetting the session settings of backend {} failed: {e}",
                    self.user,
                    self.database,
                    slot.backend_pid()
                );
                self.sockets.forget(held.index);
                Verdict::ResetFailed
            }
        }
    }

    fn unpinned(&mut self) {
        if std::mem::take(&mut self.state_pinned) {
            self.ctx.segment.pin_removed();
        }
    }
}

impl Drop for WorkerAttach<'_> {
    /// The client left: a connection still attached is in no known state;
    /// a pinned one that may not be shared goes with its client, one
    /// pinned by the client's session state is reset for the next.
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.ctx.segment.slots()[held.index].set_client_key(0);
            self.close(held.index);
        }
        if let Some(pinned) = self.pinned.take() {
            let slot = &self.ctx.segment.slots()[pinned.index];
            let verdict = if self.state_pinned && pool::may_be_shared(slot) {
                let server = pinned.server();
                let timeout = super::attach::connect_timeout(self.ctx);
                if crate::server::session::reset(server, slot, timeout) {
                    Verdict::Clean
                } else {
                    self.sockets.forget(pinned.index);
                    Verdict::ResetFailed
                }
            } else {
                Verdict::Clean
            };
            pool::check_in(self.ctx.segment, pinned.index, self.me, verdict);
        }
        self.unpinned();
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
        // A pinned connection keeps the client's settings on it.
        let from_pool = self.pinned.is_none();
        match self.get() {
            Ok(held) => {
                if from_pool && self.pinned.is_none() && !self.settings.is_empty() {
                    self.restore(held)?;
                }
                self.held = Some(held);
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
        let Some(held) = self.held.take() else {
            return;
        };
        let index = held.index;
        self.ctx.segment.slots()[index].set_client_key(0);
        if !clean {
            self.settings_changed = false;
            self.close(index);
        } else if self.pinned.is_none() {
            let verdict = if self.settings_changed || !self.settings.is_empty() {
                self.release_settings(held)
            } else {
                Verdict::Clean
            };
            pool::check_in(self.ctx.segment, index, self.me, verdict);
        }
    }

    fn statements(&mut self) -> &mut dyn ServerStatements {
        &mut self.statements
    }

    fn parameter(&mut self, name: &str, value: &str) {
        self.desired.set(name, value);
        if let Some(held) = self.held {
            let slot = &self.ctx.segment.slots()[held.index];
            slot.set_startup(&params::startup_with(&slot.startup(), name, value));
        }
    }

    /// A pinned connection keeps everything with its client, settings
    /// included, until the client leaves.
    fn watches(&self) -> bool {
        self.pinned.is_none()
    }

    fn keeps_connection(&self) -> bool {
        self.pinned.is_some()
    }

    fn settings_changed(&mut self, custom: &[String]) {
        if self.held.is_some() && self.pinned.is_none() {
            self.settings_changed = true;
            for name in custom {
                if self.custom_names.len() < settings_follow::MAX_CUSTOM
                    && !self.custom_names.contains(name)
                {
                    self.custom_names.push(name.clone());
                }
            }
        }
    }

    fn pin(&mut self, why: PinReason) {
        let Some(held) = self.held else {
            return;
        };
        if self.pinned.is_some() || !self.ctx.config.main.pin_session_state {
            return;
        }
        self.pinned = Some(held);
        self.state_pinned = true;
        self.ctx.segment.pin_added();
        log::info!(
            "{}/{}: keeps its connection (backend {}) until it leaves: {why}",
            self.user,
            self.database,
            self.ctx.segment.slots()[held.index].backend_pid()
        );
    }
}

//! One client's session: start-up and admission (`open`), a server
//! connection (`acquire`), the greeting (`greet`), the pipeline (`run`),
//! and the connection given back (`finish`).

use std::os::fd::BorrowedFd;
use std::time::Instant;

use super::acquire::{self, Held, Request};
use super::attach::{self, Sockets};
use super::transaction::{SlotStatements, WorkerAttach};
use super::{cancel, io, Context, Peer, WorkerError};
use crate::auth::client::{self as client_auth, Admission, AuthError};
use crate::auth::startup::{self as client_startup, ClientStart};
use crate::config::PipelineKind;
use crate::pipeline::prepared::Rewriter;
use crate::pipeline::{self, Outcome, SessionState};
use crate::pool::{self, CheckedIn, Verdict, Want};
use crate::protocol::{self, ProtocolError, StartupMessage};
use crate::server::params::{Desired, Params};
use crate::server::{self, Login};

pub struct Session<'a> {
    ctx: &'a Context<'a>,
    client: BorrowedFd<'a>,
    peer: &'a Peer,
    me: i32,
    startup: StartupMessage,
    admission: Admission,
    user: String,
    database: String,
    limit: Option<usize>,
    /// The process's pooled sockets, which outlive the client.
    sockets: &'a mut Sockets,
    held: Option<Held>,
    /// Secret half of the client's cancel key.
    secret: i32,
}

impl<'a> Session<'a> {
    /// Start-up and authentication. `None` when the client wanted nothing
    /// more (a cancel request) or was refused by a disabled database.
    pub fn open(
        ctx: &'a Context<'a>,
        client: BorrowedFd<'a>,
        peer: &'a Peer,
        sockets: &'a mut Sockets,
    ) -> Result<Option<Self>, WorkerError> {
        let Some(startup) = start_up(ctx, client, peer)? else {
            return Ok(None);
        };
        let user = startup.user().unwrap_or_default().to_string();
        let database = startup.database().to_string();
        if crate::management::disabled::refuse(ctx.segment, client, &database) {
            return Ok(None);
        }
        let admission =
            match client_auth::admit(ctx.credentials, client, peer.addr, &user, &database) {
                Ok(a) => a,
                Err(AuthError::Client(ProtocolError::Io(e)))
                    if e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    return Err(WorkerError::StartupTimeout(
                        ctx.config.main.authentication_timeout,
                    ))
                }
                Err(e) => return Err(e.into()),
            };
        let limit = ctx.config.limit_for(&database, &user).map(|(i, _)| i);
        Ok(Some(Session {
            ctx,
            client,
            peer,
            me: std::process::id() as i32,
            startup,
            admission,
            user,
            database,
            limit,
            sockets,
            held: None,
            secret: 0,
        }))
    }

    /// The connection the session starts on. A pass-through client proves
    /// its password before it is given a pooled one; a new one is opened
    /// with the client's own login.
    pub fn acquire(&mut self) -> Result<(), WorkerError> {
        let (login, prove) = match &self.admission {
            Admission::Vault { server_password } => (Login::Password(server_password), None),
            Admission::PassThrough { trusted } => (
                Login::Relay(self.client),
                (!trusted).then_some((self.client, self.user.as_str())),
            ),
        };
        let desired = Desired::new(Params::from_client(&self.startup.params));
        let req = Request {
            want: Want {
                database: &self.database,
                user: &self.user,
                limit: self.limit,
                settings: server::settings::hash(self.ctx.statement_key, &self.startup.params),
            },
            startup: &self.startup,
            login,
            prove,
            desired: &desired,
        };
        let held = acquire::acquire(self.ctx, self.sockets, self.me, &req)?;
        log::debug!(
            "{}: {}/{} on slot {} (backend {}, {})",
            self.peer,
            self.user,
            self.database,
            held.index,
            self.ctx.segment.slots()[held.index].backend_pid(),
            if held.fresh { "new" } else { "pooled" }
        );
        self.held = Some(held);
        Ok(())
    }

    /// AuthenticationOk, the server's parameters and a cancel key of ours:
    /// a secret of our own with, where the client keeps this connection
    /// for its session, the backend's real pid. The connection is attached
    /// by now, so the pid is the one the whole session runs on.
    pub fn greet(&mut self) -> Result<(), WorkerError> {
        let Some(held) = self.held else {
            return Ok(());
        };
        let slot = &self.ctx.segment.slots()[held.index];
        self.secret = match cancel::new_secret() {
            Ok(s) => s,
            Err(e) => {
                // Nothing was sent on the connection: it is clean.
                self.give_back(Verdict::Clean);
                return Err(e.into());
            }
        };
        let recorded = cancel::recorded_pid(self.kind(), slot);
        slot.set_client_key_for(recorded, self.secret);
        // What the server said while a connection opened for this client
        // started comes where PostgreSQL puts it: after AuthenticationOk,
        // before the parameters. A pooled connection's were its first
        // client's.
        let notices = self.sockets.take_startup_notices();
        let mut out = Vec::with_capacity(1024 + notices.len());
        protocol::authentication_ok(&mut out);
        if held.fresh {
            out.extend_from_slice(&notices);
        }
        let told = cancel::told_pid(recorded, self.me);
        cancel::startup_for_client(&slot.startup(), told, self.secret, &mut out);
        protocol::ready_for_query(&mut out, b'I');
        if let Err(e) = io::write_all(self.client, &out) {
            // The client left before its session began; the connection is
            // clean.
            self.give_back(Verdict::Clean);
            return Err(WorkerError::ClientProtocol(e.into()));
        }
        crate::process_title::set(&format!(
            "pgcorral: {}/{} {}",
            self.user, self.database, self.peer
        ));
        if self.ctx.config.main.log_connections {
            log::info!(
                "connection: {}/{} from {} (slot {})",
                self.user,
                self.database,
                self.peer,
                held.index
            );
        }
        Ok(())
    }

    /// The pipeline this session runs in; the greeting's cancel key
    /// depends on it.
    fn kind(&self) -> PipelineKind {
        pipeline::resolve(self.ctx.config.main.pipeline).unwrap_or(PipelineKind::Performance)
    }

    /// Runs the configured pipeline until the client leaves.
    pub fn run(mut self) -> Outcome {
        let main = &self.ctx.config.main;
        let connected = Instant::now();
        let kind = self.kind();
        let outcome = if kind == PipelineKind::Transaction {
            self.run_transactions()
        } else {
            self.run_session(kind)
        };
        super::log_outcome(self.peer, &outcome);
        if main.log_disconnections {
            super::log_disconnection(self.peer, &self.user, &self.database, &outcome, connected);
        }
        outcome
    }

    /// Performance and session pipelines: one connection for the session.
    fn run_session(&mut self, kind: PipelineKind) -> Outcome {
        let Some(held) = self.held else {
            return Outcome::AttachFailed;
        };
        let server = held.server();
        let idle_limit = self.ctx.config.main.disconnect_client;
        let (outcome, state) = super::run_pipeline(self.client, server, idle_limit);
        self.finish(kind, &outcome, &state);
        outcome
    }

    /// Gives the session's connection back, reset first where the pipeline
    /// leaves session state behind.
    fn finish(&mut self, kind: PipelineKind, outcome: &Outcome, state: &SessionState) {
        let Some(held) = self.held else {
            return;
        };
        let slot = &self.ctx.segment.slots()[held.index];
        let verdict = if !outcome.leaves_server_reusable(state) {
            Verdict::Dirty
        } else if kind == PipelineKind::Session && pool::may_be_shared(slot) {
            let server = held.server();
            if server::session::reset(server, slot, attach::connect_timeout(self.ctx)) {
                Verdict::Clean
            } else {
                Verdict::ResetFailed
            }
        } else {
            Verdict::Clean
        };
        let result = self.give_back(verdict);
        if result != CheckedIn::Kept {
            log::debug!(
                "{}: slot {} not kept: {result:?} ({outcome:?}, {state:?})",
                self.peer,
                held.index
            );
        }
    }

    /// Transaction pipeline: the first transaction takes a connection like
    /// every other one, unless this one may not be shared: then it stays
    /// with the client (pinned).
    fn run_transactions(&mut self) -> Outcome {
        let Some(held) = self.held.take() else {
            return Outcome::AttachFailed;
        };
        let slot = &self.ctx.segment.slots()[held.index];
        // What the client named; each attach adds the connection's login
        // values for the rest, never another client's current ones.
        let desired = Desired::new(Params::from_client(&self.startup.params));
        slot.set_client_key(0);
        let pinned = if pool::may_be_shared(slot) {
            pool::check_in(self.ctx.segment, held.index, self.me, Verdict::Clean);
            None
        } else {
            Some(held)
        };
        let main = &self.ctx.config.main;
        let attach = WorkerAttach {
            ctx: self.ctx,
            me: self.me,
            database: self.database.clone(),
            user: self.user.clone(),
            limit: self.limit,
            startup: &self.startup,
            admission: &self.admission,
            sockets: &mut *self.sockets,
            desired,
            settings_key: server::settings::hash(self.ctx.statement_key, &self.startup.params),
            secret: self.secret,
            held: None,
            pinned,
            state_pinned: false,
            settings: Default::default(),
            settings_changed: false,
            custom_names: Vec::new(),
            statements: SlotStatements { slot: None },
        };
        let rewriter = if main.max_prepared_statements > 0 {
            Rewriter::new(main.max_prepared_statements, self.ctx.statement_key)
        } else {
            Rewriter::pass_through()
        };
        super::run_transaction(self.client, attach, rewriter, main.disconnect_client)
    }

    fn give_back(&mut self, verdict: Verdict) -> CheckedIn {
        let Some(held) = self.held.take() else {
            return CheckedIn::NotHeld;
        };
        self.ctx.segment.slots()[held.index].set_client_key(0);
        if verdict != Verdict::Clean {
            self.sockets.forget(held.index);
        }
        pool::check_in(self.ctx.segment, held.index, self.me, verdict)
    }
}

impl Drop for Session<'_> {
    /// A session that ends early (an error on the way) leaves its
    /// connection in no known state.
    fn drop(&mut self) {
        self.give_back(Verdict::Dirty);
    }
}

/// Blocking start-up, bounded by `authentication_timeout`: the startup
/// packet, or a cancel request (routed here; then `None`).
fn start_up(
    ctx: &Context<'_>,
    client: BorrowedFd<'_>,
    peer: &Peer,
) -> Result<Option<StartupMessage>, WorkerError> {
    let startup_limit = ctx.config.main.authentication_timeout;
    io::set_nodelay(client);
    // Sockets from the listener are non-blocking; start-up is easier
    // blocking, bounded by authentication_timeout.
    let bounded = (!startup_limit.is_zero()).then_some(startup_limit);
    io::set_nonblocking(client, false).map_err(|e| WorkerError::ClientProtocol(e.into()))?;
    io::set_timeouts(client, bounded).map_err(|e| WorkerError::ClientProtocol(e.into()))?;
    let mut out = Vec::with_capacity(1024);
    let start = match client_startup::negotiate(client, &mut out) {
        Ok(s) => s,
        Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(WorkerError::StartupTimeout(startup_limit))
        }
        Err(e) => return Err(WorkerError::ClientProtocol(e)),
    };
    match start {
        ClientStart::Startup(s) => Ok(Some(s)),
        ClientStart::Cancel {
            process_id,
            secret_key,
        } => {
            // As PostgreSQL does, the sender learns nothing either way.
            let found = cancel::route(ctx.config, ctx.segment, process_id, secret_key);
            log::debug!(
                "{peer}: cancel request for {process_id} {}",
                if found {
                    "forwarded"
                } else {
                    "matched no session"
                }
            );
            Ok(None)
        }
    }
}

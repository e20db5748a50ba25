//! A worker serves one client, in a process the supervisor forked for it:
//! start-up, a slot, the pipeline, and the slot back (or thrown away).

pub mod attach;
pub mod auth_proof;
pub mod cancel;
pub mod client_auth;
pub mod client_startup;
pub mod io;
pub mod server_connect;
pub mod signals;
pub mod transaction;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::config::PipelineKind;
use crate::management::ManagementError;
use crate::pipeline;
use crate::pipeline::params::Params;
use crate::pipeline::performance::Performance;
use crate::pipeline::prepared::Rewriter;
use crate::pipeline::transaction::Transaction;
use crate::pipeline::Outcome;
use crate::pool::{self, Acquired, PoolError, Want};
use crate::pooled_sockets::PooledSockets;
use crate::protocol::{self, sqlstate, ErrorResponse, ProtocolError};
use crate::segment::Segment;
use attach::Sockets;
use auth_proof::AuthProof;
use client_auth::{Admission, AuthError, Credentials};
use client_startup::ClientStart;
use server_connect::{Login, ServerError};
use transaction::WorkerAttach;

/// Where a client came from: an address for TCP, none for the Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: Option<std::net::SocketAddr>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("[local]"),
        }
    }
}

/// What a worker inherits from the supervisor. Everything is borrowed from
/// the supervisor's memory, which the fork copied.
pub struct Context<'a> {
    pub config: &'a Config,
    pub segment: &'a Segment,
    pub sockets: &'a PooledSockets,
    pub management_path: &'a Path,
    pub credentials: &'a Credentials,
    /// Key of the prepared-statement name hash: made once by the supervisor
    /// so that every worker derives the same server-side names.
    pub statement_key: [u64; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("client start-up: {0}")]
    ClientProtocol(#[source] ProtocolError),
    #[error("client did not complete start-up within {0:?}")]
    StartupTimeout(Duration),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("handing the server socket to the supervisor: {0}")]
    Management(#[from] ManagementError),
    #[error("server start-up messages ({0} bytes) do not fit in a slot")]
    StartupTooLarge(usize),
    #[error("setting session parameters on the server: {0}")]
    ParameterSync(String),
}

impl WorkerError {
    /// The ErrorResponse the client gets, if any.
    fn response(&self) -> Option<ErrorResponse> {
        fn fatal(code: &str, message: impl Into<String>) -> ErrorResponse {
            ErrorResponse::fatal(code, message)
        }
        Some(match self {
            WorkerError::StartupTimeout(_) => return None,
            WorkerError::Auth(e) => return e.response(),
            WorkerError::ClientProtocol(ProtocolError::Eof | ProtocolError::Io(_)) => return None,
            WorkerError::ClientProtocol(e) => fatal(e.sqlstate(), e.to_string()),
            WorkerError::Pool(PoolError::Timeout(_)) => fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "no server connection available: all are in use (blocking_timeout reached)",
            ),
            WorkerError::Pool(PoolError::ShuttingDown) => {
                fatal(sqlstate::CANNOT_CONNECT_NOW, "the pooler is shutting down")
            }
            WorkerError::Server(ServerError::Rejected(e)) => e.clone(),
            WorkerError::Server(ServerError::AuthUnsupported(_)) => fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                self.to_string(),
            ),
            WorkerError::Server(ServerError::Connect { .. }) => fatal(
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH,
                "could not connect to the server",
            ),
            WorkerError::Server(_) => fatal(sqlstate::CONNECTION_FAILURE, self.to_string()),
            WorkerError::ParameterSync(_) => fatal(sqlstate::CONNECTION_FAILURE, self.to_string()),
            WorkerError::Management(_) | WorkerError::StartupTooLarge(_) => {
                fatal(sqlstate::INTERNAL_ERROR, self.to_string())
            }
        })
    }
}

/// Serves the client and returns the process exit status.
pub fn run(ctx: &Context<'_>, client: OwnedFd, peer: &Peer) -> i32 {
    signals::install(client.as_raw_fd());
    match serve(ctx, client.as_fd(), peer) {
        Ok(()) => 0,
        Err(e) => {
            match &e {
                WorkerError::ClientProtocol(ProtocolError::Eof) => {
                    log::debug!("{peer}: client left during start-up")
                }
                WorkerError::StartupTimeout(_) => log::warn!("{peer}: {e}"),
                _ => log::error!("{peer}: {e}"),
            }
            if let Some(resp) = e.response() {
                let mut out = Vec::new();
                resp.encode(&mut out);
                let _ = io::write_all(client.as_fd(), &out);
            }
            1
        }
    }
}

fn serve(ctx: &Context<'_>, client: BorrowedFd<'_>, peer: &Peer) -> Result<(), WorkerError> {
    let main = &ctx.config.main;
    io::set_nodelay(client);
    // Sockets from the listener are non-blocking; start-up is easier
    // blocking, bounded by authentication_timeout.
    let startup_limit = main.authentication_timeout;
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
    let startup = match start {
        ClientStart::Startup(s) => s,
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
            return Ok(());
        }
    };
    let user = startup.user().unwrap_or_default().to_string();
    let database = startup.database().to_string();
    if crate::management::disabled::refuse(ctx.segment, client, &database) {
        return Ok(());
    }
    let admission = match client_auth::admit(ctx.credentials, client, peer, &user, &database) {
        Ok(a) => a,
        Err(AuthError::Client(ProtocolError::Io(e)))
            if e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            return Err(WorkerError::StartupTimeout(startup_limit))
        }
        Err(e) => return Err(e.into()),
    };
    let me = std::process::id() as i32;
    let limit = ctx.config.limit_for(&database, &user).map(|(i, _)| i);
    let want = Want {
        database: &database,
        user: &user,
        limit,
        server: 0,
    };
    let deadline = Instant::now() + main.blocking_timeout;
    let mut sockets = Sockets::new();
    let (got, fd) = loop {
        let got = pool::acquire(ctx.segment, want, me, deadline)?;
        if let (Acquired::Pooled(i), Admission::PassThrough { trusted: false }) = (got, &admission)
        {
            let slot = &ctx.segment.slots()[i];
            let proof = AuthProof::decode(slot.proof());
            if let Err(e) = client_auth::check_pooled(client, &user, &proof) {
                // Nothing reached the server: the connection goes back untouched.
                if proof == AuthProof::NotReusable {
                    pool::discard(ctx.segment, i, me);
                } else {
                    pool::release(ctx.segment, i, me);
                }
                return Err(e.into());
            }
        }
        let fd = match got {
            Acquired::Pooled(i) => {
                let fd = sockets.pooled(ctx, i).inspect_err(|_| {
                    pool::discard(ctx.segment, i, me);
                })?;
                if !attach::validate(ctx, &mut sockets, i, me, fd) {
                    continue;
                }
                fd
            }
            Acquired::New(i) => {
                let login = match &admission {
                    Admission::Vault { server_password } => Login::Password(server_password),
                    Admission::PassThrough { .. } => Login::Relay(client),
                };
                attach::open_new(ctx, &mut sockets, i, me, &startup, login).inspect_err(|_| {
                    pool::abandon_new(ctx.segment, i, me);
                })?
            }
        };
        break (got, fd);
    };
    let slot_index = match got {
        Acquired::Pooled(i) | Acquired::New(i) => i,
    };
    let slot = &ctx.segment.slots()[slot_index];
    // SAFETY: `fd` is the slot's socket, kept open by `sockets` or by the
    // inherited pooled range while this worker holds the slot.
    let server = unsafe { BorrowedFd::borrow_raw(fd) };
    // A connection opened for this client already has its settings, and
    // what the server reports is what they came to; a pooled one must be
    // brought in line with what the client asked for.
    let desired = match got {
        Acquired::New(_) => Params::from_startup(slot.startup()),
        Acquired::Pooled(_) => {
            Params::from_client(&startup.params).or(&Params::from_startup(slot.startup()))
        }
    };
    if let Err(e) = attach::sync_params(ctx, server, slot, &desired) {
        pool::discard(ctx.segment, slot_index, me);
        return Err(e);
    }
    log::debug!(
        "{peer}: {user}/{database} on slot {slot_index} (backend {}, {})",
        slot.backend_pid(),
        if matches!(got, Acquired::Pooled(_)) {
            "pooled"
        } else {
            "new"
        }
    );

    let secret = cancel::new_secret();
    slot.set_client_key(secret);
    out.clear();
    protocol::authentication_ok(&mut out);
    cancel::startup_for_client(slot.startup(), me, secret, &mut out);
    protocol::ready_for_query(&mut out, b'I');
    if let Err(e) = io::write_all(client, &out) {
        // The client left before its session began; the connection is clean.
        slot.set_client_key(0);
        pool::release(ctx.segment, slot_index, me);
        return Err(WorkerError::ClientProtocol(e.into()));
    }

    crate::process_title::set(&format!("pgcorral: {user}/{database} {peer}"));
    if main.log_connections {
        log::info!("connection: {user}/{database} from {peer} (slot {slot_index})");
    }
    let connected = Instant::now();
    let kind = pipeline::resolve(main.pipeline).unwrap_or(PipelineKind::Performance);
    if kind == PipelineKind::Transaction {
        // The first transaction takes a connection like every other one.
        let desired = Params::from_startup(slot.startup()).or(&desired);
        slot.set_client_key(0);
        pool::release(ctx.segment, slot_index, me);
        let attach = WorkerAttach {
            ctx,
            me,
            database: database.clone(),
            user: user.clone(),
            limit,
            startup: &startup,
            admission: &admission,
            sockets,
            desired,
            secret,
            held: None,
            statements: transaction::SlotStatements { slot: None },
        };
        let rewriter = if main.max_prepared_statements > 0 {
            Rewriter::new(main.max_prepared_statements, ctx.statement_key)
        } else {
            Rewriter::pass_through()
        };
        let outcome = run_transaction(client, attach, rewriter, main.disconnect_client);
        log_outcome(peer, &outcome);
        if main.log_disconnections {
            log_disconnection(peer, &user, &database, &outcome, connected);
        }
        return Ok(());
    }

    let (outcome, state) = run_pipeline(client, server, main.disconnect_client);
    log_outcome(peer, &outcome);
    if main.log_disconnections {
        log_disconnection(peer, &user, &database, &outcome, connected);
    }
    let mut reusable = outcome.leaves_server_reusable(&state)
        && AuthProof::decode(slot.proof()) != AuthProof::NotReusable;
    if reusable && kind == PipelineKind::Session {
        reusable = attach::reset(ctx, server, slot);
    }
    slot.set_client_key(0);
    if reusable {
        pool::release(ctx.segment, slot_index, me);
    } else {
        log::debug!("{peer}: slot {slot_index} not reusable ({outcome:?}, {state:?})");
        pool::discard(ctx.segment, slot_index, me);
    }
    drop(sockets);
    Ok(())
}

fn log_disconnection(peer: &Peer, user: &str, database: &str, outcome: &Outcome, since: Instant) {
    let how = match outcome {
        Outcome::ClientTerminated => "client terminated",
        Outcome::ClientClosed => "client closed the connection",
        Outcome::ServerClosed => "server closed the connection",
        Outcome::Shutdown => "shutdown",
        Outcome::AttachFailed => "no server connection",
        Outcome::IdleTimeout => "idle timeout",
        Outcome::ClientProtocol(_) | Outcome::ServerProtocol(_) => "protocol error",
        Outcome::Refused(_) => "refused",
        Outcome::ServerLost(_) => "server out of step",
        Outcome::Io(_) => "i/o error",
    };
    log::info!(
        "disconnection: {user}/{database} from {peer} after {:.3}s ({how})",
        since.elapsed().as_secs_f64()
    );
}

fn log_outcome(peer: &Peer, outcome: &Outcome) {
    match outcome {
        Outcome::ClientTerminated
        | Outcome::ClientClosed
        | Outcome::ServerClosed
        | Outcome::Shutdown
        | Outcome::AttachFailed => {}
        Outcome::IdleTimeout => {
            log::info!("{peer}: idle longer than disconnect_client; disconnected")
        }
        other => log::warn!("{peer}: session ended: {other:?}"),
    }
}

fn run_transaction(
    client: BorrowedFd<'_>,
    attach: WorkerAttach<'_>,
    rewriter: Rewriter,
    idle_limit: Duration,
) -> Outcome {
    if let Err(e) = io::set_nonblocking(client, true) {
        return Outcome::Io(e);
    }
    signals::enter_pipeline();
    let mut p = Transaction::new(
        client,
        attach,
        rewriter,
        &signals::STOP,
        signals::wait_mask(),
    )
    .with_idle_limit(Some(idle_limit));
    let outcome = p.run();
    tell_client(client, &outcome, p.server_fatal, p.client_at_boundary());
    signals::leave_pipeline();
    outcome
}

/// What the client is told when its session ends for a reason of ours.
fn tell_client(client: BorrowedFd<'_>, outcome: &Outcome, server_fatal: bool, at_boundary: bool) {
    let msg = match outcome {
        Outcome::Shutdown => Some(signals::shutdown_message().to_vec()),
        Outcome::Refused(e) => {
            let mut out = Vec::new();
            e.encode(&mut out);
            Some(out)
        }
        Outcome::ServerLost(_) => {
            let mut out = Vec::new();
            ErrorResponse::fatal(
                sqlstate::CONNECTION_FAILURE,
                "lost track of the server's answers; the connection was closed",
            )
            .encode(&mut out);
            Some(out)
        }
        Outcome::IdleTimeout => {
            let mut out = Vec::new();
            ErrorResponse::fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                "terminating connection due to idle-session timeout (disconnect_client)",
            )
            .encode(&mut out);
            Some(out)
        }
        Outcome::ClientProtocol(e) => {
            let mut out = Vec::new();
            ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()).encode(&mut out);
            Some(out)
        }
        Outcome::ServerClosed if !server_fatal => {
            let mut out = Vec::new();
            ErrorResponse::fatal(
                sqlstate::CONNECTION_FAILURE,
                "the server closed the connection unexpectedly",
            )
            .encode(&mut out);
            Some(out)
        }
        _ => None,
    };
    if let (Some(msg), true) = (msg, at_boundary) {
        let _ = io::set_nonblocking(client, false);
        let _ = io::set_timeouts(client, Some(Duration::from_secs(1)));
        let _ = io::write_all(client, &msg);
    }
}

fn run_pipeline(
    client: BorrowedFd<'_>,
    server: BorrowedFd<'_>,
    idle_limit: Duration,
) -> (Outcome, crate::pipeline::SessionState) {
    if let Err(e) =
        io::set_nonblocking(client, true).and_then(|_| io::set_nonblocking(server, true))
    {
        return (Outcome::Io(e), Default::default());
    }
    signals::enter_pipeline();
    let mut p = Performance::new(client, server, &signals::STOP, signals::wait_mask())
        .with_idle_limit(Some(idle_limit));
    let outcome = p.run();
    tell_client(
        client,
        &outcome,
        p.state.server_fatal,
        p.client_at_boundary(),
    );
    let state = p.state.clone();
    signals::leave_pipeline();
    // Pooled sockets are shared with the supervisor (same open file):
    // leave them blocking as the next worker expects none of our flags.
    let _ = io::set_nonblocking(server, false);
    (outcome, state)
}

//! A worker serves one client, in a process the supervisor forked for it:
//! start-up, a slot, the pipeline, and the slot back (or thrown away).

pub mod auth_proof;
pub mod cancel;
pub mod client_auth;
pub mod client_startup;
pub mod io;
pub mod server_connect;
pub mod signals;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::management::client::ManagementClient;
use crate::management::ManagementError;
use crate::pipeline::performance::Performance;
use crate::pipeline::Outcome;
use crate::pool::{self, Acquired, PoolError, Want};
use crate::pooled_sockets::PooledSockets;
use crate::protocol::{self, sqlstate, ErrorResponse, ProtocolError};
use crate::segment::Segment;
use auth_proof::AuthProof;
use client_auth::{Admission, AuthError, Credentials};
use client_startup::ClientStart;
use server_connect::{Login, ServerError};

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
    let want = Want {
        database: &database,
        user: &user,
        limit: ctx.config.limit_for(&database, &user).map(|(i, _)| i),
        server: 0,
    };
    let deadline = Instant::now() + main.blocking_timeout;
    let got = pool::acquire(ctx.segment, want, me, deadline)?;
    let slot_index = match got {
        Acquired::Pooled(i) | Acquired::New(i) => i,
    };
    let slot = &ctx.segment.slots()[slot_index];

    // `owned` keeps a socket this worker opened or was sent; an inherited
    // pooled socket is borrowed from the range the fork copied.
    if let (Acquired::Pooled(i), Admission::PassThrough { trusted: false }) = (got, &admission) {
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
    let owned: Option<OwnedFd> = match got {
        Acquired::Pooled(i) if ctx.sockets.get(i, slot.generation()).is_some() => None,
        Acquired::Pooled(i) => match fetch_socket(ctx, i) {
            Ok(fd) => Some(fd),
            Err(e) => {
                pool::discard(ctx.segment, i, me);
                return Err(e);
            }
        },
        Acquired::New(i) => match open_new(ctx, i, me, &startup, &admission, client) {
            Ok(fd) => Some(fd),
            Err(e) => {
                pool::abandon_new(ctx.segment, i, me);
                return Err(e);
            }
        },
    };
    let server: BorrowedFd<'_> = match (&owned, ctx.sockets.get(slot_index, slot.generation())) {
        (Some(fd), _) => fd.as_fd(),
        (None, Some(fd)) => fd,
        (None, None) => {
            pool::discard(ctx.segment, slot_index, me);
            return Err(
                ManagementError::Refused(format!("slot {slot_index}: socket vanished")).into(),
            );
        }
    };
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

    let outcome = run_pipeline(client, server);
    let reusable = outcome.0.leaves_server_reusable(&outcome.1)
        && AuthProof::decode(slot.proof()) != AuthProof::NotReusable;
    match &outcome.0 {
        Outcome::ClientTerminated | Outcome::ClientClosed | Outcome::ServerClosed => {}
        Outcome::Shutdown => {}
        other => log::warn!("{peer}: session ended: {other:?}"),
    }
    slot.set_client_key(0);
    if reusable {
        pool::release(ctx.segment, slot_index, me);
    } else {
        log::debug!(
            "{peer}: slot {slot_index} not reusable ({:?}, {:?})",
            outcome.0,
            outcome.1
        );
        pool::discard(ctx.segment, slot_index, me);
    }
    drop(owned);
    Ok(())
}

fn run_pipeline(
    client: BorrowedFd<'_>,
    server: BorrowedFd<'_>,
) -> (Outcome, crate::pipeline::SessionState) {
    if let Err(e) =
        io::set_nonblocking(client, true).and_then(|_| io::set_nonblocking(server, true))
    {
        return (Outcome::Io(e), Default::default());
    }
    signals::enter_pipeline();
    let mut p = Performance::new(client, server, &signals::STOP, signals::wait_mask());
    let outcome = p.run();
    let tell_client = match &outcome {
        Outcome::Shutdown => Some(signals::shutdown_message().to_vec()),
        Outcome::ClientProtocol(e) => {
            let mut out = Vec::new();
            ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()).encode(&mut out);
            Some(out)
        }
        Outcome::ServerClosed if !p.state.server_fatal => {
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
    if let Some(msg) = tell_client {
        if p.client_at_boundary() {
            let _ = io::set_nonblocking(client, false);
            let _ = io::set_timeouts(client, Some(Duration::from_secs(1)));
            let _ = io::write_all(client, &msg);
        }
    }
    let state = p.state.clone();
    signals::leave_pipeline();
    // Pooled sockets are shared with the supervisor (same open file):
    // leave them blocking as the next worker expects none of our flags.
    let _ = io::set_nonblocking(server, false);
    (outcome, state)
}

/// Asks the supervisor for a copy of a pooled socket this worker did not
/// inherit (it was pooled after this worker was forked).
fn fetch_socket(ctx: &Context<'_>, index: usize) -> Result<OwnedFd, WorkerError> {
    let mut mgmt = ManagementClient::connect(ctx.management_path)?;
    let (fd, generation) = mgmt.get_socket(index)?;
    let current = ctx.segment.slots()[index].generation();
    if generation != current {
        return Err(ManagementError::Refused(format!(
            "slot {index}: supervisor has generation {generation}, slot has {current}"
        ))
        .into());
    }
    Ok(fd)
}

/// Connects a new server connection for an INIT slot, records it in the
/// slot, hands its socket to the supervisor and publishes the slot.
fn open_new(
    ctx: &Context<'_>,
    index: usize,
    me: i32,
    startup: &protocol::StartupMessage,
    admission: &Admission,
    client: BorrowedFd<'_>,
) -> Result<OwnedFd, WorkerError> {
    let slot = &ctx.segment.slots()[index];
    let timeout = connect_timeout(ctx);
    let login = match admission {
        Admission::Vault { server_password } => Login::Password(server_password),
        Admission::PassThrough { .. } => Login::Relay(client),
    };
    let user = startup.user().unwrap_or_default();
    let (conn, proof) = server_connect::connect(
        ctx.config.primary_server(),
        user,
        startup.database(),
        &startup.params,
        login,
        timeout,
    )?;
    let proof = match admission {
        // pgcorral checked the client itself; later vault clients are too.
        Admission::Vault { .. } => AuthProof::Nothing,
        Admission::PassThrough { .. } => proof,
    };
    if !slot.set_startup(&conn.startup) {
        return Err(WorkerError::StartupTooLarge(conn.startup.len()));
    }
    slot.set_proof(&proof.encode());
    slot.set_backend(conn.backend_pid, conn.backend_key);
    let generation = slot.bump_generation();
    // The supervisor must hold the socket before the slot can become FREE:
    // another worker may take it the moment it is, and ask for the socket.
    let mut mgmt = ManagementClient::connect(ctx.management_path)?;
    mgmt.transfer(index, generation, conn.fd.as_fd())?;
    if !pool::publish_new(ctx.segment, index, me) {
        return Err(ManagementError::Refused(format!("slot {index} was taken from us")).into());
    }
    Ok(conn.fd)
}

fn connect_timeout(ctx: &Context<'_>) -> Duration {
    let t = ctx.config.main.authentication_timeout;
    if t.is_zero() {
        Duration::from_secs(10)
    } else {
        t.max(Duration::from_secs(1))
    }
}

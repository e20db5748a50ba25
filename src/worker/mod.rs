//! A worker serves one client at a time, in a process the supervisor
//! forked: start-up, a slot, the pipeline, and the slot back (or thrown
//! away). `reuse` takes it from one client to the next.

pub mod acquire;
pub mod attach;
pub mod cancel;
pub mod reuse;
pub mod session;
pub mod signals;
pub mod transaction;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::auth::{AuthError, Credentials};
use crate::config::Config;
use crate::fdio as io;
use crate::management::ManagementError;
use crate::pipeline::performance::Performance;
use crate::pipeline::prepared::Rewriter;
use crate::pipeline::transaction::Transaction;
use crate::pipeline::Outcome;
use crate::pool::PoolError;
use crate::pooled_sockets::PooledSockets;
use crate::protocol::{sqlstate, ErrorResponse, ProtocolError};
use crate::segment::Segment;
use crate::server::session::SessionError;
use crate::server::{FillError, ServerError};
use attach::Sockets;
use session::Session;
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
    /// Key of `crate::hash`: made once by the supervisor so that every
    /// worker derives the same server-side statement names and the same
    /// sum of a client's login settings.
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
    #[error("getting the server socket from the supervisor: {0}")]
    Management(#[from] ManagementError),
    #[error(transparent)]
    Fill(#[from] FillError),
    #[error("setting session parameters on the server: {0}")]
    ParameterSync(#[source] SessionError),
    #[error("cancel key: {0}")]
    Random(#[from] crate::random::RandomError),
}

impl WorkerError {
    /// The ErrorResponse the client gets, if any: the one mapping for a
    /// session that cannot start and for a transaction that cannot attach.
    /// A connection asked for during shutdown gets 57P03, as PostgreSQL
    /// answers a connection attempt while it shuts down; a server's refusal
    /// is passed on as the server sent it.
    pub fn response(&self) -> Option<ErrorResponse> {
        fn fatal(code: &str, message: impl Into<String>) -> ErrorResponse {
            ErrorResponse::fatal(code, message)
        }
        Some(match self {
            WorkerError::StartupTimeout(_) => return None,
            WorkerError::Auth(e) => return e.response(),
            WorkerError::ClientProtocol(ProtocolError::Eof | ProtocolError::Io(_)) => return None,
            // PostgreSQL's words, which name the range it does speak.
            WorkerError::ClientProtocol(e @ ProtocolError::UnsupportedVersion { .. }) => {
                fatal(e.sqlstate(), format!("{e}: server supports 3.0 to 3.0"))
            }
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
            // As PostgreSQL answers a bad setting in a startup packet: the
            // server's own error, ending the connection.
            WorkerError::ParameterSync(SessionError::Refused { error, .. }) => {
                let mut e = (**error).clone();
                e.severity = "FATAL".into();
                e
            }
            WorkerError::ParameterSync(_) => fatal(sqlstate::CONNECTION_FAILURE, self.to_string()),
            // The supervisor had no descriptor for the request: as for a
            // client it turns away at the door.
            WorkerError::Management(ManagementError::OutOfDescriptors)
            | WorkerError::Fill(FillError::Management(ManagementError::OutOfDescriptors)) => fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already (pgcorral is out of descriptors)",
            ),
            WorkerError::Management(_) | WorkerError::Fill(_) | WorkerError::Random(_) => {
                fatal(sqlstate::INTERNAL_ERROR, self.to_string())
            }
        })
    }
}

/// How a client's service ended.
pub struct Ended {
    /// The exit status a worker that served only this client returns.
    pub status: i32,
    /// The pipeline's outcome, when the client got as far as one.
    pub outcome: Option<Outcome>,
}

/// Serves one client; `sockets` are the pooled sockets this process has
/// collected so far. `signals::install` has run in this process.
pub fn run(ctx: &Context<'_>, client: OwnedFd, peer: &Peer, sockets: &mut Sockets) -> Ended {
    signals::farewell_to(client.as_raw_fd());
    crate::process_title::set(&format!("pgcorral: {peer} start-up"));
    let ended = match serve(ctx, client.as_fd(), peer, sockets) {
        Ok(outcome) => Ended { status: 0, outcome },
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
            Ended {
                status: 1,
                outcome: None,
            }
        }
    };
    // The number is free once the client is closed: SIGQUIT must never
    // send a goodbye to whatever gets it next.
    signals::farewell_to(-1);
    ended
}

fn serve(
    ctx: &Context<'_>,
    client: BorrowedFd<'_>,
    peer: &Peer,
    sockets: &mut Sockets,
) -> Result<Option<Outcome>, WorkerError> {
    let Some(mut session) = Session::open(ctx, client, peer, sockets)? else {
        return Ok(None);
    };
    session.acquire()?;
    session.greet()?;
    Ok(Some(session.run()))
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
    // The pipelines never wait in a read or write, whatever the sockets'
    // flags (`sys::io`): no flag is switched for them.
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
    (outcome, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_to_get_a_connection_map_to_what_postgresql_would_say() {
        let code = |e: WorkerError| e.response().map(|r| r.code);
        assert_eq!(
            code(PoolError::ShuttingDown.into()).as_deref(),
            Some(sqlstate::CANNOT_CONNECT_NOW)
        );
        assert_eq!(
            code(PoolError::Timeout(Duration::from_secs(1)).into()).as_deref(),
            Some(sqlstate::TOO_MANY_CONNECTIONS)
        );
        let refusal = ErrorResponse::fatal("28P01", "password authentication failed");
        let passed = WorkerError::from(ServerError::Rejected(refusal.clone())).response();
        assert_eq!(passed, Some(refusal), "passed on as the server sent it");
        assert_eq!(
            code(WorkerError::StartupTimeout(Duration::from_secs(1))),
            None
        );
        assert_eq!(
            code(ManagementError::OutOfDescriptors.into()).as_deref(),
            Some(sqlstate::TOO_MANY_CONNECTIONS)
        );
    }
}

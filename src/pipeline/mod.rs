//! Pipelines: what a worker does with the bytes between its client and the
//! server connection it was given.

pub mod performance;
pub mod prepared;
pub mod relay;
pub mod responses;
pub mod session_sql;
pub mod session_state;
pub mod transaction;

pub use session_state::SessionState;

use crate::config::PipelineKind;
use crate::protocol::framer::FrameError;

/// Why a pipeline stopped.
#[derive(Debug)]
pub enum Outcome {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its socket.
    ClientClosed,
    /// The server closed the connection (after a FATAL, or not).
    ServerClosed,
    /// The client broke message framing.
    ClientProtocol(FrameError),
    /// The server broke message framing.
    ServerProtocol(FrameError),
    /// A socket error other than a close.
    Io(std::io::Error),
    /// The worker was told to end its client (SIGQUIT).
    Shutdown,
    /// No server connection could be had for the client's next
    /// transaction; the client was told why.
    AttachFailed,
    /// The client sat idle, outside a transaction, longer than
    /// `disconnect_client`.
    IdleTimeout,
    /// pgcorral refused a client message; the client is told this.
    Refused(crate::protocol::ErrorResponse),
    /// The server's answers could not be matched to requests any more.
    ServerLost(String),
}

impl Outcome {
    /// Whether the client's end leaves the server connection fit for the
    /// next client, given what the pipeline saw.
    pub fn leaves_server_reusable(&self, state: &SessionState) -> bool {
        matches!(
            self,
            Outcome::ClientTerminated | Outcome::ClientClosed | Outcome::IdleTimeout
        ) && state.is_clean()
    }
}

/// The pipeline a configuration's `pipeline` key selects. `auto` picks the
/// performance pipeline, as pgagroal does when no TLS is configured: it is
/// the fastest and changes nothing in the session.
pub fn resolve(kind: PipelineKind) -> Result<PipelineKind, String> {
    match kind {
        PipelineKind::Auto => Ok(PipelineKind::Performance),
        other => Ok(other),
    }
}

/// How long the pipeline's wait may last: until `limit` only while the
/// session is idle (nothing in flight, outside a transaction, nothing
/// buffered), else for ever. A timeout means the client sat idle that long.
#[inline]
pub fn idle_wait(limit: Option<std::time::Duration>, idle: bool) -> Option<std::time::Duration> {
    limit.filter(|_| idle)
}

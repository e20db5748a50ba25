//! Pipelines: what a worker does with the bytes between its client and the
//! server connection it was given.

pub mod performance;
pub mod relay;
pub mod session_state;

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
}

impl Outcome {
    /// Whether the client's end leaves the server connection fit for the
    /// next client, given what the pipeline saw.
    pub fn leaves_server_reusable(&self, state: &SessionState) -> bool {
        matches!(self, Outcome::ClientTerminated | Outcome::ClientClosed) && state.is_clean()
    }
}

/// The pipeline a configuration's `pipeline` key selects. `auto` picks the
/// performance pipeline, the only one built so far.
pub fn resolve(kind: PipelineKind) -> Result<PipelineKind, String> {
    match kind {
        PipelineKind::Auto | PipelineKind::Performance => Ok(PipelineKind::Performance),
        other => Err(format!(
            "pipeline {other:?} is not available in this version; use \"performance\" or \"auto\""
        )),
    }
}

//! Pipelines: what a worker does with the bytes between its client and the
//! server connection it was given.

pub mod params;
pub mod performance;
pub mod prepared;
pub mod relay;
pub mod responses;
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

/// How long `ppoll` may wait: until `limit` only while the session is idle
/// (nothing in flight, outside a transaction, nothing buffered), else for
/// ever. A timeout means the client sat idle that long.
pub fn idle_wait(limit: Option<std::time::Duration>, idle: bool) -> Option<libc::timespec> {
    let limit = limit.filter(|_| idle)?;
    Some(libc::timespec {
        tv_sec: limit.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    })
}

/// Writes a whole message to a non-blocking socket, waiting for room; used
/// for the few messages pgcorral itself sends mid-session.
pub fn relay_write_blocking(fd: std::os::fd::BorrowedFd<'_>, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut sent = 0;
    while sent < bytes.len() {
        // SAFETY: sending from a live buffer; MSG_NOSIGNAL as elsewhere.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes[sent..].as_ptr() as *const libc::c_void,
                bytes.len() - sent,
                libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            sent += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: polling one live descriptor, bounded wait.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

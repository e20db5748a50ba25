//! Testing an idle pooled connection: an empty simple Query (`;`), which
//! PostgreSQL answers with EmptyQueryResponse and ReadyForQuery without
//! touching any table or the session's state.
//!
//! The probe never changes the socket's flags: pooled sockets are one open
//! file shared by the supervisor, every worker that inherited them and the
//! helper probing them, so it uses `poll` with a deadline and
//! `MSG_DONTWAIT` instead of `O_NONBLOCK` or `SO_RCVTIMEO`.
//!
//! `probe` runs in a forked helper (background validation) and can run in a
//! worker before it uses a pooled connection (foreground validation); never
//! in the supervisor, which must not wait on PostgreSQL.
//!
//! `quiet` is the free check: a zero-timeout `poll`, no round trip. A
//! worker runs it on every pooled connection before use, and the
//! supervisor on an idle connection whose socket woke it.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::protocol::backend::parse_ready_for_query;
use crate::protocol::framer::{FrameError, Header, HEADER_LEN};
use crate::protocol::tag::backend;
use crate::protocol::{ErrorResponse, ProtocolError};
use crate::sys;
use crate::sys::poll::{Events, Woke};

/// The simple Query message `;`.
const EMPTY_QUERY: [u8; 7] = [b'Q', 0, 0, 0, 6, b';', 0];

/// Messages PostgreSQL may send on an idle connection or in answer to the
/// probe are small; a bigger one means the stream is not where we think.
const MAX_MESSAGE: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server reported an error: {0}")]
    ServerError(ErrorResponse),
    #[error("unexpected message '{}' from the server", *.0 as char)]
    Unexpected(u8),
    #[error("the server is not idle after the probe (status '{}')", *.0 as char)]
    NotIdle(u8),
    /// A header no idle PostgreSQL connection sends (an impossible or
    /// oversized length): the stream is out of step.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A message whose body does not parse.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Whether an idle connection has nothing to say. PostgreSQL sends nothing
/// unasked to an idle session that is alive and in step; readable data (the
/// FATAL of `pg_terminate_backend` or of a server shutdown), end of stream
/// or a hang-up mean it is gone or out of step. Never waits, never reads.
pub fn quiet(fd: BorrowedFd<'_>) -> bool {
    loop {
        // POLLIN covers end of stream; hang-up and errors are always reported.
        match sys::poll::wait_one(fd, Events::POLLIN, Some(Duration::ZERO), None) {
            Ok(Woke::TimedOut) => return true,
            // Some event (data, end of stream, error).
            Ok(Woke::Ready(_)) => return false,
            Ok(Woke::Interrupted) => continue,
            // A descriptor poll cannot even look at is no connection.
            Err(_) => return false,
        }
    }
}

/// Sends `;` on an idle connection and reads the answer up to ReadyForQuery
/// with status `I`, within `timeout`. Asynchronous messages (notices,
/// parameter changes, notifications) are skipped. Ok means the connection
/// is alive and idle, and exactly at a message boundary again.
pub fn probe(fd: BorrowedFd<'_>, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    // A message that arrived unasked before the probe (the FATAL of
    // pg_terminate_backend, say) is read first and fails it.
    send_all(fd, &EMPTY_QUERY, deadline, timeout)?;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut saw_empty = false;
    loop {
        // Every complete message in the buffer.
        while let Some(header) = Header::peek(&buf, MAX_MESSAGE)? {
            let total = header.frame_len();
            let Some(body) = buf.get(HEADER_LEN..total) else {
                break;
            };
            match header.tag {
                backend::EMPTY_QUERY_RESPONSE => saw_empty = true,
                backend::READY_FOR_QUERY => {
                    let status = parse_ready_for_query(body)?;
                    if !saw_empty {
                        return Err(ProbeError::Unexpected(header.tag));
                    }
                    if status != b'I' {
                        return Err(ProbeError::NotIdle(status));
                    }
                    if let Some(&next) = buf.get(total) {
                        // Bytes after our ReadyForQuery were not asked for.
                        return Err(ProbeError::Unexpected(next));
                    }
                    return Ok(());
                }
                backend::ERROR_RESPONSE => {
                    return Err(ProbeError::ServerError(ErrorResponse::parse(body)?));
                }
                backend::NOTICE_RESPONSE
                | backend::PARAMETER_STATUS
                | backend::NOTIFICATION_RESPONSE => {}
                other => return Err(ProbeError::Unexpected(other)),
            }
            buf.drain(..total);
        }
        recv_some(fd, &mut buf, deadline, timeout)?;
    }
}

/// What is left of the probe's time, or its timeout error.
fn left(deadline: Instant, timeout: Duration) -> Result<Duration, ProbeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ProbeError::Timeout(timeout));
    }
    Ok(left)
}

fn io_error(e: io::Error, timeout: Duration) -> ProbeError {
    match e.kind() {
        io::ErrorKind::TimedOut => ProbeError::Timeout(timeout),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ProbeError::Closed,
        _ => e.into(),
    }
}

fn send_all(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ProbeError> {
    sys::io::send_all_within(fd, bytes, left(deadline, timeout)?).map_err(|e| io_error(e, timeout))
}

/// Appends what arrives next to `buf`.
fn recv_some(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let mut chunk = [0u8; 4096];
    // Called when the bytes there are not enough: waiting first spares a
    // read that would find nothing new.
    sys::io::wait_within(fd, Events::POLLIN, left(deadline, timeout)?)
        .map_err(|e| io_error(e, timeout))?;
    match sys::io::recv_within(fd, &mut chunk, left(deadline, timeout)?) {
        Ok(0) => Err(ProbeError::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(io_error(e, timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// A deadline no answer that is on its way can miss, however slow the
    /// machine: cases that get an answer never wait for it to pass.
    const GENEROUS: Duration = Duration::from_secs(60);

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What the fake server does once it has read the probe's query.
    enum Server {
        Answer(Vec<u8>),
        Close,
        /// Never answers: the only case that waits for the deadline, which
        /// is then short.
        Silent,
    }

    /// Runs the probe against a fake server that has sent `early` before
    /// the query and then does what `server` says, keeping its end open
    /// until the probe is done.
    fn run(early: &[u8], server: Server) -> Result<(), ProbeError> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(early).unwrap();
        let timeout = match server {
            Server::Silent => Duration::from_millis(20),
            _ => GENEROUS,
        };
        let t = std::thread::spawn(move || {
            let mut q = [0u8; 7];
            if theirs.read_exact(&mut q).is_err() {
                return;
            }
            assert_eq!(q, EMPTY_QUERY);
            match server {
                // The probe may have given up halfway through a long reply.
                Server::Answer(reply) => drop(theirs.write_all(&reply)),
                Server::Close => return,
                Server::Silent => {}
            }
            // Returns once the probe's end is closed.
            let _ = theirs.read(&mut [0u8; 1]);
        });
        let r = probe(ours.as_fd(), timeout);
        drop(ours);
        t.join().unwrap();
        r
    }

    #[test]
    fn idle_connection_passes() {
        let mut reply = msg(b'N', b"SNOTICE\0Mhi\0\0");
        reply.extend(msg(b'S', b"TimeZone\0UTC\0"));
        reply.extend(msg(b'I', b""));
        reply.extend(msg(b'Z', b"I"));
        run(&[], Server::Answer(reply)).unwrap();
    }

    /// The answer arrives a byte at a time: the probe waits for whole
    /// messages wherever they are cut.
    #[test]
    fn an_answer_cut_anywhere_passes() {
        let mut reply = msg(b'I', b"");
        reply.extend(msg(b'Z', b"I"));
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut q = [0u8; 7];
            theirs.read_exact(&mut q).unwrap();
            for b in reply {
                theirs.write_all(&[b]).unwrap();
            }
            let _ = theirs.read(&mut [0u8; 1]);
        });
        let r = probe(ours.as_fd(), GENEROUS);
        drop(ours);
        t.join().unwrap();
        r.unwrap();
    }

    #[test]
    fn terminated_backend_fails() {
        let fatal = msg(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0");
        let err = run(&fatal, Server::Close).unwrap_err();
        assert!(
            matches!(err, ProbeError::ServerError(ref e) if e.code == "57P01"),
            "{err}"
        );
        assert!(err.to_string().contains("terminating connection"), "{err}");
    }

    #[test]
    fn silence_fails_at_the_deadline() {
        assert!(matches!(
            run(&[], Server::Silent),
            Err(ProbeError::Timeout(_))
        ));
    }

    #[test]
    fn close_and_transactions_and_strays_fail() {
        assert!(matches!(run(&[], Server::Close), Err(ProbeError::Closed)));
        let mut reply = msg(b'I', b"");
        reply.extend(msg(b'Z', b"T"));
        assert!(matches!(
            run(&[], Server::Answer(reply)),
            Err(ProbeError::NotIdle(b'T'))
        ));
        assert!(matches!(
            run(&[], Server::Answer(msg(b'D', b"xx"))),
            Err(ProbeError::Unexpected(b'D'))
        ));
        assert!(matches!(
            run(&[], Server::Answer(msg(b'Z', b"I"))),
            Err(ProbeError::Unexpected(b'Z'))
        ));
        let mut extra = msg(b'I', b"");
        extra.extend(msg(b'Z', b"I"));
        extra.extend(msg(b'N', b"SNOTICE\0Mlate\0\0"));
        assert!(matches!(
            run(&[], Server::Answer(extra)),
            Err(ProbeError::Unexpected(b'N'))
        ));
    }

    /// Lengths are checked by the one framing layer before anything is
    /// sized from them, and bodies are read by the protocol's parsers.
    #[test]
    fn impossible_messages_fail() {
        let mut huge = vec![b'N'];
        huge.extend_from_slice(&(1i32 << 30).to_be_bytes());
        assert!(matches!(
            run(&[], Server::Answer(huge)),
            Err(ProbeError::Frame(FrameError::TooLong { tag: b'N', .. }))
        ));
        let short = vec![b'N', 0, 0, 0, 3];
        assert!(matches!(
            run(&[], Server::Answer(short)),
            Err(ProbeError::Frame(FrameError::BadLength { tag: b'N', .. }))
        ));
        let mut no_status = msg(b'I', b"");
        no_status.extend(msg(b'Z', b""));
        assert!(matches!(
            run(&[], Server::Answer(no_status)),
            Err(ProbeError::Protocol(_))
        ));
        assert!(matches!(
            run(&[], Server::Answer(msg(b'E', b"SFATAL\0"))),
            Err(ProbeError::Protocol(_))
        ));
    }

    #[test]
    fn quiet_until_the_peer_speaks_or_leaves() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        assert!(quiet(ours.as_fd()));
        server.write_all(&msg(b'E', b"SFATAL\0C57P01\0\0")).unwrap();
        assert!(!quiet(ours.as_fd()), "unasked message");
        let (ours, server) = UnixStream::pair().unwrap();
        // Shut down rather than only dropped: a test elsewhere in this
        // process may fork and keep a copy open.
        server.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(!quiet(ours.as_fd()), "end of stream");
    }
}

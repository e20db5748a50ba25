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

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::protocol::tag::backend;
use crate::sys;

/// The simple Query message `;`.
const EMPTY_QUERY: [u8; 7] = [b'Q', 0, 0, 0, 6, b';', 0];

/// Messages PostgreSQL may send on an idle connection or in answer to the
/// probe are small; a bigger one means the stream is not where we think.
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server reported an error: {0}")]
    ServerError(String),
    #[error("unexpected message '{}' from the server", *.0 as char)]
    Unexpected(u8),
    #[error("the server is not idle after the probe (status '{}')", *.0 as char)]
    NotIdle(u8),
    #[error("message of {0} bytes from the server")]
    TooLong(usize),
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
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => return true,
            // A non-zero count: some event (data, end of stream, error).
            Ok(_) => return false,
            Err(nix::errno::Errno::EINTR) => continue,
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
        while let Some((tag, body_len)) = header(&buf)? {
            let total = 1 + 4 + body_len;
            if buf.len() < total {
                break;
            }
            let body = &buf[5..total];
            match tag {
                backend::EMPTY_QUERY_RESPONSE => saw_empty = true,
                backend::READY_FOR_QUERY => {
                    let status = body.first().copied().unwrap_or(0);
                    if !saw_empty {
                        return Err(ProbeError::Unexpected(tag));
                    }
                    if status != b'I' {
                        return Err(ProbeError::NotIdle(status));
                    }
                    if buf.len() > total {
                        // Bytes after our ReadyForQuery were not asked for.
                        return Err(ProbeError::Unexpected(buf[total]));
                    }
                    return Ok(());
                }
                backend::ERROR_RESPONSE => {
                    return Err(ProbeError::ServerError(error_text(body)));
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

/// Tag and body length of the message at the start of `buf`, once its
/// header is complete.
fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, ProbeError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(len).unwrap_or(0);
    if len < 4 {
        return Err(ProbeError::Unexpected(buf[0]));
    }
    if len > MAX_MESSAGE {
        return Err(ProbeError::TooLong(len));
    }
    Ok(Some((buf[0], len - 4)))
}

/// The message field of an ErrorResponse body, for the log.
fn error_text(body: &[u8]) -> String {
    let mut rest = body;
    let mut code = String::new();
    let mut message = String::new();
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]);
        match field {
            b'C' => code = value.into_owned(),
            b'M' => message = value.into_owned(),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    format!("{message} ({code})")
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
    sys::io::wait_within(fd, sys::poll::Events::POLLIN, left(deadline, timeout)?)
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

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// Runs the probe against a fake server that answers `reply` after
    /// reading the query (or `early` before).
    fn run(early: &[u8], reply: Vec<u8>, close: bool) -> Result<(), ProbeError> {
        let (ours, mut server) = UnixStream::pair().unwrap();
        server.write_all(early).unwrap();
        let t = std::thread::spawn(move || {
            let mut q = [0u8; 7];
            if server.read_exact(&mut q).is_ok() {
                assert_eq!(q, EMPTY_QUERY);
                server.write_all(&reply).unwrap();
            }
            if !close {
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let r = probe(ours.as_fd(), Duration::from_millis(200));
        t.join().unwrap();
        r
    }

    #[test]
    fn idle_connection_passes() {
        let mut reply = msg(b'N', b"SNOTICE\0Mhi\0\0");
        reply.extend(msg(b'I', b""));
        reply.extend(msg(b'Z', b"I"));
        run(&[], reply, false).unwrap();
    }

    #[test]
    fn terminated_backend_fails() {
        let fatal = msg(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0");
        let err = run(&fatal, Vec::new(), true).unwrap_err();
        assert!(
            matches!(err, ProbeError::ServerError(ref m) if m.contains("57P01")),
            "{err}"
        );
    }

    #[test]
    fn silence_and_close_and_transactions_fail() {
        assert!(matches!(
            run(&[], Vec::new(), false),
            Err(ProbeError::Timeout(_))
        ));
        assert!(matches!(
            run(&[], Vec::new(), true),
            Err(ProbeError::Closed) | Err(ProbeError::Timeout(_))
        ));
        let mut reply = msg(b'I', b"");
        reply.extend(msg(b'Z', b"T"));
        assert!(matches!(
            run(&[], reply, false),
            Err(ProbeError::NotIdle(b'T'))
        ));
        assert!(matches!(
            run(&[], msg(b'D', b"xx"), false),
            Err(ProbeError::Unexpected(b'D'))
        ));
        let mut huge = vec![b'N'];
        huge.extend_from_slice(&(1i32 << 30).to_be_bytes());
        assert!(matches!(run(&[], huge, false), Err(ProbeError::TooLong(_))));
    }

    #[test]
    fn quiet_until_the_peer_speaks_or_leaves() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        assert!(quiet(ours.as_fd()));
        server.write_all(&msg(b'E', b"SFATAL\0C57P01\0\0")).unwrap();
        assert!(!quiet(ours.as_fd()), "unasked message");
        let (ours, server) = UnixStream::pair().unwrap();
        drop(server);
        assert!(!quiet(ours.as_fd()), "end of stream");
    }
}

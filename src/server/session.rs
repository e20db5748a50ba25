//! Bringing an idle connection's session in line: the tracked parameters a
//! client expects (`sync_params`), and `DISCARD ALL` before a connection
//! goes back to the pool (`reset`). Both leave the connection idle and
//! record what the server reports in the slot.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::fdio as io;
use crate::protocol::framer::{FrameError, Header, HEADER_LEN};
use crate::protocol::message::BodyReader;
use crate::protocol::tag::backend;
use crate::protocol::{self, sqlstate, ErrorResponse, ProtocolError};
use crate::server::params::{self, Desired};
use crate::slot::Slot;

/// Answers to SET and DISCARD are small; a bigger message means the
/// stream is not where we think.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The server refused a setting the client asked for (a bad value at
    /// start-up, say): its error is what the client is told.
    #[error("{sql}: {}", .error.message)]
    Refused {
        sql: String,
        error: Box<ErrorResponse>,
    },
    #[error("server not idle after {0}")]
    NotIdle(String),
}

/// Sets on the server whatever tracked parameter differs from `desired`,
/// and records the server's new values in the slot. A connection the
/// client already found in line, unchanged since, is not looked at again.
pub fn sync_params(
    server: BorrowedFd<'_>,
    index: usize,
    slot: &Slot,
    desired: &Desired,
    timeout: Duration,
) -> Result<(), SessionError> {
    if desired.known_in_line(index, slot) {
        return Ok(());
    }
    let Some(sql) = desired.params().differences(&slot.login(), &slot.startup()) else {
        desired.found_in_line(index, slot);
        return Ok(());
    };
    let answer = run_idle(server, slot, &sql, timeout)?;
    match answer.error {
        Some(error) => Err(SessionError::Refused {
            sql,
            error: Box::new(error),
        }),
        None if !answer.idle => Err(SessionError::NotIdle(sql)),
        None => Ok(()),
    }
}

/// Runs `DISCARD ALL` before a connection goes back to the pool. False
/// when the connection cannot be vouched for afterwards.
pub fn reset(server: BorrowedFd<'_>, slot: &Slot, timeout: Duration) -> bool {
    // Whatever the answer, the statements are gone or the connection is.
    slot.clear_prepared();
    match run_idle(server, slot, "DISCARD ALL", timeout) {
        Ok(answer) => answer.error.is_none() && answer.idle,
        Err(e) => {
            log::warn!("reset of backend {} failed: {e}", slot.backend_pid());
            false
        }
    }
}

/// One row of a result, as text (`None` for NULL).
pub(super) type Row = Vec<Option<String>>;

/// What the server answered one request (up to its ReadyForQuery).
#[derive(Debug, Default)]
pub(super) struct Answer {
    /// The first error.
    pub error: Option<ErrorResponse>,
    pub idle: bool,
    /// The rows of each result, in order, as text (`None` for NULL).
    pub results: Vec<Vec<Row>>,
}

/// Sends one simple query on an idle connection and reads up to
/// ReadyForQuery, recording ParameterStatus changes in the slot.
pub(super) fn run_idle(
    server: BorrowedFd<'_>,
    slot: &Slot,
    sql: &str,
    timeout: Duration,
) -> Result<Answer, SessionError> {
    let mut out = Vec::with_capacity(sql.len() + 8);
    protocol::query(&mut out, sql);
    let mut answers = send_idle(server, slot, &out, 1, timeout)?;
    Ok(answers.pop().unwrap_or_default())
}

/// Sends `requests` (messages that `count` ReadyForQuery will answer) on
/// an idle connection and reads the answers, recording ParameterStatus
/// changes in the slot. The socket's flags are left as they are (its open
/// file is shared with the supervisor and every worker): each wait for
/// room or for an answer is bounded by `timeout` in poll(2).
pub(super) fn send_idle(
    server: BorrowedFd<'_>,
    slot: &Slot,
    requests: &[u8],
    count: usize,
    timeout: Duration,
) -> Result<Vec<Answer>, SessionError> {
    io::send_all_within(server, requests, timeout)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // An answer takes a round trip: waiting first spares the read that
    // would find nothing yet.
    io::wait_within(server, io::Events::POLLIN, timeout)?;
    let mut answers = Vec::with_capacity(count);
    let mut answer = Answer::default();
    let mut input = Input::default();
    while answers.len() < count {
        input.receive(server, timeout)?;
        while let Some((tag, body)) = input.next()? {
            match tag {
                backend::PARAMETER_STATUS => {
                    if let Ok((k, v)) = protocol::parse_parameter_status(body) {
                        slot.set_startup(&params::startup_with(&slot.startup(), k, v));
                    }
                }
                backend::ERROR_RESPONSE if answer.error.is_none() => {
                    answer.error = Some(ErrorResponse::parse(body).unwrap_or_else(|_| {
                        ErrorResponse::error(sqlstate::PROTOCOL_VIOLATION, "unreadable error")
                    }))
                }
                backend::ROW_DESCRIPTION => answer.results.push(Vec::new()),
                backend::DATA_ROW => {
                    let row = data_row(body)?;
                    match answer.results.last_mut() {
                        Some(rows) => rows.push(row),
                        None => answer.results.push(vec![row]),
                    }
                }
                backend::READY_FOR_QUERY => {
                    answer.idle = body.first() == Some(&b'I');
                    answers.push(std::mem::take(&mut answer));
                    if answers.len() == count {
                        break;
                    }
                }
                _ => {}
            }
        }
        input.take(server, answers.len() < count, timeout)?;
    }
    Ok(answers)
}

/// The answers read so far. Whatever has arrived is looked at in one
/// `MSG_PEEK` call, and then as much of it is taken from the socket, in
/// one more call, as ends with a whole message still owed: never a byte
/// past the last ReadyForQuery asked for, so that what the server sends
/// unasked after it (a notification, a FATAL) stays in the socket for
/// whoever reads the connection next, as if the answers had been read one
/// message at a time.
#[derive(Default)]
struct Input {
    /// Bytes taken from the socket, then the ones only looked at.
    buf: Vec<u8>,
    /// End of the bytes taken from the socket.
    taken: usize,
    /// End of the bytes looked at.
    seen: usize,
    /// Start of the first message not handed out yet.
    start: usize,
}

/// How much is looked at in one call, beyond a message that needs more.
const LOOK_AHEAD: usize = 8 * 1024;

impl Input {
    /// Looks at what has arrived, waiting for something if nothing has.
    fn receive(&mut self, server: BorrowedFd<'_>, timeout: Duration) -> Result<(), SessionError> {
        // Messages handed out are done with; a partial one moves to the
        // front and grows by up to LOOK_AHEAD bytes a call.
        self.buf.truncate(self.taken);
        self.buf.drain(..self.start);
        self.taken -= self.start;
        self.start = 0;
        self.buf.resize(self.taken + LOOK_AHEAD, 0);
        let n = io::peek_within(server, &mut self.buf[self.taken..], timeout)?;
        if n == 0 {
            return Err(ProtocolError::Eof.into());
        }
        self.seen = self.taken + n;
        self.buf.truncate(self.seen);
        Ok(())
    }

    /// The next whole message looked at, if any.
    fn next(&mut self) -> Result<Option<(u8, &[u8])>, SessionError> {
        let rest = &self.buf[self.start..self.seen];
        let header = match Header::peek(rest, u32::MAX) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(FrameError::BadLength { len, .. } | FrameError::TooLong { len, .. }) => {
                return Err(ProtocolError::BadLength { len: len.into() }.into())
            }
        };
        if header.body_len() > MAX_ANSWER {
            return Err(ProtocolError::TooLong {
                len: header.body_len() as u64,
                max: MAX_ANSWER as u64,
            }
            .into());
        }
        if rest.len() < header.frame_len() {
            return Ok(None);
        }
        let at = self.start;
        self.start += header.frame_len();
        Ok(Some((header.tag, &self.buf[at + HEADER_LEN..self.start])))
    }

    /// Takes from the socket the bytes looked at that are owed to us: up
    /// to the end of the last message handed out once every answer is in
    /// (`all` false), else everything looked at, a partial message
    /// included (more answers are owed, so it is one of them). The bytes
    /// are queued already: the reads return at once, with what was looked
    /// at.
    fn take(
        &mut self,
        server: BorrowedFd<'_>,
        all: bool,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let end = if all { self.seen } else { self.start };
        while self.taken < end {
            match io::recv_within(server, &mut self.buf[self.taken..end], timeout)? {
                0 => return Err(ProtocolError::Eof.into()),
                n => self.taken += n,
            }
        }
        Ok(())
    }
}

/// The columns of a DataRow, as text.
fn data_row(body: &[u8]) -> Result<Row, ProtocolError> {
    let mut r = BodyReader::named(body, "DataRow");
    let count = r.read_i16()?;
    let mut row = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(64));
    for _ in 0..count {
        let len = r.read_i32()?;
        row.push(match usize::try_from(len) {
            Ok(len) => Some(String::from_utf8_lossy(r.read_bytes(len)?).into_owned()),
            Err(_) => None,
        });
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::write_message;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;

    fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        write_message(out, tag, |b| b.extend_from_slice(body));
    }

    fn data_row_of(value: &[u8]) -> Vec<u8> {
        let mut body = 1i16.to_be_bytes().to_vec();
        body.extend_from_slice(&(value.len() as i32).to_be_bytes());
        body.extend_from_slice(value);
        body
    }

    /// A server that reads `request_len` bytes, then writes `reply` in
    /// `pieces` writes, and hands its end back.
    fn server(
        mut end: UnixStream,
        request_len: usize,
        reply: Vec<u8>,
        pieces: usize,
    ) -> std::thread::JoinHandle<UnixStream> {
        std::thread::spawn(move || {
            let mut request = vec![0u8; request_len];
            end.read_exact(&mut request).unwrap();
            let step = reply.len().div_ceil(pieces.max(1)).max(1);
            for chunk in reply.chunks(step) {
                end.write_all(chunk).unwrap();
            }
            end
        })
    }

    fn nonblocking(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        flags & libc::O_NONBLOCK != 0
    }

    const LIMIT: Duration = Duration::from_secs(20);

    /// Two requests answered, whatever the reads' cuts, a row longer than
    /// one look; what the server sends after the last ReadyForQuery stays
    /// in the socket, and the socket's flags are as they were.
    #[test]
    fn answers_are_read_whole_and_nothing_after_them() {
        let long = vec![b'x'; 3 * LOOK_AHEAD + 17];
        let mut reply = Vec::new();
        msg(&mut reply, backend::ROW_DESCRIPTION, &[0, 1]);
        msg(&mut reply, backend::DATA_ROW, &data_row_of(&long));
        msg(&mut reply, b'C', b"SELECT 1\0");
        msg(&mut reply, backend::READY_FOR_QUERY, b"I");
        let mut status = Vec::new();
        protocol::parameter_status(&mut status, "TimeZone", "UTC");
        reply.extend_from_slice(&status);
        msg(
            &mut reply,
            backend::ERROR_RESPONSE,
            b"SERROR\0C22023\0Mbad\0\0",
        );
        msg(&mut reply, backend::READY_FOR_QUERY, b"I");
        let mut unasked = Vec::new();
        msg(&mut unasked, b'A', b"\0\0\0\x07chan\0\0");
        reply.extend_from_slice(&unasked);
        for pieces in [1, 2, 7, 64] {
            for blocking in [true, false] {
                let (ours, theirs) = UnixStream::pair().unwrap();
                ours.set_nonblocking(!blocking).unwrap();
                let requests = b"two requests";
                let peer = server(theirs, requests.len(), reply.clone(), pieces);
                let slot = Slot::default();
                let before = slot.startup_changes();
                let answers = send_idle(ours.as_fd(), &slot, requests, 2, LIMIT).unwrap();
                assert_eq!(answers.len(), 2);
                assert!(answers.iter().all(|a| a.idle));
                let row = &answers[0].results[0][0];
                assert_eq!(row[0].as_deref().map(str::len), Some(long.len()));
                assert!(answers[0].error.is_none());
                assert_eq!(
                    answers[1].error.as_ref().map(|e| e.code.as_str()),
                    Some("22023")
                );
                assert_eq!(slot.startup(), status, "pieces {pieces}");
                assert_ne!(slot.startup_changes(), before);
                assert_eq!(nonblocking(ours.as_fd()), !blocking, "flags untouched");
                // Shut down, not only dropped: a test elsewhere in this
                // process may fork and keep a copy of the descriptor open.
                let theirs = peer.join().unwrap();
                theirs.shutdown(std::net::Shutdown::Both).unwrap();
                let mut rest = Vec::new();
                (&ours).read_to_end(&mut rest).unwrap();
                assert_eq!(rest, unasked, "pieces {pieces}: the unasked message stays");
            }
        }
    }

    #[test]
    fn nothing_asked_nothing_read() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let answers = send_idle(ours.as_fd(), &Slot::default(), b"", 0, LIMIT).unwrap();
        assert!(answers.is_empty());
    }

    #[test]
    fn silence_is_a_timeout_and_a_huge_message_an_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let err = send_idle(
            ours.as_fd(),
            &Slot::default(),
            b"q",
            1,
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(
            matches!(&err, SessionError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "{err}"
        );
        let mut huge = vec![b'D'];
        huge.extend_from_slice(&(MAX_ANSWER as u32 + 5).to_be_bytes());
        theirs.write_all(&huge).unwrap();
        let err = send_idle(ours.as_fd(), &Slot::default(), b"q", 1, LIMIT).unwrap_err();
        assert!(
            matches!(err, SessionError::Protocol(ProtocolError::TooLong { .. })),
            "{err}"
        );
        theirs.shutdown(std::net::Shutdown::Both).unwrap();
        let err = send_idle(ours.as_fd(), &Slot::default(), b"q", 1, LIMIT).unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::Protocol(ProtocolError::Eof) | SessionError::Io(_)
            ),
            "{err}"
        );
    }
}

//! Bringing an idle connection's session in line: the tracked parameters a
//! client expects (`sync_params`), and `DISCARD ALL` before a connection
//! goes back to the pool (`reset`). Both leave the connection idle and
//! record what the server reports in the slot.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::fdio::{self as io, FdIo};
use crate::pipeline::params::{self, Params};
use crate::protocol::message::BodyReader;
use crate::protocol::tag::backend;
use crate::protocol::{self, sqlstate, ErrorResponse, ProtocolError};
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
/// and records the server's new values in the slot.
pub fn sync_params(
    server: BorrowedFd<'_>,
    slot: &Slot,
    desired: &Params,
    timeout: Duration,
) -> Result<(), SessionError> {
    let Some(sql) = desired.differences(&slot.login(), &slot.startup()) else {
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
/// ReadyForQuery, recording ParameterStatus changes in the slot. Leaves
/// the socket blocking with no timeout.
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
/// changes in the slot. Leaves the socket blocking with no timeout.
pub(super) fn send_idle(
    server: BorrowedFd<'_>,
    slot: &Slot,
    requests: &[u8],
    count: usize,
    timeout: Duration,
) -> Result<Vec<Answer>, SessionError> {
    io::set_nonblocking(server, false)?;
    io::set_timeouts(server, Some(timeout))?;
    io::write_all(server, requests)?;
    let mut answers = Vec::with_capacity(count);
    let mut answer = Answer::default();
    while answers.len() < count {
        let msg = protocol::read_message(&mut FdIo(server), MAX_ANSWER)?;
        match msg.tag {
            backend::PARAMETER_STATUS => {
                if let Ok((k, v)) = protocol::parse_parameter_status(&msg.body) {
                    slot.set_startup(&params::startup_with(&slot.startup(), k, v));
                }
            }
            backend::ERROR_RESPONSE if answer.error.is_none() => {
                answer.error = Some(ErrorResponse::parse(&msg.body).unwrap_or_else(|_| {
                    ErrorResponse::error(sqlstate::PROTOCOL_VIOLATION, "unreadable error")
                }))
            }
            backend::ROW_DESCRIPTION => answer.results.push(Vec::new()),
            backend::DATA_ROW => {
                let row = data_row(&msg.body)?;
                match answer.results.last_mut() {
                    Some(rows) => rows.push(row),
                    None => answer.results.push(vec![row]),
                }
            }
            backend::READY_FOR_QUERY => {
                answer.idle = msg.body.first() == Some(&b'I');
                answers.push(std::mem::take(&mut answer));
            }
            _ => {}
        }
    }
    io::set_timeouts(server, None)?;
    Ok(answers)
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

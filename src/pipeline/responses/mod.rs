//! Which server messages answer which request, for a worker that does not
//! send the server exactly what its client sent.
//!
//! Once some client requests are answered by pgcorral itself and some
//! requests the client never made are added, the two streams no longer
//! line up message for message. This queue restores the match: one entry
//! per request sent (saying whether its answer goes to the client) or per
//! answer pgcorral owes (emitted as soon as everything sent before it has
//! been answered, which is where PostgreSQL would have answered it).
//!
//! Each entry may carry a note of the caller's type; the caller learns the
//! fate of every note (answered, failed, skipped by the server after an
//! error) so it can undo bookkeeping it did when the request was sent.

use std::collections::VecDeque;

use crate::protocol::error_response::{field, field_value};
use crate::protocol::sqlstate;
use crate::protocol::tag::{backend, transaction_status};
use crate::protocol::{ready_for_query, write_message, ErrorResponse};

/// A request sent to the server, as far as its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    Query,
    FunctionCall,
}

impl Request {
    /// Whether an error while the server handles it starts the server's
    /// skip-until-Sync: true for the extended-protocol messages, false for
    /// the messages that end in ReadyForQuery whatever happens.
    fn skips_on_error(self) -> bool {
        !matches!(self, Request::Sync | Request::Query | Request::FunctionCall)
    }
}

/// Who sees the server's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The client asked for it.
    Pass,
    /// Added on the client's behalf (a Parse before its Bind): the success
    /// answer is hidden, but an error is the client's to see, since the
    /// request it did make cannot succeed either.
    HideAnswer,
    /// pgcorral's own housekeeping after the client's Sync: the client sees
    /// nothing of it, not even an error.
    HideAll,
}

/// An answer pgcorral gives in the server's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synthetic {
    ParseComplete,
    CloseComplete,
    Error {
        code: &'static str,
        message: String,
    },
    /// A simple query pgcorral answered itself: CommandComplete with this
    /// tag and ReadyForQuery, or, in a failed transaction, the error
    /// PostgreSQL gives there instead.
    Command {
        tag: &'static str,
    },
}

/// What became of a request, reported with its note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Answered normally (or, for a synthetic answer, emitted).
    Done,
    /// Answered with an ErrorResponse carrying this SQLSTATE (all zeros if
    /// the server gave none).
    Failed { sqlstate: [u8; 5] },
    /// Answered with the error that says the prepared statement's plan no
    /// longer fits it (see [`plan_is_stale`]): failed, and the statement
    /// named in the request must not be used again.
    Stale,
    /// Never carried out: the server skipped it after an earlier error.
    Skipped,
}

/// Whether the server is now discarding messages until a Sync the client
/// has not sent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipping {
    No,
    UntilSync,
}

/// The server answered something the requests sent cannot explain: the
/// two sides disagree about the conversation and the connection cannot be
/// trusted any more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server sent '{tag}' while {expected}", tag = *tag as char)]
pub struct ResponseError {
    pub tag: u8,
    pub expected: &'static str,
}

impl ResponseError {
    pub fn sqlstate(&self) -> &'static str {
        sqlstate::PROTOCOL_VIOLATION
    }
}

#[derive(Debug)]
enum What {
    Sent {
        request: Request,
        show: Show,
        /// The first error the server reported for a request that ends in
        /// ReadyForQuery, reported as its fate there.
        failed: Option<[u8; 5]>,
    },
    Synthetic(Synthetic),
    /// The client ended a COPY (CopyDone or CopyFail) here. Answers
    /// nothing; it only marks, for a COPY FROM STDIN that starts before
    /// it, which of the client's Syncs the server ignores.
    CopyEnd,
}

#[derive(Debug)]
struct Entry<U> {
    what: What,
    note: Option<U>,
}

/// The responses still owed to the client, oldest first.
#[derive(Debug)]
pub struct Responses<U> {
    queue: VecDeque<Entry<U>>,
    /// Transaction status of the last ReadyForQuery, needed to answer a
    /// simple query in the server's place.
    status: u8,
    /// The server is in copy-in mode and the client has not ended the copy
    /// yet: a Sync the client sends now is ignored by the server.
    copy_in: bool,
}

impl<U> Default for Responses<U> {
    fn default() -> Self {
        Self::new()
    }
}

/// How a message relates to the request at the head of the queue.
enum Step {
    /// Part of the answer; more follows.
    More,
    /// The last message of the answer.
    Last,
}

impl<U> Responses<U> {
    pub fn new() -> Self {
        Responses {
            queue: VecDeque::new(),
            status: transaction_status::IDLE,
            copy_in: false,
        }
    }

    /// Nothing is owed: every request sent has been answered and every
    /// synthetic answer emitted.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Status byte of the last ReadyForQuery seen (`I` before any).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Forgets everything owed, without reporting fates: the connection
    /// the answers would have come from is gone.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.status = transaction_status::IDLE;
        self.copy_in = false;
    }

    /// Whether a Sync (or Flush) the client sends now reaches a server in
    /// copy-in mode, which ignores it: it must then not be counted as a
    /// request.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// The client sent CopyDone or CopyFail.
    pub fn copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else if !self.queue.is_empty() {
            // The server may not have started the COPY yet; remember where
            // the client ended it.
            self.queue.push_back(Entry {
                what: What::CopyEnd,
                note: None,
            });
        }
    }

    /// The request whose answer comes next, with its note.
    pub fn head(&self) -> Option<(Request, Option<&U>)> {
        match self.queue.front()? {
            Entry {
                what: What::Sent { request, .. },
                note,
            } => Some((*request, note.as_ref())),
            _ => None,
        }
    }

    /// Records a request just sent to the server. The queue has no bound
    /// of its own: the caller limits how much it lets a client pipeline.
    pub fn sent(&mut self, request: Request, show: Show, note: Option<U>) {
        self.queue.push_back(Entry {
            what: What::Sent {
                request,
                show,
                failed: None,
            },
            note,
        });
    }

    /// Queues an answer pgcorral owes; it goes to `out` at once if nothing
    /// sent before it is still unanswered.
    pub fn synthetic(
        &mut self,
        answer: Synthetic,
        note: Option<U>,
        out: &mut Vec<u8>,
        on: &mut dyn FnMut(U, Fate),
    ) {
        self.queue.push_back(Entry {
            what: What::Synthetic(answer),
            note,
        });
        self.emit_ready(out, on);
    }

    /// Whether a server message with this tag, arriving now, goes to the
    /// client unchanged and changes nothing here, so the caller may stream
    /// it without holding it whole (result rows and COPY data, which may be
    /// large). Every other message must go through `server_message`.
    pub fn streams(&self, tag: u8) -> bool {
        if tag != backend::DATA_ROW && tag != backend::COPY_DATA {
            return false;
        }
        matches!(
            self.queue.front(),
            Some(Entry {
                what: What::Sent {
                    request: Request::Execute | Request::Query,
                    show: Show::Pass,
                    ..
                },
                ..
            })
        )
    }

    /// One whole server message: appends to `out` what the client sees.
    pub fn server_message(
        &mut self,
        tag: u8,
        body: &[u8],
        out: &mut Vec<u8>,
        on: &mut dyn FnMut(U, Fate),
    ) -> Result<Skipping, ResponseError> {
        // Sent whenever the server likes, answering no request.
        if matches!(
            tag,
            backend::NOTICE_RESPONSE | backend::PARAMETER_STATUS | backend::NOTIFICATION_RESPONSE
        ) {
            put(out, tag, body);
            return Ok(Skipping::No);
        }
        let Some(head) = self.queue.front_mut() else {
            // A FATAL at shutdown, or the like: the client must see it.
            if tag == backend::ERROR_RESPONSE {
                put(out, tag, body);
                return Ok(Skipping::No);
            }
            return Err(ResponseError {
                tag,
                expected: "no request was outstanding",
            });
        };
        let What::Sent {
            request,
            show,
            failed,
        } = &mut head.what
        else {
            // `emit_ready` runs after every change that can expose one, so
            // only a request sent waits at the head.
            return Err(ResponseError {
                tag,
                expected: "a synthetic answer was due",
            });
        };
        let (request, show) = (*request, *show);
        if tag == backend::ERROR_RESPONSE {
            if show != Show::HideAll {
                put(out, tag, body);
            }
            let code = sqlstate_of(body);
            self.copy_in = false;
            if !request.skips_on_error() {
                // Still answered by its own ReadyForQuery.
                failed.get_or_insert(code);
                return Ok(Skipping::No);
            }
            let fate = if plan_is_stale(body) {
                Fate::Stale
            } else {
                Fate::Failed { sqlstate: code }
            };
            let skipping = self.skip_until_sync(fate, on);
            self.emit_ready(out, on);
            return Ok(skipping);
        }
        let step = expect(request, tag)?;
        if show == Show::Pass {
            put(out, tag, body);
        }
        if tag == backend::COPY_IN_RESPONSE {
            self.copy_in_started();
        }
        if let Step::Last = step {
            self.copy_in = false;
            if tag == backend::READY_FOR_QUERY {
                self.status = body.first().copied().unwrap_or(transaction_status::IDLE);
            }
            if let Some(entry) = self.queue.pop_front() {
                let fate = match entry.what {
                    What::Sent {
                        failed: Some(sqlstate),
                        ..
                    } => Fate::Failed { sqlstate },
                    _ => Fate::Done,
                };
                if let Some(note) = entry.note {
                    on(note, fate);
                }
            }
            self.emit_ready(out, on);
        }
        Ok(Skipping::No)
    }

    /// The request at the head started COPY FROM STDIN. The server
    /// ignores every Sync it reads until the client's CopyDone or CopyFail
    /// (clients send one after each Execute without knowing it is a COPY),
    /// so those Syncs will get no ReadyForQuery.
    fn copy_in_started(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i].what {
                What::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                What::Sent {
                    request: Request::Sync,
                    ..
                } => {
                    self.queue.remove(i);
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    /// The request at the head failed and the server now discards what
    /// follows up to the next Sync: drop those entries (their synthetic
    /// answers included, as PostgreSQL would not have given them) and
    /// report them newest first, so that undoing them in that order
    /// restores the state from before the failed request, which gets
    /// `failed`.
    fn skip_until_sync(&mut self, failed: Fate, on: &mut dyn FnMut(U, Fate)) -> Skipping {
        let sync = self.queue.iter().position(|e| {
            matches!(
                e.what,
                What::Sent {
                    request: Request::Sync,
                    ..
                }
            )
        });
        let end = sync.unwrap_or(self.queue.len());
        let dropped: Vec<Entry<U>> = self.queue.drain(..end).collect();
        for (i, entry) in dropped.into_iter().enumerate().rev() {
            if let Some(note) = entry.note {
                let fate = if i == 0 { failed } else { Fate::Skipped };
                on(note, fate);
            }
        }
        if sync.is_some() {
            Skipping::No
        } else {
            Skipping::UntilSync
        }
    }

    /// Emits the synthetic answers that have reached the head (and drops
    /// COPY end marks there, which no longer delimit anything).
    fn emit_ready(&mut self, out: &mut Vec<u8>, on: &mut dyn FnMut(U, Fate)) {
        while let Some(entry) = self.queue.front() {
            if matches!(entry.what, What::Sent { .. }) {
                break;
            }
            let Some(entry) = self.queue.pop_front() else {
                break;
            };
            if let What::Synthetic(answer) = entry.what {
                let fate = self.encode(&answer, out);
                if let Some(note) = entry.note {
                    on(note, fate);
                }
            }
        }
    }

    fn encode(&self, answer: &Synthetic, out: &mut Vec<u8>) -> Fate {
        match answer {
            Synthetic::ParseComplete => put(out, backend::PARSE_COMPLETE, &[]),
            Synthetic::CloseComplete => put(out, backend::CLOSE_COMPLETE, &[]),
            Synthetic::Error { code, message } => {
                ErrorResponse::error(code, message.as_str()).encode(out);
                return Fate::Failed {
                    sqlstate: code_bytes(code),
                };
            }
            Synthetic::Command { tag } => {
                if self.status == transaction_status::FAILED {
                    // What PostgreSQL answers any command but COMMIT or
                    // ROLLBACK in a failed transaction.
                    const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
                    ErrorResponse::error(
                        IN_FAILED_SQL_TRANSACTION,
                        "current transaction is aborted, commands ignored until end of transaction block",
                    )
                    .encode(out);
                    ready_for_query(out, self.status);
                    return Fate::Failed {
                        sqlstate: code_bytes(IN_FAILED_SQL_TRANSACTION),
                    };
                }
                write_message(out, backend::COMMAND_COMPLETE, |b| {
                    b.extend_from_slice(tag.as_bytes());
                    b.push(0);
                });
                ready_for_query(out, self.status);
            }
        }
        Fate::Done
    }
}

/// Which messages may answer `request`, and which one ends the answer.
fn expect(request: Request, tag: u8) -> Result<Step, ResponseError> {
    use backend::*;
    let step = match (request, tag) {
        (Request::Parse, PARSE_COMPLETE)
        | (Request::Bind, BIND_COMPLETE)
        | (Request::Close, CLOSE_COMPLETE)
        | (Request::DescribeStatement | Request::DescribePortal, ROW_DESCRIPTION | NO_DATA)
        | (Request::Execute, COMMAND_COMPLETE | EMPTY_QUERY_RESPONSE | PORTAL_SUSPENDED)
        | (Request::Sync | Request::Query | Request::FunctionCall, READY_FOR_QUERY) => Step::Last,
        (Request::DescribeStatement, PARAMETER_DESCRIPTION)
        | (
            Request::Execute,
            DATA_ROW | COPY_IN_RESPONSE | COPY_OUT_RESPONSE | COPY_BOTH_RESPONSE | COPY_DATA
            | COPY_DONE,
        )
        | (
            Request::Query,
            ROW_DESCRIPTION | DATA_ROW | COMMAND_COMPLETE | EMPTY_QUERY_RESPONSE | COPY_IN_RESPONSE
            | COPY_OUT_RESPONSE | COPY_BOTH_RESPONSE | COPY_DATA | COPY_DONE,
        )
        | (Request::FunctionCall, FUNCTION_CALL_RESPONSE) => Step::More,
        _ => {
            return Err(ResponseError {
                tag,
                expected: expected_text(request),
            })
        }
    };
    Ok(step)
}

fn expected_text(request: Request) -> &'static str {
    match request {
        Request::Parse => "ParseComplete was due",
        Request::Bind => "BindComplete was due",
        Request::Close => "CloseComplete was due",
        Request::DescribeStatement => "a statement description was due",
        Request::DescribePortal => "a portal description was due",
        Request::Execute => "an Execute result was due",
        Request::Sync => "ReadyForQuery was due",
        Request::Query => "a simple query's result was due",
        Request::FunctionCall => "a function call result was due",
    }
}

fn put(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    write_message(out, tag, |b| b.extend_from_slice(body));
}

fn code_bytes(code: &str) -> [u8; 5] {
    let mut c = [b'0'; 5];
    for (dst, src) in c.iter_mut().zip(code.bytes()) {
        *dst = src;
    }
    c
}

/// The SQLSTATE of an ErrorResponse body, scanned in place (this runs on
/// every error passing through); all zeros when there is none.
pub fn sqlstate_of(body: &[u8]) -> [u8; 5] {
    match field_value(body, field::CODE) {
        Some(value) if value.len() == 5 => {
            let mut c = [0u8; 5];
            c.copy_from_slice(value);
            c
        }
        _ => [b'0'; 5],
    }
}

/// Whether an ErrorResponse says that a prepared statement can no longer
/// be used because what it returns has changed since it was prepared (a
/// column's type altered, `SELECT *` over a table dropped and created
/// again with other columns): PostgreSQL re-plans a statement after a
/// schema change, but refuses, for good, one whose result would then
/// differ from the description its Parse gave. That refusal is the only
/// error the plan cache's revalidation raises itself (errors a fresh Parse
/// would meet as well, a dropped table, come from the parser, with their
/// own codes), so it is known by SQLSTATE 0A000 and the routine, which
/// unlike the message is not translated; the message is compared only
/// where a server reports no routine. PostgreSQL 9.2 renamed the routine,
/// and pgjdbc, which re-prepares on this error, checks both names too.
pub fn plan_is_stale(body: &[u8]) -> bool {
    if field_value(body, field::CODE) != Some(sqlstate::FEATURE_NOT_SUPPORTED.as_bytes()) {
        return false;
    }
    match field_value(body, field::ROUTINE) {
        Some(routine) => routine == b"RevalidateCachedQuery" || routine == b"RevalidateCachedPlan",
        None => field_value(body, field::MESSAGE) == Some(STALE_PLAN_MESSAGE.as_bytes()),
    }
}

/// PostgreSQL's message for a statement whose result changed since it was
/// prepared (see [`plan_is_stale`]), with SQLSTATE 0A000.
pub const STALE_PLAN_MESSAGE: &str = "cached plan must not change result type";

#[cfg(test)]
mod tests;

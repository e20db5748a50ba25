//! The transaction pipeline: the client holds a server connection only while
//! a transaction (or a single statement outside one) runs. The connection
//! is given back at the first ReadyForQuery with status `I` after which
//! nothing is in flight, and another is taken when the client's next
//! message arrives, so many clients share few connections.
//!
//! The traffic goes through the prepared-statement `Rewriter`: the
//! client's statement names become server-side names, a connection that
//! lacks a statement gets its Parse first, and answers the server gives to
//! requests the client never made are hidden while answers pgcorral owes
//! are inserted where the server would have given them. Messages the
//! rewriter need not see whole (rows and COPY data of passed results,
//! client COPY data) are streamed without being gathered. With
//! `max_prepared_statements = 0` the rewriter passes names through and
//! every client message is streamed; the answers are still matched to
//! requests, which is how the pump knows when the server is idle.
//!
//! Client framing is continuous across connections (one pump for the
//! client's life); a connection is only ever given back between whole
//! server messages, so the next one starts clean.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::performance::MAX_SERVER_MESSAGE;
use super::prepared::{Rewriter, Route, ServerStatements};
use super::relay::retry;
use super::session_sql::{self, PinReason};
use super::Outcome;
use crate::protocol::backend::ready_for_query;
use crate::protocol::error_response::is_fatal_or_panic;
use crate::protocol::extended::{Parse, Target, TargetKind};
use crate::protocol::framer::Header;
use crate::protocol::tag::{backend, frontend};
use crate::protocol::{self, sqlstate, ErrorResponse};
use crate::sys::poll::{interest, readable, wait_pair, Events, Woke};
use buffers::{Input, Output};
use nix::sys::signal::SigSet;

/// Stop reading a side while this much waits to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// A message the rewriter must see whole is gathered up to this size.
pub const MAX_WHOLE: usize = 64 * 1024 * 1024;

/// A message cut by the end of a read.
enum Partial {
    /// Passing through: this many body bytes still to pass.
    Stream { remaining: usize },
    /// Being discarded.
    Drop { remaining: usize },
    /// Being gathered for the rewriter.
    Whole { tag: u8, len: usize },
}

/// Where a side's input stands.
#[derive(Default)]
struct Side {
    partial: Option<Partial>,
    gathered: Vec<u8>,
}

/// What the pipeline needs from its worker: server connections on demand.
pub trait Attach {
    /// A server connection for the next transaction. The descriptor must
    /// stay valid until `detach`. An error of severity ERROR fails the
    /// client's request as PostgreSQL fails a statement: its Query, or
    /// everything up to Sync, is skipped and the client may go on. Any
    /// other error is sent to the client, which is then disconnected.
    fn attach(&mut self) -> Result<RawFd, ErrorResponse>;
    /// The server is idle outside a transaction (`clean`), or in a state
    /// nobody can vouch for: give the connection back or throw it away.
    fn detach(&mut self, clean: bool);
    /// The server reported a parameter change during this client's use.
    fn parameter(&mut self, name: &str, value: &str);
    /// The prepared-statement record of the attached connection.
    fn statements(&mut self) -> &mut dyn ServerStatements;
    /// Whether the client's statements are to be looked at for session
    /// state that cannot follow it (off once the connection is kept).
    fn watches(&self) -> bool;
    /// A statement that leaves such state is being sent on the attached
    /// connection: keep it for the rest of the client's session.
    fn pin(&mut self, why: PinReason);
    /// A statement that may change a session-level setting is being sent
    /// on the attached connection; `custom` are the qualified names it
    /// sets, as far as they can be read.
    fn settings_changed(&mut self, custom: &[String]);
    /// The connection stays with this client between transactions
    /// (pinned): it stays attached, so that what the server sends on its
    /// own meanwhile (a notification for a LISTEN, a notice, its end)
    /// reaches the client at once, as it would directly.
    fn keeps_connection(&self) -> bool {
        false
    }
}

pub struct Transaction<'a, A: Attach> {
    client: BorrowedFd<'a>,
    server: Option<RawFd>,
    cin: Input,
    sin: Input,
    to_server: Output,
    to_client: Output,
    cside: Side,
    sside: Side,
    rewriter: Rewriter,
    pub server_fatal: bool,
    stop: &'a AtomicBool,
    wait_mask: SigSet,
    idle_limit: Option<std::time::Duration>,
    /// The client's request failed before it reached a server: its
    /// messages are dropped up to its Sync.
    skip_to_sync: bool,
    /// Names of the client's prepared statements whose text may change a
    /// setting: it runs at a later Bind, perhaps in another transaction
    /// than its Parse.
    setting_statements: SettingStatements,
    attach: A,
}

/// Why a message could not be handled: what the client is told.
struct Refusal(ErrorResponse);

impl<'a, A: Attach> Transaction<'a, A> {
    pub fn new(
        client: BorrowedFd<'a>,
        attach: A,
        rewriter: Rewriter,
        stop: &'a AtomicBool,
        wait_mask: SigSet,
    ) -> Self {
        Transaction {
            client,
            server: None,
            cin: Input::new(),
            sin: Input::new(),
            to_server: Output::default(),
            to_client: Output::default(),
            cside: Side::default(),
            sside: Side::default(),
            rewriter,
            server_fatal: false,
            stop,
            wait_mask,
            idle_limit: None,
            skip_to_sync: false,
            setting_statements: SettingStatements::default(),
            attach,
        }
    }

    pub fn with_idle_limit(mut self, limit: Option<std::time::Duration>) -> Self {
        self.idle_limit = limit.filter(|l| !l.is_zero());
        self
    }

    /// Nothing owed, nothing half-passed: the client can be told something
    /// and the server connection is between transactions.
    fn idle(&self) -> bool {
        self.rewriter.is_idle()
            && self.rewriter.transaction_status() == b'I'
            && !self.server_fatal
            && self.sside.partial.is_none()
            && self.sin.available().is_empty()
            && !matches!(self.cside.partial, Some(Partial::Stream { .. }))
    }

    pub fn client_at_boundary(&self) -> bool {
        self.to_client.pending() == 0 && self.sside.partial.is_none()
    }

    pub fn run(&mut self) -> Outcome {
        let outcome = self.pump();
        if self.server.take().is_some() {
            let clean = matches!(
                outcome,
                Outcome::ClientTerminated | Outcome::ClientClosed | Outcome::IdleTimeout
            ) && self.idle()
                && self.to_server.pending() == 0;
            if !clean {
                self.rewriter.connection_lost();
            }
            self.attach.detach(clean);
        }
        outcome
    }

    fn server_fd(&self) -> Option<BorrowedFd<'static>> {
        // SAFETY: the Attach implementation keeps the descriptor open until
        // `detach`, which also clears `server`; no borrow outlives that.
        self.server.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    fn pump(&mut self) -> Outcome {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Outcome::Shutdown;
            }
            let quiet = (self.server.is_none() || self.idle())
                && self.to_client.pending() == 0
                && self.to_server.pending() == 0
                && self.cin.available().is_empty();
            let wait_for = super::idle_wait(self.idle_limit, quiet);
            let cwant = interest(
                self.cin.has_room()
                    && self.to_server.pending() < HIGH_WATER
                    && self.to_client.pending() < HIGH_WATER,
                self.to_client.pending() > 0,
            );
            let swant = interest(
                self.sin.has_room() && self.to_client.pending() < HIGH_WATER,
                self.to_server.pending() > 0,
            );
            let woke = wait_pair(
                (self.client, cwant),
                self.server_fd().map(|fd| (fd, swant)),
                wait_for,
                Some(&self.wait_mask),
            );
            let [c, s] = match woke {
                Ok(Woke::Ready(fds)) => fds,
                Ok(Woke::Interrupted) => continue,
                Ok(Woke::TimedOut) => return Outcome::IdleTimeout,
                Err(e) => return Outcome::Io(e),
            };
            if readable(c) && cwant.contains(Events::POLLIN) {
                match self.cin.fill(self.client) {
                    Ok(0) => return Outcome::ClientClosed,
                    Ok(_) => {
                        if let Some(done) = self.on_client_input() {
                            return done;
                        }
                    }
                    Err(e) if retry(&e) => {}
                    Err(e) => return super::relay::closed_or_io(e, Outcome::ClientClosed),
                }
            }
            if let Some(fd) = self.server_fd() {
                if readable(s) && swant.contains(Events::POLLIN) {
                    match self.sin.fill(fd) {
                        Ok(0) => return Outcome::ServerClosed,
                        Ok(_) => {
                            if let Some(done) = self.on_server_input() {
                                return done;
                            }
                        }
                        Err(e) if retry(&e) => {}
                        Err(e) => return super::relay::closed_or_io(e, Outcome::ServerClosed),
                    }
                }
            }
            if let Some(done) = self.flush() {
                return done;
            }
        }
    }

    fn flush(&mut self) -> Option<Outcome> {
        if let Some(fd) = self.server_fd() {
            if let Err(e) = self.to_server.flush(fd) {
                return Some(super::relay::closed_or_io(e, Outcome::ServerClosed));
            }
        }
        if let Err(e) = self.to_client.flush(self.client) {
            return Some(super::relay::closed_or_io(e, Outcome::ClientClosed));
        }
        // Idle between transactions with everything for the server written:
        // the connection goes back.
        if self.server.is_some()
            && self.idle()
            && self.to_server.pending() == 0
            && !self.attach.keeps_connection()
        {
            self.server = None;
            self.attach.detach(true);
        }
        None
    }

    fn refuse(&mut self, r: Refusal) -> Option<Outcome> {
        Some(Outcome::Refused(r.0))
    }

    fn ensure_attached(&mut self) -> Result<(), Refusal> {
        if self.server.is_none() {
            let fd = self.attach.attach().map_err(Refusal)?;
            self.server = Some(fd);
            self.server_fatal = false;
            self.rewriter.attached();
        }
        Ok(())
    }

    /// Fails the client request that `tag` belongs to with `error`, as
    /// PostgreSQL fails a statement: a Query (or function call) is
    /// answered at once, an extended-protocol request once its Sync
    /// comes. The client's messages are the only thing it has sent, so
    /// nothing of the request is owed by a server.
    fn fail_request(&mut self, tag: u8, error: &ErrorResponse) {
        error.encode(&mut self.to_client.buf);
        self.end_failed_request(tag);
    }

    fn end_failed_request(&mut self, tag: u8) {
        if matches!(
            tag,
            frontend::QUERY | frontend::FUNCTION_CALL | frontend::SYNC
        ) {
            ready_for_query(&mut self.to_client.buf, b'I');
            self.skip_to_sync = false;
        } else {
            self.skip_to_sync = true;
        }
    }

    /// Drops a client message (its header at the input's start).
    fn drop_client_message(&mut self, body_len: usize) {
        self.pass_client_run();
        self.cin.start += 5;
        if body_len > 0 {
            self.cside.partial = Some(Partial::Drop {
                remaining: body_len,
            });
        }
    }

    fn on_client_input(&mut self) -> Option<Outcome> {
        let done = self.take_client_input();
        self.pass_client_run();
        done
    }

    /// Hands the client bytes forwarded so far to the server side.
    fn pass_client_run(&mut self) {
        if let Some(from) = self.cin.run.take() {
            let fd = self.server_fd();
            self.to_server.pass(fd, &self.cin.buf[from..self.cin.start]);
        }
    }

    /// Hands the server bytes forwarded so far to the client side.
    fn pass_server_run(&mut self) {
        if let Some(from) = self.sin.run.take() {
            let fd = Some(self.client);
            self.to_client.pass(fd, &self.sin.buf[from..self.sin.start]);
        }
    }

    fn take_client_input(&mut self) -> Option<Outcome> {
        loop {
            let avail = self.cin.available().len();
            match self.cside.partial.take() {
                Some(p @ (Partial::Stream { .. } | Partial::Drop { .. })) if avail == 0 => {
                    self.cside.partial = Some(p);
                    return None;
                }
                Some(Partial::Stream { remaining }) => {
                    let n = remaining.min(avail);
                    self.cin.forward(n);
                    if remaining > n {
                        self.cside.partial = Some(Partial::Stream {
                            remaining: remaining - n,
                        });
                    }
                }
                Some(Partial::Drop { remaining }) => {
                    self.pass_client_run();
                    let n = remaining.min(avail);
                    self.cin.start += n;
                    if remaining > n {
                        self.cside.partial = Some(Partial::Drop {
                            remaining: remaining - n,
                        });
                    }
                }
                Some(Partial::Whole { tag, len }) => {
                    self.pass_client_run();
                    let n = (len - self.cside.gathered.len()).min(avail);
                    let start = self.cin.start;
                    self.cside
                        .gathered
                        .extend_from_slice(&self.cin.buf[start..start + n]);
                    self.cin.start += n;
                    if self.cside.gathered.len() < len {
                        self.cside.partial = Some(Partial::Whole { tag, len });
                        return None;
                    }
                    if self.server.is_none() {
                        // Given back while the message was gathered.
                        if let Err(Refusal(e)) = self.ensure_attached() {
                            if e.severity != "ERROR" {
                                return Some(Outcome::Refused(e));
                            }
                            self.cside.gathered.clear();
                            self.fail_request(tag, &e);
                            continue;
                        }
                    }
                    if let Err(r) = self.client_whole(tag, Body::Gathered) {
                        return self.refuse(r);
                    }
                }
                None => {
                    // Streamed messages (COPY data) may announce any length;
                    // the ones gathered whole are capped below.
                    let header = match Header::peek(self.cin.available(), u32::MAX) {
                        Ok(Some(h)) => h,
                        Ok(None) => return None,
                        Err(e) => {
                            return self.refuse(Refusal(ErrorResponse::fatal(
                                sqlstate::PROTOCOL_VIOLATION,
                                e.to_string(),
                            )))
                        }
                    };
                    let (tag, len, body_len) = (header.tag, header.len, header.body_len());
                    if tag == frontend::TERMINATE {
                        return Some(Outcome::ClientTerminated);
                    }
                    if self.skip_to_sync {
                        self.drop_client_message(body_len);
                        self.end_failed_request(tag);
                        continue;
                    }
                    let mut route = self.rewriter.client_route(tag);
                    let mut unread = false;
                    // A statement's text must be read whole to be looked
                    // at, even where the rewriter would stream it.
                    if route == Route::Stream
                        && matches!(tag, frontend::QUERY | frontend::PARSE)
                        && self.attach.watches()
                    {
                        if body_len <= MAX_WHOLE {
                            route = Route::Whole;
                        } else {
                            unread = true;
                        }
                    }
                    if route != Route::Drop {
                        match self.ensure_attached() {
                            Err(Refusal(e)) if e.severity == "ERROR" => {
                                self.drop_client_message(body_len);
                                self.fail_request(tag, &e);
                                continue;
                            }
                            Err(r) => return Some(Outcome::Refused(r.0)),
                            Ok(()) => {}
                        }
                    }
                    if unread {
                        self.attach.pin(PinReason::Unread);
                        self.attach.settings_changed(&[]);
                    }
                    if tag == frontend::BIND
                        && self.setting_statements.any()
                        && self.attach.watches()
                    {
                        self.attach.settings_changed(&[]);
                    }
                    match route {
                        Route::Stream => {
                            if let Err(e) = self.rewriter.client_streamed(tag) {
                                return self.refuse(Refusal(ErrorResponse::fatal(
                                    e.sqlstate(),
                                    e.to_string(),
                                )));
                            }
                            self.cin.forward(5);
                            if body_len > 0 {
                                self.cside.partial = Some(Partial::Stream {
                                    remaining: body_len,
                                });
                            }
                        }
                        Route::Drop => {
                            self.pass_client_run();
                            self.cin.start += 5;
                            if body_len > 0 {
                                self.cside.partial = Some(Partial::Drop {
                                    remaining: body_len,
                                });
                            }
                        }
                        Route::Whole => {
                            self.pass_client_run();
                            if body_len > MAX_WHOLE {
                                return self.refuse(Refusal(ErrorResponse::fatal(
                                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                                    format!("message '{}' of {len} bytes is over the {MAX_WHOLE}-byte limit", tag as char),
                                )));
                            }
                            if avail >= 5 + body_len {
                                let start = self.cin.start + 5;
                                // Only the index moves: the bytes stay put
                                // until the next fill.
                                self.cin.start += 5 + body_len;
                                let body = Body::Input {
                                    start,
                                    len: body_len,
                                };
                                if let Err(r) = self.client_whole(tag, body) {
                                    return self.refuse(r);
                                }
                            } else {
                                self.cin.start += 5;
                                self.cside.gathered.clear();
                                self.cside.partial = Some(Partial::Whole { tag, len: body_len });
                            }
                        }
                    }
                }
            }
        }
    }

    fn client_whole(&mut self, tag: u8, body: Body) -> Result<(), Refusal> {
        self.ensure_attached()?;
        let Transaction {
            cin,
            cside,
            rewriter,
            attach,
            to_server,
            to_client,
            setting_statements,
            ..
        } = self;
        let body = body.bytes(cin, &cside.gathered);
        if matches!(tag, frontend::QUERY | frontend::PARSE) && attach.watches() {
            let text = if tag == frontend::QUERY {
                Some(session_sql::query_text(body))
            } else {
                session_sql::parse_query(body)
            };
            let found = text.map(session_sql::inspect).unwrap_or_default();
            if let Some(why) = found.pin {
                attach.pin(why);
            }
            if found.settings {
                attach.settings_changed(&found.custom);
            }
            if tag == frontend::PARSE {
                // A malformed Parse is refused by the rewriter below.
                if let Ok(parse) = Parse::read(body) {
                    setting_statements.note(parse.name, found.settings);
                }
            }
        }
        if tag == frontend::CLOSE {
            if let Ok(Target {
                kind: TargetKind::Statement,
                name,
            }) = Target::read(frontend::CLOSE, body)
            {
                setting_statements.note(name, false);
            }
        }
        let result = if rewriter.is_pass_through() {
            // Gathered only to be looked at: passed on as it came.
            rewriter.client_streamed(tag).map(|()| {
                protocol::write_message(&mut to_server.buf, tag, |b| b.extend_from_slice(body))
            })
        } else {
            rewriter.client_message(
                tag,
                body,
                attach.statements(),
                &mut to_server.buf,
                &mut to_client.buf,
            )
        }
        .map_err(|e| Refusal(ErrorResponse::fatal(e.sqlstate(), e.to_string())));
        cside.gathered.clear();
        result
    }

    fn on_server_input(&mut self) -> Option<Outcome> {
        let done = self.take_server_input();
        self.pass_server_run();
        done
    }

    fn take_server_input(&mut self) -> Option<Outcome> {
        loop {
            let avail = self.sin.available().len();
            match self.sside.partial.take() {
                Some(Partial::Stream { remaining }) if avail == 0 => {
                    self.sside.partial = Some(Partial::Stream { remaining });
                    return None;
                }
                Some(Partial::Stream { remaining }) => {
                    let n = remaining.min(avail);
                    self.sin.forward(n);
                    if remaining > n {
                        self.sside.partial = Some(Partial::Stream {
                            remaining: remaining - n,
                        });
                    }
                }
                Some(Partial::Drop { .. }) => return None,
                Some(Partial::Whole { tag, len }) => {
                    self.pass_server_run();
                    let n = (len - self.sside.gathered.len()).min(avail);
                    let start = self.sin.start;
                    self.sside
                        .gathered
                        .extend_from_slice(&self.sin.buf[start..start + n]);
                    self.sin.start += n;
                    if self.sside.gathered.len() < len {
                        self.sside.partial = Some(Partial::Whole { tag, len });
                        return None;
                    }
                    if let Some(done) = self.server_whole(tag, Body::Gathered) {
                        return Some(done);
                    }
                }
                None => {
                    let header = match Header::peek(self.sin.available(), MAX_SERVER_MESSAGE) {
                        Ok(Some(h)) => h,
                        Ok(None) => return None,
                        Err(e) => return Some(Outcome::ServerLost(format!("server {e}"))),
                    };
                    let (tag, len, body_len) = (header.tag, header.len, header.body_len());
                    match self.rewriter.server_route(tag) {
                        Route::Stream => {
                            self.sin.forward(5);
                            if body_len > 0 {
                                self.sside.partial = Some(Partial::Stream {
                                    remaining: body_len,
                                });
                            }
                        }
                        Route::Drop | Route::Whole => {
                            self.pass_server_run();
                            if body_len > MAX_WHOLE {
                                return Some(Outcome::ServerLost(format!(
                                    "server message of {len} bytes"
                                )));
                            }
                            if avail >= 5 + body_len {
                                let start = self.sin.start + 5;
                                self.sin.start += 5 + body_len;
                                let body = Body::Input {
                                    start,
                                    len: body_len,
                                };
                                if let Some(done) = self.server_whole(tag, body) {
                                    return Some(done);
                                }
                            } else {
                                self.sin.start += 5;
                                self.sside.gathered.clear();
                                self.sside.partial = Some(Partial::Whole { tag, len: body_len });
                            }
                        }
                    }
                }
            }
        }
    }

    fn server_whole(&mut self, tag: u8, body: Body) -> Option<Outcome> {
        let Transaction {
            sin,
            sside,
            rewriter,
            attach,
            to_server,
            to_client,
            server_fatal,
            ..
        } = self;
        let body = body.bytes(sin, &sside.gathered);
        match tag {
            backend::PARAMETER_STATUS => {
                if let Ok((k, v)) = protocol::parse_parameter_status(body) {
                    attach.parameter(k, v);
                }
            }
            backend::ERROR_RESPONSE if is_fatal_or_panic(body) => *server_fatal = true,
            _ => {}
        }
        let result = match rewriter.server_message(
            tag,
            body,
            attach.statements(),
            &mut to_server.buf,
            &mut to_client.buf,
        ) {
            Ok(()) => None,
            Err(e) => Some(Outcome::ServerLost(e.to_string())),
        };
        sside.gathered.clear();
        result
    }
}

/// The client's prepared statements whose text may change a setting.
#[derive(Default)]
struct SettingStatements {
    names: Vec<Vec<u8>>,
    /// More than `MAX_SETTING_STATEMENTS` were prepared: every Bind counts
    /// from then on.
    overflow: bool,
}

const MAX_SETTING_STATEMENTS: usize = 256;

impl SettingStatements {
    fn any(&self) -> bool {
        self.overflow || !self.names.is_empty()
    }

    /// Records whether the statement `name` (parsed, or closed) may
    /// change a setting when it runs.
    fn note(&mut self, name: &[u8], changes: bool) {
        self.names.retain(|n| n != name);
        if changes && self.names.len() < MAX_SETTING_STATEMENTS {
            self.names.push(name.to_vec());
        } else if changes {
            self.overflow = true;
        }
    }
}

/// Where a whole message's body is: still in the input buffer, or gathered
/// across reads. Handing the rewriter a slice of either spares a copy and
/// an allocation per message.
#[derive(Clone, Copy)]
enum Body {
    Input { start: usize, len: usize },
    Gathered,
}

impl Body {
    fn bytes<'b>(self, input: &'b Input, gathered: &'b [u8]) -> &'b [u8] {
        match self {
            Body::Input { start, len } => &input.buf[start..start + len],
            Body::Gathered => gathered,
        }
    }
}

mod buffers;
#[cfg(test)]
mod tests;

//! The transaction pipeline: the client holds a server connection only while
//! a transaction (or a single statement outside one) runs. The connection
//! is given back at the first ReadyForQuery with status `I` after which
//! nothing is in flight, and another is taken when the client sends its
//! next message, so many clients share few connections.
//!
//! Framing of the client stream is continuous across connections (one
//! framer for the client's life); a connection is only ever given back
//! between whole server messages, so the next one starts clean.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::prepared::ServerStatements;
use super::relay::{closed_or_io, interest, ready_to_read as ready, retry, wait, Relay, Woke};
use super::{Outcome, SessionState};
use crate::protocol::error_response::is_fatal_or_panic;
use crate::protocol::framer::{Event, Flow, Framer};
use crate::protocol::tag::{backend, frontend};
use crate::protocol::{self, ErrorResponse};

use super::performance::{MAX_CLIENT_MESSAGE, MAX_SERVER_MESSAGE};

/// ParameterStatus and ErrorResponse bodies are captured whole up to this.
const CAPTURE: usize = 1024;

/// What the pipeline needs from its worker: server connections on demand.
pub trait Attach {
    /// A server connection for the next transaction. The descriptor must
    /// stay valid until `detach`. An error is sent to the client, which
    /// is then disconnected.
    fn attach(&mut self) -> Result<RawFd, ErrorResponse>;
    /// The server is idle outside a transaction (`clean`), or in a state
    /// nobody can vouch for: give the connection back or throw it away.
    fn detach(&mut self, clean: bool);
    /// The server reported a parameter change during this client's use.
    fn parameter(&mut self, name: &str, value: &str);
    /// The prepared-statement record of the attached connection.
    fn statements(&mut self) -> &mut dyn ServerStatements;
}

pub struct Transaction<'a, A: Attach> {
    client: BorrowedFd<'a>,
    server: Option<RawFd>,
    c2s: Relay,
    s2c: Relay,
    pub state: SessionState,
    stop: &'a AtomicBool,
    wait_mask: libc::sigset_t,
    idle_limit: Option<std::time::Duration>,
    attach: A,
}

impl<'a, A: Attach> Transaction<'a, A> {
    pub fn new(
        client: BorrowedFd<'a>,
        attach: A,
        stop: &'a AtomicBool,
        wait_mask: libc::sigset_t,
    ) -> Self {
        Transaction {
            client,
            server: None,
            c2s: Relay::new(Framer::new(MAX_CLIENT_MESSAGE, 0)),
            s2c: Relay::new(Framer::new(MAX_SERVER_MESSAGE, CAPTURE)),
            state: SessionState::default(),
            stop,
            wait_mask,
            idle_limit: None,
            attach,
        }
    }

    /// Runs until the client leaves; a connection still held then is given
    /// back (if clean) or thrown away.
    pub fn run(&mut self) -> Outcome {
        let outcome = self.pump();
        if self.server.take().is_some() {
            self.state.streams_idle = self.c2s.is_idle() && self.s2c.out_at_boundary();
            let clean = outcome.leaves_server_reusable(&self.state);
            self.attach.detach(clean);
        }
        outcome
    }

    /// Ends the session (`Outcome::IdleTimeout`) after the client sat idle
    /// outside a transaction this long.
    pub fn with_idle_limit(mut self, limit: Option<std::time::Duration>) -> Self {
        self.idle_limit = limit.filter(|l| !l.is_zero());
        self
    }

    pub fn client_at_boundary(&self) -> bool {
        self.s2c.out_at_boundary()
    }

    /// The attached server's descriptor, borrowed without tying up `self`.
    fn server_fd(&self) -> Option<BorrowedFd<'static>> {
        // SAFETY: `server` holds a descriptor the Attach implementation
        // keeps open until `detach`; every use of the borrow ends before
        // `detach` is called, which also clears `server`.
        self.server.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    fn pump(&mut self) -> Outcome {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Outcome::Shutdown;
            }
            let idle = self.state.is_clean() && !self.c2s.has_pending() && !self.s2c.has_pending();
            let wait_for = super::idle_wait(self.idle_limit, idle);
            let woke = wait(
                (
                    self.client.as_raw_fd(),
                    interest(self.c2s.has_room(), self.s2c.has_pending()),
                ),
                (
                    self.server.unwrap_or(-1),
                    interest(self.s2c.has_room(), self.c2s.has_pending()),
                ),
                wait_for,
                &self.wait_mask,
            );
            let [c, s] = match woke {
                Ok(Woke::Ready(fds)) => fds,
                Ok(Woke::Interrupted) => continue,
                Ok(Woke::TimedOut) => return Outcome::IdleTimeout,
                Err(e) => return Outcome::Io(e),
            };
            if ready(c.revents) && self.c2s.has_room() {
                if let Some(done) = self.on_client_readable() {
                    return done;
                }
            }
            if self.server.is_some() && ready(s.revents) && self.s2c.has_room() {
                if let Some(done) = self.on_server_readable() {
                    return done;
                }
            }
            if c.revents & libc::POLLOUT != 0 {
                if let Err(e) = self.s2c.flush(self.client) {
                    return closed_or_io(e, Outcome::ClientClosed);
                }
            }
            if s.revents & libc::POLLOUT != 0 {
                if let Some(done) = self.flush_to_server() {
                    return done;
                }
            }
        }
    }

    fn on_client_readable(&mut self) -> Option<Outcome> {
        match self.c2s.fill(self.client) {
            Ok(0) => return Some(Outcome::ClientClosed),
            Ok(_) => {}
            Err(e) if retry(&e) => return None,
            Err(e) => return Some(closed_or_io(e, Outcome::ClientClosed)),
        }
        let state = &mut self.state;
        let stopped = match self.c2s.scan(|event| match event {
            Event::Start { tag, .. } if tag == frontend::TERMINATE => Flow::Stop,
            Event::Start { tag, .. } => {
                state.client_message(tag);
                Flow::Skip
            }
            Event::Complete { .. } => Flow::Skip,
        }) {
            Ok(s) => s,
            Err(e) => return Some(Outcome::ClientProtocol(e)),
        };
        if self.c2s.has_pending() && self.server.is_none() {
            match self.attach.attach() {
                Ok(fd) => {
                    self.server = Some(fd);
                    self.state.streams_idle = true;
                }
                Err(e) => {
                    let mut out = Vec::new();
                    e.encode(&mut out);
                    if self.s2c.out_at_boundary() {
                        let _ = super::relay_write_blocking(self.client, &out);
                    }
                    return Some(Outcome::AttachFailed);
                }
            }
        }
        if stopped.is_some() {
            let drained = match self.server_fd() {
                Some(fd) => self.c2s.drain(fd),
                None => Ok(()),
            };
            return Some(match drained {
                Ok(()) => Outcome::ClientTerminated,
                Err(e) => closed_or_io(e, Outcome::ServerClosed),
            });
        }
        self.flush_to_server()
    }

    fn flush_to_server(&mut self) -> Option<Outcome> {
        let fd = self.server_fd()?;
        match self.c2s.flush(fd) {
            Ok(_) => None,
            Err(e) => Some(closed_or_io(e, Outcome::ServerClosed)),
        }
    }

    fn on_server_readable(&mut self) -> Option<Outcome> {
        let fd = self.server_fd()?;
        match self.s2c.fill(fd) {
            Ok(0) => return Some(Outcome::ServerClosed),
            Ok(_) => {}
            Err(e) if retry(&e) => return None,
            Err(e) => return Some(closed_or_io(e, Outcome::ServerClosed)),
        }
        let state = &mut self.state;
        let attach = &mut self.attach;
        if let Err(e) = self.s2c.scan(|event| match event {
            Event::Start { tag, .. }
                if SessionState::wants_server_body(tag) || tag == backend::PARAMETER_STATUS =>
            {
                Flow::Capture
            }
            Event::Start { .. } => Flow::Skip,
            Event::Complete { tag, body } => {
                match tag {
                    backend::READY_FOR_QUERY => {
                        state.ready_for_query(body.first().copied().unwrap_or(b'I'))
                    }
                    backend::ERROR_RESPONSE if is_fatal_or_panic(body) => state.server_fatal = true,
                    backend::PARAMETER_STATUS => {
                        if let Ok((k, v)) = protocol::parse_parameter_status(body) {
                            attach.parameter(&k, &v);
                        }
                    }
                    _ => {}
                }
                Flow::Skip
            }
        }) {
            return Some(Outcome::ServerProtocol(e));
        }
        if let Err(e) = self.s2c.flush(self.client) {
            return Some(closed_or_io(e, Outcome::ClientClosed));
        }
        if self.state.is_clean() && !self.c2s.has_pending() && self.s2c.fully_scanned() {
            // Idle between transactions: the connection goes back now, and
            // what the server said is already in our buffer for the client.
            self.server = None;
            self.attach.detach(true);
        }
        None
    }
}

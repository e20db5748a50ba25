//! The performance pipeline: client and server are bound for the whole
//! session and bytes pass through untouched. The only things looked at are
//! message tags (at boundaries), ReadyForQuery status and ErrorResponse
//! severity, which decide whether the connection can be pooled afterwards.
//!
//! No read or write waits and each direction has its own buffer, so
//! a client that pipelines many requests while the server is answering can
//! never wedge the worker: whichever side is ready is served.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::relay::{closed_or_io, retry, Relay};
use super::{Outcome, SessionState};
use crate::protocol::error_response::is_fatal_or_panic;
use crate::protocol::framer::{Event, Flow, Framer};
use crate::protocol::tag::{backend, frontend};
use crate::sys::poll::{interest, readable, wait_pair, writable, Woke};
use nix::sys::signal::SigSet;

/// PostgreSQL accepts client messages up to 1 GiB; nothing larger is valid.
pub const MAX_CLIENT_MESSAGE: u32 = 1 << 30;
/// Server messages are bounded by the same 1 GiB field limit.
pub const MAX_SERVER_MESSAGE: u32 = (1 << 30) + 1024;
/// Enough of an ErrorResponse body to find its severity.
const CAPTURE: usize = 256;

pub struct Performance<'a> {
    client: BorrowedFd<'a>,
    server: BorrowedFd<'a>,
    c2s: Relay,
    s2c: Relay,
    pub state: SessionState,
    stop: &'a AtomicBool,
    wait_mask: SigSet,
    idle_limit: Option<std::time::Duration>,
}

impl<'a> Performance<'a> {
    /// Neither descriptor need be non-blocking: every read and write says
    /// it must not wait (`sys::io`). `stop` is set by the
    /// worker's signal handler; `wait_mask` is the signal mask to wait with
    /// (the handler's signal unblocked only while waiting).
    pub fn new(
        client: BorrowedFd<'a>,
        server: BorrowedFd<'a>,
        stop: &'a AtomicBool,
        wait_mask: SigSet,
    ) -> Self {
        Performance {
            client,
            server,
            c2s: Relay::new(Framer::new(MAX_CLIENT_MESSAGE, 0)),
            s2c: Relay::new(Framer::new(MAX_SERVER_MESSAGE, CAPTURE)),
            state: SessionState::default(),
            stop,
            wait_mask,
            idle_limit: None,
        }
    }

    pub fn run(&mut self) -> Outcome {
        let outcome = self.pump();
        self.state.streams_idle = self.c2s.is_idle() && self.s2c.out_at_boundary();
        outcome
    }

    /// Whether an ErrorResponse may be written to the client now without
    /// splitting a message it is receiving.
    /// Ends the session (`Outcome::IdleTimeout`) after the client sat idle
    /// outside a transaction this long.
    pub fn with_idle_limit(mut self, limit: Option<std::time::Duration>) -> Self {
        self.idle_limit = limit.filter(|l| !l.is_zero());
        self
    }

    pub fn client_at_boundary(&self) -> bool {
        self.s2c.out_at_boundary()
    }

    fn pump(&mut self) -> Outcome {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Outcome::Shutdown;
            }
            let idle = self.state.is_clean() && !self.c2s.has_pending() && !self.s2c.has_pending();
            let wait_for = super::idle_wait(self.idle_limit, idle);
            let woke = wait_pair(
                (
                    self.client,
                    interest(self.c2s.has_room(), self.s2c.has_pending()),
                ),
                Some((
                    self.server,
                    interest(self.s2c.has_room(), self.c2s.has_pending()),
                )),
                wait_for,
                Some(&self.wait_mask),
            );
            let [c, s] = match woke {
                Ok(Woke::Ready(fds)) => fds,
                Ok(Woke::Interrupted) => continue,
                Ok(Woke::TimedOut) => return Outcome::IdleTimeout,
                Err(e) => return Outcome::Io(e),
            };
            if readable(c) && self.c2s.has_room() {
                if let Some(done) = self.on_client_readable() {
                    return done;
                }
            }
            if readable(s) && self.s2c.has_room() {
                if let Some(done) = self.on_server_readable() {
                    return done;
                }
            }
            if writable(c) {
                if let Err(e) = self.s2c.flush(self.client) {
                    return client_write_failed(e);
                }
            }
            if writable(s) {
                if let Err(e) = self.c2s.flush(self.server) {
                    return server_write_failed(e);
                }
            }
        }
    }

    fn on_client_readable(&mut self) -> Option<Outcome> {
        match self.c2s.fill(self.client) {
            Ok(0) => return Some(Outcome::ClientClosed),
            Ok(_) => {}
            Err(e) if retry(&e) => return None,
            Err(e) => return Some(client_write_failed(e)),
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
        if stopped.is_some() {
            // Forward what came before the Terminate, then end; the
            // Terminate itself is ours, the server connection stays open.
            return Some(match self.c2s.drain(self.server) {
                Ok(()) => Outcome::ClientTerminated,
                Err(e) => server_write_failed(e),
            });
        }
        match self.c2s.flush(self.server) {
            Ok(_) => None,
            Err(e) => Some(server_write_failed(e)),
        }
    }

    fn on_server_readable(&mut self) -> Option<Outcome> {
        match self.s2c.fill(self.server) {
            Ok(0) => return Some(Outcome::ServerClosed),
            Ok(_) => {}
            Err(e) if retry(&e) => return None,
            Err(e) => return Some(server_write_failed(e)),
        }
        let state = &mut self.state;
        if let Err(e) = self.s2c.scan(|event| match event {
            Event::Start { tag, .. } if SessionState::wants_server_body(tag) => Flow::Capture,
            Event::Start { .. } => Flow::Skip,
            Event::Complete { tag, body } => {
                if tag == backend::READY_FOR_QUERY {
                    state.ready_for_query(body.first().copied().unwrap_or(b'I'));
                } else if tag == backend::ERROR_RESPONSE && is_fatal_or_panic(body) {
                    state.server_fatal = true;
                }
                Flow::Skip
            }
        }) {
            return Some(Outcome::ServerProtocol(e));
        }
        match self.s2c.flush(self.client) {
            Ok(_) => None,
            Err(e) => Some(client_write_failed(e)),
        }
    }
}

fn client_write_failed(e: io::Error) -> Outcome {
    closed_or_io(e, Outcome::ClientClosed)
}

fn server_write_failed(e: io::Error) -> Outcome {
    closed_or_io(e, Outcome::ServerClosed)
}

#[cfg(test)]
mod tests;

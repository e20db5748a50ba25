//! Requests on the management socket: socket transfers from workers, and
//! administration commands (`commands.rs`). Nothing here waits on a peer:
//! reads stop at `WouldBlock` (or a budget), and replies a peer does not
//! read at once are queued and written when its socket is writable.

use std::os::fd::AsFd;

use mio::{Interest, Token};

use super::fds::Accepted;
use super::{Supervisor, CONNECTION_FIRST};
use crate::management::command::CommandRequest;
use crate::management::message::{self, Id};
use crate::management::server::{self, Connection, ReadState, Request};
use crate::slot::SlotState;

impl Supervisor {
    pub(super) fn accept_management(&mut self) {
        loop {
            let listener = &self.management;
            let stream = match self
                .reserve
                .accept("management socket", || listener.accept().map(|(s, _)| s))
            {
                Accepted::Serve(s) => s,
                Accepted::Refuse(s) => {
                    server::refuse(s.as_fd());
                    continue;
                }
                Accepted::Done => return,
            };
            let mut conn = match Connection::new(stream) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("management connection: {e}");
                    continue;
                }
            };
            let me = nix::unistd::geteuid().as_raw();
            if conn.peer_uid != me {
                log::warn!(
                    "management connection from uid {} (pid {}) refused: only uid {me} may manage",
                    conn.peer_uid,
                    conn.peer_pid
                );
                // One small write on a fresh socket; whatever does not fit
                // is lost with the connection.
                conn.reply_error(-1, &format!("only uid {me} may use this socket"));
                continue;
            }
            let token = Token(self.next_connection);
            self.next_connection = self
                .next_connection
                .checked_add(1)
                .unwrap_or(CONNECTION_FIRST);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut conn.stream, token, Interest::READABLE)
            {
                log::warn!("management connection: {e}");
                continue;
            }
            self.connections.insert(token, conn);
        }
    }

    /// Any readiness of a management connection: queued replies go out,
    /// then new requests are read and handled.
    pub(super) fn on_management_readable(&mut self, token: Token) {
        let Some(mut conn) = self.connections.remove(&token) else {
            return;
        };
        let mut keep = conn.flush().is_ok();
        let mut again = false;
        if keep && !conn.closing {
            let mut requests = Vec::new();
            match conn.read_requests(&mut requests) {
                Ok(ReadState::Open) => {}
                Ok(ReadState::More) => again = true,
                Ok(ReadState::Closed) => conn.closing = true,
                Err(e) => {
                    log::warn!("management connection of pid {}: {e}", conn.peer_pid);
                    conn.reply_error(-1, &e.to_string());
                    keep = false;
                }
            }
            // Requests that came whole before a framing error are served.
            for req in requests {
                self.handle(&mut conn, req);
            }
        }
        if conn.broken || (conn.closing && !conn.pending()) {
            keep = false;
        }
        if !keep {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            return;
        }
        let wants_write = conn.pending();
        if again || wants_write != conn.wants_write {
            let interest = if conn.closing {
                Interest::WRITABLE
            } else if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            // Re-registering also re-arms the edge-triggered readiness, so a
            // connection left with unread bytes (`More`) is served again.
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
            {
                log::warn!("management connection of pid {}: {e}", conn.peer_pid);
                let _ = self.poll.registry().deregister(&mut conn.stream);
                return;
            }
            conn.wants_write = wants_write;
        }
        self.connections.insert(token, conn);
    }

    fn handle(&mut self, conn: &mut Connection, req: Request) {
        match req {
            Request::Transfer {
                slot,
                generation,
                fd,
            } => {
                let Some(i) = self.owned_slot(slot, conn.peer_pid, SlotState::Init) else {
                    conn.reply_error(slot, "slot is not being created by you");
                    return;
                };
                match self.sockets.install(i, fd, generation) {
                    Ok(()) => {
                        let _ = conn.reply(Id::Ack, slot, &[], None);
                    }
                    Err(e) => {
                        log::error!("slot {i}: cannot keep the socket: {e}");
                        conn.reply_error(slot, &e.to_string());
                    }
                }
            }
            Request::Command { payload } => match CommandRequest::decode(&payload) {
                Ok(req) => {
                    let reply = self.run_command(&req, conn.peer_pid);
                    if let Err(e) = conn.queue(&reply) {
                        log::warn!("management connection of pid {}: {e}", conn.peer_pid);
                    }
                }
                Err(e) => conn.reply_error(0, &e.to_string()),
            },
            Request::GetSocket { slot } => {
                let Some(i) = self.owned_slot(slot, conn.peer_pid, SlotState::InUse) else {
                    conn.reply_error(slot, "slot is not in use by you");
                    return;
                };
                let generation = self.segment.slots()[i].generation();
                match self.sockets.get(i, generation) {
                    Some(fd) => {
                        let payload = message::generation_payload(generation);
                        let _ = conn.reply(Id::Socket, slot, &payload, Some(fd.as_fd()));
                    }
                    None => conn.reply_error(slot, "no socket of the slot's generation"),
                }
            }
        }
    }

    /// The slot index if `slot` is valid and `pid` holds it in `state`: a
    /// worker may only hand over or fetch the socket of a slot it owns.
    fn owned_slot(&self, slot: i32, pid: i32, state: SlotState) -> Option<usize> {
        let i = usize::try_from(slot).ok()?;
        let s = self.segment.slots().get(i)?;
        (s.snapshot() == (state, pid)).then_some(i)
    }
}

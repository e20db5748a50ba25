//! Requests from workers on the management socket.

use std::os::fd::AsFd;

use mio::{Interest, Token};

use super::{Supervisor, CONNECTION_FIRST};
use crate::management::message::{self, Id};
use crate::management::server::{Connection, Request};
use crate::slot::SlotState;

impl Supervisor {
    pub(super) fn accept_management(&mut self) {
        loop {
            let stream = match self.management.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("management accept: {e}");
                    return;
                }
            };
            let mut conn = match Connection::new(stream) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("management connection: {e}");
                    continue;
                }
            };
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if conn.peer_uid != me {
                log::warn!(
                    "management connection from uid {} (pid {}) refused: only uid {me} may manage",
                    conn.peer_uid,
                    conn.peer_pid
                );
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

    pub(super) fn on_management_readable(&mut self, token: Token) {
        let Some(mut conn) = self.connections.remove(&token) else {
            return;
        };
        let mut requests = Vec::new();
        let keep = match conn.read_requests(&mut requests) {
            Ok(open) => open,
            Err(e) => {
                log::warn!("management connection of pid {}: {e}", conn.peer_pid);
                conn.reply_error(-1, &e.to_string());
                false
            }
        };
        for req in requests {
            self.handle(&mut conn, req);
        }
        if keep {
            self.connections.insert(token, conn);
        } else {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
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

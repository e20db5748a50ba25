//! Cancel keys. A client is given BackendKeyData of its own: a random
//! secret, never the server's, and a process id that depends on the
//! pipeline. In the session and performance pipelines a client keeps one
//! server connection for its whole session, so it is told that backend's
//! real pid, the one `pg_backend_pid()`, `pg_stat_activity`,
//! `pg_terminate_backend` and NOTIFY speak of. In the transaction pipeline
//! the backend changes from one transaction to the next, so no backend pid
//! would stay true: the client is told its worker's pid.
//!
//! While the worker holds a slot, the slot records the pid the client was
//! told and its secret, so a CancelRequest can be routed to the server
//! connection the client is using at that moment, with the server's own
//! key, and a key a client kept from an earlier session can never reach
//! the query of whoever holds that connection now (its secret is gone,
//! even where the backend pid is the same).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::config::{Config, PipelineKind};
use crate::protocol::framer::frames;
use crate::protocol::{self, tag::backend};
use crate::random::{self, RandomError};
use crate::segment::Segment;
use crate::server;
use crate::slot::{Slot, SlotState};

/// A fresh random secret; zero is avoided because an empty slot's key is
/// zero.
pub fn new_secret() -> Result<i32, RandomError> {
    random::nonzero_i32()
}

/// What the slot records as the process id half of its client's key
/// (`Slot::set_client_key_for`): the backend's pid where the client keeps
/// the connection for its session, 0 (the owner, our worker) otherwise. A
/// server that sent no BackendKeyData leaves the client without a key to
/// cancel with, as it would be without us; 0 is recorded then too.
pub fn recorded_pid(kind: PipelineKind, slot: &Slot) -> i32 {
    match kind {
        PipelineKind::Transaction => 0,
        _ => slot.backend_pid(),
    }
}

/// The process id a client is told: the recorded one, or for 0 the
/// worker's.
pub fn told_pid(recorded: i32, me: i32) -> i32 {
    if recorded == 0 {
        me
    } else {
        recorded
    }
}

/// Copies the server's start-up messages for a client, with the server's
/// BackendKeyData replaced by the client's own.
pub fn startup_for_client(server_startup: &[u8], process_id: i32, secret: i32, out: &mut Vec<u8>) {
    for frame in frames(server_startup) {
        if frame.tag == backend::BACKEND_KEY_DATA {
            protocol::backend_key_data(out, process_id, secret);
        } else {
            protocol::write_message(out, frame.tag, |b| b.extend_from_slice(frame.body));
        }
    }
}

/// The server's key for `slot`'s connection if its current client was
/// given `(process_id, secret)`. Every slot costs the same few atomic
/// loads whichever half of the key differs, so the one pass over the
/// slots takes the same effort for any key, right or wrong.
fn target(slot: &Slot, process_id: i32, secret: i32) -> Option<(i32, i32)> {
    let generation = slot.generation();
    let (state, owner) = slot.snapshot();
    let key = slot.client_key();
    let told = told_pid(slot.client_pid(), owner);
    let backend = slot.backend();
    // A secret of 0 is no client's: it marks a slot whose holder has no
    // client key (yet, or any more).
    let matched = (state == SlotState::InUse) & (told == process_id) & (key == secret) & (key != 0);
    // Re-check: the slot may have changed hands, or its client or its
    // connection changed, while we read it.
    let same = slot.client_key() == key
        && slot.snapshot() == (state, owner)
        && slot.generation() == generation;
    (matched && same).then_some(backend)
}

/// Forwards a cancel to the server connection the client with this key
/// holds now, and returns (whether one was found) only once PostgreSQL has
/// taken the request, so that the caller's close tells the client it was
/// delivered. Failures are logged only: the client that sent a
/// CancelRequest expects no answer, just the close.
pub fn route(config: &Config, segment: &Segment, process_id: i32, secret: i32) -> bool {
    for slot in segment.slots() {
        let Some((pid, key)) = target(slot, process_id, secret) else {
            continue;
        };
        // The server the connection is to, which after a `switch-to` may
        // no longer be the primary.
        let server = config.server_at(slot.server());
        let mut msg = Vec::with_capacity(16);
        protocol::encode_cancel_request(pid, key, &mut msg);
        let limit = server::wait_limit(config.main.authentication_timeout);
        let delivered = if server.host.starts_with('/') {
            let path = format!(
                "{}/.s.PGSQL.{}",
                server.host.trim_end_matches('/'),
                server.port
            );
            UnixStream::connect(path).and_then(|s| {
                s.set_read_timeout(Some(limit))?;
                s.set_write_timeout(Some(limit))?;
                deliver(s, &msg, limit)
            })
        } else {
            (server.host.as_str(), server.port)
                .try_into_addr()
                .and_then(|a| TcpStream::connect_timeout(&a, limit))
                .and_then(|s| {
                    s.set_read_timeout(Some(limit))?;
                    s.set_write_timeout(Some(limit))?;
                    deliver(s, &msg, limit)
                })
        };
        if let Err(e) = delivered {
            log::warn!("cancel for backend {pid}: {e}");
        }
        return true;
    }
    false
}

/// Writes the CancelRequest and waits for PostgreSQL to close its end.
/// PostgreSQL closes only once it has signalled the backend, and a client
/// (libpq's `PQcancel`, and the drivers built like it) takes our close of
/// its cancel connection as "delivered" and sends its next statement: were
/// we to close first, the signal could land on that next statement.
fn deliver<S: Read + Write>(mut server: S, msg: &[u8], limit: Duration) -> std::io::Result<()> {
    // The socket timeouts bound each call; this bounds them all, against a
    // peer that trickles bytes and never closes.
    let deadline = Instant::now() + limit;
    server.write_all(msg)?;
    // PostgreSQL sends nothing on a cancel connection; anything it does
    // send is read and dropped until the close.
    let mut sink = [0u8; 64];
    loop {
        match server.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) if Instant::now() >= deadline => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the server did not close its cancel connection",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A reset is a close too: the backend got the request.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

trait TryIntoAddr {
    fn try_into_addr(self) -> std::io::Result<std::net::SocketAddr>;
}

impl TryIntoAddr for (&str, u16) {
    fn try_into_addr(self) -> std::io::Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        self.to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_data_is_replaced_and_the_rest_kept() {
        let mut server = Vec::new();
        protocol::parameter_status(&mut server, "TimeZone", "UTC");
        protocol::backend_key_data(&mut server, 4242, 99);
        protocol::parameter_status(&mut server, "a", "b");
        let mut out = Vec::new();
        startup_for_client(&server, 7, 8, &mut out);
        let mut expect = Vec::new();
        protocol::parameter_status(&mut expect, "TimeZone", "UTC");
        protocol::backend_key_data(&mut expect, 7, 8);
        protocol::parameter_status(&mut expect, "a", "b");
        assert_eq!(out, expect);
    }

    /// A slot held by worker 10 on backend 4242 (server secret 77).
    fn held() -> Box<Slot> {
        let slot: Box<Slot> = Box::default();
        assert!(slot.try_reserve(10));
        slot.set_backend(4242, 77);
        slot.transition(SlotState::Init, 10, SlotState::InUse, 10)
            .unwrap();
        slot
    }

    #[test]
    fn a_client_told_the_backend_pid_cancels_with_it_and_our_secret_only() {
        let slot = held();
        slot.set_client_key_for(recorded_pid(PipelineKind::Session, &slot), 5);
        assert_eq!(told_pid(slot.client_pid(), 10), 4242);
        assert_eq!(target(&slot, 4242, 5), Some((4242, 77)));
        // The backend's pid with a wrong secret, the server's own secret
        // included, and the worker's pid with the right one: nothing.
        assert_eq!(target(&slot, 4242, 6), None);
        assert_eq!(target(&slot, 4242, 77), None);
        assert_eq!(target(&slot, 10, 5), None);
    }

    #[test]
    fn a_transaction_client_is_told_its_workers_pid() {
        let slot = held();
        assert_eq!(recorded_pid(PipelineKind::Transaction, &slot), 0);
        slot.set_client_key(5);
        assert_eq!(told_pid(slot.client_pid(), 10), 10);
        assert_eq!(target(&slot, 10, 5), Some((4242, 77)));
        assert_eq!(target(&slot, 4242, 5), None);
    }

    #[test]
    fn a_key_outlives_neither_its_client_nor_its_slot() {
        let slot = held();
        slot.set_client_key_for(4242, 5);
        // The client left: the connection stays, with the same backend,
        // for the next client.
        slot.set_client_key(0);
        assert_eq!(target(&slot, 4242, 5), None);
        assert_eq!(target(&slot, 10, 0), None, "a zero secret is nobody's");
        slot.set_client_key_for(4242, 5);
        slot.transition(SlotState::InUse, 10, SlotState::Free, 0)
            .unwrap();
        assert_eq!(target(&slot, 4242, 5), None, "an idle slot runs nothing");
    }

    #[test]
    fn secrets_are_not_zero_and_vary() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}

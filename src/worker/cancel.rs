//! Cancel keys. A client is given BackendKeyData of its own: the process id
//! is its worker's pid and the secret is random. While the worker holds a
//! slot, the slot records that secret, so a CancelRequest can be routed to
//! the server connection the client is using at that moment, with the
//! server's own key, and a key a client kept from an earlier session can
//! never reach the query of whoever holds that connection now.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::protocol::framer::frames;
use crate::protocol::{self, tag::backend};
use crate::random::{self, RandomError};
use crate::segment::Segment;
use crate::server;
use crate::slot::SlotState;

/// A fresh random secret; zero is avoided because an empty slot's key is
/// zero.
pub fn new_secret() -> Result<i32, RandomError> {
    random::nonzero_i32()
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

/// Forwards a cancel to the server connection the client with this key
/// holds now, and returns (whether one was found) only once PostgreSQL has
/// taken the request, so that the caller's close tells the client it was
/// delivered. Failures are logged only: the client that sent a
/// CancelRequest expects no answer, just the close.
pub fn route(config: &Config, segment: &Segment, process_id: i32, secret: i32) -> bool {
    for slot in segment.slots() {
        if slot.snapshot() != (SlotState::InUse, process_id) || slot.client_key() != secret {
            continue;
        }
        let (pid, key) = slot.backend();
        // The server the connection is to, which after a `switch-to` may
        // no longer be the primary.
        let server = config.server_at(slot.server());
        // Re-check: the slot may have changed hands while we read it.
        if slot.snapshot() != (SlotState::InUse, process_id) || slot.client_key() != secret {
            return false;
        }
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

    #[test]
    fn secrets_are_not_zero_and_vary() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}

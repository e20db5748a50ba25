//! Cancel keys. A client is given BackendKeyData of its own: the process id
//! is its worker's pid and the secret is random. While the worker holds a
//! slot, the slot records that secret, so a CancelRequest can be routed to
//! the server connection the client is using at that moment, with the
//! server's own key, and a key a client kept from an earlier session can
//! never reach the query of whoever holds that connection now.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::Config;
use crate::protocol::framer::frames;
use crate::protocol::{self, tag::backend};
use crate::random::{self, RandomError};
use crate::segment::Segment;
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
/// holds now; returns whether one was found. Failures are logged only: the
/// client that sent a CancelRequest expects no answer.
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
        let sent = if server.host.starts_with('/') {
            let path = format!(
                "{}/.s.PGSQL.{}",
                server.host.trim_end_matches('/'),
                server.port
            );
            UnixStream::connect(path).and_then(|mut s| s.write_all(&msg))
        } else {
            (server.host.as_str(), server.port)
                .try_into_addr()
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)))
                .and_then(|mut s| s.write_all(&msg))
        };
        if let Err(e) = sent {
            log::warn!("cancel for backend {pid}: {e}");
        }
        return true;
    }
    false
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

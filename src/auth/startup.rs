//! The client's first packets: encryption requests are declined, the
//! protocol version is negotiated down to 3.0, and the startup message is
//! returned to the caller (a worker, or a remote management process).

use std::os::fd::BorrowedFd;

use crate::fdio::{write_all, FdIo};
use crate::protocol::{self, ProtocolError, StartupMessage, StartupRequest};

pub enum ClientStart {
    Startup(StartupMessage),
    Cancel { process_id: i32, secret_key: i32 },
}

/// A client may ask for SSL and then GSS encryption before starting;
/// anything beyond that is a client going round in circles.
const MAX_NEGOTIATIONS: usize = 2;

pub fn negotiate(client: BorrowedFd<'_>, out: &mut Vec<u8>) -> Result<ClientStart, ProtocolError> {
    for _ in 0..=MAX_NEGOTIATIONS {
        match protocol::read_startup(&mut FdIo(client))? {
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                write_all(client, &[protocol::ssl_refused()])?;
            }
            StartupRequest::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(ClientStart::Cancel {
                    process_id,
                    secret_key,
                })
            }
            StartupRequest::Startup(msg) => {
                if msg.minor > 0 {
                    // Newer clients propose a higher minor version and
                    // `_pq_.` options; we speak 3.0 and say so, as
                    // PostgreSQL does, and the client carries on with 3.0.
                    let unknown: Vec<&str> = msg
                        .params
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .filter(|k| k.starts_with("_pq_."))
                        .collect();
                    out.clear();
                    protocol::negotiate_protocol_version(out, 0, &unknown);
                    write_all(client, out)?;
                }
                return Ok(ClientStart::Startup(msg));
            }
        }
    }
    Err(ProtocolError::Malformed {
        what: "startup: too many encryption requests",
    })
}

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

/// A client may ask for SSL and for GSS encryption once each, in either
/// order, before starting. As in PostgreSQL's `ProcessStartupPacket`, a
/// repeated request is not recognised as one: its code is read as a
/// protocol version (1234.5679 or 1234.5680) and refused as unsupported.
pub fn negotiate(client: BorrowedFd<'_>, out: &mut Vec<u8>) -> Result<ClientStart, ProtocolError> {
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        match protocol::read_startup(&mut FdIo(client))? {
            StartupRequest::Ssl if !ssl_done => {
                ssl_done = true;
                write_all(client, &[protocol::ssl_refused()])?;
            }
            StartupRequest::GssEnc if !gss_done => {
                gss_done = true;
                write_all(client, &[protocol::ssl_refused()])?;
            }
            StartupRequest::Ssl => return Err(not_a_version(protocol::SSL_REQUEST_CODE)),
            StartupRequest::GssEnc => return Err(not_a_version(protocol::GSSENC_REQUEST_CODE)),
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
}

fn not_a_version(code: u32) -> ProtocolError {
    ProtocolError::UnsupportedVersion {
        major: (code >> 16) as u16,
        minor: (code & 0xFFFF) as u16,
    }
}

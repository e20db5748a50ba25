//! Opening a new server connection: connect, send the startup message,
//! follow the server until ReadyForQuery, and keep the ParameterStatus and
//! BackendKeyData messages that every later client of the connection is
//! shown.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::io::{set_nodelay, set_timeouts, write_all, FdIo};
use crate::config::ServerConfig;
use crate::protocol::tag::backend;
use crate::protocol::{self, AuthRequest, ErrorResponse, ProtocolError, StartupMessage};

/// Start-up messages from the server are small; anything bigger is not a
/// PostgreSQL server talking.
const MAX_STARTUP_MESSAGE: usize = 64 * 1024;

pub struct ServerConnection {
    pub fd: OwnedFd,
    /// Raw ParameterStatus and BackendKeyData messages, in server order.
    pub startup: Vec<u8>,
    pub backend_pid: i32,
    pub backend_key: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to server {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("server refused the connection: {0}")]
    Rejected(ErrorResponse),
    #[error(
        "server asks for {0} authentication; only trust is supported towards the server so far"
    )]
    AuthUnsupported(&'static str),
    #[error("server start-up: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("server sent unexpected message '{}' during start-up", *.0 as char)]
    Unexpected(u8),
}

pub fn connect(
    server: &ServerConfig,
    user: &str,
    database: &str,
    timeout: Duration,
) -> Result<ServerConnection, ServerError> {
    let fd = open_socket(server, timeout)?;
    set_timeouts(fd.as_fd(), Some(timeout)).map_err(ProtocolError::Io)?;

    let mut out = Vec::with_capacity(128);
    StartupMessage::new(vec![
        ("user".to_string(), user.to_string()),
        ("database".to_string(), database.to_string()),
    ])
    .encode(&mut out);
    write_all(fd.as_fd(), &out).map_err(ProtocolError::Io)?;

    let mut startup = Vec::with_capacity(512);
    let mut backend_pid = 0;
    let mut backend_key = 0;
    let mut io = FdIo(fd.as_fd());
    loop {
        let msg = protocol::read_message(&mut io, MAX_STARTUP_MESSAGE)?;
        match msg.tag {
            backend::AUTHENTICATION => match protocol::parse_authentication(&msg.body)? {
                AuthRequest::Ok => {}
                AuthRequest::CleartextPassword => {
                    return Err(ServerError::AuthUnsupported("password"))
                }
                AuthRequest::Md5Password { .. } => return Err(ServerError::AuthUnsupported("md5")),
                AuthRequest::Sasl { .. } => return Err(ServerError::AuthUnsupported("SASL")),
                _ => return Err(ServerError::AuthUnsupported("an unknown method of")),
            },
            backend::PARAMETER_STATUS => append_raw(&mut startup, msg.tag, &msg.body),
            backend::BACKEND_KEY_DATA => {
                let (pid, key) = protocol::parse_backend_key_data(&msg.body)?;
                backend_pid = pid;
                backend_key = key;
                append_raw(&mut startup, msg.tag, &msg.body);
            }
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            backend::ERROR_RESPONSE => {
                return Err(ServerError::Rejected(ErrorResponse::parse(&msg.body)?))
            }
            backend::READY_FOR_QUERY => break,
            other => return Err(ServerError::Unexpected(other)),
        }
    }
    set_timeouts(fd.as_fd(), None).map_err(ProtocolError::Io)?;
    Ok(ServerConnection {
        fd,
        startup,
        backend_pid,
        backend_key,
    })
}

fn open_socket(server: &ServerConfig, timeout: Duration) -> Result<OwnedFd, ServerError> {
    if server.host.starts_with('/') {
        let path = format!(
            "{}/.s.PGSQL.{}",
            server.host.trim_end_matches('/'),
            server.port
        );
        return UnixStream::connect(&path)
            .map(OwnedFd::from)
            .map_err(|source| ServerError::Connect { addr: path, source });
    }
    let addr = format!("{}:{}", server.host, server.port);
    let addrs = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|source| ServerError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let fd = OwnedFd::from(s);
                set_nodelay(fd.as_fd());
                return Ok(fd);
            }
            Err(e) => last = e,
        }
    }
    Err(ServerError::Connect { addr, source: last })
}

fn append_raw(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    protocol::write_message(out, tag, |b| b.extend_from_slice(body));
}

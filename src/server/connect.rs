//! Opening a new server connection: connect, send the startup message,
//! follow the server until ReadyForQuery, and keep the ParameterStatus and
//! BackendKeyData messages that every later client of the connection is
//! shown.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::auth::md5;
use crate::auth::proof::AuthProof;
use crate::auth::scram::{self, ScramClient, ScramError};
use crate::config::ServerConfig;
use crate::fdio::{set_nodelay, set_timeouts, write_all, FdIo};
use crate::protocol::frontend;
use crate::protocol::tag::backend;
use crate::protocol::tag::frontend as frontend_tag;
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
    /// Raw NoticeResponse messages sent before ReadyForQuery, in server
    /// order, at most `MAX_STARTUP_NOTICES` bytes: the client that asked
    /// for the connection is shown them, as PostgreSQL would.
    pub notices: Vec<u8>,
}

/// Start-up notices kept for the client; a server that says more (a
/// `client_min_messages` of debug5 with a long login) has the rest
/// dropped rather than held in memory.
pub const MAX_STARTUP_NOTICES: usize = 64 * 1024;

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
    #[error("authenticating to the server: {0}")]
    Auth(String),
    #[error("SCRAM towards the server: {0}")]
    Scram(#[source] ScramError),
    #[error("client during relayed authentication: {0}")]
    Client(#[source] ProtocolError),
}

/// How pgcorral answers the server's authentication request.
#[derive(Clone, Copy)]
pub enum Login<'a> {
    /// pgcorral knows no password: the server must not ask for one.
    Trust,
    /// pgcorral logs in with this password (from the vault).
    Password(&'a str),
    /// The client answers: each challenge is relayed to it and its answer
    /// to the server (pass-through for users not in the vault).
    Relay(BorrowedFd<'a>),
}

/// Client answers during a relayed exchange are passwords or SASL
/// messages; anything longer is not an answer.
const MAX_CLIENT_ANSWER: usize = 16 * 1024;

pub fn connect(
    server: &ServerConfig,
    user: &str,
    database: &str,
    params: &[(String, String)],
    login: Login<'_>,
    timeout: Duration,
) -> Result<(ServerConnection, AuthProof), ServerError> {
    let fd = open_socket(server, timeout)?;
    set_timeouts(fd.as_fd(), Some(timeout)).map_err(ProtocolError::Io)?;
    send_startup(fd.as_fd(), user, database, params)?;

    let mut startup = Vec::with_capacity(512);
    let mut backend_pid = 0;
    let mut backend_key = 0;
    let mut notices = Vec::new();
    let mut proof = AuthProof::Nothing;
    let mut scram: Option<ScramClient> = None;
    let mut io = FdIo(fd.as_fd());
    loop {
        let msg = protocol::read_message(&mut io, MAX_STARTUP_MESSAGE)?;
        match msg.tag {
            backend::AUTHENTICATION => {
                if let Some(p) = authenticate(fd.as_fd(), &msg.body, login, user, &mut scram)? {
                    proof = p;
                }
            }
            backend::PARAMETER_STATUS => append_raw(&mut startup, msg.tag, &msg.body),
            backend::BACKEND_KEY_DATA => {
                let (pid, key) = protocol::parse_backend_key_data(&msg.body)?;
                backend_pid = pid;
                backend_key = key;
                append_raw(&mut startup, msg.tag, &msg.body);
            }
            backend::NOTICE_RESPONSE => {
                if notices.len() + 5 + msg.body.len() <= MAX_STARTUP_NOTICES {
                    append_raw(&mut notices, msg.tag, &msg.body);
                } else {
                    log::debug!("server start-up notice dropped: over {MAX_STARTUP_NOTICES} bytes");
                }
            }
            backend::NEGOTIATE_PROTOCOL_VERSION => {}
            backend::ERROR_RESPONSE => {
                return Err(ServerError::Rejected(ErrorResponse::parse(&msg.body)?))
            }
            backend::READY_FOR_QUERY => break,
            other => return Err(ServerError::Unexpected(other)),
        }
    }
    set_timeouts(fd.as_fd(), None).map_err(ProtocolError::Io)?;
    Ok((
        ServerConnection {
            fd,
            startup,
            backend_pid,
            backend_key,
            notices,
        },
        proof,
    ))
}

fn send_startup(
    fd: BorrowedFd<'_>,
    user: &str,
    database: &str,
    params: &[(String, String)],
) -> Result<(), ServerError> {
    let mut out = Vec::with_capacity(256);
    let mut all = vec![
        ("user".to_string(), user.to_string()),
        ("database".to_string(), database.to_string()),
    ];
    all.extend(super::settings::login_params(params));
    StartupMessage::new(all).encode(&mut out);
    write_all(fd, &out).map_err(ProtocolError::Io)?;
    Ok(())
}

/// Answers one Authentication request of the server; returns what a
/// relaying client proved, if this answer proved something.
fn authenticate(
    fd: BorrowedFd<'_>,
    body: &[u8],
    login: Login<'_>,
    user: &str,
    scram: &mut Option<ScramClient>,
) -> Result<Option<AuthProof>, ServerError> {
    let request = protocol::parse_authentication(body)?;
    if matches!(request, AuthRequest::Ok) {
        // A server that skips SASLFinal never proved it knows the
        // password: it could be anyone.
        if scram.is_some() {
            return Err(ServerError::Auth(
                "server accepted SCRAM without proving itself".into(),
            ));
        }
        return Ok(None);
    }
    // The answer carries a password, an md5 response or a SCRAM proof.
    let mut out = Zeroizing::new(Vec::with_capacity(256));
    let proof = match login {
        Login::Trust => return Err(ServerError::AuthUnsupported(method_name(&request))),
        Login::Password(pw) => {
            answer_with_password(&request, pw, user, scram, &mut out)?;
            None
        }
        Login::Relay(client) => relay(client, body, &request, &mut out)?,
    };
    if !out.is_empty() {
        write_all(fd, &out).map_err(ProtocolError::Io)?;
    }
    Ok(proof)
}

fn method_name(request: &AuthRequest) -> &'static str {
    match request {
        AuthRequest::CleartextPassword => "password",
        AuthRequest::Md5Password { .. } => "md5",
        AuthRequest::Sasl { .. } | AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
            "SCRAM-SHA-256"
        }
        _ => "an unsupported method of",
    }
}

/// pgcorral logs in itself with a vault password.
fn answer_with_password(
    request: &AuthRequest,
    password: &str,
    user: &str,
    scram: &mut Option<ScramClient>,
    out: &mut Vec<u8>,
) -> Result<(), ServerError> {
    match request {
        AuthRequest::CleartextPassword => frontend::password(out, password.as_bytes()),
        AuthRequest::Md5Password { salt } => {
            let r = md5::md5_response(password.as_bytes(), user, salt)
                .map_err(|e| ServerError::Auth(e.to_string()))?;
            frontend::password(out, r.as_bytes());
        }
        AuthRequest::Sasl { mechanisms } => {
            if !mechanisms.iter().any(|m| m == scram::SCRAM_SHA_256) {
                return Err(ServerError::AuthUnsupported("SASL (without SCRAM-SHA-256)"));
            }
            let mut client = ScramClient::new(password.as_bytes()).map_err(ServerError::Scram)?;
            let first = client.client_first();
            frontend::sasl_initial_response(out, scram::SCRAM_SHA_256, Some(&first));
            *scram = Some(client);
        }
        AuthRequest::SaslContinue(data) => {
            let client = scram.as_mut().ok_or(ServerError::Unexpected(b'R'))?;
            let last = client.server_first(data).map_err(ServerError::Scram)?;
            frontend::sasl_response(out, &last);
        }
        AuthRequest::SaslFinal(data) => {
            let client = scram.as_ref().ok_or(ServerError::Unexpected(b'R'))?;
            // A server that cannot prove it knows the verifier is not ours.
            client.server_final(data).map_err(ServerError::Scram)?;
            *scram = None;
        }
        _ => return Err(ServerError::AuthUnsupported(method_name(request))),
    }
    Ok(())
}

/// Relays one challenge to the client and its answer back into `out`.
/// Returns what the client proved, when the exchange reveals it.
fn relay(
    client: BorrowedFd<'_>,
    body: &[u8],
    request: &AuthRequest,
    out: &mut Vec<u8>,
) -> Result<Option<AuthProof>, ServerError> {
    let mut challenge = Vec::with_capacity(body.len() + 5);
    protocol::write_message(&mut challenge, backend::AUTHENTICATION, |b| {
        b.extend_from_slice(body)
    });
    write_all(client, &challenge).map_err(|e| ServerError::Client(e.into()))?;
    if matches!(request, AuthRequest::SaslFinal(_)) {
        // The client does not answer SASLFinal; AuthenticationOk follows.
        return Ok(None);
    }
    let answer = protocol::read_message(&mut FdIo(client), MAX_CLIENT_ANSWER)
        .map_err(ServerError::Client)?;
    let body = Zeroizing::new(answer.body);
    if answer.tag != frontend_tag::PASSWORD {
        return Err(ServerError::Client(ProtocolError::Malformed {
            what: "authentication: expected a password message",
        }));
    }
    protocol::write_message(out, answer.tag, |b| b.extend_from_slice(&body));
    let password = body.strip_suffix(&[0]).unwrap_or(&body);
    Ok(Some(match request {
        AuthRequest::CleartextPassword => AuthProof::of_password(password),
        AuthRequest::Md5Password { salt } => {
            AuthProof::of_md5(*salt, password).unwrap_or(AuthProof::NotReusable)
        }
        _ => AuthProof::NotReusable,
    }))
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

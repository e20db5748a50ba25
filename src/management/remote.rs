//! Remote management: a TCP port on which an administrator authenticates
//! with SCRAM-SHA-256 in PostgreSQL's message formats (StartupMessage,
//! AuthenticationSASL, …; an SSLRequest is declined), after which the
//! connection carries the same management protocol as the local socket.
//! Each connection is served by a short-lived process the supervisor forks,
//! which relays to the local socket, so the supervisor never waits on a
//! remote peer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::auth::client::{check_scram, AuthError};
use crate::auth::startup::{self as client_startup, ClientStart};
use crate::auth::Credentials;
use crate::auth::ScramVerifier;
use crate::fdio as io;
use crate::protocol;
use crate::random;

/// Serves one remote administrator; returns the exit status.
pub fn serve(
    client: OwnedFd,
    peer: &str,
    credentials: &Credentials,
    local: &Path,
    timeout: Duration,
) -> i32 {
    let fd = client.as_fd();
    io::set_nodelay(fd);
    if io::set_nonblocking(fd, false).is_err() || io::set_timeouts(fd, Some(timeout)).is_err() {
        return 1;
    }
    match authenticate(fd, credentials) {
        Ok(user) => log::info!("remote management: {user} from {peer} authenticated"),
        Err(e) => {
            log::warn!("remote management from {peer}: {e}");
            if let Some(resp) = e.response() {
                let mut out = Vec::new();
                resp.encode(&mut out);
                let _ = io::write_all(fd, &out);
            }
            return 1;
        }
    }
    // Bounded like a worker's requests: the supervisor accepts at once or
    // is stuck. The bound stays on for the relay's writes to it.
    let local = match crate::sys::local::connect(local, super::client::REQUEST_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            log::error!("remote management: local socket: {e}");
            return 1;
        }
    };
    let _ = io::set_timeouts(fd, None);
    relay(fd, local.as_fd());
    0
}

fn authenticate(client: BorrowedFd<'_>, credentials: &Credentials) -> Result<String, AuthError> {
    let mut out = Vec::new();
    let startup = match client_startup::negotiate(client, &mut out)? {
        ClientStart::Startup(s) => s,
        ClientStart::Cancel { .. } => {
            return Err(AuthError::Refused("not a management request".into()))
        }
    };
    let user = startup.user().unwrap_or_default().to_string();
    // An unknown administrator goes through the same exchange against a
    // verifier nobody knows, so the answer cannot tell names apart.
    let verifier = match credentials.admin_verifiers.get(&user) {
        Some(v) => v.clone(),
        None => {
            let secret = Zeroizing::new(random::bytes::<32>()?);
            ScramVerifier::generate(secret.as_slice())?
        }
    };
    check_scram(client, &user, &verifier)?;
    out.clear();
    protocol::authentication_ok(&mut out);
    protocol::ready_for_query(&mut out, b'I');
    io::write_all(client, &out).map_err(|e| AuthError::Client(e.into()))?;
    Ok(user)
}

/// Copies bytes both ways until either side closes.
fn relay(a: BorrowedFd<'_>, b: BorrowedFd<'_>) {
    use crate::sys::poll::{readable, wait_pair, Events, Woke};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let ready = match wait_pair((a, Events::POLLIN), Some((b, Events::POLLIN)), None, None) {
            Ok(Woke::Ready(ready)) => ready,
            Ok(Woke::Interrupted | Woke::TimedOut) => continue,
            Err(_) => return,
        };
        for (revents, (from, to)) in ready.into_iter().zip([(a, b), (b, a)]) {
            if !readable(revents) {
                continue;
            }
            let n = match crate::sys::io::read(from, &mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if io::write_all(to, &buf[..n]).is_err() {
                return;
            }
        }
    }
}

/// The CLI's side: logs in to a remote management port with SCRAM and
/// returns a client speaking the management protocol over it.
pub fn login(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<super::client::ManagementClient, String> {
    use crate::auth::scram::{ScramClient, SCRAM_SHA_256};
    use crate::protocol::{frontend, tag::backend, AuthRequest, StartupMessage};
    use std::net::{TcpStream, ToSocketAddrs};

    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let fd = OwnedFd::from(stream);
    io::set_timeouts(fd.as_fd(), Some(timeout)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    StartupMessage::new(vec![
        ("user".to_string(), user.to_string()),
        ("database".to_string(), "pgcorral".to_string()),
    ])
    .encode(&mut out);
    io::write_all(fd.as_fd(), &out).map_err(|e| e.to_string())?;
    let mut scram: Option<ScramClient> = None;
    let mut proved = false;
    loop {
        let msg = protocol::read_message(&mut io::FdIo(fd.as_fd()), 64 * 1024)
            .map_err(|e| e.to_string())?;
        out.clear();
        match msg.tag {
            backend::AUTHENTICATION => match protocol::parse_authentication(&msg.body)
                .map_err(|e| e.to_string())?
            {
                AuthRequest::Ok if proved => {}
                AuthRequest::Sasl { mechanisms }
                    if mechanisms.iter().any(|m| m == SCRAM_SHA_256) =>
                {
                    let mut c = ScramClient::new(password.as_bytes()).map_err(|e| e.to_string())?;
                    let first = c.client_first();
                    frontend::sasl_initial_response(&mut out, SCRAM_SHA_256, Some(&first));
                    scram = Some(c);
                }
                AuthRequest::SaslContinue(data) => {
                    let c = scram.as_mut().ok_or("unexpected SASL continue")?;
                    let last = c.server_first(&data).map_err(|e| e.to_string())?;
                    frontend::sasl_response(&mut out, &last);
                }
                AuthRequest::SaslFinal(data) => {
                    let c = scram.as_ref().ok_or("unexpected SASL final")?;
                    // pgcorral must prove it knows the password too.
                    c.server_final(&data).map_err(|e| e.to_string())?;
                    proved = true;
                }
                _ => {
                    return Err(
                        "the server asked for an authentication pgcorral-cli does not do".into(),
                    )
                }
            },
            backend::ERROR_RESPONSE => {
                let e = protocol::ErrorResponse::parse(&msg.body).map_err(|e| e.to_string())?;
                return Err(e.message);
            }
            backend::READY_FOR_QUERY => break,
            _ => {}
        }
        if !out.is_empty() {
            io::write_all(fd.as_fd(), &out).map_err(|e| e.to_string())?;
        }
    }
    let _ = io::set_timeouts(fd.as_fd(), None);
    Ok(super::client::ManagementClient::from_stream(fd))
}

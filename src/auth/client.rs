//! Who may in, and how a client proves its password: hba rules first; then
//! pgcorral checks users of the vault itself, and for every other user the
//! server decides (pass-through), with a pooled connection handed to a later
//! client only once it proved what the first one proved.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use super::hba::{ConnKind, Method};
use super::proof::AuthProof;
use super::scram::{self, ScramServer, ScramVerifier};
use super::{constant_time_eq, md5, password_failed_message};
use zeroize::Zeroizing;

use super::credentials::Credentials;
use crate::fdio::{write_all, FdIo};
use crate::protocol::tag::frontend as frontend_tag;
use crate::protocol::{self, sqlstate, AuthRequest, ErrorResponse, ProtocolError};
use crate::random::{self, RandomError};

/// The outcome of admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// A vault user whose password pgcorral checked (or whom hba trusts):
    /// pgcorral logs in to PostgreSQL with the vault password.
    Vault { server_password: Zeroizing<String> },
    /// Not in the vault: PostgreSQL decides. `trusted` when hba says trust,
    /// which lets the client use a pooled connection without a password.
    PassThrough { trusted: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Refused(String),
    #[error("password authentication failed for user \"{0}\"")]
    BadPassword(String),
    #[error("client during authentication: {0}")]
    Client(#[from] ProtocolError),
    #[error("authentication: {0}")]
    Internal(String),
    #[error("authentication: {0}")]
    Random(#[from] RandomError),
    #[error("authentication: {0}")]
    Scram(#[from] scram::ScramError),
    #[error("authentication: {0}")]
    Md5(#[from] md5::Md5Error),
}

impl AuthError {
    pub fn response(&self) -> Option<ErrorResponse> {
        Some(match self {
            AuthError::Refused(m) => {
                ErrorResponse::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, m.clone())
            }
            AuthError::BadPassword(user) => {
                ErrorResponse::fatal(sqlstate::INVALID_PASSWORD, password_failed_message(user))
            }
            AuthError::Client(ProtocolError::Eof | ProtocolError::Io(_)) => return None,
            AuthError::Client(e) => ErrorResponse::fatal(e.sqlstate(), e.to_string()),
            AuthError::Internal(m) => ErrorResponse::fatal(sqlstate::INTERNAL_ERROR, m.clone()),
            AuthError::Random(_) | AuthError::Scram(_) | AuthError::Md5(_) => {
                ErrorResponse::fatal(sqlstate::INTERNAL_ERROR, self.to_string())
            }
        })
    }
}

/// Client answers are passwords or SASL messages.
const MAX_ANSWER: usize = 16 * 1024;

pub fn admit(
    creds: &Credentials,
    client: BorrowedFd<'_>,
    peer: Option<SocketAddr>,
    user: &str,
    database: &str,
) -> Result<Admission, AuthError> {
    let method = match &creds.hba {
        None => Method::All,
        Some(hba) => {
            let conn = match peer {
                Some(a) => ConnKind::Host {
                    addr: a.ip(),
                    ssl: false,
                },
                None => ConnKind::Local,
            };
            let host = peer
                .map(|a| format!("host \"{}\"", a.ip()))
                .unwrap_or_else(|| "local connection".to_string());
            let rule = hba.find(conn, database, user).ok_or_else(|| {
                AuthError::Refused(format!(
                    "no pg_hba.conf entry for {host}, user \"{user}\", database \"{database}\", no encryption"
                ))
            })?;
            match rule.method {
                Method::Reject => {
                    return Err(AuthError::Refused(format!(
                        "pg_hba.conf rejects connection for {host}, user \"{user}\", database \"{database}\", no encryption"
                    )))
                }
                Method::Cert => {
                    return Err(AuthError::Refused(format!(
                        "certificate authentication failed for user \"{user}\": TLS is not available"
                    )))
                }
                m => m,
            }
        }
    };
    let Some(server_password) = creds.server_passwords.get(user) else {
        return Ok(Admission::PassThrough {
            trusted: method == Method::Trust,
        });
    };
    let expected = creds.client_password(user).unwrap_or(server_password);
    match method {
        Method::Trust => {}
        Method::Password => check_cleartext(client, user, expected)?,
        Method::Md5 => check_md5(client, user, expected)?,
        // `all` for a vault user: pgcorral picks the strongest method.
        Method::ScramSha256 | Method::All => {
            let verifier = match creds.client_verifiers.get(user) {
                Some(v) => v.clone(),
                None => ScramVerifier::generate(expected.as_bytes())?,
            };
            check_scram(client, user, &verifier)?
        }
        Method::Reject | Method::Cert => unreachable_refusal()?,
    }
    Ok(Admission::Vault {
        server_password: server_password.clone(),
    })
}

fn unreachable_refusal() -> Result<(), AuthError> {
    Err(AuthError::Internal(
        "refused method reached the password check".into(),
    ))
}

/// A pass-through client is about to be given a pooled connection: it
/// must prove what the client that opened it proved.
pub fn check_pooled(
    client: BorrowedFd<'_>,
    user: &str,
    proof: &AuthProof,
) -> Result<(), AuthError> {
    match proof {
        AuthProof::Nothing => Ok(()),
        AuthProof::Password(_) => {
            send_request(client, &AuthRequest::CleartextPassword)?;
            let answer = read_answer(client)?;
            let pw = answer.strip_suffix(&[0]).unwrap_or(&answer);
            if proof.accepts_password(pw) {
                Ok(())
            } else {
                Err(AuthError::BadPassword(user.to_string()))
            }
        }
        AuthProof::Md5 { salt, .. } => {
            send_request(client, &AuthRequest::Md5Password { salt: *salt })?;
            let answer = read_answer(client)?;
            let r = answer.strip_suffix(&[0]).unwrap_or(&answer);
            if proof.accepts_md5(r) {
                Ok(())
            } else {
                Err(AuthError::BadPassword(user.to_string()))
            }
        }
        AuthProof::NotReusable => Err(AuthError::Internal(
            "a connection that cannot be shared was pooled".into(),
        )),
    }
}

fn send_request(client: BorrowedFd<'_>, request: &AuthRequest) -> Result<(), AuthError> {
    let mut out = Vec::with_capacity(64);
    request.encode(&mut out);
    write_all(client, &out).map_err(|e| AuthError::Client(e.into()))
}

/// A password message's body: a password, an md5 response or a SASL
/// message, wiped when dropped.
fn read_answer(client: BorrowedFd<'_>) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let msg = protocol::read_message(&mut FdIo(client), MAX_ANSWER)?;
    if msg.tag != frontend_tag::PASSWORD {
        return Err(AuthError::Client(ProtocolError::Malformed {
            what: "authentication: expected a password message",
        }));
    }
    Ok(Zeroizing::new(msg.body))
}

fn check_cleartext(client: BorrowedFd<'_>, user: &str, expected: &str) -> Result<(), AuthError> {
    send_request(client, &AuthRequest::CleartextPassword)?;
    let answer = read_answer(client)?;
    let given = answer.strip_suffix(&[0]).unwrap_or(&answer);
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::BadPassword(user.to_string()))
    }
}

fn check_md5(client: BorrowedFd<'_>, user: &str, expected: &str) -> Result<(), AuthError> {
    let salt = random::bytes()?;
    send_request(client, &AuthRequest::Md5Password { salt })?;
    let answer = read_answer(client)?;
    let given = answer.strip_suffix(&[0]).unwrap_or(&answer);
    let want = md5::md5_response(expected.as_bytes(), user, &salt)?;
    if md5::responses_match(want.as_bytes(), given) {
        Ok(())
    } else {
        Err(AuthError::BadPassword(user.to_string()))
    }
}

pub fn check_scram(
    client: BorrowedFd<'_>,
    user: &str,
    verifier: &ScramVerifier,
) -> Result<(), AuthError> {
    let mut server = ScramServer::new(verifier);
    send_request(
        client,
        &AuthRequest::Sasl {
            mechanisms: vec![scram::SCRAM_SHA_256.to_string()],
        },
    )?;
    let initial = read_answer(client)?;
    let (mechanism, data) = protocol::frontend::parse_sasl_initial_response(&initial)?;
    if mechanism != scram::SCRAM_SHA_256 {
        return Err(AuthError::Refused(format!(
            "SASL mechanism {mechanism} is not supported"
        )));
    }
    let first = server
        .client_first(data.unwrap_or_default())
        .map_err(|_| AuthError::BadPassword(user.to_string()))?;
    send_request(client, &AuthRequest::SaslContinue(first))?;
    let last = read_answer(client)?;
    let (server_final, _client_key) = server
        .client_final(&last)
        .map_err(|_| AuthError::BadPassword(user.to_string()))?;
    send_request(client, &AuthRequest::SaslFinal(server_final))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_random_numbers_ends_the_client_with_an_internal_error() {
        let e = AuthError::from(random::failure());
        let resp = e.response().unwrap();
        assert_eq!(resp.code, sqlstate::INTERNAL_ERROR);
        assert!(
            resp.message.contains("no random numbers available"),
            "{}",
            resp.message
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}

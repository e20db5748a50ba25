//! Server-side start-up messages: builders for what pgcorral sends a client
//! while it plays the server, and parsers for what PostgreSQL sends
//! pgcorral while it plays the client.

use super::message::{put_cstr, put_i32, write_message, BodyReader};
use super::tag::backend as tag;
use super::ProtocolError;

/// Authentication request codes (the Int32 after the 'R' length).
mod auth_code {
    pub const OK: i32 = 0;
    pub const CLEARTEXT_PASSWORD: i32 = 3;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// An Authentication* message ('R').
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    /// Kerberos, GSSAPI, SSPI, …: methods pgcorral does not carry out.
    /// Any payload is dropped.
    Other(i32),
}

impl AuthRequest {
    /// Appends this request as an 'R' message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_message(out, tag::AUTHENTICATION, |b| match self {
            AuthRequest::Ok => put_i32(b, auth_code::OK),
            AuthRequest::CleartextPassword => put_i32(b, auth_code::CLEARTEXT_PASSWORD),
            AuthRequest::Md5Password { salt } => {
                put_i32(b, auth_code::MD5_PASSWORD);
                b.extend_from_slice(salt);
            }
            AuthRequest::Sasl { mechanisms } => {
                put_i32(b, auth_code::SASL);
                for m in mechanisms.iter().filter(|m| !m.is_empty()) {
                    put_cstr(b, m);
                }
                b.push(0);
            }
            AuthRequest::SaslContinue(data) => {
                put_i32(b, auth_code::SASL_CONTINUE);
                b.extend_from_slice(data);
            }
            AuthRequest::SaslFinal(data) => {
                put_i32(b, auth_code::SASL_FINAL);
                b.extend_from_slice(data);
            }
            AuthRequest::Other(code) => put_i32(b, *code),
        });
    }
}

/// Parses the body of an 'R' message.
pub fn parse_authentication(body: &[u8]) -> Result<AuthRequest, ProtocolError> {
    let mut r = BodyReader::named(body, "Authentication");
    let code = r.read_i32()?;
    let req = match code {
        auth_code::OK => AuthRequest::Ok,
        auth_code::CLEARTEXT_PASSWORD => AuthRequest::CleartextPassword,
        auth_code::MD5_PASSWORD => {
            let s = r.read_bytes(4)?;
            AuthRequest::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        auth_code::SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.read_cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m.to_owned());
            }
            AuthRequest::Sasl { mechanisms }
        }
        // SASL payloads are opaque here and run to the end of the message.
        auth_code::SASL_CONTINUE => return Ok(AuthRequest::SaslContinue(r.remaining().to_vec())),
        auth_code::SASL_FINAL => return Ok(AuthRequest::SaslFinal(r.remaining().to_vec())),
        other => return Ok(AuthRequest::Other(other)),
    };
    r.finish()?;
    Ok(req)
}

/// AuthenticationOk: `R 00000008 00000000`.
pub fn authentication_ok(out: &mut Vec<u8>) {
    AuthRequest::Ok.encode(out);
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    write_message(out, tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// Borrowed: the tracked-parameter code reads every ParameterStatus of a
/// connection's start-up messages at each attach and keeps only a few.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = BodyReader::named(body, "ParameterStatus");
    let name = r.read_cstr()?;
    let value = r.read_cstr()?;
    r.finish()?;
    Ok((name, value))
}

/// The value of a ParameterStatus body if it reports `name`, spelled as
/// the server spells it. Bytes, unchecked: for comparing start-up messages
/// at every attach without decoding every parameter in them.
pub fn parameter_status_value<'a>(body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let rest = body.strip_prefix(name.as_bytes())?.strip_prefix(b"\0")?;
    let (value, end) = rest.split_at(rest.iter().position(|&b| b == 0)?);
    (end.len() == 1).then_some(value)
}

pub fn backend_key_data(out: &mut Vec<u8>, process_id: i32, secret_key: i32) {
    write_message(out, tag::BACKEND_KEY_DATA, |b| {
        put_i32(b, process_id);
        put_i32(b, secret_key);
    });
}

/// Returns (process_id, secret_key). Only the protocol 3.0 layout with a
/// 4-byte key: pgcorral asks PostgreSQL for 3.0, so that is all it gets.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut r = BodyReader::named(body, "BackendKeyData");
    let process_id = r.read_i32()?;
    let secret_key = r.read_i32()?;
    r.finish()?;
    Ok((process_id, secret_key))
}

/// `status` is one of [`super::tag::transaction_status`].
pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    write_message(out, tag::READY_FOR_QUERY, |b| b.push(status));
}

/// Returns the transaction status byte.
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, ProtocolError> {
    let mut r = BodyReader::named(body, "ReadyForQuery");
    let status = r.read_u8()?;
    r.finish()?;
    Ok(status)
}

/// Tells a client asking for a newer minor version (or sending `_pq_.`
/// options) what we support; the client then carries on with that.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest_minor: i32, unrecognized: &[&str]) {
    write_message(out, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        put_i32(b, newest_minor);
        // The list is pgcorral's own making and tiny; saturating only
        // guards the arithmetic.
        put_i32(b, i32::try_from(unrecognized.len()).unwrap_or(i32::MAX));
        for opt in unrecognized {
            put_cstr(b, opt);
        }
    });
}

/// Returns (newest minor version supported, unrecognized options).
pub fn parse_negotiate_protocol_version(body: &[u8]) -> Result<(i32, Vec<String>), ProtocolError> {
    const WHAT: &str = "NegotiateProtocolVersion";
    let mut r = BodyReader::named(body, WHAT);
    let newest_minor = r.read_i32()?;
    let count = r.read_i32()?;
    let count = usize::try_from(count).map_err(|_| ProtocolError::malformed(WHAT))?;
    // Each option takes at least its NUL, so a count beyond the bytes left
    // is a lie; checking first keeps it from sizing the Vec.
    if count > body.len() {
        return Err(ProtocolError::malformed(WHAT));
    }
    let mut options = Vec::with_capacity(count);
    for _ in 0..count {
        options.push(r.read_cstr()?.to_owned());
    }
    r.finish()?;
    Ok((newest_minor, options))
}

/// The single byte that refuses an SSLRequest or GSSENCRequest; the client
/// then continues in plaintext on the same connection (or gives up).
pub fn ssl_refused() -> u8 {
    b'N'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::read_message;
    use crate::protocol::tag::transaction_status;
    use std::io::Cursor;

    /// Splits one encoded message into (tag, body) via the real reader, so
    /// every round trip also checks the length word.
    fn frame(out: &[u8]) -> (u8, Vec<u8>) {
        let mut c = Cursor::new(out);
        let m = read_message(&mut c, 1 << 16).unwrap();
        assert_eq!(c.position() as usize, out.len(), "trailing bytes");
        (m.tag, m.body)
    }

    #[test]
    fn authentication_ok_layout() {
        let mut out = Vec::new();
        authentication_ok(&mut out);
        assert_eq!(out, [b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        assert_eq!(parse_authentication(&out[5..]).unwrap(), AuthRequest::Ok);
    }

    #[test]
    fn md5_layout() {
        let mut out = Vec::new();
        AuthRequest::Md5Password { salt: [1, 2, 3, 4] }.encode(&mut out);
        assert_eq!(out, [b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4]);
    }

    #[test]
    fn every_auth_request_round_trips() {
        for req in [
            AuthRequest::Ok,
            AuthRequest::CleartextPassword,
            AuthRequest::Md5Password {
                salt: [0xde, 0xad, 0xbe, 0xef],
            },
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
            },
            AuthRequest::Sasl { mechanisms: vec![] },
            AuthRequest::SaslContinue(b"r=abc,s=xyz,i=4096".to_vec()),
            AuthRequest::SaslContinue(vec![]),
            AuthRequest::SaslFinal(b"v=signature".to_vec()),
            AuthRequest::Other(7),
        ] {
            let mut out = Vec::new();
            req.encode(&mut out);
            let (t, body) = frame(&out);
            assert_eq!(t, b'R');
            assert_eq!(parse_authentication(&body).unwrap(), req);
        }
    }

    #[test]
    fn sasl_layout() {
        let mut out = Vec::new();
        AuthRequest::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into()],
        }
        .encode(&mut out);
        let mut want = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        want.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(out, want);
    }

    #[test]
    fn malformed_authentication() {
        assert!(parse_authentication(&[0, 0]).is_err());
        assert!(parse_authentication(&[0, 0, 0, 5, 1, 2]).is_err());
        assert!(parse_authentication(&[0, 0, 0, 0, 9]).is_err());
        // SASL list without its closing empty string.
        assert!(parse_authentication(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err());
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut out = Vec::new();
        parameter_status(&mut out, "client_encoding", "UTF8");
        let (t, body) = frame(&out);
        assert_eq!(t, b'S');
        assert_eq!(body, b"client_encoding\0UTF8\0");
        assert_eq!(
            parse_parameter_status(&body).unwrap(),
            ("client_encoding", "UTF8")
        );
        assert!(parse_parameter_status(b"a\0").is_err());
        assert_eq!(
            parameter_status_value(&body, "client_encoding"),
            Some(&b"UTF8"[..])
        );
        assert_eq!(parameter_status_value(&body, "client"), None);
        assert_eq!(parameter_status_value(b"a\0b\0c", "a"), None);
        assert_eq!(parameter_status_value(b"a\0b", "a"), None);
        assert!(parse_parameter_status(b"a\0b\0c").is_err());
    }

    #[test]
    fn backend_key_data_round_trip() {
        let mut out = Vec::new();
        backend_key_data(&mut out, 4242, -1);
        assert_eq!(
            out,
            [b'K', 0, 0, 0, 12, 0, 0, 0x10, 0x92, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        let (t, body) = frame(&out);
        assert_eq!(t, b'K');
        assert_eq!(parse_backend_key_data(&body).unwrap(), (4242, -1));
        assert!(parse_backend_key_data(&body[..7]).is_err());
        assert!(parse_backend_key_data(&[0; 12]).is_err());
    }

    #[test]
    fn ready_for_query_layout() {
        let mut out = Vec::new();
        ready_for_query(&mut out, transaction_status::IDLE);
        assert_eq!(out, [0x5A, 0x00, 0x00, 0x00, 0x05, 0x49]);
        for s in [
            transaction_status::IDLE,
            transaction_status::IN_TRANSACTION,
            transaction_status::FAILED,
        ] {
            let mut out = Vec::new();
            ready_for_query(&mut out, s);
            let (t, body) = frame(&out);
            assert_eq!(t, b'Z');
            assert_eq!(parse_ready_for_query(&body).unwrap(), s);
        }
        assert!(parse_ready_for_query(b"").is_err());
        assert!(parse_ready_for_query(b"II").is_err());
    }

    #[test]
    fn negotiate_protocol_version_round_trip() {
        let mut out = Vec::new();
        negotiate_protocol_version(&mut out, 0, &["_pq_.a", "_pq_.b"]);
        let (t, body) = frame(&out);
        assert_eq!(t, b'v');
        assert_eq!(&body[..8], &[0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(
            parse_negotiate_protocol_version(&body).unwrap(),
            (0, vec!["_pq_.a".to_string(), "_pq_.b".to_string()])
        );

        let mut out = Vec::new();
        negotiate_protocol_version(&mut out, 0, &[]);
        assert_eq!(out, [b'v', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse_negotiate_protocol_version(&out[5..]).unwrap(),
            (0, vec![])
        );
    }

    #[test]
    fn negotiate_protocol_version_rejects_lying_counts() {
        assert!(parse_negotiate_protocol_version(&[0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(parse_negotiate_protocol_version(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(parse_negotiate_protocol_version(b"\0\0\0\0\0\0\0\x01a\0b\0").is_err());
    }

    #[test]
    fn ssl_refused_is_n() {
        assert_eq!(ssl_refused(), b'N');
    }
}

//! Client-side messages pgcorral sends to PostgreSQL (and parsers for the
//! few a client sends that pgcorral has to understand itself).

use super::message::{put_cstr, put_cstr_bytes, put_i32, write_message, BodyReader};
use super::tag::frontend as tag;
use super::ProtocolError;

/// Terminate: `X 00000004`.
pub fn terminate(out: &mut Vec<u8>) {
    write_message(out, tag::TERMINATE, |_| {});
}

/// Sync: `S 00000004`.
pub fn sync(out: &mut Vec<u8>) {
    write_message(out, tag::SYNC, |_| {});
}

/// Flush: `H 00000004`.
pub fn flush(out: &mut Vec<u8>) {
    write_message(out, tag::FLUSH, |_| {});
}

/// A simple-protocol Query.
pub fn query(out: &mut Vec<u8>, sql: &str) {
    write_message(out, tag::QUERY, |b| put_cstr(b, sql));
}

pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = BodyReader::named(body, "Query");
    let sql = r.read_cstr()?;
    r.finish()?;
    Ok(sql)
}

/// A 'p' message whose body is exactly `bytes`. This is the raw form, which
/// is what a SASLResponse is; for a password (cleartext or "md5…") use
/// [`password`], which adds the terminating NUL.
pub fn password_message(out: &mut Vec<u8>, bytes: &[u8]) {
    write_message(out, tag::PASSWORD, |b| b.extend_from_slice(bytes));
}

/// PasswordMessage carrying a cleartext or MD5-hashed password.
pub fn password(out: &mut Vec<u8>, password: &[u8]) {
    write_message(out, tag::PASSWORD, |b| put_cstr_bytes(b, password));
}

/// The password from a PasswordMessage body. Left as bytes: PostgreSQL does
/// not require passwords to be UTF-8.
pub fn parse_password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = BodyReader::named(body, "PasswordMessage");
    let pw = r.read_cstr_bytes()?;
    r.finish()?;
    Ok(pw)
}

/// SASLInitialResponse: mechanism name, then the client-first message
/// (`None` is sent as length -1, meaning "no initial response").
pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: Option<&[u8]>) {
    write_message(out, tag::PASSWORD, |b| {
        put_cstr(b, mechanism);
        match data {
            Some(d) => {
                put_i32(b, i32::try_from(d.len()).unwrap_or(i32::MAX));
                b.extend_from_slice(d);
            }
            None => put_i32(b, -1),
        }
    });
}

/// Returns (mechanism, initial response).
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, Option<&[u8]>), ProtocolError> {
    const WHAT: &str = "SASLInitialResponse";
    let mut r = BodyReader::named(body, WHAT);
    let mechanism = r.read_cstr()?;
    let len = r.read_i32()?;
    let data = if len == -1 {
        None
    } else {
        let len = usize::try_from(len).map_err(|_| ProtocolError::malformed(WHAT))?;
        Some(r.read_bytes(len)?)
    };
    r.finish()?;
    Ok((mechanism, data))
}

/// SASLResponse: the body is the mechanism's data, unframed.
pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    password_message(out, data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::read_message;
    use std::io::Cursor;

    fn frame(out: &[u8]) -> (u8, Vec<u8>) {
        let mut c = Cursor::new(out);
        let m = read_message(&mut c, 1 << 16).unwrap();
        assert_eq!(c.position() as usize, out.len(), "trailing bytes");
        (m.tag, m.body)
    }

    #[test]
    fn empty_messages_layout() {
        let mut out = Vec::new();
        terminate(&mut out);
        sync(&mut out);
        flush(&mut out);
        assert_eq!(out, [b'X', 0, 0, 0, 4, b'S', 0, 0, 0, 4, b'H', 0, 0, 0, 4]);
    }

    #[test]
    fn query_round_trip() {
        let mut out = Vec::new();
        query(&mut out, "SELECT 1");
        assert_eq!(out, b"Q\x00\x00\x00\x0dSELECT 1\0");
        let (t, body) = frame(&out);
        assert_eq!(t, tag::QUERY);
        assert_eq!(parse_query(&body).unwrap(), "SELECT 1");
        assert!(parse_query(b"SELECT 1").is_err());
        assert!(parse_query(b"a\0b").is_err());
    }

    #[test]
    fn password_round_trip() {
        let mut out = Vec::new();
        password(&mut out, b"md5abcdef");
        let (t, body) = frame(&out);
        assert_eq!(t, b'p');
        assert_eq!(body, b"md5abcdef\0");
        assert_eq!(parse_password(&body).unwrap(), b"md5abcdef");
    }

    #[test]
    fn password_message_is_verbatim() {
        let mut out = Vec::new();
        password_message(&mut out, b"c=biws,r=xyz");
        assert_eq!(out, b"p\x00\x00\x00\x10c=biws,r=xyz");
        let mut out2 = Vec::new();
        sasl_response(&mut out2, b"c=biws,r=xyz");
        assert_eq!(out, out2);
    }

    #[test]
    fn sasl_initial_response_round_trip() {
        let mut out = Vec::new();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", Some(b"n,,n=,r=abc"));
        let (t, body) = frame(&out);
        assert_eq!(t, b'p');
        assert_eq!(
            parse_sasl_initial_response(&body).unwrap(),
            ("SCRAM-SHA-256", Some(&b"n,,n=,r=abc"[..]))
        );

        let mut out = Vec::new();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", None);
        let (_, body) = frame(&out);
        assert_eq!(&body[body.len() - 4..], &[0xFF; 4]);
        assert_eq!(
            parse_sasl_initial_response(&body).unwrap(),
            ("SCRAM-SHA-256", None)
        );
    }

    #[test]
    fn sasl_initial_response_rejects_bad_lengths() {
        assert!(parse_sasl_initial_response(b"M\0\x00\x00\x00\x05abc").is_err());
        assert!(parse_sasl_initial_response(b"M\0\xff\xff\xff\xfe").is_err());
        assert!(parse_sasl_initial_response(b"M\0\x00\x00\x00\x01ab").is_err());
    }
}

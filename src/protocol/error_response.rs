//! ErrorResponse ('E'): a list of (field type byte, String) pairs ended by a
//! zero byte.

use std::fmt;

use super::message::{put_cstr, write_message, BodyReader};
use super::tag::backend as tag;
use super::ProtocolError;

/// Field type bytes (protocol "Error and Notice Message Fields").
pub mod field {
    /// Severity, possibly translated into the server's lc_messages language.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never translated (PostgreSQL 9.6 and later).
    pub const SEVERITY_RAW: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    /// The server's source routine that raised the error.
    pub const ROUTINE: u8 = b'R';
}

/// The fields of an ErrorResponse pgcorral produces or looks at. Fields it
/// has no use for (position, schema, source file, …) are skipped on parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// "ERROR", "FATAL", "PANIC" (or, from a server, whatever it sent).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorResponse {
    /// Severity ERROR: the session survives.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::with_severity("ERROR", code, message.into())
    }

    /// Severity FATAL: the connection is closed right after sending it.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self::with_severity("FATAL", code, message.into())
    }

    fn with_severity(severity: &str, code: &str, message: String) -> Self {
        ErrorResponse {
            severity: severity.to_owned(),
            code: code.to_owned(),
            message,
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends this as an 'E' message. The severity goes out as both S and
    /// V: pgcorral never translates it, and clients that look for V (to
    /// avoid parsing translated text) find it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_message(out, tag::ERROR_RESPONSE, |b| {
            put_field(b, field::SEVERITY, &self.severity);
            put_field(b, field::SEVERITY_RAW, &self.severity);
            put_field(b, field::CODE, &self.code);
            put_field(b, field::MESSAGE, &self.message);
            if let Some(d) = &self.detail {
                put_field(b, field::DETAIL, d);
            }
            if let Some(h) = &self.hint {
                put_field(b, field::HINT, h);
            }
            b.push(0);
        });
    }

    /// Parses an 'E' (or 'N') body. Unknown fields are skipped. Text is
    /// decoded lossily because the server writes it in client_encoding,
    /// which need not be UTF-8, and a readable error beats no error.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        const WHAT: &str = "ErrorResponse";
        let mut r = BodyReader::named(body, WHAT);
        let mut severity = None;
        let mut severity_raw = None;
        let mut code = None;
        let mut message = None;
        let mut detail = None;
        let mut hint = None;
        loop {
            let kind = r.read_u8()?;
            if kind == 0 {
                break;
            }
            let value = r.read_cstr_bytes()?;
            let slot = match kind {
                field::SEVERITY => &mut severity,
                field::SEVERITY_RAW => &mut severity_raw,
                field::CODE => &mut code,
                field::MESSAGE => &mut message,
                field::DETAIL => &mut detail,
                field::HINT => &mut hint,
                _ => continue,
            };
            *slot = Some(String::from_utf8_lossy(value).into_owned());
        }
        r.finish()?;
        let severity = severity_raw
            .or(severity)
            .ok_or(ProtocolError::malformed("ErrorResponse: no severity"))?;
        Ok(ErrorResponse {
            severity,
            code: code.ok_or(ProtocolError::malformed("ErrorResponse: no code"))?,
            message: message.ok_or(ProtocolError::malformed("ErrorResponse: no message"))?,
            detail,
            hint,
        })
    }
}

impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

fn put_field(out: &mut Vec<u8>, kind: u8, value: &str) {
    out.push(kind);
    put_cstr(out, value);
}

/// The value of the first field of type `kind` in an ErrorResponse or
/// NoticeResponse body, found in place without allocating: for the checks
/// that run on every error passing through. `None` when there is no such
/// field, or the body is damaged before it.
pub fn field_value(body: &[u8], kind: u8) -> Option<&[u8]> {
    let mut r = BodyReader::new(body);
    loop {
        let k = r.read_u8().ok()?;
        if k == 0 {
            return None;
        }
        let value = r.read_cstr_bytes().ok()?;
        if k == kind {
            return Some(value);
        }
    }
}

/// Whether an ErrorResponse body reports FATAL or PANIC, i.e. the server is
/// about to drop the connection. Prefers the untranslated V field and falls
/// back to S for servers older than 9.6. A body too damaged to tell counts
/// as not fatal: the caller will find out from the socket anyway.
pub fn is_fatal_or_panic(body: &[u8]) -> bool {
    match field_value(body, field::SEVERITY_RAW) {
        Some(severity) => is_fatal_word(severity),
        None => field_value(body, field::SEVERITY).is_some_and(is_fatal_word),
    }
}

fn is_fatal_word(severity: &[u8]) -> bool {
    severity == b"FATAL" || severity == b"PANIC"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::read_message;
    use crate::protocol::sqlstate;
    use std::io::Cursor;

    fn encoded_body(e: &ErrorResponse) -> Vec<u8> {
        let mut out = Vec::new();
        e.encode(&mut out);
        let mut c = Cursor::new(&out);
        let m = read_message(&mut c, 1 << 16).unwrap();
        assert_eq!(c.position() as usize, out.len());
        assert_eq!(m.tag, b'E');
        m.body
    }

    #[test]
    fn exact_layout() {
        let mut out = Vec::new();
        ErrorResponse::fatal("53300", "too many").encode(&mut out);
        let body = b"SFATAL\0VFATAL\0C53300\0Mtoo many\0\0";
        let mut want = vec![b'E'];
        want.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        want.extend_from_slice(body);
        assert_eq!(out, want);
    }

    #[test]
    fn round_trips() {
        for e in [
            ErrorResponse::error(sqlstate::QUERY_CANCELED, "canceling statement"),
            ErrorResponse::fatal(sqlstate::INVALID_PASSWORD, "password authentication failed")
                .with_detail("user \"x\"")
                .with_hint("check pgcorral's user file"),
            ErrorResponse::error(sqlstate::INTERNAL_ERROR, "").with_hint("only a hint"),
        ] {
            assert_eq!(ErrorResponse::parse(&encoded_body(&e)).unwrap(), e);
        }
    }

    #[test]
    fn constructors_set_severity() {
        assert_eq!(ErrorResponse::error("XX000", "m").severity, "ERROR");
        assert_eq!(ErrorResponse::fatal("XX000", "m").severity, "FATAL");
    }

    #[test]
    fn parse_skips_unknown_fields_and_prefers_v() {
        // As a German-localized server sends it: S translated, V not.
        let body = b"SFEHLER\0VERROR\0C42P01\0MRelation existiert nicht\0P15\0Fparse.c\0L42\0\0";
        let e = ErrorResponse::parse(body).unwrap();
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "42P01");
        assert_eq!(e.message, "Relation existiert nicht");
        assert_eq!(e.detail, None);
    }

    #[test]
    fn parse_falls_back_to_s() {
        let e = ErrorResponse::parse(b"SFATAL\0C57P01\0Mbye\0\0").unwrap();
        assert_eq!(e.severity, "FATAL");
    }

    #[test]
    fn parse_tolerates_non_utf8_text() {
        let e = ErrorResponse::parse(b"SERROR\0C22021\0Mbad \xe9\0\0").unwrap();
        assert!(e.message.starts_with("bad "));
    }

    #[test]
    fn parse_rejects_malformed() {
        for body in [
            &b""[..],
            b"SERROR\0C1\0Mm\0",    // no terminator
            b"SERROR\0C1\0Mm",      // unterminated field
            b"SERROR\0C1\0Mm\0\0x", // trailing bytes
            b"C1\0Mm\0\0",          // no severity
            b"SERROR\0Mm\0\0",      // no code
            b"SERROR\0C1\0\0",      // no message
        ] {
            assert!(ErrorResponse::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn fatal_or_panic_detection() {
        let err = encoded_body(&ErrorResponse::error("XX000", "e"));
        let fatal = encoded_body(&ErrorResponse::fatal("XX000", "f"));
        let mut panic = ErrorResponse::fatal("XX000", "p");
        panic.severity = "PANIC".into();
        let panic = encoded_body(&panic);
        assert!(!is_fatal_or_panic(&err));
        assert!(is_fatal_or_panic(&fatal));
        assert!(is_fatal_or_panic(&panic));
    }

    #[test]
    fn fatal_detection_prefers_v_over_localized_s() {
        assert!(is_fatal_or_panic(b"SFATAL\0C08P01\0Mx\0\0"));
        assert!(!is_fatal_or_panic(b"SERROR\0C08P01\0Mx\0\0"));
        // Translated S, untranslated V, in either order.
        assert!(is_fatal_or_panic(b"SWICHTIG\0VFATAL\0C1\0Mx\0\0"));
        assert!(is_fatal_or_panic(b"VPANIC\0SPANIK\0C1\0Mx\0\0"));
        assert!(!is_fatal_or_panic(b"SFATAL\0VERROR\0C1\0Mx\0\0"));
        // The word in a non-severity field does not count.
        assert!(!is_fatal_or_panic(b"SERROR\0MFATAL\0\0"));
        assert!(!is_fatal_or_panic(b"SFATALITY\0\0"));
        // Damaged bodies.
        assert!(!is_fatal_or_panic(b""));
        assert!(!is_fatal_or_panic(b"SERR"));
        assert!(is_fatal_or_panic(b"SFATAL\0Mtrunc"));
    }

    #[test]
    fn field_values_are_found_in_place() {
        let body = encoded_body(&ErrorResponse::error("42P01", "no table").with_hint("h"));
        assert_eq!(field_value(&body, field::CODE), Some(&b"42P01"[..]));
        assert_eq!(field_value(&body, field::HINT), Some(&b"h"[..]));
        assert_eq!(field_value(&body, field::ROUTINE), None);
        // The first of repeated fields; nothing past the terminator or a
        // value cut short.
        assert_eq!(field_value(b"Ca\0Cb\0\0", b'C'), Some(&b"a"[..]));
        assert_eq!(field_value(b"Ca\0\0Rx\0\0", b'R'), None);
        assert_eq!(field_value(b"Ca\0Rtrunc", b'R'), None);
        assert_eq!(field_value(b"", b'C'), None);
    }

    #[test]
    fn display() {
        let e = ErrorResponse::fatal("28P01", "no").with_hint("h");
        assert_eq!(e.to_string(), "FATAL 28P01: no (hint: h)");
    }
}

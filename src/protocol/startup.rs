//! The untagged packets a client may open a connection with: SSLRequest,
//! GSSENCRequest, CancelRequest and StartupMessage. All share the layout
//! Int32 length (counting itself), Int32 code, payload.

use std::io::Read;

use super::message::{put_cstr, put_i32, read_exact, write_untagged, BodyReader};
use super::ProtocolError;

/// Upper bound on a whole start-up packet, length word included. Same value
/// PostgreSQL uses, so anything it would accept we accept too.
pub const MAX_STARTUP_PACKET_LENGTH: u32 = 10_000;

pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;

/// What a client's first packet asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    GssEnc,
    Cancel { process_id: i32, secret_key: i32 },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and the name/value parameters in the
/// order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A protocol 3.0 start-up: the version pgcorral speaks toward PostgreSQL.
    pub fn new(params: Vec<(String, String)>) -> Self {
        StartupMessage {
            major: 3,
            minor: 0,
            params,
        }
    }

    /// The value of parameter `name`. If a client repeats a name the last
    /// one wins, as it does in PostgreSQL.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The database to connect to. PostgreSQL falls back to the user name
    /// when "database" is absent or empty; routing must follow the same rule
    /// or the pooler and the server would disagree about the target.
    pub fn database(&self) -> &str {
        match self.get("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user().unwrap_or(""),
        }
    }

    /// Appends this message as a frontend would send it to PostgreSQL.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_untagged(out, |b| {
            b.extend_from_slice(&self.major.to_be_bytes());
            b.extend_from_slice(&self.minor.to_be_bytes());
            for (name, value) in &self.params {
                // An empty name would read back as the list terminator and
                // cut the parameter list short.
                if name.is_empty() {
                    continue;
                }
                put_cstr(b, name);
                put_cstr(b, value);
            }
            b.push(0);
        });
    }
}

/// Appends a CancelRequest (protocol 3.0 form, 4-byte secret key).
pub fn encode_cancel_request(process_id: i32, secret_key: i32, out: &mut Vec<u8>) {
    write_untagged(out, |b| {
        b.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        put_i32(b, process_id);
        put_i32(b, secret_key);
    });
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(out: &mut Vec<u8>) {
    write_untagged(out, |b| {
        b.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes())
    });
}

/// Blocking read of one start-up packet.
///
/// The length word is checked (8..=[`MAX_STARTUP_PACKET_LENGTH`]) before
/// anything is sized from it, so an unauthenticated peer can make us hold at
/// most 10 kB. Protocol 3.x with any minor version is returned as is (the
/// caller answers a newer minor with NegotiateProtocolVersion); any other
/// major version is `UnsupportedVersion`.
pub fn read_startup<R: Read>(r: &mut R) -> Result<StartupRequest, ProtocolError> {
    let mut len_word = [0u8; 4];
    read_exact(r, &mut len_word)?;
    let len = u32::from_be_bytes(len_word);
    if len < 8 {
        return Err(ProtocolError::BadLength { len: len.into() });
    }
    if len > MAX_STARTUP_PACKET_LENGTH {
        return Err(ProtocolError::TooLong {
            len: len.into(),
            max: MAX_STARTUP_PACKET_LENGTH.into(),
        });
    }
    // Bounded by the check above, so sizing the buffer from it is safe.
    let mut rest = vec![0u8; (len - 4) as usize];
    read_exact(r, &mut rest)?;
    let (code, body) = rest.split_at(4);
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    parse_startup_body(code, body)
}

/// Interprets a start-up packet given its code and the bytes after the code.
pub fn parse_startup_body(code: u32, body: &[u8]) -> Result<StartupRequest, ProtocolError> {
    match code {
        SSL_REQUEST_CODE => {
            if !body.is_empty() {
                return Err(ProtocolError::malformed("SSLRequest"));
            }
            Ok(StartupRequest::Ssl)
        }
        GSSENC_REQUEST_CODE => {
            if !body.is_empty() {
                return Err(ProtocolError::malformed("GSSENCRequest"));
            }
            Ok(StartupRequest::GssEnc)
        }
        CANCEL_REQUEST_CODE => {
            // Only the 3.0 layout: pgcorral negotiates clients down to 3.0, so
            // the keys it hands out (and gets back) are always 4 bytes.
            let mut r = BodyReader::named(body, "CancelRequest");
            let process_id = r.read_i32()?;
            let secret_key = r.read_i32()?;
            r.finish()?;
            Ok(StartupRequest::Cancel {
                process_id,
                secret_key,
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xFFFF) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            let params = parse_params(body)?;
            let msg = StartupMessage {
                major,
                minor,
                params,
            };
            // PostgreSQL rejects an empty user name the same way as a missing one.
            if msg.user().is_none_or(str::is_empty) {
                return Err(ProtocolError::malformed("startup packet: no user"));
            }
            Ok(StartupRequest::Startup(msg))
        }
    }
}

/// name\0value\0 … \0, where the final NUL must be the last byte.
///
/// PostgreSQL takes these bytes as they come. A user or database name that
/// is not UTF-8 names nothing pgcorral could route to, so it is refused in
/// PostgreSQL's words for a role or database that does not exist; other
/// names and values are kept, lossily, for the server to judge.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const WHAT: &str = "startup packet: parameter list";
    let mut r = BodyReader::named(body, WHAT);
    let mut params = Vec::new();
    // The last of a repeated name wins, as in PostgreSQL.
    let (mut bad_user, mut bad_database) = (None, None);
    loop {
        let name = r.read_cstr_bytes()?;
        if name.is_empty() {
            break;
        }
        let value = r.read_cstr_bytes()?;
        let lossy = String::from_utf8_lossy(value).into_owned();
        let bad = std::str::from_utf8(value).is_err().then(|| lossy.clone());
        match name {
            b"user" => bad_user = bad,
            b"database" => bad_database = bad,
            _ => {}
        }
        params.push((String::from_utf8_lossy(name).into_owned(), lossy));
    }
    r.finish()?;
    // The role is looked up before the database.
    match (bad_user, bad_database) {
        (Some(user), _) => Err(ProtocolError::NoSuchRole(user)),
        (None, Some(database)) => Err(ProtocolError::NoSuchDatabase(database)),
        (None, None) => Ok(params),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Cursor};

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn packet(code: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_untagged(&mut out, |b| {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(payload);
        });
        out
    }

    fn read(bytes: &[u8]) -> Result<StartupRequest, ProtocolError> {
        read_startup(&mut Cursor::new(bytes))
    }

    #[test]
    fn ssl_request_layout_and_read() {
        let mut out = Vec::new();
        encode_ssl_request(&mut out);
        assert_eq!(out, [0x00, 0x00, 0x00, 0x08, 0x04, 0xD2, 0x16, 0x2F]);
        assert_eq!(read(&out).unwrap(), StartupRequest::Ssl);
    }

    #[test]
    fn gssenc_request() {
        let wire = [0x00, 0x00, 0x00, 0x08, 0x04, 0xD2, 0x16, 0x30];
        assert_eq!(read(&wire).unwrap(), StartupRequest::GssEnc);
        assert!(matches!(
            read(&packet(GSSENC_REQUEST_CODE, b"x")),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn cancel_request_round_trip_and_layout() {
        let mut out = Vec::new();
        encode_cancel_request(0x0102_0304, -5, &mut out);
        assert_eq!(
            out,
            [
                0x00, 0x00, 0x00, 0x10, 0x04, 0xD2, 0x16, 0x2E, 0x01, 0x02, 0x03, 0x04, 0xFF, 0xFF,
                0xFF, 0xFB
            ]
        );
        assert_eq!(
            read(&out).unwrap(),
            StartupRequest::Cancel {
                process_id: 0x0102_0304,
                secret_key: -5
            }
        );
    }

    #[test]
    fn cancel_request_with_wrong_size_is_malformed() {
        assert!(matches!(
            read(&packet(CANCEL_REQUEST_CODE, &[0; 7])),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            read(&packet(CANCEL_REQUEST_CODE, &[0; 9])),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn startup_3_0_round_trip() {
        let msg = StartupMessage::new(params(&[
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "psql"),
            ("options", ""),
        ]));
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(&out[4..8], &[0, 3, 0, 0]);
        assert_eq!(
            u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize,
            out.len()
        );
        assert_eq!(*out.last().unwrap(), 0);
        match read(&out).unwrap() {
            StartupRequest::Startup(got) => {
                assert_eq!(got, msg);
                assert_eq!(got.user(), Some("alice"));
                assert_eq!(got.database(), "shop");
                assert_eq!(got.get("application_name"), Some("psql"));
                assert_eq!(got.get("options"), Some(""));
                assert_eq!(got.get("missing"), None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn startup_exact_bytes() {
        let msg = StartupMessage::new(params(&[("user", "u")]));
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, b"\x00\x00\x00\x10\x00\x03\x00\x00user\0u\0\0");
    }

    #[test]
    fn startup_3_2_keeps_minor_and_pq_params() {
        let mut msg = StartupMessage::new(params(&[("user", "bob"), ("_pq_.ext", "on")]));
        msg.minor = 2;
        let mut out = Vec::new();
        msg.encode(&mut out);
        match read(&out).unwrap() {
            StartupRequest::Startup(got) => {
                assert_eq!((got.major, got.minor), (3, 2));
                assert_eq!(got.get("_pq_.ext"), Some("on"));
                // No database parameter: PostgreSQL's default is the user name.
                assert_eq!(got.database(), "bob");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocol_2_is_unsupported() {
        let wire = packet(0x0002_0000, b"user\0x\0\0");
        assert!(matches!(
            read(&wire),
            Err(ProtocolError::UnsupportedVersion { major: 2, minor: 0 })
        ));
        assert!(matches!(
            read(&packet(0x0001_0000, b"")),
            Err(ProtocolError::UnsupportedVersion { major: 1, minor: 0 })
        ));
        assert!(matches!(
            read(&packet(0x0004_0000, b"user\0x\0\0")),
            Err(ProtocolError::UnsupportedVersion { major: 4, minor: 0 })
        ));
    }

    #[test]
    fn missing_or_empty_user_is_malformed() {
        for payload in [&b"database\0d\0\0"[..], b"user\0\0\0", b"\0"] {
            match read(&packet(0x0003_0000, payload)) {
                Err(ProtocolError::Malformed { what }) => {
                    assert_eq!(what, "startup packet: no user")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn names_that_are_not_utf8_name_nothing() {
        let read_params = |payload: &[u8]| read(&packet(0x0003_0000, payload));
        assert_eq!(
            read_params(b"user\0a\xffb\0database\0\xfe\0\0")
                .unwrap_err()
                .to_string(),
            "role \"a\u{FFFD}b\" does not exist"
        );
        assert_eq!(
            read_params(b"user\0u\0database\0\xfe\0\0")
                .unwrap_err()
                .to_string(),
            "database \"\u{FFFD}\" does not exist"
        );
        // The last of a repeated name counts; other parameters go on, lossily.
        let Ok(StartupRequest::Startup(msg)) =
            read_params(b"user\0\xff\0user\0u\0application_name\0\xff\0\0")
        else {
            panic!("a later valid user name was not taken");
        };
        assert_eq!(msg.user(), Some("u"));
        assert_eq!(msg.get("application_name"), Some("\u{FFFD}"));
    }

    #[test]
    fn bad_parameter_lists_are_malformed() {
        for payload in [
            &b"user\0x\0"[..],  // no terminator
            b"user\0x\0\0junk", // bytes after the terminator
            b"user\0x",         // value not terminated
            b"user",            // name not terminated
            b"",                // nothing at all
        ] {
            assert!(
                matches!(
                    read(&packet(0x0003_0000, payload)),
                    Err(ProtocolError::Malformed { .. })
                ),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn duplicate_parameter_last_wins() {
        let msg = StartupMessage::new(params(&[("user", "a"), ("user", "b")]));
        assert_eq!(msg.user(), Some("b"));
    }

    #[test]
    fn database_fallbacks() {
        let m = StartupMessage::new(params(&[("user", "u"), ("database", "")]));
        assert_eq!(m.database(), "u");
        let m = StartupMessage::new(params(&[("database", "d")]));
        assert_eq!(m.database(), "d");
        assert_eq!(StartupMessage::new(vec![]).database(), "");
    }

    #[test]
    fn encode_skips_empty_names() {
        let msg = StartupMessage::new(params(&[("", "x"), ("user", "u")]));
        let mut out = Vec::new();
        msg.encode(&mut out);
        match read(&out).unwrap() {
            StartupRequest::Startup(got) => assert_eq!(got.params, params(&[("user", "u")])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn length_too_small() {
        assert!(matches!(
            read(&[0, 0, 0, 3, 0, 0, 0, 0]),
            Err(ProtocolError::BadLength { len: 3 })
        ));
        assert!(matches!(
            read(&[0, 0, 0, 0]),
            Err(ProtocolError::BadLength { len: 0 })
        ));
    }

    #[test]
    fn length_too_large() {
        let mut wire = 20_000u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 64]);
        assert!(matches!(
            read(&wire),
            Err(ProtocolError::TooLong {
                len: 20_000,
                max: 10_000
            })
        ));
    }

    #[test]
    fn length_at_limit_is_accepted() {
        let filler = "v".repeat(MAX_STARTUP_PACKET_LENGTH as usize - 8 - 8);
        let msg = StartupMessage::new(params(&[("user", "u"), ("x", "")]));
        let mut out = Vec::new();
        msg.encode(&mut out);
        // Grow the value of "x" until the packet is exactly at the limit.
        let mut msg2 = msg.clone();
        let pad = MAX_STARTUP_PACKET_LENGTH as usize - out.len();
        msg2.params[1].1 = filler[..pad].to_string();
        let mut out2 = Vec::new();
        msg2.encode(&mut out2);
        assert_eq!(out2.len(), MAX_STARTUP_PACKET_LENGTH as usize);
        assert!(matches!(read(&out2), Ok(StartupRequest::Startup(_))));
    }

    /// Counts the bytes pulled through it.
    struct Counting<R> {
        inner: R,
        consumed: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.consumed += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn two_gib_claim_is_rejected_after_the_length_word() {
        // 2 GiB claim followed by an endless stream: returning TooLong having
        // consumed only the 4-byte length word shows nothing was sized from
        // (or read for) the claim.
        let mut r = Counting {
            inner: Cursor::new(0x8000_0000u32.to_be_bytes()).chain(io::repeat(0)),
            consumed: 0,
        };
        match read_startup(&mut r) {
            Err(ProtocolError::TooLong { len, max }) => {
                assert_eq!(len, 1 << 31);
                assert_eq!(max, 10_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.consumed, 4);
    }

    #[test]
    fn length_that_lies_is_eof() {
        // Claims 100 bytes, delivers a complete-looking 3.0 packet of 17.
        let mut wire = packet(0x0003_0000, b"user\0u\0\0");
        wire[3] = 100;
        assert!(matches!(read(&wire), Err(ProtocolError::Eof)));
        // Connection closed before/inside the length word.
        assert!(matches!(read(&[]), Err(ProtocolError::Eof)));
        assert!(matches!(read(&[0, 0]), Err(ProtocolError::Eof)));
    }

    #[test]
    fn parse_startup_body_directly() {
        assert_eq!(
            parse_startup_body(SSL_REQUEST_CODE, b"").unwrap(),
            StartupRequest::Ssl
        );
        assert!(parse_startup_body(SSL_REQUEST_CODE, b"\0").is_err());
        match parse_startup_body(0x0003_0001, b"user\0u\0\0").unwrap() {
            StartupRequest::Startup(m) => assert_eq!((m.major, m.minor), (3, 1)),
            other => panic!("{other:?}"),
        }
    }
}

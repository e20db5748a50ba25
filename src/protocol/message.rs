//! Tagged messages (Byte1 tag, Int32 length counting itself, body) and the
//! low-level helpers every other protocol file builds on.

use std::io::{self, Read};

use super::framer::{FrameError, Header, HEADER_LEN};
use super::ProtocolError;

/// One whole tagged message as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Up to this many body bytes are reserved up front. Bigger bodies grow as
/// bytes actually arrive, so a peer that announces a large (but permitted)
/// length and then sends nothing costs us no more than this.
const PREALLOCATE_LIMIT: usize = 256 * 1024;

/// Blocking read of one whole tagged message.
///
/// The length word is validated before any buffer is sized from it: below 4
/// is `BadLength`, a body above `max_body` is `TooLong` (both numbers in that
/// error count body bytes, so they compare with the configured limit). A
/// stream that ends before the announced length is `Eof`.
pub fn read_message<R: Read>(r: &mut R, max_body: usize) -> Result<Message, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(r, &mut header)?;
    // The body cap is checked below in body bytes, as the limit is given.
    let Header { tag, len } = match Header::peek(&header, u32::MAX) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(ProtocolError::Eof),
        Err(FrameError::BadLength { len, .. } | FrameError::TooLong { len, .. }) => {
            return Err(ProtocolError::BadLength { len: len.into() })
        }
    };
    let body_len = u64::from(len - 4);
    if body_len > max_body as u64 {
        return Err(ProtocolError::TooLong {
            len: body_len,
            max: max_body as u64,
        });
    }
    let body = read_body(r, body_len)?;
    Ok(Message { tag, body })
}

/// Reads exactly `len` bytes without trusting `len` for the allocation size.
pub(crate) fn read_body<R: Read>(r: &mut R, len: u64) -> Result<Vec<u8>, ProtocolError> {
    let reserve = usize::try_from(len).map_or(PREALLOCATE_LIMIT, |n| n.min(PREALLOCATE_LIMIT));
    let mut body = Vec::with_capacity(reserve);
    r.by_ref().take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len {
        return Err(ProtocolError::Eof);
    }
    Ok(body)
}

/// `read_exact`, except a stream that ends early is the protocol-level `Eof`
/// (peers hanging up between or inside messages is routine, not an I/O fault).
pub(crate) fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ProtocolError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtocolError::Eof
        } else {
            ProtocolError::Io(e)
        }
    })
}

/// Appends `tag`, a length placeholder and whatever `body` writes, then
/// back-patches the length. Writing the body first and measuring afterwards
/// means no builder has to compute its size in advance.
pub fn write_message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    write_untagged(out, body);
}

/// Like [`write_message`] without the tag: the layout of the start-up
/// packets (StartupMessage, SSLRequest, CancelRequest, …).
pub fn write_untagged(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = out.len() - start;
    // The protocol cannot express more than i32::MAX; every builder in this
    // crate stays far below it, so exceeding it is a programming error.
    debug_assert!(len <= i32::MAX as usize, "message of {len} bytes");
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Appends `s` as a protocol String (NUL-terminated). Anything from an
/// embedded NUL on is dropped: the peer would stop reading there anyway, and
/// writing it would let a crafted value smuggle extra fields into the message.
pub fn put_cstr(out: &mut Vec<u8>, s: &str) {
    put_cstr_bytes(out, s.as_bytes());
}

/// [`put_cstr`] for byte strings that need not be UTF-8.
pub fn put_cstr_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    out.extend_from_slice(&s[..end]);
    out.push(0);
}

pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Cursor over a message body. Every read is bounds-checked; running short
/// is reported as `Malformed` naming the message being parsed.
#[derive(Debug, Clone)]
pub struct BodyReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::named(buf, "message")
    }

    /// A reader whose errors say `malformed {what}`.
    pub fn named(buf: &'a [u8], what: &'static str) -> Self {
        BodyReader { buf, what }
    }

    fn short(&self) -> ProtocolError {
        ProtocolError::Malformed { what: self.what }
    }

    pub fn read_u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn read_i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.read_array::<2>()?;
        Ok(i16::from_be_bytes(b))
    }

    pub fn read_i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.read_array::<4>()?;
        Ok(i32::from_be_bytes(b))
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let bytes = self.read_bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(bytes);
        Ok(a)
    }

    pub fn read_bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated String, which must be valid UTF-8.
    pub fn read_cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let what = self.what;
        let bytes = self.read_cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::Malformed { what })
    }

    /// A NUL-terminated String as raw bytes, for text whose encoding is the
    /// peer's business (server messages follow client_encoding).
    pub fn read_cstr_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.short())?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    /// Everything not consumed yet (and consumes it).
    pub fn remaining(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails if bytes are left over: the message formats are self-delimiting,
    /// so trailing garbage means the peer and we disagree about the layout.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.short())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Counts how many bytes were pulled through it, to show which reads
    /// stopped at the header.
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
    fn write_message_back_patches_length() {
        let mut out = vec![0xAA];
        write_message(&mut out, b'Q', |b| put_cstr(b, "select 1"));
        assert_eq!(out[0], 0xAA, "existing buffer contents are kept");
        assert_eq!(out[1], b'Q');
        assert_eq!(&out[2..6], &13u32.to_be_bytes());
        assert_eq!(&out[6..], b"select 1\0");
    }

    #[test]
    fn write_untagged_counts_itself() {
        let mut out = Vec::new();
        write_untagged(&mut out, |b| put_i32(b, 7));
        assert_eq!(out, [0, 0, 0, 8, 0, 0, 0, 7]);
    }

    #[test]
    fn put_cstr_stops_at_embedded_nul() {
        let mut out = Vec::new();
        put_cstr(&mut out, "user\0database");
        assert_eq!(out, b"user\0");
    }

    #[test]
    fn read_message_round_trip() {
        let mut wire = Vec::new();
        write_message(&mut wire, b'd', |b| b.extend_from_slice(b"abc"));
        write_message(&mut wire, b'c', |_| {});
        let mut r = Cursor::new(wire);
        let m = read_message(&mut r, 1024).unwrap();
        assert_eq!(
            m,
            Message {
                tag: b'd',
                body: b"abc".to_vec()
            }
        );
        let m = read_message(&mut r, 1024).unwrap();
        assert_eq!(
            m,
            Message {
                tag: b'c',
                body: vec![]
            }
        );
        assert!(matches!(
            read_message(&mut r, 1024),
            Err(ProtocolError::Eof)
        ));
    }

    #[test]
    fn read_message_body_at_limit_is_accepted() {
        let mut wire = Vec::new();
        write_message(&mut wire, b'd', |b| b.extend_from_slice(&[7; 16]));
        let m = read_message(&mut Cursor::new(wire), 16).unwrap();
        assert_eq!(m.body.len(), 16);
    }

    #[test]
    fn read_message_bad_length() {
        let wire = [b'Q', 0, 0, 0, 3];
        assert!(matches!(
            read_message(&mut Cursor::new(wire), 1024),
            Err(ProtocolError::BadLength { len: 3 })
        ));
    }

    #[test]
    fn read_message_too_long_reads_only_the_header() {
        // Claims ~4 GiB and is backed by an endless stream: had the reader
        // sized a buffer from the claim or started reading the body, this
        // would take gigabytes and a long time instead of 5 bytes.
        let header = [b'd', 0xFF, 0xFF, 0xFF, 0xF0];
        let mut r = Counting {
            inner: Cursor::new(header).chain(io::repeat(0)),
            consumed: 0,
        };
        match read_message(&mut r, 1 << 20) {
            Err(ProtocolError::TooLong { len, max }) => {
                assert_eq!(len, 0xFFFF_FFF0 - 4);
                assert_eq!(max, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.consumed, 5);
    }

    #[test]
    fn read_message_over_max_body_by_one() {
        let mut wire = Vec::new();
        write_message(&mut wire, b'd', |b| b.extend_from_slice(&[0; 17]));
        assert!(matches!(
            read_message(&mut Cursor::new(wire), 16),
            Err(ProtocolError::TooLong { len: 17, max: 16 })
        ));
    }

    #[test]
    fn read_message_truncated_body_is_eof() {
        // Permitted 1 GiB claim, 3 bytes delivered: must end in Eof without
        // reserving the claimed gigabyte.
        let mut wire = vec![b'd'];
        wire.extend_from_slice(&(1u32 << 30).to_be_bytes());
        wire.extend_from_slice(b"abc");
        assert!(matches!(
            read_message(&mut Cursor::new(wire), 1 << 30),
            Err(ProtocolError::Eof)
        ));
        let body = read_body(&mut Cursor::new(b"abc"), 1 << 30);
        assert!(matches!(body, Err(ProtocolError::Eof)));
    }

    #[test]
    fn read_message_truncated_header_is_eof() {
        assert!(matches!(
            read_message(&mut Cursor::new([b'Q', 0, 0]), 16),
            Err(ProtocolError::Eof)
        ));
    }

    #[test]
    fn read_message_passes_other_io_errors_through() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
        }
        match read_message(&mut Failing, 16) {
            Err(ProtocolError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_reader_reads_each_type() {
        let mut body = Vec::new();
        body.push(9);
        put_i16(&mut body, -2);
        put_i32(&mut body, 0x0102_0304);
        put_cstr(&mut body, "héllo");
        body.extend_from_slice(b"tail");
        let mut r = BodyReader::new(&body);
        assert_eq!(r.read_u8().unwrap(), 9);
        assert_eq!(r.read_i16().unwrap(), -2);
        assert_eq!(r.read_i32().unwrap(), 0x0102_0304);
        assert_eq!(r.read_cstr().unwrap(), "héllo");
        assert!(r.finish().is_err());
        assert_eq!(r.remaining(), b"tail");
        assert!(r.is_empty());
        r.finish().unwrap();
    }

    #[test]
    fn body_reader_errors_name_the_message() {
        let mut r = BodyReader::named(&[0, 1], "Widget");
        match r.read_i32() {
            Err(ProtocolError::Malformed { what }) => assert_eq!(what, "Widget"),
            other => panic!("{other:?}"),
        }
        assert!(BodyReader::new(b"no nul").read_cstr().is_err());
        assert!(BodyReader::new(b"\xff\xfe\0").read_cstr().is_err());
        assert_eq!(
            BodyReader::new(b"\xff\xfe\0").read_cstr_bytes().unwrap(),
            b"\xff\xfe"
        );
        assert!(BodyReader::new(&[]).read_u8().is_err());
        assert!(BodyReader::new(&[1]).read_i16().is_err());
    }
}

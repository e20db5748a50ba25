//! Message boundaries in one direction of a pass-through stream.
//!
//! The pipeline forwards bytes without copying messages out of its buffer;
//! the framer only walks headers (tag + length) and skips bodies, so a tag is
//! read only where a message starts, however the stream was split into
//! reads. A header cut by the end of a read is left unconsumed: the caller
//! keeps those bytes and scans them again once more data arrived, so it can
//! always stop forwarding exactly in front of a message. Bodies the caller
//! asks to see (ReadyForQuery, ErrorResponse) are copied into a small,
//! capped buffer as they pass.

/// Tag byte plus Int32 length.
pub const HEADER_LEN: usize = 5;

/// A tagged message's header, read without touching its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The length field: body plus the four bytes of the field itself.
    pub len: u32,
}

impl Header {
    /// The header at the start of `buf`, or `None` while fewer than five
    /// bytes are there. The length is checked (at least 4, at most
    /// `max_len`) before anyone can size a buffer from it.
    pub fn peek(buf: &[u8], max_len: u32) -> Result<Option<Header>, FrameError> {
        let Some(&[tag, a, b, c, d]) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]);
        if len < 4 {
            return Err(FrameError::BadLength { tag, len });
        }
        if len > max_len {
            return Err(FrameError::TooLong {
                tag,
                len,
                max: max_len,
            });
        }
        Ok(Some(Header { tag, len }))
    }

    /// Body bytes that follow the header.
    pub fn body_len(self) -> usize {
        self.len as usize - 4
    }

    /// Header and body together.
    pub fn frame_len(self) -> usize {
        self.len as usize + 1
    }
}

/// One whole message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    pub body: &'a [u8],
}

/// The whole messages at the start of `buf`, in order; ends at the first
/// one cut short or with an impossible length. For buffers pgcorral keeps
/// itself (a slot's start-up messages), whose end is the end of the data.
pub fn frames(buf: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let h = Header::peek(rest, u32::MAX).ok()??;
        let frame = rest.get(..h.frame_len())?;
        rest = &rest[h.frame_len()..];
        Some(Frame {
            tag: h.tag,
            body: &frame[HEADER_LEN..],
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message '{tag}' has an invalid length {len}", tag = *tag as char)]
    BadLength { tag: u8, len: u32 },
    #[error("message '{tag}' length {len} exceeds the limit of {max}", tag = *tag as char)]
    TooLong { tag: u8, len: u32, max: u32 },
}

#[derive(Debug)]
pub enum Event<'a> {
    /// A message's header is complete. `start` is the index of its tag byte
    /// in the buffer passed to `scan`; `len` is the length field (body + 4).
    Start { tag: u8, len: u32, start: usize },
    /// A message the caller chose to capture is complete. `body` holds its
    /// first bytes, at most the framer's capture capacity.
    Complete { tag: u8, body: &'a [u8] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Skip the body.
    Skip,
    /// Copy the body and report it with `Event::Complete`.
    Capture,
    /// Stop in front of this message; it is not consumed.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// Everything before this index is whole messages or the passing part of
    /// a body; bytes after it are an incomplete header to keep.
    Upto(usize),
    /// The callback stopped in front of the message starting here.
    Stopped(usize),
}

#[derive(Debug)]
pub struct Framer {
    /// Body bytes of the current message still to pass (0: at a boundary).
    remaining: usize,
    tag: u8,
    capturing: bool,
    capture: Vec<u8>,
    capture_cap: usize,
    max_len: u32,
}

impl Framer {
    /// `max_len` caps the length field a peer may announce; `capture_cap`
    /// bounds the copy of a captured body.
    pub fn new(max_len: u32, capture_cap: usize) -> Self {
        Framer {
            remaining: 0,
            tag: 0,
            capturing: false,
            capture: Vec::with_capacity(capture_cap.min(256)),
            capture_cap,
            max_len,
        }
    }

    /// True between messages: nothing of a message has been consumed.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Walks `buf[from..]`. `from` must be where the previous call left off
    /// (adjusted if the caller moved its buffer).
    pub fn scan(
        &mut self,
        buf: &[u8],
        from: usize,
        mut on: impl FnMut(Event<'_>) -> Flow,
    ) -> Result<Scanned, FrameError> {
        let mut at = from;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min(buf.len() - at);
                if self.capturing {
                    let room = self.capture_cap.saturating_sub(self.capture.len());
                    self.capture
                        .extend_from_slice(&buf[at..at + take.min(room)]);
                }
                at += take;
                self.remaining -= take;
                if self.remaining > 0 {
                    return Ok(Scanned::Upto(at));
                }
                if self.capturing {
                    self.capturing = false;
                    on(Event::Complete {
                        tag: self.tag,
                        body: &self.capture,
                    });
                }
            }
            let Some(Header { tag, len }) = Header::peek(&buf[at..], self.max_len)? else {
                return Ok(Scanned::Upto(at));
            };
            match on(Event::Start {
                tag,
                len,
                start: at,
            }) {
                Flow::Stop => return Ok(Scanned::Stopped(at)),
                Flow::Skip => self.capturing = false,
                Flow::Capture => {
                    self.capturing = true;
                    self.capture.clear();
                }
            }
            self.tag = tag;
            at += HEADER_LEN;
            self.remaining = len as usize - 4;
            if self.remaining == 0 && self.capturing {
                self.capturing = false;
                on(Event::Complete { tag, body: &[] });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// Tags seen, captured bodies, bytes consumed.
    type Run = (Vec<u8>, Vec<(u8, Vec<u8>)>, usize);

    /// Feeds `stream` in pieces of `step` bytes the way a pipeline does:
    /// unconsumed header bytes are carried over to the next piece.
    fn run(stream: &[u8], step: usize, stop_at: u8) -> Run {
        let mut f = Framer::new(1 << 20, 16);
        let mut tags = Vec::new();
        let mut bodies = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        for piece in stream.chunks(step) {
            buf.extend_from_slice(piece);
            let r = f
                .scan(&buf, 0, |e| match e {
                    Event::Start { tag, .. } => {
                        tags.push(tag);
                        if tag == stop_at {
                            Flow::Stop
                        } else if tag == b'Z' || tag == b'E' {
                            Flow::Capture
                        } else {
                            Flow::Skip
                        }
                    }
                    Event::Complete { tag, body } => {
                        bodies.push((tag, body.to_vec()));
                        Flow::Skip
                    }
                })
                .unwrap();
            match r {
                Scanned::Upto(n) => {
                    consumed_total += n;
                    buf.drain(..n);
                }
                Scanned::Stopped(n) => {
                    consumed_total += n;
                    return (tags, bodies, consumed_total);
                }
            }
        }
        (tags, bodies, consumed_total)
    }

    #[test]
    fn finds_every_tag_whatever_the_split() {
        let mut stream = msg(b'Q', b"select 1\0");
        stream.extend(msg(b'Z', b"I"));
        stream.extend(msg(b'D', &[7u8; 100]));
        stream.extend(msg(b'E', b"SFATAL\0VFATAL\0C57P01\0\0"));
        stream.extend(msg(b'S', b""));
        for step in 1..=stream.len() {
            let (tags, bodies, consumed) = run(&stream, step, 0);
            assert_eq!(tags, b"QZDES", "step {step}");
            assert_eq!(consumed, stream.len(), "step {step}");
            assert_eq!(bodies[0], (b'Z', b"I".to_vec()));
            // Capture is capped at 16 bytes.
            assert_eq!(bodies[1].1, b"SFATAL\0VFATAL\0C5".to_vec());
        }
    }

    #[test]
    fn stops_exactly_in_front_of_a_message() {
        let mut stream = msg(b'Q', b"select 1\0");
        let x_at = stream.len();
        stream.extend(msg(b'X', b""));
        stream.extend(b"garbage after terminate");
        for step in 1..=stream.len() {
            let (tags, _, consumed) = run(&stream, step, b'X');
            assert_eq!(tags, b"QX", "step {step}");
            assert_eq!(consumed, x_at, "step {step}");
        }
    }

    #[test]
    fn empty_captured_body_completes() {
        let stream = msg(b'Z', b"");
        let (_, bodies, _) = run(&stream, 3, 0);
        assert_eq!(bodies, vec![(b'Z', vec![])]);
    }

    #[test]
    fn rejects_lengths_below_four_and_over_the_cap() {
        let mut f = Framer::new(100, 8);
        let bad = [b'Q', 0, 0, 0, 3];
        assert_eq!(
            f.scan(&bad, 0, |_| Flow::Skip),
            Err(FrameError::BadLength { tag: b'Q', len: 3 })
        );
        let mut f = Framer::new(100, 8);
        let big = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            f.scan(&big, 0, |_| Flow::Skip),
            Err(FrameError::TooLong { .. })
        ));
    }

    fn stream_of(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
        messages.iter().flat_map(|(t, b)| msg(*t, b)).collect()
    }

    /// Feeds `stream` cut at `cuts` (sorted offsets) the way a pipeline
    /// does, capturing every body in full; returns each message seen as
    /// (tag, offset of its tag in the stream, captured body).
    fn scan_split(stream: &[u8], cuts: &[usize]) -> Vec<(u8, usize, Vec<u8>)> {
        let mut f = Framer::new(1 << 20, 1 << 20);
        let mut seen: Vec<(u8, usize, Vec<u8>)> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_offset = 0; // stream offset of buf[0]
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
            buf.extend_from_slice(&stream[last..cut]);
            last = cut;
            let r = f
                .scan(&buf, 0, |e| {
                    match e {
                        Event::Start { tag, start, .. } => {
                            seen.push((tag, buf_offset + start, Vec::new()))
                        }
                        Event::Complete { body, .. } => {
                            if let Some(m) = seen.last_mut() {
                                m.2 = body.to_vec();
                            }
                        }
                    }
                    Flow::Capture
                })
                .unwrap();
            let Scanned::Upto(n) = r else {
                panic!("no stop was asked for")
            };
            buf.drain(..n);
            buf_offset += n;
        }
        assert!(buf.is_empty() && f.at_boundary(), "whole stream consumed");
        seen
    }

    fn messages() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
            0..12,
        )
    }

    proptest! {
        /// However a valid stream is split into reads, the framer reports
        /// the same messages at the same offsets with the same bodies.
        #[test]
        fn any_split_yields_the_same_messages(
            msgs in messages(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let stream = stream_of(&msgs);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let expect: Vec<(u8, usize, Vec<u8>)> = {
                let mut at = 0;
                frames(&stream)
                    .map(|f| {
                        let m = (f.tag, at, f.body.to_vec());
                        at += HEADER_LEN + f.body.len();
                        m
                    })
                    .collect()
            };
            prop_assert_eq!(expect.len(), msgs.len());
            prop_assert_eq!(scan_split(&stream, &cuts), expect);
        }

        /// Stopping in front of a message consumes exactly the messages
        /// before it, whatever the split.
        #[test]
        fn any_split_stops_in_front_of_the_same_message(
            msgs in messages(),
            stop in any::<prop::sample::Index>(),
            step in 1usize..64,
        ) {
            prop_assume!(!msgs.is_empty());
            let stop_at = stop.index(msgs.len());
            let stop_tag = msgs[stop_at].0;
            let first = msgs.iter().position(|(t, _)| *t == stop_tag).unwrap_or(stop_at);
            let stream = stream_of(&msgs);
            let before: usize = msgs[..first].iter().map(|(_, b)| HEADER_LEN + b.len()).sum();
            let (tags, _, consumed) = run(&stream, step, stop_tag);
            prop_assert_eq!(consumed, before);
            prop_assert_eq!(tags.len(), first + 1);
        }

        /// Garbage never panics the framer: it reports an error or walks on.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                       step in 1usize..32) {
            let mut f = Framer::new(1 << 16, 8);
            let mut buf = Vec::new();
            for piece in bytes.chunks(step) {
                buf.extend_from_slice(piece);
                match f.scan(&buf, 0, |_| Flow::Capture) {
                    Ok(Scanned::Upto(n)) => { buf.drain(..n); }
                    Ok(Scanned::Stopped(_)) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn header_peek_checks_before_anything_is_sized() {
        assert_eq!(Header::peek(&[b'Q', 0, 0], 100), Ok(None));
        assert_eq!(
            Header::peek(&[b'Q', 0, 0, 0, 9, 1, 2], 100),
            Ok(Some(Header { tag: b'Q', len: 9 }))
        );
        assert_eq!(Header { tag: b'Q', len: 9 }.body_len(), 5);
        assert_eq!(Header { tag: b'Q', len: 9 }.frame_len(), 10);
        assert_eq!(
            Header::peek(&[b'Q', 0, 0, 0, 2], 100),
            Err(FrameError::BadLength { tag: b'Q', len: 2 })
        );
        assert_eq!(
            Header::peek(&[b'd', 0, 0, 0, 101], 100),
            Err(FrameError::TooLong {
                tag: b'd',
                len: 101,
                max: 100
            })
        );
    }

    #[test]
    fn frames_stop_at_a_cut_or_impossible_message() {
        let mut s = msg(b'S', b"a\0b\0");
        s.extend(msg(b'K', &[0; 8]));
        let all: Vec<_> = frames(&s).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].tag, b'K');
        assert_eq!(frames(&s[..s.len() - 1]).count(), 1);
        let mut bad = msg(b'S', b"x");
        bad.extend([b'Z', 0, 0, 0, 1]);
        bad.extend(msg(b'Z', b"I"));
        assert_eq!(frames(&bad).count(), 1);
    }

    #[test]
    fn boundary_is_tracked() {
        let mut f = Framer::new(100, 8);
        let m = msg(b'D', b"abcdef");
        assert!(f.at_boundary());
        assert_eq!(f.scan(&m[..7], 0, |_| Flow::Skip), Ok(Scanned::Upto(7)));
        assert!(!f.at_boundary());
        assert_eq!(f.scan(&m[7..], 0, |_| Flow::Skip), Ok(Scanned::Upto(4)));
        assert!(f.at_boundary());
    }
}

//! Property tests for the management protocol: headers, command and reply
//! payloads decode from any bytes to a message or an error without a
//! panic, lengths are checked before they size anything, and what pgcorral
//! and pgcorral-cli encode decodes back to the same thing.

#[path = "common/peak_alloc.rs"]
mod peak_alloc;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use pgcorral::management::client::ManagementClient;
use pgcorral::management::command::{
    decode_reply, encode_reply, AdminCommand, CommandRequest, Format, MAX_ARGS,
};
use pgcorral::management::message::{
    self, Header, Id, HEADER_LEN, LAST, MAX_PAYLOAD, MORE, VERSION,
};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

const IDS: [Id; 7] = [
    Id::Transfer,
    Id::Ack,
    Id::GetSocket,
    Id::Socket,
    Id::Error,
    Id::Command,
    Id::Reply,
];

fn id() -> impl Strategy<Value = Id> {
    prop::sample::select(&IDS[..])
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Text), Just(Format::Json)]
}

/// Splits a byte stream of whole messages into (header, payload) pairs.
fn split_messages(mut bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let head: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("a whole header");
        let header = Header::decode(head).expect("a header pgcorral wrote decodes");
        let end = HEADER_LEN + header.len as usize;
        out.push((header, bytes[HEADER_LEN..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

/// Feeds `bytes` to a management client over a real socket, as the
/// supervisor's answer, then closes the sending side.
fn read_reply_from(bytes: Vec<u8>) -> (Result<(Header, usize), String>, peak_alloc::Allocated) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let writer = std::thread::spawn(move || {
        let mut ours = ours;
        let _ = ours.write_all(&bytes);
    });
    let mut client = ManagementClient::from_stream(OwnedFd::from(theirs));
    let (got, allocated) = peak_alloc::measure(|| {
        client
            .read_reply()
            .map(|r| (r.header, r.payload.len()))
            .map_err(|e| e.to_string())
    });
    writer.join().expect("writer thread");
    (got, allocated)
}

proptest! {
    #[test]
    fn any_header_decodes_or_is_refused(bytes in any::<[u8; HEADER_LEN]>()) {
        match Header::decode(&bytes) {
            Ok(header) => {
                prop_assert_eq!(bytes[0], VERSION);
                prop_assert!(header.len as usize <= MAX_PAYLOAD);
                let mut again = Vec::new();
                header.encode(&mut again);
                prop_assert_eq!(&again[..], &bytes[..]);
            }
            Err(_) => {
                let len = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
                prop_assert!(
                    bytes[0] != VERSION || Id::from_u8(bytes[1]).is_none()
                        || len as usize > MAX_PAYLOAD
                );
            }
        }
    }

    #[test]
    fn messages_round_trip(
        id in id(),
        slot in any::<i32>(),
        payload in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let bytes = message::encode(id, slot, &payload);
        let parts = split_messages(&bytes);
        prop_assert_eq!(parts.len(), 1);
        prop_assert_eq!(parts[0].0, Header { id, slot, len: payload.len() as u32 });
        prop_assert_eq!(&parts[0].1, &payload);
    }

    #[test]
    fn generations_round_trip(generation in any::<u64>()) {
        let payload = message::generation_payload(generation);
        prop_assert_eq!(message::parse_generation(&payload).ok(), Some(generation));
    }

    #[test]
    fn any_generation_payload_decodes_or_is_refused(
        payload in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        prop_assert_eq!(message::parse_generation(&payload).is_ok(), payload.len() == 8);
    }

    /// Whatever a peer puts in a command payload, decoding it gives an
    /// error or a request that encodes back to exactly those bytes.
    #[test]
    fn any_command_payload_decodes_or_is_refused(
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            // Mostly well-formed: version, format and a small count.
            (format(), 0u8..40, prop::collection::vec(any::<u8>(), 0..256)).prop_map(
                |(f, n, rest)| {
                    let mut p = vec![1, if f == Format::Text { b't' } else { b'j' }, n];
                    p.extend(rest);
                    p
                }
            ),
        ],
    ) {
        if let Ok(request) = CommandRequest::decode(&payload) {
            prop_assert!(!request.args.is_empty() && request.args.len() <= MAX_ARGS);
            prop_assert_eq!(request.encode().ok(), Some(payload));
        }
    }

    #[test]
    fn commands_round_trip(
        format in format(),
        args in prop::collection::vec(".{0,40}", 1..=MAX_ARGS),
    ) {
        let request = CommandRequest { format, args };
        let payload = request.encode().expect("a command of at most MAX_ARGS short words");
        prop_assert_eq!(CommandRequest::decode(&payload), Ok(request));
    }

    /// Command words from the network never panic the parser.
    #[test]
    fn any_command_words_parse_or_are_refused(
        args in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "ping", "status", "details", "flush", "idle", "gracefully", "all",
                    "enable", "disable", "shutdown", "immediate", "cancel", "switch-to",
                    "conf", "reload", "get", "set", "ls", "clear", "prometheus", "server",
                    "*", "",
                ]).prop_map(str::to_string),
                ".{0,12}",
            ],
            0..6,
        ),
    ) {
        let _ = AdminCommand::parse(&args);
    }

    /// A result of any length is split into replies that decode back to it,
    /// with MORE on every message but the last.
    #[test]
    fn replies_round_trip(
        ok in any::<bool>(),
        text in ".{0,200}",
        filler in prop_oneof![Just(0usize), 1usize..3 * MAX_PAYLOAD],
    ) {
        let text = format!("{text}{}", "x".repeat(filler));
        let parts = split_messages(&encode_reply(ok, &text));
        prop_assert!(!parts.is_empty());
        let last = parts.len() - 1;
        let mut joined = Vec::new();
        for (i, (header, payload)) in parts.iter().enumerate() {
            prop_assert_eq!(header.id, Id::Reply);
            prop_assert_eq!(header.slot, if i == last { LAST } else { MORE });
            let (status, piece) = decode_reply(payload).expect("a reply pgcorral wrote");
            prop_assert_eq!(status, ok);
            joined.extend_from_slice(piece);
        }
        prop_assert_eq!(joined, text.into_bytes());
    }

    #[test]
    fn any_reply_payload_decodes_or_is_refused(
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Ok((_, piece)) = decode_reply(&payload) {
            prop_assert_eq!(piece, &payload[2..]);
        }
    }

    /// Arbitrary bytes where the supervisor's answer should be: the client
    /// reads a message or fails, and a header claiming a huge payload is
    /// refused before anything is allocated for it.
    #[test]
    fn a_client_reads_any_bytes_without_panic(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (id(), any::<i32>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(id, slot, len, tail)| {
                    let mut b = vec![VERSION, id as u8];
                    b.extend_from_slice(&slot.to_be_bytes());
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend(tail);
                    b
                }),
        ],
    ) {
        let claimed = bytes
            .get(6..10)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        let sent = bytes.len();
        let (got, allocated) = read_reply_from(bytes);
        prop_assert!(
            allocated.largest <= MAX_PAYLOAD + 4096,
            "{allocated:?} for {got:?}"
        );
        if let Ok((header, len)) = got {
            prop_assert_eq!(header.len as usize, len);
            prop_assert_eq!(Some(len), claimed);
            prop_assert!(HEADER_LEN + len <= sent);
        }
    }
}

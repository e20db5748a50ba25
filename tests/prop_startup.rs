//! Property tests for the first packet a client sends: whatever the bytes,
//! `read_startup` answers a request or an error, never panics, and never
//! allocates more than a fixed multiple of the packet cap, whatever length
//! the packet claims; well-formed packets read back as they were built.

#[path = "common/peak_alloc.rs"]
mod peak_alloc;

use std::io::Cursor;

use pgcorral::protocol::startup::{
    encode_cancel_request, encode_ssl_request, parse_startup_body, read_startup, StartupMessage,
    StartupRequest, MAX_STARTUP_PACKET_LENGTH,
};
use pgcorral::protocol::ProtocolError;
use proptest::prelude::*;

#[global_allocator]
static ALLOC: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

const CAP: usize = MAX_STARTUP_PACKET_LENGTH as usize;

/// Memory one packet may cost: the packet itself plus the parsed parameter
/// list. The worst case is a cap-sized packet of one-letter parameters
/// (`worst_case_packet_stays_under_the_bound` measures it: about 40 times
/// the cap, 48 bytes of list per 3-byte parameter, doubled by growth); what
/// matters is that the bound does not grow with the length a peer announces.
const ALLOCATION_BOUND: usize = 64 * CAP;

fn read(bytes: &[u8]) -> (Result<StartupRequest, ProtocolError>, peak_alloc::Allocated) {
    peak_alloc::measure(|| read_startup(&mut Cursor::new(bytes)))
}

fn check_bounded(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (_, allocated) = read(bytes);
    prop_assert!(
        allocated.largest <= 32 * CAP && allocated.total <= ALLOCATION_BOUND,
        "{} bytes in cost {allocated:?}",
        bytes.len()
    );
    Ok(())
}

fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A parameter name: non-empty, no NUL, and not `user`, which the tests
/// set themselves.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_.][a-zA-Z0-9_.]{0,24}".prop_filter("user is set separately", |n| n != "user")
}

fn value() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn startup_message() -> impl Strategy<Value = StartupMessage> {
    (
        any::<u16>(),
        "[^\u{0}]{1,40}",
        prop::collection::vec((name(), value()), 0..12),
    )
        .prop_map(|(minor, user, rest)| {
            let mut params = vec![("user".to_string(), user)];
            params.extend(rest);
            StartupMessage {
                major: 3,
                minor,
                params,
            }
        })
}

#[test]
fn worst_case_packet_stays_under_the_bound() {
    // As many parameters as fit: `a\0\0` each, plus a user.
    let mut body = b"user\0u\0".to_vec();
    while body.len() + 8 + 3 < CAP {
        body.extend_from_slice(b"a\0\0");
    }
    body.push(0);
    let bytes = packet(3 << 16, &body);
    assert!(bytes.len() <= CAP);
    let (got, allocated) = read(&bytes);
    assert!(matches!(got, Ok(StartupRequest::Startup(_))), "{got:?}");
    eprintln!("a cap-sized packet of one-letter parameters cost {allocated:?}");
    // The packet buffer alone is nearly CAP bytes: seeing less would mean
    // the allocator is not watching and the bounds below prove nothing.
    assert!(allocated.largest >= CAP - 8, "{allocated:?}");
    assert!(
        allocated.largest <= 32 * CAP && allocated.total <= ALLOCATION_BOUND,
        "a cap-sized packet cost {allocated:?}"
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..12_000)) {
        check_bounded(&bytes)?;
    }

    /// Any length word, including ones far past the cap, followed by fewer
    /// bytes than it claims: the length is checked before it sizes anything.
    #[test]
    fn any_claimed_length_is_capped(
        len in any::<u32>(),
        code in any::<u32>(),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&code.to_be_bytes());
        bytes.extend_from_slice(&tail);
        check_bounded(&bytes)?;
        let (got, _) = read(&bytes);
        if len as usize > CAP {
            let too_long = matches!(got, Err(ProtocolError::TooLong { .. }));
            prop_assert!(too_long, "{got:?}");
        }
        if len < 8 {
            let bad_length = matches!(got, Err(ProtocolError::BadLength { .. }));
            prop_assert!(bad_length, "{got:?}");
        }
    }

    /// A body after a well-known or random code: any bytes give an answer.
    #[test]
    fn arbitrary_bodies_never_panic(
        code in prop_oneof![
            Just(80877103u32), Just(80877104), Just(80877102), Just(3 << 16), any::<u32>()
        ],
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = parse_startup_body(code, &body);
        if body.len() + 8 <= CAP {
            check_bounded(&packet(code, &body))?;
        }
    }

    #[test]
    fn startup_messages_round_trip(msg in startup_message()) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        let (got, _) = read(&bytes);
        if bytes.len() <= CAP {
            prop_assert_eq!(got.ok(), Some(StartupRequest::Startup(msg)));
        } else {
            let too_long = matches!(got, Err(ProtocolError::TooLong { .. }));
            prop_assert!(too_long, "{got:?}");
        }
    }

    /// Every proper prefix of a valid packet is an error, not a hang, a
    /// panic or a different request.
    #[test]
    fn truncated_packets_are_errors(msg in startup_message(), cut in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        let cut = cut.index(bytes.len());
        let (got, _) = read(&bytes[..cut]);
        prop_assert!(got.is_err(), "{cut} of {} bytes read as {got:?}", bytes.len());
    }

    #[test]
    fn cancel_requests_round_trip(process_id in any::<i32>(), secret_key in any::<i32>()) {
        let mut bytes = Vec::new();
        encode_cancel_request(process_id, secret_key, &mut bytes);
        let (got, _) = read(&bytes);
        prop_assert_eq!(got.ok(), Some(StartupRequest::Cancel { process_id, secret_key }));
    }

    /// Packets back to back read one at a time, each exactly once.
    #[test]
    fn packets_read_back_to_back(msg in startup_message()) {
        let mut bytes = Vec::new();
        encode_ssl_request(&mut bytes);
        msg.encode(&mut bytes);
        prop_assume!(bytes.len() <= CAP);
        let mut cursor = Cursor::new(&bytes[..]);
        prop_assert_eq!(read_startup(&mut cursor).ok(), Some(StartupRequest::Ssl));
        prop_assert_eq!(read_startup(&mut cursor).ok(), Some(StartupRequest::Startup(msg)));
        prop_assert_eq!(cursor.position() as usize, bytes.len());
    }
}

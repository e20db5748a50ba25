//! What arrives on the management socket: message headers, command
//! payloads and reply payloads, and the command words once decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcorral::management::command::{decode_reply, AdminCommand, CommandRequest};
use pgcorral::management::message::{parse_generation, Header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.first_chunk::<HEADER_LEN>() {
        if let Ok(header) = Header::decode(head) {
            let mut again = Vec::new();
            header.encode(&mut again);
            assert_eq!(&again[..], &head[..], "a decoded header encodes back");
        }
    }
    let _ = parse_generation(data);
    let _ = decode_reply(data);
    if let Ok(request) = CommandRequest::decode(data) {
        assert_eq!(request.encode().ok().as_deref(), Some(data), "decode is exact");
        let _ = AdminCommand::parse(&request.args);
    }
});

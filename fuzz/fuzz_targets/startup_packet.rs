//! A client's first packet, byte for byte as it arrives: every input gives
//! a request or an error, and the length word is capped before it sizes a
//! buffer (libFuzzer's -rss_limit_mb / -malloc_limit_mb catch a breach).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcorral::protocol::startup::{parse_startup_body, read_startup};

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    // Several packets back to back, as a client may pipeline them.
    while read_startup(&mut cursor).is_ok() {}
    if let Some((code, body)) = data.split_first_chunk::<4>() {
        let _ = parse_startup_body(u32::from_be_bytes(*code), body);
    }
});

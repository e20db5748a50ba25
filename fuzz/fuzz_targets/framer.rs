//! The pass-through framer on a stream cut into arbitrary reads. Kept to
//! the framer's entry points so that it follows changes to its internals.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcorral::protocol::framer::{Flow, Framer, Scanned};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, the rest is the stream.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut framer = Framer::new(1 << 16, 64);
    let mut buf: Vec<u8> = Vec::new();
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        match framer.scan(&buf, 0, |_| Flow::Capture) {
            Ok(Scanned::Upto(at)) | Ok(Scanned::Stopped(at)) => {
                assert!(at <= buf.len());
                buf.drain(..at);
            }
            Err(_) => return,
        }
    }
});

//! Erasing secrets.

use std::sync::atomic::{compiler_fence, Ordering};

/// Overwrites a secret with zeros in a way the optimizer may not remove as
/// a dead store, so that it does not linger in freed memory or a core dump.
pub fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    compiler_fence(Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    #[test]
    fn wipe_zeroes_everything() {
        let mut secret = *b"hunter2hunter2";
        super::wipe(&mut secret);
        assert_eq!(secret, [0u8; 14]);
        super::wipe(&mut []);
    }
}

//! Sleeping on a word of shared memory until another process changes it:
//! futex(2), which `nix` does not wrap.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, until a `wake` on it or `timeout`.
/// The kernel compares under its own lock, so a change made just before
/// the call is never slept through. A spurious, interrupted or timed-out
/// return looks the same: callers re-read the word.
///
/// Not `FUTEX_PRIVATE_FLAG`: the word lives in a `MAP_SHARED` mapping and
/// the waker is another process.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 for the whole call (the borrow
    // guarantees it), which is all FUTEX_WAIT reads; `ts` outlives the
    // call; the two trailing arguments are unused by FUTEX_WAIT.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every process sleeping in `wait` on `word`.
pub fn wake(word: &AtomicU32) {
    wake_up_to(word, i32::MAX);
}

/// Wakes at most one process sleeping in `wait` on `word`: for a word only
/// one process sleeps on, it saves the kernel looking for others.
pub fn wake_one(word: &AtomicU32) {
    wake_up_to(word, 1);
}

fn wake_up_to(word: &AtomicU32, count: i32) {
    // SAFETY: as in `wait`; FUTEX_WAKE only uses the address as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn a_changed_word_is_not_slept_on() {
        let word = AtomicU32::new(1);
        // Expecting 0 while it holds 1: returns at once, not after an hour.
        wait(&word, 0, Duration::from_secs(3600));
    }

    #[test]
    fn wake_ends_a_wait() {
        let word = Arc::new(AtomicU32::new(0));
        let sleeper = {
            let word = Arc::clone(&word);
            std::thread::spawn(move || {
                while word.load(Ordering::SeqCst) == 0 {
                    wait(&word, 0, Duration::from_secs(3600));
                }
            })
        };
        word.store(1, Ordering::SeqCst);
        wake(&word);
        sleeper.join().unwrap();
    }
}

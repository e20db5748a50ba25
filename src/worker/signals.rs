//! SIGQUIT ends the worker's own client and nothing else.
//!
//! While the pipeline runs, the handler only raises a flag: poll returns
//! with EINTR, the pipeline sees the flag, and the worker tells its client
//! (at a message boundary) and gives up its slot. Before that, during
//! start-up or while waiting for a slot, the worker holds nothing the
//! supervisor cannot reclaim, so the handler answers the client itself and
//! exits on the spot.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use crate::protocol::{sqlstate, ErrorResponse};

pub static STOP: AtomicBool = AtomicBool::new(false);
static IN_PIPELINE: AtomicBool = AtomicBool::new(false);
static CLIENT_FD: AtomicI32 = AtomicI32::new(-1);
static GOODBYE: OnceLock<Vec<u8>> = OnceLock::new();

pub fn shutdown_message() -> &'static [u8] {
    GOODBYE.get_or_init(|| {
        let mut out = Vec::new();
        ErrorResponse::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .encode(&mut out);
        out
    })
}

extern "C" fn on_sigquit(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    if IN_PIPELINE.load(Ordering::SeqCst) {
        return;
    }
    let fd = CLIENT_FD.load(Ordering::SeqCst);
    if let Some(msg) = GOODBYE.get() {
        if fd >= 0 {
            // SAFETY: send(2) and _exit(2) are async-signal-safe; the
            // message was built before the handler was installed and is
            // never freed.
            unsafe {
                libc::send(
                    fd,
                    msg.as_ptr() as *const libc::c_void,
                    msg.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                );
            }
        }
    }
    // SAFETY: see above.
    unsafe { libc::_exit(0) };
}

/// Resets what the worker inherited from the supervisor: default signal
/// dispositions, nothing blocked, and our SIGQUIT handler.
pub fn install(client: RawFd) {
    let _ = shutdown_message();
    CLIENT_FD.store(client, Ordering::SeqCst);
    // SAFETY: plain sigaction/sigprocmask calls with initialized structs;
    // the handler only touches atomics and async-signal-safe calls.
    unsafe {
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGCHLD,
            libc::SIGTRAP,
            libc::SIGALRM,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigquit as *const () as usize;
        // No SA_RESTART: a blocked poll must return so the flag is seen.
        act.sa_flags = 0;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGQUIT, &act, std::ptr::null_mut());
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// From here on SIGQUIT is blocked except inside `ppoll`, which unblocks it
/// atomically: a signal that lands between the pipeline's check of `STOP`
/// and its wait is then delivered in the wait, never lost.
pub fn enter_pipeline() {
    IN_PIPELINE.store(true, Ordering::SeqCst);
    set_sigquit_blocked(true);
}

pub fn leave_pipeline() {
    set_sigquit_blocked(false);
    IN_PIPELINE.store(false, Ordering::SeqCst);
}

fn set_sigquit_blocked(blocked: bool) {
    // SAFETY: sigprocmask with an initialized set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGQUIT);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::sigprocmask(how, &set, std::ptr::null_mut());
    }
}

/// The signal mask to wait with in `ppoll`: nothing blocked.
pub fn wait_mask() -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

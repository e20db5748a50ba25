//! SIGQUIT ends the worker's own client and nothing else.
//!
//! While the pipeline runs, the handler only raises a flag: poll returns
//! with EINTR, the pipeline sees the flag, and the worker tells its client
//! (at a message boundary) and gives up its slot. Before that, during
//! start-up or while waiting for a slot, the worker holds nothing the
//! supervisor cannot reclaim, so the handler answers the client itself and
//! exits on the spot. The handler is `sys::signal`'s quit handler.

use std::os::fd::RawFd;
use std::sync::OnceLock;

use nix::sys::signal::Signal;

use crate::protocol::{sqlstate, ErrorResponse};
use crate::sys::signal;

/// Raised by SIGQUIT.
pub use crate::sys::signal::QUIT as STOP;

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

/// Resets what the worker inherited from the supervisor: default signal
/// dispositions, nothing blocked, and our SIGQUIT handler.
pub fn install(client: RawFd) {
    let steps = [
        signal::set_default(&[
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
            Signal::SIGTRAP,
            Signal::SIGALRM,
        ]),
        signal::ignore(Signal::SIGPIPE),
        signal::install_quit_handler(Signal::SIGQUIT, client, shutdown_message()),
        signal::set_mask(&signal::nothing_blocked()),
    ];
    // Each fails only for an invalid signal number; the worker can serve
    // its client regardless, so a failure is logged and not fatal.
    for e in steps.into_iter().filter_map(Result::err) {
        log::warn!("worker signal set-up: {e}");
    }
}

/// The client SIGQUIT says goodbye to from now on (-1: none, between
/// clients). `install` has run once in this process.
pub fn farewell_to(client: RawFd) {
    signal::set_farewell_fd(client);
}

/// From here on SIGQUIT is blocked except inside `ppoll`, which unblocks it
/// atomically: a signal that lands between the pipeline's check of `STOP`
/// and its wait is then delivered in the wait, never lost.
pub fn enter_pipeline() {
    signal::defer_quit(true);
    set_sigquit_blocked(true);
}

pub fn leave_pipeline() {
    set_sigquit_blocked(false);
    signal::defer_quit(false);
}

fn set_sigquit_blocked(blocked: bool) {
    if let Err(e) = signal::set_blocked(Signal::SIGQUIT, blocked) {
        log::warn!("sigprocmask: {e}");
    }
}

/// The signal mask to wait with in `ppoll`: nothing blocked.
pub fn wait_mask() -> nix::sys::signal::SigSet {
    signal::nothing_blocked()
}

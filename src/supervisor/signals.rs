//! Signals reach the supervisor's event loop through a signalfd, so the
//! loop handles them like any other event and no handler runs at a random
//! point in the supervisor's code.

use std::os::fd::AsFd;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub const HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGALRM,
    Signal::SIGTRAP,
    Signal::SIGHUP,
    Signal::SIGCHLD,
    Signal::SIGQUIT,
];

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals (so only the signalfd sees them) and
    /// ignores SIGPIPE (a vanished peer is an error return, not death).
    pub fn new() -> nix::Result<Self> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        set.thread_block()?;
        crate::sys::signal::ignore(Signal::SIGPIPE)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    pub fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_fd().as_raw_fd()
    }

    /// Every signal that arrived since the last call.
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }
}

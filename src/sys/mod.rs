//! The system-call layer: every `unsafe` block that talks to the kernel or
//! the C library lives under this module.
//!
//! Where `nix` has a safe wrapper the functions here are thin adapters over
//! it that speak `BorrowedFd`/`OwnedFd` and `std::io::Error`. Where it has
//! none (`close_range`, `_exit`, `futex`, `syslog`, a `recvmsg` that still yields the
//! descriptors of a truncated message, installing a signal handler, writing
//! over the process's argument area) the one `unsafe` block is here, with the
//! reasoning that makes it sound next to it. The rest of the crate calls
//! these and stays free of `unsafe` (the shared segment and slot table keep
//! theirs: they are memory layout, not system calls).
//!
//! The functions meant for the pipelines' hot path (`io::recv_nowait`,
//! `io::send_nowait`, `poll::wait_pair`) make exactly one system call each
//! and never allocate.

pub mod fd;
pub mod futex;
pub mod io;
pub mod limits;
pub mod local;
pub mod mem;
pub mod poll;
pub mod process;
pub mod scm;
pub mod signal;
pub mod sock;
pub mod syslog;
pub mod title;

/// `nix` reports failures as an `Errno`; the crate speaks `std::io::Error`.
/// The conversion keeps the OS error number, so `kind()` works as usual.
pub(crate) fn os(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

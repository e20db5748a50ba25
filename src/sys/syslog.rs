//! The C library's syslog(3), which `nix` 0.29 does not wrap.

use std::ffi::CStr;

/// The identity every line is logged under; openlog keeps the pointer, so
/// it must be 'static.
const IDENT: &CStr = c"pgcorral";

/// Opens the connection to the system logger lazily (on the first line),
/// with the pid in every line, as a daemon.
pub fn open() {
    // SAFETY: IDENT is a 'static NUL-terminated string, as openlog keeps
    // the pointer; the other arguments are plain integers.
    unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// Drops the C library's connection and opens it again lazily: for a
/// forked child about to close inherited descriptors, so that syslog never
/// writes to a number the child has reused for something else.
pub fn reopen() {
    // SAFETY: closelog takes no arguments; the child is single-threaded, so
    // no other thread is inside syslog meanwhile.
    unsafe { libc::closelog() };
    open();
}

/// Logs one line at `priority` (a `libc::LOG_*` level).
pub fn send(priority: libc::c_int, line: &CStr) {
    // SAFETY: the format is the constant "%s" with exactly one argument, a
    // valid NUL-terminated string that outlives the call.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), line.as_ptr()) };
}

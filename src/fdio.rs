//! Blocking and non-blocking helpers over socket descriptors, from the
//! system-call layer, so that workers, start-up and authentication treat
//! TCP and Unix-domain sockets alike.

pub use crate::sys::io::{write_all, FdIo};
pub use crate::sys::sock::{set_nodelay, set_nonblocking, set_timeouts};

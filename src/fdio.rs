//! Blocking and non-blocking helpers over socket descriptors, from the
//! system-call layer, so that workers, start-up and authentication treat
//! TCP and Unix-domain sockets alike.

pub use crate::sys::io::{peek_within, recv_within, send_all_within, wait_within, write_all, FdIo};
pub use crate::sys::poll::Events;
pub use crate::sys::sock::{set_nodelay, set_nonblocking, set_timeouts};

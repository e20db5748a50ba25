//! The worker's socket helpers, from the system-call layer: the worker
//! treats TCP and Unix-domain clients alike through borrowed descriptors.

pub use crate::sys::io::{write_all, FdIo};
pub use crate::sys::sock::{set_nodelay, set_nonblocking, set_timeouts};

//! Process titles, so that `ps` tells a DBA which process serves whom:
//! `pgcorral: supervisor`, `pgcorral: alice/sales 10.1.2.3:5012`,
//! `pgcorral: 10.1.2.3:5013 start-up`, `pgcorral: idle worker`.
//!
//! Linux shows `/proc/PID/cmdline` from the memory that held the program's
//! original arguments; the title is written over it (truncated to the room
//! the arguments had), as PostgreSQL and pgagroal do. The kernel's own
//! 15-byte name (`comm`, shown by `top`) is set too.

use crate::sys::title;

/// Finds the argument area; call early in `main`, before any fork.
pub fn init() {
    title::init();
}

/// Sets the title; silently does nothing where it cannot.
pub fn set(title: &str) {
    title::set_arguments(title);
    title::set_comm(title.strip_prefix("pgcorral: ").unwrap_or(title));
}

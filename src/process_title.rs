//! Process titles, so that `ps` tells a DBA which process serves whom:
//! `pgcorral: supervisor`, `pgcorral: alice/sales 10.1.2.3:5012`.
//!
//! Linux shows `/proc/PID/cmdline` from the memory that held the program's
//! original arguments; the title is written over it (truncated to the room
//! the arguments had), as PostgreSQL and pgagroal do. The kernel's own
//! 15-byte name (`comm`, shown by `top`) is set too.

use std::sync::OnceLock;

/// The argument area, found once (before the first fork, so every worker
/// inherits the answer): start address and length.
static AREA: OnceLock<Option<(usize, usize)>> = OnceLock::new();

fn area() -> Option<(usize, usize)> {
    *AREA.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may
        // contain spaces; arg_start and arg_end are fields 48 and 49.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let start: usize = fields.get(48 - 3)?.parse().ok()?;
        let end: usize = fields.get(49 - 3)?.parse().ok()?;
        (end > start && end - start < 1 << 20).then_some((start, end - start))
    })
}

/// Finds the argument area; call early in `main`, before any fork.
pub fn init() {
    let _ = area();
}

/// Sets the title; silently does nothing where it cannot.
pub fn set(title: &str) {
    if let Some((start, len)) = area() {
        let bytes = title.as_bytes();
        let n = bytes.len().min(len.saturating_sub(1));
        // SAFETY: [start, start + len) is this process's own argument area
        // as the kernel reports it (mapped, writable stack memory that
        // nothing else in the program reads after start-up: Rust copied
        // the arguments at start). We write at most len bytes into it.
        unsafe {
            let p = start as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
            std::ptr::write_bytes(p.add(n), 0, len - n);
        }
    }
    let mut comm = [0u8; 16];
    let short = title.strip_prefix("pgcorral: ").unwrap_or(title).as_bytes();
    let n = short.len().min(15);
    comm[..n].copy_from_slice(&short[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // from the buffer we pass.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_is_found() {
        let (start, len) = area().expect("argument area");
        assert!(start > 0 && len > 0);
    }
}

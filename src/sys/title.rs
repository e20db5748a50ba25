//! The process title: the memory that held the program's arguments, which
//! Linux shows as `/proc/PID/cmdline` (and `ps` prints), and the kernel's
//! own 15-byte name (`comm`, shown by `top`).

use std::ffi::CStr;
use std::sync::OnceLock;

/// The argument area, found once (before the first fork, so every child
/// inherits the answer): start address and length.
static AREA: OnceLock<Option<(usize, usize)>> = OnceLock::new();

fn area() -> Option<(usize, usize)> {
    *AREA.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may
        // contain spaces; arg_start and arg_end are fields 48 and 49.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let start: usize = fields.get(48 - 3)?.parse().ok()?;
        let end: usize = fields.get(49 - 3)?.parse().ok()?;
        (start > 0 && end > start && end - start < 1 << 20).then_some((start, end - start))
    })
}

/// Finds the argument area; call early, before any fork.
pub fn init() {
    let _ = area();
}

/// Writes `title` over the argument area (truncated to the room the
/// arguments had, NUL-padded). Returns false where the area is unknown.
pub fn set_arguments(title: &str) -> bool {
    let Some((start, len)) = area() else {
        return false;
    };
    let bytes = title.as_bytes();
    let n = bytes.len().min(len.saturating_sub(1));
    // SAFETY: [start, start + len) is this process's own argument area as
    // the kernel reports it: mapped, writable stack memory. At most `len`
    // bytes are written, and the area ends NUL-padded, so the argv
    // pointers the C runtime keeps into it still point at NUL-terminated
    // strings (a later `std::env::args` would read pieces of the title,
    // which pgcorral never does: it parses its arguments first). Its
    // processes have no other thread that could be reading it meanwhile.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
    true
}

/// Sets the kernel's name of the calling thread (`comm`): the first 15
/// bytes of `name`.
pub fn set_comm(name: &str) {
    let mut comm = [0u8; 16];
    let short = name.as_bytes();
    let n = short.len().min(15);
    comm[..n].copy_from_slice(&short[..n]);
    // A NUL inside `name` ends it early, as it would in C.
    if let Ok(c) = CStr::from_bytes_until_nul(&comm) {
        let _ = nix::sys::prctl::set_name(c);
    }
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

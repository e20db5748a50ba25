//! Memory that forked children keep sharing with their parent.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::sync::atomic::AtomicU32;

use memmap2::MmapRaw;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use super::os;

/// Counters in a shared mapping (`MAP_SHARED`, unlike an anonymous
/// `memmap2` mapping, which is private and so copied at fork): what a
/// child forked after `new` adds, its parent and siblings see. Unmapped
/// when dropped.
pub struct SharedCounters {
    map: MmapRaw,
    count: usize,
}

impl SharedCounters {
    /// `count` counters, all 0.
    pub fn new(count: usize) -> io::Result<Self> {
        let bytes = count
            .checked_mul(std::mem::size_of::<AtomicU32>())
            .filter(|&b| b > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = memfd_create(c"pgcorral-counters", MemFdCreateFlag::MFD_CLOEXEC).map_err(os)?;
        let file = File::from(fd);
        // A new memfd extended with set_len reads as zeros.
        file.set_len(bytes as u64)?;
        // The mapping keeps the memory after `file` is closed.
        let map = MmapRaw::map_raw(&file)?;
        Ok(SharedCounters { map, count })
    }
}

impl Deref for SharedCounters {
    type Target = [AtomicU32];

    fn deref(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is `count` u32s long (sized in `new`), page
        // aligned (more than AtomicU32 needs), zero-filled and so valid
        // AtomicU32s, and lives as long as `self`; it is only ever
        // accessed through these atomics, by any process that shares it.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU32, self.count) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::process::fork_child;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::Pid;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_child_s_writes_reach_the_parent() {
        let counters = SharedCounters::new(3).unwrap();
        assert!(counters.iter().all(|c| c.load(Ordering::Relaxed) == 0));
        let pid = fork_child(|| {
            counters[2].store(7, Ordering::Release);
            0
        })
        .unwrap();
        assert_eq!(
            waitpid(Pid::from_raw(pid), None).unwrap(),
            WaitStatus::Exited(Pid::from_raw(pid), 0)
        );
        assert_eq!(counters[2].load(Ordering::Acquire), 7);
        assert!(SharedCounters::new(0).is_err());
    }
}

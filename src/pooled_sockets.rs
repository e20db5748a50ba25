//! The supervisor's master copies of pooled server sockets.
//!
//! Slot `i`'s socket always sits at descriptor `POOL_FD_BASE + i`; an empty
//! slot's number holds a /dev/null placeholder so the kernel never hands it
//! out for anything else. A worker forked by the supervisor therefore
//! inherits every pooled socket at a known number, along with this table (a
//! copy-on-write copy of the supervisor's memory) telling which generation
//! each one is. A worker that gets a pooled slot whose generation matches
//! uses its inherited copy without asking anyone; only a socket that arrived
//! after its fork has to be requested over the management socket.
//! Keeping the range contiguous also lets a new worker drop every other
//! inherited descriptor with a couple of `close_range` calls.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::sys;

/// Where the range starts. The placeholders keep the kernel from handing
/// out these numbers, so the base need not clear anything; low keeps both
/// the descriptor table a fork copies and the numbers a new worker's
/// `close_range` walks (it visits every number below the range) small.
pub const POOL_FD_BASE: RawFd = 64;

pub struct PooledSockets {
    base: RawFd,
    /// `base + i` for every slot `i`: the slot's socket, or a copy of the
    /// placeholder. Replaced in place (dup3), never closed while the table
    /// lives, so the numbers stay ours.
    fds: Vec<OwnedFd>,
    /// Generation of the socket held for each slot; 0 = placeholder.
    generations: Vec<u64>,
    placeholder: OwnedFd,
}

impl PooledSockets {
    /// Fills `POOL_FD_BASE..POOL_FD_BASE + count` with placeholders. The
    /// descriptor limit must already allow that range, and the numbers
    /// must be free.
    pub fn new(count: usize) -> io::Result<Self> {
        Self::new_at(POOL_FD_BASE, count)
    }

    /// As `new`, at another base; tests use a base far from the numbers
    /// other tests in the same process are using.
    pub fn new_at(base: RawFd, count: usize) -> io::Result<Self> {
        let placeholder: OwnedFd = std::fs::File::open("/dev/null")?.into();
        let fds = (0..count)
            .map(|slot| sys::fd::claim(placeholder.as_fd(), base + slot as RawFd))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(PooledSockets {
            base,
            fds,
            generations: vec![0; count],
            placeholder,
        })
    }

    pub fn base(&self) -> RawFd {
        self.base
    }

    /// One past the last descriptor of the range.
    pub fn end(&self) -> RawFd {
        self.base + self.generations.len() as RawFd
    }

    pub fn len(&self) -> usize {
        self.generations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.generations.is_empty()
    }

    /// Generation of the socket held for `slot`, if any.
    pub fn held(&self, slot: usize) -> Option<u64> {
        self.generations.get(slot).copied().filter(|g| *g != 0)
    }

    /// The socket for `slot` if it is of `generation`.
    pub fn get(&self, slot: usize, generation: u64) -> Option<BorrowedFd<'_>> {
        if generation != 0 && self.held(slot) == Some(generation) {
            self.fds.get(slot).map(AsFd::as_fd)
        } else {
            None
        }
    }

    /// Keeps `fd` as `slot`'s socket. A socket already held for the slot
    /// belonged to an idle connection that was evicted: it is ended politely.
    pub fn install(&mut self, slot: usize, fd: OwnedFd, generation: u64) -> io::Result<()> {
        if slot >= self.generations.len() || generation == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "slot or generation",
            ));
        }
        if self.held(slot).is_some() {
            self.end_socket(slot, true);
        }
        sys::fd::replace(&mut self.fds[slot], fd.as_fd())?;
        self.generations[slot] = generation;
        Ok(())
    }

    /// Closes `slot`'s socket. `terminate` sends PostgreSQL a Terminate
    /// first; only for a connection known to be idle at a message boundary.
    /// The shutdown reaches the connection itself, so copies that workers
    /// inherited stop working too and PostgreSQL sees the close at once.
    pub fn close(&mut self, slot: usize, terminate: bool) {
        if self.held(slot).is_none() {
            return;
        }
        self.end_socket(slot, terminate);
        if let Err(e) = sys::fd::replace(&mut self.fds[slot], self.placeholder.as_fd()) {
            log::error!("cannot reset descriptor of slot {slot}: {e}");
        }
        self.generations[slot] = 0;
    }

    fn end_socket(&self, slot: usize, terminate: bool) {
        let Some(fd) = self.fds.get(slot).map(AsFd::as_fd) else {
            return;
        };
        if terminate {
            const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];
            // Never waits: the supervisor must not block on a server. A
            // full socket only costs PostgreSQL the polite goodbye.
            let _ = sys::io::send_nowait(fd, &TERMINATE);
        }
        // An error (already shut down, peer gone) leaves nothing to do.
        let _ = sys::sock::shutdown(fd);
    }

    /// Closes every held socket; `idle(slot)` says which may get a Terminate.
    pub fn close_all(&mut self, idle: impl Fn(usize) -> bool) {
        for slot in 0..self.generations.len() {
            let terminate = idle(slot);
            self.close(slot, terminate);
        }
    }
}

/// Raises the soft descriptor limit so the reserved range fits.
pub fn ensure_fd_limit(count: usize) -> io::Result<()> {
    let need = (POOL_FD_BASE as u64) + count as u64 + 64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(io::Error::other(format!(
            "the descriptor limit (RLIMIT_NOFILE hard limit {hard}) is below the {need} that max_connections needs"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn install_get_close_cycle() {
        // Far above anything the other tests of this process open.
        ensure_fd_limit(4000).unwrap();
        let mut t = PooledSockets::new_at(3000, 4).unwrap();
        assert_eq!(t.end() - t.base(), 4);
        let (ours, mut peer) = UnixStream::pair().unwrap();
        t.install(2, ours.into(), 7).unwrap();
        assert_eq!(t.held(2), Some(7));
        assert!(t.get(2, 6).is_none(), "stale generation");
        let fd = t.get(2, 7).unwrap();
        let mut copy = UnixStream::from(fd.try_clone_to_owned().unwrap());
        copy.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        t.close(2, true);
        assert_eq!(t.held(2), None);
        // The peer sees the Terminate, then end of stream: the shutdown
        // reached the connection although `copy` is still open.
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, vec![b'X', 0, 0, 0, 4]);
        assert!(t
            .install(9, UnixStream::pair().unwrap().0.into(), 1)
            .is_err());
    }
}

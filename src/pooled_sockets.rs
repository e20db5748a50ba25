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

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

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
    /// The supervisor's event loop, once it watches idle sockets; each
    /// watched number is taken out of it before the number is reused, as
    /// epoll keeps an entry for as long as the socket is open anywhere (in
    /// a worker, say) and it could not be removed afterwards. Only the
    /// supervisor watches: a forked child's copy names a descriptor that
    /// child closed, and a child never closes or installs sockets.
    watcher: Option<Registry>,
    watched: Vec<bool>,
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
            watcher: None,
            watched: vec![false; count],
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

    /// Lets `watch` register sockets with the supervisor's event loop.
    pub fn set_watcher(&mut self, registry: Registry) {
        self.watcher = Some(registry);
    }

    /// Reports readiness of `slot`'s socket (readable, end of stream,
    /// hang-up) to the watcher as `token`, until `unwatch`. mio registers
    /// edge-triggered, so a socket wakes the loop once per arrival.
    pub fn watch(&mut self, slot: usize, token: Token) -> io::Result<()> {
        if self.held(slot).is_none() || self.watched.get(slot) != Some(&false) {
            return Ok(());
        }
        let Some(registry) = &self.watcher else {
            return Ok(());
        };
        let fd = self.base + slot as RawFd;
        registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        self.watched[slot] = true;
        Ok(())
    }

    pub fn watched(&self, slot: usize) -> bool {
        self.watched.get(slot) == Some(&true)
    }

    pub fn unwatch(&mut self, slot: usize) {
        if !self.watched(slot) {
            return;
        }
        self.watched[slot] = false;
        if let Some(registry) = &self.watcher {
            let fd = self.base + slot as RawFd;
            if let Err(e) = registry.deregister(&mut SourceFd(&fd)) {
                log::error!("slot {slot}: cannot stop watching its socket: {e}");
            }
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
        self.unwatch(slot);
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
        self.unwatch(slot);
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

    #[test]
    fn a_watched_socket_wakes_the_loop_until_its_number_is_reused() {
        use mio::{Events, Poll, Token};
        use std::time::Duration;
        ensure_fd_limit(4000).unwrap();
        let mut poll = Poll::new().unwrap();
        let mut t = PooledSockets::new_at(3100, 2).unwrap();
        t.set_watcher(poll.registry().try_clone().unwrap());
        let (ours, mut peer) = UnixStream::pair().unwrap();
        t.install(1, ours.into(), 3).unwrap();
        // A worker's copy keeps the connection open after the table lets
        // go of it, as epoll would keep a registration.
        let copy = t.get(1, 3).unwrap().try_clone_to_owned().unwrap();
        t.watch(1, Token(7)).unwrap();
        assert!(t.watched(1));
        t.watch(1, Token(7)).unwrap();
        let mut events = Events::with_capacity(4);
        peer.write_all(b"E").unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            [Token(7)]
        );
        t.close(1, false);
        assert!(!t.watched(1));
        let (again, mut other) = UnixStream::pair().unwrap();
        t.install(1, again.into(), 4).unwrap();
        t.watch(1, Token(8)).unwrap();
        other.write_all(b"E").unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            [Token(8)],
            "the old connection's registration is gone"
        );
        drop(copy);
        t.close_all(|_| false);
        assert!(!t.watched(1));
    }
}

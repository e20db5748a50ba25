//! One direction of a pass-through: a fixed buffer that is read into,
//! scanned for message boundaries, and written out without copying
//! messages anywhere else.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::protocol::framer::{Event, Flow, FrameError, Framer, Scanned};

/// Large enough that a big result moves in few syscalls, small enough that a
/// new worker does not fault in and zero much memory before its first query.
pub const BUFFER_SIZE: usize = 16 * 1024;

pub struct Relay {
    buf: Box<[u8]>,
    /// Next byte to write out.
    start: usize,
    /// Bytes before this were scanned and may be written.
    scanned: usize,
    /// Bytes before this were read.
    end: usize,
    framer: Framer,
}

impl Relay {
    pub fn new(framer: Framer) -> Self {
        Relay {
            buf: vec![0u8; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            scanned: 0,
            end: 0,
            framer,
        }
    }

    pub fn has_room(&self) -> bool {
        self.end < self.buf.len()
    }

    /// Scanned bytes not yet written out.
    pub fn has_pending(&self) -> bool {
        self.start < self.scanned
    }

    /// Nothing half-passed: no unwritten bytes and no partial message.
    pub fn is_idle(&self) -> bool {
        self.start == self.end && self.framer.at_boundary()
    }

    /// At a message boundary on the outgoing side: everything scanned was
    /// written and the framer is between messages, so something else may be
    /// written to the peer without cutting a message in two.
    pub fn out_at_boundary(&self) -> bool {
        self.start == self.scanned && self.framer.at_boundary()
    }

    /// Everything read was scanned and the framer is between messages:
    /// the peer is not in the middle of a message.
    pub fn fully_scanned(&self) -> bool {
        self.scanned == self.end && self.framer.at_boundary()
    }

    /// One read. `Ok(0)` is end of stream.
    pub fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let room = &mut self.buf[self.end..];
        // SAFETY: reading into the unused tail of our own buffer, whose
        // length bounds the read.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                room.as_mut_ptr() as *mut libc::c_void,
                room.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.end += n as usize;
        Ok(n as usize)
    }

    /// Scans what was read. Returns where the callback stopped, if it did;
    /// bytes from there on are not forwarded.
    pub fn scan(&mut self, on: impl FnMut(Event<'_>) -> Flow) -> Result<Option<usize>, FrameError> {
        match self.framer.scan(&self.buf[..self.end], self.scanned, on)? {
            Scanned::Upto(n) => {
                self.scanned = n;
                Ok(None)
            }
            Scanned::Stopped(n) => {
                self.scanned = n;
                self.end = n;
                Ok(Some(n))
            }
        }
    }

    /// Writes scanned bytes until done or the socket is full. Returns true
    /// when nothing scanned is left.
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while self.start < self.scanned {
            let out = &self.buf[self.start..self.scanned];
            // SAFETY: sending from our own initialized buffer; MSG_NOSIGNAL
            // turns a vanished peer into EPIPE rather than a signal.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    out.as_ptr() as *const libc::c_void,
                    out.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            self.start += n as usize;
        }
        self.compact();
        Ok(true)
    }

    /// Moves an unscanned tail (an incomplete header) to the front once
    /// everything before it is written, so the buffer never fills up with it.
    fn compact(&mut self) {
        if self.start == self.scanned && self.start > 0 {
            self.buf.copy_within(self.scanned..self.end, 0);
            self.end -= self.scanned;
            self.start = 0;
            self.scanned = 0;
        }
    }
}

impl Relay {
    /// Blocks (in poll) until everything scanned is written to `fd`.
    pub fn drain(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while !self.flush(fd)? {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: polling one live descriptor.
            if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Poll events for a side: readable if its inbound buffer has room,
/// writable if the other side left bytes for it.
pub fn interest(read: bool, write: bool) -> libc::c_short {
    (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 })
}

/// A hang-up or error is read as such (end of stream or error) by `fill`.
pub fn ready_to_read(revents: libc::c_short) -> bool {
    revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

pub fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A peer that vanished is `closed`; any other error is reported as is.
pub fn closed_or_io(e: io::Error, closed: super::Outcome) -> super::Outcome {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => closed,
        _ => super::Outcome::Io(e),
    }
}

/// What a pipeline's wait came back with.
pub enum Woke {
    /// Events on the client and on the server, in that order.
    Ready([libc::pollfd; 2]),
    /// The idle limit passed with nothing happening.
    TimedOut,
    /// A signal arrived; the caller checks its stop flag and waits again.
    Interrupted,
}

/// Waits for the client and the server (a negative server descriptor is
/// ignored) with `mask` as the signal mask during the wait, so a signal
/// blocked outside it is delivered here and never lost.
pub fn wait(
    client: (i32, libc::c_short),
    server: (i32, libc::c_short),
    timeout: Option<libc::timespec>,
    mask: &libc::sigset_t,
) -> io::Result<Woke> {
    let mut fds = [
        libc::pollfd {
            fd: client.0,
            events: client.1,
            revents: 0,
        },
        libc::pollfd {
            fd: server.0,
            events: server.1,
            revents: 0,
        },
    ];
    // SAFETY: polling through an array we own (the kernel skips a negative
    // descriptor), with a timeout and mask that outlive the call.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            2,
            timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec),
            mask,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Woke::Interrupted)
        } else {
            Err(e)
        };
    }
    Ok(if n == 0 {
        Woke::TimedOut
    } else {
        Woke::Ready(fds)
    })
}

//! One direction of a pass-through: a fixed buffer that is read into,
//! scanned for message boundaries, and written out without copying
//! messages anywhere else.

use std::io;
use std::os::fd::BorrowedFd;

use crate::protocol::framer::{Event, Flow, FrameError, Framer, Scanned};
use crate::sys;

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

    /// One read of as much as has arrived and fits, that never waits.
    /// `Ok(0)` is end of stream.
    #[inline]
    pub fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let n = sys::io::recv_nowait(fd, &mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
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
            match sys::io::send_nowait(fd, &self.buf[self.start..self.scanned]) {
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
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
            // Room, an error or a signal: the next flush finds out which.
            sys::poll::wait_one(fd, sys::poll::Events::POLLOUT, None, None)?;
        }
        Ok(())
    }
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

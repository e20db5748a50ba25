//! The transaction pump's two buffers: what was read from a side and not
//! yet dealt with, and what waits to be written to a side.

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;

const INPUT: usize = 16 * 1024;

pub(super) struct Input {
    pub(super) buf: Box<[u8]>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// Start of bytes passed on unchanged but not yet handed to the other
    /// side (they end at `start`): consecutive streamed messages leave the
    /// input as one run, sent straight from here when nothing is queued
    /// before them, so forwarding copies nothing in the common case.
    pub(super) run: Option<usize>,
}

impl Input {
    pub(super) fn new() -> Self {
        Input {
            buf: vec![0u8; INPUT].into_boxed_slice(),
            start: 0,
            end: 0,
            run: None,
        }
    }

    /// The next `n` bytes pass unchanged.
    pub(super) fn forward(&mut self, n: usize) {
        self.run.get_or_insert(self.start);
        self.start += n;
    }

    pub(super) fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(super) fn has_room(&self) -> bool {
        self.end < self.buf.len() || self.start > 0
    }

    pub(super) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        debug_assert!(self.run.is_none(), "forwarded bytes left behind");
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = sys::io::recv_nowait(fd, &mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

#[derive(Default)]
pub(super) struct Output {
    pub(super) buf: Vec<u8>,
    pub(super) sent: usize,
}

impl Output {
    pub(super) fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub(super) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while self.sent < self.buf.len() {
            let n = send_some(fd, &self.buf[self.sent..])?;
            if n == 0 {
                return Ok(());
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Ok(())
    }

    /// Bytes passed on from the other side's input: sent at once if
    /// nothing is queued before them (what the socket does not take is
    /// queued), else queued behind what is. A send error is left for the
    /// next `flush` to report.
    pub(super) fn pass(&mut self, fd: Option<BorrowedFd<'_>>, mut bytes: &[u8]) {
        if self.pending() == 0 {
            self.buf.clear();
            self.sent = 0;
            if let Some(fd) = fd {
                let n = send_some(fd, bytes).unwrap_or(0);
                bytes = &bytes[n..];
            }
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// One send that never waits, whatever the socket's flags; 0 when the
/// socket has no room.
fn send_some(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match sys::io::send_nowait(fd, bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

//! The supervisor's side of one management connection: non-blocking reads
//! that yield whole requests, and replies that are queued when the peer
//! does not read them at once, so the supervisor never waits on a peer.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::message::{self, Header, Id, HEADER_LEN};
use super::transfer::{self, TransferError, MAX_FDS};
use super::ManagementError;
use crate::sys::scm::ScmError;

/// Bytes read from one connection per readiness event; a peer that sends
/// more is served again at the next turn of the event loop, so a flood on
/// one connection cannot starve the others.
const READ_BUDGET: usize = 256 * 1024;
/// Replies a peer has not read yet; beyond this the peer is dropped.
const MAX_PENDING: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub enum Request {
    Transfer {
        slot: i32,
        generation: u64,
        fd: OwnedFd,
    },
    GetSocket {
        slot: i32,
    },
    /// An administration command; the payload is decoded by the caller,
    /// which answers a malformed one without dropping the connection.
    Command {
        payload: Vec<u8>,
    },
}

/// What reading left the connection as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// Everything available was read.
    Open,
    /// The read budget ran out with more to read: read again soon.
    More,
    /// The peer closed its end.
    Closed,
}

pub struct Connection {
    pub stream: mio::net::UnixStream,
    pub peer_pid: i32,
    pub peer_uid: u32,
    inbuf: Vec<u8>,
    fds: Vec<OwnedFd>,
    outbuf: Vec<u8>,
    /// How much of `outbuf` has been written.
    out_at: usize,
    /// Whether the stream is registered for writability too.
    pub wants_write: bool,
    /// The peer closed its end; what is queued is still delivered.
    pub closing: bool,
    /// The peer let too many replies pile up: drop it.
    pub broken: bool,
}

impl Connection {
    pub fn new(stream: mio::net::UnixStream) -> Result<Self, ManagementError> {
        let cred = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        Ok(Connection {
            stream,
            peer_pid: cred.pid(),
            peer_uid: cred.uid(),
            inbuf: Vec::new(),
            fds: Vec::new(),
            outbuf: Vec::new(),
            out_at: 0,
            wants_write: false,
            closing: false,
            broken: false,
        })
    }

    /// Reads what is available (up to a budget) and appends the complete
    /// requests to `out`. An error means the peer broke the framing and the
    /// connection should be dropped (after the error reply).
    pub fn read_requests(&mut self, out: &mut Vec<Request>) -> Result<ReadState, ManagementError> {
        let mut chunk = [0u8; 4096];
        let mut read = 0;
        loop {
            if read >= READ_BUDGET {
                return Ok(ReadState::More);
            }
            match transfer::recv(self.stream.as_fd(), &mut chunk, &mut self.fds) {
                Ok(n) => {
                    read += n;
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    // Parsing after every chunk keeps the buffer at one
                    // message at most, however many a peer sends at once.
                    self.parse(out)?;
                }
                Err(TransferError::Eof) => return Ok(ReadState::Closed),
                Err(TransferError::Scm(ScmError::Recv(e)))
                    if e.kind() == io::ErrorKind::WouldBlock =>
                {
                    return Ok(ReadState::Open)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn parse(&mut self, out: &mut Vec<Request>) -> Result<(), ManagementError> {
        let mut at = 0;
        while self.inbuf.len() - at >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = self.inbuf[at..at + HEADER_LEN]
                .try_into()
                .map_err(|_| ManagementError::Malformed("header"))?;
            // `decode` checks the version, the id and the length cap before
            // anything waits for (or allocates) the payload.
            let header = Header::decode(head)?;
            let end = at + HEADER_LEN + header.len as usize;
            if self.inbuf.len() < end {
                break;
            }
            let payload = &self.inbuf[at + HEADER_LEN..end];
            out.push(request(&mut self.fds, header, payload)?);
            at = end;
        }
        self.inbuf.drain(..at);
        if self.fds.len() > MAX_FDS {
            return Err(ManagementError::Malformed("descriptors without a transfer"));
        }
        Ok(())
    }

    /// Whether replies are waiting for the peer to read them.
    pub fn pending(&self) -> bool {
        self.out_at < self.outbuf.len()
    }

    /// Queues bytes for the peer and writes what it takes now.
    pub fn queue(&mut self, bytes: &[u8]) -> Result<(), ManagementError> {
        if self.outbuf.len() - self.out_at + bytes.len() > MAX_PENDING {
            self.broken = true;
            return Err(ManagementError::Malformed(
                "the peer does not read its replies",
            ));
        }
        self.outbuf.extend_from_slice(bytes);
        self.flush()
    }

    /// Writes queued bytes until done or the socket is full.
    pub fn flush(&mut self) -> Result<(), ManagementError> {
        while self.pending() {
            match transfer::send_once(self.stream.as_fd(), &self.outbuf[self.out_at..], None) {
                Ok(n) => self.out_at += n,
                Err(TransferError::Scm(ScmError::Send(e)))
                    if e.kind() == io::ErrorKind::WouldBlock =>
                {
                    break
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !self.pending() {
            self.outbuf.clear();
            self.out_at = 0;
        } else if self.out_at > 64 * 1024 {
            self.outbuf.drain(..self.out_at);
            self.out_at = 0;
        }
        Ok(())
    }

    /// A reply to a worker, possibly with a descriptor. Replies to workers
    /// are a few bytes on an otherwise idle socket; a descriptor cannot wait
    /// in the queue, so the kernel must take the first byte at once.
    pub fn reply(
        &mut self,
        id: Id,
        slot: i32,
        payload: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ManagementError> {
        let msg = message::encode(id, slot, payload);
        if self.pending() {
            if fd.is_some() {
                return Err(ManagementError::Malformed(
                    "a descriptor reply behind unread replies",
                ));
            }
            return self.queue(&msg);
        }
        let n = transfer::send_once(self.stream.as_fd(), &msg, fd)?;
        if n < msg.len() {
            // The descriptor went with the first byte; the rest waits.
            self.queue(&msg[n..])?;
        }
        Ok(())
    }

    pub fn reply_error(&mut self, slot: i32, reason: &str) {
        let mut reason = reason.as_bytes();
        if reason.len() > message::MAX_PAYLOAD {
            reason = &reason[..message::MAX_PAYLOAD];
        }
        let _ = self.queue(&message::encode(Id::Error, slot, reason));
    }
}

/// Answers a connection the supervisor cannot keep (it was accepted on the
/// reserve descriptor) and lets it go: one non-blocking send on a fresh
/// socket, so nothing waits. A worker's request may already be in the
/// socket; it is left unread, which on a Unix-domain socket loses nothing
/// the worker needs.
pub fn refuse(stream: BorrowedFd<'_>) {
    let msg = message::encode(Id::Error, -1, message::OUT_OF_DESCRIPTORS.as_bytes());
    let _ = transfer::send_once(stream, &msg, None);
}

fn request(
    fds: &mut Vec<OwnedFd>,
    header: Header,
    payload: &[u8],
) -> Result<Request, ManagementError> {
    match header.id {
        Id::Transfer => {
            let generation = message::parse_generation(payload)?;
            if fds.is_empty() {
                return Err(ManagementError::Malformed("transfer without a descriptor"));
            }
            let fd = fds.remove(0);
            Ok(Request::Transfer {
                slot: header.slot,
                generation,
                fd,
            })
        }
        Id::GetSocket => Ok(Request::GetSocket { slot: header.slot }),
        Id::Command => Ok(Request::Command {
            payload: payload.to_vec(),
        }),
        _ => Err(ManagementError::Malformed("not a request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pair() -> (Connection, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (
            Connection::new(mio::net::UnixStream::from_std(a)).unwrap(),
            b,
        )
    }

    #[test]
    fn many_requests_in_one_write_are_all_parsed() {
        let (mut conn, mut peer) = pair();
        let mut bytes = Vec::new();
        for _ in 0..2000 {
            bytes.extend_from_slice(&message::encode(Id::Command, 0, b"xyz"));
        }
        peer.write_all(&bytes[..bytes.len() - 3]).unwrap();
        let mut out = Vec::new();
        assert_eq!(conn.read_requests(&mut out).unwrap(), ReadState::Open);
        assert_eq!(out.len(), 1999);
        peer.write_all(&bytes[bytes.len() - 3..]).unwrap();
        // Shut down rather than only dropped: a test elsewhere in this
        // process may fork and keep a copy open.
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        out.clear();
        assert_eq!(conn.read_requests(&mut out).unwrap(), ReadState::Closed);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn bad_frames_are_errors() {
        for bad in [
            vec![9u8; 10],
            message::encode(Id::Ack, 0, &[]),
            {
                let mut m = message::encode(Id::Command, 0, &[]);
                m[6..10].copy_from_slice(&(1u32 << 20).to_be_bytes());
                m
            },
            message::encode(Id::Transfer, 0, &[0; 8]),
        ] {
            let (mut conn, mut peer) = pair();
            peer.write_all(&bad).unwrap();
            assert!(conn.read_requests(&mut Vec::new()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_peer_reads_out_of_descriptors() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        refuse(ours.as_fd());
        drop(ours);
        let mut client = crate::management::client::ManagementClient::from_stream(theirs.into());
        let err = client.get_socket(0).unwrap_err();
        assert!(matches!(err, ManagementError::OutOfDescriptors), "{err:?}");
    }

    #[test]
    fn replies_wait_for_a_slow_reader() {
        let (mut conn, mut peer) = pair();
        let big = vec![7u8; 4 * 1024 * 1024];
        conn.queue(&big).unwrap();
        assert!(conn.pending(), "a socket buffer does not hold 4 MiB");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got.len()
        });
        while conn.pending() {
            conn.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(conn);
        assert_eq!(reader.join().unwrap(), big.len());
    }
}

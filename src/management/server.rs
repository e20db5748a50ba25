//! The supervisor's side of one management connection: non-blocking reads
//! that yield whole requests, and small replies.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::message::{self, Header, Id, HEADER_LEN, MAX_PAYLOAD};
use super::transfer::{self, TransferError};
use super::ManagementError;

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
}

pub struct Connection {
    pub stream: mio::net::UnixStream,
    pub peer_pid: i32,
    pub peer_uid: u32,
    inbuf: Vec<u8>,
    fds: Vec<OwnedFd>,
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
        })
    }

    /// Reads everything available and appends the complete requests to
    /// `out`. `Ok(false)` means the peer closed; an error means the peer
    /// broke the protocol and the connection should be dropped.
    pub fn read_requests(&mut self, out: &mut Vec<Request>) -> Result<bool, ManagementError> {
        let mut chunk = [0u8; 512];
        let open = loop {
            match transfer::recv(self.stream.as_fd(), &mut chunk, &mut self.fds) {
                Ok(n) => {
                    if self.inbuf.len() + n > HEADER_LEN + MAX_PAYLOAD {
                        return Err(ManagementError::Malformed("message too long"));
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                }
                Err(TransferError::Eof) => break false,
                Err(TransferError::Recv(e)) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) => return Err(e.into()),
            }
        };
        self.parse(out)?;
        Ok(open)
    }

    fn parse(&mut self, out: &mut Vec<Request>) -> Result<(), ManagementError> {
        let mut at = 0;
        while self.inbuf.len() - at >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = self.inbuf[at..at + HEADER_LEN]
                .try_into()
                .map_err(|_| ManagementError::Malformed("header"))?;
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
        Ok(())
    }

    /// Replies are a few bytes on an otherwise idle socket, so a short
    /// write means the peer is not reading: the caller drops it.
    pub fn reply(
        &mut self,
        id: Id,
        slot: i32,
        payload: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ManagementError> {
        let msg = message::encode(id, slot, payload);
        let raw = fd.map(|f| std::os::fd::AsRawFd::as_raw_fd(&f));
        let n = transfer::send_once(self.stream.as_fd(), &msg, raw)?;
        if n != msg.len() {
            return Err(ManagementError::Malformed("short reply write"));
        }
        Ok(())
    }

    pub fn reply_error(&mut self, slot: i32, reason: &str) {
        let _ = self.reply(Id::Error, slot, reason.as_bytes(), None);
    }
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
        _ => Err(ManagementError::Malformed("not a request")),
    }
}

//! The client side of the management socket: blocking request/reply with
//! a time bound, for workers (socket transfers, one request per
//! connection) and for `pgcorral-cli` (commands).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::command::{self, CommandRequest};
use super::message::{self, Header, Id, HEADER_LEN};
use super::transfer::{self, TransferError};
use super::ManagementError;
use crate::sys::scm::ScmError;

pub struct ManagementClient {
    sock: OwnedFd,
}

pub struct Reply {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// How long a worker waits on the supervisor for one request (connect,
/// send, reply). The supervisor answers these from memory at once; one
/// that has not answered by then is stuck, and the client is better told
/// so than left waiting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl ManagementClient {
    /// Connects with every step bounded by [`REQUEST_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Self, ManagementError> {
        Ok(ManagementClient {
            sock: crate::sys::local::connect(path, REQUEST_TIMEOUT)?,
        })
    }

    /// Hands the supervisor the socket of a connection this worker created,
    /// and waits until it holds it, so that the slot can be published.
    pub fn transfer(
        &mut self,
        slot: usize,
        generation: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<(), ManagementError> {
        let msg = message::encode(
            Id::Transfer,
            slot_i32(slot)?,
            &message::generation_payload(generation),
        );
        let reply = self.exchange(&msg, Some(fd))?;
        match reply.header.id {
            Id::Ack => Ok(()),
            Id::Error => Err(refused(&reply.payload)),
            _ => Err(ManagementError::Malformed("unexpected reply to transfer")),
        }
    }

    /// Asks the supervisor for a copy of a slot's socket; returns it with
    /// the generation it belongs to.
    pub fn get_socket(&mut self, slot: usize) -> Result<(OwnedFd, u64), ManagementError> {
        let msg = message::encode(Id::GetSocket, slot_i32(slot)?, &[]);
        let mut reply = self.exchange(&msg, None)?;
        match reply.header.id {
            Id::Socket => {
                let generation = message::parse_generation(&reply.payload)?;
                let fd = reply.fds.pop().ok_or(ManagementError::Malformed(
                    "socket reply without a descriptor",
                ))?;
                Ok((fd, generation))
            }
            Id::Error => Err(refused(&reply.payload)),
            _ => Err(ManagementError::Malformed("unexpected reply to get-socket")),
        }
    }

    /// Bounds every later read and write (`None`: wait for ever).
    pub fn set_timeout(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        crate::sys::sock::set_timeouts(self.sock.as_fd(), timeout)
    }

    /// Speaks the management protocol over an already connected stream
    /// (remote management: a TCP connection past its SCRAM exchange).
    pub fn from_stream(sock: OwnedFd) -> Self {
        ManagementClient { sock }
    }

    /// Runs an administration command; returns whether it succeeded and
    /// its result (text or JSON, as requested).
    pub fn command(&mut self, req: &CommandRequest) -> Result<(bool, String), ManagementError> {
        let msg = message::encode(Id::Command, 0, &req.encode()?);
        let mut reply = self.exchange(&msg, None)?;
        let mut text = Vec::new();
        loop {
            match reply.header.id {
                Id::Reply => {
                    let (ok, piece) = command::decode_reply(&reply.payload)?;
                    if text.len() + piece.len() > MAX_RESULT {
                        return Err(ManagementError::Malformed("result too long"));
                    }
                    text.extend_from_slice(piece);
                    if reply.header.slot != message::MORE {
                        return Ok((ok, String::from_utf8_lossy(&text).into_owned()));
                    }
                    reply = self.read_reply()?;
                }
                Id::Error => return Err(refused(&reply.payload)),
                _ => return Err(ManagementError::Malformed("unexpected reply to a command")),
            }
        }
    }

    /// Sends one request and reads the first reply. A supervisor that
    /// refused the connection may have closed it before the request went
    /// out: its answer is still there to read, and says more than the
    /// broken pipe.
    fn exchange(
        &mut self,
        msg: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Reply, ManagementError> {
        match transfer::send(self.sock.as_fd(), msg, fd) {
            Ok(()) => self.read_reply(),
            Err(TransferError::Scm(ScmError::Send(e)))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                match self.read_reply() {
                    Ok(reply) if reply.header.id == Id::Error => Ok(reply),
                    _ => Err(TransferError::Scm(ScmError::Send(e)).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn read_reply(&mut self) -> Result<Reply, ManagementError> {
        let mut fds = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        self.fill(&mut head, &mut fds)?;
        let header = Header::decode(&head)?;
        // `decode` capped the length at MAX_PAYLOAD.
        let mut payload = vec![0u8; header.len as usize];
        self.fill(&mut payload, &mut fds)?;
        Ok(Reply {
            header,
            payload,
            fds,
        })
    }

    fn fill(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), ManagementError> {
        let mut got = 0;
        while got < buf.len() {
            match transfer::recv(self.sock.as_fd(), &mut buf[got..], fds) {
                Ok(n) => got += n,
                Err(transfer::TransferError::Eof) => return Err(ManagementError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The longest result a client accepts (`status details` of 10000 slots
/// is a few MiB).
const MAX_RESULT: usize = 64 * 1024 * 1024;

fn slot_i32(slot: usize) -> Result<i32, ManagementError> {
    i32::try_from(slot).map_err(|_| ManagementError::Malformed("slot index"))
}

fn refused(payload: &[u8]) -> ManagementError {
    if payload == message::OUT_OF_DESCRIPTORS.as_bytes() {
        return ManagementError::OutOfDescriptors;
    }
    ManagementError::Refused(String::from_utf8_lossy(payload).into_owned())
}

//! Management message framing: a fixed header (version, id, slot, payload
//! length) and a payload of at most `MAX_PAYLOAD` bytes. A socket travels as
//! SCM_RIGHTS ancillary data on the message's first byte.
//!
//! Administration (`pgcorral-cli`) uses the same framing: a `Command`
//! request and one or more `Reply` messages; their payloads are described in
//! `command.rs`. In those two, the header's slot field is not a slot: in a
//! `Reply` it is `MORE` when the text continues in the next message and
//! `LAST` in the final one; in a `Command` it must be 0.

use super::ManagementError;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 10;
/// Every length is checked against this before anything is allocated.
pub const MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Id {
    /// Worker → supervisor, with a socket: keep this as slot's connection.
    /// Payload: generation (u64).
    Transfer = 1,
    /// Supervisor → worker: the request was carried out.
    Ack = 2,
    /// Worker → supervisor: send me a copy of this slot's socket.
    GetSocket = 3,
    /// Supervisor → worker, with a socket. Payload: generation (u64).
    Socket = 4,
    /// Either way. Payload: UTF-8 reason.
    Error = 5,
    /// Administrator → supervisor: run a command (see `command.rs`).
    Command = 6,
    /// Supervisor → administrator: a command's result, possibly in several
    /// messages (see `MORE`).
    Reply = 7,
}

/// The `Error` payload of a connection the supervisor took only to refuse
/// it, being out of descriptors: the client may try again later.
pub const OUT_OF_DESCRIPTORS: &str = "the supervisor is out of descriptors";

/// Slot field of a `Reply` whose text continues in the next message.
pub const MORE: i32 = 1;
/// Slot field of the last (or only) `Reply` message of a result.
pub const LAST: i32 = 0;

impl Id {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Id::Transfer,
            2 => Id::Ack,
            3 => Id::GetSocket,
            4 => Id::Socket,
            5 => Id::Error,
            6 => Id::Command,
            7 => Id::Reply,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: Id,
    pub slot: i32,
    pub len: u32,
}

impl Header {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        out.push(self.id as u8);
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, ManagementError> {
        if b[0] != VERSION {
            return Err(ManagementError::Malformed("unsupported version"));
        }
        let id = Id::from_u8(b[1]).ok_or(ManagementError::Malformed("unknown id"))?;
        let slot = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        let len = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        if len as usize > MAX_PAYLOAD {
            return Err(ManagementError::Malformed("payload too long"));
        }
        Ok(Header { id, slot, len })
    }
}

/// Builds a whole message: header then payload.
pub fn encode(id: Id, slot: i32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    Header {
        id,
        slot,
        len: payload.len() as u32,
    }
    .encode(&mut out);
    out.extend_from_slice(payload);
    out
}

pub fn generation_payload(generation: u64) -> [u8; 8] {
    generation.to_be_bytes()
}

pub fn parse_generation(payload: &[u8]) -> Result<u64, ManagementError> {
    let b: [u8; 8] = payload
        .try_into()
        .map_err(|_| ManagementError::Malformed("generation payload"))?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let msg = encode(Id::Transfer, 42, &generation_payload(7));
        assert_eq!(msg.len(), HEADER_LEN + 8);
        let h = Header::decode(msg[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(
            h,
            Header {
                id: Id::Transfer,
                slot: 42,
                len: 8
            }
        );
        assert_eq!(parse_generation(&msg[HEADER_LEN..]).unwrap(), 7);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut b = [0u8; HEADER_LEN];
        assert!(Header::decode(&b).is_err(), "version 0");
        b[0] = VERSION;
        b[1] = 99;
        assert!(Header::decode(&b).is_err(), "unknown id");
        b[1] = Id::Ack as u8;
        b[6..10].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert!(Header::decode(&b).is_err(), "oversize payload");
        assert!(parse_generation(&[1, 2, 3]).is_err());
    }
}

//! What a pass-through client proved when its server connection was
//! opened, kept with the connection (in its slot) so that a later client of
//! the same user must prove the same before it is given the connection.

use sha2::{Digest, Sha256};

use crate::auth::constant_time_eq;
use crate::auth::md5::is_md5_password;

/// "md5" and 32 hex digits.
pub const MD5_RESPONSE_LEN: usize = 35;

/// Bytes reserved in a slot for a proof.
pub use crate::slot::PROOF_CAPACITY;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthProof {
    /// PostgreSQL asked for no password (or pgcorral logged in from the
    /// vault and checked the client itself).
    Nothing,
    /// md5 with this salt and this response: a later client is offered the
    /// same salt and must answer the same.
    Md5 {
        salt: [u8; 4],
        response: [u8; MD5_RESPONSE_LEN],
    },
    /// Cleartext: a digest of the password, compared on reuse.
    Password([u8; 32]),
    /// SCRAM relayed to PostgreSQL: without the role's verifier nothing a
    /// later client sends can be checked, so the connection is never
    /// handed to another client.
    NotReusable,
}

const NOTHING: u8 = 1;
const MD5: u8 = 2;
const PASSWORD: u8 = 3;
const NOT_REUSABLE: u8 = 4;

impl AuthProof {
    pub fn of_password(password: &[u8]) -> Self {
        AuthProof::Password(Sha256::digest(password).into())
    }

    /// The md5 exchange a client completed; `None` if the response is not
    /// an md5 response at all.
    pub fn of_md5(salt: [u8; 4], response: &[u8]) -> Option<Self> {
        let response: [u8; MD5_RESPONSE_LEN] = response.try_into().ok()?;
        is_md5_password(&response).then_some(AuthProof::Md5 { salt, response })
    }

    /// Whether a later client's answer proves the same password.
    pub fn accepts_password(&self, password: &[u8]) -> bool {
        match self {
            AuthProof::Password(d) => {
                let given: [u8; 32] = Sha256::digest(password).into();
                constant_time_eq(d, &given)
            }
            _ => false,
        }
    }

    pub fn accepts_md5(&self, response: &[u8]) -> bool {
        match self {
            AuthProof::Md5 { response: r, .. } => constant_time_eq(r, response),
            _ => false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            AuthProof::Nothing => vec![NOTHING],
            AuthProof::Md5 { salt, response } => {
                let mut v = vec![MD5];
                v.extend_from_slice(salt);
                v.extend_from_slice(response);
                v
            }
            AuthProof::Password(d) => {
                let mut v = vec![PASSWORD];
                v.extend_from_slice(d);
                v
            }
            AuthProof::NotReusable => vec![NOT_REUSABLE],
        }
    }

    /// Anything unreadable decodes as `NotReusable`: the safe answer.
    pub fn decode(b: &[u8]) -> Self {
        match b.first() {
            Some(&NOTHING) => AuthProof::Nothing,
            Some(&MD5) if b.len() >= 5 => {
                let salt = [b[1], b[2], b[3], b[4]];
                AuthProof::of_md5(salt, &b[5..]).unwrap_or(AuthProof::NotReusable)
            }
            Some(&PASSWORD) if b.len() == 33 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(&b[1..]);
                AuthProof::Password(d)
            }
            _ => AuthProof::NotReusable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_round_trip_within_capacity() {
        let md5 = AuthProof::of_md5(*b"salt", b"md5a3556571e93b0d20722ba62be61e8c2d").unwrap();
        assert!(md5.accepts_md5(b"md5a3556571e93b0d20722ba62be61e8c2d"));
        assert!(!md5.accepts_md5(b"md5a3556571e93b0d20722ba62be61e8c2e"));
        assert!(AuthProof::of_password(b"pw").accepts_password(b"pw"));
        assert!(!AuthProof::of_password(b"pw").accepts_password(b"pW"));
        assert!(AuthProof::of_md5(*b"salt", b"not an md5 response").is_none());
        for p in [
            AuthProof::Nothing,
            md5,
            AuthProof::of_password(b"secret"),
            AuthProof::NotReusable,
        ] {
            let e = p.encode();
            assert!(e.len() <= PROOF_CAPACITY);
            assert_eq!(AuthProof::decode(&e), p);
        }
        assert_eq!(AuthProof::decode(&[]), AuthProof::NotReusable);
        assert_eq!(AuthProof::decode(&[9, 9]), AuthProof::NotReusable);
    }
}

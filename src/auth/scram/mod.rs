//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, for both
//! ends: [`ScramServer`] when pgcorral authenticates a client, and
//! [`ScramClient`] when pgcorral logs in to PostgreSQL.
//!
//! These are state machines over message payloads (what travels inside
//! SASLInitialResponse / AuthenticationSASLContinue / SASLResponse /
//! AuthenticationSASLFinal); framing and I/O belong to the caller.
//!
//! Key schedule, for reference while reading:
//! ```text
//! SaltedPassword  = Hi(password, salt, i)          (PBKDF2-HMAC-SHA-256)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = H(ClientKey)
//! ServerKey       = HMAC(SaltedPassword, "Server Key")
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientSignature = HMAC(StoredKey, AuthMessage)
//! ClientProof     = ClientKey XOR ClientSignature
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```
//!
//! Passwords are used as their raw bytes. PostgreSQL runs SASLprep first;
//! for ASCII passwords (and Unicode ones already in NFKC without mapped or
//! prohibited characters) that is the identity, for others the derived keys
//! differ (see `doc/SECURITY.md`).

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use openssl::hash::MessageDigest;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::constant_time_eq;
use crate::random::{self, RandomError};

/// The SASL mechanism name pgcorral offers and chooses.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// PostgreSQL's default `scram_iterations`.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// The most PBKDF2 rounds pgcorral computes for one password. A server (or
/// a verifier) asking for more is refused rather than letting it pin a
/// worker's CPU; a million rounds take well under a second.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest SCRAM message accepted from a peer. Real ones are ~100–200
/// bytes (a user name in `n=` is at most 63 bytes in PostgreSQL).
pub const MAX_MESSAGE_LEN: usize = 2048;
/// Longest decoded salt accepted from a server or a verifier. PostgreSQL
/// uses 16 bytes.
pub const MAX_SALT_LEN: usize = 256;
/// Length of SHA-256 keys, proofs and signatures.
pub const KEY_LEN: usize = 32;
/// Random bytes in each nonce pgcorral makes, as PostgreSQL does.
const RAW_NONCE_LEN: usize = 18;
/// Salt length for verifiers pgcorral makes, as PostgreSQL does.
const SALT_LEN: usize = 16;
/// Longest error text kept from a server's `e=` attribute.
const MAX_SERVER_ERROR_LEN: usize = 200;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The client's proof does not match: a wrong password (or an unknown
    /// user). Answer with 28P01, like PostgreSQL.
    #[error("SCRAM proof does not match")]
    InvalidProof,
    /// The server's signature does not match: the server does not know the
    /// password's verifier, so it is not the server we meant to reach.
    #[error("SCRAM server signature does not match")]
    InvalidServerSignature,
    #[error("SCRAM exchange refused by the server: {0}")]
    ServerError(String),
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM message of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("invalid base64 in SCRAM {what}")]
    Base64 {
        what: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("channel binding is not supported")]
    ChannelBindingUnsupported,
    #[error("SCRAM channel binding does not match the client-first message")]
    ChannelBindingMismatch,
    #[error("SCRAM authorization identity is not supported")]
    AuthzidUnsupported,
    #[error("mandatory SCRAM extension is not supported")]
    UnsupportedExtension,
    #[error("SCRAM nonce contains invalid characters")]
    InvalidNonce,
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    #[error("SCRAM iteration count {0} is outside 1..={MAX_ITERATIONS}")]
    IterationsOutOfRange(u64),
    #[error("invalid SCRAM salt length {0}")]
    InvalidSaltLength(usize),
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
    /// A ClientKey was used against a server whose salt or iteration count
    /// differ from the verifier the key came from: the proof would be
    /// wrong, so the login is not attempted.
    #[error("the server's SCRAM salt or iteration count differ from the verifier")]
    VerifierMismatch,
    #[error("SCRAM message out of order")]
    OutOfOrder,
    #[error("cryptographic failure: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl ScramError {
    /// The SQLSTATE for the ErrorResponse to a client whose exchange failed
    /// this way: a failed proof is a wrong password, anything else a
    /// protocol violation (as PostgreSQL reports them).
    pub fn sqlstate(&self) -> &'static str {
        use crate::protocol::sqlstate;
        match self {
            ScramError::InvalidProof => sqlstate::INVALID_PASSWORD,
            ScramError::ChannelBindingUnsupported
            | ScramError::AuthzidUnsupported
            | ScramError::UnsupportedExtension => sqlstate::FEATURE_NOT_SUPPORTED,
            ScramError::Crypto(_) | ScramError::Random(_) => sqlstate::INTERNAL_ERROR,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

/// A 32-byte secret with redacted `Debug`, constant-time equality, and its
/// memory wiped on drop.
macro_rules! secret_key {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                $name(bytes)
            }

            /// `None` unless `bytes` is exactly [`KEY_LEN`] long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; KEY_LEN]>::try_from(bytes).ok().map($name)
            }

            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                constant_time_eq(&self.0, &other.0)
            }
        }

        impl Eq for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key!(
    /// A SCRAM ClientKey. Whoever holds it can log in as the user to any
    /// server whose verifier has the matching StoredKey, without knowing
    /// the password; treat it like the password.
    ClientKey
);

impl ClientKey {
    /// `H(ClientKey)`, what a verifier stores.
    pub fn stored_key(&self) -> [u8; KEY_LEN] {
        sha256(&self.0)
    }
}

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it in `pg_authid`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl ScramVerifier {
    /// Parses PostgreSQL's text form.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        if s.len() > MAX_MESSAGE_LEN {
            return Err(ScramError::InvalidVerifier("too long"));
        }
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::InvalidVerifier("not SCRAM-SHA-256"))?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or(ScramError::InvalidVerifier("missing keys"))?;
        let (iterations, salt) = iter_salt
            .split_once(':')
            .ok_or(ScramError::InvalidVerifier("missing salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(ScramError::InvalidVerifier("missing server key"))?;
        // The verifier's own cost is paid by whoever logs in with it, not by
        // us, so PostgreSQL's whole range is accepted here.
        let iterations = parse_iterations(iterations, i32::MAX as u64)
            .map_err(|_| ScramError::InvalidVerifier("bad iteration count"))?;
        let salt = decode_b64(salt, "verifier salt")?;
        check_salt(&salt)?;
        let stored_key = decode_key(stored, "verifier stored key")?;
        let server_key = decode_key(server, "verifier server key")?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// The verifier PostgreSQL would store for `password` with this salt
    /// and iteration count.
    pub fn from_password(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        check_salt(salt)?;
        let keys = Keys::from_password(password, salt, iterations)?;
        Ok(ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: keys.client_key.stored_key(),
            server_key: *keys.server_key.as_bytes(),
        })
    }

    /// A verifier for `password` with a fresh random salt and PostgreSQL's
    /// default iteration count.
    pub fn generate(password: &[u8]) -> Result<Self, ScramError> {
        let salt: [u8; SALT_LEN] = random::bytes()?;
        Self::from_password(password, &salt, DEFAULT_ITERATIONS)
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    // StoredKey and ServerKey allow an offline dictionary attack and
    // impersonating the server, so they stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt", &B64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// Recovers the ClientKey from a client's proof, given the StoredKey of the
/// verifier it was checked against: `ClientKey = ClientProof XOR
/// HMAC(StoredKey, AuthMessage)`, accepted only if `H(ClientKey)` is that
/// StoredKey. `None` means the proof is wrong.
///
/// This needs the StoredKey: an observer of a relayed exchange (who knows
/// AuthMessage and the proof but no verifier) cannot recover anything.
pub fn recover_client_key(
    auth_message: &[u8],
    client_proof: &[u8],
    stored_key: &[u8; KEY_LEN],
) -> Option<ClientKey> {
    let proof = <[u8; KEY_LEN]>::try_from(client_proof).ok()?;
    let signature = hmac_sha256(stored_key, &[auth_message]);
    let client_key = ClientKey(xor(&proof, &signature));
    constant_time_eq(&client_key.stored_key(), stored_key).then_some(client_key)
}

/// `client-first-bare "," server-first "," client-final-without-proof`.
pub fn auth_message(
    client_first_bare: &str,
    server_first: &str,
    client_final_without_proof: &str,
) -> Vec<u8> {
    let mut am = Vec::with_capacity(
        client_first_bare.len() + server_first.len() + client_final_without_proof.len() + 2,
    );
    am.extend_from_slice(client_first_bare.as_bytes());
    am.push(b',');
    am.extend_from_slice(server_first.as_bytes());
    am.push(b',');
    am.extend_from_slice(client_final_without_proof.as_bytes());
    am
}

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::ScramClient;
pub use server::ScramServer;

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

secret_key!(
    /// A SCRAM ServerKey derived from a password.
    ServerKey
);

struct Keys {
    client_key: ClientKey,
    server_key: ServerKey,
}

impl Keys {
    fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Result<Self, ScramError> {
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::IterationsOutOfRange(iterations.into()));
        }
        // Hi() of RFC 5802 is PBKDF2 with one block of HMAC output.
        let mut salted = Zeroizing::new([0u8; KEY_LEN]);
        openssl::pkcs5::pbkdf2_hmac(
            password,
            salt,
            iterations as usize,
            MessageDigest::sha256(),
            salted.as_mut_slice(),
        )?;
        let keys = Keys {
            client_key: ClientKey(hmac_sha256(&salted, &[b"Client Key"])),
            server_key: ServerKey(hmac_sha256(&salted, &[b"Server Key"])),
        };
        Ok(keys)
    }
}

fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC zero-pads keys shorter than the hash's 64-byte block, so padding
    // here computes the same MAC through the infallible constructor.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <HmacSha256 as KeyInit>::new(&(*block).into());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

fn random_nonce() -> Result<String, ScramError> {
    let raw: [u8; RAW_NONCE_LEN] = random::bytes()?;
    // The base64 alphabet is all "printable" in SCRAM's sense (no comma).
    Ok(B64.encode(raw))
}

/// Bounds the size and requires UTF-8 (SCRAM messages are UTF-8 text).
fn as_message<'a>(msg: &'a [u8], what: &'static str) -> Result<&'a str, ScramError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::TooLong {
            len: msg.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed(what))
}

/// `x=value`, where `x` is an ASCII letter.
fn attribute(a: Option<&str>) -> Result<(u8, &str), ScramError> {
    let a = a.ok_or(ScramError::Malformed("missing attribute"))?;
    match a.as_bytes() {
        [name, b'=', ..] if name.is_ascii_alphabetic() => Ok((*name, &a[2..])),
        _ => Err(ScramError::Malformed("attribute")),
    }
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E, non-empty.
fn validate_nonce(nonce: &str) -> Result<(), ScramError> {
    let ok = !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',');
    if ok {
        Ok(())
    } else {
        Err(ScramError::InvalidNonce)
    }
}

fn parse_iterations(s: &str, max: u64) -> Result<u32, ScramError> {
    // Digits only (no sign, no spaces) and short enough not to overflow.
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScramError::Malformed("iteration count"));
    }
    let n: u64 = s
        .parse()
        .map_err(|_| ScramError::Malformed("iteration count"))?;
    if n == 0 || n > max {
        return Err(ScramError::IterationsOutOfRange(n));
    }
    u32::try_from(n).map_err(|_| ScramError::IterationsOutOfRange(n))
}

fn check_salt(salt: &[u8]) -> Result<(), ScramError> {
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        Err(ScramError::InvalidSaltLength(salt.len()))
    } else {
        Ok(())
    }
}

fn decode_b64(s: &str, what: &'static str) -> Result<Vec<u8>, ScramError> {
    B64.decode(s)
        .map_err(|source| ScramError::Base64 { what, source })
}

fn decode_key(s: &str, what: &'static str) -> Result<[u8; KEY_LEN], ScramError> {
    let v = decode_b64(s, what)?;
    <[u8; KEY_LEN]>::try_from(v.as_slice()).map_err(|_| ScramError::InvalidVerifier(what))
}

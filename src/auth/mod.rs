//! Authentication building blocks: host-based access rules, PostgreSQL's md5
//! password scheme and SCRAM-SHA-256 for both ends of a connection.
//!
//! `hba`, `md5`, `scram` and `proof` are pure: state machines and
//! functions over bytes, no sockets. `startup` (the client's first packets)
//! and `client` (admission and the password checks) drive them over a
//! blocking client socket with the messages of [`crate::protocol`], for
//! workers and for remote management alike (see `doc/SECURITY.md` for how
//! they fit together).

pub mod client;
pub mod credentials;
pub mod hba;
pub mod md5;
pub mod proof;
pub mod scram;
pub mod startup;

pub use client::{Admission, AuthError};
pub use credentials::Credentials;
pub use hba::{ConnKind, Hba, HbaError, HbaRule, Method};
pub use proof::AuthProof;
pub use scram::{ClientKey, ScramClient, ScramError, ScramServer, ScramVerifier};

/// The message PostgreSQL sends (with SQLSTATE 28P01) when a password does
/// not match, whatever the method. An unknown user gets exactly the same
/// text, so that a client cannot tell which user names exist.
pub fn password_failed_message(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// Compares two secrets (passwords, md5 responses, proofs) in time that
/// depends only on their lengths, so that a client timing our answers learns
/// nothing about how many leading bytes it got right. The lengths themselves
/// are not secret: every response format here has a fixed length, and a
/// cleartext password's length is revealed by the message carrying it.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // openssl::memcmp::eq panics on a length mismatch, so that case is
    // answered here before it is reached.
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn password_failed_message_matches_postgresql() {
        assert_eq!(
            password_failed_message("alice"),
            "password authentication failed for user \"alice\""
        );
    }
}

//! The user vault: passwords pgcorral uses (towards PostgreSQL, or to check
//! clients with), encrypted with AES-256-GCM under a master key that lives
//! in a file only its owner can read.
//!
//! [`master_key`] creates and loads that key; [`users`] reads and writes
//! the users file. `pgcorral-admin` is the command-line front end.

pub mod master_key;
pub mod users;

use std::path::PathBuf;

pub use master_key::MasterKey;
pub use users::Users;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; use --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error(
        "master key file {} has mode {mode:04o}: it must not be accessible by group or others \
         (chmod 0600 {})",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "master key file {} is owned by uid {owner}, not by the user running pgcorral (uid {euid})",
        path.display()
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("master key file {} is invalid: {reason}", path.display())]
    InvalidKey { path: PathBuf, reason: &'static str },
    #[error("HOME is not set, so there is no default master key path; give one with -k")]
    NoHome,
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}:{line}: cannot decrypt the password of user \"{user}\": \
         wrong master key, or the file was altered",
        path.display()
    )]
    Decrypt {
        path: PathBuf,
        line: usize,
        user: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("user \"{0}\" already exists")]
    UserExists(String),
    #[error("user \"{0}\" does not exist")]
    NoSuchUser(String),
    #[error("invalid user name: {0}")]
    InvalidUser(&'static str),
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    #[error("cryptographic failure: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
}

impl VaultError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        VaultError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

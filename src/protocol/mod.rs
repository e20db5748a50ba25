//! PostgreSQL frontend/backend protocol (version 3): the messages pgcorral
//! itself has to read or produce during start-up, authentication and error
//! reporting. Everything else is forwarded as opaque tagged frames.
//!
//! Builders append to a caller-supplied `Vec<u8>` so a worker can reuse one
//! buffer for its whole life; parsers take a message body as `&[u8]`.

pub mod backend;
pub mod error_response;
pub mod extended;
pub mod framer;
pub mod frontend;
pub mod message;
pub mod options;
pub mod row_description;
pub mod sqlstate;
pub mod startup;
pub mod tag;

pub use backend::{
    authentication_ok, backend_key_data, negotiate_protocol_version, parameter_status,
    parameter_status_value, parse_authentication, parse_backend_key_data, parse_parameter_status,
    ready_for_query, ssl_refused, AuthRequest,
};
pub use error_response::{is_fatal_or_panic, ErrorResponse};
pub use frontend::{password_message, query, sync, terminate};
pub use message::{put_cstr, read_message, write_message, BodyReader, Message};
pub use startup::{
    encode_cancel_request, parse_startup_body, read_startup, StartupMessage, StartupRequest,
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LENGTH, SSL_REQUEST_CODE,
};

/// Why a protocol read or parse failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("message length {len} exceeds the limit of {max}")]
    TooLong { len: u64, max: u64 },
    #[error("message length {len} is invalid")]
    BadLength { len: i64 },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("connection closed")]
    Eof,
    /// A start-up user name that is not UTF-8: no role pgcorral can serve
    /// has one, and PostgreSQL says so in these words (name shown lossily).
    #[error("role \"{0}\" does not exist")]
    NoSuchRole(String),
    /// Likewise for a database name.
    #[error("database \"{0}\" does not exist")]
    NoSuchDatabase(String),
}

impl ProtocolError {
    /// The SQLSTATE to put in the ErrorResponse sent to the peer (if the
    /// connection is still usable enough to send one).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::TooLong { .. }
            | ProtocolError::BadLength { .. }
            | ProtocolError::Malformed { .. } => sqlstate::PROTOCOL_VIOLATION,
            ProtocolError::UnsupportedVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            ProtocolError::Io(_) | ProtocolError::Eof => sqlstate::CONNECTION_FAILURE,
            ProtocolError::NoSuchRole(_) => sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            ProtocolError::NoSuchDatabase(_) => sqlstate::INVALID_CATALOG_NAME,
        }
    }

    pub(crate) fn malformed(what: &'static str) -> Self {
        ProtocolError::Malformed { what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_mapping() {
        assert_eq!(
            ProtocolError::TooLong { len: 1, max: 0 }.sqlstate(),
            "08P01"
        );
        assert_eq!(ProtocolError::BadLength { len: 3 }.sqlstate(), "08P01");
        assert_eq!(ProtocolError::malformed("x").sqlstate(), "08P01");
        assert_eq!(
            ProtocolError::UnsupportedVersion { major: 2, minor: 0 }.sqlstate(),
            "0A000"
        );
        assert_eq!(ProtocolError::Eof.sqlstate(), "08006");
        let io = std::io::Error::other("boom");
        assert_eq!(ProtocolError::from(io).sqlstate(), "08006");
    }

    #[test]
    fn display_texts() {
        assert_eq!(
            ProtocolError::TooLong { len: 20, max: 10 }.to_string(),
            "message length 20 exceeds the limit of 10"
        );
        assert_eq!(
            ProtocolError::UnsupportedVersion { major: 2, minor: 0 }.to_string(),
            "unsupported frontend protocol 2.0"
        );
        assert_eq!(
            ProtocolError::malformed("startup packet: no user").to_string(),
            "malformed startup packet: no user"
        );
    }
}

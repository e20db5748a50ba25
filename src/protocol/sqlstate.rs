//! SQLSTATE codes pgcorral reports itself (PostgreSQL Appendix A).

pub const SUCCESSFUL_COMPLETION: &str = "00000";
pub const CONNECTION_EXCEPTION: &str = "08000";
pub const SQLCLIENT_UNABLE_TO_ESTABLISH: &str = "08001";
pub const CONNECTION_FAILURE: &str = "08006";
pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const INTERNAL_ERROR: &str = "XX000";

/// idle_session_timeout, also used for `disconnect_client`.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_five_uppercase_alphanumerics() {
        for code in [
            SUCCESSFUL_COMPLETION,
            CONNECTION_EXCEPTION,
            SQLCLIENT_UNABLE_TO_ESTABLISH,
            CONNECTION_FAILURE,
            PROTOCOL_VIOLATION,
            FEATURE_NOT_SUPPORTED,
            INVALID_AUTHORIZATION_SPECIFICATION,
            INVALID_PASSWORD,
            INVALID_CATALOG_NAME,
            TOO_MANY_CONNECTIONS,
            PROGRAM_LIMIT_EXCEEDED,
            QUERY_CANCELED,
            ADMIN_SHUTDOWN,
            CANNOT_CONNECT_NOW,
            INTERNAL_ERROR,
        ] {
            assert_eq!(code.len(), 5, "{code}");
            assert!(code
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
        }
    }
}

//! Message type bytes. The two directions reuse letters with different
//! meanings (b'S' is Sync from a client but ParameterStatus from a server),
//! so they live in separate modules.

/// Sent by a client (or by pgcorral acting as one toward PostgreSQL).
pub mod frontend {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, GSSResponse, SASLInitialResponse and SASLResponse
    /// all share this byte; which one it is depends on the auth exchange.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Sent by PostgreSQL (or by pgcorral acting as the server toward a client).
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// The status byte carried by ReadyForQuery.
pub mod transaction_status {
    pub const IDLE: u8 = b'I';
    pub const IN_TRANSACTION: u8 = b'T';
    pub const FAILED: u8 = b'E';
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_tags_are_distinct() {
        let all = [
            frontend::BIND,
            frontend::CLOSE,
            frontend::COPY_DATA,
            frontend::COPY_DONE,
            frontend::COPY_FAIL,
            frontend::DESCRIBE,
            frontend::EXECUTE,
            frontend::FLUSH,
            frontend::FUNCTION_CALL,
            frontend::PARSE,
            frontend::PASSWORD,
            frontend::QUERY,
            frontend::SYNC,
            frontend::TERMINATE,
        ];
        assert_distinct(&all);
    }

    #[test]
    fn backend_tags_are_distinct() {
        let all = [
            backend::AUTHENTICATION,
            backend::BACKEND_KEY_DATA,
            backend::BIND_COMPLETE,
            backend::CLOSE_COMPLETE,
            backend::COMMAND_COMPLETE,
            backend::COPY_BOTH_RESPONSE,
            backend::COPY_DATA,
            backend::COPY_DONE,
            backend::COPY_IN_RESPONSE,
            backend::COPY_OUT_RESPONSE,
            backend::DATA_ROW,
            backend::EMPTY_QUERY_RESPONSE,
            backend::ERROR_RESPONSE,
            backend::FUNCTION_CALL_RESPONSE,
            backend::NEGOTIATE_PROTOCOL_VERSION,
            backend::NO_DATA,
            backend::NOTICE_RESPONSE,
            backend::NOTIFICATION_RESPONSE,
            backend::PARAMETER_DESCRIPTION,
            backend::PARAMETER_STATUS,
            backend::PARSE_COMPLETE,
            backend::PORTAL_SUSPENDED,
            backend::READY_FOR_QUERY,
            backend::ROW_DESCRIPTION,
        ];
        assert_distinct(&all);
    }

    fn assert_distinct(tags: &[u8]) {
        for (i, a) in tags.iter().enumerate() {
            for b in &tags[i + 1..] {
                assert_ne!(a, b, "duplicate tag {}", *a as char);
            }
        }
    }
}

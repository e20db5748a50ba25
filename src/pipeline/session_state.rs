//! What a pass-through pipeline learns about the server session from the
//! message tags it sees go by: enough to tell whether the connection can be
//! handed to another client.

use crate::protocol::tag::{backend, frontend};

#[derive(Debug, Clone)]
pub struct SessionState {
    /// Requests that will each be answered by a ReadyForQuery (Query, Sync,
    /// FunctionCall) minus the ReadyForQuery messages seen.
    pub pending: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub extended_open: bool,
    /// Transaction status from the last ReadyForQuery: I, T or E.
    pub tx_status: u8,
    /// The server sent an ErrorResponse with severity FATAL or PANIC.
    pub server_fatal: bool,
    /// Both directions ended between messages with nothing half-passed.
    pub streams_idle: bool,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            pending: 0,
            extended_open: false,
            tx_status: b'I',
            server_fatal: false,
            streams_idle: true,
        }
    }
}

impl SessionState {
    pub fn client_message(&mut self, tag: u8) {
        match tag {
            frontend::QUERY | frontend::FUNCTION_CALL => self.pending += 1,
            frontend::SYNC => {
                self.pending += 1;
                self.extended_open = false;
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE
            | frontend::FLUSH => self.extended_open = true,
            _ => {}
        }
    }

    pub fn ready_for_query(&mut self, status: u8) {
        self.pending = self.pending.saturating_sub(1);
        self.tx_status = status;
    }

    /// Idle, outside a transaction, nothing in flight: the next client
    /// cannot tell this connection from a fresh one (apart from session
    /// settings, which the performance pipeline does not reset).
    pub fn is_clean(&self) -> bool {
        self.pending == 0
            && !self.extended_open
            && self.tx_status == b'I'
            && !self.server_fatal
            && self.streams_idle
    }

    /// Tags whose bodies the server-to-client scan must see.
    pub fn wants_server_body(tag: u8) -> bool {
        tag == backend::READY_FOR_QUERY || tag == backend::ERROR_RESPONSE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_query_round_trip_is_clean() {
        let mut s = SessionState::default();
        s.client_message(b'Q');
        assert!(!s.is_clean());
        s.ready_for_query(b'I');
        assert!(s.is_clean());
    }

    #[test]
    fn open_transaction_or_unsynced_extended_is_dirty() {
        let mut s = SessionState::default();
        s.client_message(b'Q');
        s.ready_for_query(b'T');
        assert!(!s.is_clean());
        let mut s = SessionState::default();
        s.client_message(b'P');
        s.client_message(b'B');
        s.client_message(b'E');
        assert!(!s.is_clean(), "Execute without Sync");
        s.client_message(b'S');
        s.ready_for_query(b'I');
        assert!(s.is_clean());
    }

    #[test]
    fn fatal_or_half_passed_stream_is_dirty() {
        let s = SessionState {
            server_fatal: true,
            ..SessionState::default()
        };
        assert!(!s.is_clean());
        let s = SessionState {
            streams_idle: false,
            ..SessionState::default()
        };
        assert!(!s.is_clean());
    }
}

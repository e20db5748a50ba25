//! Named protocol-level prepared statements under transaction pooling.
//!
//! A statement a client prepares with a named Parse lives only on the
//! server connection that parsed it, and the client's next transaction may
//! run on another. So the client's names never reach PostgreSQL: every
//! distinct statement (query text plus parameter types) gets a server-side
//! name derived from a keyed hash of it, `pgc_<16 hex digits>`, identical in
//! every worker, and a connection that lacks the statement when a Bind or
//! Describe needs it gets the Parse first. Connections share statements:
//! two clients preparing the same text use one server statement.
//!
//! A client's Parse always reaches the server, replacing the connection's
//! statement of the same text: the server analyses it against the schema
//! as it is then. A statement the server refuses because its result changed
//! since it was prepared is forgotten by the connection's record and closed
//! (see `plan_is_stale`); a client name known to predate such a change is
//! refused here as PostgreSQL would refuse it (see `Rewriter::usable`).
//!
//! Because some client requests are answered here (a Close, an unknown
//! name) and some requests are added (a Parse before a Bind, closes of
//! statements evicted from the connection or found stale), the answers are
//! matched to requests by [`Responses`]. Everything here is
//! pure bookkeeping on whole messages; the caller owns the sockets and the
//! per-connection record ([`ServerStatements`]).
//!
//! What a client can tell from a direct connection:
//! * a Close of a statement does not close portals already bound from it;
//! * a client that has more than `max_client_statements` names loses the
//!   least recently used one ("does not exist" on its next Bind);
//! * SQL-level `PREPARE` / `EXECUTE` are passed through untouched (a
//!   `PREPARE` pins the client to its connection, see `session_sql`, or
//!   works only within one transaction when pinning is off); `DEALLOCATE name` of a name the
//!   client prepared with Parse is answered here, and `DEALLOCATE ALL` /
//!   `DISCARD ALL` forget every name, but only when sent alone as a simple
//!   query (no comments, no other statement in the same query string);
//! * the unnamed statement is carried (`unnamed`): the client's last
//!   unnamed Parse is sent again before a Bind or Describe of it on a
//!   connection where the client has not parsed it, so it outlives the
//!   transaction as on a direct connection, and another client's unnamed
//!   statement is never used; if that Parse fails there, the client sees
//!   its error where PostgreSQL would have bound the old statement.
//!
//! If the bookkeeping meets what it cannot explain it says so instead of
//! guessing: a malformed client message, a server answer no request
//! accounts for. Closing before every Parse (harmless when the statement
//! is absent) and forgetting a statement the server reports missing make
//! the per-connection record self-correcting in both directions.

mod note;
#[cfg(test)]
mod proptests;
mod registry;
mod rewriter;
mod sql;
#[cfg(test)]
mod tests;
mod unnamed;

pub use registry::{server_name, server_name_hash, statement_hash, ClientStatements, Statement};
pub use rewriter::{Rewriter, Route};

use super::responses::ResponseError;
use crate::protocol::{sqlstate, ProtocolError};

/// Every server-side statement name pgcorral creates starts with this.
pub const SERVER_NAME_PREFIX: &str = "pgc_";

/// A client may not have more requests than this waiting for answers; it
/// is refused rather than allowed to grow the queue without end (answers
/// pgcorral gives itself cost the server nothing, so the server's pace
/// does not bound them).
pub const MAX_OUTSTANDING: usize = 1 << 18;

/// Statements evicted from a connection's record are closed on the server
/// only once it is idle outside a transaction; a client that keeps
/// preparing new statements without getting there is refused beyond this
/// many.
pub const MAX_DEFERRED_CLOSES: usize = 1 << 16;

const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
const UNDEFINED_PREPARED_STATEMENT: &str = "26000";

/// The prepared statements the server connection currently attached has,
/// by server-side name. The caller backs it with the slot's record, which
/// outlives this worker's use of the connection.
pub trait ServerStatements {
    /// Also counts as a use for least-recently-used eviction.
    fn contains(&self, server_name: &str) -> bool;
    /// Records that the connection now has it; may return a name the
    /// caller evicted to make room (least recently used), which the
    /// rewriter closes on the server.
    fn insert(&mut self, server_name: &str) -> Option<String>;
    fn remove(&mut self, server_name: &str);
    fn clear(&mut self);
}

#[derive(Debug, thiserror::Error)]
pub enum PreparedError {
    #[error("{0} message")]
    Malformed(#[from] ProtocolError),
    #[error("two different statements hash to the server-side name {name}")]
    HashCollision { name: String },
    #[error("more than {MAX_OUTSTANDING} requests waiting for answers")]
    TooManyOutstanding,
    #[error("more than {MAX_DEFERRED_CLOSES} prepared statements waiting to be closed; send Sync")]
    TooManyDeferredCloses,
    #[error(transparent)]
    Server(#[from] ResponseError),
}

impl PreparedError {
    /// The SQLSTATE to report to the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PreparedError::Malformed(_) => sqlstate::PROTOCOL_VIOLATION,
            PreparedError::HashCollision { .. } => sqlstate::INTERNAL_ERROR,
            PreparedError::TooManyOutstanding | PreparedError::TooManyDeferredCloses => {
                sqlstate::PROGRAM_LIMIT_EXCEEDED
            }
            PreparedError::Server(e) => e.sqlstate(),
        }
    }
}

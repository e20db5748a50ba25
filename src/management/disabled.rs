//! Refusing clients of databases closed by `pgcorral-cli disable`: the
//! worker checks the shared table (`crate::disabled`) once, while its
//! client starts up, and refuses the client with `FATAL 57P03` (cannot
//! connect now) naming the database.

use std::os::fd::BorrowedFd;

use crate::protocol::{sqlstate, ErrorResponse};
use crate::segment::Segment;
use crate::sys;

/// What a client of a disabled database is told, or `None` when the
/// database is open.
pub fn refusal(segment: &Segment, database: &str) -> Option<ErrorResponse> {
    if !segment.disabled().is_disabled(database) {
        return None;
    }
    Some(
        ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("database \"{database}\" is disabled in pgcorral"),
        )
        .with_hint(format!("pgcorral-cli enable {database}")),
    )
}

/// The worker's start-up check: if `database` is disabled, sends the
/// client `FATAL 57P03` naming it, logs it, and returns true; the worker
/// then ends the session (without touching the pool). Call it once the
/// startup packet has been read, before authentication and before a slot
/// is acquired.
pub fn refuse(segment: &Segment, client: BorrowedFd<'_>, database: &str) -> bool {
    let Some(resp) = refusal(segment, database) else {
        return false;
    };
    log::info!("client for disabled database \"{database}\" refused");
    let mut out = Vec::new();
    resp.encode(&mut out);
    // The client is refused either way; one that vanished first has
    // nothing to be told.
    if let Err(e) = sys::io::write_all(client, &out) {
        log::debug!("refusing a client of \"{database}\": {e}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disabled::DisabledSet;

    #[test]
    fn refusal_names_a_disabled_database() {
        let seg = Segment::create(1, &[]).unwrap();
        assert!(refusal(&seg, "app").is_none());
        let mut s = DisabledSet::default();
        s.disable(Some("app")).unwrap();
        seg.disabled().store(&s).unwrap();
        let r = refusal(&seg, "app").unwrap();
        assert_eq!(r.code, "57P03");
        assert!(r.message.contains("\"app\""));
        assert!(refusal(&seg, "other").is_none());
    }
}

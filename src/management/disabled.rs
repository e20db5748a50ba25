//! Refusing clients of databases closed by `pgcorral-cli disable`: the
//! worker checks the shared table (`crate::disabled`) once, while its
//! client starts up, and refuses the client with `FATAL 57P03` (cannot
//! connect now) naming the database.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::protocol::{sqlstate, ErrorResponse};
use crate::segment::Segment;

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
    let mut sent = 0;
    while sent < out.len() {
        // SAFETY: sending from a live buffer on the client's socket, which
        // the caller keeps open; MSG_NOSIGNAL turns a vanished client into
        // an error return.
        let n = unsafe {
            libc::send(
                client.as_raw_fd(),
                out[sent..].as_ptr() as *const libc::c_void,
                out.len() - sent,
                libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            sent += n as usize;
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            break;
        }
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

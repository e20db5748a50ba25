//! Session-level settings that follow a client in transaction pooling.
//!
//! The server, not a lexer, says what a client's settings are: when a
//! transaction may have changed one (`pipeline::session_sql`), or the
//! connection carries the client's settings, the worker asks the idle
//! connection for them and resets it to its login state in the same
//! simple Query, before the connection goes back to the pool. The answer
//! becomes the client's record, set again, in one round trip, on whichever
//! connection its next transaction gets. A `ROLLBACK`, a `ROLLBACK TO
//! SAVEPOINT` or a `SET LOCAL` is thus undone by PostgreSQL's own rules
//! before anything is read.
//!
//! The reported parameters pgcorral carries by their ParameterStatus
//! (`pipeline::params::TRACKED`) are left out of the record: one mechanism
//! per parameter.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::session::{run_idle, send_idle, SessionError};
use crate::pipeline::params;
use crate::protocol::message::{put_cstr, put_i16, put_i32};
use crate::protocol::tag::frontend;
use crate::protocol::{write_message, ErrorResponse};
use crate::slot::Slot;

/// Reads the identity first, then resets it, so that `pg_settings` is read
/// with the login user's rights (a superuser's settings are all visible
/// after a `SET ROLE` to a lesser role). `RESET ALL` leaves the role and
/// the session authorization alone, hence their own RESETs. One simple
/// Query is one implicit transaction: if any part fails, none of the
/// resets is kept, and the connection is not given to anyone. Every name
/// is qualified: the client's `search_path` is still in force.
const CAPTURE: &str = "SELECT pg_catalog.current_setting('session_authorization'), \
     pg_catalog.current_setting('role'); \
     RESET SESSION AUTHORIZATION; RESET ROLE; \
     SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings \
     WHERE source = 'session'; \
     RESET ALL";

const RESET: &str = "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL";

/// Each setting is set through a parameter, so no value is ever quoted
/// into SQL text (whatever `standard_conforming_strings` is).
const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";

/// A client's session-level settings, in the order they are set again:
/// the parameters first, with the login user's rights (which set them
/// before any `SET ROLE` could have taken rights away), then
/// `session_authorization` (which ends a `SET ROLE`), then `role`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSettings {
    entries: Vec<(String, String)>,
}

impl ClientSettings {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The settings, as (name, value).
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// Forgets the setting called `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| n != name);
    }

    /// The record from the capture's rows: the identity row, then one row
    /// per setting whose source is the session.
    fn from_rows(rows: &[Vec<Option<String>>], login_user: &str) -> Self {
        let mut entries = Vec::new();
        let mut identity = None;
        for (i, row) in rows.iter().enumerate() {
            let (Some(Some(a)), Some(Some(b))) = (row.first(), row.get(1)) else {
                continue;
            };
            if i == 0 {
                identity = Some((a.clone(), b.clone()));
            } else if !params::is_tracked(a) {
                entries.push((a.clone(), b.clone()));
            }
        }
        if let Some((authorization, role)) = identity {
            if authorization != login_user {
                entries.push(("session_authorization".to_owned(), authorization));
            }
            if role != "none" {
                entries.push(("role".to_owned(), role));
            }
        }
        ClientSettings { entries }
    }
}

/// Reads the session settings of an idle connection and returns it to its
/// login state, in one round trip. An error leaves the connection in no
/// state it can be vouched for.
pub fn capture_and_reset(
    server: BorrowedFd<'_>,
    slot: &Slot,
    login_user: &str,
    timeout: Duration,
) -> Result<ClientSettings, SessionError> {
    let answer = run_idle(server, slot, CAPTURE, timeout)?;
    if let Some(error) = answer.error {
        return Err(SessionError::Refused {
            sql: CAPTURE.to_owned(),
            error: Box::new(error),
        });
    }
    if !answer.idle || answer.rows.is_empty() {
        return Err(SessionError::NotIdle(CAPTURE.to_owned()));
    }
    Ok(ClientSettings::from_rows(&answer.rows, login_user))
}

/// Returns an idle connection to its login state.
pub fn reset(server: BorrowedFd<'_>, slot: &Slot, timeout: Duration) -> Result<(), SessionError> {
    let answer = run_idle(server, slot, RESET, timeout)?;
    match answer.error {
        Some(error) => Err(SessionError::Refused {
            sql: RESET.to_owned(),
            error: Box::new(error),
        }),
        None if !answer.idle => Err(SessionError::NotIdle(RESET.to_owned())),
        None => Ok(()),
    }
}

/// Settings the server refused when they were set again (a role dropped
/// meanwhile, say): the first refusal, and the names of all.
#[derive(Debug)]
pub struct Refused {
    pub error: ErrorResponse,
    pub names: Vec<String>,
}

/// Sets `settings` on an idle connection in one round trip. Each is its
/// own request (up to its Sync), so one the server refuses spoils none
/// of the others; the refused ones are returned.
pub fn replay(
    server: BorrowedFd<'_>,
    slot: &Slot,
    settings: &ClientSettings,
    timeout: Duration,
) -> Result<Option<Refused>, SessionError> {
    let mut out = Vec::new();
    for (name, value) in &settings.entries {
        write_message(&mut out, frontend::PARSE, |b| {
            put_cstr(b, "");
            put_cstr(b, SET_CONFIG);
            put_i16(b, 0);
        });
        write_message(&mut out, frontend::BIND, |b| {
            put_cstr(b, "");
            put_cstr(b, "");
            put_i16(b, 0);
            put_i16(b, 2);
            for v in [name, value] {
                put_i32(b, i32::try_from(v.len()).unwrap_or(i32::MAX));
                b.extend_from_slice(v.as_bytes());
            }
            put_i16(b, 0);
        });
        write_message(&mut out, frontend::EXECUTE, |b| {
            put_cstr(b, "");
            put_i32(b, 0);
        });
        write_message(&mut out, frontend::SYNC, |_| {});
    }
    let answers = send_idle(server, slot, &out, settings.entries.len(), timeout)?;
    let mut refused: Option<Refused> = None;
    for ((name, _), answer) in settings.entries.iter().zip(answers) {
        if !answer.idle {
            return Err(SessionError::NotIdle(format!("set_config of {name}")));
        }
        if let Some(error) = answer.error {
            refused
                .get_or_insert(Refused {
                    error,
                    names: Vec::new(),
                })
                .names
                .push(name.clone());
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: &str, b: &str) -> Vec<Option<String>> {
        vec![Some(a.to_owned()), Some(b.to_owned())]
    }

    #[test]
    fn record_leaves_out_the_login_identity_and_carried_parameters() {
        let rows = [
            row("alice", "none"),
            row("work_mem", "8MB"),
            row("TimeZone", "UTC"),
            row("search_path", "\"a'b\", public"),
        ];
        let r = ClientSettings::from_rows(&rows, "alice");
        assert_eq!(
            r.entries(),
            &[
                ("work_mem".to_owned(), "8MB".to_owned()),
                ("search_path".to_owned(), "\"a'b\", public".to_owned()),
            ]
        );
        assert!(ClientSettings::from_rows(&[row("alice", "none")], "alice").is_empty());
    }

    #[test]
    fn identity_comes_last_authorization_before_role() {
        let rows = [row("bob", "r"), row("work_mem", "8MB")];
        let mut r = ClientSettings::from_rows(&rows, "alice");
        let names: Vec<&str> = r.entries().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["work_mem", "session_authorization", "role"]);
        r.remove("role");
        assert_eq!(r.entries().len(), 2);
    }
}

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
//! (`server::params::TRACKED`) are left out of the record: one mechanism
//! per parameter.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use super::session::{run_idle, send_idle, Row, SessionError};
use crate::protocol::message::{put_cstr, put_i16, put_i32};
use crate::protocol::tag::frontend;
use crate::protocol::{write_message, ErrorResponse};
use crate::server::params;
use crate::slot::Slot;

/// Reads the identity first, then resets it, so that `pg_settings` is read
/// with the login user's rights (a superuser's settings are all visible
/// after a `SET ROLE` to a lesser role). `RESET ALL` leaves the role and
/// the session authorization alone, hence their own RESETs. One simple
/// Query is one implicit transaction: if any part fails, none of the
/// resets is kept, and the connection is not given to anyone. Every name
/// is qualified, operators included: the client's `search_path` is still
/// in force.
const CAPTURE_IDENTITY: &str = "SELECT pg_catalog.current_setting('session_authorization'), \
     pg_catalog.current_setting('role'); \
     RESET SESSION AUTHORIZATION; RESET ROLE; ";

const CAPTURE_SETTINGS: &str = "SELECT name, pg_catalog.current_setting(name) \
     FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) 'session'; ";

/// At most this many qualified names are asked for by name.
pub const MAX_CUSTOM: usize = 64;

/// The capture query. Placeholder settings (`app.tenant`, of no loaded
/// module) are hidden from `pg_settings`, and nothing tells where their
/// value came from: those the client named are read before and after the
/// reset, and kept when the reset changed them.
fn capture_sql(custom: &[String]) -> String {
    let names: Vec<String> = custom
        .iter()
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'))
        })
        .map(|n| format!("'{n}'"))
        .collect();
    let by_name = (!names.is_empty()).then(|| {
        format!(
            "SELECT n, pg_catalog.current_setting(n, true) \
             FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS n",
            names.join(",")
        )
    });
    let mut sql = String::from(CAPTURE_IDENTITY);
    sql.push_str(CAPTURE_SETTINGS);
    if let Some(q) = &by_name {
        sql.push_str(q);
        sql.push_str("; ");
    }
    sql.push_str("RESET ALL");
    if let Some(q) = &by_name {
        sql.push_str("; ");
        sql.push_str(q);
    }
    sql
}

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

    /// The record from the capture's results: the identity, the settings
    /// whose source is the session, and, when asked for, the named ones
    /// before and after the reset.
    fn from_results(results: &[Vec<Row>], login_user: &str) -> Self {
        fn pair(row: &Row) -> Option<(&str, Option<&str>)> {
            Some((row.first()?.as_deref()?, row.get(1)?.as_deref()))
        }
        let mut entries: Vec<(String, String)> = Vec::new();
        for (name, value) in results.get(1).into_iter().flatten().filter_map(pair) {
            if let (true, Some(value)) = (follows(name), value) {
                entries.push((name.to_owned(), value.to_owned()));
            }
        }
        if let (Some(before), Some(after)) = (results.get(2), results.get(3)) {
            for (row, reset) in before.iter().zip(after) {
                let (Some((name, Some(value))), Some((_, reset))) = (pair(row), pair(reset)) else {
                    continue;
                };
                let known = entries.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
                if reset != Some(value) && !known && follows(name) {
                    entries.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        let identity = results.first().and_then(|r| r.first()).and_then(pair);
        if let Some((authorization, role)) = identity {
            if authorization != login_user {
                entries.push(("session_authorization".to_owned(), authorization.to_owned()));
            }
            if let Some(role) = role.filter(|r| *r != "none") {
                entries.push(("role".to_owned(), role.to_owned()));
            }
        }
        ClientSettings { entries }
    }
}

/// Whether a setting the server reports is the client's to carry here:
/// not a reported parameter carried by its ParameterStatus, and not one of
/// the `transaction_*` settings, which belong to one transaction (a `SET
/// transaction_read_only` outside a transaction block leaves its source
/// "session") and cannot be set once a query has run in it.
fn follows(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !params::is_tracked(name) && !lower.starts_with("transaction_")
}

/// Reads the session settings of an idle connection and returns it to its
/// login state, in one round trip. An error leaves the connection in no
/// state it can be vouched for.
pub fn capture_and_reset(
    server: BorrowedFd<'_>,
    slot: &Slot,
    login_user: &str,
    custom: &[String],
    timeout: Duration,
) -> Result<ClientSettings, SessionError> {
    let sql = capture_sql(custom);
    let answer = run_idle(server, slot, &sql, timeout)?;
    if let Some(error) = answer.error {
        return Err(SessionError::Refused {
            sql,
            error: Box::new(error),
        });
    }
    if !answer.idle || answer.results.len() < 2 {
        return Err(SessionError::NotIdle(sql));
    }
    Ok(ClientSettings::from_results(&answer.results, login_user))
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

    fn row(a: &str, b: Option<&str>) -> Row {
        vec![Some(a.to_owned()), b.map(str::to_owned)]
    }

    #[test]
    fn record_leaves_out_the_login_identity_and_carried_parameters() {
        let results = [
            vec![row("alice", Some("none"))],
            vec![
                row("work_mem", Some("8MB")),
                row("TimeZone", Some("UTC")),
                row("transaction_read_only", Some("off")),
                row("search_path", Some("\"a'b\", public")),
            ],
        ];
        let r = ClientSettings::from_results(&results, "alice");
        assert_eq!(
            r.entries(),
            &[
                ("work_mem".to_owned(), "8MB".to_owned()),
                ("search_path".to_owned(), "\"a'b\", public".to_owned()),
            ]
        );
        let nothing = [vec![row("alice", Some("none"))], vec![]];
        assert!(ClientSettings::from_results(&nothing, "alice").is_empty());
    }

    #[test]
    fn identity_comes_last_authorization_before_role() {
        let results = [
            vec![row("bob", Some("r"))],
            vec![row("work_mem", Some("8MB"))],
        ];
        let mut r = ClientSettings::from_results(&results, "alice");
        let names: Vec<&str> = r.entries().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["work_mem", "session_authorization", "role"]);
        r.remove("role");
        assert_eq!(r.entries().len(), 2);
    }

    #[test]
    fn named_settings_are_kept_when_the_reset_changed_them() {
        let results = [
            vec![row("alice", Some("none"))],
            vec![row("plpgsql.extra_warnings", Some("all"))],
            vec![
                row("app.tenant", Some("42")),
                row("app.unset", None),
                row("app.same", Some("x")),
                row("plpgsql.extra_warnings", Some("all")),
            ],
            vec![
                row("app.tenant", Some("")),
                row("app.unset", None),
                row("app.same", Some("x")),
                row("plpgsql.extra_warnings", Some("none")),
            ],
        ];
        let r = ClientSettings::from_results(&results, "alice");
        assert_eq!(
            r.entries(),
            &[
                ("plpgsql.extra_warnings".to_owned(), "all".to_owned()),
                ("app.tenant".to_owned(), "42".to_owned()),
            ]
        );
    }

    #[test]
    fn capture_names_only_plain_names() {
        let sql = capture_sql(&["app.a".to_owned(), "x';drop".to_owned()]);
        assert!(sql.contains("ARRAY['app.a']"), "{sql}");
        assert!(!sql.contains("drop"), "{sql}");
        assert!(!capture_sql(&[]).contains("unnest"));
    }
}

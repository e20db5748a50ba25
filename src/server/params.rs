//! Session parameters in transaction pooling.
//!
//! A client's settings must follow it from one server connection to the
//! next, and must never leak into another client's. PostgreSQL reports the
//! parameters that matter to clients (ParameterStatus), both at start-up
//! and whenever they change, so the worker tracks the values its client
//! expects, the slot records the values its connection has, and before a
//! transaction runs on a connection the worker sets whatever differs.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::protocol::framer::{frames, Frame};
use crate::protocol::{self, tag::backend};
use crate::slot::Slot;

/// Reported parameters a client can change with SET and that change what
/// queries return. Others that PostgreSQL reports (server_version,
/// is_superuser, session_authorization, …) are fixed per role or server.
pub const TRACKED: [&str; 6] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

pub fn is_tracked(name: &str) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
}

fn canonical(name: &str) -> Option<&'static str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}

/// Values a client expects, or a connection has, for the tracked names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: Vec<(&'static str, String)>,
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = canonical(name)?;
        self.values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Records a value; names that are not tracked are ignored.
    pub fn set(&mut self, name: &str, value: &str) {
        let Some(name) = canonical(name) else { return };
        match self.values.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.values.push((name, value.to_string())),
        }
    }

    /// The tracked ParameterStatus values in a slot's start-up messages.
    pub fn from_startup(blob: &[u8]) -> Self {
        let mut p = Params::default();
        for Frame { tag, body } in frames(blob) {
            if tag == backend::PARAMETER_STATUS {
                if let Ok((k, v)) = protocol::parse_parameter_status(body) {
                    p.set(k, v);
                }
            }
        }
        p
    }

    /// Tracked values from a client's startup packet. Settings in
    /// `options` (`-c name=value`, `--name=value`) win over the plain
    /// parameters, as PostgreSQL applies them afterwards.
    ///
    /// `application_name` is the one login value that may be another
    /// client's (it does not split the pool, `server::settings`): a
    /// client that named none expects PostgreSQL's default, the empty
    /// name, not that one.
    pub fn from_client(params: &[(String, String)]) -> Self {
        let mut p = Params::default();
        for (k, v) in params {
            if k != "options" {
                p.set(k, v);
            }
        }
        for (k, v) in params {
            if k == "options" {
                for (name, value) in option_settings(v) {
                    p.set(&name, &value);
                }
            }
        }
        if p.get("application_name").is_none() {
            p.set("application_name", "");
        }
        p
    }

    /// SET statements, in one query string, that give a connection the
    /// values this client expects: its own for the names it has, the
    /// connection's login values for the others (so a value another client
    /// SET is undone). `login` and `current` are the connection's start-up
    /// messages as at login and as they are now. `None` when nothing
    /// differs. Runs at every attach, so it compares bytes in place.
    pub fn differences(&self, login: &[u8], current: &[u8]) -> Option<String> {
        let mut sql = String::new();
        for name in TRACKED {
            let want = match self.get(name) {
                Some(v) => v.as_bytes(),
                None => match reported(login, name) {
                    Some(v) => v,
                    None => continue,
                },
            };
            if reported(current, name) != Some(want) {
                let value = String::from_utf8_lossy(want);
                sql.push_str(&format!("SET {name} TO {};", quote_literal(&value)));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }
}

/// The tracked values a client expects, and the connections it has found
/// with them already. Comparing a connection's parameters means reading
/// and walking its start-up messages; a connection whose socket
/// (`Slot::generation`) and parameters (`Slot::startup_changes`) are
/// unchanged since it was found in line needs no second look. The record
/// belongs to one client: it is made with the client's values and
/// forgotten whenever they change.
#[derive(Debug, Default)]
pub struct Desired {
    params: Params,
    /// Slot index → generation and change count it was in line at.
    in_line: RefCell<HashMap<usize, (u64, u32)>>,
}

impl Desired {
    pub fn new(params: Params) -> Self {
        Desired {
            params,
            in_line: RefCell::default(),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The client now expects `value`: no connection is known to have it.
    pub fn set(&mut self, name: &str, value: &str) {
        self.params.set(name, value);
        self.in_line.get_mut().clear();
    }

    /// Whether the connection in slot `index` (held by the caller) was
    /// found in line and has not changed since.
    pub fn known_in_line(&self, index: usize, slot: &Slot) -> bool {
        self.in_line.borrow().get(&index) == Some(&stamp(slot))
    }

    /// The connection in slot `index` (held by the caller) has the values
    /// the client expects.
    pub fn found_in_line(&self, index: usize, slot: &Slot) {
        self.in_line.borrow_mut().insert(index, stamp(slot));
    }
}

fn stamp(slot: &Slot) -> (u64, u32) {
    (slot.generation(), slot.startup_changes())
}

/// The value start-up messages report for a tracked name.
fn reported<'a>(blob: &'a [u8], name: &str) -> Option<&'a [u8]> {
    frames(blob)
        .filter(|f| f.tag == backend::PARAMETER_STATUS)
        .find_map(|f| protocol::parameter_status_value(f.body, name))
}

/// The `name=value` settings in a startup `options` string.
fn option_settings(options: &str) -> Vec<(String, String)> {
    crate::protocol::options::settings(options)
}

/// A SQL string literal: doubled quotes, and an E'' literal for
/// backslashes, so the value cannot end the statement whatever
/// standard_conforming_strings is.
fn quote_literal(v: &str) -> String {
    let body = v.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// Rewrites a slot's start-up messages with `name` set to `value`
/// (replacing its ParameterStatus, or adding one).
pub fn startup_with(blob: &[u8], name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.len() + 32);
    let mut done = false;
    for Frame { tag, body } in frames(blob) {
        if tag == backend::PARAMETER_STATUS {
            if let Ok((k, _)) = protocol::parse_parameter_status(body) {
                if k == name {
                    if !done {
                        protocol::parameter_status(&mut out, name, value);
                        done = true;
                    }
                    continue;
                }
            }
        }
        protocol::write_message(&mut out, tag, |b| b.extend_from_slice(body));
    }
    if !done {
        protocol::parameter_status(&mut out, name, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, v) in pairs {
            protocol::parameter_status(&mut b, k, v);
        }
        protocol::backend_key_data(&mut b, 1, 2);
        b
    }

    #[test]
    fn tracks_only_settable_reported_parameters() {
        let p = Params::from_startup(&blob(&[
            ("TimeZone", "UTC"),
            ("server_version", "15.1"),
            ("client_encoding", "UTF8"),
        ]));
        assert_eq!(p.get("timezone"), Some("UTC"));
        assert_eq!(p.get("server_version"), None);
        assert_eq!(p.get("client_encoding"), Some("UTF8"));
    }

    #[test]
    fn differences_become_set_statements() {
        let mut want = Params::default();
        want.set("TimeZone", "Europe/Paris");
        want.set("application_name", "it's");
        let login = blob(&[("TimeZone", "UTC"), ("application_name", "it's")]);
        assert_eq!(
            want.differences(&login, &login).as_deref(),
            Some("SET TimeZone TO 'Europe/Paris';")
        );
        let now = startup_with(&login, "TimeZone", "Europe/Paris");
        assert_eq!(want.differences(&login, &now), None);
        let mut evil = Params::default();
        evil.set("application_name", "x'; drop table t; --\\");
        assert_eq!(
            evil.differences(&[], &[]).as_deref(),
            Some("SET application_name TO E'x''; drop table t; --\\\\';")
        );
    }

    #[test]
    fn client_values_win_and_the_rest_come_from_the_login() {
        let login = blob(&[("TimeZone", "UTC"), ("DateStyle", "ISO, MDY")]);
        let client = Params::from_client(&[
            ("timezone".to_string(), "Asia/Tokyo".to_string()),
            ("user".to_string(), "u".to_string()),
        ]);
        // Another client's SET DateStyle is still on the connection.
        let now = startup_with(&login, "DateStyle", "German");
        assert_eq!(
            client.differences(&login, &now).as_deref(),
            Some("SET application_name TO '';SET DateStyle TO 'ISO, MDY';SET TimeZone TO 'Asia/Tokyo';")
        );
        // Names no blob reports are set only when the client has them.
        assert_eq!(client.get("application_name"), Some(""));
        let both = startup_with(
            &startup_with(&now, "TimeZone", "Asia/Tokyo"),
            "DateStyle",
            "ISO, MDY",
        );
        assert_eq!(
            client.differences(&login, &both).as_deref(),
            Some("SET application_name TO '';")
        );
    }

    #[test]
    fn options_win_over_plain_parameters() {
        let p = Params::from_client(&[
            (
                "options".to_string(),
                "-c client_encoding=LATIN1 --TimeZone=UTC -cDateStyle=German".to_string(),
            ),
            ("client_encoding".to_string(), "UTF8".to_string()),
            ("application_name".to_string(), "app".to_string()),
        ]);
        assert_eq!(p.get("client_encoding"), Some("LATIN1"));
        assert_eq!(p.get("TimeZone"), Some("UTC"));
        assert_eq!(p.get("DateStyle"), Some("German"));
        assert_eq!(p.get("application_name"), Some("app"));
        let q = Params::from_client(&[(
            "options".to_string(),
            "-c application_name=a\\ b".to_string(),
        )]);
        assert_eq!(q.get("application_name"), Some("a b"));
    }

    #[test]
    fn startup_blob_is_rewritten_in_place_or_extended() {
        let b = blob(&[("TimeZone", "UTC"), ("DateStyle", "ISO")]);
        let b2 = startup_with(&b, "TimeZone", "Asia/Tokyo");
        let p = Params::from_startup(&b2);
        assert_eq!(p.get("TimeZone"), Some("Asia/Tokyo"));
        assert_eq!(p.get("DateStyle"), Some("ISO"));
        let b3 = startup_with(&b2, "IntervalStyle", "iso_8601");
        assert_eq!(
            Params::from_startup(&b3).get("IntervalStyle"),
            Some("iso_8601")
        );
        // The BackendKeyData is kept.
        assert!(frames(&b3).any(|f| f.tag == backend::BACKEND_KEY_DATA));
        // A cut-short blob does not panic.
        assert_eq!(
            Params::from_startup(&b3[..b3.len() - 3]).get("TimeZone"),
            Some("Asia/Tokyo")
        );
    }

    /// A connection found in line stays known until its socket, its
    /// parameters or the client's values change.
    #[test]
    fn a_connection_found_in_line_is_not_looked_at_again_until_something_changes() {
        let slot = Slot::default();
        slot.set_startup(&blob(&[("TimeZone", "UTC")]));
        let mut d = Desired::new(Params::default());
        assert!(!d.known_in_line(3, &slot));
        d.found_in_line(3, &slot);
        assert!(d.known_in_line(3, &slot));
        assert!(!d.known_in_line(4, &slot), "another slot");
        slot.set_startup(&blob(&[("TimeZone", "UTC")]));
        assert!(!d.known_in_line(3, &slot), "parameters set again");
        d.found_in_line(3, &slot);
        slot.bump_generation();
        assert!(!d.known_in_line(3, &slot), "another socket");
        d.found_in_line(3, &slot);
        d.set("TimeZone", "Asia/Tokyo");
        assert!(!d.known_in_line(3, &slot), "the client's values changed");
        assert_eq!(d.params().get("timezone"), Some("Asia/Tokyo"));
    }
}

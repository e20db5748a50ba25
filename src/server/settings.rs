//! A client's login settings: the start-up parameters and `options` words
//! a server connection is opened with, which decide whether that
//! connection may be given to another client.
//!
//! `DISCARD ALL` cannot undo a start-up setting (it is the session's
//! default), so a connection opened with `statement_timeout=3s` keeps it
//! for its whole life. The pool therefore gives a client only a connection
//! whose login settings equal its own (`hash`, recorded in the slot).
//!
//! The tracked parameters (`server::params::TRACKED`) a client names at
//! start-up are login settings like any other: `RESET DateStyle` must
//! return to the client's start-up value, which only a login can make the
//! session's default. `application_name` and `client_encoding` are left
//! out of the hash: nearly every client names them (psql, every driver,
//! each with its own value), they change no query's result, and pgcorral
//! sets the client's value on whatever connection it is given, so they do
//! not split the pool (a prefilled connection, opened with no settings,
//! must serve a driver that names its encoding). They are still sent at
//! login, so that the next client of the same program needs no `SET`.

use crate::protocol::options::{escape, items, Item};

/// Start-up parameters that are pgcorral's business, not the server's:
/// identity is sent separately, protocol options are negotiated by
/// pgcorral, and replication connections are not pooled.
fn forwarded(name: &str) -> bool {
    !matches!(name, "user" | "database" | "replication") && !name.starts_with("_pq_.")
}

/// Not part of the hash (see the module documentation).
fn shared_across_logins(name: &str) -> bool {
    name.eq_ignore_ascii_case("application_name") || name.eq_ignore_ascii_case("client_encoding")
}

/// The start-up parameters a server connection for this client is opened
/// with: everything forwarded, `options` rewritten into canonical
/// `-c name=value` words.
pub fn login_params(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in params {
        if !forwarded(k) {
            continue;
        }
        if k != "options" {
            out.push((k.clone(), v.clone()));
            continue;
        }
        let kept: Vec<String> = items(v)
            .into_iter()
            .map(|item| match item {
                Item::Setting(name, value) => format!("-c {}", escape(&format!("{name}={value}"))),
                Item::Word(w) => escape(&w),
            })
            .collect();
        if !kept.is_empty() {
            out.push((k.clone(), kept.join(" ")));
        }
    }
    out
}

/// What `login_params` sends, as one value that does not depend on order
/// or spelling: plain parameters and `-c` settings alike become lower-case
/// `name=value` entries (GUC names are case-insensitive), other `options`
/// words are kept in order. Keyed (`crate::hash`) with the supervisor's
/// key, so that no client can choose settings that collide with another
/// client's.
pub fn hash(key: [u64; 2], params: &[(String, String)]) -> u64 {
    let mut settings = Vec::new();
    let mut switches = Vec::new();
    for (k, v) in login_params(params) {
        if shared_across_logins(&k) {
            continue;
        }
        if k != "options" {
            settings.push((k.to_ascii_lowercase(), v));
            continue;
        }
        for item in items(&v) {
            match item {
                Item::Setting(name, _) if shared_across_logins(&name) => {}
                Item::Setting(name, value) => settings.push((name.to_ascii_lowercase(), value)),
                Item::Word(w) => switches.push(w),
            }
        }
    }
    // PostgreSQL applies `options` after the plain parameters: the last
    // value of a name is the one the session gets.
    let mut last: Vec<(String, String)> = Vec::new();
    for (k, v) in settings {
        match last.iter_mut().find(|(n, _)| *n == k) {
            Some(entry) => entry.1 = v,
            None => last.push((k, v)),
        }
    }
    last.sort();
    // Every entry and the two groups end with a NUL, which no name or
    // value contains, so different lists never make the same bytes.
    let mut bytes = Vec::new();
    for (k, v) in &last {
        for part in [k.as_bytes(), v.as_bytes()] {
            bytes.extend_from_slice(part);
            bytes.push(0);
        }
    }
    bytes.push(0);
    for w in &switches {
        bytes.extend_from_slice(w.as_bytes());
        bytes.push(0);
    }
    crate::hash::siphash24(key[0], key[1], &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u64; 2] = [7, 11];

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn application_name_logs_in_but_does_not_split_the_pool() {
        let client = p(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "psql"),
            ("options", "-c application_name=x"),
        ]);
        assert_eq!(
            login_params(&client),
            p(&[
                ("application_name", "psql"),
                ("options", "-c application_name=x")
            ])
        );
        assert_eq!(hash(KEY, &client), hash(KEY, &[]));
    }

    /// RESET returns to the start-up value only when the login set it.
    #[test]
    fn other_tracked_parameters_log_in_and_split_the_pool() {
        let client = p(&[
            ("client_encoding", "UTF8"),
            ("options", "-c intervalstyle=postgres_verbose"),
        ]);
        assert_eq!(login_params(&client), client);
        assert_ne!(hash(KEY, &client), hash(KEY, &[]));
        // What every driver sends does not split the pool.
        let driver = p(&[("client_encoding", "UTF8"), ("application_name", "app")]);
        assert_eq!(hash(KEY, &driver), hash(KEY, &[]));
    }

    #[test]
    fn other_settings_log_in_and_split_the_pool() {
        let client = p(&[
            ("options", "-c statement_timeout=3s -c DateStyle=German -e"),
            ("search_path", "a b"),
        ]);
        assert_eq!(
            login_params(&client),
            p(&[
                ("options", "-c statement_timeout=3s -c DateStyle=German -e"),
                ("search_path", "a b"),
            ])
        );
        assert_ne!(hash(KEY, &client), hash(KEY, &[]));
        let escaped = p(&[("options", "-c search_path=a\\ b")]);
        assert_eq!(
            login_params(&escaped),
            p(&[("options", "-c search_path=a\\ b")])
        );
    }

    #[test]
    fn spelling_and_order_do_not_matter() {
        let a = p(&[("options", "-c statement_timeout=3s -c lock_timeout=1s")]);
        let b = p(&[("options", "--lock-timeout=1s -cStatement_Timeout=3s")]);
        let c = p(&[("Statement_timeout", "3s"), ("lock_timeout", "1s")]);
        assert_eq!(hash(KEY, &a), hash(KEY, &b));
        assert_eq!(hash(KEY, &a), hash(KEY, &c));
        assert_ne!(
            hash(KEY, &a),
            hash(
                KEY,
                &p(&[("options", "-c statement_timeout=4s -c lock_timeout=1s")])
            )
        );
        // The value in `options` is the one the session gets.
        let overridden = p(&[
            ("statement_timeout", "9s"),
            ("options", "-c statement_timeout=3s -c lock_timeout=1s"),
        ]);
        assert_eq!(hash(KEY, &overridden), hash(KEY, &a));
    }
}

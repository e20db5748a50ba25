//! Prefill: server connections opened ahead of demand for `[[limit]]` rules
//! that name a database and a user (not `all`), up to `initial_size` at
//! start and `min_size` afterwards.
//!
//! The supervisor only decides that connections are missing (`targets`);
//! a short-lived helper it forks opens them (`run`), exactly as a worker
//! opens a connection for a new slot: reserve an empty slot, connect, fill
//! it (`server::fill_slot`, which hands the socket to the supervisor and
//! publishes the slot) and check it in FREE.

use std::path::Path;
use std::time::Duration;

use crate::auth::AuthProof;
use crate::auth::Credentials;
use crate::config::Config;
use crate::management::client::ManagementClient;
use crate::pool::{self, CheckedIn, Verdict, Want};
use crate::segment::Segment;
use crate::server::{self, FillError, Login, ServerError};
use crate::slot::SlotState;

/// Helper exit statuses.
pub const DONE: i32 = 0;
/// A connection could not be opened (the reason is logged).
pub const FAILED: i32 = 1;
/// No empty slot or no room in the rule's `max_size`: try again later.
pub const NO_ROOM: i32 = 3;

/// Connections missing for one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub rule: usize,
    pub database: String,
    pub user: String,
    pub missing: usize,
}

/// What to open now: for each rule with a concrete database and user, its
/// goal (`initial_size` and `min_size`, the larger, while `initial`; else
/// `min_size`) minus the connections it already counts.
pub fn targets(config: &Config, segment: &Segment, initial: bool) -> Vec<Target> {
    config
        .limits
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.database != "all" && rule.user != "all")
        .filter_map(|(i, rule)| {
            let goal = if initial {
                rule.initial_size.max(rule.min_size)
            } else {
                rule.min_size
            };
            let have = segment.limit(Some(i)).map_or(0, |l| l.active() as usize);
            let missing = goal.saturating_sub(have);
            (missing > 0).then(|| Target {
                rule: i,
                database: rule.database.clone(),
                user: rule.user.clone(),
                missing,
            })
        })
        .collect()
}

/// Whether a slot is empty, so that a helper has a chance to succeed.
pub fn has_empty_slot(segment: &Segment) -> bool {
    segment
        .slots()
        .iter()
        .any(|s| s.state() == SlotState::NotInit)
}

#[derive(Debug, thiserror::Error)]
enum PrefillError {
    #[error("no empty slot or no room under max_size")]
    NoRoom,
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Fill(#[from] FillError),
    #[error("slot {0} was not kept in the pool")]
    NotKept(usize),
}

/// Everything the helper needs, borrowed from the supervisor's memory
/// (which the fork copied).
pub struct Prefill<'a> {
    pub config: &'a Config,
    pub segment: &'a Segment,
    pub credentials: &'a Credentials,
    pub management_path: &'a Path,
    /// The key of `server::settings::hash`: a prefilled connection has no
    /// login settings, summed up as a worker sums up a client's.
    pub statement_key: [u64; 2],
}

impl Prefill<'_> {
    /// In the helper: opens the missing connections; returns the exit status.
    pub fn run(&self, targets: &[Target]) -> i32 {
        let me = std::process::id() as i32;
        let mut management: Option<ManagementClient> = None;
        let mut status = DONE;
        for t in targets {
            let mut opened = 0;
            for _ in 0..t.missing {
                match self.open_one(t, me, &mut management) {
                    Ok(i) => {
                        opened += 1;
                        log::debug!(
                            "prefill: {}/{} connection opened in slot {i}",
                            t.user,
                            t.database
                        );
                    }
                    Err(PrefillError::NoRoom) => {
                        log::debug!("prefill: {}/{}: no room for more", t.user, t.database);
                        status = status.max(NO_ROOM);
                        break;
                    }
                    Err(e) => {
                        log::warn!("prefill: {}/{}: {e}", t.user, t.database);
                        if status == DONE {
                            status = FAILED;
                        }
                        // A broken management connection is reopened.
                        management = None;
                        break;
                    }
                }
            }
            if opened > 0 {
                log::info!(
                    "prefill: opened {opened} connection(s) for {}/{}",
                    t.user,
                    t.database
                );
            }
        }
        status
    }

    fn open_one(
        &self,
        t: &Target,
        me: i32,
        management: &mut Option<ManagementClient>,
    ) -> Result<usize, PrefillError> {
        let want = Want {
            database: &t.database,
            user: &t.user,
            limit: Some(t.rule),
            settings: server::settings::hash(self.statement_key, &[]),
        };
        let i = pool::reserve_for_prefill(self.segment, want, me).ok_or(PrefillError::NoRoom)?;
        match self.connect_into(t, i, me, management) {
            Ok(()) => Ok(i),
            Err(e) => {
                // INIT → NOTINIT; a socket the supervisor already holds for
                // the slot is closed by its sweep.
                pool::abandon_new(self.segment, i, me);
                Err(e)
            }
        }
    }

    fn connect_into(
        &self,
        t: &Target,
        i: usize,
        me: i32,
        management: &mut Option<ManagementClient>,
    ) -> Result<(), PrefillError> {
        let login = match self.credentials.server_passwords.get(&t.user) {
            Some(pw) => Login::Password(pw),
            None => Login::Trust,
        };
        let server = self.config.server_at(self.segment.slots()[i].server());
        let (conn, _) = server::connect(
            server,
            &t.user,
            &t.database,
            &[],
            login,
            connect_timeout(self.config),
        )?;
        // pgcorral logged in itself (vault password) or the server asked
        // for none: nothing for later clients to re-prove.
        server::fill_slot(
            self.segment,
            i,
            me,
            &conn,
            &AuthProof::Nothing,
            management,
            self.management_path,
        )?;
        match pool::check_in(self.segment, i, me, Verdict::Clean) {
            CheckedIn::Kept => Ok(()),
            _ => Err(PrefillError::NotKept(i)),
        }
    }
}

/// How long a helper waits for PostgreSQL: `authentication_timeout`, at
/// least a second, 10 s when it is 0 (as a worker connecting does).
pub fn connect_timeout(config: &Config) -> Duration {
    server::wait_limit(config.main.authentication_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_only_concrete_rules_below_their_goal() {
        let config = Config::from_toml(
            r#"
[server.a]
[[limit]]
database = "all"
user = "all"
max_size = 9
min_size = 2
[[limit]]
database = "d"
user = "u"
max_size = 5
initial_size = 3
min_size = 1
[[limit]]
database = "e"
user = "u"
max_size = 5
"#,
        )
        .unwrap();
        let seg = Segment::create(8, &[9, 5, 5]).unwrap();
        let t = targets(&config, &seg, true);
        assert_eq!(
            t,
            vec![Target {
                rule: 1,
                database: "d".into(),
                user: "u".into(),
                missing: 3
            }]
        );
        assert_eq!(targets(&config, &seg, false)[0].missing, 1);
        assert!(seg.limits()[1].try_reserve());
        assert_eq!(targets(&config, &seg, true)[0].missing, 2);
        assert!(targets(&config, &seg, false).is_empty());
        assert!(has_empty_slot(&seg));
    }
}

//! Configuration keys by name, for `pgcorral-cli conf get|set|ls` and for
//! reload: every key's current value as text, which keys may change while
//! pgcorral runs, and the plan a reload follows.
//!
//! Key names: the `[pgcorral]` keys by their own name (`port`, or
//! `pgcorral.port`), `server.NAME.host|port|primary`, and
//! `limit.N.database|user|max_size|initial_size|min_size` where N counts the
//! `[[limit]]` rules from 0 in file order.
//!
//! A reloadable key takes effect at once in the supervisor (log level, pool
//! upkeep, the limits' `max_size` in the shared segment) and in every worker
//! forked afterwards; clients already connected keep the values they
//! started with. Any other key needs a restart.

use super::{format_duration, Config, ConfigError, MainConfig};

/// The `[pgcorral]` keys, and whether each is reloadable.
pub const MAIN_KEYS: &[(&str, bool)] = &[
    ("host", false),
    ("port", false),
    ("unix_socket_dir", false),
    ("pipeline", false),
    ("max_connections", false),
    ("max_clients", true),
    ("worker_max_clients", true),
    ("workers_min_spare", true),
    ("workers_max_spare", true),
    ("blocking_timeout", true),
    ("idle_timeout", true),
    ("max_connection_age", true),
    ("validation", true),
    ("background_interval", true),
    ("disconnect_client", true),
    ("authentication_timeout", true),
    ("log_type", false),
    ("log_level", true),
    ("log_path", false),
    ("max_prepared_statements", true),
    ("pin_session_state", true),
    ("log_rotation_size", true),
    ("log_rotation_age", true),
    ("log_connections", true),
    ("log_disconnections", true),
    ("management", false),
    ("metrics", false),
    ("hba_file", false),
    ("users_file", false),
    ("frontend_users_file", false),
    ("master_key_file", false),
    ("admins_file", false),
];

/// Keys of each `[server.NAME]`; none is reloadable (`switch-to` changes
/// the primary at run time).
pub const SERVER_KEYS: &[&str] = &["host", "port", "primary"];
/// Keys of each `[[limit]]` rule, and whether each is reloadable.
pub const LIMIT_KEYS: &[(&str, bool)] = &[
    ("database", false),
    ("user", false),
    ("max_size", true),
    ("initial_size", true),
    ("min_size", true),
];

/// One key with its value as text (durations in their shortest exact
/// form, absent paths as the empty string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub reloadable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("unknown configuration key `{0}` (conf ls lists them)")]
    UnknownKey(String),
    #[error("{0} cannot change while pgcorral runs; edit the file and restart")]
    NeedsRestart(String),
    #[error("{key}: {message}")]
    Value { key: String, message: String },
    #[error("{0}")]
    Invalid(#[source] ConfigError),
}

/// A key whose value differs between the running configuration and the
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub running: String,
    pub file: String,
}

/// What a reload does: the configuration to run with from now on, the
/// changes it takes, and the changes that wait for a restart.
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    pub config: Config,
    pub applied: Vec<Change>,
    pub needs_restart: Vec<Change>,
}

fn duration(d: std::time::Duration) -> String {
    format_duration(d)
}

fn path(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn main_value(m: &MainConfig, key: &str) -> Option<String> {
    Some(match key {
        "host" => m.host.clone(),
        "port" => m.port.to_string(),
        "unix_socket_dir" => m.unix_socket_dir.display().to_string(),
        "pipeline" => m.pipeline.to_string(),
        "max_connections" => m.max_connections.to_string(),
        "max_clients" => m.max_clients.to_string(),
        "worker_max_clients" => m.worker_max_clients.to_string(),
        "workers_min_spare" => m.workers_min_spare.to_string(),
        "workers_max_spare" => m.workers_max_spare.to_string(),
        "blocking_timeout" => duration(m.blocking_timeout),
        "idle_timeout" => duration(m.idle_timeout),
        "max_connection_age" => duration(m.max_connection_age),
        "validation" => m.validation.to_string(),
        "background_interval" => duration(m.background_interval),
        "disconnect_client" => duration(m.disconnect_client),
        "authentication_timeout" => duration(m.authentication_timeout),
        "log_type" => m.log_type.to_string(),
        "log_level" => m.log_level.to_string(),
        "log_path" => path(&m.log_path),
        "max_prepared_statements" => m.max_prepared_statements.to_string(),
        "pin_session_state" => m.pin_session_state.to_string(),
        "log_rotation_size" => m.log_rotation_size.to_string(),
        "log_rotation_age" => format!("{}s", m.log_rotation_age.as_secs()),
        "log_connections" => m.log_connections.to_string(),
        "log_disconnections" => m.log_disconnections.to_string(),
        "management" => m.management.to_string(),
        "metrics" => m.metrics.to_string(),
        "hba_file" => path(&m.hba_file),
        "users_file" => path(&m.users_file),
        "frontend_users_file" => path(&m.frontend_users_file),
        "master_key_file" => path(&m.master_key_file),
        "admins_file" => path(&m.admins_file),
        _ => return None,
    })
}

/// Copies one reloadable key from `src`; false for any other key.
fn copy_reloadable(dst: &mut MainConfig, src: &MainConfig, key: &str) -> bool {
    match key {
        "blocking_timeout" => dst.blocking_timeout = src.blocking_timeout,
        "idle_timeout" => dst.idle_timeout = src.idle_timeout,
        "max_clients" => dst.max_clients = src.max_clients,
        "worker_max_clients" => dst.worker_max_clients = src.worker_max_clients,
        "workers_min_spare" => dst.workers_min_spare = src.workers_min_spare,
        "workers_max_spare" => dst.workers_max_spare = src.workers_max_spare,
        "max_connection_age" => dst.max_connection_age = src.max_connection_age,
        "validation" => dst.validation = src.validation,
        "background_interval" => dst.background_interval = src.background_interval,
        "disconnect_client" => dst.disconnect_client = src.disconnect_client,
        "authentication_timeout" => dst.authentication_timeout = src.authentication_timeout,
        "log_level" => dst.log_level = src.log_level,
        "max_prepared_statements" => dst.max_prepared_statements = src.max_prepared_statements,
        "pin_session_state" => dst.pin_session_state = src.pin_session_state,
        "log_rotation_size" => dst.log_rotation_size = src.log_rotation_size,
        "log_rotation_age" => dst.log_rotation_age = src.log_rotation_age,
        "log_connections" => dst.log_connections = src.log_connections,
        "log_disconnections" => dst.log_disconnections = src.log_disconnections,
        _ => return false,
    }
    true
}

fn main_reloadable(key: &str) -> Option<bool> {
    MAIN_KEYS.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// `pgcorral.port` → `port`; other names unchanged.
fn normalize(key: &str) -> &str {
    let key = key.trim();
    key.strip_prefix("pgcorral.").unwrap_or(key)
}

/// A value given on the command line as TOML: bare numbers and words as
/// they are (`10`, `true`), anything else as a string (`30s`, `debug`).
fn parse_main(key: &str, value: &str) -> Result<MainConfig, String> {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    let quoted = toml::Value::String(value.to_string()).to_string();
    let mut last = String::new();
    let attempts = if bare {
        vec![format!("{key} = {value}"), format!("{key} = {quoted}")]
    } else {
        vec![format!("{key} = {quoted}")]
    };
    for text in attempts {
        match toml::from_str::<MainConfig>(&text) {
            Ok(m) => return Ok(m),
            Err(e) => last = e.message().lines().next().unwrap_or("").to_string(),
        }
    }
    Err(last)
}

fn limit_key(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("limit.")?;
    let (n, field) = rest.split_once('.')?;
    Some((n.parse().ok()?, field))
}

impl Config {
    /// The index in `servers` of `primary_server()`: what a slot records
    /// as its server.
    pub fn primary_index(&self) -> u32 {
        self.servers
            .iter()
            .position(|s| s.primary)
            .unwrap_or(0)
            .try_into()
            .unwrap_or(0)
    }

    /// Every key with its value, `[pgcorral]` first, then servers by name,
    /// then limit rules in file order.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        for (key, reloadable) in MAIN_KEYS {
            out.push(Setting {
                key: key.to_string(),
                value: main_value(&self.main, key).unwrap_or_default(),
                reloadable: *reloadable,
            });
        }
        for s in &self.servers {
            for (key, value) in [
                ("host", s.host.clone()),
                ("port", s.port.to_string()),
                ("primary", s.primary.to_string()),
            ] {
                out.push(Setting {
                    key: format!("server.{}.{key}", s.name),
                    value,
                    reloadable: false,
                });
            }
        }
        for (i, l) in self.limits.iter().enumerate() {
            for (key, reloadable) in LIMIT_KEYS {
                let value = match *key {
                    "database" => l.database.clone(),
                    "user" => l.user.clone(),
                    "max_size" => l.max_size.to_string(),
                    "initial_size" => l.initial_size.to_string(),
                    _ => l.min_size.to_string(),
                };
                out.push(Setting {
                    key: format!("limit.{i}.{key}"),
                    value,
                    reloadable: *reloadable,
                });
            }
        }
        out
    }

    /// One key (`conf get`).
    pub fn setting(&self, key: &str) -> Option<Setting> {
        let key = normalize(key);
        self.settings().into_iter().find(|s| s.key == key)
    }

    /// A copy with one reloadable key changed (`conf set`), validated like
    /// a file.
    pub fn with_setting(&self, key: &str, value: &str) -> Result<Config, SetError> {
        let key = normalize(key);
        let mut new = self.clone();
        if let Some(reloadable) = main_reloadable(key) {
            if !reloadable {
                return Err(SetError::NeedsRestart(key.to_string()));
            }
            let parsed = parse_main(key, value).map_err(|message| SetError::Value {
                key: key.to_string(),
                message,
            })?;
            copy_reloadable(&mut new.main, &parsed, key);
        } else if let Some((i, field)) = limit_key(key) {
            let known = LIMIT_KEYS.iter().find(|(k, _)| *k == field);
            let Some(rule) = new.limits.get_mut(i).filter(|_| known.is_some()) else {
                return Err(SetError::UnknownKey(key.to_string()));
            };
            let n: usize = value.trim().parse().map_err(|_| SetError::Value {
                key: key.to_string(),
                message: format!("`{value}` is not a non-negative integer"),
            })?;
            match field {
                "max_size" => rule.max_size = n,
                "initial_size" => rule.initial_size = n,
                "min_size" => rule.min_size = n,
                _ => return Err(SetError::NeedsRestart(key.to_string())),
            }
        } else if self.setting(key).is_some() {
            return Err(SetError::NeedsRestart(key.to_string()));
        } else {
            return Err(SetError::UnknownKey(key.to_string()));
        }
        new.validate("", "conf set").map_err(SetError::Invalid)?;
        Ok(new)
    }

    /// Compares the running configuration (`self`) with a freshly loaded
    /// `file`: reloadable changes are taken, the others are listed and left
    /// as they are. A path given on the command line (`-a`, `-u`) overrides
    /// the file's missing one, so an absent `hba_file` or `users_file` in
    /// the file is not a change.
    pub fn reload_plan(&self, file: &Config) -> ReloadPlan {
        let mut config = self.clone();
        let mut applied = Vec::new();
        let mut needs_restart = Vec::new();
        for (key, reloadable) in MAIN_KEYS {
            let running = main_value(&self.main, key).unwrap_or_default();
            let wanted = main_value(&file.main, key).unwrap_or_default();
            if running == wanted {
                continue;
            }
            if matches!(*key, "hba_file" | "users_file") && wanted.is_empty() {
                continue;
            }
            let change = Change {
                key: key.to_string(),
                running,
                file: wanted,
            };
            if *reloadable && copy_reloadable(&mut config.main, &file.main, key) {
                applied.push(change);
            } else {
                needs_restart.push(change);
            }
        }

        let describe = |c: &Config, name: &str| {
            c.servers
                .iter()
                .find(|s| s.name == name)
                .map(|s| format!("{}:{}", s.host, s.port))
                .unwrap_or_else(|| "absent".to_string())
        };
        let mut names: Vec<&str> = self
            .servers
            .iter()
            .chain(&file.servers)
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let (Some(a), Some(b)) = (
                self.servers.iter().find(|s| s.name == name),
                file.servers.iter().find(|s| s.name == name),
            ) else {
                needs_restart.push(Change {
                    key: format!("server.{name}"),
                    running: describe(self, name),
                    file: describe(file, name),
                });
                continue;
            };
            for (key, running, wanted) in [
                ("host", a.host.clone(), b.host.clone()),
                ("port", a.port.to_string(), b.port.to_string()),
                ("primary", a.primary.to_string(), b.primary.to_string()),
            ] {
                if running != wanted {
                    needs_restart.push(Change {
                        key: format!("server.{name}.{key}"),
                        running,
                        file: wanted,
                    });
                }
            }
        }

        let same_rules = self.limits.len() == file.limits.len()
            && self
                .limits
                .iter()
                .zip(&file.limits)
                .all(|(a, b)| a.database == b.database && a.user == b.user);
        if !same_rules {
            let shape = |c: &Config| {
                c.limits
                    .iter()
                    .map(|l| format!("{}/{}", l.database, l.user))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            needs_restart.push(Change {
                key: "limit".to_string(),
                running: format!("[{}]", shape(self)),
                file: format!("[{}]", shape(file)),
            });
        } else {
            for (i, (rule, new)) in config.limits.iter_mut().zip(&file.limits).enumerate() {
                for (key, value, wanted) in [
                    ("max_size", &mut rule.max_size, new.max_size),
                    ("initial_size", &mut rule.initial_size, new.initial_size),
                    ("min_size", &mut rule.min_size, new.min_size),
                ] {
                    if *value != wanted {
                        applied.push(Change {
                            key: format!("limit.{i}.{key}"),
                            running: value.to_string(),
                            file: wanted.to_string(),
                        });
                        *value = wanted;
                    }
                }
            }
        }
        ReloadPlan {
            config,
            applied,
            needs_restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[pgcorral]\nport = 2345\nlog_level = \"info\"\n\
        [server.a]\nport = 5432\n[server.b]\nport = 5433\nprimary = true\n\
        [[limit]]\ndatabase = \"d\"\nuser = \"u\"\nmax_size = 4\n";

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn every_main_key_has_a_value_and_a_class() {
        let c = config(BASE);
        for (key, _) in MAIN_KEYS {
            assert!(main_value(&c.main, key).is_some(), "{key}");
        }
        assert_eq!(c.setting("port").unwrap().value, "2345");
        assert_eq!(c.setting("pgcorral.port").unwrap().value, "2345");
        assert_eq!(c.setting("blocking_timeout").unwrap().value, "30s");
        assert_eq!(c.setting("server.b.primary").unwrap().value, "true");
        assert_eq!(c.setting("limit.0.max_size").unwrap().value, "4");
        assert!(c.setting("limit.1.max_size").is_none());
        assert!(c.setting("nope").is_none());
        assert_eq!(c.primary_index(), 1);
    }

    #[test]
    fn set_accepts_reloadable_keys_only() {
        let c = config(BASE);
        let n = c.with_setting("log_level", "debug").unwrap();
        assert_eq!(n.setting("log_level").unwrap().value, "debug");
        let n = c.with_setting("idle_timeout", "90s").unwrap();
        assert_eq!(n.setting("idle_timeout").unwrap().value, "90s");
        let n = c.with_setting("blocking_timeout", "10").unwrap();
        assert_eq!(n.setting("blocking_timeout").unwrap().value, "10s");
        let n = c.with_setting("log_connections", "true").unwrap();
        assert!(n.main.log_connections);
        let n = c.with_setting("limit.0.max_size", "7").unwrap();
        assert_eq!(n.limits[0].max_size, 7);
        assert!(matches!(
            c.with_setting("port", "1"),
            Err(SetError::NeedsRestart(_))
        ));
        assert!(matches!(
            c.with_setting("server.a.port", "1"),
            Err(SetError::NeedsRestart(_))
        ));
        assert!(matches!(
            c.with_setting("bogus", "1"),
            Err(SetError::UnknownKey(_))
        ));
        assert!(matches!(
            c.with_setting("log_level", "loud"),
            Err(SetError::Value { .. })
        ));
        assert!(matches!(
            c.with_setting("background_interval", "0"),
            Err(SetError::Invalid(_))
        ));
        assert!(matches!(
            c.with_setting("limit.0.min_size", "9"),
            Err(SetError::Invalid(_))
        ));
        // A value cannot smuggle in a second key.
        assert!(c.with_setting("idle_timeout", "1\nport = 9").is_err());
    }

    #[test]
    fn reload_takes_reloadable_changes_and_lists_the_rest() {
        let running = config(BASE);
        let file = config(
            &BASE
                .replace("port = 2345", "port = 2346")
                .replace("\"info\"", "\"debug\"")
                .replace("max_size = 4", "max_size = 6")
                .replace("port = 5433", "port = 5434"),
        );
        let plan = running.reload_plan(&file);
        let keys = |v: &[Change]| v.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&plan.applied), ["log_level", "limit.0.max_size"]);
        assert_eq!(keys(&plan.needs_restart), ["port", "server.b.port"]);
        assert_eq!(plan.needs_restart[0].running, "2345");
        assert_eq!(plan.config.main.port, 2345, "kept");
        assert_eq!(plan.config.main.log_level.as_str(), "debug");
        assert_eq!(plan.config.limits[0].max_size, 6);
        assert_eq!(plan.config.servers[1].port, 5433, "kept");

        let file = config(&BASE.replace("database = \"d\"", "database = \"e\""));
        let plan = running.reload_plan(&file);
        assert_eq!(keys(&plan.needs_restart), ["limit"]);
        assert_eq!(plan.config.limits[0].database, "d");
        assert!(running.reload_plan(&running).applied.is_empty());
    }
}

//! The configuration file (`pgcorral.toml`): types, loading and validation.
//!
//! Key names follow pgagroal's where the concept is the same, so its users can
//! move over. Loading is strict: unknown keys, bad values and broken rules are
//! errors that name the file, the line and the key, because a pooler that starts
//! with a setting silently ignored is worse than one that refuses to start.

pub mod duration;
mod error;
pub mod keys;
pub mod size;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

pub use duration::{format_duration, parse_duration};
pub use error::ConfigError;
use error::{find_key_line, Section};

/// Name used in error messages for text that did not come from a file.
const NO_FILE: &str = "<config>";

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[pgcorral]`
    pub main: MainConfig,
    /// `[server.NAME]` tables, sorted by name.
    pub servers: Vec<ServerConfig>,
    /// `[[limit]]` rules in file order.
    pub limits: Vec<LimitConfig>,
    /// The file it was loaded from; `None` for [`Config::from_toml`].
    pub path: Option<PathBuf>,
}

/// The `[pgcorral]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MainConfig {
    /// Listen address; `"*"` means all interfaces.
    pub host: String,
    /// 0 lets the kernel choose a free port (see `--port-file`).
    pub port: u16,
    /// Also listens on `.s.PGSQL.<port>` here; the management socket lives here too.
    pub unix_socket_dir: PathBuf,
    pub pipeline: PipelineKind,
    /// Server-connection slots in the shared table (1..=10000).
    pub max_connections: usize,
    /// Clients served at once (pgbouncer's `max_client_conn`; pgagroal's
    /// `max_connections` is the pool size here). Beyond it a new client is
    /// answered `53300` and closed.
    pub max_clients: usize,
    /// Clients a worker serves one after the other before it exits and is
    /// replaced; 1 forks a worker per client and keeps no spares.
    pub worker_max_clients: usize,
    /// Idle workers kept forked ahead of clients: at least this many
    /// (room under `max_clients` permitting) ...
    pub workers_min_spare: usize,
    /// ... and at most this many; more idle ones exit.
    pub workers_max_spare: usize,
    /// How long a client waits for a slot; zero fails at once.
    #[serde(deserialize_with = "duration::deserialize")]
    pub blocking_timeout: Duration,
    /// Close pooled connections idle this long; zero means never.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// Close pooled connections older than this; zero means never.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_connection_age: Duration,
    pub validation: Validation,
    /// How often `validation = "background"` tests idle pooled connections.
    #[serde(deserialize_with = "duration::deserialize")]
    pub background_interval: Duration,
    /// Disconnect clients idle this long (pgagroal's key); zero means never.
    #[serde(deserialize_with = "duration::deserialize")]
    pub disconnect_client: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub authentication_timeout: Duration,
    pub log_type: LogType,
    pub log_level: LogLevel,
    /// Required when `log_type = "file"`.
    pub log_path: Option<PathBuf>,
    /// Named protocol-level prepared statements a client may hold in
    /// transaction pooling (0 turns statement tracking off).
    pub max_prepared_statements: usize,
    /// Transaction pipeline: a client whose statements leave session state
    /// that cannot follow it (temporary tables, LISTEN, ...) keeps its
    /// connection until it leaves. Settings follow their client either way.
    pub pin_session_state: bool,
    /// Rotate the log file once it is this large (bytes; 0 = never).
    #[serde(deserialize_with = "size::deserialize")]
    pub log_rotation_size: u64,
    /// Rotate the log file once it is this old (0 = never).
    #[serde(deserialize_with = "duration::deserialize")]
    pub log_rotation_age: Duration,
    /// A line per client that connects (address, user, database, slot).
    pub log_connections: bool,
    /// A line per client that leaves (how, and after how long).
    pub log_disconnections: bool,
    /// Remote management TCP port; zero is off.
    pub management: u16,
    /// Prometheus HTTP port; zero is off.
    pub metrics: u16,
    /// Host-based access rules (pg_hba.conf syntax); `-a` overrides it.
    /// Without one, every client is let through to PostgreSQL's own checks.
    pub hba_file: Option<PathBuf>,
    /// User vault: passwords pgcorral uses towards PostgreSQL (and, unless a
    /// frontend file says otherwise, expects from clients); `-u` overrides.
    pub users_file: Option<PathBuf>,
    /// Passwords clients must give pgcorral, when they differ from the ones
    /// pgcorral gives PostgreSQL.
    pub frontend_users_file: Option<PathBuf>,
    /// Key that decrypts the vault files; default `~/.pgcorral/master.key`.
    pub master_key_file: Option<PathBuf>,
    /// Administrators allowed on the remote management port (vault format).
    pub admins_file: Option<PathBuf>,
}

impl Default for MainConfig {
    fn default() -> Self {
        MainConfig {
            host: "127.0.0.1".to_string(),
            port: 2345,
            unix_socket_dir: PathBuf::from("/tmp"),
            pipeline: PipelineKind::Auto,
            max_connections: 100,
            max_clients: 1000,
            worker_max_clients: 10_000,
            workers_min_spare: 5,
            workers_max_spare: 10,
            blocking_timeout: Duration::from_secs(30),
            idle_timeout: Duration::ZERO,
            max_connection_age: Duration::ZERO,
            validation: Validation::Off,
            background_interval: Duration::from_secs(300),
            disconnect_client: Duration::ZERO,
            authentication_timeout: DEFAULT_AUTHENTICATION_TIMEOUT,
            log_type: LogType::Console,
            log_level: LogLevel::Info,
            log_path: None,
            max_prepared_statements: 1000,
            pin_session_state: true,
            log_rotation_size: 0,
            log_rotation_age: Duration::ZERO,
            log_connections: false,
            log_disconnections: false,
            management: 0,
            metrics: 0,
            hba_file: None,
            users_file: None,
            frontend_users_file: None,
            master_key_file: None,
            admins_file: None,
        }
    }
}

const DEFAULT_AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(5);

/// One `[server.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The table name; filled in from the key, not a field in the file.
    #[serde(skip)]
    pub name: String,
    /// Host name or address; a value starting with `/` is a Unix socket directory.
    pub host: String,
    pub port: u16,
    pub primary: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: String::new(),
            host: "127.0.0.1".to_string(),
            port: 5432,
            primary: false,
        }
    }
}

impl ServerConfig {
    /// Whether `host` names a Unix socket directory rather than a TCP host.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// One `[[limit]]` rule: pool limits for a database/user pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Database name, or `"all"` for any.
    pub database: String,
    /// User name, or `"all"` for any.
    pub user: String,
    pub max_size: usize,
    /// Connections to open at start (prefill).
    #[serde(default)]
    pub initial_size: usize,
    /// Connections to keep open.
    #[serde(default)]
    pub min_size: usize,
}

/// Declares a keyword enum read from a TOML string, case-insensitively, with
/// optional aliases that parse to the same variant.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident = $text:literal $(| $alias:literal)*),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The canonical spellings, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The canonical spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text.trim().to_ascii_lowercase().as_str() {
                    $($text $(| $alias)* => Ok(Self::$variant),)+
                    _ => Err(unknown_keyword(text, Self::NAMES)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(de::Error::custom)
            }
        }
    };
}

fn unknown_keyword(text: &str, names: &[&str]) -> String {
    let expected: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!(
        "unknown value `{text}`, expected one of {}",
        expected.join(", ")
    )
}

keyword_enum! {
    /// `pipeline`: how a client is bound to server connections.
    PipelineKind {
        Auto = "auto",
        Performance = "performance",
        Session = "session",
        Transaction = "transaction",
    }
}

keyword_enum! {
    /// `validation`: when pooled connections are checked.
    Validation {
        Off = "off",
        Foreground = "foreground",
        Background = "background",
    }
}

keyword_enum! {
    /// `log_type`: where log lines go.
    LogType {
        Console = "console",
        File = "file",
        Syslog = "syslog",
    }
}

keyword_enum! {
    /// `log_level`. pgagroal's `debug1`..`debug5` and `fatal` are accepted so
    /// that its configurations carry over.
    LogLevel {
        Error = "error" | "fatal",
        Warn = "warn" | "warning",
        Info = "info",
        Debug = "debug" | "debug1" | "debug2" | "debug3" | "debug4" | "debug5",
        Trace = "trace",
    }
}

impl LogLevel {
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The file as serde sees it, before servers get their names and sorting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    pgcorral: MainConfig,
    #[serde(default)]
    server: BTreeMap<String, ServerConfig>,
    #[serde(default)]
    limit: Vec<LimitConfig>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: name.clone(),
            source,
        })?;
        let mut config = Config::parse(&text, &name)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates configuration text; `path` stays `None`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, NO_FILE)
    }

    fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|err| ConfigError::from_toml(name, text, &err))?;
        let servers = file
            .server
            .into_iter()
            .map(|(name, server)| ServerConfig { name, ..server })
            .collect();
        let config = Config {
            main: file.pgcorral,
            servers,
            limits: file.limit,
            path: None,
        };
        config.validate(text, name)?;
        Ok(config)
    }

    /// The server with `primary = true`, else the first by name.
    ///
    /// A validated configuration always has a server; a hand-built one without
    /// any gets a default `127.0.0.1:5432` entry rather than a panic.
    pub fn primary_server(&self) -> &ServerConfig {
        static FALLBACK: OnceLock<ServerConfig> = OnceLock::new();
        self.servers
            .iter()
            .find(|s| s.primary)
            .or_else(|| self.servers.first())
            .unwrap_or_else(|| FALLBACK.get_or_init(ServerConfig::default))
    }

    /// The server at `index` in configuration order, as slots and the
    /// shared segment record it. Servers cannot be added or removed without
    /// a restart, so every process maps an index to the same server; an
    /// index out of range (never written by pgcorral) gives the primary.
    pub fn server_at(&self, index: u32) -> &ServerConfig {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.servers.get(i))
            .unwrap_or_else(|| self.primary_server())
    }

    /// The index of the server named `name`, in configuration order.
    pub fn server_index(&self, name: &str) -> Option<u32> {
        let i = self.servers.iter().position(|s| s.name == name)?;
        u32::try_from(i).ok()
    }

    /// Best-match limit rule for (database, user): exact match first; then user
    /// matches with database "all"; then database matches with user "all"; then
    /// all/all. Returns the rule's index in `limits` and the rule.
    pub fn limit_for(&self, database: &str, user: &str) -> Option<(usize, &LimitConfig)> {
        let wanted = [(database, user), (ALL, user), (database, ALL), (ALL, ALL)];
        wanted.iter().find_map(|&(d, u)| {
            self.limits
                .iter()
                .enumerate()
                .find(|(_, rule)| rule.database == d && rule.user == u)
        })
    }

    /// Keys set to a non-default value whose behaviour is not built yet, so the
    /// daemon can warn at start. Each entry is a key name as written in the file.
    pub fn unimplemented_settings(&self) -> Vec<String> {
        let main = &self.main;
        let mut keys = Vec::new();
        if main.metrics != 0 {
            keys.push("metrics");
        }
        keys.into_iter().map(String::from).collect()
    }

    fn validate(&self, text: &str, name: &str) -> Result<(), ConfigError> {
        let invalid =
            |section: Section, key: &str, shown: String, message: String| ConfigError::Invalid {
                path: name.to_string(),
                key: shown,
                line: find_key_line(text, section, key),
                message,
            };
        let main_err = |key: &str, message: &str| {
            invalid(Section::Main, key, key.to_string(), message.to_string())
        };

        let main = &self.main;
        if main.host.trim().is_empty() {
            return Err(main_err(
                "host",
                "must not be empty (use \"*\" for all interfaces)",
            ));
        }
        if main.unix_socket_dir.as_os_str().is_empty() {
            return Err(main_err("unix_socket_dir", "must not be empty"));
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&main.max_connections) {
            return Err(main_err(
                "max_connections",
                &format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if main.max_clients == 0 {
            return Err(main_err("max_clients", "must be greater than 0"));
        }
        if main.worker_max_clients == 0 {
            return Err(main_err("worker_max_clients", "must be greater than 0"));
        }
        if main.workers_max_spare < main.workers_min_spare {
            return Err(main_err(
                "workers_max_spare",
                "must not be less than workers_min_spare",
            ));
        }
        if main.background_interval.is_zero() {
            return Err(main_err("background_interval", "must be greater than 0"));
        }
        if main.log_type == LogType::File && main.log_path.is_none() {
            // Point at log_type: that is the line that made log_path necessary.
            return Err(invalid(
                Section::Main,
                "log_type",
                "log_path".to_string(),
                "required when log_type = \"file\"".to_string(),
            ));
        }
        if main
            .log_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(main_err("log_path", "must not be empty"));
        }

        if self.servers.is_empty() {
            return Err(ConfigError::Invalid {
                path: name.to_string(),
                key: "server".to_string(),
                line: None,
                message: "at least one [server.NAME] table is required".to_string(),
            });
        }
        let mut primary: Option<&str> = None;
        for server in &self.servers {
            let section = Section::Server(&server.name);
            let shown = |key: &str| format!("server.{}.{key}", server.name);
            if server.name.trim().is_empty() {
                return Err(invalid(
                    section,
                    "",
                    "server".to_string(),
                    "a server name must not be empty".to_string(),
                ));
            }
            if server.host.trim().is_empty() {
                return Err(invalid(
                    section,
                    "host",
                    shown("host"),
                    "must not be empty".to_string(),
                ));
            }
            if server.port == 0 {
                return Err(invalid(
                    section,
                    "port",
                    shown("port"),
                    "must be between 1 and 65535".to_string(),
                ));
            }
            if server.primary {
                if let Some(first) = primary {
                    return Err(invalid(
                        section,
                        "primary",
                        shown("primary"),
                        format!("only one server may be primary; server.{first} already is"),
                    ));
                }
                primary = Some(&server.name);
            }
        }

        for (index, limit) in self.limits.iter().enumerate() {
            let section = Section::Limit(index);
            let rule = format!("(database \"{}\", user \"{}\")", limit.database, limit.user);
            let err = |key: &str, message: String| {
                invalid(
                    section,
                    key,
                    format!("limit.{key}"),
                    format!("{message} {rule}"),
                )
            };
            if limit.database.trim().is_empty() {
                return Err(err(
                    "database",
                    "must not be empty (use \"all\" for any)".to_string(),
                ));
            }
            if limit.user.trim().is_empty() {
                return Err(err(
                    "user",
                    "must not be empty (use \"all\" for any)".to_string(),
                ));
            }
            if limit.max_size < 1 {
                return Err(err("max_size", "must be at least 1".to_string()));
            }
            if limit.initial_size > limit.max_size {
                return Err(err(
                    "initial_size",
                    format!("must not exceed max_size ({})", limit.max_size),
                ));
            }
            if limit.min_size > limit.max_size {
                return Err(err(
                    "min_size",
                    format!("must not exceed max_size ({})", limit.max_size),
                ));
            }
            // A second rule for the same pair could never match; that is a
            // mistake the user wants to hear about.
            if let Some(first) = self.limits[..index]
                .iter()
                .position(|l| l.database == limit.database && l.user == limit.user)
            {
                let first_line = find_key_line(text, Section::Limit(first), "")
                    .map_or(String::new(), |line| format!(" at line {line}"));
                return Err(invalid(
                    section,
                    "",
                    "limit".to_string(),
                    format!("duplicate rule {rule}; the first one{first_line} already covers it"),
                ));
            }
        }
        Ok(())
    }
}

const ALL: &str = "all";
const MAX_CONNECTIONS_LIMIT: usize = 10_000;

#[cfg(test)]
mod tests;

//! What administration commands answer. Each command's result is one value
//! of a type here; the supervisor prints it as text (`Display`) or as JSON
//! (`Serialize`) from that same value, so the two forms cannot disagree.
//! Field order is the order of the keys in JSON, documented in
//! `doc/CLI.md`: keys are only ever added at the end.

use std::fmt::{self, Write as _};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::command::{FlushMode, ShutdownMode};
use crate::disabled::DisabledSet;

/// A result in JSON: `{"command":NAME,"ok":true,"result":{...}}` or
/// `{"command":NAME,"ok":false,"error":"..."}`. `pgcorral-cli` reads it
/// back with `R` = [`serde_json::Value`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<R = serde_json::Value> {
    pub command: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Envelope<()> {
    pub fn failure(command: &str, error: &str) -> Self {
        Envelope {
            command: command.to_string(),
            ok: false,
            result: None,
            error: Some(error.to_string()),
        }
    }
}

impl<R: Serialize> Envelope<R> {
    pub fn success(command: &str, result: R) -> Self {
        Envelope {
            command: command.to_string(),
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// Compact JSON, one line.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// A command's result, printable in either form.
pub trait Reply: fmt::Display {
    /// The whole JSON envelope for a successful `command`.
    fn envelope(&self, command: &str) -> Result<String, serde_json::Error>;
}

impl<T: Serialize + fmt::Display> Reply for T {
    fn envelope(&self, command: &str) -> Result<String, serde_json::Error> {
        Envelope::success(command, self).to_json()
    }
}

/// `hours:mm:ss`.
pub fn hms(seconds: u64) -> String {
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// `database "NAME"`, or `all databases`.
pub fn database_text(db: &Option<String>) -> String {
    match db {
        Some(d) => format!("database \"{d}\""),
        None => "all databases".to_string(),
    }
}

/// An empty value (an unset path) shown as such.
fn shown(v: &str) -> &str {
    if v.is_empty() {
        "(unset)"
    } else {
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ping {
    pub pid: u32,
    pub version: String,
}

impl fmt::Display for Ping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pgcorral is running (pid {})", self.pid)
    }
}

/// The disabled databases, as in `status` and after `enable`/`disable`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Disabled {
    /// Every database is disabled, except `except`.
    pub all: bool,
    /// Disabled databases (when `all` is false).
    pub databases: Vec<String>,
    /// Enabled databases (when `all` is true).
    pub except: Vec<String>,
}

impl From<&DisabledSet> for Disabled {
    fn from(set: &DisabledSet) -> Self {
        let names: Vec<String> = set.names.iter().cloned().collect();
        if set.all {
            Disabled {
                all: true,
                databases: Vec::new(),
                except: names,
            }
        } else {
            Disabled {
                all: false,
                databases: names,
                except: Vec::new(),
            }
        }
    }
}

impl fmt::Display for Disabled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.all, self.databases.is_empty(), self.except.is_empty()) {
            (false, true, _) => f.write_str("none"),
            (false, false, _) => f.write_str(&self.databases.join(", ")),
            (true, _, true) => f.write_str("all databases"),
            (true, _, false) => write!(f, "all databases except {}", self.except.join(", ")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub primary: bool,
    /// `up` or `failed`.
    pub state: &'static str,
}

impl ServerStatus {
    pub fn failed(&self) -> bool {
        self.state == "failed"
    }
}

/// Slots by state: `total` (those not NOTINIT), then every state by name
/// in the order of the slot state machine.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    pub total: usize,
    pub by_state: Vec<(&'static str, usize)>,
}

impl Connections {
    pub fn count(&self, state: &str) -> usize {
        self.by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }
}

// Written by hand rather than derived: the keys are the slot states' own
// names (`SlotState::name`), in the state machine's order, so there is no
// second list of them to keep in step.
impl Serialize for Connections {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1 + self.by_state.len()))?;
        map.serialize_entry("total", &self.total)?;
        for (state, n) in &self.by_state {
            map.serialize_entry(state, n)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitStatus {
    pub database: String,
    pub user: String,
    pub active: u32,
    pub max_size: u32,
    pub initial_size: usize,
    pub min_size: usize,
}

/// One slot of `status details`; everything but `slot`, `state` and
/// `close_on_release` is `None` for a NOTINIT slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: usize,
    pub state: &'static str,
    pub database: Option<String>,
    pub user: Option<String>,
    pub server: Option<String>,
    pub owner_pid: Option<i32>,
    pub backend_pid: Option<i32>,
    pub age_seconds: Option<u64>,
    pub idle_seconds: Option<u64>,
    pub close_on_release: bool,
}

/// `status` and `status details`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `running` or `graceful_shutdown`.
    pub state: &'static str,
    pub pid: u32,
    pub version: String,
    pub uptime_seconds: u64,
    pub pipeline: String,
    /// The primary server's name.
    pub server: String,
    pub servers: Vec<ServerStatus>,
    pub clients: usize,
    /// Workers waiting for a client (`workers_min_spare`).
    pub idle_workers: usize,
    /// Clients whose session state keeps their connection (transaction
    /// pipeline).
    pub pinned: u32,
    /// Clients waiting in line for a server connection.
    pub waiting: usize,
    pub max_connections: usize,
    pub connections: Connections,
    pub limits: Vec<LimitStatus>,
    pub disabled: Disabled,
    /// Only with `details`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<SlotStatus>>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Status:          {}", self.state)?;
        writeln!(f, "Version:         {} (pid {})", self.version, self.pid)?;
        writeln!(f, "Uptime:          {}", hms(self.uptime_seconds))?;
        writeln!(f, "Pipeline:        {}", self.pipeline)?;
        match self.servers.iter().find(|s| s.primary) {
            Some(p) => writeln!(f, "Primary server:  {} ({}:{})", p.name, p.host, p.port)?,
            None => writeln!(f, "Primary server:  {}", self.server)?,
        }
        let failed: Vec<&str> = self
            .servers
            .iter()
            .filter(|s| s.failed())
            .map(|s| s.name.as_str())
            .collect();
        if !failed.is_empty() {
            writeln!(f, "Failed servers:  {}", failed.join(", "))?;
        }
        writeln!(f, "Clients:         {}", self.clients)?;
        writeln!(f, "Idle workers:    {}", self.idle_workers)?;
        if self.pinned > 0 {
            writeln!(f, "Pinned clients:  {}", self.pinned)?;
        }
        if self.waiting > 0 {
            writeln!(f, "Waiting clients: {}", self.waiting)?;
        }
        let by_state: Vec<String> = self
            .connections
            .by_state
            .iter()
            .filter(|(s, n)| *n > 0 && *s != "NOTINIT")
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        write!(
            f,
            "Connections:     {} of {}",
            self.connections.total, self.max_connections
        )?;
        if !by_state.is_empty() {
            write!(f, " ({})", by_state.join(", "))?;
        }
        writeln!(f)?;
        writeln!(f, "Disabled:        {}", self.disabled)?;
        if !self.limits.is_empty() {
            writeln!(f, "Limits:")?;
            for l in &self.limits {
                writeln!(
                    f,
                    "  {}/{}: {} of {} (min {}, initial {})",
                    l.database, l.user, l.active, l.max_size, l.min_size, l.initial_size
                )?;
            }
        }
        if let Some(slots) = &self.slots {
            writeln!(
                f,
                "\n{:<5} {:<18} {:<16} {:<16} {:<10} {:>8} {:>8} {:>8} {:>8}",
                "Slot", "State", "Database", "User", "Server", "Owner", "Backend", "Age", "Idle"
            )?;
            for s in slots {
                let (Some(database), Some(user), Some(server)) = (&s.database, &s.user, &s.server)
                else {
                    writeln!(f, "{:<5} {}", s.slot, s.state)?;
                    continue;
                };
                let owner = s.owner_pid.map_or("-".to_string(), |p| p.to_string());
                writeln!(
                    f,
                    "{:<5} {:<18} {:<16} {:<16} {:<10} {:>8} {:>8} {:>7}s {:>7}s",
                    s.slot,
                    s.state,
                    database,
                    user,
                    server,
                    owner,
                    s.backend_pid.unwrap_or(0),
                    s.age_seconds.unwrap_or(0),
                    s.idle_seconds.unwrap_or(0)
                )?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Flush {
    pub mode: FlushMode,
    /// `None`: every database.
    pub database: Option<String>,
    /// Idle connections closed now.
    pub closed: usize,
    /// Connections in use, closed when given back.
    pub marked: usize,
    /// Workers sent SIGQUIT.
    pub clients_ended: usize,
}

impl Flush {
    /// A flush that found nothing to do.
    pub fn none() -> Self {
        Flush {
            mode: FlushMode::Gracefully,
            database: None,
            closed: 0,
            marked: 0,
            clients_ended: 0,
        }
    }

    /// The counts, without the mode.
    fn counts(&self) -> String {
        let mut text = format!("{} idle connection(s) closed", self.closed);
        if self.mode != FlushMode::Idle {
            let _ = write!(
                text,
                ", {} in use will be closed when given back",
                self.marked
            );
        }
        if self.mode == FlushMode::All {
            let _ = write!(text, ", {} client(s) ended", self.clients_ended);
        }
        text
    }
}

impl fmt::Display for Flush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flush {}: {}", self.mode.as_str(), self.counts())
    }
}

/// `enable` and `disable`.
#[derive(Debug, Clone, Serialize)]
pub struct Enabled {
    pub database: Option<String>,
    pub enabled: bool,
    /// The whole set after the command.
    pub disabled: Disabled,
}

impl fmt::Display for Enabled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.enabled { "enabled" } else { "disabled" };
        write!(f, "{} {verb}", database_text(&self.database))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Shutdown {
    pub mode: ShutdownMode,
    /// Connected clients when the command ran.
    pub clients: usize,
    /// `gracefully` only: a graceful shutdown was already in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already: Option<bool>,
}

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            ShutdownMode::Gracefully if self.already == Some(true) => {
                f.write_str("a graceful shutdown is already in progress")
            }
            ShutdownMode::Gracefully => write!(
                f,
                "graceful shutdown started: no new clients; pgcorral exits when the {} connected client(s) have left",
                self.clients
            ),
            ShutdownMode::Immediate => write!(
                f,
                "shutting down now; {} client(s) are disconnected",
                self.clients
            ),
            ShutdownMode::Cancel => f.write_str("graceful shutdown cancelled; accepting clients again"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SwitchTo {
    pub server: String,
    pub previous: String,
    pub closed: usize,
    pub marked: usize,
}

impl SwitchTo {
    /// The result of a switch that closed connections as `flushed` says.
    pub fn after(server: &str, previous: &str, flushed: &Flush) -> Self {
        SwitchTo {
            server: server.to_string(),
            previous: previous.to_string(),
            closed: flushed.closed,
            marked: flushed.marked,
        }
    }
}

impl fmt::Display for SwitchTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.server == self.previous {
            return write!(f, "\"{}\" is already the primary server", self.server);
        }
        let flushed = Flush {
            mode: FlushMode::Gracefully,
            database: None,
            closed: self.closed,
            marked: self.marked,
            clients_ended: 0,
        };
        write!(
            f,
            "primary server is now \"{}\" (was \"{}\"); {}",
            self.server,
            self.previous,
            flushed.counts()
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClearServer {
    pub server: String,
    pub was_failed: bool,
}

impl fmt::Display for ClearServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server \"{}\" cleared", self.server)
    }
}

/// A key changed by a reload.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub key: String,
    pub old: String,
    pub file: String,
}

/// A key a reload found changed but cannot change while pgcorral runs.
#[derive(Debug, Clone, Serialize)]
pub struct NeedsRestart {
    pub key: String,
    pub running: String,
    pub file: String,
}

/// `conf reload`.
#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    pub path: String,
    pub applied: Vec<Applied>,
    pub needs_restart: Vec<NeedsRestart>,
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "configuration reloaded from {}: {} change(s) applied, {} need a restart",
            self.path,
            self.applied.len(),
            self.needs_restart.len()
        )?;
        for c in &self.applied {
            write!(
                f,
                "\n  applied: {} = {} (was {})",
                c.key,
                shown(&c.file),
                shown(&c.old)
            )?;
        }
        for c in &self.needs_restart {
            write!(
                f,
                "\n  needs a restart: {} (keeping {}, the file says {})",
                c.key,
                shown(&c.running),
                shown(&c.file)
            )?;
        }
        Ok(())
    }
}

/// `conf get`: one key as pgcorral uses it now.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub reloadable: bool,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// `conf set`: the key after the change, and its value before.
#[derive(Debug, Clone, Serialize)]
pub struct ConfSet {
    #[serde(flatten)]
    pub setting: Setting,
    pub old: String,
}

impl fmt::Display for ConfSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} (was {})",
            self.setting.key,
            self.setting.value,
            shown(&self.old)
        )
    }
}

/// `conf ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfLs {
    pub settings: Vec<Setting>,
}

impl fmt::Display for ConfLs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
        for s in &self.settings {
            writeln!(
                f,
                "{:<width$} = {:<24} {}",
                s.key,
                s.value,
                if s.reloadable {
                    "(reloadable)"
                } else {
                    "(restart)"
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn status(details: bool) -> Status {
        let states = [
            "NOTINIT",
            "INIT",
            "FREE",
            "IN_USE",
            "GRACEFULLY",
            "FLUSH",
            "IDLE_CHECK",
            "MAX_CONNECTION_AGE",
            "VALIDATION",
            "REMOVE",
        ];
        let counts = [2, 0, 1, 1, 0, 0, 0, 0, 0, 0];
        let slot = |i: usize, state: &'static str| SlotStatus {
            slot: i,
            state,
            database: (state != "NOTINIT").then(|| "app".to_string()),
            user: (state != "NOTINIT").then(|| "alice".to_string()),
            server: (state != "NOTINIT").then(|| "primary".to_string()),
            owner_pid: (state == "IN_USE").then_some(4242),
            backend_pid: (state != "NOTINIT").then_some(100 + i as i32),
            age_seconds: (state != "NOTINIT").then_some(3),
            idle_seconds: (state != "NOTINIT").then_some(1),
            close_on_release: false,
        };
        Status {
            state: "running",
            pid: 77,
            version: "0.1.0".to_string(),
            uptime_seconds: 3723,
            pipeline: "performance".to_string(),
            server: "primary".to_string(),
            servers: vec![
                ServerStatus {
                    name: "primary".to_string(),
                    host: "127.0.0.1".to_string(),
                    port: 5432,
                    primary: true,
                    state: "up",
                },
                ServerStatus {
                    name: "old".to_string(),
                    host: "10.0.0.2".to_string(),
                    port: 5433,
                    primary: false,
                    state: "failed",
                },
            ],
            clients: 1,
            idle_workers: 5,
            pinned: 0,
            waiting: 0,
            max_connections: 4,
            connections: Connections {
                total: 2,
                by_state: states.into_iter().zip(counts).collect(),
            },
            limits: vec![LimitStatus {
                database: "all".to_string(),
                user: "all".to_string(),
                active: 2,
                max_size: 4,
                initial_size: 0,
                min_size: 1,
            }],
            disabled: Disabled {
                all: false,
                databases: vec!["appdb".to_string()],
                except: Vec::new(),
            },
            slots: details.then(|| {
                vec![
                    slot(0, "IN_USE"),
                    slot(1, "FREE"),
                    slot(2, "NOTINIT"),
                    slot(3, "NOTINIT"),
                ]
            }),
        }
    }

    #[test]
    fn status_text_and_json_come_from_one_value() {
        let s = status(true);
        let text = s.to_string();
        let json: Value = serde_json::from_str(&s.envelope("status details").unwrap()).unwrap();
        assert_eq!(json["command"], "status details");
        assert_eq!(json["ok"], true);
        let r = &json["result"];
        let c = &r["connections"];
        assert!(text.contains(&format!(
            "Connections:     {} of {} (FREE {}, IN_USE {})",
            c["total"], r["max_connections"], c["FREE"], c["IN_USE"]
        )));
        assert_eq!(c["NOTINIT"], 2);
        assert!(text.contains(&format!("Clients:         {}", r["clients"])));
        assert!(text.contains(&format!("Idle workers:    {}", r["idle_workers"])));
        assert!(text.contains("Uptime:          1:02:03"));
        assert!(text.contains("Primary server:  primary (127.0.0.1:5432)"));
        assert!(text.contains("Failed servers:  old\n"));
        assert!(text.contains("Disabled:        appdb\n"));
        assert!(text.contains("  all/all: 2 of 4 (min 1, initial 0)\n"));
        let rows = r["slots"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            text.lines().skip_while(|l| !l.starts_with("Slot")).count() - 1
        );
        assert_eq!(rows[0]["owner_pid"], 4242);
        assert!(text
            .lines()
            .any(|l| l.starts_with("0     IN_USE") && l.contains(" 4242 ")));
        assert!(text
            .lines()
            .any(|l| l.starts_with("1     FREE") && l.contains(" - ")));
        assert!(text.lines().any(|l| l.trim_end() == "2     NOTINIT"));
        assert_eq!(rows[2]["database"], Value::Null);
    }

    #[test]
    fn json_keys_keep_their_documented_order() {
        let s = status(false);
        let j = s.envelope("status").unwrap();
        assert!(j.starts_with(r#"{"command":"status","ok":true,"result":{"state":"running","pid":77,"version":"0.1.0","uptime_seconds":3723,"pipeline":"performance","server":"primary","servers":[{"name":"primary","host":"127.0.0.1","port":5432,"primary":true,"state":"up"}"#), "{j}");
        assert!(j.contains(r#""connections":{"total":2,"NOTINIT":2,"INIT":0,"FREE":1,"IN_USE":1,"GRACEFULLY":0"#), "{j}");
        assert!(
            j.ends_with(r#""disabled":{"all":false,"databases":["appdb"],"except":[]}}}"#),
            "{j}"
        );
        assert!(!j.contains("slots"));
        let set = ConfSet {
            setting: Setting {
                key: "idle_timeout".to_string(),
                value: "10m".to_string(),
                reloadable: true,
            },
            old: String::new(),
        };
        assert_eq!(
            set.envelope("conf set").unwrap(),
            r#"{"command":"conf set","ok":true,"result":{"key":"idle_timeout","value":"10m","reloadable":true,"old":""}}"#
        );
        assert_eq!(set.to_string(), "idle_timeout = 10m (was (unset))");
        let failed = Envelope::failure("clear prometheus", "no \"metrics\"\n")
            .to_json()
            .unwrap();
        assert_eq!(
            failed,
            r#"{"command":"clear prometheus","ok":false,"error":"no \"metrics\"\n"}"#
        );
        let back: Envelope = serde_json::from_str(&failed).unwrap();
        assert_eq!(back.error.as_deref(), Some("no \"metrics\"\n"));
        assert!(!back.ok && back.result.is_none());
    }

    #[test]
    fn flush_and_switch_texts() {
        let f = Flush {
            mode: FlushMode::All,
            database: None,
            closed: 1,
            marked: 2,
            clients_ended: 2,
        };
        assert_eq!(
            f.to_string(),
            "flush all: 1 idle connection(s) closed, 2 in use will be closed when given back, 2 client(s) ended"
        );
        assert!(f.envelope("flush").unwrap().contains(
            r#""result":{"mode":"all","database":null,"closed":1,"marked":2,"clients_ended":2}"#
        ));
        let s = SwitchTo::after("replica", "primary", &f);
        assert_eq!(
            s.to_string(),
            "primary server is now \"replica\" (was \"primary\"); 1 idle connection(s) closed, 2 in use will be closed when given back"
        );
        assert_eq!(
            SwitchTo::after("a", "a", &f).to_string(),
            "\"a\" is already the primary server"
        );
    }

    #[test]
    fn disabled_text() {
        let mut set = DisabledSet::default();
        assert_eq!(Disabled::from(&set).to_string(), "none");
        set.disable(Some("a")).unwrap();
        set.disable(Some("b")).unwrap();
        assert_eq!(Disabled::from(&set).to_string(), "a, b");
        set.disable(None).unwrap();
        assert_eq!(Disabled::from(&set).to_string(), "all databases");
        set.enable(Some("c")).unwrap();
        let d = Disabled::from(&set);
        assert_eq!(d.to_string(), "all databases except c");
        assert_eq!(d.except, ["c"]);
        assert!(d.databases.is_empty());
    }

    #[test]
    fn hours_minutes_seconds() {
        assert_eq!(hms(0), "0:00:00");
        assert_eq!(hms(3723), "1:02:03");
    }
}

//! Administration commands (`pgcorral-cli`), run by the supervisor inside
//! its event loop. Nothing here talks to PostgreSQL or waits: a command
//! reads the shared segment, moves slots with one compare-and-swap each,
//! closes sockets the supervisor holds, signals workers, and answers.
//!
//! Every command produces a result in both forms; the request says which
//! one goes back. JSON results are wrapped in an envelope,
//! `{"command":NAME,"ok":true,"result":{...}}` or
//! `{"command":NAME,"ok":false,"error":"..."}`, documented in `doc/CLI.md`.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::time::Instant;

use mio::Interest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{listeners, Mode, Supervisor, TCP_FIRST, UNIX};
use crate::management::command::{
    encode_reply, AdminCommand, CommandRequest, Database, FlushMode, Format, ShutdownMode,
};
use crate::management::disabled::DisabledSet;
use crate::management::json::Value;
use crate::pool;
use crate::slot::{Slot, SlotState, NO_OWNER};

/// Every state, in the order `status` reports them.
const STATES: [SlotState; 10] = [
    SlotState::NotInit,
    SlotState::Init,
    SlotState::Free,
    SlotState::InUse,
    SlotState::Gracefully,
    SlotState::Flush,
    SlotState::IdleCheck,
    SlotState::MaxConnectionAge,
    SlotState::Validation,
    SlotState::Remove,
];

/// What the supervisor keeps for administration.
pub(super) struct Admin {
    started: Instant,
    /// Servers marked failed (the primary left by `switch-to`); `clear
    /// server` takes a name off.
    failed: BTreeSet<String>,
    /// The authoritative copy of the disabled databases; the shared
    /// segment's table is written from it.
    disabled: DisabledSet,
}

impl Admin {
    pub(super) fn new() -> Self {
        Admin {
            started: Instant::now(),
            failed: BTreeSet::new(),
            disabled: DisabledSet::default(),
        }
    }
}

/// A command's result, in both forms.
pub(super) struct Done {
    pub(super) json: Value,
    pub(super) text: String,
}

impl Done {
    pub(super) fn new(json: Value, text: impl Into<String>) -> Self {
        Done {
            json,
            text: text.into(),
        }
    }
}

fn database_json(db: &Database) -> Value {
    db.as_deref().into()
}

fn database_text(db: &Database) -> String {
    match db {
        Some(d) => format!("database \"{d}\""),
        None => "all databases".to_string(),
    }
}

/// The database part of a slot's identity, cut like the slot cuts it.
fn slot_database(slot: &Slot) -> String {
    String::from_utf8_lossy(slot.identity().0).into_owned()
}

fn matches_database(slot: &Slot, db: &Database) -> bool {
    match db {
        None => true,
        Some(d) => {
            // Slots keep at most NAMEDATALEN - 1 bytes of a name.
            let want = d.as_bytes();
            slot.identity().0 == &want[..want.len().min(crate::slot::NAME_CAPACITY - 1)]
        }
    }
}

fn hms(seconds: u64) -> String {
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

impl Supervisor {
    /// Runs one command and returns the encoded `Reply` messages.
    pub(super) fn run_command(&mut self, req: &CommandRequest, peer_pid: i32) -> Vec<u8> {
        let (name, result) = match AdminCommand::parse(&req.args) {
            Ok(cmd) => {
                let read_only = matches!(
                    cmd,
                    AdminCommand::Ping
                        | AdminCommand::Status { .. }
                        | AdminCommand::ConfGet { .. }
                        | AdminCommand::ConfLs
                );
                if read_only {
                    log::debug!("management: {cmd} (from pid {peer_pid})");
                } else {
                    log::info!("management: {cmd} (from pid {peer_pid})");
                }
                (cmd.name().to_string(), self.execute(&cmd))
            }
            Err(e) => (
                req.args.first().cloned().unwrap_or_default(),
                Err(e.to_string()),
            ),
        };
        if let Err(e) = &result {
            log::debug!("management: {name}: {e}");
        }
        let ok = result.is_ok();
        let text = match (req.format, result) {
            (Format::Json, Ok(done)) => Value::object()
                .with("command", name)
                .with("ok", true)
                .with("result", done.json)
                .to_json(),
            (Format::Json, Err(e)) => Value::object()
                .with("command", name)
                .with("ok", false)
                .with("error", e)
                .to_json(),
            (Format::Text, Ok(done)) => done.text,
            (Format::Text, Err(e)) => e,
        };
        let mut text = text;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        encode_reply(ok, &text)
    }

    fn execute(&mut self, cmd: &AdminCommand) -> Result<Done, String> {
        match cmd {
            AdminCommand::Ping => Ok(Done::new(
                Value::object()
                    .with("pid", std::process::id())
                    .with("version", env!("CARGO_PKG_VERSION")),
                format!("pgcorral is running (pid {})", std::process::id()),
            )),
            AdminCommand::Status { details } => Ok(self.status(*details)),
            AdminCommand::Flush { mode, database } => Ok(self.flush(*mode, database)),
            AdminCommand::Enable { database } => self.set_enabled(database, true),
            AdminCommand::Disable { database } => self.set_enabled(database, false),
            AdminCommand::Shutdown { mode } => self.shutdown_command(*mode),
            AdminCommand::SwitchTo { server } => self.switch_to(server),
            AdminCommand::ConfReload => self.reload_config("conf reload"),
            AdminCommand::ConfGet { key } => self.conf_get(key),
            AdminCommand::ConfSet { key, value } => self.conf_set(key, value),
            AdminCommand::ConfLs => Ok(self.conf_ls()),
            AdminCommand::ClearPrometheus => {
                Err("metrics are not available in this version".to_string())
            }
            AdminCommand::ClearServer { server } => {
                if !self.config.servers.iter().any(|s| &s.name == server) {
                    return Err(format!("no server named \"{server}\""));
                }
                let was_failed = self.admin.failed.remove(server);
                Ok(Done::new(
                    Value::object()
                        .with("server", server.as_str())
                        .with("was_failed", was_failed),
                    format!("server \"{server}\" cleared"),
                ))
            }
        }
    }

    /// The once-a-second duty: idle connections marked to be closed (a
    /// client gave one back FREE in the instant between a flush marking it
    /// and the flush's pass over idle connections) are closed.
    pub(super) fn admin_tick(&mut self) {
        let n = self.close_idle(|slot| slot.close_on_release());
        if n > 0 {
            log::debug!("{n} flushed idle connection(s) closed");
        }
    }

    /// Takes every FREE slot that `pick` selects (FREE → FLUSH, with one
    /// compare-and-swap, so no worker can take it meanwhile), closes its
    /// connection with a Terminate and empties it. Returns how many.
    fn close_idle(&mut self, pick: impl Fn(&Slot) -> bool) -> usize {
        let me = std::process::id() as i32;
        let mut closed = 0;
        for i in 0..self.segment.slots().len() {
            let slot = &self.segment.slots()[i];
            if slot.state() != SlotState::Free || !pick(slot) {
                continue;
            }
            if !pool::take_for_check(&self.segment, i, SlotState::Flush, me) {
                continue;
            }
            // Ours now, so its identity is stable: look again.
            if !pick(slot) {
                pool::return_checked(&self.segment, i, SlotState::Flush, me);
                continue;
            }
            let backend = slot.backend_pid();
            self.sockets.close(i, true);
            pool::finish_checked(&self.segment, i, SlotState::Flush, me);
            log::debug!("slot {i}: backend {backend} closed (flush)");
            closed += 1;
        }
        closed
    }

    /// `flush`: idle connections now; with `gracefully` and `all` the
    /// others are marked to be closed when given back, and with `all` the
    /// workers holding them are told to end their clients (SIGQUIT).
    fn flush(&mut self, mode: FlushMode, database: &Database) -> Done {
        let mut marked = 0usize;
        let mut owners = BTreeSet::new();
        if mode != FlushMode::Idle {
            // Mark first, then take the idle ones: a connection released
            // in between is either marked (and closed on release or by
            // the next tick) or still FREE for the pass below.
            for slot in self.segment.slots() {
                let (state, owner) = slot.snapshot();
                if state == SlotState::NotInit || !matches_database(slot, database) {
                    continue;
                }
                slot.mark_close_on_release();
                if state != SlotState::Free {
                    marked += 1;
                    if mode == FlushMode::All
                        && matches!(state, SlotState::InUse | SlotState::Init)
                        && owner != NO_OWNER
                        && self.workers.contains(&owner)
                    {
                        owners.insert(owner);
                    }
                }
            }
        }
        let closed = self.close_idle(|slot| matches_database(slot, database));
        for pid in &owners {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGQUIT);
        }
        log::info!(
            "flush {} ({}): {closed} idle connection(s) closed, {marked} in use marked, {} client(s) ended",
            mode.as_str(),
            database_text(database),
            owners.len()
        );
        let mut text = format!(
            "flush {}: {closed} idle connection(s) closed",
            mode.as_str()
        );
        if mode != FlushMode::Idle {
            let _ = write!(text, ", {marked} in use will be closed when given back");
        }
        if mode == FlushMode::All {
            let _ = write!(text, ", {} client(s) ended", owners.len());
        }
        Done::new(
            Value::object()
                .with("mode", mode.as_str())
                .with("database", database_json(database))
                .with("closed", closed)
                .with("marked", marked)
                .with("clients_ended", owners.len()),
            text,
        )
    }

    fn set_enabled(&mut self, database: &Database, enable: bool) -> Result<Done, String> {
        let mut set = self.admin.disabled.clone();
        let db = database.as_deref();
        if enable {
            set.enable(db)
        } else {
            set.disable(db)
        }
        .map_err(|e| e.to_string())?;
        self.segment
            .disabled()
            .store(&set)
            .map_err(|e| e.to_string())?;
        self.admin.disabled = set;
        let verb = if enable { "enabled" } else { "disabled" };
        log::info!("{} {verb}", database_text(database));
        Ok(Done::new(
            Value::object()
                .with("database", database_json(database))
                .with("enabled", enable)
                .with("disabled", self.disabled_json()),
            format!("{} {verb}", database_text(database)),
        ))
    }

    fn disabled_json(&self) -> Value {
        let d = &self.admin.disabled;
        let names: Vec<String> = d.names.iter().cloned().collect();
        let (list, except) = if d.all {
            (Vec::new(), names)
        } else {
            (names, Vec::new())
        };
        Value::object()
            .with("all", d.all)
            .with("databases", list)
            .with("except", except)
    }

    fn disabled_text(&self) -> String {
        let d = &self.admin.disabled;
        let names = d.names.iter().cloned().collect::<Vec<_>>().join(", ");
        match (d.all, d.names.is_empty()) {
            (false, true) => "none".to_string(),
            (false, false) => names,
            (true, true) => "all databases".to_string(),
            (true, false) => format!("all databases except {names}"),
        }
    }

    fn shutdown_command(&mut self, mode: ShutdownMode) -> Result<Done, String> {
        let clients = self.workers.len();
        match mode {
            ShutdownMode::Gracefully => {
                let already = self.mode == Mode::Graceful;
                self.start_graceful();
                let text = if already {
                    "a graceful shutdown is already in progress".to_string()
                } else {
                    format!(
                        "graceful shutdown started: no new clients; pgcorral exits when the {clients} connected client(s) have left"
                    )
                };
                Ok(Done::new(
                    Value::object()
                        .with("mode", "gracefully")
                        .with("clients", clients)
                        .with("already", already),
                    text,
                ))
            }
            ShutdownMode::Immediate => {
                // The same path as SIGTERM, taken at the next turn of the
                // loop, once this answer is on its way.
                kill(Pid::this(), Signal::SIGTERM).map_err(|e| e.to_string())?;
                Ok(Done::new(
                    Value::object()
                        .with("mode", "immediate")
                        .with("clients", clients),
                    format!("shutting down now; {clients} client(s) are disconnected"),
                ))
            }
            ShutdownMode::Cancel => {
                if self.mode != Mode::Graceful {
                    return Err("no graceful shutdown is in progress".to_string());
                }
                self.reopen_listeners()?;
                self.mode = Mode::Running;
                log::info!("graceful shutdown cancelled: accepting clients again");
                Ok(Done::new(
                    Value::object()
                        .with("mode", "cancel")
                        .with("clients", clients),
                    "graceful shutdown cancelled; accepting clients again",
                ))
            }
        }
    }

    /// Listens again after a graceful shutdown closed the listeners.
    fn reopen_listeners(&mut self) -> Result<(), String> {
        let main = &self.config.main;
        let fail = |e: &dyn std::fmt::Display| {
            format!("cannot listen again ({e}); the graceful shutdown goes on")
        };
        // The port bound at startup, not the configured one, which may be 0.
        let mut tcp = listeners::tcp(&main.host, self.port).map_err(|e| fail(&e))?;
        let mut unix = listeners::unix(&self.unix_path).map_err(|e| fail(&e))?;
        let reg = self.poll.registry();
        reg.register(&mut unix, UNIX, Interest::READABLE)
            .map_err(|e| fail(&e))?;
        for (i, l) in tcp.iter_mut().enumerate() {
            if let Err(e) = reg.register(l, mio::Token(TCP_FIRST + i), Interest::READABLE) {
                let _ = reg.deregister(&mut unix);
                let _ = std::fs::remove_file(&self.unix_path);
                return Err(fail(&e));
            }
        }
        for l in &tcp {
            if let Ok(a) = l.local_addr() {
                log::info!("listening on {a}");
            }
        }
        log::info!("listening on {}", self.unix_path.display());
        self.tcp = tcp;
        self.unix = Some(unix);
        Ok(())
    }

    fn switch_to(&mut self, server: &str) -> Result<Done, String> {
        if !self.config.servers.iter().any(|s| s.name == server) {
            return Err(format!("no server named \"{server}\""));
        }
        let previous = self.config.primary_server().name.clone();
        if previous == server {
            return Ok(Done::new(
                Value::object()
                    .with("server", server)
                    .with("previous", previous.as_str())
                    .with("closed", 0)
                    .with("marked", 0),
                format!("\"{server}\" is already the primary server"),
            ));
        }
        for s in &mut self.config.servers {
            s.primary = s.name == server;
        }
        self.admin.failed.insert(previous.clone());
        self.admin.failed.remove(server);
        log::warn!("switch-to: primary server is now \"{server}\" (was \"{previous}\")");
        // Connections to the old primary must not be handed out again.
        let flushed = self.flush(FlushMode::Gracefully, &None);
        let closed = flushed.json.get("closed").cloned().unwrap_or(Value::Int(0));
        let marked = flushed.json.get("marked").cloned().unwrap_or(Value::Int(0));
        Ok(Done::new(
            Value::object()
                .with("server", server)
                .with("previous", previous.as_str())
                .with("closed", closed)
                .with("marked", marked),
            format!(
                "primary server is now \"{server}\" (was \"{previous}\"); {}",
                flushed.text.trim_start_matches("flush gracefully: ")
            ),
        ))
    }

    fn server_name(&self, index: u32) -> String {
        self.config
            .servers
            .get(index as usize)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| index.to_string())
    }

    fn status(&self, details: bool) -> Done {
        let slots = self.segment.slots();
        let mut counts = [0usize; STATES.len()];
        for slot in slots {
            let state = slot.state();
            if let Some(k) = STATES.iter().position(|s| *s == state) {
                counts[k] += 1;
            }
        }
        let total = slots.len() - counts[0];
        let uptime = self.admin.started.elapsed().as_secs();
        let pipeline = crate::pipeline::resolve(self.config.main.pipeline)
            .unwrap_or(self.config.main.pipeline);
        let primary = self.config.primary_server();
        let state = match self.mode {
            Mode::Running => "running",
            Mode::Graceful => "graceful_shutdown",
        };

        let mut connections = Value::object().with("total", total);
        for (s, n) in STATES.iter().zip(counts) {
            connections = connections.with(s.name(), n);
        }
        let servers: Vec<Value> = self
            .config
            .servers
            .iter()
            .map(|s| {
                Value::object()
                    .with("name", s.name.as_str())
                    .with("host", s.host.as_str())
                    .with("port", s.port)
                    .with("primary", s.name == primary.name)
                    .with(
                        "state",
                        if self.admin.failed.contains(&s.name) {
                            "failed"
                        } else {
                            "up"
                        },
                    )
            })
            .collect();
        let limits: Vec<Value> = self
            .config
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let rec = self.segment.limit(Some(i));
                Value::object()
                    .with("database", l.database.as_str())
                    .with("user", l.user.as_str())
                    .with("active", rec.map_or(0, |r| r.active()))
                    .with("max_size", rec.map_or(0, |r| r.max_size()))
                    .with("initial_size", l.initial_size)
                    .with("min_size", l.min_size)
            })
            .collect();
        let mut json = Value::object()
            .with("state", state)
            .with("pid", std::process::id())
            .with("version", env!("CARGO_PKG_VERSION"))
            .with("uptime_seconds", uptime)
            .with("pipeline", pipeline.as_str())
            .with("server", primary.name.as_str())
            .with("servers", Value::Array(servers))
            .with("clients", self.workers.len())
            .with("max_connections", slots.len())
            .with("connections", connections)
            .with("limits", Value::Array(limits))
            .with("disabled", self.disabled_json());

        let mut text = String::new();
        let _ = writeln!(text, "Status:          {state}");
        let _ = writeln!(
            text,
            "Version:         {} (pid {})",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        let _ = writeln!(text, "Uptime:          {}", hms(uptime));
        let _ = writeln!(text, "Pipeline:        {pipeline}");
        let _ = writeln!(
            text,
            "Primary server:  {} ({}:{})",
            primary.name, primary.host, primary.port
        );
        let failed: Vec<&str> = self.admin.failed.iter().map(String::as_str).collect();
        if !failed.is_empty() {
            let _ = writeln!(text, "Failed servers:  {}", failed.join(", "));
        }
        let _ = writeln!(text, "Clients:         {}", self.workers.len());
        let by_state: Vec<String> = STATES
            .iter()
            .zip(counts)
            .skip(1)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{} {n}", s.name()))
            .collect();
        let _ = writeln!(
            text,
            "Connections:     {total} of {}{}",
            slots.len(),
            if by_state.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_state.join(", "))
            }
        );
        let _ = writeln!(text, "Disabled:        {}", self.disabled_text());
        if !self.config.limits.is_empty() {
            let _ = writeln!(text, "Limits:");
            for (i, l) in self.config.limits.iter().enumerate() {
                let rec = self.segment.limit(Some(i));
                let _ = writeln!(
                    text,
                    "  {}/{}: {} of {} (min {}, initial {})",
                    l.database,
                    l.user,
                    rec.map_or(0, |r| r.active()),
                    rec.map_or(0, |r| r.max_size()),
                    l.min_size,
                    l.initial_size
                );
            }
        }

        if details {
            let now = pool::now_ms();
            let mut rows = Vec::with_capacity(slots.len());
            let _ = writeln!(
                text,
                "\n{:<5} {:<18} {:<16} {:<16} {:<10} {:>8} {:>8} {:>8} {:>8}",
                "Slot", "State", "Database", "User", "Server", "Owner", "Backend", "Age", "Idle"
            );
            for (i, slot) in slots.iter().enumerate() {
                let (state, owner) = slot.snapshot();
                let mut row = Value::object().with("slot", i).with("state", state.name());
                if state == SlotState::NotInit {
                    row = row
                        .with("database", Value::Null)
                        .with("user", Value::Null)
                        .with("server", Value::Null)
                        .with("owner_pid", Value::Null)
                        .with("backend_pid", Value::Null)
                        .with("age_seconds", Value::Null)
                        .with("idle_seconds", Value::Null)
                        .with("close_on_release", false);
                    let _ = writeln!(text, "{i:<5} {}", state.name());
                } else {
                    let database = slot_database(slot);
                    let user = String::from_utf8_lossy(slot.identity().1).into_owned();
                    let server = self.server_name(slot.server());
                    let age = now.saturating_sub(slot.created_ms()) / 1000;
                    let idle = now.saturating_sub(slot.last_used_ms()) / 1000;
                    let owner_json: Value = if owner == NO_OWNER {
                        Value::Null
                    } else {
                        owner.into()
                    };
                    let _ = writeln!(
                        text,
                        "{i:<5} {:<18} {:<16} {:<16} {:<10} {:>8} {:>8} {:>7}s {:>7}s",
                        state.name(),
                        database,
                        user,
                        server,
                        if owner == NO_OWNER {
                            "-".to_string()
                        } else {
                            owner.to_string()
                        },
                        slot.backend_pid(),
                        age,
                        idle
                    );
                    row = row
                        .with("database", database)
                        .with("user", user)
                        .with("server", server)
                        .with("owner_pid", owner_json)
                        .with("backend_pid", slot.backend_pid())
                        .with("age_seconds", age)
                        .with("idle_seconds", idle)
                        .with("close_on_release", slot.close_on_release());
                }
                rows.push(row);
            }
            json = json.with("slots", Value::Array(rows));
        }
        Done::new(json, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_minutes_seconds() {
        assert_eq!(hms(0), "0:00:00");
        assert_eq!(hms(3723), "1:02:03");
    }
}

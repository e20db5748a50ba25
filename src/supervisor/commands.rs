//! Administration commands (`pgcorral-cli`), run by the supervisor inside
//! its event loop. Nothing here talks to PostgreSQL or waits: a command
//! reads the shared segment, moves slots with one compare-and-swap each,
//! closes sockets the supervisor holds, signals workers, and answers.
//!
//! Every command produces one result value (`management::reply`), printed
//! as text or as JSON as the request asks. JSON results are wrapped in an
//! envelope, `{"command":NAME,"ok":true,"result":{...}}` or
//! `{"command":NAME,"ok":false,"error":"..."}`, documented in `doc/CLI.md`.

use std::collections::BTreeSet;
use std::time::Instant;

use mio::Interest;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{listeners, Mode, Supervisor, TCP_FIRST, UNIX};
use crate::disabled::DisabledSet;
use crate::management::command::{
    encode_reply, AdminCommand, CommandRequest, Database, FlushMode, Format, ShutdownMode,
};
use crate::management::reply::{
    database_text, ClearServer, Connections, Disabled, Enabled, Envelope, Flush, LimitStatus, Ping,
    Reply, ServerStatus, Shutdown, SlotStatus, Status, SwitchTo,
};
use crate::pool;
use crate::segment::Segment;
use crate::slot::{Slot, SlotState, NO_OWNER};

/// Every state, in the order `status` reports them.
const STATES: [SlotState; 11] = [
    SlotState::NotInit,
    SlotState::Init,
    SlotState::Free,
    SlotState::InUse,
    SlotState::Handed,
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

/// A command's result, printed as text or JSON from the one value.
pub(super) type Done = Box<dyn Reply>;

/// Database and user of a slot, cut like the slot cuts them; `?` for a
/// name whose writer died in the middle of writing it.
fn slot_names(slot: &Slot) -> (String, String) {
    match slot.identity() {
        Some(id) => (
            String::from_utf8_lossy(id.database()).into_owned(),
            String::from_utf8_lossy(id.user()).into_owned(),
        ),
        None => ("?".to_string(), "?".to_string()),
    }
}

fn matches_database(slot: &Slot, db: &Database) -> bool {
    match db {
        None => true,
        Some(d) => {
            // Slots keep at most NAMEDATALEN - 1 bytes of a name.
            let want = d.as_bytes();
            slot.identity().is_some_and(|id| {
                id.database() == &want[..want.len().min(crate::slot::NAME_CAPACITY - 1)]
            })
        }
    }
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
        let (ok, mut text) = match (req.format, result) {
            (Format::Text, Ok(done)) => (true, done.to_string()),
            (Format::Text, Err(e)) => (false, e),
            (Format::Json, Ok(done)) => match done.envelope(&name) {
                Ok(json) => (true, json),
                Err(e) => (false, failure_json(&name, &format!("cannot encode: {e}"))),
            },
            (Format::Json, Err(e)) => (false, failure_json(&name, &e)),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        encode_reply(ok, &text)
    }

    fn execute(&mut self, cmd: &AdminCommand) -> Result<Done, String> {
        match cmd {
            AdminCommand::Ping => Ok(Box::new(Ping {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            AdminCommand::Status { details } => Ok(Box::new(self.status(*details))),
            AdminCommand::Flush { mode, database } => Ok(Box::new(self.flush(*mode, database))),
            AdminCommand::Enable { database } => self.set_enabled(database, true),
            AdminCommand::Disable { database } => self.set_enabled(database, false),
            AdminCommand::Shutdown { mode } => self.shutdown_command(*mode),
            AdminCommand::SwitchTo { server } => self.switch_to(server),
            AdminCommand::ConfReload => self.reload_config("conf reload"),
            AdminCommand::ConfGet { key } => self.conf_get(key),
            AdminCommand::ConfSet { key, value } => self.conf_set(key, value),
            AdminCommand::ConfLs => Ok(Box::new(self.conf_ls())),
            AdminCommand::ClearPrometheus => {
                Err("metrics are not available in this version".to_string())
            }
            AdminCommand::ClearServer { server } => {
                if !self.config.servers.iter().any(|s| &s.name == server) {
                    return Err(format!("no server named \"{server}\""));
                }
                let was_failed = self.admin.failed.remove(server);
                Ok(Box::new(ClearServer {
                    server: server.clone(),
                    was_failed,
                }))
            }
        }
    }

    /// The once-a-second duty: idle connections marked to be closed (a
    /// client gave one back FREE in the instant between a flush marking it
    /// and the flush's pass over idle connections) or stale (given back in
    /// the instant of a `switch-to`) are closed.
    pub(super) fn admin_tick(&mut self) {
        let n =
            self.close_idle(|seg, slot| slot.close_on_release() || !pool::is_current(seg, slot));
        if n > 0 {
            log::debug!("{n} flushed idle connection(s) closed");
        }
    }

    /// Takes every FREE slot that `pick` selects (FREE → FLUSH, with one
    /// compare-and-swap, so no worker can take it meanwhile), closes its
    /// connection with a Terminate and empties it. Returns how many.
    fn close_idle(&mut self, pick: impl Fn(&Segment, &Slot) -> bool) -> usize {
        let me = std::process::id() as i32;
        let mut closed = 0;
        for i in 0..self.segment.slots().len() {
            let slot = &self.segment.slots()[i];
            if slot.state() != SlotState::Free || !pick(&self.segment, slot) {
                continue;
            }
            if !pool::take_for_check(&self.segment, i, SlotState::Flush, me) {
                continue;
            }
            // Ours now, so its identity is stable: look again.
            if !pick(&self.segment, slot) {
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
    fn flush(&mut self, mode: FlushMode, database: &Database) -> Flush {
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
        let closed = self.close_idle(|_, slot| matches_database(slot, database));
        for pid in &owners {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGQUIT);
        }
        log::info!(
            "flush {} ({}): {closed} idle connection(s) closed, {marked} in use marked, {} client(s) ended",
            mode.as_str(),
            database_text(database),
            owners.len()
        );
        Flush {
            mode,
            database: database.clone(),
            closed,
            marked,
            clients_ended: owners.len(),
        }
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
        Ok(Box::new(Enabled {
            database: database.clone(),
            enabled: enable,
            disabled: Disabled::from(&self.admin.disabled),
        }))
    }

    fn shutdown_command(&mut self, mode: ShutdownMode) -> Result<Done, String> {
        let clients = self.clients();
        match mode {
            ShutdownMode::Gracefully => {
                let already = self.mode == Mode::Graceful;
                self.start_graceful();
                Ok(Box::new(Shutdown {
                    mode,
                    clients,
                    already: Some(already),
                }))
            }
            ShutdownMode::Immediate => {
                // The same path as SIGTERM, taken at the next turn of the
                // loop, once this answer is on its way.
                kill(Pid::this(), Signal::SIGTERM).map_err(|e| e.to_string())?;
                Ok(Box::new(Shutdown {
                    mode,
                    clients,
                    already: None,
                }))
            }
            ShutdownMode::Cancel => {
                if self.mode != Mode::Graceful {
                    return Err("no graceful shutdown is in progress".to_string());
                }
                self.reopen_listeners()?;
                self.mode = Mode::Running;
                log::info!("graceful shutdown cancelled: accepting clients again");
                Ok(Box::new(Shutdown {
                    mode,
                    clients,
                    already: None,
                }))
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

    /// `switch-to`: the shared segment gets the new primary and a new
    /// epoch, which every worker reads for its next connection, however
    /// long ago it was forked. Connections opened before are stale
    /// (`pool::is_current`): idle ones are closed now, in-use ones are
    /// marked and closed when given back (`pool::release` would also refuse
    /// to pool them, as it does for a slot stamped in the instant of the
    /// switch); the once-a-second tick closes any that turn up FREE later.
    fn switch_to(&mut self, server: &str) -> Result<Done, String> {
        let Some(index) = self.config.server_index(server) else {
            return Err(format!("no server named \"{server}\""));
        };
        let current = self.segment.primary().server;
        let previous = self.config.server_at(current).name.clone();
        if current == index {
            return Ok(Box::new(SwitchTo::after(server, &previous, &Flush::none())));
        }
        // The configuration copy follows, for `conf get` and a later fork.
        for s in &mut self.config.servers {
            s.primary = s.name == server;
        }
        let now = self.segment.switch_primary(index);
        self.admin.failed.insert(previous.clone());
        self.admin.failed.remove(server);
        log::warn!(
            "switch-to: primary server is now \"{server}\" (was \"{previous}\"), epoch {}",
            now.epoch
        );
        let mut marked = 0usize;
        for slot in self.segment.slots() {
            let state = slot.state();
            if state == SlotState::NotInit || pool::is_current(&self.segment, slot) {
                continue;
            }
            slot.mark_close_on_release();
            if state != SlotState::Free {
                marked += 1;
            }
        }
        let closed = self.close_idle(|seg, slot| !pool::is_current(seg, slot));
        log::info!(
            "switch-to: {closed} idle connection(s) to \"{previous}\" closed, {marked} in use marked"
        );
        let mut flushed = Flush::none();
        flushed.closed = closed;
        flushed.marked = marked;
        Ok(Box::new(SwitchTo::after(server, &previous, &flushed)))
    }

    fn server_name(&self, index: u32) -> String {
        self.config
            .servers
            .get(index as usize)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| index.to_string())
    }

    /// `status` (and `status details`): built once, printed in either
    /// form.
    fn status(&self, details: bool) -> Status {
        let slots = self.segment.slots();
        let mut counts = [0usize; STATES.len()];
        for slot in slots {
            let state = slot.state();
            if let Some(k) = STATES.iter().position(|s| *s == state) {
                counts[k] += 1;
            }
        }
        let pipeline = crate::pipeline::resolve(self.config.main.pipeline)
            .unwrap_or(self.config.main.pipeline);
        // The segment's primary is what workers connect to.
        let primary = self.config.server_at(self.segment.primary().server);
        let servers = self
            .config
            .servers
            .iter()
            .map(|s| ServerStatus {
                name: s.name.clone(),
                host: s.host.clone(),
                port: s.port,
                primary: s.name == primary.name,
                state: if self.admin.failed.contains(&s.name) {
                    "failed"
                } else {
                    "up"
                },
            })
            .collect();
        let limits = self
            .config
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let rec = self.segment.limit(Some(i));
                LimitStatus {
                    database: l.database.clone(),
                    user: l.user.clone(),
                    active: rec.map_or(0, |r| r.active()),
                    max_size: rec.map_or(0, |r| r.max_size()),
                    initial_size: l.initial_size,
                    min_size: l.min_size,
                }
            })
            .collect();
        Status {
            state: match self.mode {
                Mode::Running => "running",
                Mode::Graceful => "graceful_shutdown",
            },
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.admin.started.elapsed().as_secs(),
            pipeline: pipeline.as_str().to_string(),
            server: primary.name.clone(),
            servers,
            clients: self.clients(),
            idle_workers: self.spares.idle(),
            pinned: self.segment.pinned(),
            waiting: self.segment.line().waiting(),
            max_connections: slots.len(),
            connections: Connections {
                total: slots.len() - counts[0],
                by_state: STATES.iter().map(|s| s.name()).zip(counts).collect(),
            },
            limits,
            disabled: Disabled::from(&self.admin.disabled),
            slots: details.then(|| self.slot_rows()),
        }
    }

    /// Every slot, each read on its own (not the table at one instant).
    fn slot_rows(&self) -> Vec<SlotStatus> {
        let now = pool::now_ms();
        let slots = self.segment.slots();
        let mut rows = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            let (state, owner) = slot.snapshot();
            let row = if state == SlotState::NotInit {
                SlotStatus {
                    slot: i,
                    state: state.name(),
                    database: None,
                    user: None,
                    server: None,
                    owner_pid: None,
                    backend_pid: None,
                    age_seconds: None,
                    idle_seconds: None,
                    close_on_release: false,
                }
            } else {
                let (database, user) = slot_names(slot);
                SlotStatus {
                    slot: i,
                    state: state.name(),
                    database: Some(database),
                    user: Some(user),
                    server: Some(self.server_name(slot.server())),
                    owner_pid: (owner != NO_OWNER).then_some(owner),
                    backend_pid: Some(slot.backend_pid()),
                    age_seconds: Some(now.saturating_sub(slot.created_ms()) / 1000),
                    idle_seconds: Some(now.saturating_sub(slot.last_used_ms()) / 1000),
                    close_on_release: slot.close_on_release(),
                }
            };
            rows.push(row);
        }
        rows
    }
}

/// The JSON envelope of a failed command.
fn failure_json(command: &str, error: &str) -> String {
    // Strings and a boolean always encode; the fallback is never expected.
    Envelope::failure(command, error)
        .to_json()
        .unwrap_or_else(|_| String::from(r#"{"command":"","ok":false,"error":"unencodable"}"#))
}

//! Keeping the pool consistent: reaping workers, reclaiming what dead ones
//! held, closing connections marked for removal, and the two shutdowns.
//!
//! Pool upkeep, once a second (`upkeep`): idle connections past
//! `idle_timeout` (down to their rule's `min_size`) or `max_connection_age`
//! are closed by the supervisor itself, which takes each FREE slot with one
//! compare-and-swap (FREE → IDLE_CHECK or MAX_CONNECTION_AGE, owner = its
//! own pid) so no worker can take it meanwhile, then closes the socket it
//! holds and empties the slot. A connection in use past its age is closed at
//! the first sweep after its worker returns it. Anything that talks to
//! PostgreSQL runs in a short-lived forked helper: prefill (`prefill.rs`)
//! and background validation (`validation.rs`), at most one of each at a
//! time, reaped like workers.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getppid, Pid};

use super::prefill::{self, Prefill};
use super::spawn::ranges_to_close;
use super::validation;
use super::{Mode, Supervisor};
use crate::config::{Config, Validation};
use crate::pool;
use crate::pooled_sockets::PooledSockets;
use crate::segment::Segment;
use crate::slot::{SlotState, NO_OWNER};
use crate::sys;

/// How long workers get to say goodbye to their clients at shutdown.
const WORKER_GRACE: Duration = Duration::from_secs(3);
/// Wait after a prefill helper that could not open everything; doubled
/// after each failure in a row, up to `PREFILL_RETRY_MAX`.
const PREFILL_RETRY: Duration = Duration::from_secs(5);
const PREFILL_RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Helper {
    Prefill,
    Validation,
}

impl Helper {
    fn name(self) -> &'static str {
        match self {
            Helper::Prefill => "prefill helper",
            Helper::Validation => "validation helper",
        }
    }
}

/// The state of the periodic duties.
pub(super) struct Upkeep {
    prefill: Option<i32>,
    validation: Option<i32>,
    /// Prefill aims at `initial_size` until a helper has once opened all it
    /// was asked to; `min_size` afterwards.
    initial_done: bool,
    prefill_not_before: Instant,
    /// Prefill helpers that failed in a row, for the back-off.
    prefill_failures: u32,
    validation_due: Instant,
}

impl Upkeep {
    pub(super) fn new(config: &Config) -> Self {
        let now = Instant::now();
        Upkeep {
            prefill: None,
            validation: None,
            initial_done: false,
            prefill_not_before: now,
            prefill_failures: 0,
            validation_due: now + config.main.background_interval,
        }
    }

    fn helper(&self, pid: i32) -> Option<Helper> {
        if self.prefill == Some(pid) {
            Some(Helper::Prefill)
        } else if self.validation == Some(pid) {
            Some(Helper::Validation)
        } else {
            None
        }
    }

    fn forget(&mut self, pid: i32) {
        if self.prefill == Some(pid) {
            self.prefill = None;
        }
        if self.validation == Some(pid) {
            self.validation = None;
        }
    }

    fn pids(&self) -> Vec<i32> {
        self.prefill.into_iter().chain(self.validation).collect()
    }

    /// A prefill attempt failed: wait longer each time, so that a server
    /// that is down or refuses the login is not hammered.
    fn prefill_failed(&mut self) {
        let delay = PREFILL_RETRY
            .saturating_mul(1 << self.prefill_failures.min(6))
            .min(PREFILL_RETRY_MAX);
        self.prefill_failures = self.prefill_failures.saturating_add(1);
        self.prefill_not_before = Instant::now() + delay;
    }
}

impl Supervisor {
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { break };
                    if let Some(helper) = self.upkeep.helper(pid.as_raw()) {
                        self.helper_exited(helper, pid.as_raw(), status);
                    } else {
                        match status {
                            WaitStatus::Exited(_, 0) => {}
                            WaitStatus::Exited(_, code) => {
                                log::debug!("worker {pid} exited with status {code}")
                            }
                            WaitStatus::Signaled(_, sig, _) => {
                                log::warn!("worker {pid} killed by {sig}")
                            }
                            _ => {}
                        }
                    }
                    self.forget_worker(pid.as_raw());
                }
            }
        }
        self.sweep();
    }

    fn forget_worker(&mut self, pid: i32) {
        self.workers.remove(&pid);
        self.upkeep.forget(pid);
        for i in pool::reclaim_owner(&self.segment, pid) {
            log::warn!("slot {i}: worker {pid} died holding it; its server connection is closed");
            self.sockets.close(i, false);
            pool::finish_remove(&self.segment, i);
        }
    }

    /// Brings slots and sockets into agreement: closes connections of
    /// REMOVE slots, drops sockets of slots that no longer have one, and
    /// reclaims slots and places in line of owners that are gone (a missed
    /// SIGCHLD).
    pub(super) fn sweep(&mut self) {
        let mut dead_owners = Vec::new();
        for (i, slot) in self.segment.slots().iter().enumerate() {
            let (state, owner) = slot.snapshot();
            match state {
                SlotState::Remove => {
                    self.sockets.close(i, false);
                    pool::finish_remove(&self.segment, i);
                }
                SlotState::NotInit if self.sockets.held(i).is_some() => {
                    // An idle connection evicted for another database whose
                    // replacement never came: it is idle, so end it politely.
                    self.sockets.close(i, true);
                }
                SlotState::InUse | SlotState::Init | SlotState::Validation | SlotState::Handed
                    if self.may_be_dead(owner) =>
                {
                    dead_owners.push(owner)
                }
                _ => {}
            }
        }
        let waiting = self.segment.line().owners();
        dead_owners.extend(waiting.into_iter().filter(|pid| self.may_be_dead(*pid)));
        dead_owners.sort_unstable();
        dead_owners.dedup();
        for pid in dead_owners {
            // Only a pid that is not our child any more is dead for sure.
            if kill(Pid::from_raw(pid), None).is_err() {
                self.forget_worker(pid);
            }
        }
    }

    /// Whether `pid`, found owning a slot or a place in line, is none of
    /// our live children.
    fn may_be_dead(&self, pid: i32) -> bool {
        pid != NO_OWNER && !self.workers.contains(&pid) && self.upkeep.helper(pid).is_none()
    }

    pub(super) fn start_graceful(&mut self) {
        if self.mode == Mode::Graceful {
            return;
        }
        log::info!(
            "SIGTRAP: graceful shutdown: no new clients; waiting for {} connected client(s)",
            self.workers.len()
        );
        self.mode = Mode::Graceful;
        self.close_listeners();
    }

    pub(super) fn shutdown_now(&mut self) {
        self.segment.set_shutting_down();
        self.close_listeners();
        for pid in &self.workers {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGQUIT);
        }
        let deadline = Instant::now() + WORKER_GRACE;
        while !self.workers.is_empty() && Instant::now() < deadline {
            self.reap_quietly();
            std::thread::sleep(Duration::from_millis(5));
        }
        for pid in self.workers.clone() {
            log::warn!("worker {pid} did not stop in time; killing it");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
            self.forget_worker(pid);
        }
        self.close_pool();
    }

    fn reap_quietly(&mut self) {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            match status.pid() {
                Some(pid) => self.forget_worker(pid.as_raw()),
                None => break,
            }
        }
    }

    /// Closes every pooled connection: idle ones with a Terminate, the rest
    /// (whose state nobody can vouch for) with a plain shutdown.
    pub(super) fn close_pool(&mut self) {
        self.stop_helpers();
        let segment = &self.segment;
        self.sockets.close_all(|i| {
            segment
                .slots()
                .get(i)
                .is_some_and(|s| s.state() == SlotState::Free)
        });
        log::info!("all server connections closed");
    }
}

impl Supervisor {
    /// The once-a-second duties: close what is past `idle_timeout` or
    /// `max_connection_age`, then start a prefill or validation helper when
    /// one is due. Never waits on anything.
    pub(super) fn upkeep(&mut self) {
        self.close_expired();
        if self.mode != Mode::Running || self.segment.shutting_down() {
            return;
        }
        self.maybe_prefill();
        self.maybe_validate();
    }

    /// Closes idle connections past `max_connection_age`, and past
    /// `idle_timeout` as long as their rule keeps `min_size`.
    fn close_expired(&mut self) {
        let main = &self.config.main;
        let idle_ms = main.idle_timeout.as_millis() as u64;
        let age_ms = main.max_connection_age.as_millis() as u64;
        if idle_ms == 0 && age_ms == 0 {
            return;
        }
        let now = pool::now_ms();
        let expired = |created: u64, used: u64| {
            if age_ms > 0 && now.saturating_sub(created) >= age_ms {
                Some(SlotState::MaxConnectionAge)
            } else if idle_ms > 0 && now.saturating_sub(used) >= idle_ms {
                Some(SlotState::IdleCheck)
            } else {
                None
            }
        };
        // Longest idle first, so that min_size keeps the freshest.
        let mut due: Vec<(u64, usize)> = self
            .segment
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state() == SlotState::Free)
            .filter(|(_, s)| expired(s.created_ms(), s.last_used_ms()).is_some())
            .map(|(i, s)| (s.last_used_ms(), i))
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_unstable();
        let me = std::process::id() as i32;
        for (_, i) in due {
            let slot = &self.segment.slots()[i];
            let Some(check) = expired(slot.created_ms(), slot.last_used_ms()) else {
                continue;
            };
            if check == SlotState::IdleCheck && at_min_size(&self.config, &self.segment, i) {
                continue;
            }
            if !pool::take_for_check(&self.segment, i, check, me) {
                continue;
            }
            // Ours now: read again, a worker may have used it in between.
            if expired(slot.created_ms(), slot.last_used_ms()) != Some(check) {
                pool::return_checked(&self.segment, i, check, me);
                continue;
            }
            let backend = slot.backend_pid();
            self.sockets.close(i, true);
            pool::finish_checked(&self.segment, i, check, me);
            log::debug!(
                "slot {i}: backend {backend} closed ({})",
                if check == SlotState::MaxConnectionAge {
                    "max_connection_age"
                } else {
                    "idle_timeout"
                }
            );
        }
    }

    fn maybe_prefill(&mut self) {
        if self.upkeep.prefill.is_some() || Instant::now() < self.upkeep.prefill_not_before {
            return;
        }
        let targets = prefill::targets(&self.config, &self.segment, !self.upkeep.initial_done);
        if targets.is_empty() {
            self.upkeep.initial_done = true;
            return;
        }
        if !prefill::has_empty_slot(&self.segment) {
            return;
        }
        let job = Prefill {
            config: &self.config,
            segment: &self.segment,
            credentials: &self.credentials,
            management_path: &self.management_path,
            statement_key: self.statement_key,
        };
        match fork_helper(&self.sockets, false, || job.run(&targets)) {
            Ok(pid) => {
                log::debug!("prefill helper {pid} started: {targets:?}");
                self.upkeep.prefill = Some(pid);
            }
            Err(e) => {
                log::error!("cannot fork a prefill helper: {e}");
                self.upkeep.prefill_failed();
            }
        }
    }

    fn maybe_validate(&mut self) {
        if self.config.main.validation != Validation::Background {
            return;
        }
        let now = Instant::now();
        if now < self.upkeep.validation_due {
            return;
        }
        self.upkeep.validation_due = now + self.config.main.background_interval;
        if let Some(pid) = self.upkeep.validation {
            log::debug!("validation helper {pid} still running; this round is skipped");
            return;
        }
        if !self
            .segment
            .slots()
            .iter()
            .any(|s| s.state() == SlotState::Free)
        {
            return;
        }
        let (segment, sockets) = (&self.segment, &self.sockets);
        let timeout = prefill::connect_timeout(&self.config);
        match fork_helper(&self.sockets, true, || {
            validate_idle(segment, sockets, timeout)
        }) {
            Ok(pid) => {
                log::debug!("validation helper {pid} started");
                self.upkeep.validation = Some(pid);
            }
            Err(e) => log::error!("cannot fork a validation helper: {e}"),
        }
    }

    fn helper_exited(&mut self, helper: Helper, pid: i32, status: WaitStatus) {
        let clean = matches!(status, WaitStatus::Exited(_, 0));
        match status {
            WaitStatus::Exited(_, code) => {
                log::debug!("{} {pid} exited with status {code}", helper.name())
            }
            WaitStatus::Signaled(_, sig, _) => {
                log::warn!("{} {pid} killed by {sig}", helper.name())
            }
            _ => {}
        }
        if helper == Helper::Prefill {
            if clean {
                self.upkeep.initial_done = true;
                self.upkeep.prefill_failures = 0;
            } else {
                self.upkeep.prefill_failed();
            }
        }
    }

    /// Ends the helpers at shutdown; whatever slots they held are reclaimed.
    fn stop_helpers(&mut self) {
        for pid in self.upkeep.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            // SIGKILL cannot be caught: the wait is short.
            let _ = waitpid(Pid::from_raw(pid), None);
            self.forget_worker(pid);
        }
    }
}

/// Whether closing slot `i` would take its rule below `min_size`.
fn at_min_size(config: &Config, segment: &Segment, i: usize) -> bool {
    let Some(rule) = segment.slots().get(i).and_then(|s| s.limit_index()) else {
        return false;
    };
    match (config.limits.get(rule), segment.limit(Some(rule))) {
        (Some(cfg), Some(rec)) => rec.active() as usize <= cfg.min_size,
        _ => false,
    }
}

/// In the validation helper: tests every idle connection it can take, one
/// at a time, and puts each back FREE or marks it REMOVE for the supervisor
/// to close. Only sockets the helper inherited are tested; one pooled after
/// the fork waits for the next round.
fn validate_idle(segment: &Segment, sockets: &PooledSockets, timeout: Duration) -> i32 {
    let me = std::process::id() as i32;
    let (mut tested, mut failed) = (0, 0);
    for (i, slot) in segment.slots().iter().enumerate() {
        if slot.state() != SlotState::Free
            || !pool::take_for_check(segment, i, SlotState::Validation, me)
        {
            continue;
        }
        let Some(fd) = sockets.get(i, slot.generation()) else {
            pool::return_checked(segment, i, SlotState::Validation, me);
            continue;
        };
        tested += 1;
        match validation::probe(fd, timeout) {
            Ok(()) => {
                pool::return_checked(segment, i, SlotState::Validation, me);
            }
            Err(e) => {
                failed += 1;
                log::info!(
                    "slot {i}: backend {} failed validation ({e}); its connection is closed",
                    slot.backend_pid()
                );
                pool::condemn_checked(segment, i, SlotState::Validation, me);
            }
        }
    }
    log::debug!("validation: {tested} idle connection(s) tested, {failed} failed");
    0
}

/// Forks a short-lived helper that runs `body` and exits with its status.
/// The child keeps only the log file and, with `keep_pool`, the pooled
/// sockets; it dies with the supervisor.
fn fork_helper(
    sockets: &PooledSockets,
    keep_pool: bool,
    body: impl FnOnce() -> i32,
) -> io::Result<i32> {
    let parent = Pid::this();
    sys::process::fork_child(move || {
        // If the supervisor died before the request took effect, the parent
        // is no longer it and the helper leaves at once.
        if set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent {
            return 1;
        }
        crate::logging::before_closing_inherited();
        let log = crate::logging::inherited_descriptor().unwrap_or(2);
        let (lo, hi): (RawFd, RawFd) = if keep_pool {
            (sockets.base(), sockets.end())
        } else {
            (sockets.base(), sockets.base())
        };
        for (a, b) in ranges_to_close([log, log], lo, hi) {
            // Only fails for an inverted range, which is never asked for.
            let _ = sys::fd::close_range(a, b);
        }
        // The supervisor blocks these for its signalfd; a helper dies of
        // them like any process, and the supervisor reclaims what it held.
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        let _ = set.thread_unblock();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|_| {
            log::error!("upkeep helper panicked");
            2
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Acquired, Want};

    #[test]
    fn prefill_backoff_doubles_up_to_a_minute() {
        let config = Config::from_toml("[server.a]\n").unwrap();
        let mut u = Upkeep::new(&config);
        let mut delays = Vec::new();
        for _ in 0..8 {
            let before = Instant::now();
            u.prefill_failed();
            delays.push((u.prefill_not_before - before).as_secs());
        }
        assert_eq!(delays, [5, 10, 20, 40, 60, 60, 60, 60]);
    }

    #[test]
    fn min_size_counts_the_rule_s_connections() {
        let config = Config::from_toml(
            "[server.a]\n[[limit]]\ndatabase = \"d\"\nuser = \"u\"\nmax_size = 3\nmin_size = 1\n",
        )
        .unwrap();
        let seg = Segment::create(3, &[3]).unwrap();
        let want = Want {
            database: "d",
            user: "u",
            limit: Some(0),
            settings: 0,
        };
        let mut held = Vec::new();
        for me in [10, 11] {
            let Some(Acquired::New(i)) = pool::try_acquire(&seg, want, me) else {
                panic!()
            };
            held.push(i);
        }
        assert!(!at_min_size(&config, &seg, held[0]), "2 > min_size 1");
        pool::abandon_new(&seg, held[1], 11);
        assert!(at_min_size(&config, &seg, held[0]), "1 = min_size 1");
    }
}

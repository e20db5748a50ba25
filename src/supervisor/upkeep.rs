//! Keeping the pool consistent: reaping workers, reclaiming what dead ones
//! held, closing connections marked for removal, and the two shutdowns.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{Mode, Supervisor};
use crate::pool;
use crate::slot::{SlotState, NO_OWNER};

/// How long workers get to say goodbye to their clients at shutdown.
const WORKER_GRACE: Duration = Duration::from_secs(3);

impl Supervisor {
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { break };
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
                    self.forget_worker(pid.as_raw());
                }
            }
        }
        self.sweep();
    }

    fn forget_worker(&mut self, pid: i32) {
        self.workers.remove(&pid);
        for i in pool::reclaim_owner(&self.segment, pid) {
            log::warn!("slot {i}: worker {pid} died holding it; its server connection is closed");
            self.sockets.close(i, false);
            pool::finish_remove(&self.segment, i);
        }
    }

    /// Brings slots and sockets into agreement: closes connections of
    /// REMOVE slots, drops sockets of slots that no longer have one, and
    /// reclaims slots of owners that are gone (a missed SIGCHLD).
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
                SlotState::InUse | SlotState::Init
                    if owner != NO_OWNER && !self.workers.contains(&owner) =>
                {
                    dead_owners.push(owner)
                }
                _ => {}
            }
        }
        dead_owners.sort_unstable();
        dead_owners.dedup();
        for pid in dead_owners {
            // Only a pid that is not our child any more is dead for sure.
            if kill(Pid::from_raw(pid), None).is_err() {
                self.forget_worker(pid);
            }
        }
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

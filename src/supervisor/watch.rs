//! Idle pooled connections whose server ended them are closed at once.
//!
//! A backend can die while its connection sits FREE in the pool:
//! `pg_terminate_backend`, a PostgreSQL restart, an idle timeout on the
//! server's side. PostgreSQL then sends a FATAL ErrorResponse (57P01 and
//! friends) and closes, so the socket becomes readable while nobody is
//! reading it. The supervisor holds every pooled socket and already runs
//! a `mio` loop, so it watches the FREE ones there: one that wakes it is
//! taken FREE → IDLE_CHECK by compare-and-swap, closed and emptied, and
//! the pool refills as usual. Nothing is read from the socket.
//!
//! Every worker shares the same open socket, so while a worker uses a
//! connection its server's answers would wake the supervisor too. To keep
//! that from costing anything per query:
//!
//! * only FREE slots' sockets are registered, once a tick (`watch_idle`);
//! * registration is edge-triggered (mio's only mode): one wake-up per
//!   arrival, never a busy loop while the data waits for its reader;
//! * a wake-up for a slot the supervisor cannot take FREE belongs to a
//!   worker: the socket is deregistered until the next tick sees the slot
//!   FREE again, so a connection in use costs at most one wake-up a tick;
//! * a slot taken after a wake-up is closed only if its socket is still
//!   not quiet (`server::probe::quiet`): the data may have been a worker's
//!   answer, read before it gave the connection back.
//!
//! A connection that dies in the instant before a worker takes it, before
//! the next tick has registered it, is caught by the worker's own check
//! (`worker/acquire.rs`).

use mio::Token;

use super::{Supervisor, WATCH_FIRST};
use crate::pool;
use crate::server::probe;
use crate::slot::SlotState;

impl Supervisor {
    /// Watches the socket of every FREE slot not watched yet. Registering
    /// one that is already readable reports it at once, so a connection
    /// that died while in use or unwatched is not missed.
    pub(super) fn watch_idle(&mut self) {
        for (i, slot) in self.segment.slots().iter().enumerate() {
            if slot.state() != SlotState::Free || self.sockets.watched(i) {
                continue;
            }
            if let Err(e) = self.sockets.watch(i, Token(WATCH_FIRST + i)) {
                log::warn!("slot {i}: cannot watch its idle socket: {e}");
            }
        }
    }

    /// The socket of slot `i` woke the loop.
    pub(super) fn on_pooled_readable(&mut self, i: usize) {
        let me = std::process::id() as i32;
        if !pool::take_for_check(&self.segment, i, SlotState::IdleCheck, me) {
            // Held by a worker or a check: what arrived is theirs.
            self.sockets.unwatch(i);
            return;
        }
        let generation = self.segment.slots()[i].generation();
        let quiet = self
            .sockets
            .get(i, generation)
            .is_some_and(|fd| probe::quiet(fd));
        if quiet {
            pool::return_checked(&self.segment, i, SlotState::IdleCheck, me);
            return;
        }
        log::info!(
            "slot {i}: idle backend {} ended the connection; closing it",
            self.segment.slots()[i].backend_pid()
        );
        self.sockets.close(i, false);
        pool::finish_checked(&self.segment, i, SlotState::IdleCheck, me);
    }
}

//! Taking and giving back slots: the pool policy on top of the slot state
//! machine. Workers call `acquire` and give every connection back through
//! `check_in`, the one place that decides keep or close; the supervisor calls
//! `reclaim_owner` and `finish_remove`; upkeep (the supervisor and its
//! helpers) uses `take_for_check` and what follows it, and
//! `reserve_for_prefill`.
//!
//! A worker that finds nothing waits in the segment's line (`waiters`);
//! every connection given back clean goes through `hand_on`, the one place
//! that decides who gets it: the longest waiter that can use it, handed
//! over directly and woken alone.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::proof::AuthProof;
use crate::segment::Segment;
use crate::slot::{identity_key, Slot, SlotState, NO_OWNER};
use crate::waiters::{Left, Place, Wanted};

#[cfg(test)]
mod line_tests;

/// What a client needs a server connection for.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub database: &'a str,
    pub user: &'a str,
    /// The `[[limit]]` rule that caps connections for this database and user.
    pub limit: Option<usize>,
    /// The settings a connection must have logged in with
    /// (`server::settings::hash` of the client's start-up parameters).
    pub settings: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// An idle pooled connection, now IN_USE by the caller.
    Pooled(usize),
    /// An empty (or evicted) slot, now INIT by the caller, which must connect
    /// and then call `publish_new` or `abandon_new`.
    New(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became available after waiting {0:.1?}")]
    Timeout(Duration),
    #[error("the pooler is shutting down")]
    ShuttingDown,
}

/// Longest single sleep while waiting; bounds the delay when a wake-up is
/// missed (for example a process that died between handing a slot over and
/// ringing, or a nudge to a waiter that was just leaving).
const MAX_NAP: Duration = Duration::from_millis(100);

/// A key no want has (`identity_key` is never 0): choosing for it finds
/// only waiters that may create a connection.
const NO_KEY: u64 = 0;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Gets a slot for `want`, waiting until `deadline` when none can be had.
///
/// A worker that finds nothing joins the line and sleeps on its own bell
/// until a connection is handed to it, a nudge says one may be free or
/// empty, or `MAX_NAP` passes; each time it looks at the slots again,
/// keeping its place. It leaves the line at the deadline or at shutdown,
/// unless a slot was handed to it first: then it takes that slot.
pub fn acquire(
    seg: &Segment,
    want: Want<'_>,
    me: i32,
    deadline: Instant,
) -> Result<Acquired, PoolError> {
    let started = Instant::now();
    if seg.shutting_down() {
        return Err(PoolError::ShuttingDown);
    }
    if let Some(got) = try_acquire(seg, want, me) {
        return Ok(got);
    }
    let wanted = Wanted {
        key: identity_key(want.database, want.user),
        settings: want.settings,
        limit: want.limit,
    };
    let mut ticket = None;
    loop {
        let Some(place) = seg.line().enter(wanted, me, ticket) else {
            return poll(seg, want, me, started, deadline);
        };
        ticket = Some(place.ticket());
        if let Some(got) = wait_in_line(seg, place, want, me, deadline) {
            return Ok(got);
        }
        if seg.shutting_down() {
            return Err(PoolError::ShuttingDown);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PoolError::Timeout(now - started));
        }
        // A connection handed over turned out unusable (flushed, stale):
        // back in line, at the same place.
    }
}

/// Waits in line for a slot, and leaves the line whatever happens. `None`
/// at the deadline, at shutdown, or when what was handed over could not be
/// used.
fn wait_in_line(
    seg: &Segment,
    place: Place<'_>,
    want: Want<'_>,
    me: i32,
    deadline: Instant,
) -> Option<Acquired> {
    loop {
        let bell = place.bell();
        let found = if place.granted() {
            None
        } else {
            try_acquire(seg, want, me)
        };
        if found.is_none() && !place.granted() && !seg.shutting_down() {
            let now = Instant::now();
            if now < deadline {
                place.sleep(bell, (deadline - now).min(MAX_NAP));
                continue;
            }
        }
        let rung = place.bell() != bell;
        return match (found, place.leave()) {
            (None, Left::Withdrew) => {
                if rung {
                    // Nudged after our last look and leaving: whatever
                    // was freed goes to the next one.
                    nudge_creator(seg);
                }
                None
            }
            (found, Left::Withdrew) => found,
            // The scan itself took the slot handed to us.
            (Some(Acquired::Pooled(i)), Left::Granted(j)) if i == j => Some(Acquired::Pooled(i)),
            (found, Left::Granted(j)) => {
                // Two slots: keep the one handed over (pooled, ready) and
                // give back what the scan found.
                if let Some(other) = found {
                    give_back(seg, other, me);
                }
                take_handed(seg, j, want, me)
            }
        };
    }
}

/// Waiting without a place in line (every cell taken): look at the slots
/// whenever any is given back, as the line's workers are rung one by one.
fn poll(
    seg: &Segment,
    want: Want<'_>,
    me: i32,
    started: Instant,
    deadline: Instant,
) -> Result<Acquired, PoolError> {
    loop {
        if seg.shutting_down() {
            return Err(PoolError::ShuttingDown);
        }
        // Read before scanning: a release that lands after the scan bumps it
        // and the wait below returns at once.
        let seen = seg.wake_seq();
        if let Some(got) = try_acquire(seg, want, me) {
            return Ok(got);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PoolError::Timeout(now - started));
        }
        seg.wait_for_change(seen, (deadline - now).min(MAX_NAP));
    }
}

/// Takes the slot handed to `me` (HANDED → IN_USE). `None`, with the slot
/// given on or closed, when it is not one `want` can use after all: flushed
/// or stale since it was handed over (or an identity-hash collision).
fn take_handed(seg: &Segment, index: usize, want: Want<'_>, me: i32) -> Option<Acquired> {
    let slot = seg.slots().get(index)?;
    slot.transition(SlotState::Handed, me, SlotState::InUse, me)
        .ok()?;
    let key = identity_key(want.database, want.user);
    if suits(slot, key, want)
        && slot.matches(want.database, want.user)
        && is_current(seg, slot)
        && !slot.close_on_release()
    {
        slot.touch(now_ms());
        return Some(Acquired::Pooled(index));
    }
    release(seg, index, me);
    None
}

/// Gives back a slot acquired but not wanted any more, untouched.
fn give_back(seg: &Segment, got: Acquired, me: i32) {
    match got {
        Acquired::Pooled(i) => {
            release(seg, i, me);
        }
        Acquired::New(i) => abandon_new(seg, i, me),
    }
}

/// Whether the slot's connection is to the current primary and was opened
/// since the last `switch-to`. A stale connection is never handed out nor
/// pooled again; the supervisor closes it.
pub fn is_current(seg: &Segment, slot: &Slot) -> bool {
    let primary = seg.primary();
    slot.server() == primary.server && slot.epoch() == primary.epoch
}

/// Whether an idle connection is one `want` may be given: same database,
/// user and login settings. Read before owning the slot it is a hint;
/// `try_acquire` confirms it once the slot is its own.
fn suits(slot: &Slot, key: u64, want: Want<'_>) -> bool {
    slot.key() == key && slot.settings() == want.settings
}

/// One pass over the slots: reuse, else create within the limits. A new
/// connection is for the segment's primary as this pass reads it: the
/// caller connects to the server the slot records (`Slot::server`).
pub fn try_acquire(seg: &Segment, want: Want<'_>, me: i32) -> Option<Acquired> {
    let key = identity_key(want.database, want.user);
    for (i, slot) in seg.slots().iter().enumerate() {
        let (state, owner) = slot.snapshot();
        if state == SlotState::Handed && owner == me {
            // Handed to us by a releaser that did not get to grant it
            // (it died, or we left the line in between): ours to take.
            match take_handed(seg, i, want, me) {
                Some(got) => return Some(got),
                None => continue,
            }
        }
        if !suits(slot, key, want) || state != SlotState::Free || !is_current(seg, slot) {
            continue;
        }
        if !slot.try_take_free(me) {
            continue;
        }
        if !is_current(seg, slot) {
            // A switch in between: the supervisor closes it.
            let _ = slot.transition(SlotState::InUse, me, SlotState::Remove, NO_OWNER);
            continue;
        }
        // The key and settings were read before we owned the slot: confirm
        // them and the names now that nobody else can change them.
        if suits(slot, key, want) && slot.matches(want.database, want.user) {
            slot.touch(now_ms());
            return Some(Acquired::Pooled(i));
        }
        // A hash collision: back FREE as if never looked at (ringing
        // could ring ourselves, and we would take it again).
        let _ = slot.transition(SlotState::InUse, me, SlotState::Free, NO_OWNER);
    }

    let limit = seg.limit(want.limit);
    if let Some(l) = limit {
        if !l.try_reserve() {
            return None;
        }
    }
    if let Some(i) = reserve_empty(seg, want, me) {
        return Some(Acquired::New(i));
    }
    if let Some(i) = evict_idle(seg, want, me) {
        return Some(Acquired::New(i));
    }
    if let Some(l) = limit {
        l.release();
    }
    None
}

fn reserve_empty(seg: &Segment, want: Want<'_>, me: i32) -> Option<usize> {
    for (i, slot) in seg.slots().iter().enumerate() {
        if slot.state() == SlotState::NotInit && slot.try_reserve(me) {
            stamp(seg, slot, want);
            return Some(i);
        }
    }
    None
}

/// Records `want` in a slot the caller just reserved, for the primary and
/// epoch read in one load: the slot is current until the next switch.
fn stamp(seg: &Segment, slot: &Slot, want: Want<'_>) {
    let primary = seg.primary();
    slot.set_settings(want.settings);
    slot.set_identity(
        want.database,
        want.user,
        want.limit,
        primary.server,
        primary.epoch,
        now_ms(),
    );
}

/// Takes over the least recently used idle connection of another database,
/// user or login settings (or a stale one of any), so that a full pool of
/// idle connections cannot starve a newcomer.
fn evict_idle(seg: &Segment, want: Want<'_>, me: i32) -> Option<usize> {
    let key = identity_key(want.database, want.user);
    loop {
        let victim = seg
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.state() == SlotState::Free && (!suits(s, key, want) || !is_current(seg, s))
            })
            .min_by_key(|(_, s)| s.last_used_ms())
            .map(|(i, _)| i)?;
        let slot = &seg.slots()[victim];
        if slot.try_evict(me) {
            if let Some(old) = seg.limit(slot.limit_index()) {
                old.release();
            }
            stamp(seg, slot, want);
            return Some(victim);
        }
    }
}

/// The new connection is up and its socket is with the supervisor.
pub fn publish_new(seg: &Segment, index: usize, me: i32) -> bool {
    seg.slots().get(index).is_some_and(|s| {
        s.transition(SlotState::Init, me, SlotState::InUse, me)
            .is_ok()
    })
}

/// Creating the connection failed: give the slot back empty.
pub fn abandon_new(seg: &Segment, index: usize, me: i32) {
    let Some(slot) = seg.slots().get(index) else {
        return;
    };
    let limit = slot.limit_index();
    if slot.snapshot() != (SlotState::Init, me) {
        return;
    }
    slot.clear_flags();
    slot.clear_backend();
    if slot
        .transition(SlotState::Init, me, SlotState::NotInit, NO_OWNER)
        .is_ok()
    {
        if let Some(l) = seg.limit(limit) {
            l.release();
        }
        emptied(seg);
    }
}

/// What the holder of a connection knows of its state when giving it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Idle outside a transaction, with nothing of the client's session
    /// left that matters (reset done where the pipeline needs one).
    Clean,
    /// In a state nobody can vouch for: mid-transaction, out of step, or
    /// the client or server went away.
    Dirty,
    /// `server_reset_query` did not leave the connection idle and clean.
    ResetFailed,
}

/// Why `check_in` closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its login cannot be proved by another client (relayed SCRAM).
    NotShareable,
    /// It was flushed while in use (`Slot::close_on_release`).
    Flushed,
    /// It was opened for a server that is no longer the primary, or
    /// before the last switch (`is_current`).
    Stale,
    Dirty,
    ResetFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckedIn {
    /// Back in the pool, FREE.
    Kept,
    /// REMOVE: the supervisor closes it.
    Closed(Closed),
    /// The caller did not hold the slot IN_USE; nothing changed.
    NotHeld,
}

/// Whether another client may ever be given this connection. A relayed
/// SCRAM login (or an unreadable proof) may not: nothing a later client
/// sends can be checked against it. Owner only (reads the proof).
pub fn may_be_shared(slot: &Slot) -> bool {
    AuthProof::decode(&slot.proof()) != AuthProof::NotReusable
}

/// Gives back a connection `me` holds IN_USE, deciding alone whether it is
/// kept (FREE) or closed (REMOVE): closed when the caller's verdict is not
/// clean, when it may not be shared, when it was flushed meanwhile, or when
/// it belongs to a primary that was switched away from.
pub fn check_in(seg: &Segment, index: usize, me: i32, verdict: Verdict) -> CheckedIn {
    let Some(slot) = seg.slots().get(index) else {
        return CheckedIn::NotHeld;
    };
    if slot.snapshot() != (SlotState::InUse, me) {
        return CheckedIn::NotHeld;
    }
    let close = match verdict {
        Verdict::Dirty => Some(Closed::Dirty),
        Verdict::ResetFailed => Some(Closed::ResetFailed),
        Verdict::Clean if !may_be_shared(slot) => Some(Closed::NotShareable),
        Verdict::Clean if slot.close_on_release() => Some(Closed::Flushed),
        Verdict::Clean if !is_current(seg, slot) => Some(Closed::Stale),
        Verdict::Clean => None,
    };
    let done = match close {
        Some(why) => discard(seg, index, me).then_some(CheckedIn::Closed(why)),
        None => release(seg, index, me).then_some(CheckedIn::Kept),
    };
    done.unwrap_or(CheckedIn::NotHeld)
}

/// The keep path of `check_in`: back to the pool, unless the connection
/// was flushed while in use (`Slot::close_on_release`) or is stale
/// (`is_current`): then the supervisor closes it (REMOVE). Workers go
/// through `check_in`.
pub(crate) fn release(seg: &Segment, index: usize, me: i32) -> bool {
    let Some(slot) = seg.slots().get(index) else {
        return false;
    };
    if slot.close_on_release() || !is_current(seg, slot) {
        return discard(seg, index, me);
    }
    slot.touch(now_ms());
    hand_on(seg, index, SlotState::InUse, me)
}

/// Gives a clean, current connection its holder has as `(from, owner)` to
/// the longest waiter that can use it: handed over directly (HANDED, owner
/// the waiter's pid) when it wants this database, user and settings;
/// otherwise the slot goes FREE and that waiter is nudged to evict it. With
/// nobody waiting it just goes FREE. Only the waiter it goes to is woken.
/// False when the caller did not hold the slot.
///
/// Handing over moves the slot first and grants the waiter's cell second:
/// if the waiter left the line in between, the grant fails and the slot is
/// taken back (HANDED → the next waiter, or FREE); if the releaser dies in
/// between, the waiter finds the slot HANDED to it at its next look
/// (`try_acquire`), at most `MAX_NAP` later; if the waiter dies, the
/// supervisor hands the slot on (`reclaim_owner`).
fn hand_on(seg: &Segment, index: usize, from: SlotState, owner: i32) -> bool {
    let Some(slot) = seg.slots().get(index) else {
        return false;
    };
    let (key, settings) = (slot.key(), slot.settings());
    let line = seg.line();
    let (mut from, mut owner, mut ours) = (from, owner, true);
    loop {
        let pick = line.choose(key, settings, |limit| has_room(seg, limit));
        if let Some(p) = pick.filter(|p| p.matches) {
            if slot
                .transition(from, owner, SlotState::Handed, p.pid())
                .is_err()
            {
                // Not ours to begin with; or, taking it back, the waiter
                // took it after all or the supervisor reclaimed it.
                return !ours;
            }
            if line.grant(&p, index) {
                return true;
            }
            (from, owner, ours) = (SlotState::Handed, p.pid(), false);
            continue;
        }
        if slot
            .transition(from, owner, SlotState::Free, NO_OWNER)
            .is_err()
        {
            return !ours;
        }
        // Against a worker joining the line meanwhile: it fences between
        // joining and looking at the slots, we between freeing and looking
        // at the line, so it sees the slot FREE or we see it waiting.
        fence(Ordering::SeqCst);
        if let Some(p) = line.choose(key, settings, |limit| has_room(seg, limit)) {
            line.nudge(&p);
        }
        seg.notify();
        return true;
    }
}

/// Whether a waiter under `limit` could open a connection now.
fn has_room(seg: &Segment, limit: Option<usize>) -> bool {
    seg.limit(limit).is_none_or(|l| l.active() < l.max_size())
}

/// A slot was emptied (and its limit charge released): wake the longest
/// waiter that may open a connection in it.
fn emptied(seg: &Segment) {
    fence(Ordering::SeqCst);
    nudge_creator(seg);
    seg.notify();
}

fn nudge_creator(seg: &Segment) {
    let line = seg.line();
    if let Some(p) = line.choose(NO_KEY, 0, |limit| has_room(seg, limit)) {
        line.nudge(&p);
    }
}

/// The close path of `check_in`: the supervisor closes the connection.
pub(crate) fn discard(seg: &Segment, index: usize, me: i32) -> bool {
    seg.slots().get(index).is_some_and(|s| {
        s.transition(SlotState::InUse, me, SlotState::Remove, NO_OWNER)
            .is_ok()
    })
}

/// Supervisor: takes back every slot a dead worker held, and its place in
/// the line. Returns the slots whose connection must be closed (their
/// state is unknown) and then passed to `finish_remove`.
pub fn reclaim_owner(seg: &Segment, dead: i32) -> Vec<usize> {
    let mut to_close = Vec::new();
    if dead == NO_OWNER {
        return to_close;
    }
    // Out of the line first, so that nothing below is handed to it.
    seg.line().reclaim(dead);
    for (i, slot) in seg.slots().iter().enumerate() {
        let (state, owner) = slot.snapshot();
        if owner != dead {
            continue;
        }
        match state {
            SlotState::Init => abandon_new(seg, i, dead),
            SlotState::NotInit | SlotState::Free => {}
            // Handed over clean to a worker that died before taking it:
            // the next waiter gets it, unless it may not be pooled now.
            SlotState::Handed if !slot.close_on_release() && is_current(seg, slot) => {
                hand_on(seg, i, SlotState::Handed, dead);
            }
            other => {
                if slot
                    .transition(other, dead, SlotState::Remove, NO_OWNER)
                    .is_ok()
                {
                    to_close.push(i);
                }
            }
        }
    }
    to_close
}

/// Supervisor: the connection of a REMOVE slot is closed; empty the slot.
pub fn finish_remove(seg: &Segment, index: usize) -> bool {
    empty(seg, index, SlotState::Remove, NO_OWNER)
}

/// A prefill helper opening a connection ahead of demand: charges the limit
/// rule and reserves an empty slot, never evicting an idle connection of
/// another database or user. The caller fills the slot
/// (`server::fill_slot`) and checks it in, or calls `abandon_new`.
pub fn reserve_for_prefill(seg: &Segment, want: Want<'_>, me: i32) -> Option<usize> {
    let limit = seg.limit(want.limit);
    if let Some(l) = limit {
        if !l.try_reserve() {
            return None;
        }
    }
    let got = reserve_empty(seg, want, me);
    if got.is_none() {
        if let Some(l) = limit {
            l.release();
        }
    }
    got
}

/// Supervisor or upkeep helper: takes an idle connection to check it
/// (`check` is IDLE_CHECK, MAX_CONNECTION_AGE or VALIDATION), so that no
/// worker can take it meanwhile.
pub fn take_for_check(seg: &Segment, index: usize, check: SlotState, me: i32) -> bool {
    seg.slots()
        .get(index)
        .is_some_and(|s| s.transition(SlotState::Free, NO_OWNER, check, me).is_ok())
}

/// The check passed: the connection goes back to the pool (or to the
/// longest waiter), its idle time unchanged.
pub fn return_checked(seg: &Segment, index: usize, check: SlotState, me: i32) -> bool {
    hand_on(seg, index, check, me)
}

/// The check failed: the supervisor is to close the connection (REMOVE).
pub fn condemn_checked(seg: &Segment, index: usize, check: SlotState, me: i32) -> bool {
    seg.slots()
        .get(index)
        .is_some_and(|s| s.transition(check, me, SlotState::Remove, NO_OWNER).is_ok())
}

/// Supervisor: it closed the connection of a slot it held for a check;
/// empty the slot.
pub fn finish_checked(seg: &Segment, index: usize, check: SlotState, me: i32) -> bool {
    empty(seg, index, check, me)
}

/// `(from, owner)` → NOTINIT, releasing the slot's limit charge and waking
/// the longest waiter that may open a connection.
fn empty(seg: &Segment, index: usize, from: SlotState, owner: i32) -> bool {
    let Some(slot) = seg.slots().get(index) else {
        return false;
    };
    let limit = slot.limit_index();
    if slot.snapshot() != (from, owner) {
        return false;
    }
    // Only the holder gets here, and nobody can take the slot before the
    // swap below publishes it empty: everything that belonged to the
    // connection is cleared first, never after.
    slot.clear_flags();
    slot.clear_backend();
    let ok = slot
        .transition(from, owner, SlotState::NotInit, NO_OWNER)
        .is_ok();
    if ok {
        if let Some(l) = seg.limit(limit) {
            l.release();
        }
        emptied(seg);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(db: &str) -> Want<'_> {
        Want {
            database: db,
            user: "u",
            limit: Some(0),
            settings: 0,
        }
    }

    #[test]
    fn new_then_pooled_for_the_same_identity() {
        let seg = Segment::create(2, &[2]).unwrap();
        let a = try_acquire(&seg, want("d"), 10).unwrap();
        let Acquired::New(i) = a else {
            panic!("expected a new slot, got {a:?}")
        };
        assert!(publish_new(&seg, i, 10));
        assert!(release(&seg, i, 10));
        assert_eq!(try_acquire(&seg, want("d"), 11), Some(Acquired::Pooled(i)));
        assert_eq!(seg.limits()[0].active(), 1);
    }

    #[test]
    fn other_login_settings_get_their_own_connection() {
        let seg = Segment::create(1, &[]).unwrap();
        let plain = Want {
            limit: None,
            ..want("d")
        };
        let Some(Acquired::New(i)) = try_acquire(&seg, plain, 10) else {
            panic!("expected a new slot")
        };
        assert!(publish_new(&seg, i, 10));
        assert!(release(&seg, i, 10));
        let timeout = Want {
            settings: 7,
            ..plain
        };
        // Not the idle connection made without the setting: its slot is
        // taken over for a new one, as for another identity.
        assert_eq!(try_acquire(&seg, timeout, 11), Some(Acquired::New(i)));
        assert_eq!(seg.slots()[i].settings(), 7);
        assert!(publish_new(&seg, i, 11));
        assert!(release(&seg, i, 11));
        assert_eq!(try_acquire(&seg, timeout, 12), Some(Acquired::Pooled(i)));
        assert!(release(&seg, i, 12));
        assert_eq!(try_acquire(&seg, plain, 13), Some(Acquired::New(i)));
    }

    #[test]
    fn limit_caps_new_connections() {
        let seg = Segment::create(4, &[1]).unwrap();
        assert!(matches!(
            try_acquire(&seg, want("d"), 10),
            Some(Acquired::New(_))
        ));
        assert_eq!(try_acquire(&seg, want("d"), 11), None);
    }

    #[test]
    fn evicts_an_idle_connection_of_another_database() {
        let seg = Segment::create(1, &[5]).unwrap();
        let Some(Acquired::New(i)) = try_acquire(&seg, want("a"), 10) else {
            panic!()
        };
        publish_new(&seg, i, 10);
        assert_eq!(try_acquire(&seg, want("b"), 11), None, "slot busy");
        release(&seg, i, 10);
        assert_eq!(try_acquire(&seg, want("b"), 11), Some(Acquired::New(i)));
        assert!(seg.slots()[i].matches("b", "u"));
        assert_eq!(seg.limits()[0].active(), 1, "old charge released");
    }

    #[test]
    fn reclaim_frees_a_dead_owners_slots() {
        let seg = Segment::create(3, &[3]).unwrap();
        let Some(Acquired::New(a)) = try_acquire(&seg, want("d"), 10) else {
            panic!()
        };
        publish_new(&seg, a, 10);
        let Some(Acquired::New(b)) = try_acquire(&seg, want("d"), 10) else {
            panic!()
        };
        let close = reclaim_owner(&seg, 10);
        assert_eq!(close, vec![a], "IN_USE needs closing");
        assert_eq!(seg.slots()[b].state(), SlotState::NotInit, "INIT emptied");
        assert!(finish_remove(&seg, a));
        assert!(seg.slots().iter().all(|s| s.state() == SlotState::NotInit));
        assert_eq!(seg.limits()[0].active(), 0);
    }

    #[test]
    fn checks_hold_an_idle_slot_then_return_or_empty_it() {
        let seg = Segment::create(2, &[2]).unwrap();
        let Some(Acquired::New(i)) = try_acquire(&seg, want("d"), 10) else {
            panic!()
        };
        assert!(!take_for_check(&seg, i, SlotState::IdleCheck, 1), "INIT");
        publish_new(&seg, i, 10);
        release(&seg, i, 10);
        let used = seg.slots()[i].last_used_ms();
        assert!(take_for_check(&seg, i, SlotState::Validation, 1));
        assert_eq!(try_acquire(&seg, want("d"), 11), Some(Acquired::New(1 - i)));
        assert!(
            !return_checked(&seg, i, SlotState::Validation, 2),
            "not owner"
        );
        assert!(return_checked(&seg, i, SlotState::Validation, 1));
        assert_eq!(seg.slots()[i].last_used_ms(), used, "idle time kept");
        assert!(take_for_check(&seg, i, SlotState::IdleCheck, 1));
        assert!(finish_checked(&seg, i, SlotState::IdleCheck, 1));
        assert_eq!(seg.slots()[i].state(), SlotState::NotInit);
        assert_eq!(seg.limits()[0].active(), 1, "only the other slot counts");
        abandon_new(&seg, 1 - i, 11);
        let Some(Acquired::New(j)) = try_acquire(&seg, want("d"), 12) else {
            panic!()
        };
        publish_new(&seg, j, 12);
        release(&seg, j, 12);
        assert!(take_for_check(&seg, j, SlotState::Validation, 1));
        assert!(condemn_checked(&seg, j, SlotState::Validation, 1));
        assert!(finish_remove(&seg, j));
        assert_eq!(seg.limits()[0].active(), 0);
        // A helper that dies while validating: its slot is reclaimed for
        // closing, as its connection's state is unknown.
        let Some(Acquired::New(k)) = try_acquire(&seg, want("d"), 13) else {
            panic!()
        };
        publish_new(&seg, k, 13);
        release(&seg, k, 13);
        assert!(take_for_check(&seg, k, SlotState::Validation, 77));
        assert_eq!(reclaim_owner(&seg, 77), vec![k]);
        assert!(finish_remove(&seg, k));
        assert_eq!(seg.limits()[0].active(), 0);
    }

    #[test]
    fn prefill_reserves_only_empty_slots_within_the_limit() {
        let seg = Segment::create(2, &[1, 5]).unwrap();
        let mut other = want("o");
        other.limit = Some(1);
        let Some(Acquired::New(i)) = try_acquire(&seg, other, 10) else {
            panic!()
        };
        publish_new(&seg, i, 10);
        release(&seg, i, 10);
        let j = reserve_for_prefill(&seg, want("d"), 20).unwrap();
        assert_ne!(i, j);
        assert_eq!(seg.slots()[j].snapshot(), (SlotState::Init, 20));
        abandon_new(&seg, j, 20);
        // max_size 1 of rule 0: a second reservation is refused and the
        // charge given back.
        let j = reserve_for_prefill(&seg, want("d"), 20).unwrap();
        assert_eq!(reserve_for_prefill(&seg, want("d"), 21), None);
        assert_eq!(seg.limits()[0].active(), 1);
        abandon_new(&seg, j, 20);
        // No empty slot: the idle connection of "o" is not evicted.
        let mut big = want("o2");
        big.limit = Some(1);
        let Some(Acquired::New(k)) = try_acquire(&seg, big, 30) else {
            panic!()
        };
        assert_eq!(reserve_for_prefill(&seg, want("d"), 20), None);
        assert_eq!(seg.limits()[0].active(), 0, "charge released");
        assert_eq!(seg.slots()[i].state(), SlotState::Free);
        abandon_new(&seg, k, 30);
    }

    #[test]
    fn a_connection_flushed_in_use_is_removed_on_release() {
        let seg = Segment::create(2, &[2]).unwrap();
        let Some(Acquired::New(i)) = try_acquire(&seg, want("d"), 10) else {
            panic!()
        };
        publish_new(&seg, i, 10);
        seg.slots()[i].mark_close_on_release();
        assert!(release(&seg, i, 10));
        assert_eq!(seg.slots()[i].state(), SlotState::Remove);
        assert!(finish_remove(&seg, i));
        assert!(
            !seg.slots()[i].close_on_release(),
            "cleared with the connection"
        );
        assert_eq!(seg.limits()[0].active(), 0);
    }

    /// After a switch no connection opened before it is handed out or
    /// pooled: an in-use one goes to REMOVE when given back, an idle one is
    /// passed over (and evicted for room), and new ones record the new
    /// primary and epoch.
    #[test]
    fn stale_connections_are_never_handed_out_or_pooled() {
        let seg = Segment::create(2, &[]).unwrap();
        let mut w = want("d");
        w.limit = None;
        let Some(Acquired::New(idle)) = try_acquire(&seg, w, 10) else {
            panic!()
        };
        publish_new(&seg, idle, 10);
        let Some(Acquired::New(busy)) = try_acquire(&seg, w, 11) else {
            panic!()
        };
        publish_new(&seg, busy, 11);
        assert!(release(&seg, idle, 10));
        assert!(is_current(&seg, &seg.slots()[idle]));

        let now = seg.switch_primary(1);
        assert!(!is_current(&seg, &seg.slots()[idle]));
        assert!(release(&seg, busy, 11));
        assert_eq!(seg.slots()[busy].state(), SlotState::Remove, "not pooled");
        assert!(finish_remove(&seg, busy));

        // A slot recorded for the old primary in the instant of a switch
        // is not pooled either.
        let Some(Acquired::New(i)) = try_acquire(&seg, w, 12) else {
            panic!("the idle stale connection was handed out")
        };
        assert_eq!(i, busy, "the empty slot first");
        seg.slots()[i].set_identity("d", "u", None, 0, now.epoch, 0);
        assert!(!is_current(&seg, &seg.slots()[i]));
        publish_new(&seg, i, 12);
        assert!(release(&seg, i, 12));
        assert_eq!(seg.slots()[i].state(), SlotState::Remove);
        assert!(finish_remove(&seg, i));

        // New connections: the empty slot, then the stale idle one evicted
        // for room, both for the new primary and epoch.
        let a = try_acquire(&seg, w, 13);
        let b = try_acquire(&seg, w, 14);
        assert_eq!(
            (a, b),
            (Some(Acquired::New(busy)), Some(Acquired::New(idle)))
        );
        for (i, me) in [(busy, 13), (idle, 14)] {
            let slot = &seg.slots()[i];
            assert_eq!((slot.server(), slot.epoch()), (now.server, now.epoch));
            publish_new(&seg, i, me);
            assert!(release(&seg, i, me));
        }
        assert_eq!(try_acquire(&seg, w, 15), Some(Acquired::Pooled(0)));
    }

    /// Backend and client key belong to the connection: an emptied slot
    /// keeps neither (they are cleared while the slot is still held).
    #[test]
    fn an_emptied_slot_keeps_nothing_of_its_connection() {
        let seg = Segment::create(1, &[1]).unwrap();
        let Some(Acquired::New(i)) = try_acquire(&seg, want("d"), 10) else {
            panic!()
        };
        let slot = &seg.slots()[i];
        slot.set_backend(4242, 77);
        slot.set_client_key(5);
        publish_new(&seg, i, 10);
        discard(&seg, i, 10);
        assert!(finish_remove(&seg, i));
        assert_eq!(
            (slot.backend_pid(), slot.backend_key(), slot.client_key()),
            (0, 0, 0)
        );
    }

    #[test]
    fn acquire_times_out_then_succeeds_after_release() {
        let seg = Segment::create(1, &[1]).unwrap();
        let Some(Acquired::New(i)) = try_acquire(&seg, want("d"), 10) else {
            panic!()
        };
        publish_new(&seg, i, 10);
        let t = Instant::now();
        let err = acquire(
            &seg,
            want("d"),
            11,
            Instant::now() + Duration::from_millis(150),
        );
        assert!(matches!(err, Err(PoolError::Timeout(_))));
        assert!(t.elapsed() >= Duration::from_millis(140));
        release(&seg, i, 10);
        let got = acquire(&seg, want("d"), 11, Instant::now() + Duration::from_secs(1));
        assert_eq!(got.unwrap(), Acquired::Pooled(i));
    }

    /// A slot of `want("d")` held IN_USE by `me`, with a proof that lets
    /// it be shared.
    fn held(seg: &Segment, me: i32) -> usize {
        let Some(Acquired::New(i)) = try_acquire(seg, want("d"), me) else {
            panic!("no slot")
        };
        seg.slots()[i].set_proof(&AuthProof::Nothing.encode());
        assert!(publish_new(seg, i, me));
        i
    }

    #[test]
    fn check_in_keeps_only_a_clean_shareable_connection() {
        let seg = Segment::create(1, &[1]).unwrap();
        let i = held(&seg, 10);
        assert_eq!(check_in(&seg, i, 10, Verdict::Clean), CheckedIn::Kept);
        assert_eq!(seg.slots()[i].state(), SlotState::Free);
        assert_eq!(try_acquire(&seg, want("d"), 11), Some(Acquired::Pooled(i)));
    }

    #[test]
    fn check_in_closes_what_may_not_be_kept() {
        type Prepare = fn(&Slot);
        let cases: [(Prepare, Verdict, Closed); 4] = [
            (|_| {}, Verdict::Dirty, Closed::Dirty),
            (|_| {}, Verdict::ResetFailed, Closed::ResetFailed),
            (
                |s| {
                    s.set_proof(&AuthProof::NotReusable.encode());
                },
                Verdict::Clean,
                Closed::NotShareable,
            ),
            (
                |s| s.mark_close_on_release(),
                Verdict::Clean,
                Closed::Flushed,
            ),
        ];
        for (prepare, verdict, why) in cases {
            let seg = Segment::create(1, &[1]).unwrap();
            let i = held(&seg, 10);
            prepare(&seg.slots()[i]);
            assert_eq!(
                check_in(&seg, i, 10, verdict),
                CheckedIn::Closed(why),
                "{verdict:?}"
            );
            assert_eq!(seg.slots()[i].state(), SlotState::Remove, "{why:?}");
            assert!(finish_remove(&seg, i));
            assert_eq!(seg.limits()[0].active(), 0);
        }
    }

    #[test]
    fn a_relayed_scram_login_is_closed_even_with_a_clean_verdict_and_never_pooled() {
        let seg = Segment::create(1, &[1]).unwrap();
        let i = held(&seg, 10);
        seg.slots()[i].set_proof(&AuthProof::NotReusable.encode());
        assert!(!may_be_shared(&seg.slots()[i]));
        check_in(&seg, i, 10, Verdict::Clean);
        assert_eq!(try_acquire(&seg, want("d"), 11), None, "never FREE");
    }

    #[test]
    fn check_in_by_a_non_holder_changes_nothing() {
        let seg = Segment::create(2, &[2]).unwrap();
        let i = held(&seg, 10);
        assert_eq!(check_in(&seg, i, 11, Verdict::Clean), CheckedIn::NotHeld);
        assert_eq!(check_in(&seg, i, 11, Verdict::Dirty), CheckedIn::NotHeld);
        assert_eq!(seg.slots()[i].snapshot(), (SlotState::InUse, 10));
        assert_eq!(check_in(&seg, 7, 10, Verdict::Clean), CheckedIn::NotHeld);
        assert_eq!(check_in(&seg, i, 10, Verdict::Clean), CheckedIn::Kept);
        assert_eq!(check_in(&seg, i, 10, Verdict::Clean), CheckedIn::NotHeld);
        assert_eq!(seg.slots()[i].state(), SlotState::Free);
    }
}

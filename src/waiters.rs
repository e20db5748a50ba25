//! The line of workers waiting for a server connection, in the shared
//! segment: a fixed array of cells, one per waiting worker, each with its
//! own futex word (its bell). A connection given back is handed to the
//! longest waiter that can use it and only that waiter's bell rings, so a
//! release wakes one process, not every waiter (`pool::hand_on` decides who;
//! this module keeps the cells).
//!
//! # A cell's word
//!
//! State, owner pid, the slot handed over and a generation share one
//! 64-bit word, changed only by compare-and-swap:
//!
//! ```text
//! EMPTY ──enter──► SETUP ──► WAITING ──grant──► GRANTED(slot) ──leave──► EMPTY
//!                              └──────────leave (withdraw)──────────────► EMPTY
//! ```
//!
//! * Only the waiter moves its cell out of EMPTY, SETUP and GRANTED; while
//!   the cell is SETUP it writes the ticket and what it wants.
//! * A WAITING cell leaves that state exactly once: either a releaser
//!   grants it a slot, or the waiter withdraws. The two race on the same
//!   word, so a waiter that times out either withdraws or finds the grant
//!   and accepts it; a slot can never be granted to a waiter that left.
//! * The generation changes with every move, so a releaser that read a
//!   cell, then lost it to a withdrawal and a new waiter in the same cell,
//!   fails its swap instead of granting to the newcomer.
//! * The supervisor empties the cells of a dead pid (`reclaim`).
//!
//! The ticket (taken from the header's counter when the worker joins the
//! line) orders the waiters: the smallest is served first.

use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::sys::futex;

/// Workers that can wait in line at once; more wait the old way, polling
/// the slots whenever any is given back (`pool::acquire`).
pub const CELLS: usize = 4096;

const EMPTY: u64 = 0;
const SETUP: u64 = 1;
const WAITING: u64 = 2;
const GRANTED: u64 = 3;

const TAG_BITS: u32 = 2;
const SLOT_BITS: u32 = 14;
const GEN_SHIFT: u32 = TAG_BITS + SLOT_BITS;
const GEN_MASK: u64 = 0xffff;

// Every slot index fits the word's slot field.
const _: () = assert!(crate::segment::MAX_SLOTS <= 1 << SLOT_BITS);

fn pack(tag: u64, slot: usize, generation: u64, pid: i32) -> u64 {
    tag | ((slot as u64) << TAG_BITS)
        | ((generation & GEN_MASK) << GEN_SHIFT)
        | (u64::from(pid as u32) << 32)
}

fn tag(word: u64) -> u64 {
    word & ((1 << TAG_BITS) - 1)
}

fn slot_of(word: u64) -> usize {
    ((word >> TAG_BITS) & ((1 << SLOT_BITS) - 1)) as usize
}

fn generation(word: u64) -> u64 {
    (word >> GEN_SHIFT) & GEN_MASK
}

fn pid_of(word: u64) -> i32 {
    (word >> 32) as u32 as i32
}

/// `word` moved on to `tag`, for `pid`, one generation later.
fn next(word: u64, tag: u64, slot: usize, pid: i32) -> u64 {
    pack(tag, slot, generation(word).wrapping_add(1), pid)
}

/// The line's counters, in the segment's header. All-zero bytes are an
/// empty line.
#[repr(C)]
pub struct Counters {
    /// The next ticket.
    tickets: AtomicU64,
    /// Cells in SETUP or WAITING. Releasers read it first and look at the
    /// cells only when it is not zero, so giving a connection back costs
    /// one load while nobody waits.
    queued: AtomicU32,
    /// One past the highest cell ever used: scans stop there.
    high: AtomicU32,
}

/// One waiting worker. Every field is atomic; all-zero bytes are an empty
/// cell.
#[repr(C)]
pub struct Cell {
    word: AtomicU64,
    ticket: AtomicU64,
    /// `slot::identity_key` of the database and user it waits for.
    key: AtomicU64,
    /// The login settings it needs (`pool::Want::settings`).
    settings: AtomicU64,
    /// The futex word the waiter sleeps on; rung after every grant and
    /// nudge.
    bell: AtomicU32,
    /// Its `[[limit]]` rule, or -1.
    limit: AtomicI32,
}

/// What a waiter is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub key: u64,
    pub settings: u64,
    pub limit: Option<usize>,
}

/// A waiter a releaser chose, as it read the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    cell: usize,
    word: u64,
    pub ticket: u64,
    /// Its want is the connection's database, user and settings: it can
    /// be handed the connection itself.
    pub matches: bool,
}

impl Pick {
    /// The waiter's pid.
    pub fn pid(&self) -> i32 {
        pid_of(self.word)
    }
}

/// The line: its counters and its cells (`Segment::line`).
#[derive(Clone, Copy)]
pub struct Line<'a> {
    counters: &'a Counters,
    cells: &'a [Cell],
}

impl<'a> Line<'a> {
    pub fn new(counters: &'a Counters, cells: &'a [Cell]) -> Self {
        Line { counters, cells }
    }

    fn used(&self) -> &'a [Cell] {
        let high = self.counters.high.load(Ordering::Acquire) as usize;
        &self.cells[..high.min(self.cells.len())]
    }

    /// Joins the line for `wanted`, behind everyone already in it, or at
    /// `ticket` to keep a place held before. `None` when every cell is
    /// taken.
    ///
    /// Ends with a sequentially consistent fence: the caller's scan of the
    /// slots that follows and a releaser's look at the line after its own
    /// fence cannot both miss each other (`pool::hand_on`).
    pub fn enter(&self, wanted: Wanted, me: i32, ticket: Option<u64>) -> Option<Place<'a>> {
        for (index, cell) in self.cells.iter().enumerate() {
            let word = cell.word.load(Ordering::Acquire);
            if tag(word) != EMPTY {
                continue;
            }
            let setup = next(word, SETUP, 0, me);
            if cell
                .word
                .compare_exchange(word, setup, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            self.counters
                .high
                .fetch_max(index as u32 + 1, Ordering::AcqRel);
            let ticket =
                ticket.unwrap_or_else(|| self.counters.tickets.fetch_add(1, Ordering::AcqRel));
            cell.ticket.store(ticket, Ordering::Relaxed);
            cell.key.store(wanted.key, Ordering::Relaxed);
            cell.settings.store(wanted.settings, Ordering::Relaxed);
            cell.limit.store(
                wanted
                    .limit
                    .and_then(|l| i32::try_from(l).ok())
                    .unwrap_or(-1),
                Ordering::Relaxed,
            );
            self.counters.queued.fetch_add(1, Ordering::SeqCst);
            // Only the supervisor could have moved it meanwhile, and only
            // for a dead pid: not ours.
            let _ = cell.word.compare_exchange(
                setup,
                next(setup, WAITING, 0, me),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            fence(Ordering::SeqCst);
            return Some(Place {
                line: *self,
                cell: index,
                ticket,
            });
        }
        None
    }

    /// The longest waiter (smallest ticket) that can use a connection of
    /// `key` and `settings`: one that wants exactly that, or one for which
    /// `may_create` says its limit rule leaves room for a new connection
    /// (it would evict the connection, or take an emptied slot). `None`
    /// when nobody waits.
    pub fn choose(
        &self,
        key: u64,
        settings: u64,
        may_create: impl Fn(Option<usize>) -> bool,
    ) -> Option<Pick> {
        if self.counters.queued.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut best: Option<Pick> = None;
        for (index, cell) in self.used().iter().enumerate() {
            let word = cell.word.load(Ordering::Acquire);
            if tag(word) != WAITING {
                continue;
            }
            // Read after the word: if the cell changed hands meanwhile the
            // swap in `grant` fails, so a stale read is never acted on.
            let ticket = cell.ticket.load(Ordering::Relaxed);
            if best.is_some_and(|b| b.ticket <= ticket) {
                continue;
            }
            let matches = cell.key.load(Ordering::Relaxed) == key
                && cell.settings.load(Ordering::Relaxed) == settings;
            let limit = usize::try_from(cell.limit.load(Ordering::Relaxed)).ok();
            if matches || may_create(limit) {
                best = Some(Pick {
                    cell: index,
                    word,
                    ticket,
                    matches,
                });
            }
        }
        best
    }

    /// Grants `slot` to the waiter `pick` read, and wakes it. Fails when
    /// the waiter left the line (or its cell changed) since.
    pub fn grant(&self, pick: &Pick, slot: usize) -> bool {
        let Some(cell) = self.cells.get(pick.cell) else {
            return false;
        };
        let granted = next(pick.word, GRANTED, slot, pick.pid());
        if cell
            .word
            .compare_exchange(pick.word, granted, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.dequeued();
        ring(cell);
        true
    }

    /// Wakes the waiter `pick` read to look at the slots again.
    pub fn nudge(&self, pick: &Pick) {
        if let Some(cell) = self.cells.get(pick.cell) {
            ring(cell);
        }
    }

    /// Wakes every waiter (shutdown, limits changed).
    pub fn wake_all(&self) {
        for cell in self.used() {
            if tag(cell.word.load(Ordering::Acquire)) != EMPTY {
                ring(cell);
            }
        }
    }

    /// Supervisor: empties every cell of a dead process. A slot granted
    /// to it is HANDED to it and reclaimed with its other slots.
    pub fn reclaim(&self, dead: i32) {
        for cell in self.used() {
            let word = cell.word.load(Ordering::Acquire);
            if tag(word) == EMPTY || pid_of(word) != dead {
                continue;
            }
            let emptied = cell
                .word
                .compare_exchange(
                    word,
                    next(word, EMPTY, 0, 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
            if emptied && matches!(tag(word), SETUP | WAITING) {
                self.dequeued();
            }
        }
    }

    /// The pids that hold a cell now (for the supervisor's sweep of dead
    /// owners).
    pub fn owners(&self) -> Vec<i32> {
        self.used()
            .iter()
            .map(|c| c.word.load(Ordering::Acquire))
            .filter(|w| tag(*w) != EMPTY)
            .map(pid_of)
            .collect()
    }

    /// Workers waiting in line now.
    pub fn waiting(&self) -> usize {
        self.used()
            .iter()
            .filter(|c| tag(c.word.load(Ordering::Acquire)) == WAITING)
            .count()
    }

    /// The count releasers read (cells in SETUP or WAITING).
    pub fn queued(&self) -> u32 {
        self.counters.queued.load(Ordering::SeqCst)
    }

    /// Every used cell's bell, to tell whom a release woke.
    pub fn bells(&self) -> Vec<u32> {
        self.used()
            .iter()
            .map(|c| c.bell.load(Ordering::Acquire))
            .collect()
    }

    fn dequeued(&self) {
        let _ = self
            .counters
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

fn ring(cell: &Cell) {
    cell.bell.fetch_add(1, Ordering::Release);
    futex::wake_one(&cell.bell);
}

/// A worker's place in line. It must `leave`; a worker that dies in line
/// is taken out by the supervisor.
pub struct Place<'a> {
    line: Line<'a>,
    cell: usize,
    ticket: u64,
}

/// How a worker left the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Before any slot was granted.
    Withdrew,
    /// A slot was granted first: it is HANDED to the worker, which must
    /// take it (or give it on).
    Granted(usize),
}

impl Place<'_> {
    fn cell(&self) -> &Cell {
        &self.line.cells[self.cell]
    }

    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The bell's value; read before looking at the slots, then passed to
    /// `sleep`, so that a ring in between is not slept through.
    pub fn bell(&self) -> u32 {
        self.cell().bell.load(Ordering::Acquire)
    }

    /// Whether a slot was granted.
    pub fn granted(&self) -> bool {
        tag(self.cell().word.load(Ordering::Acquire)) == GRANTED
    }

    /// Sleeps until the bell rings after `seen` was read, or `timeout`.
    pub fn sleep(&self, seen: u32, timeout: Duration) {
        futex::wait(&self.cell().bell, seen, timeout);
    }

    /// Leaves the line: withdraws, unless a slot was granted first, which
    /// the worker then accepts. One swap decides, against `grant`'s.
    pub fn leave(self) -> Left {
        let cell = self.cell();
        loop {
            let word = cell.word.load(Ordering::Acquire);
            let empty = next(word, EMPTY, 0, 0);
            let left = match tag(word) {
                WAITING => Left::Withdrew,
                GRANTED => Left::Granted(slot_of(word)),
                // Emptied by the supervisor, which takes us for dead.
                _ => return Left::Withdrew,
            };
            if cell
                .word
                .compare_exchange(word, empty, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if left == Left::Withdrew {
                    self.line.dequeued();
                }
                return left;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(n: usize) -> Line<'static> {
        let cells: &'static [Cell] = Box::leak(
            (0..n)
                .map(|_| Cell {
                    word: AtomicU64::new(0),
                    ticket: AtomicU64::new(0),
                    key: AtomicU64::new(0),
                    settings: AtomicU64::new(0),
                    bell: AtomicU32::new(0),
                    limit: AtomicI32::new(0),
                })
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let counters: &'static Counters = Box::leak(Box::new(Counters {
            tickets: AtomicU64::new(0),
            queued: AtomicU32::new(0),
            high: AtomicU32::new(0),
        }));
        Line::new(counters, cells)
    }

    const A: Wanted = Wanted {
        key: 1,
        settings: 0,
        limit: None,
    };
    const B: Wanted = Wanted {
        key: 2,
        settings: 0,
        limit: Some(0),
    };

    #[test]
    fn the_smallest_ticket_is_chosen_and_granted_once() {
        let line = fresh(4);
        let first = line.enter(A, 10, None).unwrap();
        let second = line.enter(A, 11, None).unwrap();
        assert_eq!((first.ticket(), second.ticket()), (0, 1));
        assert_eq!((line.waiting(), line.queued()), (2, 2));
        let pick = line.choose(1, 0, |_| false).unwrap();
        assert_eq!((pick.pid(), pick.matches), (10, true));
        assert!(line.grant(&pick, 7));
        assert!(!line.grant(&pick, 8), "granted twice");
        assert_eq!(line.bells(), vec![1, 0], "only the chosen waiter rang");
        assert_eq!(line.choose(1, 0, |_| false).unwrap().pid(), 11);
        assert_eq!(first.leave(), Left::Granted(7));
        assert_eq!(second.leave(), Left::Withdrew);
        assert_eq!((line.waiting(), line.queued()), (0, 0));
        assert_eq!(line.choose(1, 0, |_| true), None);
    }

    #[test]
    fn a_withdrawn_waiter_is_never_granted() {
        let line = fresh(2);
        let place = line.enter(A, 10, None).unwrap();
        let pick = line.choose(1, 0, |_| false).unwrap();
        assert_eq!(place.leave(), Left::Withdrew);
        assert!(!line.grant(&pick, 3));
        // Its cell reused by another waiter: the old pick still fails.
        let again = line.enter(A, 12, None).unwrap();
        assert!(
            !line.grant(&pick, 3),
            "granted to a newcomer by a stale read"
        );
        assert_eq!(again.leave(), Left::Withdrew);
    }

    #[test]
    fn other_wants_are_chosen_only_with_room_and_keep_their_place() {
        let line = fresh(4);
        let b = line.enter(B, 20, None).unwrap();
        let a = line.enter(A, 21, None).unwrap();
        assert_eq!(line.choose(1, 0, |_| false).unwrap().pid(), 21);
        let oldest = line.choose(1, 0, |l| l == Some(0)).unwrap();
        assert_eq!((oldest.pid(), oldest.matches), (20, false));
        // Back in line at the ticket it had: still ahead of `a`.
        let ticket = b.ticket();
        assert_eq!(b.leave(), Left::Withdrew);
        let b = line.enter(B, 20, Some(ticket)).unwrap();
        assert_eq!(line.choose(9, 0, |_| true).unwrap().pid(), 20);
        b.leave();
        a.leave();
    }

    #[test]
    fn a_dead_waiter_s_cells_are_emptied() {
        let line = fresh(2);
        let _dead = line.enter(A, 30, None).unwrap();
        let live = line.enter(A, 31, None).unwrap();
        assert_eq!(line.owners(), vec![30, 31]);
        line.reclaim(30);
        assert_eq!((line.waiting(), line.queued()), (1, 1));
        assert_eq!(line.owners(), vec![31]);
        assert_eq!(live.leave(), Left::Withdrew);
    }

    #[test]
    fn a_full_line_refuses_and_a_ring_ends_a_sleep() {
        let line = fresh(1);
        let place = line.enter(A, 10, None).unwrap();
        assert!(line.enter(A, 11, None).is_none(), "one cell only");
        let seen = place.bell();
        line.nudge(&line.choose(1, 0, |_| false).unwrap());
        // Would sleep the whole hour had the ring been missed.
        place.sleep(seen, Duration::from_secs(3600));
        assert_ne!(place.bell(), seen);
        place.leave();
    }
}

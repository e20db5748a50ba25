//! One server connection in the shared segment.
//!
//! A slot's state and its owner's pid live together in one 64-bit atomic
//! word, so that taking a slot and recording who took it is a single
//! compare-and-swap: there is no instant at which a slot is taken but has no
//! owner, which is what lets the supervisor reclaim the slots of a worker that
//! died at any point.
//!
//! # Who may touch what
//!
//! The owner rule: only the process that owns a slot (won the swap that put
//! its pid in the state word) writes the slot's fields, and it writes them
//! before the release swap that hands the slot on. The one exception is
//! `mark_close_on_release`, an atomic `fetch_or` anyone may do.
//!
//! Fields that other processes read while an owner may be writing them are
//! shared-memory types, so a concurrent read is defined and never torn:
//!
//! * atomics: state and owner, generation, key, limit, server and epoch,
//!   backend pid and key (one word, read together by cancel routing),
//!   client key, flags, timestamps, login settings;
//! * a seqlock (`Names`): database and user, read by `status`,
//!   `flush DB` and the slot listing while a worker may be rewriting them;
//!   a reader retries until it sees one whole write.
//!
//! The prepared-statement set is atomics too, although only owners use it.
//! The two start-up blobs and the authentication proof are the only plain
//! bytes: they are read only by a later owner, after the acquire swap that
//! made it owner, so the swap orders the read after the last write.
//!
//! # Login and current parameters
//!
//! A connection's reported parameters are kept twice. The login blob is
//! what the server reported when the connection was opened, written once
//! by `server::fill_slot` and unchanged until the slot is filled again: it
//! is what a client that names no value gets. The current blob starts as
//! the same bytes and follows every ParameterStatus the connection sends
//! afterwards: it is what a parameter sync compares against and what a
//! session's greeting replays. A value one client SET therefore stays in
//! the current blob only, and the next client's sync undoes it.

use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// PostgreSQL's NAMEDATALEN: database and role names are at most 63 bytes.
pub const NAME_CAPACITY: usize = 64;
/// Room for the server's ParameterStatus and BackendKeyData messages, which
/// are replayed to every client that is given this connection.
pub const STARTUP_CAPACITY: usize = 4096;
/// Room for an encoded authentication proof.
pub const PROOF_CAPACITY: usize = 48;
/// Protocol-level prepared statements recorded per server connection; the
/// least recently used is closed on the server beyond this.
pub const PREPARED_CAPACITY: usize = 128;

/// Owner pid recorded for slots nobody holds.
pub const NO_OWNER: i32 = 0;

/// Slot flag: the connection is to be closed when its holder gives it back
/// (`flush gracefully`, `switch-to`) instead of going back to the pool.
pub const CLOSE_ON_RELEASE: u32 = 1;

const NAME_WORDS: usize = NAME_CAPACITY / 8;
/// Reads of the names that may find a write in progress before the reader
/// starts yielding the processor to the writer.
const NAME_SPINS: usize = 100;
/// Then yields, until the write ends; a write that has not ended after this
/// long is taken for one whose writer died (the slot's next owner rewrites
/// the names). A live writer's write is a few dozen stores, but on a loaded
/// machine the writer can be descheduled in the middle of them for far
/// longer than that takes, so the bound is generous: only a writer that
/// died mid-write (a window of a few stores) ever makes a reader wait it
/// out.
const DEAD_WRITER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SlotState {
    /// No server connection.
    NotInit = 0,
    /// A worker is creating the server connection.
    Init = 1,
    /// Pooled and idle; any worker with the same database and user may take it.
    Free = 2,
    /// A worker is using it.
    InUse = 3,
    /// To be closed when its current user returns it.
    Gracefully = 4,
    /// To be closed now.
    Flush = 5,
    /// The supervisor is checking whether it sat idle too long.
    IdleCheck = 6,
    /// The supervisor is checking its age.
    MaxConnectionAge = 7,
    /// The supervisor is testing it.
    Validation = 8,
    /// Its connection is to be closed by the supervisor, which then frees the slot.
    Remove = 9,
}

impl SlotState {
    pub fn from_u32(v: u32) -> Option<Self> {
        use SlotState::*;
        Some(match v {
            0 => NotInit,
            1 => Init,
            2 => Free,
            3 => InUse,
            4 => Gracefully,
            5 => Flush,
            6 => IdleCheck,
            7 => MaxConnectionAge,
            8 => Validation,
            9 => Remove,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use SlotState::*;
        match self {
            NotInit => "NOTINIT",
            Init => "INIT",
            Free => "FREE",
            InUse => "IN_USE",
            Gracefully => "GRACEFULLY",
            Flush => "FLUSH",
            IdleCheck => "IDLE_CHECK",
            MaxConnectionAge => "MAX_CONNECTION_AGE",
            Validation => "VALIDATION",
            Remove => "REMOVE",
        }
    }
}

fn pack(state: SlotState, owner: i32) -> u64 {
    ((state as u32 as u64) << 32) | (owner as u32 as u64)
}

fn unpack(word: u64) -> (Option<SlotState>, i32) {
    (SlotState::from_u32((word >> 32) as u32), word as u32 as i32)
}

/// The database and user a slot's connection belongs to, as a seqlock:
/// the owner (the only writer) makes `seq` odd, stores the words and makes
/// it even again; a reader keeps a copy only if `seq` was even and the same
/// before and after it read.
#[repr(C)]
struct Names {
    seq: AtomicU32,
    /// Database length in the low 16 bits, user length in the high ones.
    lens: AtomicU32,
    database: [AtomicU64; NAME_WORDS],
    user: [AtomicU64; NAME_WORDS],
}

/// A consistent copy of a slot's database and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    database: [u8; NAME_CAPACITY],
    database_len: usize,
    user: [u8; NAME_CAPACITY],
    user_len: usize,
}

impl Identity {
    pub fn database(&self) -> &[u8] {
        &self.database[..self.database_len]
    }

    pub fn user(&self) -> &[u8] {
        &self.user[..self.user_len]
    }
}

fn store_words(words: &[AtomicU64; NAME_WORDS], bytes: &[u8]) {
    for (i, word) in words.iter().enumerate() {
        let mut w = [0u8; 8];
        let from = (i * 8).min(bytes.len());
        let to = (from + 8).min(bytes.len());
        w[..to - from].copy_from_slice(&bytes[from..to]);
        word.store(u64::from_le_bytes(w), Ordering::Relaxed);
    }
}

fn load_words(words: &[AtomicU64; NAME_WORDS]) -> [u8; NAME_CAPACITY] {
    let mut out = [0u8; NAME_CAPACITY];
    for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    out
}

impl Names {
    /// Owner only, so there is a single writer.
    fn store(&self, database: &[u8], user: &[u8]) {
        // `| 1` rather than an increment: a writer that died between the
        // two stores left `seq` odd, and this write still ends even.
        let odd = self.seq.load(Ordering::Relaxed) | 1;
        self.seq.store(odd, Ordering::Relaxed);
        // Orders the odd `seq` before the words: a reader that sees any new
        // word then sees `seq` changed (its acquire fence pairs with this).
        fence(Ordering::Release);
        self.lens.store(
            database.len() as u32 | ((user.len() as u32) << 16),
            Ordering::Relaxed,
        );
        store_words(&self.database, database);
        store_words(&self.user, user);
        self.seq.store(odd.wrapping_add(1), Ordering::Release);
    }

    fn load(&self) -> Option<Identity> {
        // The odd sequence last seen, and since when: a writer that keeps
        // the same one odd this long died in the middle of its write.
        let mut stuck: Option<(u32, Instant)> = None;
        for attempt in 0.. {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let lens = self.lens.load(Ordering::Relaxed);
                let database = load_words(&self.database);
                let user = load_words(&self.user);
                // Orders the loads above before the check of `seq` below.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == before {
                    return Some(Identity {
                        database,
                        database_len: (lens as usize & 0xffff).min(NAME_CAPACITY),
                        user,
                        user_len: (lens as usize >> 16).min(NAME_CAPACITY),
                    });
                }
            } else {
                match stuck {
                    Some((seq, since)) if seq == before => {
                        if since.elapsed() >= DEAD_WRITER {
                            return None;
                        }
                    }
                    _ => stuck = Some((before, Instant::now())),
                }
            }
            if attempt < NAME_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        None
    }
}

/// What the client that opened the connection proved (see
/// `auth::proof`), for checking later clients.
#[repr(C)]
struct ProofBlob {
    len: u32,
    bytes: [u8; PROOF_CAPACITY],
}

/// Which prepared statements the connection has: 64-bit statement hashes
/// (pgcorral's server-side names are derived from them) with a use stamp
/// each, for least-recently-used eviction. Owner only; atomics (relaxed,
/// ordered by the ownership swaps) only so that no `unsafe` is needed.
#[repr(C)]
struct PreparedSet {
    len: AtomicU32,
    clock: AtomicU32,
    hashes: [AtomicU64; PREPARED_CAPACITY],
    stamps: [AtomicU32; PREPARED_CAPACITY],
}

#[repr(C)]
struct StartupBlob {
    len: u32,
    bytes: [u8; STARTUP_CAPACITY],
}

#[repr(C)]
pub struct Slot {
    word: AtomicU64,
    /// Changes whenever the slot gets a new socket, so that a process holding
    /// a copy of an older socket can tell it is stale.
    generation: AtomicU64,
    /// Hash of (database, user): lets a worker scan for a match without
    /// reading the names.
    key: AtomicU64,
    /// Index of the `[[limit]]` rule this connection counts against, or -1.
    limit: AtomicI32,
    /// Index (in the configuration's order) of the server the connection
    /// is to; cancels for it go there.
    server: AtomicU32,
    /// Secret half of the BackendKeyData the current client was given; the
    /// process id half is the owner's pid. Lets a CancelRequest find the
    /// connection its client holds right now, and nothing else.
    client_key: AtomicI32,
    /// `CLOSE_ON_RELEASE`.
    flags: AtomicU32,
    /// The server's BackendKeyData, process id (high 32 bits) and secret
    /// key (low), in one word so that cancel routing reads a pair that
    /// belongs to one connection.
    backend: AtomicU64,
    created_ms: AtomicU64,
    last_used_ms: AtomicU64,
    /// The segment's primary epoch the connection was opened for; a
    /// `switch-to` since then makes it stale (`pool::is_current`).
    epoch: AtomicU32,
    _reserved: AtomicU32,
    /// Hash of the settings the connection logged in with
    /// (`server::settings::hash`); a pooled connection is given only to a
    /// client with equal settings. Written while the slot is INIT.
    settings: AtomicU64,
    names: Names,
    prepared: PreparedSet,
    /// The current parameters (see the module documentation).
    startup: UnsafeCell<StartupBlob>,
    /// The parameters the server reported at login.
    login: UnsafeCell<StartupBlob>,
    proof: UnsafeCell<ProofBlob>,
}

// SAFETY: every field is atomic except the two start-up blobs and the proof,
// which are written only by the slot's owner and read only by a later
// owner, ordered by the acquire/release swap that made it owner (the rule
// in the module documentation).
unsafe impl Sync for Slot {}

/// Why a transition did not happen: the state the slot was actually in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub state: Option<SlotState>,
    pub owner: i32,
}

impl Slot {
    pub fn state(&self) -> SlotState {
        unpack(self.word.load(Ordering::Acquire))
            .0
            .unwrap_or(SlotState::Remove)
    }

    pub fn owner_pid(&self) -> i32 {
        unpack(self.word.load(Ordering::Acquire)).1
    }

    /// State and owner read together, as one atomic load.
    pub fn snapshot(&self) -> (SlotState, i32) {
        let (state, owner) = unpack(self.word.load(Ordering::Acquire));
        (state.unwrap_or(SlotState::Remove), owner)
    }

    /// Moves the slot from `(from, from_owner)` to `(to, to_owner)` in one
    /// compare-and-swap. This is the only way a slot changes state.
    pub fn transition(
        &self,
        from: SlotState,
        from_owner: i32,
        to: SlotState,
        to_owner: i32,
    ) -> Result<(), Lost> {
        self.word
            .compare_exchange(
                pack(from, from_owner),
                pack(to, to_owner),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|actual| {
                let (state, owner) = unpack(actual);
                Lost { state, owner }
            })
    }

    /// Takes an idle pooled connection for `me`.
    pub fn try_take_free(&self, me: i32) -> bool {
        self.transition(SlotState::Free, NO_OWNER, SlotState::InUse, me)
            .is_ok()
    }

    /// Claims an empty slot for `me` to create a connection in.
    pub fn try_reserve(&self, me: i32) -> bool {
        self.transition(SlotState::NotInit, NO_OWNER, SlotState::Init, me)
            .is_ok()
    }

    /// Claims an idle connection of another database or user, to replace it
    /// with a new connection for `me` when no empty slot is left.
    pub fn try_evict(&self, me: i32) -> bool {
        self.transition(SlotState::Free, NO_OWNER, SlotState::Init, me)
            .is_ok()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called by the owner after it connected a new socket for this slot.
    pub fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn key(&self) -> u64 {
        self.key.load(Ordering::Acquire)
    }

    pub fn limit_index(&self) -> Option<usize> {
        usize::try_from(self.limit.load(Ordering::Acquire)).ok()
    }

    pub fn server(&self) -> u32 {
        self.server.load(Ordering::Acquire)
    }

    /// The server's process id and secret key, read together.
    pub fn backend(&self) -> (i32, i32) {
        let word = self.backend.load(Ordering::Acquire);
        ((word >> 32) as u32 as i32, word as u32 as i32)
    }

    pub fn backend_pid(&self) -> i32 {
        self.backend().0
    }

    pub fn backend_key(&self) -> i32 {
        self.backend().1
    }

    /// Owner only.
    pub fn set_backend(&self, pid: i32, key: i32) {
        let word = (u64::from(pid as u32) << 32) | u64::from(key as u32);
        self.backend.store(word, Ordering::Release);
    }

    pub fn client_key(&self) -> i32 {
        self.client_key.load(Ordering::Acquire)
    }

    /// Owner only: the cancel key of the client now using the connection.
    pub fn set_client_key(&self, key: i32) {
        self.client_key.store(key, Ordering::Release);
    }

    /// Anyone (the supervisor): the connection is not to be pooled again.
    /// `pool::release` turns it to REMOVE; a FREE slot that was marked is
    /// flushed by the supervisor.
    pub fn mark_close_on_release(&self) {
        self.flags.fetch_or(CLOSE_ON_RELEASE, Ordering::AcqRel);
    }

    pub fn close_on_release(&self) -> bool {
        self.flags.load(Ordering::Acquire) & CLOSE_ON_RELEASE != 0
    }

    /// The slot's owner, just before it empties it (→ NOTINIT): marks
    /// belong to the connection, which is gone.
    pub fn clear_flags(&self) {
        self.flags.store(0, Ordering::Release);
    }

    pub fn created_ms(&self) -> u64 {
        self.created_ms.load(Ordering::Acquire)
    }

    pub fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Acquire)
    }

    pub fn touch(&self, now_ms: u64) {
        self.last_used_ms.store(now_ms, Ordering::Release);
    }

    /// The primary epoch the connection was opened for.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records what the new connection is for: names, limit rule, and the
    /// server and primary epoch it is opened for. Only the slot's owner may
    /// call this, while the slot is INIT.
    #[allow(clippy::too_many_arguments)]
    pub fn set_identity(
        &self,
        database: &str,
        user: &str,
        limit: Option<usize>,
        server: u32,
        epoch: u32,
        now_ms: u64,
    ) {
        self.names
            .store(truncate_name(database), truncate_name(user));
        self.key
            .store(identity_key(database, user), Ordering::Release);
        self.limit.store(
            limit.and_then(|l| i32::try_from(l).ok()).unwrap_or(-1),
            Ordering::Release,
        );
        self.server.store(server, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
        self.created_ms.store(now_ms, Ordering::Release);
        self.last_used_ms.store(now_ms, Ordering::Release);
    }

    /// Hash of the settings the connection logged in with.
    pub fn settings(&self) -> u64 {
        self.settings.load(Ordering::Acquire)
    }

    /// Records the login settings of the connection about to be opened.
    /// Only the slot's owner may call this, while the slot is INIT.
    pub fn set_settings(&self, hash: u64) {
        self.settings.store(hash, Ordering::Release);
    }

    /// Whether the slot's connection is for this database and user. Exact
    /// for the slot's owner; another reader gets the answer for one whole
    /// identity the slot had while it looked.
    pub fn matches(&self, database: &str, user: &str) -> bool {
        self.identity().is_some_and(|id| {
            id.database() == truncate_name(database) && id.user() == truncate_name(user)
        })
    }

    /// A consistent copy of the database and user; `None` only if a writer
    /// died in the middle of writing them.
    pub fn identity(&self) -> Option<Identity> {
        self.names.load()
    }

    /// The owner, before publishing the slot empty: the backend and the
    /// client key belonged to the connection, which is gone.
    pub fn clear_backend(&self) {
        self.set_backend(0, 0);
        self.set_client_key(0);
    }

    /// Stores the connection's current start-up messages (parameters as
    /// they are now) for replay. Owner only. Returns false when they do
    /// not fit.
    pub fn set_startup(&self, bytes: &[u8]) -> bool {
        Self::store_blob(&self.startup, bytes)
    }

    /// Stores the parameters the server reported at login; only
    /// `server::fill_slot` calls this. Owner only. False when too large.
    pub fn set_login(&self, bytes: &[u8]) -> bool {
        Self::store_blob(&self.login, bytes)
    }

    fn store_blob(cell: &UnsafeCell<StartupBlob>, bytes: &[u8]) -> bool {
        if bytes.len() > STARTUP_CAPACITY {
            return false;
        }
        // SAFETY: only the owner writes the blob and only a later owner
        // reads it (module documentation), so nothing aliases this borrow.
        let blob = unsafe { &mut *cell.get() };
        blob.bytes[..bytes.len()].copy_from_slice(bytes);
        blob.len = bytes.len() as u32;
        true
    }

    /// Stores the authentication proof. Owner only; false if too large.
    pub fn set_proof(&self, bytes: &[u8]) -> bool {
        if bytes.len() > PROOF_CAPACITY {
            return false;
        }
        // SAFETY: owner-only, as for `set_startup`.
        let blob = unsafe { &mut *self.proof.get() };
        blob.bytes[..bytes.len()].copy_from_slice(bytes);
        blob.len = bytes.len() as u32;
        true
    }

    /// The authentication proof. Owner only.
    pub fn proof(&self) -> &[u8] {
        // SAFETY: read by the owner after the acquire swap that made it
        // owner; the length is clamped so a corrupt value cannot read out
        // of bounds.
        let blob = unsafe { &*self.proof.get() };
        &blob.bytes[..(blob.len as usize).min(PROOF_CAPACITY)]
    }

    /// Whether the connection has the statement. Owner only.
    pub fn has_prepared(&self, hash: u64) -> bool {
        self.prepared_index(hash).is_some()
    }

    fn prepared_len(&self) -> usize {
        (self.prepared.len.load(Ordering::Relaxed) as usize).min(PREPARED_CAPACITY)
    }

    /// A new use stamp.
    fn tick(&self) -> u32 {
        self.prepared
            .clock
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
    }

    fn prepared_index(&self, hash: u64) -> Option<usize> {
        let set = &self.prepared;
        let i = set.hashes[..self.prepared_len()]
            .iter()
            .position(|h| h.load(Ordering::Relaxed) == hash)?;
        set.stamps[i].store(self.tick(), Ordering::Relaxed);
        Some(i)
    }

    /// Records that the connection now has the statement. Returns the
    /// least recently used one it had to forget for room, which the caller
    /// closes on the server. Owner only.
    pub fn add_prepared(&self, hash: u64) -> Option<u64> {
        if self.prepared_index(hash).is_some() {
            return None;
        }
        let set = &self.prepared;
        let clock = self.tick();
        let n = self.prepared_len();
        if n < PREPARED_CAPACITY {
            set.hashes[n].store(hash, Ordering::Relaxed);
            set.stamps[n].store(clock, Ordering::Relaxed);
            set.len.store(n as u32 + 1, Ordering::Relaxed);
            return None;
        }
        let oldest =
            (0..n).max_by_key(|&i| clock.wrapping_sub(set.stamps[i].load(Ordering::Relaxed)))?;
        let evicted = set.hashes[oldest].swap(hash, Ordering::Relaxed);
        set.stamps[oldest].store(clock, Ordering::Relaxed);
        Some(evicted)
    }

    /// Owner only.
    pub fn remove_prepared(&self, hash: u64) {
        let set = &self.prepared;
        let n = self.prepared_len();
        if let Some(i) = set.hashes[..n]
            .iter()
            .position(|h| h.load(Ordering::Relaxed) == hash)
        {
            let last_hash = set.hashes[n - 1].load(Ordering::Relaxed);
            let last_stamp = set.stamps[n - 1].load(Ordering::Relaxed);
            set.hashes[i].store(last_hash, Ordering::Relaxed);
            set.stamps[i].store(last_stamp, Ordering::Relaxed);
            set.len.store(n as u32 - 1, Ordering::Relaxed);
        }
    }

    /// The connection has none (new, or after DISCARD ALL). Owner only.
    pub fn clear_prepared(&self) {
        self.prepared.len.store(0, Ordering::Relaxed);
    }

    /// The connection's current start-up messages. Owner only.
    pub fn startup(&self) -> &[u8] {
        // SAFETY: as for `proof`.
        let blob = unsafe { &*self.startup.get() };
        &blob.bytes[..(blob.len as usize).min(STARTUP_CAPACITY)]
    }

    /// The start-up messages as the server sent them at login. Owner only.
    pub fn login(&self) -> &[u8] {
        // SAFETY: as for `proof`.
        let blob = unsafe { &*self.login.get() };
        &blob.bytes[..(blob.len as usize).min(STARTUP_CAPACITY)]
    }
}

fn truncate_name(name: &str) -> &[u8] {
    let b = name.as_bytes();
    &b[..b.len().min(NAME_CAPACITY - 1)]
}

/// FNV-1a over database, a separator and user; never 0, so that 0 can mean
/// "no identity".
pub fn identity_key(database: &str, user: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in truncate_name(database)
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(truncate_name(user))
    {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Box<Slot> {
        // SAFETY: Slot is plain old data (atomics and byte arrays) for which
        // all-zero bytes are a valid value: NOTINIT, no owner, empty names.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn zeroed_slot_is_notinit_without_owner() {
        let s = fresh();
        assert_eq!(s.snapshot(), (SlotState::NotInit, NO_OWNER));
    }

    #[test]
    fn lifecycle_moves_only_from_the_expected_state() {
        let s = fresh();
        assert!(!s.try_take_free(10), "an empty slot is not FREE");
        assert!(s.try_reserve(10));
        assert!(!s.try_reserve(11), "reserved twice");
        assert_eq!(s.snapshot(), (SlotState::Init, 10));
        s.set_identity("db", "alice", Some(2), 0, 0, 5);
        assert!(s.matches("db", "alice"));
        assert!(!s.matches("db", "bob"));
        assert_eq!(s.limit_index(), Some(2));
        // Only the owner's pid completes the move.
        assert!(s
            .transition(SlotState::Init, 11, SlotState::InUse, 11)
            .is_err());
        s.transition(SlotState::Init, 10, SlotState::InUse, 10)
            .unwrap();
        s.transition(SlotState::InUse, 10, SlotState::Free, NO_OWNER)
            .unwrap();
        assert!(s.try_take_free(12));
        let lost = s
            .transition(SlotState::Free, NO_OWNER, SlotState::InUse, 13)
            .unwrap_err();
        assert_eq!(lost.state, Some(SlotState::InUse));
        assert_eq!(lost.owner, 12);
    }

    #[test]
    fn names_are_bounded_and_keys_differ() {
        let s = fresh();
        assert!(s.try_reserve(1));
        let long = "x".repeat(200);
        s.set_identity(&long, "u", None, 0, 0, 0);
        assert_eq!(s.identity().unwrap().database().len(), NAME_CAPACITY - 1);
        assert!(s.matches(&long, "u"));
        assert_eq!(s.limit_index(), None);
        assert_ne!(identity_key("ab", "c"), identity_key("a", "bc"));
    }

    #[test]
    fn startup_blob_round_trips_and_rejects_oversize() {
        let s = fresh();
        assert!(s.set_startup(b"hello"));
        assert_eq!(s.startup(), b"hello");
        assert!(!s.set_startup(&vec![0u8; STARTUP_CAPACITY + 1]));
        assert_eq!(s.startup(), b"hello");
        // The login blob is kept apart from the current one.
        assert!(s.set_login(b"login"));
        assert!(s.set_startup(b"now"));
        assert_eq!(s.login(), b"login");
        assert_eq!(s.startup(), b"now");
    }

    /// Forked processes hammer four slots through the pool's take/release
    /// paths; a counter per slot in a second shared mapping checks that no
    /// two processes ever hold the same slot at once.
    #[test]
    fn forked_processes_never_own_a_slot_twice() {
        use crate::pool::{self, Acquired, Want};
        use crate::segment::Segment;
        use std::sync::atomic::{AtomicU32, Ordering};

        const SLOTS: usize = 4;
        const PROCS: usize = 6;
        const ROUNDS: usize = 3000;
        let seg = Segment::create(SLOTS, &[SLOTS as u32]).unwrap();
        // holders[0..SLOTS]: live holders per slot; holders[SLOTS]: violations;
        // holders[SLOTS + 1]: successful acquisitions.
        let len = std::mem::size_of::<AtomicU32>() * (SLOTS + 2);
        // SAFETY: a fresh anonymous shared mapping of `len` bytes, zeroed by
        // the kernel; unmapped at the end of the test.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        // SAFETY: the mapping holds SLOTS + 2 zeroed u32s, valid AtomicU32s.
        let counters = unsafe { std::slice::from_raw_parts(mem as *const AtomicU32, SLOTS + 2) };

        let mut children = Vec::new();
        for _ in 0..PROCS {
            // SAFETY: the child touches only the two shared mappings with
            // atomics, never allocates or locks, and leaves with _exit, so
            // forking from the multi-threaded test harness is sound.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: getpid has no preconditions.
                let me = unsafe { libc::getpid() };
                let want = Want {
                    database: "d",
                    user: "u",
                    limit: Some(0),
                    settings: 0,
                };
                for round in 0..ROUNDS {
                    let Some(got) = pool::try_acquire(&seg, want, me) else {
                        std::hint::spin_loop();
                        continue;
                    };
                    let i = match got {
                        Acquired::Pooled(i) | Acquired::New(i) => i,
                    };
                    if counters[i].fetch_add(1, Ordering::AcqRel) != 0 {
                        counters[SLOTS].fetch_add(1, Ordering::AcqRel);
                    }
                    counters[SLOTS + 1].fetch_add(1, Ordering::AcqRel);
                    for _ in 0..(round % 50) {
                        std::hint::spin_loop();
                    }
                    counters[i].fetch_sub(1, Ordering::AcqRel);
                    if let Acquired::New(i) = got {
                        pool::publish_new(&seg, i, me);
                    }
                    // Every third round drops the connection instead, so the
                    // REMOVE and NOTINIT paths race too.
                    if round % 3 == 0 {
                        pool::discard(&seg, i, me);
                        pool::finish_remove(&seg, i);
                    } else {
                        pool::release(&seg, i, me);
                    }
                }
                // SAFETY: _exit ends the child without running the parent's
                // destructors or the test harness's atexit handlers.
                unsafe { libc::_exit(0) };
            }
            children.push(pid);
        }
        for pid in children {
            let mut status = 0;
            // SAFETY: waiting on our own child with a valid status pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        let violations = counters[SLOTS].load(Ordering::Acquire);
        let acquisitions = counters[SLOTS + 1].load(Ordering::Acquire);
        // SAFETY: unmapping the mapping created above; `counters` is unused after.
        unsafe { libc::munmap(mem, len) };
        assert_eq!(violations, 0, "a slot was owned twice");
        assert!(
            acquisitions > (PROCS * ROUNDS / 10) as u32,
            "too little contention: {acquisitions}"
        );
        assert!(seg
            .slots()
            .iter()
            .all(|s| matches!(s.state(), SlotState::Free | SlotState::NotInit)));
        assert!(seg.limits()[0].active() as usize <= SLOTS);
    }

    /// Names as `status` and `flush DB` read them, from another process.
    fn read_names(slot: &Slot) -> Option<(Vec<u8>, Vec<u8>)> {
        slot.identity()
            .map(|id| (id.database().to_vec(), id.user().to_vec()))
    }

    /// The identities the stress test writes: each name is one repeated
    /// byte, database and user differ in byte and length, so a torn read
    /// (bytes of two writes, or a length from another) shows as a pair
    /// that is not in this list.
    fn stress_identity(i: usize) -> (String, String) {
        const LENGTHS: [usize; 6] = [1, 63, 7, 40, 2, 25];
        let db = char::from(b'a' + i as u8).to_string().repeat(LENGTHS[i]);
        let user = char::from(b'A' + i as u8)
            .to_string()
            .repeat(LENGTHS[(i + 3) % 6]);
        (db, user)
    }

    /// Forked workers take slots for six identities (evicting each other's
    /// idle connections, so names are rewritten all the time) while another
    /// process reads every slot's names as `status` does: each read is
    /// either nothing yet or exactly one identity that was written.
    #[test]
    fn names_read_by_another_process_are_never_torn() {
        use crate::pool::{self, Acquired, Want};
        use crate::segment::Segment;
        use std::sync::atomic::{AtomicU32, Ordering};

        const SLOTS: usize = 3;
        const WRITERS: usize = 4;
        const ROUNDS: usize = 20_000;
        let seg = Segment::create(SLOTS, &[]).unwrap();
        // counters[0]: writers still running; [1]: torn reads; [2]: reads
        // that saw a name; [3]: unreadable (seqlock never settled).
        let len = std::mem::size_of::<AtomicU32>() * 4;
        // SAFETY: a fresh anonymous shared mapping of `len` bytes, zeroed by
        // the kernel; unmapped at the end of the test.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        // SAFETY: the mapping holds 4 zeroed u32s, valid AtomicU32s.
        let counters = unsafe { std::slice::from_raw_parts(mem as *const AtomicU32, 4) };
        counters[0].store(WRITERS as u32, Ordering::SeqCst);
        let names: Vec<(String, String)> = (0..6).map(stress_identity).collect();

        let mut children = Vec::new();
        // SAFETY: the reader child only reads the segment and bumps atomic
        // counters (its allocations happen before the fork or are its own
        // heap, copied at fork), then leaves with _exit.
        let reader = unsafe { libc::fork() };
        assert!(reader >= 0);
        if reader == 0 {
            loop {
                let writing = counters[0].load(Ordering::SeqCst) > 0;
                for slot in seg.slots() {
                    match read_names(slot) {
                        None => {
                            counters[3].fetch_add(1, Ordering::AcqRel);
                        }
                        Some((d, u)) if d.is_empty() && u.is_empty() => {}
                        Some((d, u)) => {
                            counters[2].fetch_add(1, Ordering::AcqRel);
                            if !names
                                .iter()
                                .any(|(nd, nu)| nd.as_bytes() == d && nu.as_bytes() == u)
                            {
                                counters[1].fetch_add(1, Ordering::AcqRel);
                            }
                        }
                    }
                }
                if !writing {
                    // SAFETY: as for the writers below.
                    unsafe { libc::_exit(0) };
                }
            }
        }
        children.push(reader);
        for w in 0..WRITERS {
            // SAFETY: as in `forked_processes_never_own_a_slot_twice`; the
            // names were built before the fork.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: getpid has no preconditions.
                let me = unsafe { libc::getpid() };
                for round in 0..ROUNDS {
                    let (db, user) = &names[(round * 7 + w * 5) % names.len()];
                    let want = Want {
                        database: db,
                        user,
                        limit: None,
                        settings: 0,
                    };
                    let Some(got) = pool::try_acquire(&seg, want, me) else {
                        std::hint::spin_loop();
                        continue;
                    };
                    match got {
                        Acquired::New(i) => {
                            pool::publish_new(&seg, i, me);
                            pool::release(&seg, i, me);
                        }
                        Acquired::Pooled(i) => {
                            pool::release(&seg, i, me);
                        }
                    }
                }
                counters[0].fetch_sub(1, Ordering::SeqCst);
                // SAFETY: _exit ends the child without running the parent's
                // destructors or the test harness's atexit handlers.
                unsafe { libc::_exit(0) };
            }
            children.push(pid);
        }
        for pid in children {
            let mut status = 0;
            // SAFETY: waiting on our own child with a valid status pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
        let torn = counters[1].load(Ordering::Acquire);
        let seen = counters[2].load(Ordering::Acquire);
        let unreadable = counters[3].load(Ordering::Acquire);
        // SAFETY: unmapping the mapping created above; `counters` is unused after.
        unsafe { libc::munmap(mem, len) };
        assert_eq!(torn, 0, "torn names read ({seen} reads)");
        assert_eq!(unreadable, 0, "a name could not be read");
        assert!(seen > 0, "the reader never saw a name");
    }

    #[test]
    fn prepared_set_evicts_the_least_recently_used() {
        let s = fresh();
        for h in 0..PREPARED_CAPACITY as u64 {
            assert_eq!(s.add_prepared(h + 1), None);
        }
        // Touch 1, so 2 is now the oldest.
        assert!(s.has_prepared(1));
        assert_eq!(s.add_prepared(999), Some(2));
        assert!(s.has_prepared(999) && !s.has_prepared(2));
        s.remove_prepared(999);
        assert!(!s.has_prepared(999));
        s.clear_prepared();
        assert!(!s.has_prepared(1));
    }

    #[test]
    fn generation_only_grows() {
        let s = fresh();
        assert_eq!(s.generation(), 0);
        assert_eq!(s.bump_generation(), 1);
        assert_eq!(s.bump_generation(), 2);
    }
}

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
//!   client pid and key, flags, timestamps, login settings;
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

mod blobs;
mod names;
mod prepared;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

pub use blobs::{PROOF_CAPACITY, STARTUP_CAPACITY};
pub use names::{Identity, NAME_CAPACITY};
pub use prepared::PREPARED_CAPACITY;

use blobs::OwnerBlob;
use names::Names;
use prepared::PreparedSet;

/// Owner pid recorded for slots nobody holds.
pub const NO_OWNER: i32 = 0;

/// Slot flag: the connection is to be closed when its holder gives it back
/// (`flush gracefully`, `switch-to`) instead of going back to the pool.
pub const CLOSE_ON_RELEASE: u32 = 1;

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
    /// Given back clean and handed to the waiting worker whose pid is the
    /// owner, which takes it (→ IN_USE) when it wakes; the supervisor
    /// hands it on if that worker died first.
    Handed = 10,
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
            10 => Handed,
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
            Handed => "HANDED",
        }
    }
}

fn pack(state: SlotState, owner: i32) -> u64 {
    ((state as u32 as u64) << 32) | (owner as u32 as u64)
}

fn unpack(word: u64) -> (Option<SlotState>, i32) {
    (SlotState::from_u32((word >> 32) as u32), word as u32 as i32)
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
    /// Secret half of the BackendKeyData the current client was given
    /// (`client_pid` is the other half). Lets a CancelRequest find the
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
    /// Process id half of the current client's BackendKeyData: the
    /// backend's pid in the session and performance pipelines, or 0 for
    /// the owner's pid (the transaction pipeline, and every slot a
    /// segment of layout 8 held before this field had a use, so that it
    /// keeps the layout).
    client_pid: AtomicI32,
    /// Hash of the settings the connection logged in with
    /// (`server::settings::hash`); a pooled connection is given only to a
    /// client with equal settings. Written while the slot is INIT.
    settings: AtomicU64,
    names: Names,
    prepared: PreparedSet,
    /// The current parameters (see the module documentation).
    startup: OwnerBlob<STARTUP_CAPACITY>,
    /// The parameters the server reported at login.
    login: OwnerBlob<STARTUP_CAPACITY>,
    proof: OwnerBlob<PROOF_CAPACITY>,
}

impl Default for Slot {
    /// The value a zeroed segment holds: NOTINIT, no owner, no names,
    /// empty blobs and prepared set, generation 0.
    fn default() -> Self {
        Slot {
            word: AtomicU64::new(pack(SlotState::NotInit, NO_OWNER)),
            generation: AtomicU64::new(0),
            key: AtomicU64::new(0),
            limit: AtomicI32::new(0),
            server: AtomicU32::new(0),
            client_key: AtomicI32::new(0),
            flags: AtomicU32::new(0),
            backend: AtomicU64::new(0),
            created_ms: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            client_pid: AtomicI32::new(0),
            settings: AtomicU64::new(0),
            names: Names::empty(),
            prepared: PreparedSet::empty(),
            startup: OwnerBlob::empty(),
            login: OwnerBlob::empty(),
            proof: OwnerBlob::empty(),
        }
    }
}

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

    /// The process id the current client was told, 0 for the owner's.
    pub fn client_pid(&self) -> i32 {
        self.client_pid.load(Ordering::Acquire)
    }

    /// Owner only: the cancel key of the client now using the connection,
    /// which was told the owner's pid; 0 for no client.
    pub fn set_client_key(&self, key: i32) {
        self.set_client_key_for(0, key);
    }

    /// Owner only: as `set_client_key`, for a client that was told `pid`.
    /// The pid changes only while the secret is 0, so a reader that sees
    /// the same non-zero secret before and after reading the pid has read
    /// the pid that goes with it.
    pub fn set_client_key_for(&self, pid: i32, key: i32) {
        self.client_key.store(0, Ordering::Release);
        self.client_pid.store(pid, Ordering::Release);
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

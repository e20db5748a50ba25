//! The prepared statements a slot's connection has, for the transaction
//! pipeline's statement tracking. Only owners use the set.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Slot;

/// Protocol-level prepared statements recorded per server connection; the
/// least recently used is closed on the server beyond this.
pub const PREPARED_CAPACITY: usize = 128;

/// Which prepared statements the connection has: 64-bit statement hashes
/// (pgcorral's server-side names are derived from them) with a use stamp
/// each, for least-recently-used eviction. Owner only; atomics (relaxed,
/// ordered by the ownership swaps) only so that no `unsafe` is needed.
#[repr(C)]
pub(super) struct PreparedSet {
    len: AtomicU32,
    clock: AtomicU32,
    hashes: [AtomicU64; PREPARED_CAPACITY],
    stamps: [AtomicU32; PREPARED_CAPACITY],
}

impl PreparedSet {
    /// No statements: what a zeroed segment holds.
    pub(super) const fn empty() -> Self {
        PreparedSet {
            len: AtomicU32::new(0),
            clock: AtomicU32::new(0),
            hashes: [const { AtomicU64::new(0) }; PREPARED_CAPACITY],
            stamps: [const { AtomicU32::new(0) }; PREPARED_CAPACITY],
        }
    }
}

impl Slot {
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
}

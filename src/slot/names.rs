//! A slot's database and user, behind a seqlock so that another process
//! (`status`, `flush DB`, the slot listing) reads one whole identity while
//! the owner may be rewriting it.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// PostgreSQL's NAMEDATALEN: database and role names are at most 63 bytes.
pub const NAME_CAPACITY: usize = 64;

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

/// The database and user a slot's connection belongs to, as a seqlock:
/// the owner (the only writer) makes `seq` odd, stores the words and makes
/// it even again; a reader keeps a copy only if `seq` was even and the same
/// before and after it read.
#[repr(C)]
pub(super) struct Names {
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
    /// No names, with the sequence even: what a zeroed segment holds.
    pub(super) const fn empty() -> Self {
        Names {
            seq: AtomicU32::new(0),
            lens: AtomicU32::new(0),
            database: [const { AtomicU64::new(0) }; NAME_WORDS],
            user: [const { AtomicU64::new(0) }; NAME_WORDS],
        }
    }

    /// Owner only, so there is a single writer.
    pub(super) fn store(&self, database: &[u8], user: &[u8]) {
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

    pub(super) fn load(&self) -> Option<Identity> {
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

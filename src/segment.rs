//! The shared segment: one `MAP_SHARED` mapping of a memfd, created by the
//! supervisor before its first fork and so inherited by every worker.
//!
//! Layout (offsets in bytes; no pointers inside, only indices):
//! `0` header · `HEADER_SIZE` limit records · `DISABLED_OFFSET` disabled
//! databases · `SLOTS_OFFSET` slots · after the slots, the cells of the
//! line of waiting workers (`waiters`).
//!
//! Runtime state that every process must agree on lives here, not in each
//! process's copy of the configuration: the primary server (an index into
//! the servers in configuration order) and an epoch that `switch-to` bumps,
//! read by workers forked long before the switch.
//! The memfd (rather than anonymous memory) lets another process map the same
//! pages: a test or a status tool through `/proc/PID/fd`, and later a new
//! supervisor taking over at upgrade.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapRaw;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use crate::disabled::DisabledTable;
use crate::slot::Slot;
use crate::sys;
use crate::waiters::{self, Line};

pub const MAGIC: [u8; 8] = *b"PGCORRAL";
/// Bumped whenever the layout changes, so that an incompatible process
/// refuses to attach instead of misreading the slots.
pub const VERSION: u32 = 10;
/// The memfd's name; `/proc/PID/fd` shows it as `/memfd:pgcorral (deleted)`.
pub const MEMFD_NAME: &str = "pgcorral";
pub const MAX_SLOTS: usize = 10_000;
pub const MAX_LIMITS: usize = 64;

const HEADER_SIZE: usize = 256;
const LIMIT_SIZE: usize = std::mem::size_of::<LimitRecord>();
/// The databases `pgcorral-cli disable` closed to new clients.
const DISABLED_OFFSET: usize = 1024;
const SLOTS_OFFSET: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("cannot create the shared segment: {0}")]
    Create(#[source] io::Error),
    #[error("cannot map the shared segment: {0}")]
    Map(#[source] io::Error),
    #[error("slot count {0} is outside 1..={MAX_SLOTS}")]
    SlotCount(usize),
    #[error("no pgcorral shared segment found in {0}")]
    NotFound(PathBuf),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the shared segment is not pgcorral's, or of an incompatible version")]
    Incompatible,
}

/// Every field is atomic, so any bytes are a valid `Header` (a foreign
/// file is read safely before it is rejected) and `create` writes it
/// through a shared reference.
#[repr(C)]
struct Header {
    /// `MAGIC`, as a little-endian word.
    magic: AtomicU64,
    version: AtomicU32,
    slot_count: AtomicU32,
    slot_size: AtomicU32,
    limit_count: AtomicU32,
    supervisor_pid: AtomicI32,
    /// Bumped whenever a slot may have become available; a worker that
    /// found no room in the line of waiters sleeps on it with a futex.
    wake_seq: AtomicU32,
    /// How many workers sleep on `wake_seq`, so releasing a slot costs a
    /// futex syscall only when somebody waits there.
    waiters: AtomicU32,
    shutting_down: AtomicU32,
    /// The primary server's index (low 32 bits) and the epoch (high 32
    /// bits), in one word so that a reader gets a pair that was current
    /// together.
    primary: AtomicU64,
    /// Clients whose session state keeps their connection (transaction
    /// pipeline), for `status`. A worker that dies without unwinding
    /// leaves its count behind until the supervisor restarts.
    pinned: AtomicU32,
    /// The line of waiting workers: ticket counter, how many wait, how
    /// many cells were ever used. Appended in layout 9, with the cells.
    line: waiters::Counters,
}

/// The server new connections go to, and which switch made it primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Primary {
    /// Index into the configured servers, in configuration order.
    pub server: u32,
    /// Bumped by every `switch-to`; a slot opened under an older epoch is
    /// stale.
    pub epoch: u32,
}

impl Primary {
    fn pack(self) -> u64 {
        (u64::from(self.epoch) << 32) | u64::from(self.server)
    }

    fn unpack(word: u64) -> Self {
        Primary {
            server: word as u32,
            epoch: (word >> 32) as u32,
        }
    }
}

/// Live count of server connections charged to one `[[limit]]` rule.
#[repr(C)]
pub struct LimitRecord {
    active: AtomicU32,
    max_size: AtomicU32,
}

impl LimitRecord {
    /// Counts one more connection if the rule allows it.
    pub fn try_reserve(&self) -> bool {
        let max = self.max_size.load(Ordering::Acquire);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < max).then_some(a + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        let _ = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(1));
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    pub fn max_size(&self) -> u32 {
        self.max_size.load(Ordering::Acquire)
    }

    /// Supervisor, at reload: a new `max_size`. Connections already above
    /// it are not closed; new ones wait until the count is below it.
    pub fn set_max_size(&self, max: u32) {
        self.max_size.store(max, Ordering::Release);
    }
}

pub struct Segment {
    map: MmapRaw,
    file: File,
    slot_count: usize,
}

// The header must fit in front of the limit records, and those in front of
// the slots.
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE);
const _: () = assert!(HEADER_SIZE + MAX_LIMITS * LIMIT_SIZE <= DISABLED_OFFSET);
const _: () = assert!(DISABLED_OFFSET + std::mem::size_of::<DisabledTable>() <= SLOTS_OFFSET);
const _: () = assert!(DISABLED_OFFSET.is_multiple_of(std::mem::align_of::<DisabledTable>()));
// The mapping starts page aligned; each record's offset must keep its
// alignment for the casts in `header`, `limits`, `disabled` and `slots`.
const _: () = assert!(std::mem::align_of::<Header>() <= 4096);
const _: () = assert!(HEADER_SIZE.is_multiple_of(std::mem::align_of::<LimitRecord>()));
const _: () = assert!(SLOTS_OFFSET.is_multiple_of(std::mem::align_of::<Slot>()));
const _: () = assert!(SLOTS_OFFSET.is_multiple_of(std::mem::align_of::<waiters::Cell>()));
const _: () =
    assert!(std::mem::size_of::<Slot>().is_multiple_of(std::mem::align_of::<waiters::Cell>()));

/// Where the line's cells start: right after the slots (a slot's size keeps
/// the cells' alignment, checked above).
fn cells_offset(slot_count: usize) -> usize {
    SLOTS_OFFSET + slot_count * std::mem::size_of::<Slot>()
}

/// The whole mapping's size for `slot_count` slots.
fn segment_size(slot_count: usize) -> usize {
    cells_offset(slot_count) + waiters::CELLS * std::mem::size_of::<waiters::Cell>()
}

impl Segment {
    /// Creates a zeroed segment: every slot NOTINIT, every limit at 0.
    pub fn create(slot_count: usize, limit_sizes: &[u32]) -> Result<Self, SegmentError> {
        if slot_count == 0 || slot_count > MAX_SLOTS {
            return Err(SegmentError::SlotCount(slot_count));
        }
        let size = segment_size(slot_count);
        let fd = memfd_create(c"pgcorral", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| SegmentError::Create(e.into()))?;
        let file = File::from(fd);
        file.set_len(size as u64).map_err(SegmentError::Create)?;
        let map = MmapRaw::map_raw(&file).map_err(SegmentError::Map)?;
        let seg = Segment {
            map,
            file,
            slot_count,
        };
        let header = seg.header();
        header
            .magic
            .store(u64::from_le_bytes(MAGIC), Ordering::Relaxed);
        header.version.store(VERSION, Ordering::Relaxed);
        header
            .slot_count
            .store(slot_count as u32, Ordering::Relaxed);
        header
            .slot_size
            .store(std::mem::size_of::<Slot>() as u32, Ordering::Relaxed);
        header
            .limit_count
            .store(MAX_LIMITS as u32, Ordering::Relaxed);
        header
            .supervisor_pid
            .store(std::process::id() as i32, Ordering::Release);
        for (rec, max) in seg.limits().iter().zip(limit_sizes) {
            rec.max_size.store(*max, Ordering::Release);
        }
        Ok(seg)
    }

    /// Maps the segment of a running pgcorral, found among its open
    /// descriptors. Needs the same user as the daemon (or root).
    pub fn attach_pid(pid: i32) -> Result<Self, SegmentError> {
        let dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let entries = std::fs::read_dir(&dir).map_err(|source| SegmentError::Open {
            path: dir.clone(),
            source,
        })?;
        let wanted = format!("/memfd:{MEMFD_NAME}");
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if target.to_string_lossy().starts_with(&wanted) {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(entry.path())
                    .map_err(|source| SegmentError::Open {
                        path: entry.path(),
                        source,
                    })?;
                return Self::attach_file(file);
            }
        }
        Err(SegmentError::NotFound(dir))
    }

    /// Maps an existing segment after checking its header.
    pub fn attach_file(file: File) -> Result<Self, SegmentError> {
        let len = file.metadata().map_err(SegmentError::Map)?.len() as usize;
        if len < SLOTS_OFFSET {
            return Err(SegmentError::Incompatible);
        }
        let map = MmapRaw::map_raw(&file).map_err(SegmentError::Map)?;
        // No slot is reachable until the header says how many there are.
        let mut seg = Segment {
            map,
            file,
            slot_count: 0,
        };
        let header = seg.header();
        let slot_count = header.slot_count.load(Ordering::Relaxed) as usize;
        if header.magic.load(Ordering::Relaxed) != u64::from_le_bytes(MAGIC)
            || header.version.load(Ordering::Relaxed) != VERSION
            || header.slot_size.load(Ordering::Relaxed) as usize != std::mem::size_of::<Slot>()
            || slot_count > MAX_SLOTS
            || len < segment_size(slot_count)
        {
            return Err(SegmentError::Incompatible);
        }
        seg.slot_count = slot_count;
        Ok(seg)
    }

    fn header(&self) -> &Header {
        // SAFETY: every mapping is at least SLOTS_OFFSET bytes (sized by
        // `create`, checked by `attach_file`), page aligned, and lives as
        // long as `self`; a Header is atomics only, valid for any bytes.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    pub fn slots(&self) -> &[Slot] {
        // SAFETY: `slot_count` slots fit after SLOTS_OFFSET (sized at create,
        // checked at attach); SLOTS_OFFSET is a multiple of Slot's alignment;
        // all-zero bytes are a valid Slot; shared access goes through atomics
        // or the owner discipline documented in `slot`.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(SLOTS_OFFSET) as *const Slot,
                self.slot_count,
            )
        }
    }

    /// The line of workers waiting for a slot.
    pub fn line(&self) -> Line<'_> {
        // SAFETY: CELLS cells fit after the slots (sized at create, checked
        // at attach), at an offset aligned for them (checked at compile
        // time above); all-zero bytes are empty cells; they are only
        // touched atomically.
        let cells = unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(cells_offset(self.slot_count)) as *const waiters::Cell,
                waiters::CELLS,
            )
        };
        Line::new(&self.header().line, cells)
    }

    pub fn limits(&self) -> &[LimitRecord] {
        // SAFETY: MAX_LIMITS records fit between the header and the slots
        // (checked at compile time above) and are only touched atomically.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(HEADER_SIZE) as *const LimitRecord,
                MAX_LIMITS,
            )
        }
    }

    /// Which databases are closed to new clients (`disable`).
    pub fn disabled(&self) -> &DisabledTable {
        // SAFETY: the table fits between the limit records and the slots and
        // is aligned (checked at compile time above); all-zero bytes are a
        // valid, empty table; it is only touched atomically.
        unsafe { &*(self.map.as_ptr().add(DISABLED_OFFSET) as *const DisabledTable) }
    }

    pub fn limit(&self, index: Option<usize>) -> Option<&LimitRecord> {
        index.and_then(|i| self.limits().get(i))
    }

    pub fn supervisor_pid(&self) -> i32 {
        self.header().supervisor_pid.load(Ordering::Acquire)
    }

    /// The current primary server and epoch.
    pub fn primary(&self) -> Primary {
        Primary::unpack(self.header().primary.load(Ordering::SeqCst))
    }

    /// Supervisor only: makes `server` the primary and starts a new epoch,
    /// so that every connection opened before is stale. Returns the new
    /// pair.
    ///
    /// Nothing stops a worker that read the old pair an instant earlier:
    /// it may still give a stale slot back FREE, or record the old server
    /// in a slot it reserves. Such a slot is never handed out (`try_acquire`
    /// checks again once it owns the slot), is not pooled again when given
    /// back, and the supervisor's once-a-second tick closes it if FREE.
    pub fn switch_primary(&self, server: u32) -> Primary {
        let word = &self.header().primary;
        let mut now = Primary::unpack(word.load(Ordering::SeqCst));
        loop {
            let next = Primary {
                server,
                epoch: now.epoch.wrapping_add(1),
            };
            match word.compare_exchange(now.pack(), next.pack(), Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(actual) => now = Primary::unpack(actual),
            }
        }
    }

    pub fn set_shutting_down(&self) {
        self.header().shutting_down.store(1, Ordering::Release);
        self.wake_all();
    }

    /// Wakes every waiting worker, in line or not, to look at the slots
    /// again: for what changes more than one slot (shutdown, new limits).
    pub fn wake_all(&self) {
        self.line().wake_all();
        self.notify();
    }

    pub fn shutting_down(&self) -> bool {
        self.header().shutting_down.load(Ordering::Acquire) != 0
    }

    /// For workers that found no room in the line: read before scanning
    /// the slots; pass to `wait_for_change` so that a release between the
    /// scan and the wait is not missed.
    pub fn wake_seq(&self) -> u32 {
        self.header().wake_seq.load(Ordering::SeqCst)
    }

    /// Tells workers waiting outside the line that a slot may have become
    /// available. (Those in line are rung by `pool::hand_on` one at a time.)
    ///
    /// The notifier writes `wake_seq` then reads `waiters`; a waiter writes
    /// `waiters` then reads `wake_seq`. With only acquire/release, both
    /// reads may see the old values (each write still sits in its core's
    /// store buffer): the notifier skips the wake and the waiter sleeps on
    /// a sequence that already moved, for a whole nap. With all four
    /// accesses SeqCst they fall in one total order, so at least one side
    /// sees the other's write: the notifier wakes, or the waiter does not
    /// sleep. (The kernel re-checks `wake_seq` under its own lock before
    /// sleeping, which covers a bump after the waiter's read.)
    pub fn notify(&self) {
        let h = self.header();
        h.wake_seq.fetch_add(1, Ordering::SeqCst);
        if h.waiters.load(Ordering::SeqCst) > 0 {
            sys::futex::wake(&h.wake_seq);
        }
    }

    /// Sleeps until `notify` is called after `seen` was read, or `timeout`.
    /// Ordering: see `notify`.
    pub fn wait_for_change(&self, seen: u32, timeout: Duration) {
        let h = self.header();
        h.waiters.fetch_add(1, Ordering::SeqCst);
        if h.wake_seq.load(Ordering::SeqCst) == seen {
            sys::futex::wait(&h.wake_seq, seen, timeout);
        }
        h.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// A client's session state now keeps its connection.
    pub fn pin_added(&self) {
        self.header().pinned.fetch_add(1, Ordering::Relaxed);
    }

    /// A client whose connection was pinned left.
    pub fn pin_removed(&self) {
        let _ = self
            .header()
            .pinned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Clients whose session state keeps their connection now.
    pub fn pinned(&self) -> u32 {
        self.header().pinned.load(Ordering::Relaxed)
    }

    /// How many processes sleep in `wait_for_change` now (outside the line).
    pub fn waiters(&self) -> u32 {
        self.header().waiters.load(Ordering::SeqCst)
    }

    pub fn memfd(&self) -> &File {
        &self.file
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::SlotState;

    #[test]
    fn create_zeroes_slots_and_sets_limits() {
        let seg = Segment::create(8, &[3, 1]).unwrap();
        assert_eq!(seg.slots().len(), 8);
        assert!(seg.slots().iter().all(|s| s.state() == SlotState::NotInit));
        assert_eq!(seg.limits()[0].max_size(), 3);
        assert!(seg.limits()[1].try_reserve());
        assert!(!seg.limits()[1].try_reserve(), "max_size 1 exceeded");
        seg.limits()[1].release();
        seg.limits()[1].release();
        assert_eq!(seg.limits()[1].active(), 0, "release never underflows");
    }

    #[test]
    fn rejects_bad_slot_counts() {
        assert!(matches!(
            Segment::create(0, &[]),
            Err(SegmentError::SlotCount(0))
        ));
        assert!(Segment::create(MAX_SLOTS + 1, &[]).is_err());
    }

    #[test]
    fn a_second_mapping_sees_the_same_slots() {
        let seg = Segment::create(4, &[]).unwrap();
        let again = Segment::attach_file(seg.memfd().try_clone().unwrap()).unwrap();
        assert!(seg.slots()[2].try_reserve(77));
        assert_eq!(again.slots()[2].snapshot(), (SlotState::Init, 77));
    }

    #[test]
    fn attach_pid_finds_our_own_segment() {
        let seg = Segment::create(3, &[]).unwrap();
        assert!(seg.slots()[1].try_reserve(5));
        let found = Segment::attach_pid(std::process::id() as i32).unwrap();
        // Another test may have a segment open too: accept any valid one, but
        // it must be a real pgcorral segment.
        assert!(!found.slots().is_empty());
    }

    #[test]
    fn rejects_a_foreign_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        assert!(matches!(
            Segment::attach_file(f),
            Err(SegmentError::Incompatible)
        ));
    }

    #[test]
    fn a_stale_sequence_does_not_sleep_and_a_timeout_returns() {
        let seg = std::sync::Arc::new(Segment::create(1, &[]).unwrap());
        let seen = seg.wake_seq();
        seg.notify();
        // Would sleep the whole hour if the bump were missed.
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = seg.clone();
        std::thread::spawn(move || {
            sleeper.wait_for_change(seen, Duration::from_secs(3600));
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(600))
            .expect("slept on a sequence that had moved");
        assert_eq!(seg.waiters(), 0);
        let seen = seg.wake_seq();
        seg.wait_for_change(seen, Duration::from_millis(1));
        assert_eq!(seg.waiters(), 0, "a timed-out waiter is no longer counted");
        assert_eq!(seg.wake_seq(), seen, "nothing was notified");
    }

    /// A sleeping waiter is counted while it sleeps and woken by `notify`;
    /// it sleeps with a timeout far beyond the test's patience, so only the
    /// wake can end it in time.
    #[test]
    fn notify_wakes_a_sleeping_waiter() {
        let seg = std::sync::Arc::new(Segment::create(1, &[]).unwrap());
        let seen = seg.wake_seq();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let seg = seg.clone();
            std::thread::spawn(move || {
                seg.wait_for_change(seen, Duration::from_secs(3600));
                let _ = tx.send(());
            })
        };
        while seg.waiters() == 0 {
            std::thread::yield_now();
        }
        seg.notify();
        rx.recv_timeout(Duration::from_secs(600))
            .expect("the waiter was not woken");
        waiter.join().unwrap();
        assert_eq!(seg.waiters(), 0);
    }

    #[test]
    fn switching_the_primary_starts_a_new_epoch() {
        let seg = Segment::create(1, &[]).unwrap();
        assert_eq!(
            seg.primary(),
            Primary {
                server: 0,
                epoch: 0
            }
        );
        assert_eq!(
            seg.switch_primary(1),
            Primary {
                server: 1,
                epoch: 1
            }
        );
        let again = Segment::attach_file(seg.memfd().try_clone().unwrap()).unwrap();
        assert_eq!(
            again.primary(),
            Primary {
                server: 1,
                epoch: 1
            }
        );
        assert_eq!(
            seg.switch_primary(1).epoch,
            2,
            "every switch is a new epoch"
        );
    }
}

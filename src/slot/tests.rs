use super::*;
use crate::sys::mem::SharedCounters;
use crate::sys::process::fork_child;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

fn fresh() -> Box<Slot> {
    Box::default()
}

/// Waits for forked children, each of which must have exited 0.
fn reap(children: Vec<i32>) {
    for pid in children {
        let pid = Pid::from_raw(pid);
        assert_eq!(waitpid(pid, None).unwrap(), WaitStatus::Exited(pid, 0));
    }
}

/// The pid the slot table knows a process by.
fn my_pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// Everything a caller can read of a slot, to compare two slots by.
fn observe(s: &Slot) -> impl PartialEq + std::fmt::Debug {
    (
        (
            s.snapshot(),
            s.generation(),
            s.key(),
            s.limit_index(),
            s.server(),
        ),
        (
            s.backend(),
            (s.client_pid(), s.client_key()),
            s.close_on_release(),
            s.epoch(),
        ),
        (s.created_ms(), s.last_used_ms(), s.settings(), s.identity()),
        (s.startup().to_vec(), s.login().to_vec(), s.proof().to_vec()),
    )
}

#[test]
fn an_empty_slot_is_notinit_without_owner() {
    let s = fresh();
    assert_eq!(s.snapshot(), (SlotState::NotInit, NO_OWNER));
}

/// `Default` stands in for the zeroed records of a new segment, so the two
/// must read the same.
#[test]
fn a_default_slot_reads_as_a_new_segment_s_slot() {
    let seg = crate::segment::Segment::create(1, &[]).unwrap();
    let zeroed = &seg.slots()[0];
    assert_eq!(observe(&fresh()), observe(zeroed));
    assert!(!fresh().has_prepared(0) && !zeroed.has_prepared(0));
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

#[test]
fn proof_round_trips_and_rejects_oversize() {
    let s = fresh();
    assert!(s.set_proof(&[7; PROOF_CAPACITY]));
    assert_eq!(&*s.proof(), &[7; PROOF_CAPACITY]);
    assert!(!s.set_proof(&[8; PROOF_CAPACITY + 1]));
    assert_eq!(&*s.proof(), &[7; PROOF_CAPACITY]);
    assert!(s.set_proof(b"p"));
    assert_eq!(&*s.proof(), b"p");
}

/// Forked processes hammer four slots through the pool's take/release
/// paths; a counter per slot in a second shared mapping checks that no
/// two processes ever hold the same slot at once.
#[test]
fn forked_processes_never_own_a_slot_twice() {
    use crate::pool::{self, Acquired, Want};
    use crate::segment::Segment;
    use std::sync::atomic::Ordering;

    const SLOTS: usize = 4;
    const PROCS: usize = 6;
    const ROUNDS: usize = 3000;
    let seg = Segment::create(SLOTS, &[SLOTS as u32]).unwrap();
    // holders[0..SLOTS]: live holders per slot; holders[SLOTS]: violations;
    // holders[SLOTS + 1]: successful acquisitions.
    let counters = SharedCounters::new(SLOTS + 2).unwrap();

    let mut children = Vec::new();
    for _ in 0..PROCS {
        // The child touches only the two shared mappings with atomics and
        // never allocates or locks, so forking from the multi-threaded
        // test harness leaves it nothing it could deadlock on.
        let pid = fork_child(|| {
            let me = my_pid();
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
            0
        })
        .unwrap();
        children.push(pid);
    }
    reap(children);
    let violations = counters[SLOTS].load(Ordering::Acquire);
    let acquisitions = counters[SLOTS + 1].load(Ordering::Acquire);
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
    use std::sync::atomic::Ordering;

    const SLOTS: usize = 3;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 20_000;
    let seg = Segment::create(SLOTS, &[]).unwrap();
    // counters[0]: writers still running; [1]: torn reads; [2]: reads
    // that saw a name; [3]: unreadable (seqlock never settled).
    let counters = SharedCounters::new(4).unwrap();
    counters[0].store(WRITERS as u32, Ordering::SeqCst);
    let names: Vec<(String, String)> = (0..6).map(stress_identity).collect();

    let mut children = Vec::new();
    // The reader only reads the segment and bumps atomic counters; what it
    // allocates is its own heap, copied at fork.
    let reader = fork_child(|| loop {
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
            return 0;
        }
    })
    .unwrap();
    children.push(reader);
    for w in 0..WRITERS {
        // As in `forked_processes_never_own_a_slot_twice`; the names were
        // built before the fork.
        let names = &names;
        let pid = fork_child(|| {
            let me = my_pid();
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
            0
        })
        .unwrap();
        children.push(pid);
    }
    reap(children);
    let torn = counters[1].load(Ordering::Acquire);
    let seen = counters[2].load(Ordering::Acquire);
    let unreadable = counters[3].load(Ordering::Acquire);
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

//! The line of waiting workers as `acquire` and `hand_on` use it: threads
//! stand in for workers, each with its own pid, on a segment of the test's.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread;

use super::*;

fn want(db: &str) -> Want<'_> {
    Want {
        database: db,
        user: "u",
        limit: Some(0),
        settings: 0,
    }
}

fn other(db: &str) -> Want<'_> {
    Want {
        limit: Some(1),
        ..want(db)
    }
}

/// Spins until `cond` holds; panics after a minute (a hang, not a timing).
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::yield_now();
    }
}

/// A slot of `db` held IN_USE by `me`.
fn held(seg: &Segment, w: Want<'_>, me: i32) -> usize {
    let Some(Acquired::New(i)) = try_acquire(seg, w, me) else {
        panic!("no slot for {me}")
    };
    assert!(publish_new(seg, i, me));
    i
}

type Served = Receiver<(i32, Result<Acquired, String>)>;

/// Starts waiters one after the other, each only once the one before is in
/// line, so that their order in line is the order of `pids`.
fn line_up(seg: &Arc<Segment>, db: &'static str, pids: &[i32], patience: Duration) -> Served {
    let (tx, rx) = channel();
    let before = seg.line().waiting();
    for (n, &me) in pids.iter().enumerate() {
        let (seg2, tx) = (seg.clone(), tx.clone());
        let w = if db == "d" { want(db) } else { other(db) };
        thread::spawn(move || {
            let got = acquire(&seg2, w, me, Instant::now() + patience).map_err(|e| e.to_string());
            let _ = tx.send((me, got));
        });
        wait_for("the waiter joined the line", || {
            seg.line().waiting() == before + n + 1
        });
    }
    rx
}

fn next(rx: &Served) -> (i32, Acquired) {
    let (me, got) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("nobody was served");
    (me, got.unwrap_or_else(|e| panic!("{me}: {e}")))
}

const LONG: Duration = Duration::from_secs(600);

#[test]
fn one_release_wakes_exactly_one_waiter_in_arrival_order() {
    let seg = Arc::new(Segment::create(1, &[1]).unwrap());
    let i = held(&seg, want("d"), 10);
    let pids = [20, 21, 22, 23, 24];
    let served = line_up(&seg, "d", &pids, LONG);
    let mut holder = 10;
    for (n, expected) in pids.iter().enumerate() {
        let before = seg.line().bells();
        assert!(release(&seg, i, holder));
        let (me, got) = next(&served);
        assert_eq!(
            (me, got),
            (*expected, Acquired::Pooled(i)),
            "served out of order"
        );
        assert_eq!(seg.slots()[i].snapshot(), (SlotState::InUse, me));
        let after = seg.line().bells();
        let rung = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert_eq!(rung, 1, "one release rang {rung} waiters");
        assert_eq!(seg.line().waiting(), pids.len() - n - 1);
        holder = me;
    }
    assert!(release(&seg, i, holder));
    assert_eq!(
        seg.slots()[i].state(),
        SlotState::Free,
        "nobody left to hand it to"
    );
    assert_eq!(seg.line().queued(), 0);
}

#[test]
fn a_timed_out_waiter_leaves_and_the_slot_goes_free() {
    let seg = Segment::create(1, &[1]).unwrap();
    let i = held(&seg, want("d"), 10);
    let got = acquire(
        &seg,
        want("d"),
        20,
        Instant::now() + Duration::from_millis(50),
    );
    assert!(matches!(got, Err(PoolError::Timeout(_))), "{got:?}");
    assert_eq!((seg.line().waiting(), seg.line().queued()), (0, 0));
    assert!(release(&seg, i, 10));
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Free, NO_OWNER));
}

/// The releaser moves the slot before it grants the cell: a waiter that
/// withdraws in between makes the grant fail, and the slot is taken back.
#[test]
fn a_waiter_that_withdraws_before_the_grant_loses_nothing() {
    let seg = Segment::create(1, &[1]).unwrap();
    let i = held(&seg, want("d"), 10);
    let wanted = Wanted {
        key: identity_key("d", "u"),
        settings: 0,
        limit: Some(0),
    };
    let place = seg.line().enter(wanted, 20, None).unwrap();
    let pick = seg.line().choose(wanted.key, 0, |_| false).unwrap();
    assert!(seg.slots()[i]
        .transition(SlotState::InUse, 10, SlotState::Handed, 20)
        .is_ok());
    assert_eq!(place.leave(), Left::Withdrew);
    assert!(!seg.line().grant(&pick, i));
    assert!(hand_on(&seg, i, SlotState::Handed, 20), "taken back");
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Free, NO_OWNER));

    // Granted first: leaving accepts it, deadline or not.
    let i = match try_acquire(&seg, want("d"), 10) {
        Some(Acquired::Pooled(i)) => i,
        other => panic!("{other:?}"),
    };
    let place = seg.line().enter(wanted, 21, None).unwrap();
    assert!(release(&seg, i, 10));
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Handed, 21));
    assert_eq!(place.leave(), Left::Granted(i));
    assert_eq!(
        take_handed(&seg, i, want("d"), 21),
        Some(Acquired::Pooled(i))
    );
    assert_eq!(seg.line().queued(), 0);
}

#[test]
fn a_dead_waiter_s_hand_off_goes_to_the_next_or_back_to_the_pool() {
    let seg = Segment::create(1, &[1]).unwrap();
    let i = held(&seg, want("d"), 10);
    let wanted = Wanted {
        key: identity_key("d", "u"),
        settings: 0,
        limit: Some(0),
    };
    let _dies = seg.line().enter(wanted, 77, None).unwrap();
    let next = seg.line().enter(wanted, 78, None).unwrap();
    assert!(release(&seg, i, 10));
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Handed, 77));
    // 77 dies without taking it: the supervisor hands it to 78.
    assert_eq!(
        reclaim_owner(&seg, 77),
        Vec::<usize>::new(),
        "nothing to close"
    );
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Handed, 78));
    assert_eq!(next.leave(), Left::Granted(i));
    // 78 dies too: with nobody left in line the slot goes FREE.
    assert_eq!(reclaim_owner(&seg, 78), Vec::<usize>::new());
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Free, NO_OWNER));
    assert_eq!((seg.line().waiting(), seg.line().queued()), (0, 0));
    assert!(seg.line().owners().is_empty());
    assert_eq!(seg.limits()[0].active(), 1, "the connection is kept");
}

/// A releaser that dies between handing the slot over and granting the
/// cell: the waiter finds the slot handed to it when it looks again.
#[test]
fn a_slot_handed_over_without_a_grant_is_found_by_its_waiter() {
    let seg = Arc::new(Segment::create(1, &[1]).unwrap());
    let i = held(&seg, want("d"), 10);
    let served = line_up(&seg, "d", &[20], LONG);
    assert!(seg.slots()[i]
        .transition(SlotState::InUse, 10, SlotState::Handed, 20)
        .is_ok());
    assert_eq!(next(&served), (20, Acquired::Pooled(i)));
    assert_eq!(seg.line().queued(), 0);
}

fn wanted(db: &str, limit: usize) -> Wanted {
    Wanted {
        key: identity_key(db, "u"),
        settings: 0,
        limit: Some(limit),
    }
}

/// A waiter of another database with room under its limit, in line before
/// one of the connection's own: the connection is freed for it to evict
/// (and it alone is rung), rather than handed to the younger waiter. An
/// emptied slot rings the longest waiter that may open a connection.
#[test]
fn the_longest_waiter_of_another_pool_is_not_starved() {
    let seg = Segment::create(1, &[1, 1]).unwrap();
    let i = held(&seg, want("d"), 10);
    let b = seg.line().enter(wanted("b", 1), 30, None).unwrap();
    let d = seg.line().enter(wanted("d", 0), 20, None).unwrap();
    let (b_bell, d_bell) = (b.bell(), d.bell());
    assert!(release(&seg, i, 10));
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Free, NO_OWNER));
    assert_ne!(b.bell(), b_bell, "the longest waiter was not rung");
    assert_eq!(d.bell(), d_bell, "the younger one was rung too");
    assert_eq!(try_acquire(&seg, other("b"), 30), Some(Acquired::New(i)));
    assert_eq!(b.leave(), Left::Withdrew);
    assert_eq!(seg.limits()[0].active(), 0, "d's charge released");

    // b's connection fails: the slot is emptied, and d, which may open
    // one now, is rung.
    let d_bell = d.bell();
    abandon_new(&seg, i, 30);
    assert_ne!(d.bell(), d_bell);
    assert_eq!(try_acquire(&seg, want("d"), 20), Some(Acquired::New(i)));
    assert_eq!(d.leave(), Left::Withdrew);
}

/// Nobody in line can use the connection (another database whose rule is
/// full): it goes FREE and nobody is rung.
#[test]
fn a_waiter_without_room_is_not_rung_for_a_connection_it_cannot_use() {
    let seg = Segment::create(2, &[1, 1]).unwrap();
    let i = held(&seg, want("d"), 10);
    let _full = held(&seg, other("b"), 11);
    let b = seg.line().enter(wanted("b", 1), 30, None).unwrap();
    let bell = b.bell();
    assert!(release(&seg, i, 10));
    assert_eq!(seg.slots()[i].snapshot(), (SlotState::Free, NO_OWNER));
    assert_eq!(b.bell(), bell);
    assert_eq!(b.leave(), Left::Withdrew);
}

/// Many waiters with short patience and a few holders giving back in a
/// loop: every slot ends FREE or NOTINIT, none HANDED or lost, and the
/// line is empty.
#[test]
fn timeouts_racing_releases_lose_no_slot() {
    const SLOTS: usize = 2;
    let seg = Arc::new(Segment::create(SLOTS, &[SLOTS as u32]).unwrap());
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let seg = seg.clone();
            thread::spawn(move || {
                let me = 100 + t;
                let mut served = 0;
                for round in 0..200 {
                    let patience = Duration::from_micros(50 * (round % 7) as u64);
                    match acquire(&seg, want("d"), me, Instant::now() + patience) {
                        Ok(Acquired::Pooled(i)) => {
                            assert!(release(&seg, i, me));
                            served += 1;
                        }
                        Ok(Acquired::New(i)) => {
                            assert!(publish_new(&seg, i, me));
                            assert!(release(&seg, i, me));
                            served += 1;
                        }
                        Err(PoolError::Timeout(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                served
            })
        })
        .collect();
    let served: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(served > 0);
    for slot in seg.slots() {
        assert!(
            matches!(
                slot.snapshot(),
                (SlotState::Free | SlotState::NotInit, NO_OWNER)
            ),
            "{:?}",
            slot.snapshot()
        );
    }
    assert_eq!((seg.line().waiting(), seg.line().queued()), (0, 0));
    assert!(seg.line().owners().is_empty());
    let open = seg
        .slots()
        .iter()
        .filter(|s| s.state() == SlotState::Free)
        .count();
    assert_eq!(seg.limits()[0].active() as usize, open);
}

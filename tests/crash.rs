//! A worker killed with SIGKILL in the middle of a query costs its own
//! client and nothing else: other clients go on, new clients are served, the
//! dead worker's slot is reclaimed, and its half-used server connection is
//! closed rather than handed to the next client.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{is_zombie_or_gone, wait_until, Pgcorral, Postgres};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgcorral::segment::Segment;
use pgcorral::slot::SlotState;

/// Long enough that it cannot end by itself during the test: if A's backend
/// disappears, it is because pgcorral closed the connection.
const A_QUERY: &str = "select pg_sleep(30)";
/// B's query, in flight while A's worker is killed.
const B_QUERY: &str = "select 42 from pg_sleep(1)";

#[test]
fn killed_worker_costs_only_its_client() {
    // PostgreSQL notices that a client socket was closed only when it next
    // reads from or writes to it, which for a backend inside pg_sleep(30) is
    // 30 s away. client_connection_check_interval makes it poll the socket
    // while a query runs, so a connection closed by pgcorral ends the
    // backend within ~100 ms, and the test can tell "closed" from "leaked".
    let pg = Postgres::start_with(&[("client_connection_check_interval", "100ms")]);
    let pc = Pgcorral::start(&pg, "max_connections = 5");

    // Client A: a long query through its own worker.
    let mut a = pc.connect();
    let a_thread = thread::spawn(move || {
        let r = a.simple_query(A_QUERY);
        (r.map(|_| ()), Instant::now())
    });
    assert!(
        wait_until(Duration::from_secs(10), || pg
            .backends_with_query(A_QUERY)
            .len()
            == 1),
        "A's query never showed up in pg_stat_activity"
    );
    let a_backend = pg.backends_with_query(A_QUERY)[0];
    let workers = pc.workers();
    assert_eq!(
        workers.len(),
        1,
        "with only A connected, expected one worker: {workers:?}"
    );
    let a_worker = workers[0];

    // Client B, connected before the kill and with a query in flight across it.
    let mut b = pc.connect();
    let b_worker = {
        let mut w = pc.workers();
        w.retain(|&p| p != a_worker);
        assert_eq!(w.len(), 1, "expected B's worker beside A's: {w:?}");
        w[0]
    };
    let b_thread = thread::spawn(move || {
        let v: i32 = b
            .query_one(B_QUERY, &[])
            .expect("B's query across A's crash")
            .get(0);
        (b, v)
    });
    // Kill only once B's query runs on PostgreSQL, so the kill lands while
    // B has a query in flight; B must succeed either way.
    assert!(
        wait_until(Duration::from_secs(10), || !pg
            .backends_with_query(B_QUERY)
            .is_empty()),
        "B's query never showed up in pg_stat_activity"
    );

    let killed_at = Instant::now();
    kill(Pid::from_raw(a_worker), Signal::SIGKILL).expect("kill -9 A's worker");

    let (a_result, a_done) = a_thread.join().expect("A's thread");
    assert!(
        a_result.is_err(),
        "A's query succeeded though its worker died"
    );
    // Only a guard against A hanging: its query would have run 30 s, so
    // an error well before that came from the kill, however slow the
    // machine.
    assert!(
        a_done.duration_since(killed_at) < Duration::from_secs(20),
        "A learnt of its worker's death only after {:?}",
        a_done.duration_since(killed_at)
    );

    let (mut b, v) = b_thread.join().expect("B's thread");
    assert_eq!(v, 42, "B's answer");
    let v: i32 = b
        .query_one("select 43", &[])
        .expect("B goes on after A's crash")
        .get(0);
    assert_eq!(v, 43);
    assert!(
        pc.workers().contains(&b_worker),
        "B's worker disappeared with A's"
    );

    // The supervisor reaps the dead worker (SIGCHLD) rather than leaving a zombie.
    assert!(
        wait_until(Duration::from_secs(30), || !pc
            .workers()
            .contains(&a_worker)),
        "A's worker {a_worker} was never reaped (zombie: {})",
        is_zombie_or_gone(a_worker)
    );

    // New clients are served, over both listeners.
    for i in 0..3 {
        let mut c = if i % 2 == 0 {
            pc.connect()
        } else {
            pc.connect_unix()
        };
        let v: i32 = c
            .query_one("select $1::int", &[&i])
            .unwrap_or_else(|e| panic!("new client {i} after the crash: {e}"))
            .get(0);
        assert_eq!(v, i);
        // A half-used connection must never be handed out: it would still
        // be inside A's pg_sleep, and this query would not have answered.
        let backend: i32 = c
            .query_one("select pg_backend_pid()", &[])
            .expect("pg_backend_pid")
            .get(0);
        assert_ne!(
            backend, a_backend,
            "new client {i} got A's broken connection"
        );
    }
    drop(b);

    // A's server connection is closed, not leaked: its backend ends long
    // before pg_sleep(30) could have.
    assert!(
        wait_until(Duration::from_secs(20), || !pg.backend_exists(a_backend)),
        "A's backend {a_backend} still exists {:?} after its worker was killed: \
         pgcorral kept its half-used connection open",
        killed_at.elapsed()
    );
    assert!(
        pg.backends_with_query(A_QUERY).is_empty(),
        "some backend still runs A's query"
    );

    // With every client gone, no slot is left IN_USE, and none still names
    // the dead worker as its owner.
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "workers left after all clients quit: {:?}",
        pc.workers()
    );
    let seg = Segment::attach_pid(pc.pid)
        .unwrap_or_else(|e| panic!("attach to pgcorral {}'s shared segment: {e:?}", pc.pid));
    assert_eq!(
        seg.slots().len(),
        5,
        "the segment should have max_connections slots"
    );
    let settled = wait_until(Duration::from_secs(30), || {
        seg.slots()
            .iter()
            .all(|s| s.state() != SlotState::InUse && s.owner_pid() != a_worker)
    });
    let table: Vec<String> = seg
        .slots()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state() != SlotState::NotInit)
        .map(|(i, s)| {
            format!(
                "slot {i}: {:?} owner {} backend {}",
                s.state(),
                s.owner_pid(),
                s.backend_pid()
            )
        })
        .collect();
    assert!(
        settled,
        "slots not reclaimed 30 s after the last client left (dead worker {a_worker}):\n{}",
        table.join("\n")
    );
    assert!(
        seg.slots().iter().all(|s| s.backend_pid() != a_backend
            || !matches!(s.state(), SlotState::Free | SlotState::InUse)),
        "a slot still offers A's backend {a_backend}:\n{}",
        table.join("\n")
    );
}

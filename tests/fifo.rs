//! Clients waiting for a server connection are served first come, first
//! served, and a connection given back goes to one waiter: many clients
//! share few connections in transaction mode without anyone being left
//! behind, and the line is empty once they are done.

mod common;

use std::thread;
use std::time::Duration;

use common::{wait_until, Pgcorral, Postgres};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgcorral::segment::Segment;
use pgcorral::slot::SlotState;

const TRANSACTION: &str = "pipeline = \"transaction\"\nblocking_timeout = \"120s\"";

fn segment(pc: &Pgcorral) -> Segment {
    Segment::attach_pid(pc.pid)
        .unwrap_or_else(|e| panic!("attach to pgcorral {}'s shared segment: {e:?}", pc.pid))
}

/// Every slot is idle or empty, and nobody is in line: nothing was left
/// handed over or held.
fn settled(seg: &Segment) -> bool {
    seg.line().waiting() == 0
        && seg.line().queued() == 0
        && seg
            .slots()
            .iter()
            .all(|s| matches!(s.state(), SlotState::Free | SlotState::NotInit))
}

/// Clients join the line one by one (each only once the one before is
/// seen waiting in the shared segment) while the only connection is held
/// in a transaction; once it is given back they are served in the order
/// they came, which a sequence in the table they insert into records.
#[test]
fn waiting_clients_are_served_in_arrival_order() {
    const CLIENTS: i32 = 8;
    let pg = Postgres::start();
    pg.psql("create table served (n serial primary key, who int not null)");
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 1"));
    let seg = segment(&pc);

    let clients: Vec<_> = (0..CLIENTS).map(|_| pc.connect()).collect();
    let mut holder = pc.connect();
    holder
        .simple_query("begin; select 1")
        .expect("open a transaction on the only connection");

    let mut served = Vec::new();
    for (who, mut client) in clients.into_iter().enumerate() {
        served.push(thread::spawn(move || {
            client
                .simple_query(&format!("insert into served (who) values ({who})"))
                .map(|_| ())
                .map_err(|e| format!("client {who}: {e}"))
        }));
        assert!(
            wait_until(Duration::from_secs(60), || seg.line().waiting() == who + 1),
            "client {who} never joined the line ({} waiting)",
            seg.line().waiting()
        );
    }
    holder.simple_query("commit").expect("commit");
    for h in served {
        h.join().expect("client thread").expect("insert");
    }

    let order: Vec<i32> = pg
        .connect()
        .query("select who from served order by n", &[])
        .expect("read the order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        order,
        (0..CLIENTS).collect::<Vec<_>>(),
        "served out of order"
    );
    drop(holder);
    assert!(
        wait_until(Duration::from_secs(30), || settled(&seg)),
        "line or slots not settled: {} waiting",
        seg.line().waiting()
    );
}

/// Fifty clients, two connections, many short transactions each: every
/// client completes, PostgreSQL never sees a third connection, and nothing
/// is left in line or handed over at the end.
#[test]
fn fifty_clients_share_two_connections_in_transaction_mode() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 20;
    let pg = Postgres::start();
    let pc = std::sync::Arc::new(Pgcorral::start(
        &pg,
        &format!("{TRANSACTION}\nmax_connections = 2"),
    ));
    let seg = segment(&pc);

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let pc = pc.clone();
            thread::spawn(move || -> Result<(), String> {
                let mut c = pc
                    .try_connect()
                    .map_err(|e| format!("client {i}: connect: {e:?}"))?;
                for round in 0..ROUNDS {
                    let rows = c
                        .simple_query(&format!("begin; select {i}; commit"))
                        .map_err(|e| format!("client {i}: round {round}: {e}"))?;
                    let answer = rows.iter().find_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    });
                    if answer != Some(i.to_string()) {
                        return Err(format!("client {i}: got {answer:?}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = clients
        .into_iter()
        .filter_map(|h| h.join().expect("client thread panicked").err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(pg.backend_count(None) <= 2, "more backends than slots");
    assert!(
        wait_until(Duration::from_secs(30), || settled(&seg)),
        "line or slots not settled: {} waiting",
        seg.line().waiting()
    );
}

/// A worker killed (SIGKILL) while it waits in line: the supervisor takes
/// its place out of the line, so the connection given back later is not
/// handed to a dead process, and the next client is served.
#[test]
fn a_worker_killed_in_line_leaves_no_trace() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 1"));
    let seg = segment(&pc);

    // Connecting takes the connection for a moment: both before it is held.
    let mut victim = pc.connect();
    let mut holder = pc.connect();
    holder
        .simple_query("begin; select 1")
        .expect("open a transaction on the only connection");
    let waiting = thread::spawn(move || victim.simple_query("select 1").map(|_| ()));
    assert!(
        wait_until(Duration::from_secs(60), || seg.line().waiting() == 1),
        "the victim never joined the line"
    );
    let owners = seg.line().owners();
    assert_eq!(owners.len(), 1, "one place in line: {owners:?}");
    kill(Pid::from_raw(owners[0]), Signal::SIGKILL).expect("kill the waiting worker");
    assert!(
        waiting.join().expect("victim thread").is_err(),
        "the killed worker's client was served"
    );
    assert!(
        wait_until(Duration::from_secs(30), || seg.line().owners().is_empty()),
        "the dead worker still has a place in line: {:?}",
        seg.line().owners()
    );
    assert_eq!(seg.line().queued(), 0);

    holder.simple_query("commit").expect("commit");
    let mut next = pc.connect();
    next.simple_query("select 1")
        .expect("the next client is served");
    drop((holder, next));
    assert!(
        wait_until(Duration::from_secs(30), || settled(&seg)),
        "line or slots not settled"
    );
}

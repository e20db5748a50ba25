//! More clients than server-connection slots: clients wait for a slot up to
//! `blocking_timeout`, then get SQLSTATE 53300; PostgreSQL never sees more
//! connections than there are slots.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Pgcorral, Postgres};
use postgres::error::SqlState;

const CLIENTS: usize = 50;
const SLOTS: i64 = 5;

#[test]
fn fifty_clients_wait_their_turn_for_five_slots() {
    let pg = Postgres::start();
    let pc = Arc::new(Pgcorral::start(
        &pg,
        "max_connections = 5\nblocking_timeout = \"30s\"",
    ));

    // Watch PostgreSQL from the side for the whole run: the pool must never
    // open more server connections than it has slots.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let mut direct = pg.connect();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = direct
                    .query_one(
                        "select count(*) from pg_stat_activity \
                         where backend_type = 'client backend' and pid <> pg_backend_pid()",
                        &[],
                    )
                    .expect("count backends")
                    .get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let pc = pc.clone();
            thread::spawn(move || -> Result<(), String> {
                let mut c = pc
                    .try_connect()
                    .map_err(|e| format!("client {i}: connect: {e:?}"))?;
                for q in 0..3 {
                    let row = c
                        .query_one("select pg_sleep(0.05), $1::int", &[&(i as i32)])
                        .map_err(|e| format!("client {i}: query {q}: {e:?}"))?;
                    if row.get::<_, i32>(1) != i as i32 {
                        return Err(format!("client {i}: got another client's answer"));
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
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    monitor.join().expect("monitor thread");

    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= SLOTS,
        "PostgreSQL saw {peak} connections at once through a pool of {SLOTS} slots"
    );
    assert!(peak >= 1, "the monitor never saw a pooled connection");
    eprintln!("{CLIENTS} clients done in {elapsed:?}, peak {peak} server connections");
}

#[test]
fn client_beyond_the_slots_gets_53300_after_blocking_timeout() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "max_connections = 5\nblocking_timeout = \"1s\"");

    // Connected and idle: with the performance pipeline each holds its slot
    // for its whole session.
    let mut holders: Vec<_> = (0..SLOTS)
        .map(|i| {
            let mut c = pc.connect();
            c.simple_query("select 1")
                .unwrap_or_else(|e| panic!("holder {i}: {e}"));
            c
        })
        .collect();
    assert_eq!(pg.backend_count(None), SLOTS, "each holder has a backend");

    let started = Instant::now();
    let err = match pc.try_connect() {
        Ok(_) => panic!("a sixth client was served while five hold every slot"),
        Err(e) => e,
    };
    let waited = started.elapsed();
    assert_eq!(
        err.code(),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "expected SQLSTATE 53300, got {err:?}"
    );
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a socket error");
    assert!(!db.message().is_empty(), "the error has a message");
    // The contract is to wait for a slot, then give up: refusing at once
    // would break every client that arrives a moment before another leaves.
    // A lower bound cannot fail on a slow machine (the clock started before
    // the connect); a hang is caught by the client's connect_timeout.
    assert!(
        waited >= Duration::from_millis(900),
        "refused after {waited:?}, before blocking_timeout (1 s)"
    );
    assert_eq!(
        pg.backend_count(None),
        SLOTS,
        "the refused client must not have opened a server connection"
    );

    // The holders are still fine.
    for (i, c) in holders.iter_mut().enumerate() {
        c.simple_query("select 1")
            .unwrap_or_else(|e| panic!("holder {i} after the refusal: {e}"));
    }

    holders.clear();
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "holders' workers still there: {:?}",
        pc.workers()
    );
    let mut late = pc.connect();
    let v: i32 = late
        .query_one("select 42", &[])
        .expect("query after the holders left")
        .get(0);
    assert_eq!(v, 42);
    assert_eq!(
        pg.backend_count(None),
        SLOTS,
        "the late client reuses a pooled connection instead of opening one"
    );
}

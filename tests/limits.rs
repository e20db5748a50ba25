//! Bounds on clients and descriptors: beyond `max_clients`, or with no
//! descriptor left to accept with, a client is answered SQLSTATE 53300 and
//! closed, never left waiting; once the load drops clients are served again.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_until, within, NoTls, Pgcorral, Postgres};
use postgres::error::SqlState;

/// Whether a new client is refused with 53300. A client left unanswered in
/// the backlog fails here instead of hanging the test.
fn refused_with_53300(pc: &Pgcorral) -> bool {
    let config = pc.config();
    within(
        Duration::from_secs(30),
        "a client beyond the limits",
        move || match config.connect(NoTls) {
            Ok(_) => false,
            Err(e) => e.code() == Some(&SqlState::TOO_MANY_CONNECTIONS),
        },
    )
}

#[test]
fn the_client_beyond_max_clients_gets_53300_and_the_next_after_a_leave_is_served() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "max_clients = 3");
    let mut held: Vec<_> = (0..3).map(|_| pc.connect()).collect();
    for c in held.iter_mut() {
        c.simple_query("SELECT 1").expect("a held client is served");
    }

    assert!(refused_with_53300(&pc), "a fourth client must get 53300");
    assert!(
        pc.log().contains("max_clients (3) reached"),
        "the refusal is logged:\n{}",
        pc.log()
    );

    drop(held.pop());
    // The supervisor counts the worker as gone once it has reaped it.
    assert!(
        wait_until(Duration::from_secs(20), || pc.workers().len() == 2),
        "the leaving client's worker ends"
    );
    let served = wait_until(Duration::from_secs(20), || {
        pc.try_connect()
            .and_then(|mut c| c.simple_query("SELECT 1"))
            .is_ok()
    });
    assert!(served, "after one client left a new one is served");
    drop(held);
}

/// The lowest descriptor number `pid` has free: the limit counts numbers,
/// not open descriptors, so a limit equal to it leaves none to open.
fn lowest_free_descriptor(pid: i32) -> usize {
    let open: std::collections::HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the supervisor's descriptors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap_or(0)
}

/// The soft descriptor limit of `pid`, from /proc/PID/limits.
fn soft_nofile(pid: i32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("a soft limit on open files")
}

/// Sets only the soft limit, so that it can be raised back without
/// privileges.
fn set_nofile(pid: i32, limit: usize) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --nofile={limit} on {pid}");
}

#[test]
fn out_of_descriptors_refuses_clients_instead_of_leaving_them_unaccepted() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "max_connections = 2");
    pc.connect()
        .simple_query("SELECT 1")
        .expect("served before the shortage");
    assert!(wait_until(Duration::from_secs(20), || pc
        .workers()
        .is_empty()));

    // Exactly what the supervisor holds now: the next accept fails with
    // EMFILE, and only the reserve lets it take the client off the backlog.
    let soft = soft_nofile(pc.pid);
    set_nofile(pc.pid, lowest_free_descriptor(pc.pid));

    for _ in 0..5 {
        // The harness's connect timeout turns a client left waiting into a
        // failure other than 53300.
        assert!(
            refused_with_53300(&pc),
            "a client without a descriptor for it gets 53300"
        );
    }
    assert!(
        pc.workers().is_empty(),
        "no worker was forked for a refused client"
    );
    let log = pc.log();
    assert_eq!(
        log.matches("out of descriptors").count(),
        1,
        "one line per shortage:\n{log}"
    );

    set_nofile(pc.pid, soft);
    pc.connect()
        .simple_query("SELECT 1")
        .expect("served once descriptors are available again");
}

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_worker_holds_no_management_connection_between_requests() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "max_connections = 2\nworkers_min_spare = 2");
    // Beside its own, the supervisor holds one channel per worker.
    let own = || open_descriptors(pc.pid).saturating_sub(common::children_of(pc.pid).len());
    assert!(wait_until(Duration::from_secs(10), || pc
        .idle_workers()
        .len()
        == 2));
    let idle = own();
    // The first query opens a server connection, which the worker hands
    // to the supervisor over the management socket; its master copy takes
    // the place of a placeholder, so the count does not change for it.
    let mut client = pc.connect();
    client.simple_query("SELECT 1").expect("served");
    assert!(
        wait_until(Duration::from_secs(10), || own() == idle),
        "the supervisor still holds {} descriptors of its own, {idle} before the client came",
        own()
    );
    client.simple_query("SELECT 1").expect("still served");
}

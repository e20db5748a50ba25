//! Cancellation: each client gets a cancel key of its own, and a
//! CancelRequest reaches only the query of the client that holds that key,
//! on the server connection it holds right now.

mod common;

use std::time::Duration;

use common::{wait_until, Pgcorral, Postgres};
use postgres::error::SqlState;
use postgres::NoTls;

fn backend_pid(client: &mut common::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .expect("select pg_backend_pid()")
        .get(0)
}

#[test]
fn a_cancel_stops_the_clients_own_query() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let mut client = pc.connect();
    let token = client.cancel_token();
    let sleeper = std::thread::spawn(move || client.simple_query("select pg_sleep(30)"));
    // Cancel only once the query is running on the server.
    assert!(
        wait_until(Duration::from_secs(30), || !pg
            .backends_with_query("select pg_sleep(30)")
            .is_empty()),
        "the query never started"
    );
    token.cancel_query(NoTls).expect("send cancel");
    // QUERY_CANCELED is proof enough that the cancel, not the end of the
    // 30 s sleep, ended the query; no clock is needed.
    let err = sleeper
        .join()
        .expect("sleeper thread")
        .expect_err("the query was not cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
}

#[test]
fn another_clients_key_or_a_stale_key_cancels_nothing() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "max_connections = 2");

    // A client that leaves: its key must die with its session even though
    // its backend goes on serving the next client.
    let mut gone = pc.connect();
    let pooled_backend = backend_pid(&mut gone);
    let stale = gone.cancel_token();
    drop(gone);
    assert!(wait_until(Duration::from_secs(30), || pc
        .workers()
        .is_empty()));

    // The first client after it takes the idle pooled connection, so the
    // stale key names the very backend that will be running a query.
    let mut busy = pc.connect();
    let busy_backend = backend_pid(&mut busy);
    assert_eq!(
        busy_backend, pooled_backend,
        "the pooled backend was not reused"
    );
    let mut idle = pc.connect();
    let idle_token = idle.cancel_token();
    let idle_backend = backend_pid(&mut idle);

    let sleeper = std::thread::spawn(move || busy.simple_query("select pg_sleep(2)").map(|_| ()));
    assert!(wait_until(Duration::from_secs(30), || !pg
        .backends_with_query("select pg_sleep(2)")
        .is_empty()));
    stale.cancel_query(NoTls).expect("send stale cancel");
    idle_token
        .cancel_query(NoTls)
        .expect("send idle client's cancel");
    sleeper
        .join()
        .expect("sleeper thread")
        .expect("a cancel with another key reached the busy client's query");
    // The idle client is untouched too.
    assert_eq!(backend_pid(&mut idle), idle_backend);
}

//! A server connection outlives the worker that used it: the next client for
//! the same database and user is given the same PostgreSQL backend.

mod common;

use std::time::Duration;

use common::{wait_until, Pgcorral, Postgres};

fn backend_pid(client: &mut common::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .expect("select pg_backend_pid()")
        .get(0)
}

/// The slot goes back to the pool when the worker ends, not when the client
/// sends Terminate, so wait for the worker before the next client comes:
/// otherwise that client could legitimately be given a second connection.
fn wait_workers_gone(pc: &Pgcorral) {
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "workers still running 30 s after their clients left: {:?}",
        pc.workers()
    );
}

#[test]
fn consecutive_clients_share_one_backend() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");

    let mut first = pc.connect();
    let pid1 = backend_pid(&mut first);
    drop(first);
    wait_workers_gone(&pc);

    let mut second = pc.connect();
    let pid2 = backend_pid(&mut second);
    assert_eq!(pid1, pid2, "the second client got another backend");
    drop(second);
    wait_workers_gone(&pc);

    // psql (a different client library, over the Unix socket this time)
    // lands on the same pooled connection.
    let pid3: i32 = pc
        .psql_unix("select pg_backend_pid()")
        .parse()
        .expect("psql printed a pid");
    assert_eq!(pid1, pid3, "a Unix-socket client got another backend");
    wait_workers_gone(&pc);

    // PostgreSQL sees exactly one client backend: the pooled one, alive
    // with no client attached.
    assert_eq!(
        pg.backend_count(None),
        1,
        "PostgreSQL should see only the pooled connection"
    );
    assert!(pg.backend_exists(pid1), "pooled backend {pid1} is gone");
}

#[test]
fn another_user_gets_its_own_backend() {
    let pg = Postgres::start();
    pg.psql("create role alice login");
    let pc = Pgcorral::start(&pg, "");

    let mut pg_client = pc.connect();
    let pid_postgres = backend_pid(&mut pg_client);
    drop(pg_client);
    wait_workers_gone(&pc);

    let mut alice = pc
        .config()
        .user("alice")
        .connect(common::NoTls)
        .expect("connect as alice through pgcorral");
    let row = alice
        .query_one("select pg_backend_pid(), current_user::text", &[])
        .expect("query as alice");
    let (pid_alice, user): (i32, String) = (row.get(0), row.get(1));
    assert_eq!(user, "alice", "the connection is alice's own");
    assert_ne!(
        pid_alice, pid_postgres,
        "alice was handed postgres's pooled connection"
    );
    drop(alice);
    wait_workers_gone(&pc);

    let mut again = pc.connect();
    assert_eq!(
        backend_pid(&mut again),
        pid_postgres,
        "postgres's pooled connection was lost while alice used hers"
    );
}

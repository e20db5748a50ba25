//! Shutting down: SIGTRAP lets connected clients finish and refuses new
//! ones; SIGTERM ends everything at once and leaves nothing behind, neither
//! a process nor a server connection.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, within, Pgcorral, Postgres};
use nix::sys::signal::Signal;

/// Would a new client be turned away right now? Either the listener is gone
/// (connect fails) or the daemon answers with an error; a connection that
/// simply hangs is a failure, so each attempt is bounded.
fn refuses_tcp(pc: &Pgcorral) -> bool {
    let config = pc.config();
    within(
        Duration::from_secs(15),
        "new TCP client during shutdown",
        move || config.connect(common::NoTls).is_err(),
    )
}

fn refuses_unix(pc: &Pgcorral) -> bool {
    if !pc.unix_socket().exists() {
        return true;
    }
    let config = pc.config_unix();
    within(
        Duration::from_secs(15),
        "new Unix-socket client during shutdown",
        move || config.connect(common::NoTls).is_err(),
    )
}

#[test]
fn sigtrap_lets_connected_clients_finish() {
    let pg = Postgres::start();
    let mut pc = Pgcorral::start(&pg, "");

    let mut client = pc.connect();
    let v: i32 = client
        .query_one("select 1", &[])
        .expect("query before SIGTRAP")
        .get(0);
    assert_eq!(v, 1);

    pc.signal(Signal::SIGTRAP);

    assert!(
        wait_until(Duration::from_secs(30), || refuses_tcp(&pc)),
        "a new TCP client was still served 30 s after SIGTRAP"
    );
    assert!(
        refuses_unix(&pc),
        "a new Unix-socket client was served after SIGTRAP"
    );

    // The client that was already there goes on as if nothing happened.
    for i in 0..5 {
        let row = client
            .query_one("select $1::int, pg_sleep(0.1)::text", &[&i])
            .unwrap_or_else(|e| panic!("query {i} after SIGTRAP: {e}"));
        assert_eq!(row.get::<_, i32>(0), i);
    }
    let mut tx = client.transaction().expect("begin after SIGTRAP");
    tx.batch_execute("create temp table t (v int); insert into t values (1)")
        .expect("statements in a transaction after SIGTRAP");
    tx.commit().expect("commit after SIGTRAP");

    // Everything above was answered, so the daemon was up all along; it
    // must still be, with the client connected.
    assert_eq!(
        pc.wait_exit(Duration::ZERO),
        None,
        "pgcorral exited while a client was still connected"
    );

    drop(client);
    let status = pc
        .wait_exit(Duration::from_secs(30))
        .expect("pgcorral still running 30 s after its last client left");
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown should exit 0, got {status}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || pc.group_members().is_empty()),
        "processes left in pgcorral's group: {:?}",
        pc.group_members()
    );
    assert!(
        wait_until(Duration::from_secs(30), || pg.backend_count(None) == 0),
        "pooled server connections outlived pgcorral: {} client backends",
        pg.backend_count(None)
    );
}

#[test]
fn sigterm_ends_everything_now() {
    // One client is inside a long query when the daemon goes. PostgreSQL
    // only notices a closed socket when it next touches it;
    // client_connection_check_interval makes it check during the query, so
    // "no backend left" can be asserted without waiting out the sleep.
    let pg = Postgres::start_with(&[("client_connection_check_interval", "100ms")]);
    let mut pc = Pgcorral::start(&pg, "");

    let mut idle = pc.connect();
    idle.simple_query("select 1").expect("idle client's query");
    let mut busy = pc.connect_unix();
    let busy_thread = thread::spawn(move || busy.simple_query("select pg_sleep(30)").map(|_| ()));
    assert!(
        wait_until(Duration::from_secs(10), || pg
            .backends_with_query("select pg_sleep(30)")
            .len()
            == 1),
        "the busy client's query never started"
    );
    assert_eq!(pg.backend_count(None), 2, "two pooled connections in use");
    let workers = pc.workers();
    assert_eq!(workers.len(), 2, "one worker per client: {workers:?}");

    let sent = Instant::now();
    pc.signal(Signal::SIGTERM);
    let status = pc
        .wait_exit(Duration::from_secs(30))
        .expect("pgcorral still running 30 s after SIGTERM");
    eprintln!(
        "pgcorral exited with {status} {:?} after SIGTERM",
        sent.elapsed()
    );

    assert!(
        wait_until(Duration::from_secs(30), || pc.group_members().is_empty()),
        "processes of pgcorral's group outlived it: {:?}",
        pc.group_members()
    );
    assert!(
        idle.simple_query("select 1").is_err(),
        "a client still got answers after SIGTERM"
    );
    let busy_result = busy_thread.join().expect("busy client's thread");
    assert!(
        busy_result.is_err(),
        "the busy client's query finished normally despite SIGTERM"
    );
    assert!(
        wait_until(Duration::from_secs(30), || pg.backend_count(None) == 0),
        "PostgreSQL still has {} client backends 30 s after pgcorral exited:\n{}",
        pg.backend_count(None),
        pg.psql(
            "select pid, state, query from pg_stat_activity \
             where backend_type = 'client backend' and pid <> pg_backend_pid()"
        )
    );
    // The TCP listener died with the process (the group is empty); its
    // port may already serve another test. The socket files are checked.
    for socket in [
        pc.unix_socket(),
        pc.socket_dir.join(format!(".s.pgcorral.{}", pc.port)),
    ] {
        assert!(!socket.exists(), "{} left after exit", socket.display());
    }
}

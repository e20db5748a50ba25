//! Clients of every kind we ship against (psql, the `postgres` crate) run
//! queries through pgcorral over TCP and over the Unix socket.

mod common;

use common::{Client, Pgcorral, Postgres};
use postgres::error::SqlState;

/// A session's worth of work: simple and extended protocol, several rows, a
/// server error that must not end the session, and a transaction.
fn exercise(client: &mut Client, how: &str) {
    let row = client
        .query_one("select current_user::text, current_database()::text", &[])
        .unwrap_or_else(|e| panic!("{how}: simple query: {e}"));
    assert_eq!(row.get::<_, String>(0), "postgres", "{how}: current_user");
    assert_eq!(
        row.get::<_, String>(1),
        "postgres",
        "{how}: current_database"
    );

    let rows = client
        .query("select g from generate_series(1, $1::int) g", &[&1000i32])
        .unwrap_or_else(|e| panic!("{how}: extended query: {e}"));
    let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        got,
        (1..=1000).collect::<Vec<i32>>(),
        "{how}: generate_series rows"
    );

    let err = client
        .simple_query("select 1/0")
        .expect_err("division by zero must fail");
    assert_eq!(
        err.code(),
        Some(&SqlState::DIVISION_BY_ZERO),
        "{how}: the server's error reaches the client: {err:?}"
    );

    let mut tx = client
        .transaction()
        .unwrap_or_else(|e| panic!("{how}: begin after an error: {e}"));
    tx.batch_execute("create temp table t (v text); insert into t values ('a'), ('b')")
        .unwrap_or_else(|e| panic!("{how}: in transaction: {e}"));
    let n: i64 = tx
        .query_one("select count(*) from t", &[])
        .unwrap_or_else(|e| panic!("{how}: count: {e}"))
        .get(0);
    assert_eq!(n, 2, "{how}: rows seen inside the transaction");
    tx.rollback()
        .unwrap_or_else(|e| panic!("{how}: rollback: {e}"));
}

#[test]
fn postgres_crate_over_tcp_and_unix_socket() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");

    exercise(&mut pc.connect(), "TCP");
    exercise(&mut pc.connect_unix(), "Unix socket");

    // Both at once, to see that the two listeners are independent.
    let mut a = pc.connect();
    let mut b = pc.connect_unix();
    let x: i32 = a.query_one("select 7", &[]).expect("query on TCP").get(0);
    let y: i32 = b
        .query_one("select 8", &[])
        .expect("query on Unix socket")
        .get(0);
    assert_eq!((x, y), (7, 8));
}

#[test]
fn psql_over_tcp_and_unix_socket() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");

    assert_eq!(pc.psql("select 1 + 1"), "2");
    assert_eq!(pc.psql_unix("select 2 + 2"), "4");
    assert_eq!(
        pc.psql("select string_agg(g::text, ',') from generate_series(1, 5) g"),
        "1,2,3,4,5"
    );
    // The query reached the PostgreSQL we started, not some other one.
    assert_eq!(
        pc.psql_unix("show port"),
        pg.port.to_string(),
        "pgcorral talks to the test's PostgreSQL"
    );
    let err = pc
        .try_psql("select * from no_such_table")
        .expect_err("a missing table is an error");
    assert!(
        err.contains("no_such_table"),
        "psql shows the server's error: {err}"
    );
}

#[test]
fn connections_and_disconnections_are_logged_when_asked() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "log_level = \"info\"\nlog_connections = true\nlog_disconnections = true",
    );
    let mut c = pc.connect();
    c.simple_query("select 1").expect("query");
    drop(c);
    assert!(
        common::wait_until(std::time::Duration::from_secs(30), || {
            let log = pc.log();
            log.contains("connection: postgres/postgres from 127.0.0.1:")
                && log.contains("disconnection: postgres/postgres from 127.0.0.1:")
                && log.contains("(client terminated)")
        }),
        "log lines missing:\n{}",
        pc.log()
    );
}

#[test]
fn process_titles_name_the_supervisor_and_each_client() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let cmdline = |pid: i32| -> String {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_default()
    };
    assert_eq!(cmdline(pc.pid), "pgcorral: supervisor");
    let mut c = pc.connect();
    c.simple_query("select 1").expect("query");
    let workers = pc.workers();
    assert_eq!(workers.len(), 1);
    let title = cmdline(workers[0]);
    assert!(
        title.starts_with("pgcorral: postgres/postgres 127.0.0.1:"),
        "worker title: {title:?}"
    );
}

#[test]
fn the_log_file_is_rotated_by_size() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("pgcorral.log");
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "log_type = \"file\"\nlog_path = \"{}\"\nlog_level = \"debug\"\nlog_rotation_size = \"1K\"",
            log.display()
        ),
    );
    let rotated = || {
        std::fs::read_dir(dir.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("pgcorral.log."))
                    .count()
            })
            .unwrap_or(0)
    };
    for _ in 0..20 {
        let mut c = pc.connect();
        c.simple_query("select 1").expect("query");
    }
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || rotated() >= 1),
        "no rotated log file in {}",
        dir.path().display()
    );
    let current = std::fs::read_to_string(&log).expect("the current log file exists");
    assert!(current.contains("log rotated"), "{current}");
}

/// `port = 0` (what the harness always asks for): the kernel picks the
/// port, and the port file, the log line, the Unix socket and the
/// management socket all name the one port actually bound.
#[test]
fn port_zero_names_everything_after_the_bound_port() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    assert_ne!(pc.port, 0);
    assert!(
        std::fs::read_to_string(&pc.config_path)
            .expect("read the config")
            .contains("\nport = 0\n"),
        "the harness configures port 0"
    );
    assert!(common::tcp_listening(pc.port), "nothing on {}", pc.port);
    assert!(
        pc.log()
            .contains(&format!("listening on 127.0.0.1:{}", pc.port)),
        "{}",
        pc.log()
    );
    assert!(pc.unix_socket().exists(), "{}", pc.unix_socket().display());
    assert!(pc
        .socket_dir
        .join(format!(".s.pgcorral.{}", pc.port))
        .exists());
    assert_eq!(pc.psql_unix("select 7"), "7");
    assert_eq!(pc.psql("select 8"), "8");
}

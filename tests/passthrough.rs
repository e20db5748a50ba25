//! Transaction pooling with `max_prepared_statements = 0`: statement names
//! reach PostgreSQL as the client sent them, every client message is
//! streamed, and the answers are still matched to requests so that a
//! connection goes back to the pool as soon as the server is idle.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{pgbench, wait_until, Pgcorral, Postgres};

const PASS_THROUGH: &str =
    "pipeline = \"transaction\"\nmax_prepared_statements = 0\nlog_level = \"info\"";

fn failed_transactions(out: &str) -> Option<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn pgbench_extended_over_a_small_pool() {
    let pg = Postgres::start();
    let (ok, out) = pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i: {out}");
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "{PASS_THROUGH}\nmax_connections = 20\nblocking_timeout = \"120s\"\n[[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 4\n"
        ),
    );
    for mode in ["simple", "extended"] {
        let (ok, out) = pgbench(
            pc.port,
            &["-M", mode, "-c", "12", "-j", "2", "-t", "100", "-n"],
        );
        assert!(ok, "pgbench -M {mode} with names passed through:\n{out}");
        assert_eq!(failed_transactions(&out), Some(0), "{out}");
    }
}

/// COPY through the extended protocol (as the postgres crate sends it) in
/// both directions; the only connection is free for another client as
/// soon as each COPY is over, while the first client stays connected.
#[test]
fn extended_copy_gives_the_connection_back() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{PASS_THROUGH}\nmax_connections = 1"));
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("create table lines(n int, line text)")
        .expect("create");
    let data: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{i}\tline {i:0>60}\n").into_bytes())
        .collect();
    let mut w = a.copy_in("copy lines from stdin").expect("copy in");
    for chunk in data.chunks(7_000) {
        w.write_all(chunk).expect("write");
    }
    assert_eq!(w.finish().expect("finish copy in"), 20_000);
    let n: i64 = b
        .query_one("select count(*) from lines", &[])
        .expect("another client after COPY FROM")
        .get(0);
    assert_eq!(n, 20_000);
    let mut back = Vec::new();
    a.copy_out("copy (select * from lines order by n) to stdout")
        .expect("copy out")
        .read_to_end(&mut back)
        .expect("read");
    assert!(back == data, "COPY TO returned other bytes");
    b.batch_execute("select 1")
        .expect("another client after COPY TO");
}

/// Named statements are the connection's own: they work while the client
/// keeps the connection (here the only one), PostgreSQL's own errors reach
/// the client, and the session recovers after them.
#[test]
fn named_statements_and_errors_pass_through() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{PASS_THROUGH}\nmax_connections = 1"));
    let mut a = pc.connect();
    let st = a.prepare("select $1::int * 2").expect("prepare");
    for i in 0..5 {
        let v: i32 = a.query_one(&st, &[&i]).expect("execute").get(0);
        assert_eq!(v, i * 2);
    }
    let err = a
        .query_one("select 1/0", &[])
        .expect_err("division by zero");
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    let v: i32 = a.query_one(&st, &[&21]).expect("after the error").get(0);
    assert_eq!(v, 42);
    let mut t = a.transaction().expect("begin");
    t.batch_execute("create temp table t(x int) on commit drop")
        .expect("temp");
    t.commit().expect("commit");
    drop(a);
    assert!(wait_until(Duration::from_secs(10), || pc
        .workers()
        .is_empty()));
    let mut b = pc.connect();
    b.batch_execute("select 1")
        .expect("the connection went back clean");
}

//! Transaction pooling: many clients share few server connections, and
//! nothing of one client's session reaches another: settings, cancels,
//! open transactions.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{output_within, pg_bin, pgbench, wait_until, Pgcorral, Postgres};
use postgres::error::SqlState;
use postgres::NoTls;

const TRANSACTION: &str = "pipeline = \"transaction\"\nlog_level = \"info\"";

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

/// Client backends PostgreSQL has, other than the monitor itself.
const COUNT_BACKENDS: &str = "select count(*) from pg_stat_activity \
     where backend_type = 'client backend' and pid <> pg_backend_pid()";

fn pgbench_mode_within_limit(mode: &str) {
    let pg = Postgres::start();
    let (ok, out) = pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i: {out}");
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "{TRANSACTION}\nmax_connections = 40\nblocking_timeout = \"120s\"\n[[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 10\n"
        ),
    );

    // Watch PostgreSQL directly for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (stop, peak) = (stop.clone(), peak.clone());
        let mut direct = pg.connect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = direct.query_one(COUNT_BACKENDS, &[]).expect("count").get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut args = vec!["-M", mode, "-c", "50", "-j", "2", "-T", "20", "-n"];
    if mode == "prepared" {
        args.push("-S");
    }
    let (ok, out) = pgbench(pc.port, &args);
    stop.store(true, Ordering::Relaxed);
    monitor.join().expect("monitor");
    assert!(
        ok,
        "pgbench -M {mode} through the transaction pipeline:\n{out}"
    );
    assert_eq!(failed_transactions(&out), Some(0), "{out}");
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= 10,
        "PostgreSQL saw {peak} backends through a limit of 10"
    );
    assert!(peak >= 2, "the pool barely worked: peak {peak}");
}

#[test]
fn pgbench_simple_over_a_pool_of_ten() {
    pgbench_mode_within_limit("simple");
}

#[test]
fn pgbench_extended_over_a_pool_of_ten() {
    pgbench_mode_within_limit("extended");
}

/// Select-only: pgbench prepares each statement with a blocking call from a
/// thread that also drives other clients, so with the tpcb-like script one
/// client's prepare waiting for a pooled connection can stall another
/// client's open transaction that everyone waits on (a client-side
/// deadlock any transaction pooler shares). Select-only holds no lock
/// across statements.
#[test]
fn pgbench_prepared_over_a_pool_of_ten() {
    pgbench_mode_within_limit("prepared");
}

#[test]
fn a_set_never_leaks_to_another_client() {
    let pg = Postgres::start();
    // One server connection: both clients necessarily share it.
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 1"));
    let mut a = pc.connect();
    let mut b = pc.connect();
    let pid_a: i32 = a
        .query_one("select pg_backend_pid()", &[])
        .expect("a")
        .get(0);
    let pid_b: i32 = b
        .query_one("select pg_backend_pid()", &[])
        .expect("b")
        .get(0);
    assert_eq!(pid_a, pid_b, "the clients should share the only connection");

    let tz = |c: &mut postgres::Client| -> String {
        c.query_one("select current_setting('TimeZone')", &[])
            .expect("tz")
            .get(0)
    };
    let original = tz(&mut b);
    a.batch_execute("SET TimeZone = 'Pacific/Auckland'")
        .expect("set");
    for _ in 0..5 {
        assert_eq!(tz(&mut a), "Pacific/Auckland");
        assert_eq!(tz(&mut b), original, "client b saw client a's TimeZone");
    }
}

#[test]
fn a_startup_client_encoding_holds_in_every_transaction() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 1"));
    // Client a keeps taking the only connection (with its UTF8 encoding)
    // between client b's transactions.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        let mut a = pc.connect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                a.batch_execute("select 1").expect("a");
            }
        })
    };
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args([
        "-X",
        "-At",
        "-h",
        "127.0.0.1",
        "-p",
        &pc.port.to_string(),
        "-U",
        "postgres",
    ]);
    for _ in 0..5 {
        cmd.args(["-c", "show client_encoding", "-c", "select pg_sleep(0.05)"]);
    }
    cmd.arg("postgres").env("PGCLIENTENCODING", "LATIN1");
    let out = output_within(&mut cmd, Duration::from_secs(60)).expect("psql");
    stop.store(true, Ordering::Relaxed);
    busy.join().expect("busy client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encodings: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(encodings, vec!["LATIN1"; 5], "{text}");
}

#[test]
fn cancel_reaches_the_query_on_whatever_connection_it_runs() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 3"));
    let idle = pc.connect();
    let idle_token = idle.cancel_token();
    let mut busy = pc.connect();
    let token = busy.cancel_token();

    // The idle client's key touches nothing.
    let mut other = pc.connect();
    let sleeper = std::thread::spawn(move || other.simple_query("select pg_sleep(1)").map(|_| ()));
    assert!(wait_until(Duration::from_secs(30), || !pg
        .backends_with_query("select pg_sleep(1)")
        .is_empty()));
    idle_token
        .cancel_query(NoTls)
        .expect("cancel with the idle key");
    sleeper
        .join()
        .expect("thread")
        .expect("the idle client's key cancelled another client's query");

    let sleeper = std::thread::spawn(move || busy.simple_query("select pg_sleep(30)"));
    assert!(wait_until(Duration::from_secs(30), || !pg
        .backends_with_query("select pg_sleep(30)")
        .is_empty()));
    token.cancel_query(NoTls).expect("cancel");
    // QUERY_CANCELED, not the end of the 30 s sleep, shows the cancel landed.
    let err = sleeper.join().expect("thread").expect_err("not cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    drop(idle);
}

#[test]
fn a_client_killed_mid_transaction_leaves_nothing_behind() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 1"));
    let mut victim = pc.connect();
    victim
        .batch_execute("BEGIN; CREATE TEMP TABLE leftover(x int); INSERT INTO leftover VALUES (1);")
        .expect("open a transaction");
    // The client vanishes: its socket closes while the transaction is open.
    drop(victim);

    // The next client is served at once, on a connection without the
    // transaction; PostgreSQL ends the old backend (and its temp table)
    // as soon as its socket is closed.
    let mut next = pc.connect();
    let leftovers = |c: &mut postgres::Client| -> (i64, i64) {
        let temp: i64 = c
            .query_one(
                "select count(*) from pg_class where relname = 'leftover'",
                &[],
            )
            .expect("temp tables")
            .get(0);
        let open: i64 = c
            .query_one(
                "select count(*) from pg_stat_activity where state like 'idle in transaction%'",
                &[],
            )
            .expect("open transactions")
            .get(0);
        (temp, open)
    };
    let mut seen = (1, 1);
    assert!(
        wait_until(Duration::from_secs(30), || {
            seen = leftovers(&mut next);
            seen == (0, 0)
        }),
        "temp tables / open transactions left: {seen:?}"
    );
}

/// 100 MB through COPY in both directions, byte for byte.
fn copy_round_trip(pipeline: &str) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        &format!("pipeline = \"{pipeline}\"\nlog_level = \"info\""),
    );
    let mut c = pc.connect();
    c.batch_execute("create table blob_lines(n int, line text)")
        .expect("create");
    // 100 MB of lines with varied content: 1,000,000 lines of ~100 bytes.
    let mut data = Vec::with_capacity(101 * 1024 * 1024);
    let mut n: u64 = 0x9e3779b97f4a7c15;
    for i in 0..1_000_000u32 {
        n ^= n << 13;
        n ^= n >> 7;
        n ^= n << 17;
        let line = format!("{i}\t{:0>94x}\n", n as u128 * 0x1000193);
        data.extend_from_slice(line.as_bytes());
    }
    assert!(data.len() >= 100_000_000);
    let mut w = c.copy_in("copy blob_lines from stdin").expect("copy in");
    for chunk in data.chunks(1 << 20) {
        w.write_all(chunk).expect("write");
    }
    let rows = w.finish().expect("finish copy in");
    assert_eq!(rows, 1_000_000);
    let mut back = Vec::with_capacity(data.len());
    c.copy_out("copy (select * from blob_lines order by n) to stdout")
        .expect("copy out")
        .read_to_end(&mut back)
        .expect("read");
    assert_eq!(back.len(), data.len(), "{pipeline}: size differs");
    assert!(back == data, "{pipeline}: content differs");
}

#[test]
fn copy_100mb_through_the_performance_pipeline() {
    copy_round_trip("performance");
}

#[test]
fn copy_100mb_through_the_session_pipeline() {
    copy_round_trip("session");
}

#[test]
fn copy_100mb_through_the_transaction_pipeline() {
    copy_round_trip("transaction");
}

#[test]
fn session_pipeline_resets_a_connection_before_reuse() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "pipeline = \"session\"\nmax_connections = 1");
    let mut a = pc.connect();
    let pid: i32 = a
        .query_one("select pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    a.batch_execute("SET work_mem = '7MB'; CREATE TEMP TABLE mine(x int)")
        .expect("dirty the session");
    drop(a);
    assert!(wait_until(Duration::from_secs(30), || pc
        .workers()
        .is_empty()));
    let mut b = pc.connect();
    let pid_b: i32 = b
        .query_one("select pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    assert_eq!(pid, pid_b, "the connection should be reused");
    let wm: String = b.query_one("show work_mem", &[]).expect("work_mem").get(0);
    assert_ne!(wm, "7MB", "a setting survived the reset");
    let temp: i64 = b
        .query_one("select count(*) from pg_class where relname = 'mine'", &[])
        .expect("temp")
        .get(0);
    assert_eq!(temp, 0, "a temp table survived the reset");
}

/// Reads one whole message: (tag, body).
fn read_msg(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("message header");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    assert!((4..1 << 20).contains(&len), "odd length {len}");
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).expect("message body");
    (head[0], body)
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn pipelined_extended_protocol_under_one_sync() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 1"));
    // Another client keeps taking the only connection between ours.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        let mut other = pc.connect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                other.batch_execute("select 1").expect("other client");
            }
        })
    };
    let mut s = pc.tcp_stream();
    s.write_all(&common::startup_message("postgres", "postgres"))
        .expect("startup");
    loop {
        let (tag, body) = read_msg(&mut s);
        assert_ne!(
            tag,
            b'E',
            "startup failed: {}",
            String::from_utf8_lossy(&body)
        );
        if tag == b'Z' {
            break;
        }
    }
    for round in 0..3 {
        // Ten unnamed statements, each parsed, bound and executed, one Sync.
        let mut batch = Vec::new();
        for i in 0..10 {
            let sql = format!("select {i} + {round} * 100\0");
            let mut parse = b"\0".to_vec();
            parse.extend_from_slice(sql.as_bytes());
            parse.extend_from_slice(&0u16.to_be_bytes());
            batch.extend(msg(b'P', &parse));
            batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
            batch.extend(msg(b'E', b"\0\0\0\0\0"));
        }
        batch.extend(msg(b'S', b""));
        s.write_all(&batch).expect("write batch");
        let mut values = Vec::new();
        loop {
            let (tag, body) = read_msg(&mut s);
            match tag {
                b'D' => {
                    // One column: Int16 count, Int32 length, text.
                    let len = u32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
                    values.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
                }
                b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
                b'Z' => {
                    assert_eq!(body, b"I");
                    break;
                }
                _ => {}
            }
        }
        let want: Vec<String> = (0..10).map(|i| (i + round * 100).to_string()).collect();
        assert_eq!(values, want, "round {round}");
    }
    s.write_all(&msg(b'X', b"")).expect("terminate");
    stop.store(true, Ordering::Relaxed);
    busy.join().expect("busy client");
}

/// Two clients prepare a statement under the same name with different
/// text, and run it in alternating transactions over three connections
/// shared with a third client that keeps shuffling them: each always gets
/// its own statement's result.
#[test]
fn same_statement_name_different_text_in_two_clients() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 3"));
    let mut a = pc.connect();
    let mut b = pc.connect();
    // The postgres crate names statements s0, s1, … per connection, so both
    // clients' first statement is called s0.
    let sa = a
        .prepare("select 'from a'::text, $1::int + 1")
        .expect("prepare a");
    let sb = b
        .prepare("select 'from b'::text, $1::int * 10")
        .expect("prepare b");
    let stop = Arc::new(AtomicBool::new(false));
    let shuffler = {
        let stop = stop.clone();
        let mut c = pc.connect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute("select pg_sleep(0.001)").expect("shuffler");
            }
        })
    };
    let mut backends = std::collections::HashSet::new();
    for i in 0..200i32 {
        let ra = a.query_one(&sa, &[&i]).expect("a runs its statement");
        assert_eq!(
            (ra.get::<_, String>(0), ra.get::<_, i32>(1)),
            ("from a".to_string(), i + 1)
        );
        let rb = b.query_one(&sb, &[&i]).expect("b runs its statement");
        assert_eq!(
            (rb.get::<_, String>(0), rb.get::<_, i32>(1)),
            ("from b".to_string(), i * 10)
        );
        if i % 20 == 0 {
            let mut tx = a.transaction().expect("begin");
            let pid: i32 = tx
                .query_one("select pg_backend_pid()", &[])
                .expect("pid")
                .get(0);
            let r = tx.query_one(&sa, &[&i]).expect("inside a transaction");
            assert_eq!(r.get::<_, i32>(1), i + 1);
            tx.commit().expect("commit");
            backends.insert(pid);
        }
    }
    stop.store(true, Ordering::Relaxed);
    shuffler.join().expect("shuffler");
    // Force a move: once all is quiet a holder takes the connection client
    // a last used (the pool hands out the lowest free slot, as it did to
    // a), so a's next transaction runs on another connection, where its
    // statement must be prepared on demand.
    let pid_of_a = |a: &mut postgres::Client| -> i32 {
        let mut tx = a.transaction().expect("begin");
        let pid: i32 = tx
            .query_one("select pg_backend_pid()", &[])
            .expect("pid")
            .get(0);
        let r = tx
            .query_one(&sa, &[&1000])
            .expect("statement in a transaction");
        assert_eq!(r.get::<_, i32>(1), 1001);
        tx.commit().expect("commit");
        pid
    };
    let before = pid_of_a(&mut a);
    let mut holder = pc.connect();
    let mut held = holder.transaction().expect("holder begins");
    let held_pid: i32 = held
        .query_one("select pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let after = pid_of_a(&mut a);
    held.commit().expect("holder commits");
    backends.insert(before);
    backends.insert(after);
    assert_eq!(
        held_pid, before,
        "the holder did not take client a's connection"
    );
    assert_ne!(after, before, "client a did not move to another connection");
    // Closing one client's statement leaves the other's working.
    drop(sa);
    let rb = b
        .query_one(&sb, &[&7i32])
        .expect("b after a closed its statement");
    assert_eq!(rb.get::<_, i32>(1), 70);
}

/// Pids of PostgreSQL's client backends other than the asking one.
fn pool_backends(pg: &Postgres) -> Vec<i32> {
    let mut pids: Vec<i32> = pg
        .psql(
            "select pid from pg_stat_activity \
             where backend_type = 'client backend' and pid <> pg_backend_pid()",
        )
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

fn prepared_round(client: &mut postgres::Client) {
    for round in 0..3 {
        let mut t = client.transaction().expect("begin");
        let stmt = t.prepare("select $1::int + 1").expect("prepare");
        for i in 0..3 {
            let got: i32 = t
                .query_one(&stmt, &[&(round * 10 + i)])
                .expect("execute")
                .get(0);
            assert_eq!(got, round * 10 + i + 1);
        }
        t.commit().expect("commit");
    }
    let stmt = client
        .prepare("select $1::int + 1")
        .expect("prepare outside");
    let got: i32 = client.query_one(&stmt, &[&41]).expect("execute").get(0);
    assert_eq!(got, 42);
}

/// Connections prefilled into slots that held other connections before
/// start with no prepared statements recorded: a client's statements are
/// prepared again on them, never assumed to be there.
#[test]
fn prepared_statements_on_prefilled_connections() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "{TRANSACTION}\nmax_prepared_statements = 20\nmax_connection_age = \"3s\"\n\
             background_interval = \"1s\"\n\
             [[limit]]\ndatabase = \"postgres\"\nuser = \"postgres\"\nmax_size = 4\n\
             initial_size = 2\nmin_size = 2\n"
        ),
    );
    assert!(
        wait_until(Duration::from_secs(5), || pool_backends(&pg).len() == 2),
        "prefill: {:?}",
        pool_backends(&pg)
    );
    let mut client = pc.connect();
    prepared_round(&mut client);
    drop(client);
    // max_connection_age closes the connections; prefill opens new ones in
    // the emptied slots.
    let old = pool_backends(&pg);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = pool_backends(&pg);
            now.len() == 2 && now.iter().all(|p| !old.contains(p))
        }),
        "the pool was not renewed: before {old:?}, now {:?}",
        pool_backends(&pg)
    );
    let mut client = pc.connect();
    prepared_round(&mut client);
}

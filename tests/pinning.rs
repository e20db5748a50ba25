//! Transaction pooling and session state that cannot follow a client: the
//! client that creates it keeps its connection (and the state) for the rest
//! of its session, no other client ever sees it, and the connection is
//! reset before it serves anyone else.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{output_within, wait_until, Pgcorral, Postgres};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

const TRANSACTION: &str = "pipeline = \"transaction\"\nlog_level = \"info\"";
const LONG: Duration = Duration::from_secs(30);

fn pid(c: &mut Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

/// Runs `sql` (one boolean column) as a simple query.
fn check(c: &mut Client, sql: &str) -> bool {
    let rows = c.simple_query(sql).expect(sql);
    rows.iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
            _ => None,
        })
        .expect("one row")
}

/// `pgcorral-cli --format json status`.
fn status(pc: &Pgcorral) -> String {
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_pgcorral-cli"))
            .arg("-s")
            .arg(&pc.socket_dir)
            .arg("-p")
            .arg(pc.port.to_string())
            .args(["--format", "json", "status"]),
        LONG,
    )
    .expect("pgcorral-cli");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pinned(pc: &Pgcorral) -> Option<u32> {
    let s = status(pc);
    let at = s.find("\"pinned\":")? + "\"pinned\":".len();
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Two server connections: once client A keeps one, client B has the
/// other.
fn start(extra: &str) -> (Postgres, Pgcorral) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("{TRANSACTION}\nmax_connections = 2\n{extra}"));
    (pg, pc)
}

/// A creates state with `create`; `present` (a boolean query) tells
/// whether a session has it; `more` is run by A in each later transaction
/// and must work. A keeps the state and its backend while B never sees
/// it; after A leaves, the connection it had is reset and reused.
fn kept_and_hidden(create: &str, present: &str, more: &str) {
    kept_and_hidden_with("", false, create, present, more);
}

/// As `kept_and_hidden`, with more configuration, and with `create` sent
/// by the extended protocol (Parse/Bind/Execute) when `extended`.
fn kept_and_hidden_with(extra: &str, extended: bool, create: &str, present: &str, more: &str) {
    let (pg, pc) = start(extra);
    let mut a = pc.connect();
    let mut b = pc.connect();
    if extended {
        a.execute(create, &[]).expect(create);
    } else {
        a.batch_execute(create).expect(create);
    }
    let pa = pid(&mut a);
    for _ in 0..3 {
        assert!(check(&mut a, present), "A lost its state: {create}");
        a.batch_execute(more).expect(more);
        assert_eq!(pid(&mut a), pa, "A moved to another backend");
        assert!(!check(&mut b, present), "B saw A's state: {create}");
        assert_ne!(pid(&mut b), pa, "B was given A's connection");
    }
    assert_eq!(pinned(&pc), Some(1));
    assert!(
        pc.log().contains("keeps its connection"),
        "no log line for the pin"
    );
    drop(a);
    assert!(wait_until(LONG, || pinned(&pc) == Some(0)), "A never left");
    // B holds one connection in a transaction, so C gets the other: one
    // of them is A's old one, reset rather than closed.
    b.batch_execute("BEGIN").expect("begin");
    let mut c = pc.connect();
    let (pb, pcc) = (pid(&mut b), pid(&mut c));
    assert!(
        pb == pa || pcc == pa,
        "A's connection was not kept after its reset"
    );
    assert!(!check(&mut b, present), "B saw A's state after A left");
    assert!(!check(&mut c, present), "C saw A's state after A left");
    b.batch_execute("COMMIT").expect("commit");
    drop(pg);
}

#[test]
fn temporary_table_is_kept_and_hidden() {
    kept_and_hidden(
        "CREATE TEMP TABLE pin_t (a int)",
        "select exists (select 1 from pg_class where relname = 'pin_t' \
         and relpersistence = 't' and pg_table_is_visible(oid))",
        "INSERT INTO pin_t VALUES (1)",
    );
}

#[test]
fn listen_is_kept_and_hidden() {
    kept_and_hidden(
        "LISTEN pin_chan",
        "select 'pin_chan' = any (array(select pg_listening_channels()))",
        "SELECT 1",
    );
}

#[test]
fn notify_reaches_the_listener_in_a_later_transaction() {
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("LISTEN pin_chan").expect("listen");
    for i in 0..3 {
        // B holds a connection meanwhile: were A's not kept for it, A's
        // NOTIFY would run on another backend, one that is not listening.
        b.batch_execute("BEGIN; SELECT 1").expect("b");
        a.batch_execute(&format!("NOTIFY pin_chan, 'n{i}'"))
            .expect("notify");
        let got = a
            .notifications()
            .timeout_iter(LONG)
            .next()
            .expect("notifications")
            .expect("a notification in time");
        assert_eq!(got.payload(), format!("n{i}"));
        b.batch_execute("COMMIT").expect("commit");
    }
}

#[test]
fn a_notification_reaches_an_idle_listener_at_once() {
    // Another client's NOTIFY while the listener sends nothing at all: the
    // notification must arrive without the listener's next query, as
    // drivers' LISTEN loops (psycopg's, asyncpg's) expect.
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("LISTEN idle_chan").expect("listen");
    b.batch_execute("NOTIFY idle_chan, 'while idle'")
        .expect("notify");
    let got = a
        .notifications()
        .timeout_iter(LONG)
        .next()
        .expect("notifications")
        .expect("a notification while idle");
    assert_eq!(got.payload(), "while idle");
    assert!(check(&mut a, "select true"), "the session goes on");
}

#[test]
fn session_advisory_lock_is_kept_and_hidden() {
    let (pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    // Through Parse/Bind/Execute: the extended protocol pins too.
    let _ = a
        .query_one("select pg_advisory_lock(4242)", &[])
        .expect("lock");
    let pa = pid(&mut a);
    let mut direct = pg.connect();
    let holder = |direct: &mut Client| -> Option<i32> {
        direct
            .query_opt(
                "select pid from pg_locks where locktype = 'advisory' and objid = 4242",
                &[],
            )
            .expect("pg_locks")
            .map(|r| r.get(0))
    };
    for _ in 0..3 {
        assert_eq!(pid(&mut a), pa, "A moved to another backend");
        assert_ne!(pid(&mut b), pa, "B was given A's connection");
        assert_eq!(holder(&mut direct), Some(pa), "A lost its lock");
    }
    drop(a);
    assert!(
        wait_until(LONG, || holder(&mut direct).is_none()),
        "the lock outlived its client"
    );
    assert!(wait_until(LONG, || pinned(&pc) == Some(0)));
}

#[test]
fn held_cursor_is_kept_and_hidden() {
    kept_and_hidden(
        "DECLARE pin_c CURSOR WITH HOLD FOR SELECT generate_series(1, 100)",
        "select exists (select 1 from pg_cursors where name = 'pin_c')",
        "FETCH 1 FROM pin_c",
    );
}

#[test]
fn sql_prepare_is_kept_and_hidden() {
    kept_and_hidden(
        "PREPARE pin_p AS SELECT 42",
        "select exists (select 1 from pg_prepared_statements where name = 'pin_p')",
        "EXECUTE pin_p",
    );
}

/// Settings follow a client without pinning it (tests/set_follows.rs);
/// a pinned client's stay on its connection with the rest of its state,
/// and are reset with it when it leaves.
#[test]
fn settings_of_a_pinned_client_are_kept_and_hidden() {
    kept_and_hidden(
        "SET work_mem = '7777kB'; SET ROLE pg_monitor; CREATE TEMP TABLE pin_s (a int)",
        "select current_setting('work_mem') = '7777kB' and current_user = 'pg_monitor'",
        "SELECT 1",
    );
}

/// Without statement tracking the client's messages are streamed, yet
/// its Query and Parse texts are still looked at.
#[test]
fn statements_pin_without_statement_tracking() {
    let present = "select exists (select 1 from pg_prepared_statements where name = 'pin_p')";
    let prepare = "PREPARE pin_p AS SELECT 42";
    kept_and_hidden_with(
        "max_prepared_statements = 0",
        false,
        prepare,
        present,
        "EXECUTE pin_p",
    );
    kept_and_hidden_with(
        "max_prepared_statements = 0",
        true,
        prepare,
        present,
        "EXECUTE pin_p",
    );
}

#[test]
fn temporary_table_by_the_extended_protocol_pins() {
    kept_and_hidden_with(
        "",
        true,
        "CREATE TEMP TABLE pin_e (a int)",
        "select exists (select 1 from pg_class where relname = 'pin_e' \
         and relpersistence = 't' and pg_table_is_visible(oid))",
        "INSERT INTO pin_e VALUES (1)",
    );
}

#[test]
fn set_local_does_not_pin() {
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    a.batch_execute("BEGIN; SET LOCAL work_mem = '7777kB'; COMMIT")
        .expect("set local");
    a.batch_execute("SELECT 'LISTEN x' /* SET work_mem = 1 */")
        .expect("select");
    assert_eq!(pinned(&pc), Some(0));
}

#[test]
fn with_pinning_off_state_stays_on_the_shared_connection() {
    let pg = Postgres::start();
    // One connection, shared by both clients.
    let pc = Pgcorral::start(
        &pg,
        &format!("{TRANSACTION}\nmax_connections = 1\npin_session_state = false"),
    );
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("CREATE TEMP TABLE pin_off (a int)")
        .expect("create");
    assert_eq!(pinned(&pc), Some(0));
    assert_eq!(pid(&mut a), pid(&mut b));
    assert!(
        check(
            &mut b,
            "select exists (select 1 from pg_class where relname = 'pin_off' \
             and relpersistence = 't' and pg_table_is_visible(oid))"
        ),
        "without pinning the table stays on the connection"
    );
}

//! Transaction pooling: a client's session-level settings (`SET`, `RESET`,
//! `SET ROLE`, `SET SESSION AUTHORIZATION`, `set_config(.., false)`)
//! follow it from connection to connection without pinning it, never
//! reach another client sharing the same connection, and vanish when
//! PostgreSQL undoes them (ROLLBACK, savepoints, `SET LOCAL`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{output_within, Pgcorral, Postgres};
use postgres::{Client, NoTls, SimpleQueryMessage};

const LONG: Duration = Duration::from_secs(30);

/// One server connection, so every client shares it.
fn start(extra: &str) -> (Postgres, Pgcorral) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        &format!("pipeline = \"transaction\"\nmax_connections = 1\n{extra}"),
    );
    (pg, pc)
}

fn pid(c: &mut Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

/// The first column of the first row of a simple query (NULL as "NULL").
fn value(c: &mut Client, sql: &str) -> String {
    let rows = c.simple_query(sql).expect(sql);
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .expect("one row")
}

fn setting(c: &mut Client, name: &str) -> String {
    value(c, &format!("select current_setting('{name}', true)"))
}

/// `pinned` from `pgcorral-cli --format json status`.
fn pinned(pc: &Pgcorral) -> Option<u32> {
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
    let s = String::from_utf8_lossy(&out.stdout);
    let at = s.find("\"pinned\":")? + "\"pinned\":".len();
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn set_follows_its_client_and_never_reaches_another() {
    let (pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let default = setting(&mut b, "work_mem");
    assert_ne!(default, "8MB");
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    for _ in 0..3 {
        assert_eq!(setting(&mut a, "work_mem"), "8MB", "A lost its setting");
        assert_eq!(setting(&mut b, "work_mem"), default, "B saw A's setting");
        assert_eq!(pid(&mut a), pid(&mut b), "not one shared connection");
    }
    assert_eq!(pinned(&pc), Some(0), "a SET pinned its client");
    // The connection is idle between transactions in its login state. The
    // client has its answer before the reset runs, so wait for it.
    let mut direct = pg.connect();
    let backend = pid(&mut a);
    let mut last: Vec<String> = Vec::new();
    let reset = common::wait_until(std::time::Duration::from_secs(30), || {
        last = direct
            .query(
                "select query from pg_stat_activity where pid = $1",
                &[&backend],
            )
            .expect("activity")
            .iter()
            .map(|r| r.get(0))
            .collect();
        last.iter().all(|q| q.contains("RESET ALL"))
    });
    assert!(
        reset,
        "the connection went back without its reset: {last:?}"
    );
}

#[test]
fn extended_protocol_set_and_set_config_follow() {
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let default = setting(&mut b, "work_mem");
    // Parse/Bind/Execute.
    a.execute("SET work_mem = '8MB'", &[]).expect("set");
    let got: String = a
        .query_one("select current_setting('work_mem')", &[])
        .expect("show")
        .get(0);
    assert_eq!(got, "8MB");
    assert_eq!(setting(&mut b, "work_mem"), default);
    a.execute("select set_config('work_mem', '16MB', false)", &[])
        .expect("set_config");
    assert_eq!(setting(&mut a, "work_mem"), "16MB");
    assert_eq!(setting(&mut b, "work_mem"), default);
    a.batch_execute("SELECT set_config('statement_timeout', '7s', false)")
        .expect("set_config");
    assert_eq!(setting(&mut a, "statement_timeout"), "7s");
    assert_eq!(setting(&mut a, "work_mem"), "16MB");
    assert_eq!(setting(&mut b, "statement_timeout"), "0");
    // A transaction-scoped set_config stays in its transaction.
    a.batch_execute("BEGIN; SELECT set_config('work_mem', '32MB', true); COMMIT")
        .expect("local set_config");
    assert_eq!(setting(&mut a, "work_mem"), "16MB");
    assert_eq!(pinned(&pc), Some(0));
}

#[test]
fn values_with_quotes_and_backslashes_survive() {
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("SET search_path = \"we'ird \"\"s\", public")
        .expect("search_path");
    let path = setting(&mut a, "search_path");
    assert_eq!(path, "\"we'ird \"\"s\", public");
    assert_eq!(setting(&mut a, "search_path"), path, "changed on replay");
    assert_eq!(setting(&mut b, "search_path"), "\"$user\", public");
    // With standard_conforming_strings off, '\\' is one backslash.
    a.batch_execute("SET standard_conforming_strings = off")
        .expect("scs");
    a.batch_execute("SET pgc.value = 'x\\\\y''z\\\\'")
        .expect("backslash");
    a.batch_execute("SET custom.my.qualified.guc = 'foo'")
        .expect("three-part name");
    for _ in 0..2 {
        assert_eq!(setting(&mut a, "custom.my.qualified.guc"), "foo");
        assert_ne!(setting(&mut b, "custom.my.qualified.guc"), "foo");
        assert_eq!(setting(&mut a, "pgc.value"), "x\\y'z\\");
        assert_eq!(setting(&mut a, "standard_conforming_strings"), "off");
        assert_ne!(setting(&mut b, "pgc.value"), "x\\y'z\\");
        assert_eq!(setting(&mut b, "standard_conforming_strings"), "on");
    }
}

/// B sets work_mem to its own value on the one shared connection, so
/// what A sees next comes from A's record, not from what is left there.
fn disturb(b: &mut Client) {
    b.batch_execute("SET work_mem = '3MB'").expect("B's set");
    assert_eq!(setting(b, "work_mem"), "3MB");
}

#[test]
fn what_postgres_undoes_is_not_kept() {
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let default = setting(&mut a, "work_mem");
    a.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .expect("rollback");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), default);
    a.batch_execute("BEGIN; SET LOCAL work_mem = '9MB'; COMMIT")
        .expect("set local");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), default);
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    a.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .expect("rollback");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), "8MB");
    a.batch_execute("BEGIN; SAVEPOINT s; SET work_mem = '9MB'; ROLLBACK TO s; COMMIT")
        .expect("savepoint");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), "8MB");
    a.batch_execute("BEGIN; SAVEPOINT s; SET work_mem = '10MB'; RELEASE s; COMMIT")
        .expect("released savepoint");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), "10MB");
    // A failed transaction undoes its SET too.
    assert!(a
        .batch_execute("BEGIN; SET work_mem = '11MB'; SELECT 1/0")
        .is_err());
    a.batch_execute("ROLLBACK").expect("rollback");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), "10MB");
}

#[test]
fn reset_clears_the_record() {
    let (_pg, pc) = start("");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let work_mem = setting(&mut a, "work_mem");
    let timeout = setting(&mut a, "statement_timeout");
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    a.batch_execute("RESET work_mem").expect("reset");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), work_mem);
    a.batch_execute("SET work_mem = '8MB'; SET statement_timeout = '5s'")
        .expect("set");
    assert_eq!(setting(&mut a, "statement_timeout"), "5s");
    a.batch_execute("RESET ALL").expect("reset all");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), work_mem);
    assert_eq!(setting(&mut a, "statement_timeout"), timeout);
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    a.batch_execute("DISCARD ALL").expect("discard all");
    disturb(&mut b);
    assert_eq!(setting(&mut a, "work_mem"), work_mem);
}

#[test]
fn role_and_session_authorization_follow_and_never_reach_another() {
    let (pg, pc) = start("");
    pg.psql(
        "CREATE ROLE pgc_r; CREATE ROLE pgc_u; GRANT pgc_r TO pgc_u; \
         CREATE ROLE \"pgc q'\"",
    );
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("SET ROLE pgc_r").expect("set role");
    for _ in 0..2 {
        assert_eq!(value(&mut a, "select current_user"), "pgc_r");
        assert_eq!(value(&mut b, "select current_user"), "postgres");
    }
    a.batch_execute("RESET ROLE; SET SESSION AUTHORIZATION pgc_u")
        .expect("session authorization");
    for _ in 0..2 {
        assert_eq!(value(&mut a, "select session_user"), "pgc_u");
        assert_eq!(value(&mut a, "select current_user"), "pgc_u");
        assert_eq!(value(&mut b, "select session_user"), "postgres");
    }
    // Both: the role is one the new session user may take.
    a.batch_execute("SET ROLE pgc_r").expect("set role");
    for _ in 0..2 {
        assert_eq!(value(&mut a, "select session_user"), "pgc_u");
        assert_eq!(value(&mut a, "select current_user"), "pgc_r");
        assert_eq!(value(&mut b, "select current_user"), "postgres");
    }
    a.batch_execute("RESET SESSION AUTHORIZATION")
        .expect("reset session authorization");
    assert_eq!(value(&mut a, "select session_user"), "postgres");
    assert_eq!(value(&mut a, "select current_user"), "postgres");
    a.batch_execute("SET ROLE \"pgc q'\"").expect("quoted role");
    assert_eq!(value(&mut a, "select current_user"), "pgc q'");
    assert_eq!(value(&mut b, "select current_user"), "postgres");
    assert_eq!(pinned(&pc), Some(0));
}

#[test]
fn a_setting_the_server_refuses_again_fails_one_statement() {
    let (pg, pc) = start("");
    pg.psql("CREATE ROLE pgc_gone");
    let mut a = pc.connect();
    a.batch_execute("SET ROLE pgc_gone; SET work_mem = '8MB'")
        .expect("set role");
    assert_eq!(value(&mut a, "select current_user"), "pgc_gone");
    pg.psql("DROP ROLE pgc_gone");
    let err = a
        .simple_query("select current_user")
        .expect_err("the dropped role was set again");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.severity(), "ERROR");
    // The client goes on, without the refused setting and with the rest.
    assert_eq!(value(&mut a, "select current_user"), "postgres");
    assert_eq!(setting(&mut a, "work_mem"), "8MB");
    // The extended protocol fails up to Sync, and goes on as well.
    pg.psql("CREATE ROLE pgc_gone");
    a.batch_execute("SET ROLE pgc_gone").expect("set role");
    assert_eq!(value(&mut a, "select current_user"), "pgc_gone");
    pg.psql("DROP ROLE pgc_gone");
    assert!(a.query_one("select current_user", &[]).is_err());
    let me: String = a
        .query_one("select current_user::text", &[])
        .expect("after the failure")
        .get(0);
    assert_eq!(me, "postgres");
}

#[test]
fn the_connection_serves_the_next_client_with_its_login_value() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "pipeline = \"transaction\"\nmax_connections = 1");
    let connect = || -> Client {
        let mut cfg = pc.config();
        cfg.options("-c work_mem=5MB");
        cfg.connect(NoTls).expect("connect with options")
    };
    let mut a = connect();
    assert_eq!(setting(&mut a, "work_mem"), "5MB");
    let backend = pid(&mut a);
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    assert_eq!(setting(&mut a, "work_mem"), "8MB");
    a.batch_execute("RESET work_mem").expect("reset");
    assert_eq!(setting(&mut a, "work_mem"), "5MB");
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    let mut c = connect();
    assert_eq!(pid(&mut c), backend, "not the same connection");
    assert_eq!(setting(&mut c, "work_mem"), "5MB");
    assert_eq!(setting(&mut a, "work_mem"), "8MB");
    drop(a);
    assert_eq!(setting(&mut c, "work_mem"), "5MB");
}

#[test]
fn with_pinning_off_settings_still_follow() {
    let (_pg, pc) = start("pin_session_state = false");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let default = setting(&mut b, "work_mem");
    a.batch_execute("SET work_mem = '8MB'").expect("set");
    assert_eq!(setting(&mut a, "work_mem"), "8MB");
    assert_eq!(setting(&mut b, "work_mem"), default);
    assert_eq!(pinned(&pc), Some(0));
}

/// A client that never changes a setting costs no query of pgcorral's;
/// one whose DO block or procedure may have is asked about it.
#[test]
fn plain_clients_pay_nothing_and_do_blocks_are_asked_about() {
    let pg = Postgres::start_with(&[("log_statement", "all")]);
    let pc = Pgcorral::start(&pg, "pipeline = \"transaction\"\nmax_connections = 1");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let default = setting(&mut b, "work_mem");
    for _ in 0..5 {
        a.batch_execute("SELECT 1; BEGIN; SELECT 'SET x'; COMMIT")
            .expect("plain");
        let _ = pid(&mut a);
    }
    assert!(
        !pg.log().contains("RESET ALL"),
        "a plain client paid for a reset"
    );
    a.batch_execute("DO $$BEGIN PERFORM set_config('work_mem', '12MB', false); END$$")
        .expect("do");
    assert_eq!(setting(&mut b, "work_mem"), default);
    assert_eq!(setting(&mut a, "work_mem"), "12MB");
    assert!(pg.log().contains("RESET ALL"), "the reset is not logged");
    pg.psql(
        "CREATE PROCEDURE pgc_p() LANGUAGE sql AS $$SELECT set_config('work_mem', '13MB', false)$$",
    );
    a.batch_execute("CALL pgc_p()").expect("call");
    assert_eq!(setting(&mut b, "work_mem"), default);
    assert_eq!(setting(&mut a, "work_mem"), "13MB");
}

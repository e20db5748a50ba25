//! What one client sets on a pooled connection never reaches another: the
//! reported parameters it SETs (transaction pipeline) and the settings it
//! logs in with (session and transaction pipelines).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{output_within, pg_bin, wait_until, Client, NoTls, Pgcorral, Postgres};
use postgres::error::SqlState;

/// Reported parameters a client may SET, with a value no server default has.
const SET: [(&str, &str); 4] = [
    ("TimeZone", "Asia/Tokyo"),
    ("DateStyle", "German, DMY"),
    ("IntervalStyle", "sql_standard"),
    ("standard_conforming_strings", "off"),
];

const TIMEOUT: &str = "-c statement_timeout=500ms";

fn show(client: &mut Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
        .get(0)
}

fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .expect("select pg_backend_pid()")
        .get(0)
}

fn connect_with(pc: &Pgcorral, options: &str) -> Client {
    pc.config()
        .options(options)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect through pgcorral with options {options:?}: {e}"))
}

/// A connection goes back to the pool when its worker ends.
fn wait_workers_gone(pc: &Pgcorral) {
    assert!(
        wait_until(Duration::from_secs(10), || pc.workers().is_empty()),
        "workers still running after their clients left: {:?}",
        pc.workers()
    );
}

fn start(pg: &Postgres, pipeline: &str) -> Pgcorral {
    Pgcorral::start(pg, &format!("pipeline = \"{pipeline}\""))
}

/// Whether a two-second sleep is cancelled by a statement timeout, judged
/// by the SQLSTATE alone.
fn sleep_cancelled(client: &mut Client) -> bool {
    match client.simple_query("select pg_sleep(2)") {
        Ok(_) => false,
        Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => true,
        Err(e) => panic!("pg_sleep failed otherwise: {e}"),
    }
}

/// `psql -At -c sql` through pgcorral with `PGOPTIONS`, as pg_regress runs.
fn psql_with(pc: &Pgcorral, pgoptions: &str, sql: &str) -> String {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &pc.port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGOPTIONS", pgoptions)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
    let out = output_within(&mut cmd, Duration::from_secs(30)).expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_set_parameter_reaches_no_other_client() {
    let pg = Postgres::start();
    let pc = start(&pg, "transaction");

    let mut probe = pc.connect();
    let defaults: Vec<String> = SET.iter().map(|(n, _)| show(&mut probe, n)).collect();
    for ((name, value), default) in SET.iter().zip(&defaults) {
        assert_ne!(
            default, value,
            "{name}: the server default is the test value"
        );
    }
    drop(probe);
    wait_workers_gone(&pc);

    let mut a = pc.connect();
    for (name, value) in SET {
        a.batch_execute(&format!("SET {name} TO '{value}'"))
            .unwrap_or_else(|e| panic!("SET {name}: {e}"));
    }
    // The setter keeps its values from one transaction to the next.
    for (name, value) in SET {
        assert_eq!(show(&mut a, name), value, "{name} lost by its own client");
    }

    // Another client, while the setter is still connected: it is given
    // the connection the setter last used (the only idle one).
    let mut b = pc.connect();
    for ((name, value), default) in SET.iter().zip(&defaults) {
        let seen = show(&mut b, name);
        assert_ne!(&seen, value, "{name} leaked to a concurrent client");
        assert_eq!(&seen, default, "{name} for a concurrent client");
    }
    drop(b);
    for (name, value) in SET {
        assert_eq!(show(&mut a, name), value, "{name} lost by its own client");
    }
    drop(a);
    wait_workers_gone(&pc);

    // And a client after the setter left.
    let mut c = pc.connect();
    for ((name, _), default) in SET.iter().zip(&defaults) {
        assert_eq!(
            &show(&mut c, name),
            default,
            "{name} leaked to a later client"
        );
    }
    drop(c);
    wait_workers_gone(&pc);

    // The same with psql, one client after the other.
    pc.psql("SET TimeZone TO 'Asia/Tokyo'");
    wait_workers_gone(&pc);
    assert_eq!(
        pc.psql("SHOW TimeZone"),
        defaults[0],
        "psql: TimeZone leaked"
    );
    wait_workers_gone(&pc);
    // libpq escapes by the reported value: a leaked `off` would make it
    // double every backslash it quotes.
    pc.psql("SET standard_conforming_strings TO off");
    wait_workers_gone(&pc);
    assert_eq!(
        pc.psql("SHOW standard_conforming_strings"),
        defaults[3],
        "psql: standard_conforming_strings leaked"
    );
}

/// A client that logged in with a statement timeout, then one without on
/// the same pool: the second one's long query runs to the end.
fn timeout_does_not_leak(pg: &Postgres, pipeline: &str) {
    let pc = start(pg, pipeline);
    let mut a = connect_with(&pc, TIMEOUT);
    assert!(
        sleep_cancelled(&mut a),
        "{pipeline}: the timeout was not applied"
    );
    drop(a);
    wait_workers_gone(&pc);

    let mut b = pc.connect();
    assert!(
        !sleep_cancelled(&mut b),
        "{pipeline}: another client's start-up statement_timeout cancelled the query"
    );
}

/// The other way round: a client that asks for a statement timeout gets it
/// even though an idle connection without it is in the pool.
fn timeout_is_applied(pg: &Postgres, pipeline: &str) {
    let pc = start(pg, pipeline);
    let mut a = pc.connect();
    assert!(!sleep_cancelled(&mut a));
    drop(a);
    wait_workers_gone(&pc);

    let mut b = connect_with(&pc, TIMEOUT);
    assert!(
        sleep_cancelled(&mut b),
        "{pipeline}: the client's start-up statement_timeout was not applied"
    );
}

#[test]
fn start_up_settings_follow_their_client_in_session_mode() {
    let pg = Postgres::start();
    timeout_does_not_leak(&pg, "session");
    timeout_is_applied(&pg, "session");
}

#[test]
fn start_up_settings_follow_their_client_in_transaction_mode() {
    let pg = Postgres::start();
    timeout_does_not_leak(&pg, "transaction");
    timeout_is_applied(&pg, "transaction");
}

/// Clients that logged in with the same settings, however spelled, share a
/// backend; tracked settings in PGOPTIONS (pg_regress) are login settings
/// like any other, so RESET returns to them.
fn same_settings_share_a_backend(pg: &Postgres, pipeline: &str) {
    let pc = start(pg, pipeline);
    let mut a = connect_with(&pc, "-c statement_timeout=500ms -c lock_timeout=1s");
    let pid = backend_pid(&mut a);
    drop(a);
    wait_workers_gone(&pc);
    let mut b = connect_with(&pc, "--lock-timeout=1s -cstatement_timeout=500ms");
    assert_eq!(
        backend_pid(&mut b),
        pid,
        "{pipeline}: same settings, new backend"
    );
    assert!(sleep_cancelled(&mut b));
    drop(b);
    wait_workers_gone(&pc);

    // A tracked setting, as pg_regress sends it, is a login setting too:
    // RESET must return to it, as it does on a direct connection.
    let verbose = |pc: &Pgcorral| {
        let out = psql_with(
            pc,
            "-c intervalstyle=postgres_verbose",
            "select pg_backend_pid(); set intervalstyle = iso_8601; \
             reset intervalstyle; show intervalstyle",
        );
        let mut lines = out.lines();
        let pid: i32 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{pipeline}: psql printed {out:?}"));
        assert_eq!(
            lines.next(),
            Some("postgres_verbose"),
            "{pipeline}: RESET did not return to the start-up value: {out:?}"
        );
        pid
    };
    let verbose_pid = verbose(&pc);
    assert_ne!(
        verbose_pid, pid,
        "{pipeline}: given a connection with other settings"
    );
    wait_workers_gone(&pc);
    assert_eq!(
        verbose(&pc),
        verbose_pid,
        "{pipeline}: same tracked setting, new backend"
    );
    wait_workers_gone(&pc);

    // A plain client gets neither: the default interval style, no timeout.
    let mut c = pc.connect();
    let plain_pid = backend_pid(&mut c);
    assert!(
        plain_pid != pid && plain_pid != verbose_pid,
        "{pipeline}: a plain client was given a connection with settings"
    );
    assert_eq!(show(&mut c, "IntervalStyle"), "postgres", "{pipeline}");
    assert!(!sleep_cancelled(&mut c), "{pipeline}");
}

#[test]
fn same_settings_share_a_backend_in_session_mode() {
    let pg = Postgres::start();
    same_settings_share_a_backend(&pg, "session");
}

#[test]
fn same_settings_share_a_backend_in_transaction_mode() {
    let pg = Postgres::start();
    same_settings_share_a_backend(&pg, "transaction");
}

//! `switch-to` between two real PostgreSQL servers: the primary lives in the
//! shared segment, so workers forked before the switch open their next
//! connection on the new primary, connections to the old one are never
//! pooled again, and a cancel goes to the server the query runs on.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{output_within, wait_until, within, Client, NoTls, Pgcorral, Postgres};
use postgres::error::SqlState;

fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgcorral-cli")
}

/// Runs a pgcorral-cli command that must succeed; its output.
fn cli(pc: &Pgcorral, args: &[&str]) -> String {
    let out = output_within(
        Command::new(cli_bin())
            .arg("-s")
            .arg(&pc.socket_dir)
            .arg("-p")
            .arg(pc.port.to_string())
            .args(args),
        Duration::from_secs(60),
    )
    .expect("run pgcorral-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgcorral-cli {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The port of the PostgreSQL server the client's transaction ran on.
fn server_port(client: &mut Client) -> u16 {
    let rows = client
        .simple_query("select current_setting('port')")
        .expect("select current_setting('port')");
    rows.iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
            _ => None,
        })
        .expect("a port")
}

/// Starts `select pg_sleep(30)` on `client` in a thread, waits until `pg`
/// runs it, cancels it with `token`, and checks it was cancelled.
fn cancel_sleep_on(pg: &Postgres, mut client: Client, token: postgres::CancelToken) -> Client {
    let sleeper = std::thread::spawn(move || {
        let r = client.simple_query("select pg_sleep(30)").map(|_| ());
        (client, r)
    });
    assert!(
        wait_until(Duration::from_secs(10), || !pg
            .backends_with_query("select pg_sleep(30)")
            .is_empty()),
        "the query never started on port {}",
        pg.port
    );
    token.cancel_query(NoTls).expect("send cancel");
    // A cancel that went to the wrong server leaves the query running
    // for 30 s: a hang is the failure.
    let (client, r) = within(Duration::from_secs(20), "cancelled query", move || {
        sleeper.join().expect("sleeper thread")
    });
    let err = r.expect_err("the query was not cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    client
}

#[test]
fn switch_to_reaches_workers_that_were_already_running() {
    let a = Postgres::start();
    let b = Postgres::start();
    let extra = format!(
        "pipeline = \"transaction\"\n\
         [server.primary]\nhost = \"127.0.0.1\"\nport = {}\nprimary = true\n\
         [server.standby]\nhost = \"127.0.0.1\"\nport = {}\n",
        a.port, b.port
    );
    let pc = Pgcorral::start(&a, &extra);

    // Connected before the switch; its worker keeps running across it.
    let mut old = pc.connect();
    assert_eq!(server_port(&mut old), a.port);
    // A query that is running on A while the switch happens.
    let mut busy = pc.connect();
    assert_eq!(server_port(&mut busy), a.port);
    let busy_token = busy.cancel_token();
    let busy_sleeper = std::thread::spawn(move || {
        let r = busy.simple_query("select pg_sleep(30)").map(|_| ());
        (busy, r)
    });
    assert!(wait_until(Duration::from_secs(10), || !a
        .backends_with_query("select pg_sleep(30)")
        .is_empty()));

    let text = cli(&pc, &["switch-to", "standby"]);
    assert!(
        text.starts_with("primary server is now \"standby\""),
        "{text}"
    );
    let status = cli(&pc, &["--format", "json", "status"]);
    assert!(status.contains("\"server\":\"standby\""), "{status}");
    assert!(
        status.contains("\"name\":\"standby\",\"host\":\"127.0.0.1\"")
            && status.contains(&format!("\"port\":{},\"primary\":true", b.port)),
        "{status}"
    );

    // The query still running on A is cancelled there: the cancel follows
    // the connection's server, not the new primary.
    busy_token.cancel_query(NoTls).expect("send cancel");
    let (mut busy, r) = within(
        Duration::from_secs(20),
        "cancel on the old primary",
        move || busy_sleeper.join().expect("sleeper thread"),
    );
    let err = r.expect_err("the query on the old primary was not cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    // Its next transaction may still reach A: the client can send it before
    // the worker has read the ReadyForQuery that ends the cancelled one, and
    // then it follows on the connection still attached. Once that one is
    // given back (and closed, being stale), the client is on B.
    assert!(
        wait_until(Duration::from_secs(10), || server_port(&mut busy) == b.port),
        "busy client never reached the new primary"
    );

    // The worker forked before the switch: its next transaction is on B.
    assert_eq!(server_port(&mut old), b.port, "old client after switch");
    // A new client too.
    let mut new = pc.connect();
    assert_eq!(server_port(&mut new), b.port, "new client after switch");
    let details = cli(&pc, &["--format", "json", "status", "details"]);
    assert!(
        details.contains("\"database\":\"postgres\",\"user\":\"postgres\",\"server\":\"standby\""),
        "{details}"
    );

    // A cancel from the old client reaches its query on B.
    let token = old.cancel_token();
    let mut old = cancel_sleep_on(&b, old, token);
    assert_eq!(server_port(&mut old), b.port);

    // No connection to A is pooled any more: every one was closed.
    assert!(
        wait_until(Duration::from_secs(10), || a.backend_count(None) == 0),
        "connections to the old primary left open: {}",
        a.backend_count(None)
    );
    drop((old, new, busy));
}

/// Session-long pipelines keep a client's connection until it leaves: a
/// client connected before the switch stays on the old primary, and its
/// connection is closed, not pooled, when it leaves.
#[test]
fn a_bound_client_keeps_the_old_primary_until_it_leaves() {
    let a = Postgres::start();
    let b = Postgres::start();
    let extra = format!(
        "pipeline = \"performance\"\n\
         [server.primary]\nhost = \"127.0.0.1\"\nport = {}\n\
         [server.standby]\nhost = \"127.0.0.1\"\nport = {}\nprimary = true\n",
        a.port, b.port
    );
    let pc = Pgcorral::start(&a, &extra);
    let mut bound = pc.connect();
    assert_eq!(
        server_port(&mut bound),
        b.port,
        "primary = true is honoured"
    );

    cli(&pc, &["switch-to", "primary"]);
    let mut new = pc.connect();
    assert_eq!(server_port(&mut new), a.port, "new client after switch");
    assert_eq!(server_port(&mut bound), b.port, "bound for its session");
    assert_eq!(b.backend_count(None), 1);
    drop(bound);
    assert!(
        wait_until(Duration::from_secs(10), || b.backend_count(None) == 0),
        "the old primary's connection was pooled"
    );
    // And nothing of the old primary is handed out: the next client opens
    // a new connection on the new one.
    let mut next = pc.connect();
    assert_eq!(server_port(&mut next), a.port);
    drop((new, next));
}

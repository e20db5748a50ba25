//! Cancellation: each client gets a cancel key of its own, and a
//! CancelRequest reaches only the query of the client that holds that key,
//! on the server connection it holds right now.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
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

/// A protocol-level client, to cancel as libpq's `PQcancel` does: send the
/// CancelRequest, then wait until the other side closes. (The postgres
/// crate's `cancel_query` returns as soon as it has written.)
struct RawSession {
    stream: TcpStream,
    process_id: i32,
    secret_key: i32,
}

impl RawSession {
    fn start(pc: &Pgcorral) -> RawSession {
        let mut stream = pc.tcp_stream();
        stream
            .write_all(&common::startup_message("postgres", "postgres"))
            .expect("send startup");
        let mut key = None;
        loop {
            match common::read_message(&mut stream) {
                (b'K', body) => {
                    let word = |at: usize| {
                        i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
                    };
                    key = Some((word(0), word(4)));
                }
                (b'Z', _) => break,
                (b'E', body) => panic!("start-up refused: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
        let (process_id, secret_key) = key.expect("no BackendKeyData");
        RawSession {
            stream,
            process_id,
            secret_key,
        }
    }

    /// Runs one simple query; returns the SQLSTATE it failed with, if any.
    fn query(&mut self, sql: &str) -> Option<String> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.write_all(&msg).expect("send query");
        let mut failed = None;
        loop {
            match common::read_message(&mut self.stream) {
                (b'E', body) => {
                    let code = body
                        .split(|&b| b == 0)
                        .find(|f| f.first() == Some(&b'C'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
                    failed = Some(code.unwrap_or_default());
                }
                (b'Z', _) => return failed,
                _ => {}
            }
        }
    }

    /// Cancels as `PQcancel` does: returns once pgcorral has closed the
    /// cancel connection.
    fn cancel(&self, pc: &Pgcorral) {
        let mut c = pc.tcp_stream();
        let mut msg = 16u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&80877102u32.to_be_bytes());
        msg.extend_from_slice(&self.process_id.to_be_bytes());
        msg.extend_from_slice(&self.secret_key.to_be_bytes());
        c.write_all(&msg).expect("send CancelRequest");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("pgcorral did not close the cancel connection");
        assert!(rest.is_empty(), "a CancelRequest was answered: {rest:?}");
    }
}

/// A client that cancels and then, once the cancel call returned, sends its
/// next statement: the cancel must have landed already (on nothing, the
/// backend being idle), never on that next statement.
fn a_finished_cancel_spares_the_next_statement(pipeline: &str) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("pipeline = \"{pipeline}\""));
    let mut client = RawSession::start(&pc);
    let rounds = 30;
    let mut cancelled = 0;
    for _ in 0..rounds {
        // Inside a transaction, so that the transaction pipeline too keeps
        // the server connection between the statements and routes the
        // cancel to it.
        assert_eq!(client.query("begin"), None);
        assert_eq!(client.query("select 1"), None);
        client.cancel(&pc);
        match client.query("select pg_sleep(0.2)").as_deref() {
            None => {}
            Some("57014") => cancelled += 1,
            Some(other) => panic!("select pg_sleep(0.2) failed with {other}"),
        }
        // Ends the transaction whether or not it failed.
        assert_eq!(client.query("rollback"), None);
    }
    assert_eq!(
        cancelled, 0,
        "{cancelled} of {rounds} statements sent after a finished cancel were cancelled"
    );
    // A key that matches no session is answered as PostgreSQL answers
    // it: by a close, and nothing else (`cancel` checks both).
    let stranger = RawSession {
        stream: pc.tcp_stream(),
        process_id: client.process_id,
        secret_key: client.secret_key.wrapping_add(1),
    };
    stranger.cancel(&pc);
}

#[test]
fn a_finished_cancel_spares_the_next_statement_in_transaction_pipeline() {
    a_finished_cancel_spares_the_next_statement("transaction");
}

#[test]
fn a_finished_cancel_spares_the_next_statement_in_session_pipeline() {
    a_finished_cancel_spares_the_next_statement("session");
}

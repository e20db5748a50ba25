//! The process id in a client's BackendKeyData. In the session and
//! performance pipelines a client keeps one backend for its whole session
//! and is told that backend's real pid, so `pg_backend_pid()`, NOTIFY's
//! sender, `pg_stat_activity` and `pg_terminate_backend` agree with what
//! its driver reports; the secret stays pgcorral's own, and only it makes
//! a CancelRequest reach the query. In the transaction pipeline the client
//! is told its worker's pid, as no backend stays its own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{read_answer, wait_until, Answer, Pgcorral, Postgres};

/// One protocol message: tag and body.
type Message = (u8, Vec<u8>);

fn int32(body: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]])
}

/// A client that speaks the protocol itself, to see the BackendKeyData it
/// is given (what libpq's `PQbackendPID` returns) and to cancel with it.
struct RawClient {
    stream: TcpStream,
    process_id: i32,
    secret_key: i32,
}

impl RawClient {
    fn start(pc: &Pgcorral) -> RawClient {
        let mut stream = pc.tcp_stream();
        stream
            .write_all(&common::startup_message("postgres", "postgres"))
            .expect("send startup");
        let mut key = None;
        loop {
            match common::read_message(&mut stream) {
                (b'K', body) => key = Some((int32(&body, 0), int32(&body, 4))),
                (b'Z', _) => break,
                (b'E', body) => panic!("start-up refused: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
        let (process_id, secret_key) = key.expect("no BackendKeyData");
        RawClient {
            stream,
            process_id,
            secret_key,
        }
    }

    fn send_query(&mut self, sql: &str) {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.write_all(&msg).expect("send query");
    }

    /// The messages answering a query sent earlier, up to ReadyForQuery.
    fn answer(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        loop {
            let msg = common::read_message(&mut self.stream);
            let done = msg.0 == b'Z';
            got.push(msg);
            if done {
                return got;
            }
        }
    }

    fn query(&mut self, sql: &str) -> Vec<Message> {
        self.send_query(sql);
        self.answer()
    }

    /// The first column of the first row of a one-row query, as text.
    fn query_value(&mut self, sql: &str) -> String {
        let answer = self.query(sql);
        let (_, row) = answer
            .iter()
            .find(|(tag, _)| *tag == b'D')
            .unwrap_or_else(|| panic!("{sql}: no row in {answer:?}"));
        let len = int32(row, 2);
        assert!(len >= 0, "{sql}: NULL");
        String::from_utf8_lossy(&row[6..6 + len as usize]).into_owned()
    }
}

/// The SQLSTATE of the answer's ErrorResponse, if there is one.
fn failure(answer: &[Message]) -> Option<String> {
    let (_, body) = answer.iter().find(|(tag, _)| *tag == b'E')?;
    let code = body
        .split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
    Some(code.unwrap_or_default())
}

/// Sends a CancelRequest with this key and returns once pgcorral closed
/// the cancel connection, which it does only after PostgreSQL took a
/// request it forwarded (as libpq's `PQcancel` relies on).
fn cancel(pc: &Pgcorral, process_id: i32, secret_key: i32) {
    let mut c = pc.tcp_stream();
    let mut msg = 16u32.to_be_bytes().to_vec();
    msg.extend_from_slice(&80877102u32.to_be_bytes());
    msg.extend_from_slice(&process_id.to_be_bytes());
    msg.extend_from_slice(&secret_key.to_be_bytes());
    c.write_all(&msg).expect("send CancelRequest");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("pgcorral did not close the cancel connection");
    assert!(rest.is_empty(), "a CancelRequest was answered: {rest:?}");
}

fn start(pipeline: &str) -> (Postgres, Pgcorral) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("pipeline = \"{pipeline}\""));
    (pg, pc)
}

/// What the client was told is its backend by every account PostgreSQL
/// gives: `pg_backend_pid()`, NOTIFY's sender and `pg_stat_activity`.
fn the_client_is_told_its_backends_pid(pipeline: &str) {
    let (pg, pc) = start(pipeline);
    let mut client = RawClient::start(&pc);
    let told = client.process_id;
    assert_eq!(
        client.query_value("select pg_backend_pid()"),
        told.to_string(),
        "BackendKeyData's pid is not the backend's"
    );
    let answer = client.query("listen backend_pid_test; notify backend_pid_test");
    let (_, note) = answer
        .iter()
        .find(|(tag, _)| *tag == b'A')
        .unwrap_or_else(|| panic!("no NotificationResponse in {answer:?}"));
    assert_eq!(int32(note, 0), told, "NOTIFY's sender pid");
    assert_eq!(
        pg.psql(&format!(
            "select count(*) from pg_stat_activity where pid = {told} \
             and query = 'listen backend_pid_test; notify backend_pid_test'"
        )),
        "1",
        "pg_stat_activity does not show the client's last query under its pid"
    );
    assert!(
        !pc.workers().contains(&told),
        "the client was told a worker's pid"
    );
}

#[test]
fn a_session_pipeline_client_is_told_its_backends_pid() {
    the_client_is_told_its_backends_pid("session");
}

#[test]
fn a_performance_pipeline_client_is_told_its_backends_pid() {
    the_client_is_told_its_backends_pid("performance");
}

/// No backend stays a transaction-pipeline client's, so it keeps being
/// told its worker's pid.
#[test]
fn a_transaction_pipeline_client_is_told_its_workers_pid() {
    let (_pg, pc) = start("transaction");
    let mut client = RawClient::start(&pc);
    assert!(
        pc.workers().contains(&client.process_id),
        "pid {} is not one of pgcorral's workers {:?}",
        client.process_id,
        pc.workers()
    );
    assert_ne!(
        client.query_value("select pg_backend_pid()"),
        client.process_id.to_string()
    );
}

#[test]
fn a_cancel_needs_the_backend_pid_and_pgcorrals_secret() {
    let (pg, pc) = start("session");
    let mut client = RawClient::start(&pc);
    let (pid, secret) = (client.process_id, client.secret_key);

    // Wrong keys while a short query runs: the backend's pid with another
    // secret, and the worker's pid (what clients were told before) with
    // the right one. The query must finish on its own. Each cancel returns
    // only after a forwarded request reached PostgreSQL, well inside the
    // sleep, so a wrong key that was forwarded would fail the query.
    let short = "select pg_sleep(2)";
    client.send_query(short);
    assert!(
        wait_until(Duration::from_secs(30), || !pg
            .backends_with_query(short)
            .is_empty()),
        "the query never started"
    );
    cancel(&pc, pid, secret.wrapping_add(1));
    for worker in pc.workers() {
        cancel(&pc, worker, secret);
    }
    let answer = client.answer();
    assert_eq!(failure(&answer), None, "a wrong key cancelled the query");
    let unmatched = format!("cancel request for {pid} matched no session");
    assert!(
        wait_until(Duration::from_secs(30), || pc.log().contains(&unmatched)),
        "a wrong key is not logged as matching no session"
    );

    // The right key: the backend's pid and pgcorral's secret.
    let long = "select pg_sleep(30)";
    client.send_query(long);
    assert!(
        wait_until(Duration::from_secs(30), || !pg
            .backends_with_query(long)
            .is_empty()),
        "the query never started"
    );
    cancel(&pc, pid, secret);
    // QUERY_CANCELED is proof enough that the cancel, not the end of the
    // sleep, ended the query.
    assert_eq!(failure(&client.answer()).as_deref(), Some("57014"));
    // The session goes on on the same backend.
    assert_eq!(
        client.query_value("select pg_backend_pid()"),
        pid.to_string()
    );
}

#[test]
fn terminating_the_backend_the_client_was_told_ends_its_session() {
    let (pg, pc) = start("performance");
    let mut client = RawClient::start(&pc);
    let pid = client.process_id;
    assert_eq!(
        pg.psql(&format!("select pg_terminate_backend({pid})")),
        "t",
        "no backend with the pid the client was told"
    );
    // PostgreSQL tells the client why, then closes; pgcorral passes both on.
    let (tag, body) = common::read_message(&mut client.stream);
    assert_eq!(tag, b'E', "expected the FATAL of a terminated backend");
    assert_eq!(failure(&[(tag, body)]).as_deref(), Some("57P01"));
    assert_eq!(read_answer(&mut client.stream), Answer::Closed);
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "the client's worker did not end"
    );
    // The dead connection is not pooled: the next client gets a live backend.
    let mut next = RawClient::start(&pc);
    assert_ne!(next.process_id, pid);
    assert_eq!(
        next.query_value("select pg_backend_pid()"),
        next.process_id.to_string()
    );
}

//! The performance pump between two socket pairs: a scripted server that
//! answers by tag, and a client whose requests (and the server's answers)
//! are cut in two at every byte position. Whatever the cut, each side gets
//! exactly the bytes the other sent, and the connection goes back to the
//! pool only when the session ended between requests.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::SigSet;

use super::*;
use crate::pipeline::relay::BUFFER_SIZE;
use crate::protocol::extended::{Bind, Parse, Query, Target};
use crate::protocol::framer::frames;
use crate::protocol::message::write_message;
use crate::server::probe::quiet;

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    write_message(&mut m, tag, |b| b.extend_from_slice(body));
    m
}

/// What PostgreSQL sends for each request, by tag; a Query's DataRow
/// carries the query body back, so a large query gets a large row.
fn answer(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match tag {
        b'Q' if body.starts_with(b"begin") => {
            out.extend(message(b'C', b"BEGIN\0"));
            out.extend(message(b'Z', b"T"));
        }
        b'Q' => {
            out.extend(message(b'N', b"SNOTICE\0C00000\0Mhello\0\0"));
            out.extend(message(b'S', b"TimeZone\0UTC\0"));
            out.extend(message(b'T', &[0, 0]));
            out.extend(message(b'D', body));
            out.extend(message(b'C', b"SELECT 1\0"));
            out.extend(message(b'Z', b"I"));
        }
        b'P' => out.extend(message(b'1', &[])),
        b'B' => out.extend(message(b'2', &[])),
        b'D' => out.extend(message(b'n', &[])),
        b'E' => {
            out.extend(message(b'D', &[0, 0]));
            out.extend(message(b'C', b"SELECT 1\0"));
        }
        b'S' => out.extend(message(b'Z', b"I")),
        _ => {}
    }
    out
}

/// What a direct server answers `script` with.
fn answers(script: &[u8]) -> Vec<u8> {
    frames(script).flat_map(|f| answer(f.tag, f.body)).collect()
}

/// A simple query, then a statement prepared, described, bound and
/// executed up to Sync: two requests, each answered by ReadyForQuery.
fn client_script() -> Vec<u8> {
    let mut s = Vec::new();
    Query { sql: b"select 1" }.write(&mut s);
    Parse {
        name: b"s1",
        text: b"select $1\0\0\0",
    }
    .write(&mut s);
    Target::statement(b"s1").write(b'D', &mut s);
    Bind {
        portal: b"",
        statement: b"s1",
        rest: &[0, 0, 0, 0, 0, 0],
    }
    .write(&mut s);
    write_message(&mut s, b'E', |b| b.extend_from_slice(&[0, 0, 0, 0, 0]));
    write_message(&mut s, b'S', |_| {});
    s
}

/// Waits, without a clock in the verdict, until the pump has read all
/// that is queued for it on `pumps_end` (a duplicate of its descriptor):
/// what is written next arrives in another read.
fn until_read(pumps_end: &UnixStream) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !quiet(pumps_end.as_fd()) {
        assert!(Instant::now() < deadline, "the pump stopped reading");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Writes `bytes` in two pieces cut at `cut`, the second only once the
/// pump has read the first.
fn write_cut(to: &mut UnixStream, pumps_end: &UnixStream, bytes: &[u8], cut: usize) {
    let cut = cut.min(bytes.len());
    to.write_all(&bytes[..cut]).unwrap();
    if cut > 0 && cut < bytes.len() {
        until_read(pumps_end);
    }
    to.write_all(&bytes[cut..]).unwrap();
}

/// What the scripted server does.
#[derive(Clone)]
enum Server {
    /// Answers every request. The first answer waits until `after` bytes
    /// have arrived and goes out cut at `cut`.
    Answers { after: usize, cut: usize },
    /// After the first request, sends these bytes and hangs up.
    HangsUp(Vec<u8>),
}

/// Serves until end of stream; returns every byte it was sent.
fn scripted_server(mut s: UnixStream, pumps_end: UnixStream, how: Server) -> Vec<u8> {
    // Held only until the cut answer is out, so that the pump's end can
    // be closed.
    let mut pumps_end = Some(pumps_end);
    let mut received = Vec::new();
    let mut at = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return received,
            Ok(n) => n,
        };
        received.extend_from_slice(&chunk[..n]);
        if let (Server::Answers { after, .. }, Some(_)) = (&how, &pumps_end) {
            if received.len() < *after {
                continue;
            }
        }
        let mut out = Vec::new();
        for f in frames(&received[at..]) {
            at += 5 + f.body.len();
            out.extend(answer(f.tag, f.body));
        }
        if at == 0 {
            continue;
        }
        match (&how, pumps_end.take()) {
            (Server::HangsUp(last), _) => {
                let _ = s.write_all(last);
                return received;
            }
            (Server::Answers { cut, .. }, Some(watch)) => write_cut(&mut s, &watch, &out, *cut),
            (Server::Answers { .. }, None) => s.write_all(&out).unwrap(),
        }
    }
}

/// Sends `script` cut at `cut`, reads until `expect` bytes came back,
/// then sends Terminate (if `terminate`) and reads to end of stream.
/// Returns all it got.
fn client(
    mut c: UnixStream,
    pumps_end: UnixStream,
    script: Vec<u8>,
    cut: usize,
    expect: usize,
    terminate: bool,
) -> Vec<u8> {
    // A pump that stops answering fails the test instead of hanging it.
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write_cut(&mut c, &pumps_end, &script, cut);
    // The pump's end must close once it is done, for the reads below.
    drop(pumps_end);
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < expect {
        let n = c.read(&mut chunk).expect("answers from the pump");
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    if terminate {
        c.write_all(&message(b'X', &[])).unwrap();
    }
    c.read_to_end(&mut got)
        .expect("end of stream from the pump");
    got
}

/// One server connection that outlives the client sessions run over it.
struct Connection {
    pump: UnixStream,
    server: thread::JoinHandle<Vec<u8>>,
}

impl Connection {
    fn new(how: Server) -> Connection {
        let (pump, theirs) = UnixStream::pair().unwrap();
        pump.set_nonblocking(true).unwrap();
        let watch = pump.try_clone().unwrap();
        let server = thread::spawn(move || scripted_server(theirs, watch, how));
        Connection { pump, server }
    }

    /// Hangs up and returns what the server was sent over all sessions.
    fn close(self) -> Vec<u8> {
        drop(self.pump);
        self.server.join().expect("the server ran to its end")
    }
}

struct Session {
    outcome: Outcome,
    state: SessionState,
    to_client: Vec<u8>,
}

/// One client session over `conn`: the pump runs here, the client in a
/// thread.
fn session(
    conn: &Connection,
    script: Vec<u8>,
    cut: usize,
    expect: usize,
    terminate: bool,
) -> Session {
    let (theirs, pump) = UnixStream::pair().unwrap();
    pump.set_nonblocking(true).unwrap();
    let watch = pump.try_clone().unwrap();
    let client = thread::spawn(move || client(theirs, watch, script, cut, expect, terminate));
    let stop = AtomicBool::new(false);
    let mut p = Performance::new(pump.as_fd(), conn.pump.as_fd(), &stop, SigSet::empty());
    let outcome = p.run();
    let state = p.state.clone();
    drop(pump);
    let to_client = client.join().expect("the client ran to its end");
    Session {
        outcome,
        state,
        to_client,
    }
}

#[test]
fn messages_pass_intact_both_ways_whatever_the_cut() {
    let script = client_script();
    let want = answers(&script);
    for cut in 0..=script.len().max(want.len()) {
        let conn = Connection::new(Server::Answers {
            after: script.len(),
            cut,
        });
        let s = session(&conn, script.clone(), cut, want.len(), true);
        assert!(
            matches!(s.outcome, Outcome::ClientTerminated),
            "cut at {cut}: {:?}",
            s.outcome
        );
        assert!(s.to_client == want, "cut at {cut}: answers changed");
        assert!(
            s.outcome.leaves_server_reusable(&s.state),
            "cut at {cut}: {:?}",
            s.state
        );
        assert!(conn.close() == script, "cut at {cut}: requests changed");
    }
}

/// Terminate is pgcorral's to keep: the server never sees it, stays open
/// and in step, and serves the next client's session as it did the first.
#[test]
fn terminate_ends_the_session_and_the_server_serves_the_next() {
    let script = client_script();
    let want = answers(&script);
    let conn = Connection::new(Server::Answers {
        after: script.len(),
        cut: 0,
    });
    for round in 0..2 {
        let s = session(&conn, script.clone(), 0, want.len(), true);
        assert!(
            matches!(s.outcome, Outcome::ClientTerminated),
            "{:?}",
            s.outcome
        );
        assert!(s.to_client == want, "round {round}");
        assert!(s.outcome.leaves_server_reusable(&s.state), "{:?}", s.state);
        assert!(quiet(conn.pump.as_fd()), "the server is owed nothing");
    }
    let mut twice = script.clone();
    twice.extend(&script);
    assert!(conn.close() == twice, "no Terminate reached the server");
}

/// A client that leaves inside a transaction leaves a connection nobody
/// else may have.
#[test]
fn terminate_inside_a_transaction_is_not_reusable() {
    let script = message(b'Q', b"begin\0");
    let want = answers(&script);
    let conn = Connection::new(Server::Answers {
        after: script.len(),
        cut: 0,
    });
    let s = session(&conn, script.clone(), 0, want.len(), true);
    assert!(matches!(s.outcome, Outcome::ClientTerminated));
    assert_eq!(s.state.tx_status, b'T');
    assert!(!s.outcome.leaves_server_reusable(&s.state));
    assert!(conn.close() == script);
}

#[test]
fn a_server_hang_up_ends_the_session_unusable() {
    let script = message(b'Q', b"select 1\0");
    let fatal = message(b'E', b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0");
    let half_row = message(b'D', &[7; 64])[..20].to_vec();
    for (last, fatal_seen) in [(fatal, true), (half_row, false), (Vec::new(), false)] {
        let conn = Connection::new(Server::HangsUp(last.clone()));
        // The client reads to end of stream: the pump hangs up on it.
        let s = session(&conn, script.clone(), 0, usize::MAX, false);
        assert!(
            matches!(s.outcome, Outcome::ServerClosed),
            "{:?}",
            s.outcome
        );
        assert!(s.to_client == last, "what the server said is passed on");
        assert_eq!(s.state.server_fatal, fatal_seen);
        assert!(!s.outcome.leaves_server_reusable(&s.state));
        assert!(!s.state.is_clean(), "{:?}", s.state);
        assert!(conn.close() == script);
    }
}

/// Messages many times the relay's buffer pass whole in both directions,
/// cut anywhere around the buffer's size.
#[test]
fn large_messages_pass_whole() {
    let sql: Vec<u8> = (0..8 * BUFFER_SIZE + 3)
        .map(|i| b'a' + (i % 26) as u8)
        .chain([0])
        .collect();
    let mut script = message(b'Q', &sql);
    script.extend(client_script());
    let want = answers(&script);
    assert!(want.len() > 8 * BUFFER_SIZE);
    for cut in [
        1,
        4,
        5,
        BUFFER_SIZE - 1,
        BUFFER_SIZE,
        BUFFER_SIZE + 1,
        3 * BUFFER_SIZE + 7,
        script.len() - 1,
    ] {
        let conn = Connection::new(Server::Answers {
            after: script.len(),
            cut,
        });
        let s = session(&conn, script.clone(), cut, want.len(), true);
        assert!(
            matches!(s.outcome, Outcome::ClientTerminated),
            "cut at {cut}: {:?}",
            s.outcome
        );
        assert!(s.to_client == want, "cut at {cut}: answers changed");
        assert!(s.outcome.leaves_server_reusable(&s.state), "cut at {cut}");
        assert!(conn.close() == script, "cut at {cut}: requests changed");
    }
}

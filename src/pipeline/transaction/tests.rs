//! The pump between two socket pairs: a scripted server that answers by
//! tag, and a client stream cut in two at every byte position. Whatever the
//! cut, the client gets the answers a direct server gives, and the
//! connection goes back clean after every transaction.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;

use super::*;
use crate::pipeline::session_sql::PinReason;
use crate::protocol::extended::{Bind, Parse, Query, Target};
use crate::protocol::framer::frames;
use crate::protocol::message::write_message;

/// Answers every request with what PostgreSQL sends on success; it keeps
/// no statements, so it also shows the pump never relies on the server to
/// check names.
fn scripted_server(mut s: UnixStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut used = 0;
        for f in frames(&buf) {
            used += 5 + f.body.len();
            let mut reply =
                |tag: u8, body: &[u8]| write_message(&mut out, tag, |b| b.extend_from_slice(body));
            match f.tag {
                b'Q' => {
                    reply(b'T', &[0, 0]);
                    reply(b'D', &[0, 0]);
                    reply(b'C', b"SELECT 1\0");
                    reply(b'Z', b"I");
                }
                b'P' => reply(b'1', &[]),
                b'B' => reply(b'2', &[]),
                b'D' => {
                    reply(b't', &[0, 0]);
                    reply(b'n', &[]);
                }
                b'C' => reply(b'3', &[]),
                b'E' => {
                    reply(b'D', &[0, 0]);
                    reply(b'C', b"SELECT 1\0");
                }
                b'S' => reply(b'Z', b"I"),
                _ => {}
            }
        }
        buf.drain(..used);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Record(Vec<String>);

impl ServerStatements for Record {
    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
    fn insert(&mut self, name: &str) -> Option<String> {
        self.0.push(name.to_string());
        None
    }
    fn remove(&mut self, name: &str) {
        self.0.retain(|n| n != name);
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// One server connection, handed out again after every detach.
struct OneServer {
    fd: RawFd,
    attached: bool,
    detaches: Vec<bool>,
    record: Record,
    watch: bool,
    pins: Vec<PinReason>,
}

impl Attach for &mut OneServer {
    fn attach(&mut self) -> Result<RawFd, ErrorResponse> {
        assert!(!self.attached, "attached twice");
        self.attached = true;
        Ok(self.fd)
    }
    fn detach(&mut self, clean: bool) {
        assert!(self.attached, "detached while not attached");
        self.attached = false;
        self.detaches.push(clean);
    }
    fn parameter(&mut self, _: &str, _: &str) {}
    fn statements(&mut self) -> &mut dyn ServerStatements {
        &mut self.record
    }
    fn watches(&self) -> bool {
        self.watch && self.pins.is_empty()
    }
    fn pin(&mut self, why: PinReason) {
        assert!(self.attached, "pinned while not attached");
        self.pins.push(why);
    }
    fn settings_changed(&mut self, _: &[String]) {
        assert!(self.attached, "settings changed while not attached");
    }
}

/// A simple query, a named statement prepared and described, bound and
/// executed, then closed: four requests answered by ReadyForQuery.
fn client_script() -> Vec<u8> {
    script_with(b"select 1")
}

/// `client_script` with another first query; the scripted server answers
/// any query alike.
fn script_with(sql: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    Query { sql }.write(&mut s);
    Parse {
        name: b"s1",
        text: b"select $1\0\0\0",
    }
    .write(&mut s);
    Target::statement(b"s1").write(b'D', &mut s);
    write_message(&mut s, b'S', |_| {});
    Bind {
        portal: b"",
        statement: b"s1",
        rest: &[0, 0, 0, 0, 0, 0],
    }
    .write(&mut s);
    write_message(&mut s, b'E', |b| b.extend_from_slice(&[0, 0, 0, 0, 0]));
    write_message(&mut s, b'S', |_| {});
    Target::statement(b"s1").write(b'C', &mut s);
    write_message(&mut s, b'S', |_| {});
    s
}

/// What a direct server answers `client_script` with.
const DIRECT: &[u8] = b"TDCZ1tnZ2DCZ3Z";

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "the pump stopped moving");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the script cut at `cut`; returns the tags the client got and the
/// pump's detaches.
fn run(rewriter: Rewriter, cut: usize) -> (Vec<u8>, Vec<bool>, Outcome) {
    let (got, one, outcome) = run_watched(rewriter, cut, None);
    (got, one.detaches, outcome)
}

/// `run`, with the client's statements looked at for session state when
/// `sql` (the first query) is given.
fn run_watched(
    rewriter: Rewriter,
    cut: usize,
    sql: Option<&'static [u8]>,
) -> (Vec<u8>, OneServer, Outcome) {
    let (mut client, client_end) = UnixStream::pair().unwrap();
    let (server_end, server) = UnixStream::pair().unwrap();
    // Both ends are left blocking: the pump never depends on the flag.
    let server_thread = thread::spawn(move || scripted_server(server));
    let watch = client_end.try_clone().unwrap();
    // A pump that stops answering fails the test instead of hanging it.
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let client_thread = thread::spawn(move || {
        let script = sql.map_or_else(client_script, script_with);
        client.write_all(&script[..cut]).unwrap();
        // Only once the pump has read the first piece does the second go
        // out, so the cut is a cut between two reads.
        wait_for(|| {
            let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap() == 0
        });
        client.write_all(&script[cut..]).unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.iter().filter(|&&t| t == b'Z').count() < 4 {
            let n = client.read(&mut chunk).expect("answers from the pump");
            assert!(n > 0, "the pump hung up early");
            buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            for f in frames(&buf) {
                used += 5 + f.body.len();
                got.push(f.tag);
            }
            buf.drain(..used);
        }
        write_message(&mut buf, b'X', |_| {});
        client.write_all(&buf).unwrap();
        got
    });
    let mut one = OneServer {
        fd: server_end.as_raw_fd(),
        attached: false,
        detaches: Vec::new(),
        record: Record::default(),
        watch: sql.is_some(),
        pins: Vec::new(),
    };
    let stop = AtomicBool::new(false);
    let mask = SigSet::empty();
    let outcome = Transaction::new(client_end.as_fd(), &mut one, rewriter, &stop, mask).run();
    let got = client_thread.join().expect("the client got its answers");
    // Shut down rather than only dropped: a test elsewhere in this process
    // may fork and keep a copy open.
    let _ = server_end.shutdown(std::net::Shutdown::Both);
    server_thread.join().unwrap();
    (got, one, outcome)
}

fn every_cut(make: impl Fn() -> Rewriter) {
    let len = client_script().len();
    for cut in 0..=len {
        let (got, detaches, outcome) = run(make(), cut);
        assert_eq!(got, DIRECT, "cut at {cut}");
        assert!(
            matches!(outcome, Outcome::ClientTerminated),
            "cut at {cut}: {outcome:?}"
        );
        assert!(
            !detaches.is_empty() && detaches.iter().all(|&clean| clean),
            "cut at {cut}: {detaches:?}"
        );
    }
}

#[test]
fn statements_renamed_whatever_the_cut() {
    every_cut(|| Rewriter::new(10, [1, 2]));
}

#[test]
fn names_passed_through_whatever_the_cut() {
    every_cut(Rewriter::pass_through);
}

/// Looking at statements changes nothing on the wire, whether the
/// rewriter gathers messages or streams them, wherever the input is cut;
/// a statement that leaves session state pins once, while attached.
#[test]
fn statements_looked_at_whatever_the_cut() {
    let makes: [fn() -> Rewriter; 2] = [|| Rewriter::new(10, [1, 2]), Rewriter::pass_through];
    for make in makes {
        for (sql, want) in [
            (&b"select 1"[..], vec![]),
            (&b"LISTEN x"[..], vec![PinReason::Listen]),
        ] {
            let len = script_with(sql).len();
            for cut in 0..=len {
                let (got, one, outcome) = run_watched(make(), cut, Some(sql));
                assert_eq!(got, DIRECT, "cut at {cut}");
                assert!(matches!(outcome, Outcome::ClientTerminated), "{outcome:?}");
                assert_eq!(one.pins, want, "cut at {cut}");
            }
        }
    }
}

//! The descriptor budget under load. With the usual soft limit of 1024
//! (pgcorral raises it to the hard one) a thousand clients at once are all
//! served. Under a hard limit of 256 the clients beyond what it leaves room
//! for are told 53300, never left hanging, and once the load drops a new
//! client is served with nobody's help. A worker whose request finds the
//! supervisor out of descriptors, a client for whom no process can be
//! forked, and a remote administrator beyond the bound are told 53300 too,
//! and service goes on afterwards.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{pgcorral_bin, startup_message, wait_until, Pgcorral, Postgres};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::unistd::{chown, Uid, User};

/// How long any one client waits for an answer before the test calls it
/// hung.
const ANSWER: Duration = Duration::from_secs(60);

/// Lets this test process hold a thousand sockets whatever its soft limit.
fn raise_own_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read the descriptor limit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the descriptor limit");
}

/// The command to start pgcorral with descriptor limits `soft`:`hard`.
fn with_nofile(soft: u64, hard: u64) -> impl FnOnce(&Path) -> Command {
    move |_| {
        let mut cmd = Command::new(pgcorral_bin());
        // SAFETY: runs in the forked child before exec; setrlimit is one
        // system call, async-signal-safe, and nothing here allocates.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(io::Error::from)
            });
        }
        cmd
    }
}

/// A field of /proc/PID/limits: (soft, hard) of the line starting `name`.
fn proc_limit(pid: i32, name: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/limits"));
    let mut f = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(u64::MAX));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

/// Reads one message: (tag, body).
fn message(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=1 << 20).contains(&len) {
        return Err(io::Error::other(format!("message length {len}")));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// How a client's attempt ended.
#[derive(Debug)]
enum Outcome {
    /// ReadyForQuery: the client is served, and holds its connection.
    Served(TcpStream),
    /// An ErrorResponse with this SQLSTATE and message.
    Refused(String, String),
    /// Anything else: closed without an answer, hung, out of step.
    Broken(String),
}

/// An ErrorResponse's SQLSTATE and message.
fn refusal(body: &[u8]) -> Outcome {
    let field = |code: u8| {
        body.split(|b| *b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    Outcome::Refused(field(b'C'), field(b'M'))
}

/// Reads until ReadyForQuery or an ErrorResponse.
fn until_ready(mut s: TcpStream) -> Outcome {
    loop {
        match message(&mut s) {
            Ok((b'Z', _)) => return Outcome::Served(s),
            Ok((b'E', body)) => return refusal(&body),
            Ok(_) => {}
            Err(e) => return Outcome::Broken(e.to_string()),
        }
    }
}

/// A raw client: connects, sends a start-up packet for postgres/postgres
/// (trust), and reads the answer.
fn client(port: u16) -> Outcome {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return Outcome::Broken(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(ANSWER));
    let _ = s.set_write_timeout(Some(ANSWER));
    if let Err(e) = s.write_all(&startup_message("postgres", "postgres")) {
        return Outcome::Broken(format!("send the start-up packet: {e}"));
    }
    until_ready(s)
}

/// `n` raw clients, `threads` connecting at a time; their outcomes.
fn clients(port: u16, n: usize, threads: usize) -> Vec<Outcome> {
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let count = per.min(n.saturating_sub(t * per));
            thread::spawn(move || (0..count).map(|_| client(port)).collect::<Vec<_>>())
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("a client thread"))
        .collect()
}

/// Sends `SELECT 1` on every held client at once, then reads every
/// answer; the ones that did not end in ReadyForQuery after a row.
fn query_all(held: &mut [TcpStream]) -> Vec<String> {
    let mut query = vec![b'Q'];
    query.extend_from_slice(&(4 + 9u32).to_be_bytes());
    query.extend_from_slice(b"SELECT 1\0");
    let mut failed = Vec::new();
    for s in held.iter_mut() {
        if let Err(e) = s.write_all(&query) {
            failed.push(format!("send: {e}"));
        }
    }
    for s in held.iter_mut() {
        let mut row = false;
        loop {
            match message(s) {
                Ok((b'D', _)) => row = true,
                Ok((b'Z', _)) if row => break,
                Ok((b'E', body)) => {
                    failed.push(String::from_utf8_lossy(&body).into_owned());
                    break;
                }
                Ok((b'Z', _)) => {
                    failed.push("no row".into());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    failed.push(e.to_string());
                    break;
                }
            }
        }
    }
    failed
}

fn split(outcomes: Vec<Outcome>) -> (Vec<TcpStream>, Vec<(String, String)>, Vec<String>) {
    let (mut served, mut refused, mut broken) = (Vec::new(), Vec::new(), Vec::new());
    for o in outcomes {
        match o {
            Outcome::Served(s) => served.push(s),
            Outcome::Refused(code, msg) => refused.push((code, msg)),
            Outcome::Broken(why) => broken.push(why),
        }
    }
    (served, refused, broken)
}

const TRANSACTION_POOL: &str = "pipeline = \"transaction\"
max_connections = 8
blocking_timeout = \"60s\"
log_level = \"info\"";

#[test]
fn a_thousand_clients_are_served_under_the_usual_soft_limit() {
    raise_own_limit();
    let pg = Postgres::start();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read the descriptor limit");
    assert!(
        hard >= 1300,
        "the hard descriptor limit ({hard}) must allow a thousand clients and the pool"
    );
    let pc = Pgcorral::start_with(&pg, TRANSACTION_POOL, with_nofile(1024, hard));
    assert_eq!(
        proc_limit(pc.pid, "Max open files"),
        (hard, hard),
        "pgcorral raised its soft limit to the hard one"
    );

    let started = Instant::now();
    let (mut served, refused, broken) = split(clients(pc.port, 1000, 8));
    let connected = started.elapsed();
    assert!(
        refused.is_empty() && broken.is_empty(),
        "every one of 1000 clients is served; refused {:?}…, broken {:?}…",
        refused.first(),
        broken.first()
    );
    assert_eq!(served.len(), 1000);
    assert_eq!(pc.workers().len(), 1000, "one worker per client");

    // Every client runs a transaction, all at once, over the pool of 8.
    let failed = query_all(&mut served);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );

    // max_clients (1000) is the bound now, not descriptors.
    match client(pc.port) {
        Outcome::Refused(code, _) => assert_eq!(code, "53300"),
        other => panic!("the 1001st client must get 53300, got {other:?}"),
    }
    eprintln!(
        "1000 clients connected in {:.2}s, served within {:.2}s",
        connected.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn beyond_a_limit_of_256_clients_get_53300_and_the_pool_recovers_by_itself() {
    raise_own_limit();
    let pg = Postgres::start();
    let pc = Pgcorral::start_with(&pg, TRANSACTION_POOL, with_nofile(256, 256));
    assert_eq!(proc_limit(pc.pid, "Max open files"), (256, 256));
    // The budget the supervisor announced at start.
    let log = pc.log();
    let budget: usize = log
        .split("need: at most ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the client budget is logged:\n{log}"));
    assert!(
        (1..400).contains(&budget),
        "256 descriptors leave room for some clients, not 400: {budget}"
    );

    let (mut served, refused, broken) = split(clients(pc.port, 400, 8));
    assert!(broken.is_empty(), "no client is left hanging: {broken:?}");
    assert_eq!(served.len(), budget, "the budget is served");
    assert_eq!(refused.len(), 400 - budget);
    for (code, msg) in &refused {
        assert_eq!(code, "53300", "{msg}");
    }
    assert!(
        pc.log()
            .contains(&format!("leaves room for {budget} clients")),
        "the refusals are logged"
    );
    let failed = query_all(&mut served);
    assert!(
        failed.is_empty(),
        "the served clients still work: {failed:?}"
    );

    drop(served);
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "the clients' workers end"
    );
    // Nobody touched the management socket: the next client is served.
    pc.connect()
        .simple_query("SELECT 1")
        .expect("served once the load dropped");
    let (served, refused, broken) = split(clients(pc.port, budget, 8));
    assert_eq!(
        (served.len(), refused.len(), broken.len()),
        (budget, 0, 0),
        "a full budget of clients is served again"
    );
}

/// The lowest descriptor number `pid` has free.
fn lowest_free_descriptor(pid: i32) -> u64 {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the supervisor's descriptors")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap_or(0)
}

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn set_soft_nofile(pid: i32, limit: u64) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --nofile={limit} on {pid}");
}

#[test]
fn a_request_the_supervisor_has_no_descriptor_for_gets_53300_and_the_pool_stays() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "pipeline = \"transaction\"\nmax_connections = 1\nauthentication_timeout = \"60s\"",
    );
    let idle = open_descriptors(pc.pid);
    // Forked before the pool has a connection: it will have to ask the
    // supervisor for the socket.
    let mut late = TcpStream::connect(("127.0.0.1", pc.port)).expect("connect");
    late.set_read_timeout(Some(ANSWER)).expect("timeout");
    assert!(wait_until(Duration::from_secs(20), || pc.workers().len() == 1));
    let mut first = pc.connect();
    first.simple_query("SELECT 1").expect("served");
    // Its master copy takes a placeholder's number; the management
    // connection that brought it is closed once the supervisor has read
    // to its end.
    assert!(
        wait_until(Duration::from_secs(20), || open_descriptors(pc.pid) == idle),
        "the supervisor is back to what it held before the clients came"
    );
    let backend = pg.backend_count(None);
    let soft = proc_limit(pc.pid, "Max open files").0;
    set_soft_nofile(pc.pid, lowest_free_descriptor(pc.pid));

    late.write_all(&startup_message("postgres", "postgres"))
        .expect("send the start-up packet");
    match until_ready(late) {
        Outcome::Refused(code, msg) => {
            assert_eq!(code, "53300", "{msg}");
            assert!(msg.contains("out of descriptors"), "{msg}");
        }
        other => panic!("expected 53300, got {other:?}"),
    }

    set_soft_nofile(pc.pid, soft);
    first
        .simple_query("SELECT 1")
        .expect("the pooled connection is still there");
    assert_eq!(
        pg.backend_count(None),
        backend,
        "no server connection was thrown away or opened for the refusal"
    );
    let mut next = pc.connect();
    next.simple_query("SELECT 1")
        .expect("a new client is served");
}

#[test]
fn a_client_no_process_can_be_forked_for_gets_53300_and_the_next_after_a_leave_is_served() {
    // RLIMIT_NPROC binds neither root nor a process that can raise it; the
    // honest way to make fork fail is pgcorral as another user with few
    // processes allowed, which only root can arrange.
    if !Uid::effective().is_root() {
        eprintln!("skipped: running pgcorral as another user needs root");
        return;
    }
    let nobody = User::from_name("nobody")
        .expect("look up nobody")
        .expect("a user nobody");
    let pg = Postgres::start();
    // The supervisor and two workers.
    let already = users_processes(nobody.uid);
    let nproc = already + 3;
    let pc = Pgcorral::start_with(&pg, "max_connections = 4", |dir: &Path| {
        chown(dir, Some(nobody.uid), Some(nobody.gid)).expect("chown the pgcorral directory");
        // Where nobody can surely run it from.
        let bin = dir.join("pgcorral");
        std::fs::copy(pgcorral_bin(), &bin).expect("copy the pgcorral binary");
        let mut cmd = Command::new(bin);
        cmd.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
        // SAFETY: runs in the forked child, after it became nobody and
        // before exec; setrlimit is one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NPROC, nproc, nproc).map_err(io::Error::from)
            });
        }
        cmd
    });

    // Clients until a fork fails: two, unless processes of that user
    // this test cannot see (another PID namespace) take some of the room.
    let mut held = Vec::new();
    let refused = loop {
        match client(pc.port) {
            Outcome::Served(s) => held.push(s),
            other => break other,
        }
        assert!(
            held.len() <= 2,
            "RLIMIT_NPROC {nproc} let a third worker start"
        );
    };
    match refused {
        Outcome::Refused(code, msg) => {
            assert_eq!(code, "53300", "{msg}");
            assert!(msg.contains("cannot start a worker process"), "{msg}");
        }
        other => panic!("expected 53300, got {other:?}"),
    }
    // The client is answered before the supervisor logs.
    assert!(
        wait_until(Duration::from_secs(10), || pc
            .log()
            .contains("cannot fork a worker")),
        "the failed fork is logged:\n{}",
        pc.log()
    );
    assert!(!held.is_empty(), "no worker could be forked at all");
    let failed = query_all(&mut held);
    assert!(failed.is_empty(), "the held clients are served: {failed:?}");

    drop(held.pop());
    let left = held.len();
    assert!(
        wait_until(Duration::from_secs(20), || pc.workers().len() == left),
        "the leaving client's worker is reaped"
    );
    pc.connect()
        .simple_query("SELECT 1")
        .expect("served once a process could be forked again");
    drop(held);
}

/// Processes (threads included, as RLIMIT_NPROC counts them) of `uid`.
fn users_processes(uid: Uid) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                    line.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(uid.as_raw())
        })
        .map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count() as u64)
                .unwrap_or(1)
        })
        .sum()
}

/// How remote management answers a start-up packet: `Served` when it asks
/// for authentication.
fn remote_answer(port: u16) -> Outcome {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to remote management");
    s.set_read_timeout(Some(ANSWER)).expect("timeout");
    s.write_all(&startup_message("admin", "pgcorral"))
        .expect("send the start-up packet");
    match message(&mut s) {
        Ok((b'R', _)) => Outcome::Served(s),
        Ok((b'E', body)) => refusal(&body),
        other => Outcome::Broken(format!("{other:?}")),
    }
}

#[test]
fn remote_management_sessions_are_admitted_like_clients() {
    let pg = Postgres::start();
    let port = common::free_port();
    let pc = Pgcorral::start(&pg, &format!("management = {port}\nmax_clients = 1"));
    let mut held = pc.connect();
    held.simple_query("SELECT 1").expect("served");
    match remote_answer(port) {
        Outcome::Refused(code, msg) => assert_eq!(code, "53300", "{msg}"),
        other => panic!("an administrator beyond max_clients must get 53300, got {other:?}"),
    }
    assert!(
        pc.log().contains("remote management from"),
        "the refusal is logged"
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(20), || pc.workers().is_empty()),
        "the client's worker ends"
    );
    assert!(
        matches!(remote_answer(port), Outcome::Served(_)),
        "with the client gone an administrator is asked to log in"
    );
}

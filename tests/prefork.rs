//! Workers that serve client after client, and the spares kept forked ahead
//! of clients: a reused worker shows nothing of its last client, leaks no
//! descriptor, never serves with an outdated configuration, and a crashed
//! or idle one is replaced.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{children_of, output_within, wait_until, Pgcorral, Postgres};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

type Message = (u8, Vec<u8>);

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse of `sql` as statement `name`, no parameter types.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstr(name);
    body.extend(cstr(sql));
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &body)
}

/// Bind of statement `name` to the unnamed portal, Execute, Sync.
fn bind_execute_sync(name: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(name));
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = message(b'B', &body);
    let mut exec = cstr("");
    exec.extend_from_slice(&0i32.to_be_bytes());
    out.extend(message(b'E', &exec));
    out.extend(message(b'S', &[]));
    out
}

/// The messages up to ReadyForQuery.
fn until_ready(stream: &mut TcpStream) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        let m = common::read_message(stream);
        let done = m.0 == b'Z';
        got.push(m);
        if done {
            return got;
        }
    }
}

fn sqlstate(body: &[u8]) -> String {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if code == b'C' {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    String::new()
}

/// A started session over raw TCP and the pid in its BackendKeyData (in
/// the transaction pipeline, its worker's), or the SQLSTATE it was
/// refused with.
fn start_raw(pc: &Pgcorral) -> Result<(TcpStream, i32), String> {
    let mut stream = pc.tcp_stream();
    stream
        .write_all(&common::startup_message("postgres", "postgres"))
        .expect("send start-up");
    let mut pid = None;
    loop {
        match common::read_message(&mut stream) {
            (b'K', body) => pid = Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]])),
            (b'Z', _) => break,
            (b'E', body) => return Err(sqlstate(&body)),
            _ => {}
        }
    }
    Ok((stream, pid.expect("no BackendKeyData")))
}

/// Terminate, then the close that follows.
fn terminate(mut stream: TcpStream) {
    stream
        .write_all(&message(b'X', &[]))
        .expect("send Terminate");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

/// The supervisor's count of idle workers (`status`).
fn idle_by_status(pc: &Pgcorral) -> Option<usize> {
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_pgcorral-cli"))
            .arg("-s")
            .arg(&pc.socket_dir)
            .args(["-p", &pc.port.to_string(), "--format", "json", "status"]),
        Duration::from_secs(30),
    )
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"idle_workers\":")? + "\"idle_workers\":".len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Waits until `pid` is the supervisor's only idle worker, so that the
/// next client goes to it.
fn wait_sole_idle(pc: &Pgcorral, pid: i32) {
    assert!(
        wait_until(Duration::from_secs(20), || pc.idle_workers() == [pid]
            && idle_by_status(pc) == Some(1)),
        "worker {pid} is not the one idle worker: idle {:?}, busy {:?}",
        pc.idle_workers(),
        pc.workers()
    );
}

/// What `pid` has open, once it waits for its next client (the last
/// client's socket is closed by then).
fn descriptors(pid: i32) -> Vec<String> {
    assert!(
        wait_until(Duration::from_secs(20), || common::title(pid)
            == common::IDLE_TITLE),
        "worker {pid} did not get idle: {:?}",
        common::title(pid)
    );
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{}: {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

#[test]
fn a_reused_worker_keeps_nothing_of_its_last_session() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "pipeline = \"session\"\nworkers_min_spare = 0\nworkers_max_spare = 1",
    );
    let mut first = pc.connect();
    first
        .simple_query("SET work_mem = '7MB'")
        .expect("SET in the first session");
    let show = |c: &mut postgres::Client| -> String {
        c.query_one("SHOW work_mem", &[])
            .expect("SHOW work_mem")
            .get(0)
    };
    assert_eq!(show(&mut first), "7MB");
    let busy = pc.workers();
    assert_eq!(busy.len(), 1, "one client, one busy worker: {busy:?}");
    let worker = busy[0];
    drop(first);
    wait_sole_idle(&pc, worker);

    let mut second = pc.connect();
    assert_eq!(
        pc.workers(),
        [worker],
        "the second client got another worker"
    );
    assert_eq!(
        show(&mut second),
        "4MB",
        "the second session sees the first one's SET"
    );
}

#[test]
fn a_reused_worker_forgets_the_last_clients_prepared_statements() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "pipeline = \"transaction\"\nworkers_min_spare = 0\nworkers_max_spare = 1",
    );
    let (mut first, worker) = start_raw(&pc).expect("first client");
    first
        .write_all(&parse("kept", "select 1"))
        .expect("send Parse");
    first
        .write_all(&bind_execute_sync("kept"))
        .expect("send Bind");
    let answer = until_ready(&mut first);
    assert!(
        answer.iter().any(|(tag, _)| *tag == b'D'),
        "the first client's statement ran: {answer:?}"
    );
    terminate(first);
    wait_sole_idle(&pc, worker);

    let (mut second, pid) = start_raw(&pc).expect("second client");
    assert_eq!(pid, worker, "the second client got another worker");
    second
        .write_all(&bind_execute_sync("kept"))
        .expect("send Bind");
    let answer = until_ready(&mut second);
    let error = answer
        .iter()
        .find(|(tag, _)| *tag == b'E')
        .unwrap_or_else(|| panic!("the first client's statement ran for the second: {answer:?}"));
    assert_eq!(sqlstate(&error.1), "26000", "{answer:?}");
    // The name is free for the second client's own statement.
    second
        .write_all(&parse("kept", "select 2"))
        .expect("send Parse");
    second
        .write_all(&bind_execute_sync("kept"))
        .expect("send Bind");
    let answer = until_ready(&mut second);
    let row = answer
        .iter()
        .find(|(tag, _)| *tag == b'D')
        .unwrap_or_else(|| panic!("no row: {answer:?}"));
    assert!(row.1.ends_with(b"2"), "{answer:?}");
    terminate(second);
}

/// One worker serves client after client (`max_clients = 1` leaves room
/// for no other process), and its descriptors do not grow. Each client
/// goes through start-up, a pooled connection in the transaction pipeline
/// and Terminate: 10,000 of them (PGCORRAL_PREFORK_REUSES sets another
/// number), which takes a few seconds.
#[test]
fn a_worker_serving_many_clients_leaks_no_descriptor() {
    let total: usize = std::env::var("PGCORRAL_PREFORK_REUSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "pipeline = \"transaction\"\nmax_clients = 1\nworkers_min_spare = 1\n\
             workers_max_spare = 1\nlog_level = \"info\"\nworker_max_clients = {}",
            total + 1
        ),
    );
    let started = Instant::now();
    let mut worker = None;
    let mut baseline = None;
    let mut served = 0;
    let mut refused = 0;
    while served < total {
        match start_raw(&pc) {
            Ok((stream, pid)) => {
                assert_eq!(
                    *worker.get_or_insert(pid),
                    pid,
                    "client {served}: another worker"
                );
                terminate(stream);
                served += 1;
                // Once the pool's one connection is cached.
                if served == 10 {
                    baseline = Some(descriptors(pid));
                }
            }
            // The one worker had not said it is idle yet.
            Err(code) => {
                assert_eq!(code, "53300");
                refused += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let worker = worker.expect("a worker");
    let fds = descriptors(worker);
    let baseline = baseline.expect("a count after 10 clients");
    eprintln!(
        "{served} clients on worker {worker} in {elapsed:?} ({refused} refused while it was \
         busy); {} descriptors after 10, {} at the end",
        baseline.len(),
        fds.len()
    );
    assert_eq!(fds, baseline, "descriptors of worker {worker}");
}

#[test]
fn crashed_and_idle_workers_are_replaced_and_the_slot_recovered() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "workers_min_spare = 2\nworkers_max_spare = 4\nmax_connections = 4",
    );
    assert!(
        wait_until(Duration::from_secs(20), || pc.idle_workers().len() == 2),
        "two spares at start: {:?}",
        pc.idle_workers()
    );
    let idle = pc.idle_workers()[0];
    kill(Pid::from_raw(idle), Signal::SIGKILL).expect("kill an idle worker");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = pc.idle_workers();
            now.len() == 2 && !now.contains(&idle) && !children_of(pc.pid).contains(&idle)
        }),
        "the idle worker was not replaced: {:?}",
        pc.idle_workers()
    );

    let mut other = pc.connect();
    let sleeper = pc.connect();
    assert_eq!(pc.workers().len(), 2, "{:?}", pc.workers());
    const SLEEP: &str = "select pg_sleep(60)";
    let thread = std::thread::spawn(move || {
        let mut sleeper = sleeper;
        sleeper.simple_query(SLEEP).map(|_| ())
    });
    assert!(
        wait_until(Duration::from_secs(20), || pg
            .backends_with_query(SLEEP)
            .len()
            == 1),
        "the long query never started"
    );
    let backend = pg.backends_with_query(SLEEP)[0];
    let victim = slot_owner(&pc, backend).expect("the sleeper's slot");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill the busy worker");
    assert!(
        thread.join().expect("the sleeper's thread").is_err(),
        "the query survived its worker"
    );
    // The slot is taken back and emptied (its connection closed).
    assert!(
        wait_until(Duration::from_secs(20), || slot_owner(&pc, backend)
            .is_none()),
        "the dead worker's slot was not recovered"
    );
    let v: i32 = other
        .query_one("select 7", &[])
        .expect("the other client goes on")
        .get(0);
    assert_eq!(v, 7);
    assert!(
        wait_until(Duration::from_secs(20), || pc.idle_workers().len() >= 2),
        "spares topped up again: {:?}",
        pc.idle_workers()
    );
    for _ in 0..3 {
        let mut c = pc.connect();
        c.simple_query("select 1").expect("a new client");
    }
}

/// The pid owning the slot of `backend` (`status details`), if a slot has
/// that backend: in the performance pipeline, the worker of the client on
/// that backend.
fn slot_owner(pc: &Pgcorral, backend: i32) -> Option<i32> {
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_pgcorral-cli"))
            .arg("-s")
            .arg(&pc.socket_dir)
            .args([
                "-p",
                &pc.port.to_string(),
                "--format",
                "json",
                "status",
                "details",
            ]),
        Duration::from_secs(30),
    )
    .expect("pgcorral-cli status details");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON: {e}: {text}"));
    v["result"]["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .find(|s| s["backend_pid"].as_i64() == Some(backend as i64))
        .and_then(|s| s["owner_pid"].as_i64())
        .map(|p| p as i32)
}

#[test]
fn after_a_reload_clients_get_workers_with_the_new_configuration() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "workers_min_spare = 2\nlog_connections = false");
    assert!(
        wait_until(Duration::from_secs(20), || pc.idle_workers().len() == 2),
        "two spares at start"
    );
    let before: BTreeSet<i32> = pc.idle_workers().into_iter().collect();
    let mut across = pc.connect();
    across.simple_query("select 1").expect("query");
    let across_worker = pc.workers()[0];

    let config = std::fs::read_to_string(&pc.config_path).expect("read the configuration");
    let changed = config.replace("log_connections = false", "log_connections = true");
    assert_ne!(config, changed);
    std::fs::write(&pc.config_path, changed).expect("write the configuration");
    pc.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(20), || pc
            .log()
            .contains("log_connections changed from false to true")),
        "the reload was not applied:\n{}",
        pc.log()
    );
    // The spares forked before the reload are let go and replaced.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now: BTreeSet<i32> = pc.idle_workers().into_iter().collect();
            now.len() == 2 && now.is_disjoint(&before)
        }),
        "spares from before the reload still wait for clients: {before:?} → {:?}",
        pc.idle_workers()
    );
    let mut next = pc.connect();
    next.simple_query("select 1").expect("query");
    assert!(
        wait_until(Duration::from_secs(20), || pc
            .log()
            .contains("connection: postgres/postgres from 127.0.0.1")),
        "the next client was served with the old configuration:\n{}",
        pc.log()
    );
    // The worker busy across the reload serves its client to the end and
    // then no other.
    across
        .simple_query("select 2")
        .expect("the client connected across the reload");
    drop(across);
    assert!(
        wait_until(Duration::from_secs(20), || !children_of(pc.pid)
            .contains(&across_worker)),
        "the worker from before the reload was kept"
    );
}

#[test]
fn graceful_shutdown_lets_idle_spares_go_at_once() {
    let pg = Postgres::start();
    let mut pc = Pgcorral::start(&pg, "workers_min_spare = 3");
    let mut client = pc.connect();
    client.simple_query("select 1").expect("query");
    assert!(
        wait_until(Duration::from_secs(20), || pc.idle_workers().len() == 3),
        "three spares: {:?}",
        pc.idle_workers()
    );
    pc.signal(Signal::SIGTRAP);
    assert!(
        wait_until(Duration::from_secs(20), || pc.idle_workers().is_empty()
            && children_of(pc.pid).len() == 1),
        "idle spares outlived the start of a graceful shutdown: {:?}",
        children_of(pc.pid)
    );
    let v: i32 = client
        .query_one("select 5", &[])
        .expect("the connected client is served to the end")
        .get(0);
    assert_eq!(v, 5);
    drop(client);
    let status = pc
        .wait_exit(Duration::from_secs(30))
        .expect("pgcorral still running after its last client left");
    assert!(status.success(), "{status}");
    assert!(
        wait_until(Duration::from_secs(20), || pc.group_members().is_empty()),
        "processes outlived pgcorral: {:?}",
        pc.group_members()
    );
}

#[test]
fn worker_max_clients_one_forks_a_worker_per_client() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "pipeline = \"transaction\"\nworker_max_clients = 1");
    let mut pids = BTreeSet::new();
    for _ in 0..3 {
        let (stream, pid) = start_raw(&pc).expect("a client");
        terminate(stream);
        assert!(
            wait_until(Duration::from_secs(20), || !children_of(pc.pid)
                .contains(&pid)),
            "worker {pid} outlived its one client"
        );
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pc.idle_workers().is_empty(), "no spares are kept");
}

#[test]
fn a_worker_exits_after_worker_max_clients() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "pipeline = \"transaction\"\nworker_max_clients = 3\nworkers_min_spare = 0\n\
         workers_max_spare = 1",
    );
    let (stream, worker) = start_raw(&pc).expect("first client");
    terminate(stream);
    for i in 1..3 {
        wait_sole_idle(&pc, worker);
        let (stream, pid) = start_raw(&pc).expect("a client");
        assert_eq!(pid, worker, "client {i}");
        terminate(stream);
    }
    assert!(
        wait_until(Duration::from_secs(20), || !children_of(pc.pid)
            .contains(&worker)),
        "worker {worker} outlived its third client"
    );
    let (stream, pid) = start_raw(&pc).expect("a client after");
    assert_ne!(pid, worker);
    terminate(stream);
}

/// A worker keeps the pooled sockets it was given for later clients; one
/// whose connection was closed and whose slot got a new one is never used
/// again: the slot's generation tells them apart.
#[test]
fn a_reused_worker_never_uses_a_replaced_connection() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "pipeline = \"session\"\nworkers_min_spare = 0\nworkers_max_spare = 1\n\
         max_connections = 1",
    );
    let backend = |c: &mut postgres::Client| -> i32 {
        c.query_one("select pg_backend_pid()", &[])
            .expect("pg_backend_pid")
            .get(0)
    };
    let mut first = pc.connect();
    let old = backend(&mut first);
    let worker = pc.workers()[0];
    drop(first);
    wait_sole_idle(&pc, worker);
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_pgcorral-cli"))
            .arg("-s")
            .arg(&pc.socket_dir)
            .args(["-p", &pc.port.to_string(), "flush", "idle"]),
        Duration::from_secs(30),
    )
    .expect("pgcorral-cli flush idle");
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(20), || !pg.backend_exists(old)),
        "the flushed connection's backend is still there"
    );
    // The one slot gets a new connection, and the same worker serves.
    for _ in 0..2 {
        let mut next = pc.connect();
        assert_eq!(pc.workers(), [worker], "another worker served");
        let now = backend(&mut next);
        assert_ne!(now, old, "the closed connection was used");
        let v: i32 = next.query_one("select 3", &[]).expect("query").get(0);
        assert_eq!(v, 3);
        drop(next);
        wait_sole_idle(&pc, worker);
    }
}

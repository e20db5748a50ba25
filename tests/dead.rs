//! No dead pooled connection is handed out: a backend that ends while its
//! connection is idle in the pool (`pg_terminate_backend`, a PostgreSQL
//! restart) never fails the next client's query. The supervisor closes
//! such a connection as soon as its socket says so; a worker checks the
//! socket before use as well.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{output_within, pg_bin, wait_until, Pgcorral, Postgres};
use nix::sys::signal::Signal;
use pgcorral::segment::Segment;
use pgcorral::slot::SlotState;

const WAIT: Duration = Duration::from_secs(15);

fn config(pipeline: &str) -> String {
    format!("pipeline = \"{pipeline}\"\nlog_level = \"info\"")
}

fn segment(pc: &Pgcorral) -> Segment {
    Segment::attach_pid(pc.pid)
        .unwrap_or_else(|e| panic!("attach to pgcorral {}'s shared segment: {e:?}", pc.pid))
}

fn slot_table(seg: &Segment) -> String {
    seg.slots()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state() != SlotState::NotInit)
        .map(|(i, s)| {
            format!(
                "slot {i}: {:?} owner {} backend {}\n",
                s.state(),
                s.owner_pid(),
                s.backend_pid()
            )
        })
        .collect()
}

/// The state of the slot whose connection is backend `pid`, if any slot
/// still has it.
fn state_of(seg: &Segment, pid: i32) -> Option<SlotState> {
    seg.slots()
        .iter()
        .find(|s| s.backend_pid() == pid && s.state() != SlotState::NotInit)
        .map(|s| s.state())
}

fn backend_pid(client: &mut common::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .expect("select pg_backend_pid()")
        .get(0)
}

/// A client runs a query and leaves; returns the backend that served it,
/// once its connection is idle in the pool.
fn pooled_backend(pc: &Pgcorral, seg: &Segment) -> i32 {
    let mut client = pc.connect();
    let pid = backend_pid(&mut client);
    drop(client);
    assert!(
        wait_until(WAIT, || state_of(seg, pid) == Some(SlotState::Free)),
        "backend {pid} not pooled:\n{}",
        slot_table(seg)
    );
    pid
}

fn terminate(pg: &Postgres, pid: i32) {
    assert_eq!(
        pg.psql(&format!("select pg_terminate_backend({pid})")),
        "t",
        "terminate backend {pid}"
    );
    assert!(
        wait_until(WAIT, || !pg.backend_exists(pid)),
        "backend {pid} still in pg_stat_activity"
    );
}

/// The next client's first query after its pooled backend was terminated
/// succeeds, on another backend.
fn next_client_is_served(pc: &Pgcorral, dead: i32) {
    let mut client = pc.connect();
    let pid = client
        .query_one("select pg_backend_pid()", &[])
        .unwrap_or_else(|e| panic!("first query after backend {dead} died: {e:?}"))
        .get::<_, i32>(0);
    assert_ne!(pid, dead, "served by the terminated backend");
}

/// The supervisor alone (no client connected) closes an idle connection
/// whose backend was terminated, and the pool serves the next client.
fn supervisor_closes_terminated(pipeline: &str) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &config(pipeline));
    let seg = segment(&pc);
    let pid = pooled_backend(&pc, &seg);
    terminate(&pg, pid);
    assert!(
        wait_until(WAIT, || state_of(&seg, pid).is_none()),
        "{pipeline}: the slot of terminated backend {pid} was not emptied:\n{}",
        slot_table(&seg)
    );
    assert!(
        pc.log().contains("ended the connection; closing it"),
        "{pipeline}: no log line for the closed connection"
    );
    next_client_is_served(&pc, pid);
}

#[test]
fn session_pool_drops_a_terminated_idle_backend() {
    supervisor_closes_terminated("session");
}

#[test]
fn transaction_pool_drops_a_terminated_idle_backend() {
    supervisor_closes_terminated("transaction");
}

/// Sends SIGCONT to the supervisor when dropped, so that a failing test
/// does not leave it stopped.
struct Stopped<'a>(&'a Pgcorral);

impl<'a> Stopped<'a> {
    fn new(pc: &'a Pgcorral) -> Self {
        pc.signal(Signal::SIGSTOP);
        Stopped(pc)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(Signal::SIGCONT);
    }
}

/// The worker's own check, with the supervisor stopped so its watch cannot
/// act first: a transaction-mode client whose worker already runs finds
/// its pooled connection dead; the worker gives it up (REMOVE: only a
/// worker moves a slot there while the supervisor is stopped) and opens
/// another, and the client's query succeeds.
#[test]
fn worker_skips_a_dead_pooled_connection() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &config("transaction"));
    let seg = segment(&pc);
    let mut client = pc.connect();
    let pid = backend_pid(&mut client);
    assert!(
        wait_until(WAIT, || state_of(&seg, pid) == Some(SlotState::Free)),
        "backend {pid} not back in the pool between transactions:\n{}",
        slot_table(&seg)
    );

    let stopped = Stopped::new(&pc);
    terminate(&pg, pid);
    let (tx, rx) = mpsc::channel();
    let query = thread::spawn(move || {
        let got = client
            .query_one("select pg_backend_pid()", &[])
            .map(|r| r.get::<_, i32>(0));
        let _ = tx.send(got.map_err(|e| format!("{e:?}")));
        client
    });
    let removed = wait_until(WAIT, || state_of(&seg, pid) == Some(SlotState::Remove));
    // The new connection's socket goes to the supervisor: it must run
    // again for the query to finish.
    drop(stopped);
    assert!(
        removed,
        "the worker did not give up dead backend {pid}:\n{}",
        slot_table(&seg)
    );
    let got = rx
        .recv_timeout(WAIT)
        .expect("the query did not finish after the supervisor resumed");
    let new = got.unwrap_or_else(|e| panic!("query on a dead pooled connection: {e}"));
    assert_ne!(new, pid);
    let _client = query.join().expect("query thread");
    assert!(
        pc.log().contains(&format!("pooled backend {pid} is gone")),
        "the worker did not log the dead connection"
    );
}

/// `pg_ctl restart` ends every idle pooled connection; the next client is
/// served on a fresh one.
#[test]
fn pool_recovers_from_a_postgres_restart() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &config("session"));
    let seg = segment(&pc);
    let pid = pooled_backend(&pc, &seg);

    let mut cmd = Command::new(pg_bin("pg_ctl"));
    cmd.current_dir(&pg.dir)
        .arg("-D")
        .arg(&pg.data)
        .args(["-m", "fast", "-w", "-t", "60", "restart"])
        .arg("-l")
        .arg(&pg.log_path);
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .expect("look up user postgres")
            .expect("user postgres exists when tests run as root");
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let out = output_within(&mut cmd, Duration::from_secs(90)).expect("run pg_ctl restart");
    assert!(
        out.status.success(),
        "pg_ctl restart: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(WAIT, || state_of(&seg, pid).is_none()),
        "the slot of backend {pid} outlived the restart:\n{}",
        slot_table(&seg)
    );
    next_client_is_served(&pc, pid);
}

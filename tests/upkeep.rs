//! Pool upkeep by the supervisor and its helpers: prefill to `initial_size`
//! and `min_size`, `idle_timeout`, `max_connection_age` and background
//! validation, each seen from PostgreSQL's side (pg_stat_activity).

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Pgcorral, Postgres};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgcorral::segment::Segment;
use pgcorral::slot::SlotState;

const PREFILL_RULE: &str = r#"
[[limit]]
database = "postgres"
user = "postgres"
max_size = 5
"#;

/// Stops a backend (SIGSTOP) until dropped: a connection that is dead
/// without saying so, which only validation can tell. (One whose backend
/// ends announces it, and is closed without validation.)
struct Hung(i32);

impl Hung {
    fn new(pid: i32) -> Hung {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("stop the backend");
        Hung(pid)
    }
}

impl Drop for Hung {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

fn backend_pid(client: &mut common::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .expect("select pg_backend_pid()")
        .get(0)
}

/// Pids of PostgreSQL's client backends other than the asking one: with
/// only pgcorral connecting, the pool's connections.
/// Client backends other than the ones `psql` itself opens: the backend of
/// an earlier call may still be on its way out when the next one looks.
fn backends(pg: &Postgres) -> Vec<i32> {
    let mut pids: Vec<i32> = pg
        .psql(
            "select pid from pg_stat_activity \
             where backend_type = 'client backend' and pid <> pg_backend_pid() \
             and application_name <> 'psql'",
        )
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids
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

/// Waits until no slot is held by a worker: the last client's connection
/// is back in the pool (or gone).
fn wait_returned(pc: &Pgcorral) {
    let seg = segment(pc);
    assert!(
        wait_until(Duration::from_secs(30), || seg
            .slots()
            .iter()
            .all(|s| !matches!(s.state(), SlotState::InUse | SlotState::Init))),
        "a slot is still held 30 s after the client left:\n{}",
        slot_table(&seg)
    );
}

/// Background validation rounds finished so far, from the log: every
/// round ends with this line, after the round's other duties ran.
fn rounds(pc: &Pgcorral) -> usize {
    pc.log().matches("validation: ").count()
}

/// Asserts that the backend count stays `n` while the supervisor completes
/// `k` more upkeep rounds: counted in rounds, not seconds, so a slow
/// machine makes the check longer, never wrong.
fn stays(pc: &Pgcorral, pg: &Postgres, n: usize, k: usize, what: &str) {
    let target = rounds(pc) + k;
    let done = wait_until(Duration::from_secs(60), || {
        let now = backends(pg);
        assert_eq!(now.len(), n, "{what}: backends {now:?}");
        rounds(pc) >= target
    });
    assert!(done, "{what}: fewer than {k} upkeep rounds in 60 s");
}

#[test]
fn initial_size_is_opened_at_start() {
    let pg = Postgres::start();
    // Background validation only to have upkeep rounds to count.
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "validation = \"background\"\nbackground_interval = \"1s\"\n\
             {PREFILL_RULE}initial_size = 3\n"
        ),
    );
    assert!(
        wait_until(Duration::from_secs(30), || backends(&pg).len() == 3),
        "PostgreSQL shows {:?}, want 3 prefilled backends",
        backends(&pg)
    );
    // No more than asked for, and they stay (no idle_timeout).
    stays(&pc, &pg, 3, 2, "after prefill");
    let seg = segment(&pc);
    let free = seg
        .slots()
        .iter()
        .filter(|s| s.state() == SlotState::Free)
        .count();
    assert_eq!(free, 3, "prefilled slots are FREE:\n{}", slot_table(&seg));

    // A client is given one of them.
    let prefilled = backends(&pg);
    let mut client = pc.connect();
    let pid = backend_pid(&mut client);
    assert!(
        prefilled.contains(&pid),
        "client got backend {pid}, not one of the prefilled {prefilled:?}"
    );
    drop(client);
    wait_returned(&pc);
    assert_eq!(backends(&pg).len(), 3);
}

#[test]
fn idle_timeout_stops_at_min_size_and_prefill_restores_it() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "idle_timeout = \"2s\"\nvalidation = \"background\"\nbackground_interval = \"1s\"\n\
             {PREFILL_RULE}initial_size = 3\nmin_size = 2\n"
        ),
    );
    // initial_size first (the three are idle for at least idle_timeout
    // before any is closed, so this cannot miss them), then idle_timeout
    // takes the pool down to min_size and no further. Waiting for the 3
    // first keeps the wait for 2 from matching prefill half-way through.
    assert!(
        wait_until(Duration::from_secs(30), || backends(&pg).len() == 3),
        "backends {:?}: prefill did not open initial_size 3",
        backends(&pg)
    );
    assert!(
        wait_until(Duration::from_secs(30), || backends(&pg).len() == 2),
        "backends {:?}: idle_timeout did not bring the pool to min_size 2",
        backends(&pg)
    );
    // Rounds enough for idle_timeout (2 s) to find the two again.
    stays(&pc, &pg, 2, 4, "at min_size");

    // Kill them behind pgcorral's back, as a flush would end them: the
    // supervisor (or validation) notices, and prefill brings the pool back to min_size.
    let old = backends(&pg);
    pg.psql(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where backend_type = 'client backend' and pid <> pg_backend_pid()",
    );
    let back = wait_until(Duration::from_secs(30), || {
        let now = backends(&pg);
        now.len() == 2 && now.iter().all(|p| !old.contains(p))
    });
    assert!(
        back,
        "pool not back at min_size with new backends 30 s after {old:?} were terminated: {:?}\n{}",
        backends(&pg),
        slot_table(&segment(&pc))
    );
    let mut client = pc.connect();
    let pid = backend_pid(&mut client);
    assert!(!old.contains(&pid), "client got terminated backend {pid}");
}

#[test]
fn idle_timeout_closes_a_connection_its_client_left() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "idle_timeout = \"2s\"\n");
    let mut client = pc.connect();
    // Before the last use: the idle time the daemon measures starts later,
    // so a lower bound on our clock cannot fail on a slow machine.
    let last_use = Instant::now();
    let pid = backend_pid(&mut client);
    drop(client);
    wait_returned(&pc);
    assert!(
        wait_until(Duration::from_secs(30), || !pg.backend_exists(pid)),
        "backend {pid} still open {:?} after its client left (idle_timeout 2s)",
        last_use.elapsed()
    );
    assert!(
        last_use.elapsed() >= Duration::from_secs(2),
        "backend {pid} closed {:?} after its last use, before idle_timeout",
        last_use.elapsed()
    );
    assert!(
        pc.log()
            .contains(&format!("backend {pid} closed (idle_timeout)")),
        "backend {pid} was not closed by idle_timeout"
    );
    // The pool serves the next client with a new connection.
    let mut again = pc.connect();
    assert_ne!(backend_pid(&mut again), pid);
}

#[test]
fn max_connection_age_closes_idle_and_returned_connections() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "max_connection_age = \"3s\"\n");

    // Idle in the pool: closed for its age.
    let created = Instant::now();
    let mut client = pc.connect();
    let idle_pid = backend_pid(&mut client);
    drop(client);
    wait_returned(&pc);
    assert!(
        wait_until(Duration::from_secs(30), || !pg.backend_exists(idle_pid)),
        "idle backend {idle_pid} still open {:?} after its creation (max_connection_age 3s)",
        created.elapsed()
    );
    assert!(
        pc.log()
            .contains(&format!("backend {idle_pid} closed (max_connection_age)")),
        "backend {idle_pid} was not closed by max_connection_age"
    );

    // In use past its age: left alone while its client works, closed once
    // the client is gone.
    let created = Instant::now();
    let mut client = pc.connect();
    let busy_pid = backend_pid(&mut client);
    // Working on until well past the age (3 s): the time is the feature's
    // input here, not a bound on how fast anything happens.
    let mut queries = 0;
    wait_until(Duration::from_secs(60), || {
        client
            .simple_query("select 1")
            .expect("the session keeps working past max_connection_age");
        queries += 1;
        created.elapsed() >= Duration::from_secs(5)
    });
    assert!(queries > 1, "the session ran {queries} queries");
    assert_eq!(backend_pid(&mut client), busy_pid, "same backend all along");
    drop(client);
    let left = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || !pg.backend_exists(busy_pid)),
        "backend {busy_pid}, past its age, still open {:?} after its client left",
        left.elapsed()
    );
    let mut again = pc.connect();
    assert_ne!(backend_pid(&mut again), busy_pid);
}

#[test]
fn background_validation_removes_a_dead_connection() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "validation = \"background\"\nbackground_interval = \"1s\"\n\
         authentication_timeout = \"1s\"\n",
    );
    let mut client = pc.connect();
    let pid = backend_pid(&mut client);
    drop(client);
    wait_returned(&pc);
    // Validation of a live connection leaves it in the pool.
    assert!(
        wait_until(Duration::from_secs(30), || pc
            .log()
            .contains("validation: 1 idle connection(s) tested, 0 failed")),
        "no validation round tested the idle connection"
    );
    assert!(
        pg.backend_exists(pid),
        "validation closed a healthy connection"
    );
    let mut client = pc.connect();
    assert_eq!(
        backend_pid(&mut client),
        pid,
        "healthy connection not reused"
    );
    drop(client);
    wait_returned(&pc);

    let hung = Hung::new(pid);
    let seg = segment(&pc);
    assert!(
        wait_until(Duration::from_secs(30), || seg
            .slots()
            .iter()
            .all(|s| s.backend_pid() != pid || s.state() == SlotState::NotInit)),
        "the slot of terminated backend {pid} was not emptied:\n{}",
        slot_table(&seg)
    );
    assert!(
        pc.log().contains("failed validation"),
        "no validation failure in the log"
    );
    drop(hung);
    let mut client = pc.connect();
    let new_pid = backend_pid(&mut client);
    assert_ne!(new_pid, pid);
    let one: i32 = client
        .query_one("select 1", &[])
        .expect("the next client gets a working connection")
        .get(0);
    assert_eq!(one, 1);
}

/// With foreground validation a worker tests a pooled connection before
/// using it: a backend that hangs while idle is thrown away and the client
/// never sees it, in both session-bound and transaction pooling.
#[test]
fn foreground_validation_hides_a_dead_pooled_connection() {
    for pipeline in ["performance", "transaction"] {
        let pg = Postgres::start();
        let pc = Pgcorral::start(
            &pg,
            &format!(
                "validation = \"foreground\"\npipeline = \"{pipeline}\"\nmax_connections = 1\n\
                 authentication_timeout = \"1s\"\n"
            ),
        );
        let mut client = pc.connect();
        let pid = backend_pid(&mut client);
        drop(client);
        wait_returned(&pc);
        let _hung = Hung::new(pid);
        let mut client = pc.connect();
        let one: i32 = client
            .query_one("select 1", &[])
            .unwrap_or_else(|e| panic!("{pipeline}: the client saw the dead connection: {e}"))
            .get(0);
        assert_eq!(one, 1);
        assert_ne!(backend_pid(&mut client), pid, "{pipeline}");
        assert!(
            pc.log().contains("failed validation"),
            "{pipeline}: no validation failure in the log"
        );
    }
}

/// Every duty at once, with short periods, while pgbench opens a client per
/// transaction: upkeep takes only idle connections, so no client ever sees
/// an error.
#[test]
fn upkeep_under_load_fails_no_transaction() {
    let pg = Postgres::start();
    let (ok, out) = common::pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i directly against PostgreSQL failed:\n{out}");
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "max_connections = 12\nlog_level = \"info\"\nidle_timeout = \"1s\"\n\
             max_connection_age = \"2s\"\nvalidation = \"background\"\n\
             background_interval = \"1s\"\n\
             {PREFILL_RULE}initial_size = 4\nmin_size = 3\n"
        ),
    );
    let (ok, out) = common::pgbench(pc.port, &["-S", "-C", "-c", "6", "-j", "2", "-T", "8"]);
    assert!(ok, "pgbench through pgcorral exited with an error:\n{out}");
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("error") || l.contains("FATAL"))
        .collect();
    assert!(
        errors.is_empty(),
        "pgbench reported errors:\n{}",
        errors.join("\n")
    );
    let log = pc.log();
    assert!(
        !log.contains("failed validation") && !log.contains("panicked"),
        "upkeep misbehaved under load:\n{}",
        common::tail(&pc.log_path, 50)
    );
    // Once the load is gone, the pool settles at min_size.
    assert!(
        wait_until(Duration::from_secs(8), || backends(&pg).len() == 3),
        "backends {:?} after the load, want min_size 3",
        backends(&pg)
    );
}

/// disconnect_client ends a client that sits idle outside a transaction,
/// and its connection goes back to the pool; a client inside a transaction
/// or running a query is left alone.
#[test]
fn disconnect_client_ends_idle_clients_only() {
    for pipeline in ["performance", "transaction"] {
        let pg = Postgres::start();
        let pc = Pgcorral::start(
            &pg,
            &format!(
                "disconnect_client = \"1s\"\npipeline = \"{pipeline}\"\nmax_connections = 2\n"
            ),
        );
        let mut idle = pc.connect();
        let pid = backend_pid(&mut idle);
        let mut busy = pc.connect();
        busy.batch_execute("BEGIN").expect("begin");
        let long = busy.simple_query("select pg_sleep(2)");
        assert!(
            long.is_ok(),
            "{pipeline}: a running query was cut: {long:?}"
        );
        assert!(
            wait_until(Duration::from_secs(30), || pc
                .log()
                .contains("idle longer than disconnect_client; disconnected")),
            "{pipeline}: the idle client was never disconnected"
        );
        // `busy` sat in an open transaction: still alive.
        busy.batch_execute("COMMIT")
            .expect("the client in a transaction was kept");
        let err = idle
            .simple_query("select 1")
            .expect_err("the idle client should have been disconnected");
        let code = err.as_db_error().map(|d| d.code().code().to_string());
        assert!(
            code.as_deref() == Some("57P05") || err.is_closed(),
            "{pipeline}: unexpected error {err:?}"
        );
        drop(busy);
        wait_returned(&pc);
        if pipeline == "performance" {
            // The idle client's connection went back clean and is reused.
            let mut next = pc.connect();
            let got = backend_pid(&mut next);
            assert!(
                pg.backend_exists(pid),
                "{pipeline}: the idle client's backend was closed"
            );
            let _ = got;
        }
    }
}

//! pgcorral-cli against a running daemon and a real PostgreSQL: every
//! command in text and JSON, flushing, disabling databases, shutdown and
//! its cancellation, reload, and a management socket that survives garbage.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::{output_within, wait_until, within, Pgcorral, Postgres};
use nix::sys::signal::Signal;

fn cli_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgcorral-cli")
}

/// Runs pgcorral-cli against `pc`; returns (exit status, stdout, stderr).
fn cli(pc: &Pgcorral, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(cli_bin());
    cmd.arg("-s")
        .arg(&pc.socket_dir)
        .arg("-p")
        .arg(pc.port.to_string())
        .args(args);
    run(&mut cmd)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = output_within(cmd, Duration::from_secs(60)).expect("run pgcorral-cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command that must succeed; its text output.
fn ok(pc: &Pgcorral, args: &[&str]) -> String {
    let (status, out, err) = cli(pc, args);
    assert_eq!(status, 0, "pgcorral-cli {args:?} failed: {out}{err}");
    out
}

/// A command that must succeed in JSON; its output, checked for the
/// envelope.
fn json(pc: &Pgcorral, args: &[&str]) -> String {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = ok(pc, &all);
    assert!(
        out.starts_with("{\"command\":\"") && out.contains("\"ok\":true,\"result\":"),
        "{args:?}: {out}"
    );
    assert!(out.ends_with("}\n"), "{args:?}: one JSON document: {out}");
    assert_eq!(out.lines().count(), 1, "{args:?}: one line: {out}");
    out
}

/// A command that must fail with exit status `status`; (stdout, stderr).
fn fails(pc: &Pgcorral, args: &[&str], status: i32) -> (String, String) {
    let (got, out, err) = cli(pc, args);
    assert_eq!(got, status, "pgcorral-cli {args:?}: {out}{err}");
    assert_eq!(err.lines().count(), 1, "one-line reason: {err:?}");
    (out, err)
}

/// Waits until `status` (JSON) contains `needle`.
fn wait_status(pc: &Pgcorral, needle: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        json(pc, &["status", "details"]).contains(needle)
    })
}

fn backend_pid(client: &mut common::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .expect("select pg_backend_pid()")
        .get(0)
}

/// A client that disconnected, leaving its server connection FREE in the
/// pool; returns that connection's backend pid. Call it with no other
/// idle connection in the pool.
fn idle_backend(pc: &Pgcorral) -> i32 {
    let mut c = pc.connect();
    let pid = backend_pid(&mut c);
    drop(c);
    assert!(
        wait_status(pc, "\"FREE\":1"),
        "the connection went back FREE"
    );
    pid
}

#[test]
fn every_command_answers_in_text_and_json() {
    let pg = Postgres::start();
    let mut pc = Pgcorral::start(
        &pg,
        &format!(
            "log_level = \"info\"\n[server.standby]\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        ),
    );

    let text = ok(&pc, &["ping"]);
    assert!(
        text.contains(&format!("pgcorral is running (pid {})", pc.pid)),
        "{text}"
    );
    let j = json(&pc, &["ping"]);
    assert!(j.contains(&format!("\"pid\":{}", pc.pid)), "{j}");
    // The configuration file says `port = 0`, which names no socket: the
    // cli asks for the port rather than looking for `.s.pgcorral.0`.
    let (status, out, err) = run(Command::new(cli_bin())
        .arg("-c")
        .arg(&pc.config_path)
        .arg("ping"));
    assert_eq!(status, 2, "{out}{err}");
    assert!(err.contains("port = 0") && err.contains("-p PORT"), "{err}");

    let mut client = pc.connect();
    let text = ok(&pc, &["status"]);
    for needle in [
        "Status:          running",
        "Pipeline:        performance",
        "Primary server:  primary",
        "Clients:         1",
        "Connections:     1 of 10 (IN_USE 1)",
        "Disabled:        none",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    let j = json(&pc, &["status"]);
    for needle in [
        "\"state\":\"running\"",
        "\"pipeline\":\"performance\"",
        "\"server\":\"primary\"",
        "\"clients\":1",
        "\"max_connections\":10",
        "\"connections\":{\"total\":1,\"NOTINIT\":9,\"INIT\":0,\"FREE\":0,\"IN_USE\":1,",
        "\"disabled\":{\"all\":false,\"databases\":[],\"except\":[]}",
    ] {
        assert!(j.contains(needle), "{needle:?} in\n{j}");
    }
    assert!(!j.contains("\"slots\""), "{j}");

    // status details: every slot, with state, database, user, server, age.
    let backend = backend_pid(&mut client);
    let text = ok(&pc, &["status", "details"]);
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Slot"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 10, "one row per slot:\n{text}");
    let busy: Vec<&str> = rows
        .iter()
        .filter(|r| r.contains("IN_USE"))
        .copied()
        .collect();
    assert_eq!(busy.len(), 1, "{text}");
    for needle in ["postgres", "primary", &backend.to_string()] {
        assert!(busy[0].contains(needle), "{needle:?} in {:?}", busy[0]);
    }
    assert!(
        busy[0].trim_end().ends_with('s'),
        "idle seconds: {:?}",
        busy[0]
    );
    let j = json(&pc, &["status", "details"]);
    let row = "\"state\":\"IN_USE\",\"database\":\"postgres\",\"user\":\"postgres\",\"server\":\"primary\",\"owner_pid\":";
    assert!(j.contains(row), "{row} in\n{j}");
    assert!(
        j.contains(&format!("\"backend_pid\":{backend},\"age_seconds\":")),
        "{j}"
    );
    assert_eq!(j.matches("{\"slot\":").count(), 10, "{j}");
    assert!(j.contains("\"state\":\"NOTINIT\",\"database\":null"), "{j}");

    // flush, in each mode, text and JSON.
    let text = ok(&pc, &["flush", "idle"]);
    assert!(
        text.starts_with("flush idle: 0 idle connection(s) closed"),
        "{text}"
    );
    let j = json(&pc, &["flush", "idle", "postgres"]);
    assert!(
        j.contains("\"result\":{\"mode\":\"idle\",\"database\":\"postgres\",\"closed\":0,\"marked\":0,\"clients_ended\":0}"),
        "{j}"
    );
    let j = json(&pc, &["flush", "gracefully", "otherdb"]);
    assert!(j.contains("\"marked\":0"), "another database: {j}");
    let text = ok(&pc, &["flush"]);
    assert!(
        text.contains("1 in use will be closed when given back"),
        "{text}"
    );
    let v: i32 = client.query_one("select 41 + 1", &[]).unwrap().get(0);
    assert_eq!(v, 42, "a graceful flush lets the client go on");
    drop(client);
    assert!(
        wait_until(Duration::from_secs(10), || !pg.backend_exists(backend)),
        "the flushed connection is closed when given back"
    );
    let j = json(&pc, &["flush", "all"]);
    assert!(j.contains("\"mode\":\"all\",\"database\":null"), "{j}");

    // enable / disable.
    let text = ok(&pc, &["disable", "appdb"]);
    assert_eq!(text, "database \"appdb\" disabled\n");
    let j = json(&pc, &["disable", "otherdb"]);
    assert!(
        j.contains(
            "\"disabled\":{\"all\":false,\"databases\":[\"appdb\",\"otherdb\"],\"except\":[]}"
        ),
        "{j}"
    );
    assert!(ok(&pc, &["status"]).contains("Disabled:        appdb, otherdb"));
    let j = json(&pc, &["enable", "otherdb"]);
    assert!(j.contains("\"databases\":[\"appdb\"]"), "{j}");
    assert_eq!(ok(&pc, &["enable"]), "all databases enabled\n");
    let j = json(&pc, &["disable"]);
    assert!(j.contains("\"all\":true"), "{j}");
    let j = json(&pc, &["enable"]);
    assert!(
        j.contains("\"disabled\":{\"all\":false,\"databases\":[]"),
        "{j}"
    );

    // conf get / set / ls.
    assert_eq!(ok(&pc, &["conf", "get", "max_connections"]), "10\n");
    let j = json(&pc, &["conf", "get", "blocking_timeout"]);
    assert!(
        j.contains(
            "\"result\":{\"key\":\"blocking_timeout\",\"value\":\"5s\",\"reloadable\":true}"
        ),
        "{j}"
    );
    let text = ok(&pc, &["conf", "set", "blocking_timeout", "7s"]);
    assert_eq!(text, "blocking_timeout = 7s (was 5s)\n");
    let j = json(&pc, &["conf", "set", "idle_timeout", "600"]);
    assert!(j.contains("\"value\":\"10m\""), "{j}");
    assert_eq!(ok(&pc, &["conf", "get", "idle_timeout"]), "10m\n");
    let (_, err) = fails(&pc, &["conf", "set", "port", "1"], 1);
    assert!(
        err.contains("port cannot change while pgcorral runs"),
        "{err}"
    );
    let (_, err) = fails(&pc, &["conf", "get", "nonsense"], 1);
    assert!(err.contains("unknown configuration key"), "{err}");
    let (out, _) = fails(
        &pc,
        &["--format", "json", "conf", "set", "log_level", "loud"],
        1,
    );
    assert!(
        out.starts_with("{\"command\":\"conf set\",\"ok\":false,\"error\":\""),
        "{out}"
    );
    let text = ok(&pc, &["conf", "ls"]);
    assert!(text.contains("log_level"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("port ") && l.ends_with("(restart)")));
    assert!(text
        .lines()
        .any(|l| l.starts_with("idle_timeout ") && l.ends_with("(reloadable)")));
    let j = json(&pc, &["conf", "ls"]);
    assert!(
        j.contains("{\"key\":\"port\",\"value\":\"") && j.contains("\"server.standby.port\""),
        "{j}"
    );

    // conf reload: the file still says 5s and 0, and takes over again.
    let text = ok(&pc, &["conf", "reload"]);
    assert!(
        text.contains("2 change(s) applied, 0 need a restart"),
        "{text}"
    );
    let j = json(&pc, &["conf", "reload"]);
    assert!(j.contains("\"applied\":[],\"needs_restart\":[]"), "{j}");
    assert_eq!(ok(&pc, &["conf", "get", "blocking_timeout"]), "5s\n");

    // switch-to and clear server.
    let text = ok(&pc, &["switch-to", "standby"]);
    assert!(
        text.starts_with("primary server is now \"standby\" (was \"primary\")"),
        "{text}"
    );
    let j = json(&pc, &["status"]);
    assert!(j.contains("\"server\":\"standby\""), "{j}");
    assert!(
        j.contains("{\"name\":\"primary\",\"host\":\"127.0.0.1\","),
        "{j}"
    );
    assert!(j.contains("\"primary\":false,\"state\":\"failed\""), "{j}");
    // New clients go to the new primary (the same PostgreSQL here).
    let mut c = pc.connect();
    c.simple_query("select 1")
        .expect("a client after switch-to");
    drop(c);
    let j = json(&pc, &["switch-to", "primary"]);
    assert!(
        j.contains("\"server\":\"primary\",\"previous\":\"standby\""),
        "{j}"
    );
    assert_eq!(
        ok(&pc, &["clear", "server", "standby"]),
        "server \"standby\" cleared\n"
    );
    let j = json(&pc, &["clear", "server", "primary"]);
    assert!(
        j.contains("\"server\":\"primary\",\"was_failed\":false"),
        "{j}"
    );
    assert!(!json(&pc, &["status"]).contains("failed"));
    fails(&pc, &["switch-to", "nosuch"], 1);
    fails(&pc, &["clear", "server", "nosuch"], 1);

    // clear prometheus: no metrics yet, said clearly.
    let (_, err) = fails(&pc, &["clear", "prometheus"], 1);
    assert!(err.contains("metrics are not available"), "{err}");
    let (out, err) = fails(&pc, &["--format", "json", "clear", "prometheus"], 1);
    assert_eq!(
        out,
        "{\"command\":\"clear prometheus\",\"ok\":false,\"error\":\"metrics are not available in this version\"}\n"
    );
    assert!(err.contains("metrics are not available"), "{err}");

    // Usage errors and a daemon that is not there.
    let (status, _, _) = cli(&pc, &["flush", "idle", "a", "b"]);
    assert_eq!(status, 2, "a usage error");
    let (status, _, err) =
        run(Command::new(cli_bin()).args(["-s", "/nonexistent-pgcorral-dir", "-p", "1", "ping"]));
    assert_eq!(status, 3, "{err}");
    assert!(err.contains("pgcorral is not running"), "{err}");
    let (status, out, _) = run(Command::new(cli_bin()).args([
        "-s",
        "/nonexistent-pgcorral-dir",
        "--format",
        "json",
        "status",
    ]));
    assert_eq!(status, 3);
    assert!(
        out.starts_with("{\"command\":\"status\",\"ok\":false,\"error\":\"pgcorral is not running")
    );

    // shutdown: cancel without a graceful shutdown is refused; immediate
    // ends the daemon like SIGTERM.
    let (_, err) = fails(&pc, &["shutdown", "cancel"], 1);
    assert!(err.contains("no graceful shutdown is in progress"), "{err}");
    let j = json(&pc, &["shutdown", "immediate"]);
    assert!(j.contains("\"mode\":\"immediate\""), "{j}");
    let status = pc
        .wait_exit(Duration::from_secs(10))
        .expect("pgcorral exits after shutdown immediate");
    assert!(status.success(), "{status}");
    fails(&pc, &["ping"], 3);
}

#[test]
fn flush_idle_closes_only_free_connections() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let mut busy = pc.connect();
    let busy_backend = backend_pid(&mut busy);
    let idle = idle_backend(&pc);
    assert!(pg.backend_exists(idle));

    let text = ok(&pc, &["flush", "idle"]);
    assert!(
        text.starts_with("flush idle: 1 idle connection(s) closed"),
        "{text}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || !pg.backend_exists(idle)),
        "the FREE connection's backend is gone"
    );
    assert!(pg.backend_exists(busy_backend), "the IN_USE one stays");
    let v: i32 = busy.query_one("select 7", &[]).unwrap().get(0);
    assert_eq!(v, 7);
    let j = json(&pc, &["status"]);
    assert!(j.contains("\"FREE\":0,\"IN_USE\":1"), "{j}");
}

#[test]
fn flush_gracefully_lets_clients_finish_then_closes() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let mut busy = pc.connect();
    let busy_backend = backend_pid(&mut busy);
    let idle = idle_backend(&pc);

    let j = json(&pc, &["flush", "gracefully"]);
    assert!(j.contains("\"closed\":1,\"marked\":1"), "{j}");
    assert!(
        wait_until(Duration::from_secs(30), || !pg.backend_exists(idle)),
        "the idle connection is closed at once"
    );
    // The client in the middle of its session goes on undisturbed.
    let mut tx = busy.transaction().expect("begin");
    tx.batch_execute("create temp table t (v int); insert into t values (1)")
        .expect("statements after flush gracefully");
    tx.commit().expect("commit");
    assert!(pg.backend_exists(busy_backend));
    let j = json(&pc, &["status", "details"]);
    assert!(j.contains("\"close_on_release\":true"), "{j}");
    drop(busy);
    assert!(
        wait_until(Duration::from_secs(10), || !pg.backend_exists(busy_backend)),
        "closed once its client gave it back"
    );
    // New clients get new connections.
    let mut c = pc.connect();
    assert_ne!(backend_pid(&mut c), busy_backend);
}

#[test]
fn flush_all_ends_clients_and_serves_new_ones() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let mut a = pc.connect();
    let mut b = pc.connect();
    let (pa, pb) = (backend_pid(&mut a), backend_pid(&mut b));
    let idle = idle_backend(&pc);

    let j = json(&pc, &["flush", "all"]);
    assert!(
        j.contains("\"closed\":1,\"marked\":2,\"clients_ended\":2"),
        "{j}"
    );
    // Its worker sends FATAL 57P01 and hangs up; depending on timing the
    // driver reports the one or the other.
    let err = a
        .simple_query("select 1")
        .expect_err("a client of a flushed connection gets an error");
    let e = err.to_string();
    assert!(
        err.code().map(|c| c.code()) == Some("57P01") || e.contains("closed"),
        "{e}"
    );
    assert!(b.simple_query("select 1").is_err());
    assert!(
        wait_until(Duration::from_secs(10), || [pa, pb, idle]
            .iter()
            .all(|p| !pg.backend_exists(*p))),
        "every backend is closed"
    );
    // Served right after.
    let mut c = pc.connect();
    let v: i32 = c.query_one("select 3", &[]).unwrap().get(0);
    assert_eq!(v, 3);
    assert!(wait_status(&pc, "\"IN_USE\":1"), "only the new client");
}

/// Needs the worker's start-up check (`management::disabled::refuse`).
#[test]
fn disable_refuses_new_clients_until_enable() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    pg.psql("create database appdb");
    let mut before = pc.connect();

    ok(&pc, &["disable", "appdb"]);
    let mut other = pc.config();
    other.dbname("appdb");
    let Err(err) = other.connect(common::NoTls) else {
        panic!("a new client of a disabled database was served");
    };
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("\"appdb\""), "{db:?}");
    // Other databases, and clients already connected, are not affected.
    before.simple_query("select 1").expect("connected client");
    pc.connect()
        .simple_query("select 1")
        .expect("other database");
    assert!(pc
        .log()
        .contains("client for disabled database \"appdb\" refused"));

    ok(&pc, &["enable", "appdb"]);
    let mut c = other.connect(common::NoTls).expect("enabled again");
    c.simple_query("select 1").unwrap();

    // disable without a name: every database.
    ok(&pc, &["disable"]);
    assert!(pc.try_connect().is_err());
    ok(&pc, &["enable", "postgres"]);
    pc.connect()
        .simple_query("select 1")
        .expect("the exception");
    assert!(other.connect(common::NoTls).is_err());
    ok(&pc, &["enable"]);
    other.connect(common::NoTls).expect("all enabled");
}

/// Would a new client be turned away right now? Bounded, as a hang is a
/// failure too.
fn refuses(pc: &Pgcorral) -> bool {
    let config = pc.config();
    within(
        Duration::from_secs(15),
        "new client during shutdown",
        move || config.connect(common::NoTls).is_err(),
    )
}

#[test]
fn shutdown_gracefully_then_cancel() {
    let pg = Postgres::start();
    let mut pc = Pgcorral::start(&pg, "");
    let mut client = pc.connect();

    let text = ok(&pc, &["shutdown", "gracefully"]);
    assert!(text.contains("graceful shutdown started"), "{text}");
    assert!(
        wait_until(Duration::from_secs(30), || refuses(&pc)),
        "new clients are refused, as after SIGTRAP"
    );
    assert!(!pc.unix_socket().exists());
    assert!(json(&pc, &["status"]).contains("\"state\":\"graceful_shutdown\""));
    let v: i32 = client.query_one("select 5", &[]).unwrap().get(0);
    assert_eq!(v, 5, "the connected client goes on");
    let j = json(&pc, &["shutdown"]);
    assert!(j.contains("\"already\":true"), "{j}");

    let text = ok(&pc, &["shutdown", "cancel"]);
    assert!(text.contains("cancelled"), "{text}");
    assert!(
        wait_until(Duration::from_secs(30), || pc.try_connect().is_ok()),
        "clients are accepted again"
    );
    pc.connect_unix().simple_query("select 1").unwrap();
    assert!(json(&pc, &["status"]).contains("\"state\":\"running\""));
    drop(client);
    assert_eq!(
        pc.wait_exit(Duration::from_secs(2)),
        None,
        "no longer shutting down when the last client leaves"
    );

    // Without clients, a graceful shutdown ends at once.
    let j = json(&pc, &["shutdown", "gracefully"]);
    assert!(j.contains("\"mode\":\"gracefully\""), "{j}");
    let status = pc
        .wait_exit(Duration::from_secs(10))
        .expect("pgcorral exits once no client is left");
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_applies_reloadable_keys_and_names_the_others() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "log_level = \"info\"");
    pc.connect().simple_query("select 1").unwrap();
    assert!(!pc.log().contains(" DEBUG "), "info level at start");

    let original = std::fs::read_to_string(&pc.config_path).unwrap();
    let new_port = common::free_port();
    let changed = original
        .replace("log_level = \"info\"", "log_level = \"debug\"")
        .replace("port = 0\n", &format!("port = {new_port}\n"));
    assert_ne!(changed, original);
    std::fs::write(&pc.config_path, &changed).unwrap();
    pc.signal(Signal::SIGHUP);
    // The configured value is kept: 0, which the daemon resolved to pc.port.
    let restart = "port needs a restart; keeping 0";
    assert!(
        wait_until(Duration::from_secs(30), || pc.log().contains(restart)),
        "the log names port: {}",
        pc.log()
    );
    assert!(pc.log().contains("log_level changed from info to debug"));
    // Debug lines appear, from the supervisor and from new workers, and
    // the old port keeps serving.
    pc.connect().simple_query("select 1").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || pc.log().contains(" DEBUG ")),
        "debug lines after the reload"
    );
    // Not `tcp_listening(new_port)`: a parallel test may bind that port.
    assert!(!pc
        .log()
        .contains(&format!("listening on 127.0.0.1:{new_port}")));
    assert_eq!(ok(&pc, &["conf", "get", "port"]), "0\n");
    assert_eq!(ok(&pc, &["conf", "get", "log_level"]), "debug\n");

    // A broken file changes nothing.
    std::fs::write(&pc.config_path, "[pgcorral]\nlog_level = \"loud\"\n").unwrap();
    let (_, err) = fails(&pc, &["conf", "reload"], 1);
    assert!(err.contains("configuration not reloaded"), "{err}");
    pc.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(30), || pc
        .log()
        .matches("configuration not reloaded")
        .count()
        >= 2));
    assert_eq!(ok(&pc, &["conf", "get", "log_level"]), "debug\n");
    pc.connect().simple_query("select 1").unwrap();
}

/// A tiny deterministic generator, so that a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn header(version: u8, id: u8, slot: i32, len: u32) -> Vec<u8> {
    let mut h = vec![version, id];
    h.extend_from_slice(&slot.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[test]
fn malformed_management_messages_leave_the_supervisor_serving() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let path = pc.socket_dir.join(format!(".s.pgcorral.{}", pc.port));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // Connections left open with half a message, to show they block nothing.
    let mut parked = Vec::new();
    for i in 0..200u32 {
        let msg: Vec<u8> = match i % 8 {
            // Random bytes.
            0 => {
                let n = (rng.next() % 300) as usize + 1;
                rng.bytes(n)
            }
            // Unknown ids.
            1 => header(1, 8 + (rng.next() % 200) as u8, 0, 0),
            // Wrong versions.
            2 => header((rng.next() % 255) as u8 + 2, 6, 0, 0),
            // Lengths beyond the cap.
            3 => header(1, 6, 0, 65 * 1024 + (rng.next() % 1_000_000) as u32),
            // A length longer than what follows; then the peer hangs up
            // (odd) or stays (even, parked).
            4 => {
                let mut m = header(1, 6, 0, 1000);
                m.extend_from_slice(&rng.bytes(10));
                m
            }
            // A well-framed command with a garbage payload.
            5 => {
                let n = (rng.next() % 64) as usize;
                let mut m = header(1, 6, 0, n as u32);
                m.extend_from_slice(&rng.bytes(n));
                m
            }
            // Requests no administrator may make: a transfer without a
            // socket, a socket that is not theirs.
            6 => {
                let mut m = header(1, 1, (rng.next() % 20) as i32, 8);
                m.extend_from_slice(&[0; 8]);
                m
            }
            _ => header(1, 3, (rng.next() % 1000) as i32 - 500, 0),
        };
        let mut s = UnixStream::connect(&path).expect("connect to the management socket");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&msg);
        if i % 8 == 4 {
            if i % 16 == 4 {
                parked.push(s);
            }
            continue;
        }
        // Whatever the answer (an Error message, or a hang-up), it comes
        // without delay, or not at all; the supervisor never waits on us.
        let mut answer = [0u8; 256];
        let _ = s.read(&mut answer);
    }
    // Still serving: the management socket, and clients.
    let text = ok(&pc, &["ping"]);
    assert!(text.contains(&format!("(pid {})", pc.pid)), "{text}");
    let mut c = pc.connect();
    let v: i32 = c.query_one("select 9", &[]).unwrap().get(0);
    assert_eq!(v, 9);
    assert!(pc.log().contains("malformed management message"));
    drop(parked);
    ok(&pc, &["status"]);

    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Garbage in a well-formed frame: an Error answer, connection kept.
    let mut m = header(1, 6, 0, 3);
    m.extend_from_slice(&[9, 9, 9]);
    s.write_all(&m).unwrap();
    let mut head = [0u8; 10];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[1], 5, "Error id");
    let len = u32::from_be_bytes([head[6], head[7], head[8], head[9]]) as usize;
    let mut reason = vec![0u8; len];
    s.read_exact(&mut reason).unwrap();
    assert!(String::from_utf8_lossy(&reason).contains("malformed command"));
    // Then a good command on the same connection: `ping` in JSON.
    let payload = [1u8, b'j', 1, 0, 4, b'p', b'i', b'n', b'g'];
    let mut m = header(1, 6, 0, payload.len() as u32);
    m.extend_from_slice(&payload);
    s.write_all(&m).unwrap();
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[1], 7, "Reply id");
    assert_eq!(&head[2..6], &[0, 0, 0, 0], "last piece");
    let len = u32::from_be_bytes([head[6], head[7], head[8], head[9]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    assert_eq!(&body[..2], &[1, 0], "version 1, success");
    let text = String::from_utf8_lossy(&body[2..]);
    assert!(
        text.starts_with("{\"command\":\"ping\",\"ok\":true"),
        "{text}"
    );
}

/// What the remote management test relies on to pick its port without a
/// race: a listener that sets SO_REUSEADDR (as pgcorral's and std's do)
/// binds the reserved port, a socket without it cannot.
#[test]
fn a_reserved_port_is_held_for_a_listener() {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let (_reservation, port) = common::reserved_port();
    let plain = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    assert!(bind(plain.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).is_err());
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the reserved port");
    assert_eq!(listener.local_addr().unwrap().port(), port);
}

/// Remote management: SCRAM against the admins file, then the same
/// commands as the local socket.
#[test]
fn remote_management_needs_the_admin_password() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("master.key");
    let admins = dir.path().join("admins.conf");
    for args in [
        vec!["-k", key.to_str().expect("path"), "master-key"],
        vec![
            "-k",
            key.to_str().expect("path"),
            "-f",
            admins.to_str().expect("path"),
            "user",
            "add",
            "-U",
            "admin",
            "-P",
            "s3cret",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcorral-admin"))
            .args(&args)
            .output()
            .expect("pgcorral-admin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Held until pgcorral listens on it, so no parallel test draws it.
    let (_reservation, port) = common::reserved_port();
    let pc = Pgcorral::start(
        &pg,
        &format!(
            "management = {port}\nadmins_file = \"{}\"\nmaster_key_file = \"{}\"",
            admins.display(),
            key.display()
        ),
    );
    let remote = |password: &str, user: &str, command: &[&str]| {
        let out = std::process::Command::new(cli_bin())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                user,
                "-F",
                "json",
            ])
            .args(command)
            .env("PGCORRAL_PASSWORD", password)
            .output()
            .expect("pgcorral-cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = remote("s3cret", "admin", &["status"]);
    assert_eq!(code, 0, "right password refused: {err}");
    assert!(
        out.contains("\"ok\":true") && out.contains(&format!("\"pid\":{}", pc.pid)),
        "{out}"
    );
    let (code, _, err) = remote("wrong", "admin", &["ping"]);
    assert_ne!(code, 0, "a wrong password was accepted");
    assert!(err.contains("password authentication failed"), "{err}");
    let (code, _, err_unknown) = remote("s3cret", "nobody", &["ping"]);
    assert_ne!(code, 0, "an unknown administrator was accepted");
    assert_eq!(
        err.replace("admin", "X"),
        err_unknown.replace("nobody", "X"),
        "an unknown administrator is told something else than a wrong password"
    );
}

/// Prefill: `initial_size = 3` opens three connections at start; after
/// `flush idle` closes them, the pool comes back to `min_size`.
#[test]
fn flush_idle_then_the_pool_returns_to_min_size() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(
        &pg,
        "[[limit]]\ndatabase = \"postgres\"\nuser = \"postgres\"\nmax_size = 5\ninitial_size = 3\nmin_size = 2\n",
    );
    let count = || pg.backend_count(None);
    assert!(
        common::wait_until(Duration::from_secs(30), || count() == 3),
        "prefill: {} backends",
        count()
    );
    ok(&pc, &["flush", "idle"]);
    let mut seen = Vec::new();
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            let n = count();
            seen.push(n);
            n == 2 && seen.iter().any(|&m| m < 3)
        }),
        "after flush idle the pool did not return to min_size 2: {seen:?}"
    );
}

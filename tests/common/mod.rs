//! Test harness: a throwaway PostgreSQL, a pgcorral in front of it, and the
//! helpers every integration test needs to look at both from outside.
//!
//! Each test starts its own PostgreSQL (on a free port, retried if taken)
//! and its own pgcorral (on a port the kernel picks for it) in their own
//! temporary directories, so tests can run in parallel. Every
//! process the harness starts is owned by a value whose `Drop` ends it, so a
//! panicking test leaves nothing behind.

// Each test file is its own crate and uses a different part of the harness.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{chown, Gid, Pid, Uid, User};
use tempfile::TempDir;

pub use postgres::{Client, NoTls};

/// Wall-clock limit after which a pgcorral still running is killed, so that a
/// daemon that hangs a client fails the test instead of eating CI's budget.
const WATCHDOG: Duration = Duration::from_secs(180);

/// How long the harness gives any one psql or pg_ctl run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Polls `cond` every 20 ms until it holds (true) or `timeout` has passed
/// (false). Tests assert on the result with their own message.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` on its own thread and panics if it has not returned within
/// `timeout`: for steps where the failure we guard against is a hang (the
/// stuck thread is abandoned; the daemon's Drop unblocks it).
pub fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {timeout:?} (hung)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => panic!("{what}: thread ended without a result"),
        },
    }
}

/// A TCP port on 127.0.0.1 that nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener
        .local_addr()
        .expect("local address of the ephemeral listener")
        .port()
}

/// A TCP port on 127.0.0.1 held for the caller until the returned socket
/// is dropped. The socket is bound with SO_REUSEADDR but never listens:
/// while it is open the kernel hands the port to no other `bind` to port 0
/// (so no parallel test can draw it), yet a server that binds it with
/// SO_REUSEADDR, as pgcorral's listeners do, and listens on it gets it.
/// Unlike [`free_port`], nothing can take the port between the choice and
/// the server's bind.
pub fn reserved_port() -> (std::os::fd::OwnedFd, u16) {
    use nix::sys::socket::{
        bind, getsockname, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
        SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("a TCP socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind 127.0.0.1:0");
    let port = getsockname::<SockaddrIn>(fd.as_raw_fd())
        .expect("the reserved address")
        .port();
    (fd, port)
}

/// Runs a command to completion, killing it after `timeout`; stdout and
/// stderr are collected on threads so a chatty child cannot block on a pipe.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} still running after {timeout:?}; killed"),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last `lines` lines of a log file, for panic messages: a debug-level
/// log of a long test is too big to print whole.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| lossy(&b))
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut s = String::new();
    if start > 0 {
        s.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for l in &all[start..] {
        s.push_str(l);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// Processes seen through /proc
// ---------------------------------------------------------------------------

/// (state, ppid, pgrp) of a process, from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Children of `pid`, zombies included (a child the daemon has not reaped
/// yet is still its child; tests that check reaping rely on that).
pub fn children_of(pid: i32) -> Vec<i32> {
    match fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        // Kernels without CONFIG_PROC_CHILDREN: scan every process.
        Err(_) => all_pids()
            .into_iter()
            .filter(|&p| matches!(proc_stat(p), Some((_, ppid, _)) if ppid == pid))
            .collect(),
    }
}

/// Processes still alive in process group `pgid`. Zombies are left out: once
/// the daemon has exited, its unreaped children belong to init, which may or
/// may not reap them, and a zombie holds no socket and runs no code.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| matches!(proc_stat(p), Some((state, _, pgrp)) if pgrp == pgid && state != 'Z'))
        .collect()
}

/// The title a worker waiting for a client shows.
pub const IDLE_TITLE: &str = "pgcorral: idle worker";
const SUPERVISOR_TITLE: &str = "pgcorral: supervisor";

/// A process's title (`/proc/PID/cmdline`, as `ps` shows it); empty for a
/// zombie or a process that is gone.
pub fn title(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default()
}

pub fn is_zombie_or_gone(pid: i32) -> bool {
    !matches!(proc_stat(pid), Some((state, _, _)) if state != 'Z')
}

/// A child started in its own process group; dropping it kills the group,
/// so neither it nor anything it forked outlives the test.
pub struct GroupChild {
    pub child: Child,
    pub pid: i32,
    reaped: Option<ExitStatus>,
}

impl GroupChild {
    pub fn spawn(cmd: &mut Command) -> io::Result<GroupChild> {
        let child = cmd.process_group(0).spawn()?;
        let pid = child.id() as i32;
        Ok(GroupChild {
            child,
            pid,
            reaped: None,
        })
    }

    /// The exit status if the process has exited by now.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.try_status().is_some());
        self.try_status()
    }

    /// SIGKILL to the whole group, then reap the leader.
    pub fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if self.reaped.is_none() {
            self.reaped = self.child.wait().ok();
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.kill_group();
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

fn version_key(name: &str) -> Vec<u32> {
    name.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Debian keeps server binaries out of PATH, under
/// /usr/lib/postgresql/<major>/bin; the newest major wins.
fn versioned_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then(|| {
                let name = e.file_name().to_string_lossy().into_owned();
                (version_key(&name), bin)
            })
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, dir)| dir)
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Path of a PostgreSQL program (`initdb`, `pg_ctl`, `psql`, `pgbench`, …).
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = versioned_bin_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    in_path(name).unwrap_or_else(|| {
        panic!(
            "{name} not found under /usr/lib/postgresql/*/bin nor in PATH; \
             install PostgreSQL (contrib/test.sh does: apt-get install postgresql postgresql-contrib)"
        )
    })
}

/// PostgreSQL refuses to run as root, and CI runs as root: then the server
/// programs run as the `postgres` user that Debian's package creates.
fn server_user() -> Option<(Uid, Gid)> {
    if !Uid::effective().is_root() {
        return None;
    }
    let user = User::from_name("postgres")
        .expect("look up user postgres")
        .expect(
            "running as root, and PostgreSQL refuses root: need a 'postgres' user \
             (apt-get install postgresql creates it)",
        );
    Some((user.uid, user.gid))
}

fn run_psql(host: &OsStr, port: u16, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.arg("-X")
        .args(["-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg("-h")
        .arg(host)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
    let out = output_within(&mut cmd, COMMAND_TIMEOUT).map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(lossy(&out.stdout).trim_end_matches('\n').to_string())
    } else {
        Err(format!(
            "psql exited with {}: {}{}",
            out.status,
            lossy(&out.stderr),
            lossy(&out.stdout)
        ))
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, listening on a
/// free port on 127.0.0.1 and on a Unix socket in that directory.
pub struct Postgres {
    pub port: u16,
    pub socket_dir: PathBuf,
    pub dir: PathBuf,
    pub data: PathBuf,
    pub log_path: PathBuf,
    user: Option<(Uid, Gid)>,
    _tmp: TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// Starts PostgreSQL with extra `postgresql.conf` settings, e.g.
    /// `[("client_connection_check_interval", "100ms")]`.
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        let tmp = tempfile::Builder::new()
            .prefix("pgcorral-pg.")
            .tempdir()
            .expect("create a temporary directory for PostgreSQL");
        let dir = tmp.path().to_path_buf();
        let user = server_user();
        if let Some((uid, gid)) = user {
            chown(&dir, Some(uid), Some(gid)).expect("chown the PostgreSQL temp dir to postgres");
        }
        let data = dir.join("data");
        let log_path = dir.join("pg.log");
        let mut pg = Postgres {
            port: 0,
            socket_dir: dir.clone(),
            dir,
            data,
            log_path,
            user,
            _tmp: tmp,
        };

        let out = output_within(
            pg.server_command("initdb").arg("-D").arg(&pg.data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ]),
            COMMAND_TIMEOUT,
        )
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            lossy(&out.stdout),
            lossy(&out.stderr)
        );

        if !settings.is_empty() {
            let mut conf = fs::OpenOptions::new()
                .append(true)
                .open(pg.data.join("postgresql.conf"))
                .expect("open postgresql.conf to append test settings");
            for (key, value) in settings {
                writeln!(conf, "{key} = '{}'", value.replace('\'', "''"))
                    .expect("append to postgresql.conf");
            }
        }

        // The free port can be taken between our probe and the server's
        // bind; then try another one.
        for attempt in 1..=5 {
            pg.port = free_port();
            let out = output_within(
                pg.server_command("pg_ctl")
                    .arg("-D")
                    .arg(&pg.data)
                    .arg("-l")
                    .arg(&pg.log_path)
                    .args(["-w", "-t", "60", "-o"])
                    .arg(format!(
                        "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                        pg.port,
                        pg.socket_dir.display()
                    ))
                    .arg("start"),
                COMMAND_TIMEOUT,
            )
            .expect("run pg_ctl start");
            if out.status.success() {
                return pg;
            }
            let log = fs::read_to_string(&pg.log_path).unwrap_or_default();
            if attempt < 5 && log.contains("could not bind") {
                continue;
            }
            panic!(
                "pg_ctl start failed ({}):\n{}{}\n--- pg.log ---\n{log}",
                out.status,
                lossy(&out.stdout),
                lossy(&out.stderr)
            );
        }
        unreachable!("the loop returns or panics")
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(pg_bin(program));
        // The postgres user may not be able to read the test's working directory.
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    /// Runs `sql` with `psql -At` directly against PostgreSQL (Unix socket);
    /// panics with psql's message on error.
    pub fn psql(&self, sql: &str) -> String {
        run_psql(self.socket_dir.as_os_str(), self.port, sql)
            .unwrap_or_else(|e| panic!("psql to PostgreSQL: {sql}: {e}"))
    }

    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A `postgres` client connected straight to PostgreSQL, bypassing pgcorral.
    pub fn connect(&self) -> Client {
        self.config()
            .connect(NoTls)
            .expect("connect directly to PostgreSQL")
    }

    /// Client backends other than the one asking, optionally only those
    /// with the given application_name.
    pub fn backend_count(&self, application_name: Option<&str>) -> i64 {
        let mut sql = String::from(
            "select count(*) from pg_stat_activity \
             where backend_type = 'client backend' and pid <> pg_backend_pid()",
        );
        if let Some(app) = application_name {
            sql.push_str(&format!(
                " and application_name = '{}'",
                app.replace('\'', "''")
            ));
        }
        let out = self.psql(&sql);
        out.parse()
            .unwrap_or_else(|e| panic!("count from pg_stat_activity: {out:?}: {e}"))
    }

    /// Backend pids (other than the asking one) whose current or last query
    /// is exactly `query`.
    pub fn backends_with_query(&self, query: &str) -> Vec<i32> {
        let out = self.psql(&format!(
            "select pid from pg_stat_activity where query = '{}' and pid <> pg_backend_pid()",
            query.replace('\'', "''")
        ));
        out.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    pub fn backend_exists(&self, pid: i32) -> bool {
        self.psql(&format!(
            "select count(*) from pg_stat_activity where pid = {pid}"
        )) != "0"
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "----- PostgreSQL log {} (tail) -----\n{}----- end of PostgreSQL log -----",
                self.log_path.display(),
                tail(&self.log_path, 60)
            );
        }
        let stopped = output_within(
            self.server_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"]),
            Duration::from_secs(40),
        )
        .map(|o| o.status.success())
        .unwrap_or(false);
        if !stopped {
            // pg_ctl could not do it (say the cluster never started): kill
            // the postmaster named in its pid file, if any.
            if let Some(pid) = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// pgcorral
// ---------------------------------------------------------------------------

pub fn pgcorral_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgcorral")
}

/// The keys of the `[pgcorral]` table that every test gets unless it
/// overrides them; port and socket directory are filled in per run.
const DEFAULTS: &[(&str, &str)] = &[
    ("host", "\"127.0.0.1\""),
    ("max_connections", "10"),
    ("blocking_timeout", "\"5s\""),
    ("pipeline", "\"performance\""),
    ("log_level", "\"debug\""),
];

/// Renders a pgcorral configuration for `pg`.
///
/// `extra` is TOML. Its lines before the first `[table]` header are keys of
/// the `[pgcorral]` table and replace the defaults of the same name (TOML
/// forbids a key twice); everything from the first header on (`[[limit]]`,
/// more servers, …) is appended as it is. If `extra` has its own
/// `[server.primary]`, the default one is left out.
pub fn render_config(pg: &Postgres, port: u16, socket_dir: &Path, extra: &str) -> String {
    let mut keys: Vec<(String, String)> = vec![
        ("port".into(), port.to_string()),
        (
            "unix_socket_dir".into(),
            format!("\"{}\"", socket_dir.display()),
        ),
    ];
    keys.extend(DEFAULTS.iter().map(|(k, v)| (k.to_string(), v.to_string())));

    let mut tables = String::new();
    let mut in_tables = false;
    for line in extra.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_tables = true;
        }
        if in_tables {
            tables.push_str(line);
            tables.push('\n');
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (key, value) = trimmed
            .split_once('=')
            .unwrap_or_else(|| panic!("extra config line is not `key = value`: {line:?}"));
        let (key, value) = (key.trim().to_string(), value.trim().to_string());
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => keys.push((key, value)),
        }
    }

    let mut text = String::from("[pgcorral]\n");
    for (k, v) in &keys {
        text.push_str(&format!("{k} = {v}\n"));
    }
    if !tables.lines().any(|l| l.trim() == "[server.primary]") {
        text.push_str(&format!(
            "\n[server.primary]\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        ));
    }
    if !tables.is_empty() {
        text.push('\n');
        text.push_str(&tables);
    }
    text
}

/// Is anything listening on 127.0.0.1:`port` (or on all addresses)? Read
/// from /proc/net/tcp* rather than by connecting, because a connection
/// would make the daemon fork a worker for nothing.
pub fn tcp_listening(port: u16) -> bool {
    let mut seen_table = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        seen_table = true;
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            // state 0A is LISTEN; the local address is HEXIP:HEXPORT.
            if state == "0A"
                && local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
            {
                return true;
            }
        }
    }
    if !seen_table {
        return TcpStream::connect(("127.0.0.1", port)).is_ok();
    }
    false
}

/// A running pgcorral daemon in front of a [`Postgres`].
pub struct Pgcorral {
    pub port: u16,
    pub pid: i32,
    pub socket_dir: PathBuf,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    proc: GroupChild,
    /// Shared with the watchdog thread; `true` once the test is done with
    /// the daemon, so the watchdog must not touch it any more.
    done: Arc<Mutex<bool>>,
    tmp: Option<TempDir>,
}

impl Pgcorral {
    /// Starts pgcorral in front of `pg`; see [`render_config`] for `extra`.
    /// pgcorral listens on a port the kernel picks (`port = 0`) and writes
    /// it to a port file once its listeners are up; this returns then, so
    /// parallel tests never compete for a port.
    pub fn start(pg: &Postgres, extra: &str) -> Pgcorral {
        Pgcorral::start_with(pg, extra, |_| Command::new(pgcorral_bin()))
    }

    /// As [`Pgcorral::start`], with the command `launch` makes (another
    /// user, other limits) given the directory that will hold the
    /// configuration, the log and the sockets; the arguments are added here.
    pub fn start_with(
        pg: &Postgres,
        extra: &str,
        launch: impl FnOnce(&Path) -> Command,
    ) -> Pgcorral {
        let tmp = tempfile::Builder::new()
            .prefix("pgcorral.")
            .tempdir()
            .expect("create a temporary directory for pgcorral");
        let dir = tmp.path().to_path_buf();
        let config_path = dir.join("pgcorral.toml");
        let log_path = dir.join("pgcorral.log");
        let port_file = dir.join("pgcorral.port");

        fs::write(&config_path, render_config(pg, 0, &dir, extra)).expect("write pgcorral.toml");
        let log = File::create(&log_path).expect("create pgcorral.log");
        let mut cmd = launch(&dir);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--port-file")
            .arg(&port_file)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log file"))
            .stderr(log);
        let mut proc = GroupChild::spawn(&mut cmd).expect("spawn pgcorral");

        // The file is renamed into place whole, after the listeners are
        // bound: once it can be read, connections are accepted.
        let read_port =
            || -> Option<u16> { fs::read_to_string(&port_file).ok()?.trim().parse().ok() };
        let ready = wait_until(Duration::from_secs(30), || {
            proc.try_status().is_some() || read_port().is_some()
        });
        let port = match (proc.try_status(), read_port()) {
            (None, Some(port)) if ready => port,
            (Some(status), _) => panic!(
                "pgcorral exited during startup ({status}); config:\n{}\n--- log ---\n{}",
                fs::read_to_string(&config_path).unwrap_or_default(),
                fs::read_to_string(&log_path).unwrap_or_default()
            ),
            _ => panic!(
                "pgcorral wrote no port file {} within 30 s; config:\n{}\n--- log ---\n{}",
                port_file.display(),
                fs::read_to_string(&config_path).unwrap_or_default(),
                fs::read_to_string(&log_path).unwrap_or_default()
            ),
        };

        let pid = proc.pid;
        let done = Arc::new(Mutex::new(false));
        spawn_watchdog(pid, done.clone());
        Pgcorral {
            port,
            pid,
            socket_dir: dir,
            log_path,
            config_path,
            proc,
            done,
            tmp: Some(tmp),
        }
    }

    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    pub fn config_unix(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(10));
        c
    }

    pub fn try_connect(&self) -> Result<Client, postgres::Error> {
        self.config().connect(NoTls)
    }

    pub fn try_connect_unix(&self) -> Result<Client, postgres::Error> {
        self.config_unix().connect(NoTls)
    }

    /// A `postgres` client connected through pgcorral over TCP.
    pub fn connect(&self) -> Client {
        self.try_connect().unwrap_or_else(|e| {
            panic!(
                "connect through pgcorral (TCP 127.0.0.1:{}): {e:?}",
                self.port
            )
        })
    }

    /// A `postgres` client connected through pgcorral's Unix socket.
    pub fn connect_unix(&self) -> Client {
        self.try_connect_unix().unwrap_or_else(|e| {
            panic!(
                "connect through pgcorral (Unix socket {}): {e:?}",
                self.unix_socket().display()
            )
        })
    }

    pub fn unix_socket(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// `psql -At -c sql` through pgcorral over TCP.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        run_psql(OsStr::new("127.0.0.1"), self.port, sql)
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql through pgcorral (TCP): {sql}: {e}"))
    }

    /// `psql -At -c sql` through pgcorral's Unix socket.
    pub fn psql_unix(&self, sql: &str) -> String {
        run_psql(self.socket_dir.as_os_str(), self.port, sql)
            .unwrap_or_else(|e| panic!("psql through pgcorral (Unix socket): {sql}: {e}"))
    }

    pub fn tcp_stream(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("TCP connect to pgcorral");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("set write timeout");
        s
    }

    pub fn unix_stream(&self) -> UnixStream {
        let s = UnixStream::connect(self.unix_socket()).expect("connect to pgcorral's Unix socket");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("set write timeout");
        s
    }

    /// The supervisor's children that serve a client (or a remote
    /// administrator), unreaped ones included: every child but the idle
    /// workers and those that have not started yet (still titled like the
    /// supervisor).
    pub fn workers(&self) -> Vec<i32> {
        children_of(self.pid)
            .into_iter()
            .filter(|&p| !matches!(title(p).as_str(), IDLE_TITLE | SUPERVISOR_TITLE))
            .collect()
    }

    /// Workers waiting for a client.
    pub fn idle_workers(&self) -> Vec<i32> {
        children_of(self.pid)
            .into_iter()
            .filter(|&p| title(p) == IDLE_TITLE)
            .collect()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("send {sig} to pgcorral {}: {e}", self.pid));
    }

    /// The daemon's exit status, once it has exited within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// Processes of the daemon's process group still alive (the supervisor
    /// and every worker it forked are in it).
    pub fn group_members(&self) -> Vec<i32> {
        live_group_members(self.pid)
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| lossy(&b))
            .unwrap_or_default()
    }
}

fn spawn_watchdog(pid: i32, done: Arc<Mutex<bool>>) {
    thread::spawn(move || {
        let deadline = Instant::now() + WATCHDOG;
        loop {
            thread::sleep(Duration::from_millis(200));
            let done = done.lock().unwrap_or_else(|e| e.into_inner());
            if *done {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "watchdog: pgcorral {pid} still running after {WATCHDOG:?}; \
                     killing its process group so the hung test fails"
                );
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                return;
            }
        }
    });
}

impl Drop for Pgcorral {
    fn drop(&mut self) {
        // Holding the lock keeps the watchdog from killing a pid we reap.
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *done = true;
        let panicking = thread::panicking();
        // PGCORRAL_TEST_LOG=1 shows the log of passing tests too (with
        // --nocapture), to see what the daemon did when nothing failed.
        if panicking || std::env::var_os("PGCORRAL_TEST_LOG").is_some() {
            eprintln!(
                "----- pgcorral log {} (tail) -----\n{}----- end of pgcorral log -----",
                self.log_path.display(),
                tail(&self.log_path, 300)
            );
        }
        if self.proc.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            self.proc.wait_exit(Duration::from_secs(5));
        }
        self.proc.kill_group();
        if panicking {
            // Keep config and full log for whoever debugs the failure.
            if let Some(tmp) = self.tmp.take() {
                eprintln!("pgcorral files kept in {}", tmp.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw protocol, for tests that send what no well-behaved client would
// ---------------------------------------------------------------------------

/// Reads one whole v3 message: its tag and body.
pub fn read_message(stream: &mut impl Read) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).expect("read a message header");
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    assert!((4..=1 << 20).contains(&len), "message length {len}");
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).expect("read a message body");
    (head[0], body)
}

/// A v3 StartupMessage for user and database `postgres`.
pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// What the other side answered to something we sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// An ErrorResponse, with its fields (code byte → value).
    Error(Vec<(u8, String)>),
    /// A protocol 2.0 ErrorResponse: text only, no SQLSTATE.
    ErrorV2(String),
    /// Some other message type (its tag).
    Other(u8),
    /// The connection was closed (EOF or reset) before a message arrived.
    Closed,
}

impl Answer {
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Answer::Error(fields) => fields
                .iter()
                .find(|(c, _)| *c == b'C')
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Reads the first message the peer sends. Panics if nothing arrives within
/// the stream's read timeout: a hang is exactly what these tests rule out.
pub fn read_answer(stream: &mut impl Read) -> Answer {
    let mut tag = [0u8; 1];
    match stream.read(&mut tag) {
        Ok(0) => return Answer::Closed,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Answer::Closed,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            panic!("no answer and no close within the read timeout (hung)")
        }
        Err(e) => panic!("read from pgcorral: {e}"),
    }
    if tag[0] != b'E' {
        return Answer::Other(tag[0]);
    }
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).is_err() {
        return Answer::Closed;
    }
    let len = i32::from_be_bytes(len);
    if !(4..=65536).contains(&len) {
        // Not a v3 length: a protocol 2.0 ErrorResponse, which is 'E' and
        // a NUL-terminated text (what PostgreSQL sends a 2.0 client).
        let mut text = len.to_be_bytes().to_vec();
        let mut rest = Vec::new();
        let _ = stream.take(65536).read_to_end(&mut rest);
        text.extend_from_slice(&rest);
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        return Answer::ErrorV2(lossy(&text[..end]));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream
        .read_exact(&mut body)
        .expect("read the ErrorResponse body");
    let mut fields = Vec::new();
    let mut rest = &body[..];
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        fields.push((code, lossy(&tail[..end])));
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    Answer::Error(fields)
}

/// Writes `bytes`, tolerating a peer that already closed on us (a pooler
/// may reject a bad packet before reading all of it).
pub fn write_tolerant(stream: &mut impl Write, bytes: &[u8]) {
    match stream.write_all(bytes) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => panic!("write to pgcorral: {e}"),
    }
}

/// Runs pgbench against 127.0.0.1:`port` as postgres on database postgres;
/// returns whether it exited 0, and its stdout and stderr together.
pub fn pgbench(port: u16, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(pg_bin("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env("PGCONNECT_TIMEOUT", "30");
    let out = output_within(&mut cmd, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("pgbench {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

//! Authentication against a PostgreSQL whose roles use md5 and
//! scram-sha-256: pass-through (users not in the vault), pgcorral's own hba
//! rules, the authentication timeout, and startup parameters.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{wait_until, Pgcorral, Postgres};
use postgres::error::SqlState;

/// PostgreSQL with an md5 role, a SCRAM role, and hba lines that demand
/// their passwords over TCP (the harness itself connects as postgres over
/// the Unix socket, which stays trusted).
fn postgres_with_passwords() -> Postgres {
    let pg = Postgres::start();
    pg.psql(
        "set password_encryption = 'md5'; create role md5user login password 'md5pass'; \
         set password_encryption = 'scram-sha-256'; create role scramuser login password 'scrampass';",
    );
    let hba = "local all all trust\n\
               host all postgres 127.0.0.1/32 trust\n\
               host all md5user 127.0.0.1/32 md5\n\
               host all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(pg.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    assert_eq!(pg.psql("select pg_reload_conf()"), "t");
    pg
}

fn connect(pc: &Pgcorral, user: &str, password: &str) -> Result<postgres::Client, postgres::Error> {
    let mut cfg = pc.config();
    cfg.user(user).password(password);
    cfg.connect(postgres::NoTls)
}

fn backend_pid(c: &mut postgres::Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .expect("pid")
        .get(0)
}

fn assert_bad_password(result: Result<postgres::Client, postgres::Error>, user: &str) -> String {
    let err = match result {
        Ok(_) => panic!("{user} got in with a wrong password"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let msg = db_message(&err);
    assert_eq!(
        msg,
        format!("password authentication failed for user \"{user}\"")
    );
    msg
}

fn db_message(err: &postgres::Error) -> String {
    err.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

fn wait_idle(pc: &Pgcorral) {
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "workers left: {:?}",
        pc.workers()
    );
}

/// The query PostgreSQL last saw on a backend: proof of whether anyone
/// used the connection.
fn last_query(pg: &Postgres, pid: i32) -> Option<String> {
    let out = pg.psql(&format!(
        "select query from pg_stat_activity where pid = {pid}"
    ));
    (!out.is_empty()).then_some(out)
}

#[test]
fn md5_pass_through_checks_every_client_before_reuse() {
    let pg = postgres_with_passwords();
    let pc = Pgcorral::start(&pg, "");

    assert_bad_password(connect(&pc, "md5user", "wrong"), "md5user");
    wait_idle(&pc);

    let mut first = connect(&pc, "md5user", "md5pass").expect("right md5 password");
    let pid = backend_pid(&mut first);
    first
        .simple_query("select 'first client was here'")
        .expect("query");
    drop(first);
    wait_idle(&pc);

    // The pooled connection is idle now: a client with a wrong password is
    // refused by pgcorral and never reaches it.
    assert_bad_password(connect(&pc, "md5user", "nope"), "md5user");
    wait_idle(&pc);
    assert_eq!(
        last_query(&pg, pid).as_deref(),
        Some("select 'first client was here'"),
        "someone used the pooled backend"
    );
    // It is still pooled, and the right password gets it.
    let mut again = connect(&pc, "md5user", "md5pass").expect("right password again");
    assert_eq!(backend_pid(&mut again), pid);
}

#[test]
fn scram_pass_through_never_shares_a_connection() {
    let pg = postgres_with_passwords();
    let pc = Pgcorral::start(&pg, "");

    assert_bad_password(connect(&pc, "scramuser", "wrong"), "scramuser");
    let mut first = connect(&pc, "scramuser", "scrampass").expect("right SCRAM password");
    let pid = backend_pid(&mut first);
    drop(first);
    wait_idle(&pc);
    // Nothing a later client sends could be checked without the role's
    // verifier, so the connection was closed rather than pooled.
    assert!(
        wait_until(Duration::from_secs(30), || last_query(&pg, pid).is_none()),
        "the SCRAM pass-through connection was kept"
    );
    assert_bad_password(connect(&pc, "scramuser", "nope"), "scramuser");
    let mut second = connect(&pc, "scramuser", "scrampass").expect("right password again");
    assert_ne!(backend_pid(&mut second), pid);
}

#[test]
fn an_unknown_user_is_answered_like_a_wrong_password() {
    let pg = postgres_with_passwords();
    let pc = Pgcorral::start(&pg, "");
    let wrong = assert_bad_password(connect(&pc, "scramuser", "wrong"), "scramuser");
    let unknown = assert_bad_password(connect(&pc, "nobody", "whatever"), "nobody");
    assert_eq!(
        wrong.replace("scramuser", "X"),
        unknown.replace("nobody", "X")
    );
}

#[test]
fn pgcorral_hba_rejects_and_refuses_unmatched_clients() {
    let pg = postgres_with_passwords();
    let hba = pg.dir.join("pgcorral_hba.conf");
    std::fs::write(
        &hba,
        "# pgcorral's own rules\n\
         host all md5user 127.0.0.1/32 reject\n\
         host postgres postgres 127.0.0.1/32 trust\n\
         host all scramuser 127.0.0.1/32 all\n",
    )
    .expect("write hba");
    let pc = Pgcorral::start(&pg, &format!("hba_file = \"{}\"", hba.display()));

    let err = connect(&pc, "md5user", "md5pass")
        .err()
        .expect("reject line");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    assert!(db_message(&err).contains("rejects"), "{err:?}");

    // No line for database template1 and user postgres.
    let mut cfg = pc.config();
    cfg.dbname("template1");
    let err = cfg.connect(postgres::NoTls).err().expect("unmatched");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
    assert!(db_message(&err).contains("no pg_hba.conf entry"), "{err:?}");

    // Matching lines work.
    connect(&pc, "scramuser", "scrampass").expect("scramuser via `all`");
    pc.connect()
        .simple_query("select 1")
        .expect("postgres via trust");
}

/// Half a startup packet, sent on a fresh connection to `pc`.
fn stall(pc: &Pgcorral) -> std::net::TcpStream {
    let mut stalled = pc.tcp_stream();
    stalled
        .write_all(&[0, 0, 0, 40, 0, 3])
        .expect("write half a packet");
    stalled
}

#[test]
fn others_are_served_while_a_startup_stalls() {
    let pg = Postgres::start();
    // Long enough that the stalled client is certainly still there after
    // the others, however slowly they are served.
    let pc = Pgcorral::start(&pg, "authentication_timeout = \"1h\"");
    let stalled = stall(&pc);

    let clients: Vec<_> = (0..20)
        .map(|_| {
            let cfg = pc.config();
            std::thread::spawn(move || {
                let mut c = cfg
                    .connect(postgres::NoTls)
                    .expect("connect while one stalls");
                c.simple_query("select 1").expect("query");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }

    // The stalled client is still connected: nobody waited for it to go.
    stalled.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1];
    let peeked = stalled.peek(&mut buf);
    assert!(
        matches!(&peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled client was answered or dropped: {peeked:?}"
    );
}

#[test]
fn a_stalled_startup_is_dropped_after_authentication_timeout() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "authentication_timeout = \"1s\"");
    // Taken before connecting, so the daemon's clock cannot have started
    // earlier than ours: the lower bound below holds on any machine.
    let began = Instant::now();
    let mut stalled = stall(&pc);
    let local = stalled.local_addr().expect("local addr");

    let mut buf = [0u8; 16];
    // Only a guard against a hang: the drop is expected after about 1 s.
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let n = std::io::Read::read(&mut stalled, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the stalled client to be disconnected");
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "dropped after {waited:?}, before authentication_timeout"
    );
    assert!(
        wait_until(Duration::from_secs(10), || pc
            .log()
            .contains(&local.to_string())
            && pc.log().contains("did not complete start-up")),
        "no log line names the stalled client {local}"
    );
}

#[test]
fn startup_parameters_reach_a_new_server_connection() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let mut cfg = pc.config();
    cfg.application_name("corral-test")
        .options("-c statement_timeout=1234");
    let mut c = cfg.connect(postgres::NoTls).expect("connect");
    let row = c
        .query_one(
            "select current_setting('application_name'), current_setting('statement_timeout')",
            &[],
        )
        .expect("settings");
    assert_eq!(row.get::<_, String>(0), "corral-test");
    assert_eq!(row.get::<_, String>(1), "1234ms");
}

/// A vault made with pgcorral-admin: md5user and scramuser with their
/// PostgreSQL passwords, optionally a frontend file with other passwords.
struct Vault {
    key: std::path::PathBuf,
    users: std::path::PathBuf,
    frontend: std::path::PathBuf,
}

fn admin(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcorral-admin"))
        .args(args)
        .output()
        .expect("run pgcorral-admin");
    assert!(
        out.status.success(),
        "pgcorral-admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_vault(dir: &std::path::Path) -> Vault {
    let v = Vault {
        key: dir.join("master.key"),
        users: dir.join("users.conf"),
        frontend: dir.join("frontend_users.conf"),
    };
    let (k, u, f) = (
        v.key.to_str().expect("path"),
        v.users.to_str().expect("path"),
        v.frontend.to_str().expect("path"),
    );
    admin(&["-k", k, "master-key"]);
    admin(&[
        "-k", k, "-f", u, "user", "add", "-U", "md5user", "-P", "md5pass",
    ]);
    admin(&[
        "-k",
        k,
        "-f",
        u,
        "user",
        "add",
        "-U",
        "scramuser",
        "-P",
        "scrampass",
    ]);
    admin(&[
        "-k",
        k,
        "-f",
        f,
        "user",
        "add",
        "-U",
        "md5user",
        "-P",
        "front-secret",
    ]);
    v
}

fn vault_config(v: &Vault, hba: &std::path::Path, frontend: bool) -> String {
    let mut c = format!(
        "hba_file = \"{}\"\nusers_file = \"{}\"\nmaster_key_file = \"{}\"\n",
        hba.display(),
        v.users.display(),
        v.key.display()
    );
    if frontend {
        c.push_str(&format!(
            "frontend_users_file = \"{}\"\n",
            v.frontend.display()
        ));
    }
    c
}

#[test]
fn vault_users_are_checked_by_pgcorral_with_every_method() {
    let pg = postgres_with_passwords();
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = make_vault(dir.path());
    let hba = dir.path().join("hba.conf");
    for method in ["md5", "scram-sha-256", "password", "all"] {
        std::fs::write(
            &hba,
            format!("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 {method}\n"),
        )
        .expect("write hba");
        let pc = Pgcorral::start(&pg, &vault_config(&vault, &hba, false));
        for user in ["md5user", "scramuser"] {
            let right = if user == "md5user" {
                "md5pass"
            } else {
                "scrampass"
            };
            let mut c = connect(&pc, user, right)
                .unwrap_or_else(|e| panic!("{method}: {user} with the right password: {e:?}"));
            let pid = backend_pid(&mut c);
            c.simple_query("select 'vault client'").expect("query");
            drop(c);
            wait_idle(&pc);
            // The connection is pooled; a wrong password never reaches it.
            assert_bad_password(connect(&pc, user, "wrong"), user);
            assert_eq!(
                last_query(&pg, pid).as_deref(),
                Some("select 'vault client'")
            );
            let mut again = connect(&pc, user, right).expect("right password again");
            assert_eq!(
                backend_pid(&mut again),
                pid,
                "{method}: pooled connection not reused"
            );
        }
        // Not in the vault: PostgreSQL decides, and says the same thing.
        assert_bad_password(connect(&pc, "nobody", "x"), "nobody");
    }
}

#[test]
fn a_frontend_password_differs_from_the_server_password() {
    let pg = postgres_with_passwords();
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = make_vault(dir.path());
    let hba = dir.path().join("hba.conf");
    std::fs::write(&hba, "host all all 127.0.0.1/32 scram-sha-256\n").expect("write hba");
    let pc = Pgcorral::start(&pg, &vault_config(&vault, &hba, true));
    let mut c = connect(&pc, "md5user", "front-secret").expect("frontend password");
    assert_eq!(
        c.query_one("select current_user::text", &[])
            .expect("q")
            .get::<_, String>(0),
        "md5user"
    );
    drop(c);
    assert_bad_password(connect(&pc, "md5user", "md5pass"), "md5user");
}

#[test]
fn a_master_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = make_vault(dir.path());
    std::fs::set_permissions(&vault.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = dir.path().join("pgcorral.toml");
    let text = common::render_config(
        &pg,
        0,
        dir.path(),
        &format!(
            "users_file = \"{}\"\nmaster_key_file = \"{}\"",
            vault.users.display(),
            vault.key.display()
        ),
    );
    std::fs::write(&config, text).expect("write config");
    let out = common::output_within(
        std::process::Command::new(common::pgcorral_bin())
            .arg("-c")
            .arg(&config),
        Duration::from_secs(10),
    )
    .expect("run pgcorral");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("master.key"), "{stderr}");
}

/// In transaction mode a relayed SCRAM login stays with its client for the
/// whole session: it is never pooled between transactions, so no other
/// client (with or without the password) can be handed it or disturb it,
/// and it is closed when its client leaves.
#[test]
fn scram_pass_through_in_transaction_mode_is_pinned_to_its_client() {
    let pg = postgres_with_passwords();
    let pc = Pgcorral::start(&pg, "pipeline = \"transaction\"\nmax_connections = 4");

    let mut first = connect(&pc, "scramuser", "scrampass").expect("right SCRAM password");
    let pid = backend_pid(&mut first);
    let run_transactions = |c: &mut postgres::Client, what: &str| {
        for i in 0..3 {
            let mut t = c.transaction().expect("begin");
            let got: i32 = t.query_one("select $1::int", &[&i]).expect("query").get(0);
            assert_eq!(got, i);
            t.commit().expect("commit");
            assert_eq!(
                backend_pid(c),
                pid,
                "{what}: the session moved to another backend"
            );
        }
    };
    run_transactions(&mut first, "alone");

    // Another client of the same user meanwhile: right password gets its
    // own connection, a wrong one a proper refusal, never an internal error.
    let mut second = connect(&pc, "scramuser", "scrampass").expect("second client");
    let second_pid = backend_pid(&mut second);
    assert_ne!(second_pid, pid, "two clients share a relayed SCRAM login");
    assert_bad_password(connect(&pc, "scramuser", "nope"), "scramuser");
    run_transactions(&mut first, "after other clients");

    // A stranger who sends only a start-up packet for the user and hangs up.
    {
        let mut stranger = pc.tcp_stream();
        stranger
            .write_all(&common::startup_message("scramuser", "postgres"))
            .expect("send start-up");
        let answer = common::read_answer(&mut stranger);
        assert!(
            !matches!(answer, common::Answer::Error(_)),
            "the stranger got {answer:?} instead of an authentication request"
        );
    }
    drop(second);
    assert!(
        wait_until(Duration::from_secs(5), || pc.workers().len() == 1),
        "workers: {:?}",
        pc.workers()
    );
    run_transactions(&mut first, "after a stranger hung up");

    drop(first);
    wait_idle(&pc);
    assert!(
        wait_until(Duration::from_secs(5), || last_query(&pg, pid).is_none()
            && last_query(&pg, second_pid).is_none()),
        "a relayed SCRAM connection outlived its client"
    );
    let mut again = connect(&pc, "scramuser", "scrampass").expect("after everyone left");
    assert_ne!(backend_pid(&mut again), pid);
}

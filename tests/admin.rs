//! pgcorral-admin end to end: the master key and a users file driven only
//! through the binary, as a DBA would.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use pgcorral::vault::{master_key, Users};

struct Admin<'a> {
    users: &'a Path,
    key: &'a Path,
}

impl Admin<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgcorral-admin"));
        c.arg("-f")
            .arg(self.users)
            .arg("-k")
            .arg(self.key)
            .args(args);
        // No terminal: a missing -P means one line from stdin.
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run pgcorral-admin")
    }

    fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pgcorral-admin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait pgcorral-admin")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails_with_one_line(out: &Output, needle: &str) {
    assert!(!out.status.success(), "unexpected success");
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn vault_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("keys").join("master.key");
    let users = dir.path().join("users.conf");
    let admin = Admin {
        users: &users,
        key: &key,
    };

    admin.ok(&["master-key"]);
    assert_eq!(
        fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    assert_fails_with_one_line(&admin.run(&["master-key"]), "already exists");

    assert_eq!(admin.ok(&["user", "ls"]), "", "no users file yet: empty");
    admin.ok(&["user", "add", "-U", "alice", "-P", "secret1"]);
    let out = admin.run_with_stdin(&["user", "add", "-U", "bob"], "from-stdin\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(admin.ok(&["user", "ls"]), "alice\nbob\n");
    assert_eq!(
        fs::metadata(&users).expect("users").permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&users).expect("users");
    assert!(!text.contains("secret1") && !text.contains("from-stdin"));

    // What the daemon will read.
    let vault = Users::load(&users, &master_key::load(&key).expect("key")).expect("users");
    assert_eq!(vault.password("alice"), Some("secret1"));
    assert_eq!(vault.password("bob"), Some("from-stdin"));

    assert_fails_with_one_line(
        &admin.run(&["user", "add", "-U", "alice", "-P", "x"]),
        "already exists",
    );
    admin.ok(&["user", "edit", "-U", "alice", "-P", "secret2"]);
    let vault = Users::load(&users, &master_key::load(&key).expect("key")).expect("users");
    assert_eq!(vault.password("alice"), Some("secret2"));
    assert_fails_with_one_line(
        &admin.run(&["user", "edit", "-U", "carol", "-P", "x"]),
        "does not exist",
    );
    assert_fails_with_one_line(
        &admin.run_with_stdin(&["user", "add", "-U", "carol"], ""),
        "no password",
    );

    admin.ok(&["user", "del", "-U", "alice"]);
    assert_eq!(admin.ok(&["user", "ls"]), "bob\n");
    admin.ok(&["user", "del", "-U", "bob"]);
    assert_eq!(admin.ok(&["user", "ls"]), "");
    assert_fails_with_one_line(&admin.run(&["user", "del", "-U", "bob"]), "does not exist");

    // A new key makes the old file unreadable, and says so.
    admin.ok(&["user", "add", "-U", "dave", "-P", "pw"]);
    admin.ok(&["master-key", "--force"]);
    assert_fails_with_one_line(&admin.run(&["user", "ls"]), "wrong master key");
}

#[test]
fn master_key_with_loose_permissions_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("master.key");
    let users = dir.path().join("users.conf");
    let admin = Admin {
        users: &users,
        key: &key,
    };
    admin.ok(&["master-key"]);
    admin.ok(&["user", "add", "-U", "alice", "-P", "pw"]);
    for mode in [0o644, 0o640] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).expect("chmod");
        let out = admin.run(&["user", "ls"]);
        assert_fails_with_one_line(&out, &key.display().to_string());
        assert!(
            stderr(&out).contains(&format!("{mode:04o}")),
            "{}",
            stderr(&out)
        );
        assert_fails_with_one_line(
            &admin.run(&["user", "add", "-U", "bob", "-P", "x"]),
            "chmod 0600",
        );
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(admin.ok(&["user", "ls"]), "alice\n");
}

#[test]
fn usage_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("master.key");
    let users = dir.path().join("users.conf");
    let admin = Admin {
        users: &users,
        key: &key,
    };
    let out = admin.run(&["user", "add"]);
    assert_eq!(out.status.code(), Some(2));
    assert_fails_with_one_line(&out, "--user");
    assert_fails_with_one_line(&admin.run(&["frobnicate"]), "frobnicate");
    // No key yet: the error names the missing file.
    assert_fails_with_one_line(&admin.run(&["user", "ls"]), "master.key");
    let help = admin.run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("master-key"));
}

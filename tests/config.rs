//! A bad configuration stops pgcorral before it starts anything, with a
//! message that names the key (and its line) so the DBA can fix it.

mod common;

use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{live_group_members, pgcorral_bin, GroupChild};

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Runs `pgcorral -c` on `text` (where `{dir}` is filled in) and checks
/// that it exits leaving no socket, port file or process behind. The
/// config asks for port 0, so no port is shared with parallel tests; a
/// TCP listener dies with the process, which the group check covers.
fn run_config(text: &str) -> Outcome {
    let tmp = tempfile::Builder::new()
        .prefix("pgcorral-config.")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path();
    let text = text.replace("{dir}", &dir.display().to_string());
    let config = dir.join("pgcorral.toml");
    fs::write(&config, &text).expect("write the config");
    let log = dir.join("stderr.log");

    let mut daemon = GroupChild::spawn(
        Command::new(pgcorral_bin())
            .arg("-c")
            .arg(&config)
            .arg("--port-file")
            .arg(dir.join("pgcorral.port"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create stderr log")),
    )
    .expect("spawn pgcorral");
    // A bound only against a hang: a refused config exits at once.
    let status = daemon.wait_exit(Duration::from_secs(60));
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    eprintln!("--- pgcorral's stderr for a bad config ---\n{stderr}");
    let status = status.unwrap_or_else(|| {
        panic!("pgcorral still running 60 s after a bad config:\n{text}\n--- stderr ---\n{stderr}")
    });

    let left: Vec<String> = fs::read_dir(dir)
        .expect("list the temp dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".s.") || name.starts_with("pgcorral.port"))
        .collect();
    assert!(
        left.is_empty(),
        "left behind after a refused config: {left:?}"
    );
    assert_eq!(
        live_group_members(daemon.pid),
        Vec::<i32>::new(),
        "processes started despite the bad config"
    );
    Outcome {
        code: status.code(),
        stderr,
    }
}

fn base(bad_line: &str) -> String {
    format!(
        "[pgcorral]\nhost = \"127.0.0.1\"\n{bad_line}\nport = 0\nunix_socket_dir = \"{{dir}}\"\n\
         pipeline = \"performance\"\n\n[server.primary]\nhost = \"127.0.0.1\"\nport = 5432\n"
    )
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = base("bogus = 1");
    assert_eq!(text.lines().nth(2), Some("bogus = 1"), "bogus is on line 3");
    let out = run_config(&text);
    assert_eq!(out.code, Some(1), "exit status; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("bogus"),
        "stderr does not name the key `bogus`:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("line 3") || out.stderr.contains(":3"),
        "stderr does not name line 3:\n{}",
        out.stderr
    );
}

#[test]
fn bad_values_name_their_key() {
    for (line, key) in [
        ("max_connections = 0", "max_connections"),
        ("blocking_timeout = \"soon\"", "blocking_timeout"),
        ("log_level = \"loud\"", "log_level"),
    ] {
        let out = run_config(&base(line));
        assert_eq!(
            out.code,
            Some(1),
            "`{line}`: exit status; stderr:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(key),
            "`{line}`: stderr does not name `{key}`:\n{}",
            out.stderr
        );
    }
}

#[test]
fn unknown_key_in_server_table_is_refused() {
    let text = base("").replace("port = 5432", "port = 5432\nhots = \"db1\"");
    let out = run_config(&text);
    assert_eq!(out.code, Some(1), "exit status; stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("hots"),
        "stderr does not name `hots`:\n{}",
        out.stderr
    );
}

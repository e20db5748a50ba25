use super::*;

/// The sample from DESIGN.md section 1, verbatim.
const SAMPLE: &str = r#"
[pgcorral]
host = "127.0.0.1"        # "*" for all interfaces
port = 2345
unix_socket_dir = "/tmp"  # also listens on .s.PGSQL.<port> here
pipeline = "auto"         # auto | performance | session | transaction
max_connections = 100     # server-connection slots in the shared table
blocking_timeout = "30s"  # how long a client waits for a slot
idle_timeout = "0"        # close pooled connections idle this long (0 = never)
max_connection_age = "0"
validation = "off"        # off | foreground | background
authentication_timeout = "5s"
log_type = "console"      # console | file | syslog
log_level = "info"
management = 0            # remote management TCP port (0 = off)
metrics = 0               # Prometheus HTTP port (0 = off)

[server.primary]          # one table per server; several for failover
host = "127.0.0.1"
port = 5432
primary = true

[[limit]]                 # per database/user pool limits
database = "all"
user = "all"
max_size = 20
initial_size = 0          # prefill
min_size = 0
"#;

fn parse_err(text: &str) -> ConfigError {
    match Config::from_toml(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err) => err,
    }
}

/// (key, line) of a validation error.
fn invalid(text: &str) -> (String, Option<usize>, String) {
    match parse_err(text) {
        ConfigError::Invalid {
            key, line, message, ..
        } => (key, line, message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn parse_position(text: &str) -> (usize, usize, String) {
    match parse_err(text) {
        ConfigError::Parse {
            line,
            column,
            message,
            ..
        } => (line, column, message),
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[test]
fn defaults_from_almost_empty_file() {
    let config = Config::from_toml("[server.a]\n").unwrap();
    let m = &config.main;
    assert_eq!(m.host, "127.0.0.1");
    assert_eq!(m.port, 2345);
    assert_eq!(m.unix_socket_dir, PathBuf::from("/tmp"));
    assert_eq!(m.pipeline, PipelineKind::Auto);
    assert_eq!(m.max_connections, 100);
    assert_eq!(m.blocking_timeout, Duration::from_secs(30));
    assert_eq!(m.idle_timeout, Duration::ZERO);
    assert_eq!(m.max_connection_age, Duration::ZERO);
    assert_eq!(m.validation, Validation::Off);
    assert_eq!(m.background_interval, Duration::from_secs(300));
    assert_eq!(m.disconnect_client, Duration::ZERO);
    assert_eq!(m.authentication_timeout, Duration::from_secs(5));
    assert_eq!(m.log_type, LogType::Console);
    assert_eq!(m.log_level, LogLevel::Info);
    assert_eq!(m.log_path, None);
    assert_eq!(m.management, 0);
    assert_eq!(m.metrics, 0);
    assert_eq!(config.servers.len(), 1);
    let s = &config.servers[0];
    assert_eq!(
        (s.name.as_str(), s.host.as_str(), s.port, s.primary),
        ("a", "127.0.0.1", 5432, false)
    );
    assert!(!s.is_unix_socket());
    assert!(config.limits.is_empty());
    assert!(config.path.is_none());
    assert!(config.unimplemented_settings().is_empty());
}

#[test]
fn design_sample_parses() {
    let config = Config::from_toml(SAMPLE).unwrap();
    assert_eq!(config.main.port, 2345);
    assert_eq!(config.main.blocking_timeout, Duration::from_secs(30));
    assert_eq!(config.servers.len(), 1);
    assert_eq!(config.primary_server().name, "primary");
    assert!(config.primary_server().primary);
    assert_eq!(config.limits.len(), 1);
    assert_eq!(config.limits[0].max_size, 20);
    assert!(config.unimplemented_settings().is_empty());
}

#[test]
fn every_value_read() {
    let text = r#"
[pgcorral]
host = "*"
port = 6432
unix_socket_dir = "/run/pgcorral"
pipeline = "Transaction"
max_connections = 10000
blocking_timeout = 0
idle_timeout = "5m"
max_connection_age = "1d"
validation = "background"
authentication_timeout = "250ms"
log_type = "file"
log_level = "debug3"
log_path = "/var/log/pgcorral.log"
management = 2346
metrics = 2347

[server.zeta]
host = "/var/run/postgresql"
port = 5433

[server.alpha]
host = "db1"
primary = true
"#;
    let config = Config::from_toml(text).unwrap();
    let m = &config.main;
    assert_eq!(m.host, "*");
    assert_eq!(m.port, 6432);
    assert_eq!(m.unix_socket_dir, PathBuf::from("/run/pgcorral"));
    assert_eq!(m.pipeline, PipelineKind::Transaction);
    assert_eq!(m.max_connections, 10000);
    assert_eq!(m.blocking_timeout, Duration::ZERO);
    assert_eq!(m.idle_timeout, Duration::from_secs(300));
    assert_eq!(m.max_connection_age, Duration::from_secs(86400));
    assert_eq!(m.validation, Validation::Background);
    assert_eq!(m.authentication_timeout, Duration::from_millis(250));
    assert_eq!(m.log_type, LogType::File);
    assert_eq!(m.log_level, LogLevel::Debug);
    assert_eq!(m.log_path, Some(PathBuf::from("/var/log/pgcorral.log")));
    assert_eq!((m.management, m.metrics), (2346, 2347));
    // Sorted by name, not file order.
    let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    assert!(config.servers[1].is_unix_socket());
    assert_eq!(config.servers[1].port, 5433);
    assert_eq!(config.primary_server().name, "alpha");
}

#[test]
fn durations_in_the_file() {
    let cases = [
        ("0", Duration::ZERO),
        ("45", Duration::from_secs(45)),
        ("\"0\"", Duration::ZERO),
        ("\"30\"", Duration::from_secs(30)),
        ("\"30s\"", Duration::from_secs(30)),
        ("\"5m\"", Duration::from_secs(300)),
        ("\"2h\"", Duration::from_secs(7200)),
        ("\"1d\"", Duration::from_secs(86400)),
        ("\"250ms\"", Duration::from_millis(250)),
    ];
    for (value, expected) in cases {
        let text = format!("[pgcorral]\nblocking_timeout = {value}\n[server.a]\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.main.blocking_timeout, expected, "{value}");
    }
}

#[test]
fn bad_duration_names_the_key_and_line() {
    let text = "[pgcorral]\nport = 1\nidle_timeout = \"5 minutes\"\n[server.a]\n";
    let (line, column, message) = parse_position(text);
    assert_eq!((line, column), (3, 16));
    assert!(message.starts_with("idle_timeout: "), "{message}");
    assert!(message.contains("5 minutes"), "{message}");
    let shown = parse_err(text).to_string();
    assert!(
        shown.starts_with("<config>:3:16: idle_timeout: "),
        "{shown}"
    );

    let (_, _, message) = parse_position("[pgcorral]\nblocking_timeout = -3\n[server.a]\n");
    assert!(message.starts_with("blocking_timeout: "), "{message}");
    let (_, _, message) = parse_position("[pgcorral]\nblocking_timeout = 1.5\n[server.a]\n");
    assert!(message.starts_with("blocking_timeout: "), "{message}");
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = "[pgcorral]\nport = 2345\n\n[server.a]\nport = 5432\n\nbogus = 1\n";
    let (line, column, message) = parse_position(text);
    assert_eq!((line, column), (7, 1));
    assert!(message.contains("unknown field `bogus`"), "{message}");
    let shown = parse_err(text).to_string();
    assert!(
        shown.starts_with("<config>:7:1: unknown field `bogus`"),
        "{shown}"
    );

    let (line, _, message) =
        parse_position("[pgcorral]\nport = 1\n  max_conections = 5\n[server.a]\n");
    assert_eq!(line, 3);
    assert!(message.contains("`max_conections`"), "{message}");

    let (line, _, message) = parse_position(
        "[server.a]\n[[limit]]\ndatabase = \"d\"\nuser = \"u\"\nmax_size = 1\nmaxsize = 2\n",
    );
    assert_eq!(line, 6);
    assert!(message.contains("`maxsize`"), "{message}");

    let (line, _, message) = parse_position("[pgagroal]\nport = 1\n[server.a]\n");
    assert_eq!(line, 1);
    assert!(message.contains("`pgagroal`"), "{message}");
}

#[test]
fn bad_enum_value() {
    let text = "[pgcorral]\npipeline = \"fast\"\n[server.a]\n";
    let (line, column, message) = parse_position(text);
    assert_eq!((line, column), (2, 12));
    assert!(message.starts_with("pipeline: "), "{message}");
    assert!(message.contains("`fast`"), "{message}");
    assert!(message.contains("`transaction`"), "{message}");

    for (key, value) in [
        ("validation", "\"sometimes\""),
        ("log_type", "\"journald\""),
        ("log_level", "\"loud\""),
        ("log_level", "3"),
    ] {
        let text = format!("[pgcorral]\n{key} = {value}\n[server.a]\n");
        let (line, _, message) = parse_position(&text);
        assert_eq!(line, 2, "{key}");
        assert!(message.starts_with(&format!("{key}: ")), "{message}");
    }
}

#[test]
fn log_level_aliases() {
    for (text, level) in [
        ("fatal", LogLevel::Error),
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("info", LogLevel::Info),
        ("INFO", LogLevel::Info),
        ("debug", LogLevel::Debug),
        ("debug1", LogLevel::Debug),
        ("debug5", LogLevel::Debug),
        ("trace", LogLevel::Trace),
    ] {
        assert_eq!(text.parse::<LogLevel>(), Ok(level), "{text}");
    }
    assert_eq!(LogLevel::Debug.to_filter(), log::LevelFilter::Debug);
    assert_eq!(LogLevel::Error.to_filter(), log::LevelFilter::Error);
    assert_eq!(LogLevel::Trace.as_str(), "trace");
    assert_eq!(PipelineKind::Session.to_string(), "session");
}

#[test]
fn syntax_error_has_position() {
    let (line, _, _) = parse_position("[pgcorral]\nport = \n[server.a]\n");
    assert_eq!(line, 2);
    let (line, _, message) = parse_position("[pgcorral]\nport = 70000\n[server.a]\n");
    assert_eq!(line, 2);
    assert_eq!(
        message,
        "port: invalid value: integer `70000`, expected an integer from 0 to 65535"
    );
    // Multi-line toml messages become one line.
    let (line, column, message) = parse_position("[server.a\n");
    assert_eq!((line, column), (1, 10));
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn rule_at_least_one_server() {
    let (key, line, message) = invalid("[pgcorral]\nport = 1\n");
    assert_eq!(key, "server");
    assert_eq!(line, None);
    assert!(message.contains("[server.NAME]"));
    let shown = parse_err("").to_string();
    assert!(shown.starts_with("<config>: server: "), "{shown}");
}

#[test]
fn rule_one_primary() {
    let text = "[server.a]\nprimary = true\n\n[server.b]\nport = 5433\nprimary = true\n";
    let (key, line, message) = invalid(text);
    assert_eq!(key, "server.b.primary");
    assert_eq!(line, Some(6));
    assert!(message.contains("server.a"), "{message}");
}

#[test]
fn rule_background_interval() {
    let text = "[pgcorral]\nbackground_interval = 0\n[server.a]\n";
    let (key, line, _) = invalid(text);
    assert_eq!((key.as_str(), line), ("background_interval", Some(2)));
    let text = "[pgcorral]\nbackground_interval = \"250ms\"\n[server.a]\n";
    assert_eq!(
        Config::from_toml(text).unwrap().main.background_interval,
        Duration::from_millis(250)
    );
}

#[test]
fn rule_max_connections() {
    for value in [0, 10001] {
        let text = format!("[pgcorral]\nport = 1\nmax_connections = {value}\n[server.a]\n");
        let err = parse_err(&text);
        assert_eq!(
            err.to_string(),
            "<config>:3: max_connections: must be between 1 and 10000"
        );
    }
    for value in [1, 10000] {
        let text = format!("[pgcorral]\nmax_connections = {value}\n[server.a]\n");
        assert!(Config::from_toml(&text).is_ok());
    }
}

#[test]
fn rule_max_clients() {
    let text = "[pgcorral]\nmax_clients = 0\n[server.a]\n";
    let (key, line, _) = invalid(text);
    assert_eq!((key.as_str(), line), ("max_clients", Some(2)));
    assert_eq!(
        Config::from_toml("[server.a]\n").unwrap().main.max_clients,
        1000
    );
    let text = "[pgcorral]\nmax_clients = 3\n[server.a]\n";
    assert_eq!(Config::from_toml(text).unwrap().main.max_clients, 3);
}

#[test]
fn rule_workers() {
    let main = Config::from_toml("[server.a]\n").unwrap().main;
    assert_eq!(
        (
            main.worker_max_clients,
            main.workers_min_spare,
            main.workers_max_spare
        ),
        (10_000, 5, 10)
    );
    let text = "[pgcorral]\nworker_max_clients = 0\n[server.a]\n";
    let (key, line, _) = invalid(text);
    assert_eq!((key.as_str(), line), ("worker_max_clients", Some(2)));
    let text = "[pgcorral]\nworkers_min_spare = 4\nworkers_max_spare = 3\n[server.a]\n";
    let (key, line, _) = invalid(text);
    assert_eq!((key.as_str(), line), ("workers_max_spare", Some(3)));
    // No spares at all, and one client per worker: fork per client.
    let text = "[pgcorral]\nworker_max_clients = 1\nworkers_min_spare = 0\nworkers_max_spare = 0\n[server.a]\n";
    assert!(Config::from_toml(text).is_ok());
    let c = Config::from_toml("[server.a]\n").unwrap();
    assert!(c.with_setting("workers_min_spare", "11").is_err());
    let n = c.with_setting("workers_max_spare", "20").unwrap();
    assert_eq!(n.main.workers_max_spare, 20);
}

#[test]
fn rule_ports_non_zero() {
    // Listening on port 0 asks the kernel for a free port; connecting to
    // a server on port 0 means nothing.
    let text = "[pgcorral]\n\nport = 0\n[server.a]\n";
    assert_eq!(Config::from_toml(text).unwrap().main.port, 0);
    let (key, line, _) = invalid("[pgcorral]\nport = 1\n[server.a]\nport = 0\n");
    assert_eq!((key.as_str(), line), ("server.a.port", Some(4)));
}

#[test]
fn rule_limits() {
    let base = "[server.a]\n[[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 5\n";
    let (key, line, message) =
        invalid("[server.a]\n[[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 0\n");
    assert_eq!((key.as_str(), line), ("limit.max_size", Some(5)));
    assert!(message.contains("at least 1"), "{message}");

    let (key, line, message) = invalid(&format!("{base}initial_size = 6\n"));
    assert_eq!((key.as_str(), line), ("limit.initial_size", Some(6)));
    assert!(message.contains("max_size (5)"), "{message}");

    let (key, line, _) = invalid(&format!("{base}min_size = 9\n"));
    assert_eq!((key.as_str(), line), ("limit.min_size", Some(6)));

    assert!(Config::from_toml(&format!("{base}initial_size = 5\nmin_size = 5\n")).is_ok());

    // The second rule is the broken one: its line, not the first's.
    let text = format!("{base}\n[[limit]]\ndatabase = \"db\"\nuser = \"all\"\nmax_size = 0\n");
    let (key, line, message) = invalid(&text);
    assert_eq!((key.as_str(), line), ("limit.max_size", Some(10)));
    assert!(message.contains("\"db\""), "{message}");

    // max_size has no default.
    let (line, _, message) =
        parse_position("[server.a]\n[[limit]]\ndatabase = \"d\"\nuser = \"u\"\n");
    assert_eq!(line, 2);
    assert_eq!(message, "limit: missing field `max_size`");
}

#[test]
fn rule_duplicate_limit() {
    let text = "[server.a]\n[[limit]]\ndatabase = \"d\"\nuser = \"u\"\nmax_size = 1\n[[limit]]\ndatabase = \"d\"\nuser = \"u\"\nmax_size = 2\n";
    let (key, line, message) = invalid(text);
    assert_eq!((key.as_str(), line), ("limit", Some(6)));
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn rule_log_path_for_file() {
    let text = "[pgcorral]\nport = 1\nlog_type = \"file\"\n[server.a]\n";
    let (key, line, message) = invalid(text);
    assert_eq!((key.as_str(), line), ("log_path", Some(3)));
    assert!(message.contains("log_type"), "{message}");
    let ok = "[pgcorral]\nlog_type = \"file\"\nlog_path = \"/tmp/x.log\"\n[server.a]\n";
    assert!(Config::from_toml(ok).is_ok());
}

#[test]
fn rule_host_non_empty() {
    let (key, line, _) = invalid("[pgcorral]\nhost = \"\"\n[server.a]\n");
    assert_eq!((key.as_str(), line), ("host", Some(2)));
    let (key, line, _) = invalid("[server.a]\nhost = \" \"\n");
    assert_eq!((key.as_str(), line), ("server.a.host", Some(2)));
}

#[test]
fn limit_for_precedence() {
    let text = r#"
[server.a]
[[limit]]
database = "all"
user = "all"
max_size = 1
[[limit]]
database = "shop"
user = "all"
max_size = 2
[[limit]]
database = "all"
user = "alice"
max_size = 3
[[limit]]
database = "shop"
user = "alice"
max_size = 4
"#;
    let config = Config::from_toml(text).unwrap();
    let index = |d: &str, u: &str| config.limit_for(d, u).map(|(i, rule)| (i, rule.max_size));
    assert_eq!(index("shop", "alice"), Some((3, 4)));
    assert_eq!(index("blog", "alice"), Some((2, 3)));
    assert_eq!(index("shop", "bob"), Some((1, 2)));
    assert_eq!(index("blog", "bob"), Some((0, 1)));

    // User-with-any-database beats database-with-any-user.
    let text = "[server.a]\n[[limit]]\ndatabase = \"shop\"\nuser = \"all\"\nmax_size = 2\n[[limit]]\ndatabase = \"all\"\nuser = \"alice\"\nmax_size = 3\n";
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.limit_for("shop", "alice").map(|(i, _)| i), Some(1));
    assert_eq!(config.limit_for("blog", "bob").map(|(i, _)| i), None);

    let config = Config::from_toml("[server.a]\n").unwrap();
    assert!(config.limit_for("x", "y").is_none());
}

#[test]
fn primary_server_choice() {
    let config = Config::from_toml("[server.b]\n[server.a]\nport = 5433\n").unwrap();
    assert_eq!(config.primary_server().name, "a");
    let config = Config::from_toml("[server.b]\nprimary = true\n[server.a]\n").unwrap();
    assert_eq!(config.primary_server().name, "b");
    let mut empty = config.clone();
    empty.servers.clear();
    assert_eq!(empty.primary_server().port, 5432);
}

#[test]
fn unimplemented_settings_listed() {
    let text = r#"
[pgcorral]
idle_timeout = "10m"
max_connection_age = 3600
validation = "foreground"
authentication_timeout = "10s"
management = 2346
metrics = 2347
[server.a]
[[limit]]
database = "all"
user = "all"
max_size = 5
initial_size = 1
[[limit]]
database = "x"
user = "all"
max_size = 5
min_size = 2
"#;
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.unimplemented_settings(), ["metrics"]);
    let config = Config::from_toml(
        "[pgcorral]\nvalidation = \"background\"\ndisconnect_client = 30\n[server.a]\n",
    )
    .unwrap();
    assert!(config.unimplemented_settings().is_empty());
    assert_eq!(config.main.disconnect_client, Duration::from_secs(30));
    // Explicit defaults are not reported.
    let text = "[pgcorral]\nidle_timeout = 0\nauthentication_timeout = \"5s\"\nvalidation = \"off\"\n[server.a]\n";
    assert!(Config::from_toml(text)
        .unwrap()
        .unimplemented_settings()
        .is_empty());
}

#[test]
fn load_sets_path_and_reports_io() {
    let dir = std::env::temp_dir().join(format!("pgcorral-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgcorral.toml");
    std::fs::write(&path, SAMPLE).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.path.as_deref(), Some(path.as_path()));

    std::fs::write(&path, "[pgcorral]\nmax_connections = 0\n[server.a]\n").unwrap();
    let shown = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        shown,
        format!(
            "{}:2: max_connections: must be between 1 and 10000",
            path.display()
        )
    );

    let missing = dir.join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(std::error::Error::source(&err).is_some());
    assert!(err.to_string().starts_with(&missing.display().to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

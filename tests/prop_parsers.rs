//! Property tests for the files an operator writes: the HBA file and the
//! configuration. Any text gives a result or an error that names the
//! problem, never a panic; what parses can be queried; and a value read
//! with `conf get` can be written back with `conf set` unchanged.

use std::net::IpAddr;

use pgcorral::auth::{ConnKind, Hba};
use pgcorral::config::keys::{LIMIT_KEYS, MAIN_KEYS, SERVER_KEYS};
use pgcorral::config::Config;
use proptest::prelude::*;

/// Words an HBA file is made of, valid and not, so that generated lines
/// reach the rule parser rather than stopping at the first word.
const HBA_WORDS: &[&str] = &[
    "local",
    "host",
    "hostssl",
    "hostnossl",
    "hostgssenc",
    "all",
    "sameuser",
    "samerole",
    "samegroup",
    "replication",
    "postgres",
    "+admins",
    "@users.txt",
    "db1,db2",
    "\"all\"",
    "\"quoted word\"",
    "/^re.*$",
    "127.0.0.1/32",
    "::1/128",
    "0.0.0.0/0",
    "10.0.0.0",
    "255.0.0.0",
    "fe80::1%eth0",
    "samehost",
    "samenet",
    "trust",
    "reject",
    "md5",
    "scram-sha-256",
    "password",
    "peer",
    "cert",
    "clientcert=verify-full",
    "#",
    "\\",
    ",",
    "\"",
    "",
    "1.2.3.4/33",
    "::/129",
    "host=",
    "local\tall",
];

/// A record that is mostly well-formed: each field is drawn from its
/// usual values, with now and then a word from anywhere.
fn hba_record() -> impl Strategy<Value = String> {
    fn field(usual: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        prop_oneof![
            6 => prop::sample::select(usual),
            1 => prop::sample::select(HBA_WORDS),
        ]
    }
    (
        field(&["local", "host", "hostssl", "hostnossl"]),
        field(&[
            "all",
            "postgres",
            "db1,db2",
            "sameuser",
            "replication",
            "\"all\"",
        ]),
        field(&["all", "postgres", "+admins", "/^u.*$", "a,b"]),
        field(&[
            "127.0.0.1/32",
            "::1/128",
            "0.0.0.0/0",
            "10.0.0.0 255.0.0.0",
            "all",
        ]),
        field(&["trust", "reject", "md5", "scram-sha-256", "password"]),
    )
        .prop_map(|(kind, db, user, addr, method)| {
            if kind == "local" {
                format!("{kind} {db} {user} {method}")
            } else {
                format!("{kind} {db} {user} {addr} {method}")
            }
        })
}

fn hba_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Raw text, control characters and all.
        "(?s).{0,400}",
        prop::collection::vec(hba_record(), 0..6).prop_map(|lines| lines.join("\n")),
        // Lines of HBA words, with continuations and comments.
        prop::collection::vec(
            (
                prop::collection::vec(prop::sample::select(HBA_WORDS), 0..7),
                prop::sample::select(vec!["\n", "\r\n", " \\\n", "\n#c\n", ""]),
            ),
            0..8,
        )
        .prop_map(|lines| {
            lines
                .into_iter()
                .map(|(words, end)| format!("{}{end}", words.join(" ")))
                .collect()
        }),
    ]
}

fn conn_kind() -> impl Strategy<Value = ConnKind> {
    prop_oneof![
        Just(ConnKind::Local),
        (any::<IpAddr>(), any::<bool>()).prop_map(|(addr, ssl)| ConnKind::Host { addr, ssl }),
    ]
}

/// Values of every TOML type and of the forms pgcorral's own parsers
/// (durations, sizes, enums, paths) accept or must refuse.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "5",
    "65535",
    "65536",
    "10000",
    "10001",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "nan",
    "inf",
    "true",
    "false",
    "\"\"",
    "\"*\"",
    "\"127.0.0.1\"",
    "\"localhost\"",
    "\"/tmp\"",
    "\"relative/path\"",
    "\"5s\"",
    "\"250ms\"",
    "\"1 minute\"",
    "\"2h\"",
    "\"3 days\"",
    "\"1w\"",
    "\"0\"",
    "\"-5s\"",
    "\"99999999999999999999s\"",
    "\"18446744073709551615ms\"",
    "\"5 parsecs\"",
    "\"10MB\"",
    "\"1 GiB\"",
    "\"10kB\"",
    "\"99999999999 TB\"",
    "\"x\"",
    "\"debug\"",
    "\"info\"",
    "\"loud\"",
    "\"file\"",
    "\"console\"",
    "\"syslog\"",
    "\"performance\"",
    "\"session\"",
    "\"transaction\"",
    "\"auto\"",
    "\"off\"",
    "\"foreground\"",
    "\"background\"",
    "[]",
    "[1, 2]",
    "{}",
    "\"\\u0000\"",
    "1979-05-27T07:32:00Z",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(VALUES).prop_map(str::to_string),
        1 => "[0-9]{1,25}",
        1 => "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "")),
    ]
}

/// A value of the kind `key` takes, mostly; sometimes anything.
fn value_for(key: &'static str) -> BoxedStrategy<String> {
    let usual: &'static [&'static str] = match key {
        "host" => &["\"127.0.0.1\"", "\"*\"", "\"localhost\"", "\"/tmp\""],
        "unix_socket_dir" | "log_path" => &["\"/tmp\"", "\"relative\""],
        "pipeline" => &[
            "\"performance\"",
            "\"session\"",
            "\"transaction\"",
            "\"auto\"",
        ],
        "validation" => &["\"off\"", "\"foreground\"", "\"background\""],
        "log_type" => &["\"console\"", "\"file\"", "\"syslog\""],
        "log_level" => &[
            "\"debug\"",
            "\"info\"",
            "\"warn\"",
            "\"error\"",
            "\"fatal\"",
        ],
        "log_connections" | "log_disconnections" | "primary" => &["true", "false"],
        "database" | "user" => &["\"all\"", "\"postgres\"", "\"db\""],
        "log_rotation_size" => &["0", "\"10MB\"", "\"1 GiB\"", "1048576"],
        k if k.ends_with("_file") => &["\"/nonexistent\""],
        k if k.ends_with("timeout")
            || k.ends_with("_age")
            || k.ends_with("_interval")
            || k == "disconnect_client" =>
        {
            &["0", "\"5s\"", "\"250ms\"", "\"2m\"", "30"]
        }
        _ => &["0", "1", "2", "5", "100", "5432", "10000"],
    };
    prop_oneof![
        3 => prop::sample::select(usual).prop_map(str::to_string),
        1 => value(),
    ]
    .boxed()
}

/// Distinct keys (TOML refuses a repeated one) with values.
fn assignments(keys: Vec<&'static str>, max: usize) -> impl Strategy<Value = String> {
    prop::sample::subsequence(keys.clone(), 0..max.min(keys.len()))
        .prop_flat_map(|chosen| {
            chosen
                .into_iter()
                .map(|k| value_for(k).prop_map(move |v| format!("{k} = {v}\n")))
                .collect::<Vec<_>>()
        })
        .prop_map(|lines| lines.concat())
}

/// A configuration file built from real keys with values of any type;
/// a repeated key or a bad value is as welcome as a good one.
fn config_text() -> impl Strategy<Value = String> {
    let main_keys: Vec<&'static str> = MAIN_KEYS.iter().map(|(k, _)| *k).chain(["bogus"]).collect();
    let server_keys: Vec<&'static str> = SERVER_KEYS.iter().copied().chain(["hots"]).collect();
    // database and user are required in a rule; most rules get them below.
    let limit_keys: Vec<&'static str> = LIMIT_KEYS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !["database", "user"].contains(k))
        .collect();
    (
        assignments(main_keys, 8),
        prop::collection::btree_map("[a-z]{1,3}", assignments(server_keys, 4), 0..3).prop_map(
            |mut servers| {
                // Mostly at least one server, which a valid file needs.
                if servers.len() != 2 {
                    servers.entry("a".to_string()).or_default();
                }
                servers
            },
        ),
        prop::collection::vec(assignments(limit_keys, 6), 0..3),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(main, servers, limits, with_header)| {
            let mut text = String::new();
            if with_header {
                text.push_str("[pgcorral]\n");
            }
            text.push_str(&main);
            for (name, keys) in servers {
                text.push_str(&format!("[server.{name}]\n{keys}"));
            }
            for (i, keys) in limits.iter().enumerate() {
                let who = if i == 2 {
                    ""
                } else {
                    "database = \"all\"\nuser = \"all\"\n"
                };
                text.push_str(&format!("[[limit]]\n{who}{keys}"));
            }
            text
        })
}

/// What a parsed configuration is asked by the daemon and the cli.
fn exercise(config: &Config) -> Result<(), TestCaseError> {
    let _ = config.primary_server();
    let _ = config.limit_for("postgres", "postgres");
    let _ = config.unimplemented_settings();
    let plan = config.reload_plan(config);
    prop_assert!(plan.applied.is_empty() && plan.needs_restart.is_empty());
    for setting in config.settings() {
        prop_assert_eq!(config.setting(&setting.key), Some(setting.clone()));
        if setting.reloadable {
            // `conf set KEY "$(conf get KEY)"` changes nothing.
            let again = config
                .with_setting(&setting.key, &setting.value)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", setting.key)))?;
            prop_assert_eq!(again.settings(), config.settings());
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_hba_text_parses_or_names_a_line(
        text in hba_text(),
        conn in conn_kind(),
        database in "[a-z+@]{0,8}",
        user in "[a-z+@]{0,8}",
    ) {
        match Hba::parse(&text, "pg_hba.conf") {
            Ok(hba) => {
                let _ = hba.find(conn, &database, &user);
                prop_assert!(hba.rules().len() <= text.lines().count());
            }
            Err(e) => prop_assert!(e.to_string().contains("pg_hba.conf"), "{}", e),
        }
    }

    #[test]
    fn any_config_text_parses_or_is_refused(text in "(?s).{0,300}") {
        if let Ok(config) = Config::from_toml(&text) {
            exercise(&config)?;
        }
    }

    #[test]
    fn generated_configs_parse_or_are_refused(text in config_text()) {
        match Config::from_toml(&text) {
            Ok(config) => exercise(&config)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// `conf set` with any value on any key: a new valid configuration or
    /// an error, never a panic.
    #[test]
    fn any_conf_set_is_applied_or_refused(
        key in prop_oneof![
            prop::sample::select(MAIN_KEYS.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()),
            prop::sample::select(vec!["limit.0.max_size", "limit.0.min_size", "limit.7.max_size",
                "server.a.port", "pgcorral.log_level", "nope"]).prop_map(str::to_string),
        ],
        value in prop_oneof![value(), "(?s).{0,30}"],
    ) {
        let base = Config::from_toml(
            "[pgcorral]\nport = 1\n[server.a]\n[[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 4\n",
        )
        .expect("the base configuration");
        if let Ok(config) = base.with_setting(&key, value.trim_matches('"')) {
            exercise(&config)?;
        }
    }
}

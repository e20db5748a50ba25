use super::*;

fn host(a: &str, ssl: bool) -> ConnKind {
    ConnKind::Host {
        addr: a.parse().unwrap(),
        ssl,
    }
}

fn parse(text: &str) -> Hba {
    Hba::parse(text, "test.conf").unwrap()
}

fn err(text: &str) -> String {
    Hba::parse(text, "test.conf").unwrap_err().to_string()
}

fn method(hba: &Hba, conn: ConnKind, db: &str, user: &str) -> Option<Method> {
    hba.find(conn, db, user).map(|r| r.method)
}

#[test]
fn local_records_match_only_unix_sockets() {
    let hba = parse("local all all trust\n");
    assert_eq!(
        method(&hba, ConnKind::Local, "db", "u"),
        Some(Method::Trust)
    );
    assert_eq!(method(&hba, host("127.0.0.1", false), "db", "u"), None);
}

#[test]
fn host_ssl_and_nossl_records() {
    let hba = parse(
        "hostssl   all all 0.0.0.0/0 scram-sha-256\n\
         hostnossl all all 0.0.0.0/0 md5\n\
         host      all all ::/0      password\n",
    );
    let m = |a, ssl| method(&hba, host(a, ssl), "db", "u");
    assert_eq!(m("10.0.0.1", true), Some(Method::ScramSha256));
    assert_eq!(m("10.0.0.1", false), Some(Method::Md5));
    assert_eq!(m("::1", true), Some(Method::Password));
    assert_eq!(m("::1", false), Some(Method::Password));
    assert_eq!(method(&hba, ConnKind::Local, "db", "u"), None);
}

#[test]
fn gssenc_records() {
    let hba = parse("hostgssenc all all all trust\nhostnogssenc all all all md5\n");
    assert_eq!(
        method(&hba, host("1.2.3.4", true), "d", "u"),
        Some(Method::Md5)
    );
}

#[test]
fn every_method_parses() {
    for (text, m) in [
        ("trust", Method::Trust),
        ("reject", Method::Reject),
        ("password", Method::Password),
        ("md5", Method::Md5),
        ("scram-sha-256", Method::ScramSha256),
        ("all", Method::All),
    ] {
        let hba = parse(&format!("host all all all {text}"));
        assert_eq!(hba.rules()[0].method, m);
        assert_eq!(m.as_str(), text);
    }
    let hba = parse("hostssl all all all cert clientcert=verify-full");
    assert_eq!(hba.rules()[0].method, Method::Cert);
    assert_eq!(
        hba.rules()[0].options,
        vec![("clientcert".to_string(), "verify-full".to_string())]
    );
}

#[test]
fn cidr_v4() {
    let hba = parse("host all all 192.168.1.0/24 md5\nhost all all 10.1.2.3/32 trust");
    let m = |a| method(&hba, host(a, false), "d", "u");
    assert_eq!(m("192.168.1.0"), Some(Method::Md5));
    assert_eq!(m("192.168.1.255"), Some(Method::Md5));
    assert_eq!(m("192.168.2.1"), None);
    assert_eq!(m("10.1.2.3"), Some(Method::Trust));
    assert_eq!(m("10.1.2.4"), None);
    // An IPv4 client on an IPv6 socket.
    assert_eq!(m("::ffff:192.168.1.7"), Some(Method::Md5));
    assert_eq!(m("::1"), None);
}

#[test]
fn cidr_host_bits_are_ignored() {
    let hba = parse("host all all 192.168.1.77/24 md5");
    assert_eq!(
        hba.rules()[0].address,
        AddressMatch::Net {
            addr: "192.168.1.0".parse().unwrap(),
            prefix: 24
        }
    );
    assert_eq!(
        method(&hba, host("192.168.1.3", false), "d", "u"),
        Some(Method::Md5)
    );
}

#[test]
fn cidr_v6() {
    let hba =
        parse("host all all fe80::/10 md5\nhost all all ::1/128 trust\nhost all all ::/0 reject");
    let m = |a| method(&hba, host(a, false), "d", "u");
    assert_eq!(m("fe80::1234:5678"), Some(Method::Md5));
    assert_eq!(m("febf:ffff::1"), Some(Method::Md5));
    assert_eq!(m("fec0::1"), Some(Method::Reject));
    assert_eq!(m("::1"), Some(Method::Trust));
    assert_eq!(m("2001:db8::1"), Some(Method::Reject));
    // An IPv6 rule never covers an IPv4 client.
    assert_eq!(m("127.0.0.1"), None);
}

#[test]
fn zero_prefix_matches_everything_of_its_family() {
    let hba = parse("host all all 0.0.0.0/0 md5");
    assert_eq!(
        method(&hba, host("255.255.255.255", false), "d", "u"),
        Some(Method::Md5)
    );
    assert_eq!(method(&hba, host("2001:db8::1", false), "d", "u"), None);
}

#[test]
fn address_and_mask_columns() {
    let hba = parse(
        "host all all 10.0.0.0 255.0.0.0 md5\n\
         host all all 2001:db8:: ffff:ffff:: trust\n\
         host all all 192.168.0.1 255.255.255.255 password",
    );
    let m = |a| method(&hba, host(a, false), "d", "u");
    assert_eq!(m("10.200.3.4"), Some(Method::Md5));
    assert_eq!(m("11.0.0.1"), None);
    assert_eq!(m("2001:db8:ffff::1"), Some(Method::Trust));
    assert_eq!(m("2001:db9::1"), None);
    assert_eq!(m("192.168.0.1"), Some(Method::Password));
    assert_eq!(m("192.168.0.2"), None);
    assert_eq!(
        hba.rules()[0].address,
        AddressMatch::Net {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8
        }
    );
}

#[test]
fn all_address() {
    let hba = parse("host all all all md5");
    assert_eq!(
        method(&hba, host("8.8.8.8", false), "d", "u"),
        Some(Method::Md5)
    );
    assert_eq!(
        method(&hba, host("2001::1", true), "d", "u"),
        Some(Method::Md5)
    );
}

#[test]
fn database_and_user_lists() {
    let hba = parse("host db1,db2, \"db 3\" alice,\"bob\" all md5\n");
    let m = |db, u| method(&hba, host("1.1.1.1", false), db, u);
    assert_eq!(m("db1", "alice"), Some(Method::Md5));
    assert_eq!(m("db2", "bob"), Some(Method::Md5));
    assert_eq!(m("db 3", "bob"), Some(Method::Md5));
    assert_eq!(m("db4", "alice"), None);
    assert_eq!(m("db1", "carol"), None);
    assert_eq!(m("DB1", "alice"), None, "names are case-sensitive");
}

#[test]
fn keywords_and_quoting() {
    let hba = parse(
        "local \"all\" \"all\" trust\n\
         local sameuser all md5\n\
         local replication all reject\n\
         local \"with \"\"quote\"\"\" x password\n",
    );
    assert_eq!(
        method(&hba, ConnKind::Local, "alice", "alice"),
        Some(Method::Md5)
    );
    // Quoted keywords are plain names.
    assert_eq!(
        method(&hba, ConnKind::Local, "all", "all"),
        Some(Method::Trust)
    );
    assert_eq!(method(&hba, ConnKind::Local, "db", "all"), None);
    // "replication" never matches a pooled client.
    assert_eq!(method(&hba, ConnKind::Local, "replication", "u"), None);
    assert_eq!(
        method(&hba, ConnKind::Local, "with \"quote\"", "x"),
        Some(Method::Password)
    );
}

#[test]
fn first_match_wins() {
    let hba = parse(
        "host all bob 10.0.0.0/8 reject\n\
         host all all 10.0.0.0/8 scram-sha-256\n\
         host all bob all trust\n",
    );
    let r = hba.find(host("10.1.1.1", false), "db", "bob").unwrap();
    assert_eq!((r.method, r.line), (Method::Reject, 1));
    let r = hba.find(host("10.1.1.1", false), "db", "alice").unwrap();
    assert_eq!((r.method, r.line), (Method::ScramSha256, 2));
    let r = hba.find(host("11.1.1.1", false), "db", "bob").unwrap();
    assert_eq!((r.method, r.line), (Method::Trust, 3));
    assert!(hba.find(host("11.1.1.1", false), "db", "alice").is_none());
}

#[test]
fn comments_blank_lines_and_continuations() {
    let hba = parse(
        "# a comment\n\
         \n   \t\n\
         local all all trust # trailing comment\n\
         host all \\\n  all 127.0.0.1/32 md5\r\n\
         host \"#notcomment\" all all md5\n",
    );
    assert_eq!(hba.rules().len(), 3);
    assert_eq!(hba.rules()[0].line, 4);
    assert_eq!(
        hba.rules()[1].line,
        5,
        "a continued record has its first line"
    );
    assert_eq!(hba.rules()[2].line, 7);
    assert_eq!(
        hba.rules()[2].databases,
        vec![NameMatch::Name("#notcomment".into())]
    );
    assert!(parse("").rules().is_empty());
}

#[test]
fn errors_name_file_and_line() {
    let cases = [
        (
            "local all all trust\nhots all all all md5",
            2,
            "invalid connection type \"hots\"",
        ),
        (
            "\n\nhost all all 10.0.0.0/8 md6",
            3,
            "invalid authentication method \"md6\"",
        ),
        ("host all all 10.0.0.0/33 md5", 1, "invalid CIDR mask"),
        ("host all all ::/129 md5", 1, "invalid CIDR mask"),
        ("host all all 10.0.0.0/x md5", 1, "invalid CIDR mask"),
        ("host all all 300.0.0.0/8 md5", 1, "invalid IP address"),
        (
            "host all all db.example.com md5",
            1,
            "host names are not supported",
        ),
        ("host all all 10.0.0.1 md5", 1, "invalid IP mask \"md5\""),
        ("host all all 10.0.0.1", 1, "end of line before netmask"),
        (
            "host all all 10.0.0.0 255.0.255.0 md5",
            1,
            "invalid IP mask",
        ),
        ("host all all 10.0.0.0 ffff:: md5", 1, "do not match"),
        (
            "host all all 10.0.0.0/8",
            1,
            "end of line before authentication method",
        ),
        ("host all all", 1, "end of line before IP address"),
        ("local all", 1, "end of line before role"),
        ("local", 1, "end of line before database"),
        ("local all all trust bogus", 1, "name=value"),
        ("local \"all all trust", 1, "unterminated quoted string"),
        ("local a,,b all trust", 1, "empty element"),
        (
            "local a, all trust",
            1,
            "end of line before authentication method",
        ),
        ("local a,\n", 1, "list ends with a comma"),
        ("local \"\" all trust", 1, "empty name"),
        (
            "local all +admins trust",
            1,
            "group membership is not supported",
        ),
        (
            "local all /^a.*$ trust",
            1,
            "regular expressions are not supported",
        ),
        (
            "local @dbs all trust",
            1,
            "@file inclusion is not supported",
        ),
        ("local samerole all trust", 1, "not supported"),
        ("host all all samenet trust", 1, "not supported"),
        (
            "local all all md5,trust",
            1,
            "multiple values given for authentication method",
        ),
        ("local all all cert", 1, "only supported on hostssl"),
        ("include other.conf", 1, "\"include\" is not supported"),
        (
            "local all all \"trust\"",
            1,
            "invalid authentication method",
        ),
    ];
    for (text, line, needle) in cases {
        let e = Hba::parse(text, "hba.conf").unwrap_err();
        let HbaError::Syntax {
            file,
            line: l,
            message,
        } = &e
        else {
            panic!("{text}: {e}");
        };
        assert_eq!(file, "hba.conf");
        assert_eq!(*l, line, "{text}: {e}");
        assert!(message.contains(needle), "{text}: {e}");
        assert!(e.to_string().starts_with(&format!("hba.conf:{line}: ")));
    }
    assert!(err("local all all trust\nlocal").starts_with("test.conf:2: "));
}

#[test]
fn load_reads_a_file_and_reports_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgcorral_hba.conf");
    std::fs::write(&path, "host all all 127.0.0.1/32 md5\nhost all all x md5\n").unwrap();
    let e = Hba::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2: invalid IP address \"x\" (host names are not supported; use CIDR notation)",
            path.display()
        )
    );
    std::fs::write(&path, "host all all 127.0.0.1/32 md5\n").unwrap();
    assert_eq!(Hba::load(&path).unwrap().rules().len(), 1);
    let missing = dir.path().join("missing.conf");
    let e = Hba::load(&missing).unwrap_err();
    assert!(matches!(e, HbaError::Io { .. }));
    assert!(e.to_string().contains("missing.conf"));
}

use super::*;
use proptest::prelude::*;

fn pin_reason(sql: &[u8]) -> Option<PinReason> {
    inspect(sql).pin
}

fn pins(sql: &str) -> bool {
    pin_reason(sql.as_bytes()).is_some()
}

fn changes(sql: &str) -> bool {
    inspect(sql.as_bytes()).settings
}

#[test]
fn temporary_objects_pin() {
    for sql in [
        "CREATE TEMP TABLE t (a int)",
        "create temporary table t as select 1",
        "CREATE LOCAL TEMP TABLE t ()",
        "CREATE GLOBAL TEMPORARY TABLE t ()",
        "create or replace temp view v as select 1",
        "CREATE TEMP SEQUENCE s",
        "SELECT 1 AS a INTO TEMP t",
        "select * into temporary table t from x",
        "WITH w AS (SELECT 1) SELECT * INTO LOCAL TEMP t FROM w",
        "(CREATE TEMP TABLE t ())",
    ] {
        assert_eq!(
            pin_reason(sql.as_bytes()),
            Some(PinReason::TempTable),
            "{sql}"
        );
    }
    for sql in [
        "CREATE TABLE temp (a int)",
        "CREATE UNLOGGED TABLE t ()",
        "SELECT * INTO t FROM x",
        "SELECT temp FROM t",
    ] {
        assert!(!pins(sql), "{sql}");
    }
}

#[test]
fn each_kind_pins() {
    let cases: &[(&str, PinReason)] = &[
        ("LISTEN chan", PinReason::Listen),
        ("select pg_advisory_lock(1)", PinReason::AdvisoryLock),
        ("SELECT PG_TRY_ADVISORY_LOCK(1, 2)", PinReason::AdvisoryLock),
        (
            "select pg_catalog.pg_advisory_lock_shared(7)",
            PinReason::AdvisoryLock,
        ),
        (
            "select \"pg_try_advisory_lock_shared\"(7)",
            PinReason::AdvisoryLock,
        ),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            PinReason::HoldCursor,
        ),
        (
            "declare c scroll cursor with hold for select 1",
            PinReason::HoldCursor,
        ),
        ("PREPARE p AS SELECT 1", PinReason::Prepare),
        ("LOAD 'auto_explain'", PinReason::Load),
    ];
    for (sql, want) in cases {
        assert_eq!(pin_reason(sql.as_bytes()).as_ref(), Some(want), "{sql}");
    }
}

#[test]
fn session_settings_are_changes_not_pins() {
    for sql in [
        "SET work_mem = '8MB'",
        "set session search_path to x",
        "SET myext.flag = on",
        "SET \"Work_Mem\" TO 1",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "RESET ALL",
        "RESET work_mem",
        "SET ROLE other",
        "SET SESSION AUTHORIZATION other",
        "RESET ROLE",
        "RESET SESSION AUTHORIZATION",
        "DISCARD ALL",
        "SELECT set_config('work_mem', '8MB', false)",
        "SELECT set_config('work_mem', '8MB', $1)",
        "SELECT set_config('a.b', f(1, 2), false)",
        "CALL p()",
        "DO $$BEGIN PERFORM set_config('a.b', 'c', false); END$$",
        "BEGIN; SELECT 1; SET work_mem = 1; COMMIT",
        "CREATE TEMP TABLE t AS SELECT set_config('a.b', 'c', false)",
    ] {
        assert!(changes(sql), "{sql}");
        assert!(!pins(sql) || sql.starts_with("CREATE TEMP"), "{sql}");
    }
    let both = inspect(b"SET work_mem = 1; LISTEN x; SET ROLE r");
    assert_eq!(both.pin, Some(PinReason::Listen));
    assert!(both.settings);
}

#[test]
fn qualified_names_are_noted() {
    let f = inspect(
        b"SET app.Tenant = 1; RESET \"App\".\"Other\"; SELECT set_config('app.user', 'x', false); \
          SELECT set_config('app.local', 'x', true); SET app.tenant = 2; SET work_mem = 1; \
          SELECT set_config('odd''.name', 'x', false); SET custom.my.qualified.guc = 'foo'",
    );
    assert!(f.settings);
    assert_eq!(
        f.custom,
        [
            "app.tenant",
            "app.other",
            "app.user",
            "custom.my.qualified.guc"
        ]
    );
}

#[test]
fn transaction_scoped_and_carried_state_does_not_pin() {
    for sql in [
        "SELECT pg_advisory_xact_lock(1)",
        "select pg_try_advisory_xact_lock_shared(1)",
        "SET LOCAL work_mem = '8MB'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
        "SELECT set_config('work_mem', '8MB', true)",
        "SELECT set_config('application_name', 'x', false)",
        "SET application_name = 'x'",
        "SET SESSION DateStyle TO ISO",
        "set TimeZone = 'UTC'",
        "SET TIME ZONE 'UTC'",
        "SET NAMES 'UTF8'",
        "RESET client_encoding",
        "DECLARE c CURSOR FOR SELECT 1",
        "PREPARE TRANSACTION 'gid'",
        "DISCARD PLANS",
        "DO $$BEGIN PERFORM 1; END$$",
        "UNLISTEN *",
        "SELECT pg_advisory_lock",
        "BEGIN; SELECT 1; COMMIT",
        "",
        ";;;",
    ] {
        assert_eq!(inspect(sql.as_bytes()), Findings::default(), "{sql}");
    }
}

#[test]
fn several_statements() {
    assert!(pins("BEGIN; SELECT 1; CREATE TEMP TABLE t (); COMMIT"));
    assert!(pins("select 1;listen x"));
    assert!(!pins("SELECT 'x; LISTEN y'; SELECT 2"));
}

#[test]
fn literals_comments_and_quoted_names_hide_keywords() {
    for sql in [
        "SELECT 'LISTEN x'",
        "SELECT 'it''s; LISTEN x'",
        "SELECT E'\\'; LISTEN x'",
        "SELECT $$; LISTEN x$$",
        "SELECT $tag$ $$; LISTEN x $tag$",
        "SELECT 1 -- ; LISTEN x",
        "SELECT 1 /* ; LISTEN x */",
        "SELECT 1 /* /* */ ; LISTEN x */",
        "SELECT \"pg_advisory_lock\" FROM t",
        "SELECT 1 AS \"x; LISTEN y\"",
        "SELECT U&'; LISTEN x'",
        "SELECT x'ff', b'01'",
        "SELECT a$$b; SELECT 1",
        "SELECT 'SET ROLE x'",
        "SELECT 1 -- RESET ALL",
    ] {
        assert_eq!(inspect(sql.as_bytes()), Findings::default(), "{sql}");
    }
    // Outside the literal it still counts.
    assert!(pins("SELECT E'\\\\'; LISTEN x"));
    assert!(pins("SELECT $1; LISTEN x"));
    assert!(pins("SELECT 1 /* /* */ */ ; LISTEN x"));
}

#[test]
fn unlexable_text_pins_only_on_a_telling_word() {
    assert_eq!(
        pin_reason(b"SELECT 'unterminated; LISTEN x"),
        Some(PinReason::Unlexable)
    );
    assert_eq!(
        inspect(b"SELECT 1 /* never closed SET"),
        Findings {
            pin: None,
            settings: true,
            ..Findings::default()
        }
    );
    assert_eq!(
        inspect(b"SELECT 1 /* never closed LOAD"),
        Findings {
            pin: Some(PinReason::Unlexable),
            settings: false,
            ..Findings::default()
        }
    );
    assert_eq!(inspect(b"SELECT 'unterminated"), Findings::default());
    assert_eq!(inspect(b"SELECT \"open"), Findings::default());
}

#[test]
fn query_and_parse_bodies() {
    assert_eq!(query_text(b"LISTEN x\0"), b"LISTEN x");
    assert_eq!(parse_query(b"s1\0LISTEN x\0\0\0"), Some(&b"LISTEN x"[..]));
    assert_eq!(parse_query(b"s1"), None);
    assert_eq!(query_text(b"LISTEN x"), b"LISTEN x", "no NUL: all of it");
    // The protocol's reader checks the whole Parse: a type count that the
    // OIDs do not fill is no statement the server would run.
    assert_eq!(parse_query(b"s1\0LISTEN x\0\0\x01"), None);
    assert_eq!(
        parse_query(b"s1\0LISTEN x\0\0\x01\0\0\0\x17"),
        Some(&b"LISTEN x"[..])
    );
}

const KEYWORDS: &[&str] = &[
    "LISTEN x",
    "CREATE TEMP TABLE t()",
    "SET work_mem = 1",
    "select pg_advisory_lock(1)",
    "PREPARE p AS SELECT 1",
    "LOAD 'x'",
    "SET ROLE r",
    "select set_config('a', 'b', false)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "RESET ALL",
    "; into temp",
    "CALL p()",
    "DISCARD ALL",
];

proptest! {
    /// The quick test that skips lexing never skips text that counts.
    #[test]
    fn skipping_the_lexer_loses_no_pin(
        parts in proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(KEYWORDS).prop_map(str::to_string),
                "[a-zA-Z_ ;(),.'\"$-]{0,12}",
            ],
            0..6,
        )
    ) {
        let sql = parts.concat();
        prop_assert_eq!(inspect(sql.as_bytes()), lexed(sql.as_bytes()), "{}", sql);
    }

    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = inspect(&bytes);
        let _ = parse_query(&bytes);
    }

    #[test]
    fn never_panics_on_sql_like_text(s in "[ -~\n]{0,200}") {
        let _ = inspect(s.as_bytes());
    }

    #[test]
    fn hidden_keywords_never_count(
        k in proptest::sample::select(KEYWORDS),
        filler in "[a-z0-9 ]{0,20}",
        how in 0usize..7,
    ) {
        let quoted = k.replace('\'', "''");
        let hidden = match how {
            0 => format!("SELECT '{filler}{quoted}'"),
            1 => format!("SELECT 1 -- {filler}{k}\n"),
            2 => format!("SELECT 1 /* {filler} /* {k} */ {k} */"),
            3 => format!("SELECT $q${filler}{k}$q$"),
            4 => format!("SELECT \"{}\" FROM t", k.replace('"', "\"\"")),
            5 => format!("SELECT E'{filler}\\'{quoted}'"),
            _ => format!("SELECT $${k}{filler}$$"),
        };
        prop_assert_eq!(inspect(hidden.as_bytes()), Findings::default(), "{}", hidden);
        // The same text outside the hiding place does count.
        let open = format!("{hidden}; {k}");
        prop_assert_ne!(inspect(open.as_bytes()), Findings::default(), "{}", open);
    }
}

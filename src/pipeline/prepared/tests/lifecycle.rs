//! Statements deallocated, evicted, closed and described; COPY through
//! Execute; asynchronous, unexplained and malformed messages; the helpers'
//! own pieces (SQL recognition, names, the hash).

use super::*;

#[test]
fn failed_discard_all_keeps_the_names() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s1", "select 1");
    let q = sn("select 1", &[]);
    c.send(&mut conn, &[query("BEGIN")]);
    c.recv(&mut conn, &[complete("BEGIN"), ready(b'T')]);
    c.send(&mut conn, &[query("DISCARD ALL")]);
    let refused = error("25001", "DISCARD ALL cannot run inside a transaction block");
    let (_, seen) = c.recv(&mut conn, &[refused.clone(), ready(b'E')]);
    assert_eq!(seen, all(&[refused, ready(b'E')]));
    assert!(c.rw.statements().contains(b"s1"));
    // The record was cleared when it was sent; the Close ahead of the
    // Parse makes re-preparing safe although the server still has it.
    let (to_server, _) = c.send(&mut conn, &[bind("", "s1"), sync()]);
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q),
            parse(&q, "select 1", &[]),
            bind("", &q),
            sync()
        ])
    );
}

#[test]
fn deallocate_of_a_name_is_answered_here() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "S_1", "select 1");
    let (to_server, to_client) = c.send(&mut conn, &[query("DEALLOCATE \"S_1\"")]);
    assert!(to_server.is_empty());
    assert_eq!(to_client, all(&[complete("DEALLOCATE"), ready(b'I')]));
    assert!(c.rw.statements().is_empty());
    assert!(conn.has(&sn("select 1", &[])), "other clients may use it");
    // Unquoted names fold to lower case, as in PostgreSQL.
    c.prepare(&mut conn, "s_2", "select 2");
    let (to_server, to_client) = c.send(&mut conn, &[query("deallocate prepare S_2;")]);
    assert!(to_server.is_empty());
    assert_eq!(to_client, all(&[complete("DEALLOCATE"), ready(b'I')]));
    // Names the client never prepared here are the server's business.
    let (to_server, _) = c.send(&mut conn, &[query("DEALLOCATE other")]);
    assert_eq!(to_server, all(&[query("DEALLOCATE other")]));
}

#[test]
fn evicted_statements_are_closed_when_the_transaction_is_over() {
    let mut conn = Conn::new(2);
    let mut c = Client::new();
    let (q1, q2, q3) = (
        sn("select 1", &[]),
        sn("select 2", &[]),
        sn("select 3", &[]),
    );
    let (to_server, to_client) = c.send(
        &mut conn,
        &[
            parse("a", "select 1", &[]),
            parse("b", "select 2", &[]),
            bind("", "a"),
            parse("c", "select 3", &[]), // full: b is the least recently used
            execute(""),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q1),
            parse(&q1, "select 1", &[]),
            close(b'S', &q2),
            parse(&q2, "select 2", &[]),
            bind("", &q1),
            close(b'S', &q3),
            parse(&q3, "select 3", &[]),
            execute(""),
            sync(),
        ])
    );
    assert!(to_client.is_empty());
    assert_eq!(conn.names(), [q1.clone(), q3.clone()]);
    let (housekeeping, seen) = c.recv(
        &mut conn,
        &[
            close_complete(),
            parse_complete(),
            close_complete(),
            parse_complete(),
            bind_complete(),
            close_complete(),
            parse_complete(),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        seen,
        all(&[
            parse_complete(),
            parse_complete(),
            bind_complete(),
            parse_complete(),
            complete("SELECT 1"),
            ready(b'I')
        ])
    );
    assert_eq!(housekeeping, all(&[close(b'S', &q2), sync()]));
    assert!(!c.rw.is_idle(), "the close is unanswered");
    let (more, seen) = c.recv(&mut conn, &[close_complete(), ready(b'I')]);
    assert!(
        more.is_empty() && seen.is_empty(),
        "housekeeping is invisible"
    );
    assert!(c.rw.is_idle());

    // b is still the client's: on this connection it is prepared again.
    let (to_server, _) = c.send(&mut conn, &[bind("", "b"), sync()]);
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q2),
            parse(&q2, "select 2", &[]),
            bind("", &q2),
            sync()
        ])
    );
}

#[test]
fn eviction_inside_a_transaction_waits_for_its_end() {
    let mut conn = Conn::new(1);
    let mut c = Client::new();
    let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));
    c.send(&mut conn, &[query("BEGIN")]);
    c.recv(&mut conn, &[complete("BEGIN"), ready(b'T')]);
    // A named portal from a, then b evicts a from the record.
    let (to_server, _) = c.send(
        &mut conn,
        &[
            parse("a", "select 1", &[]),
            bind("cur", "a"),
            parse("b", "select 2", &[]),
            execute("cur"),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q1),
            parse(&q1, "select 1", &[]),
            bind("cur", &q1),
            close(b'S', &q2),
            parse(&q2, "select 2", &[]),
            execute("cur"),
            sync()
        ])
    );
    let (housekeeping, _) = c.recv(
        &mut conn,
        &[
            close_complete(),
            parse_complete(),
            bind_complete(),
            close_complete(),
            parse_complete(),
            frame(b's', &[]),
            ready(b'T'),
        ],
    );
    assert!(housekeeping.is_empty(), "the portal may be fetched again");
    assert!(!c.rw.is_idle());
    let (to_server, _) = c.send(&mut conn, &[execute("cur"), sync()]);
    assert_eq!(to_server, all(&[execute("cur"), sync()]));
    let (housekeeping, _) = c.recv(&mut conn, &[complete("SELECT 1"), ready(b'T')]);
    assert!(housekeeping.is_empty());
    c.send(&mut conn, &[query("COMMIT")]);
    let (housekeeping, seen) = c.recv(&mut conn, &[complete("COMMIT"), ready(b'I')]);
    assert_eq!(seen, all(&[complete("COMMIT"), ready(b'I')]));
    assert_eq!(housekeeping, all(&[close(b'S', &q1), sync()]));
    c.recv(&mut conn, &[close_complete(), ready(b'I')]);
    assert!(c.rw.is_idle());
    assert_eq!(conn.names(), [q2]);
}

#[test]
fn statement_evicted_earlier_in_the_pipeline_is_kept_when_needed_again() {
    let mut conn = Conn::new(1);
    let mut c = Client::new();
    let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));
    let (to_server, _) = c.send(
        &mut conn,
        &[
            parse("a", "select 1", &[]),
            bind("", "a"),
            parse("b", "select 2", &[]), // evicts a from the record
            bind("p2", "a"),             // a is still on the server
            execute("p2"),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q1),
            parse(&q1, "select 1", &[]),
            bind("", &q1),
            close(b'S', &q2),
            parse(&q2, "select 2", &[]),
            bind("p2", &q1),
            execute("p2"),
            sync()
        ])
    );
    let (housekeeping, _) = c.recv(
        &mut conn,
        &[
            close_complete(),
            parse_complete(),
            bind_complete(),
            close_complete(),
            parse_complete(),
            bind_complete(),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(housekeeping, all(&[close(b'S', &q2), sync()]));
    assert_eq!(conn.names(), [q1]);
}

#[test]
fn close_of_a_statement_is_answered_here() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s1", "select 1");
    let q = sn("select 1", &[]);
    let (to_server, to_client) = c.send(
        &mut conn,
        &[close(b'S', "s1"), close(b'S', "never"), sync()],
    );
    assert_eq!(to_server, all(&[sync()]));
    assert_eq!(to_client, all(&[close_complete(), close_complete()]));
    assert!(conn.has(&q), "other clients may use it");
    let (_, seen) = c.recv(&mut conn, &[ready(b'I')]);
    assert_eq!(seen, all(&[ready(b'I')]));
    let (_, to_client) = c.send(&mut conn, &[bind("", "s1"), sync()]);
    assert_eq!(to_client, all(&[missing("s1")]));
    c.recv(&mut conn, &[ready(b'I')]);

    // Portals and the unnamed statement are the server's business.
    let (to_server, _) = c.send(&mut conn, &[close(b'P', "cur"), close(b'S', ""), sync()]);
    assert_eq!(
        to_server,
        all(&[close(b'P', "cur"), close(b'S', ""), sync()])
    );
    let (_, seen) = c.recv(
        &mut conn,
        &[close_complete(), close_complete(), ready(b'I')],
    );
    assert_eq!(
        seen,
        all(&[close_complete(), close_complete(), ready(b'I')])
    );
}

#[test]
fn duplicate_parse_fails_as_in_postgresql() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s1", "select 1");
    let (to_server, to_client) = c.send(
        &mut conn,
        &[parse("s1", "select 2", &[]), bind("", "s1"), sync()],
    );
    assert_eq!(to_server, all(&[sync()]));
    assert_eq!(
        to_client,
        all(&[error("42P05", "prepared statement \"s1\" already exists")])
    );
}

#[test]
fn server_saying_our_statement_is_missing_corrects_the_record() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s1", "select 1");
    let q = sn("select 1", &[]);
    // Someone ran SQL DEALLOCATE on our name behind the record's back.
    let (to_server, _) = c.send(&mut conn, &[bind("", "s1"), execute(""), sync()]);
    assert_eq!(to_server, all(&[bind("", &q), execute(""), sync()]));
    let gone = error(
        "26000",
        &format!("prepared statement \"{q}\" does not exist"),
    );
    let (_, seen) = c.recv(&mut conn, &[gone.clone(), ready(b'I')]);
    assert_eq!(seen, all(&[gone, ready(b'I')]));
    assert!(!conn.has(&q));
    let (to_server, _) = c.send(&mut conn, &[bind("", "s1"), execute(""), sync()]);
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q),
            parse(&q, "select 1", &[]),
            bind("", &q),
            execute(""),
            sync()
        ])
    );
}

#[test]
fn least_recently_used_client_name_is_forgotten() {
    let mut conn = Conn::new(8);
    let mut c = Client {
        rw: Rewriter::new(2, KEY),
    };
    c.prepare(&mut conn, "a", "select 1");
    c.prepare(&mut conn, "b", "select 2");
    c.send(&mut conn, &[bind("", "a"), sync()]);
    c.recv(&mut conn, &[bind_complete(), ready(b'I')]);
    c.prepare(&mut conn, "c", "select 3");
    assert_eq!(c.rw.statements().len(), 2);
    let (_, to_client) = c.send(&mut conn, &[bind("", "b"), sync()]);
    assert_eq!(to_client, all(&[missing("b")]));
    c.recv(&mut conn, &[ready(b'I')]);
    let (_, to_client) = c.send(&mut conn, &[bind("", "a"), bind("", "c"), sync()]);
    assert!(to_client.is_empty());
}

#[test]
fn asynchronous_messages_pass_wherever_they_arrive() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.send(
        &mut conn,
        &[
            parse("s1", "select 1", &[]),
            bind("", "s1"),
            execute(""),
            sync(),
        ],
    );
    let status = frame(b'S', &[z("TimeZone"), z("UTC")].concat());
    let notification = frame(b'A', &[vec![0, 0, 0, 7], z("chan"), z("")].concat());
    let (_, seen) = c.recv(
        &mut conn,
        &[
            notice(),
            close_complete(), // hidden
            status.clone(),
            parse_complete(),
            notification.clone(),
            bind_complete(),
            notice(),
            complete("SELECT 0"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        seen,
        all(&[
            notice(),
            status,
            parse_complete(),
            notification,
            bind_complete(),
            notice(),
            complete("SELECT 0"),
            ready(b'I')
        ])
    );
    assert!(c.rw.is_idle());
}

#[test]
fn describe_of_statements_and_portals() {
    let (mut one, mut two) = (Conn::new(8), Conn::new(8));
    let mut c = Client::new();
    c.prepare(&mut one, "s1", "select 1");
    let q = sn("select 1", &[]);
    let (to_server, _) = c.send(
        &mut two,
        &[
            describe(b'S', "s1"),
            describe(b'P', ""),
            parse("", "select 2", &[]),
            describe(b'S', ""),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q),
            parse(&q, "select 1", &[]),
            describe(b'S', &q),
            describe(b'P', ""),
            parse("", "select 2", &[]),
            describe(b'S', ""),
            sync()
        ])
    );
    let (_, seen) = c.recv(
        &mut two,
        &[
            close_complete(),
            parse_complete(),
            parameters(),
            row_description(),
            no_data(),
            parse_complete(),
            parameters(),
            no_data(),
            ready(b'I'),
        ],
    );
    assert_eq!(
        seen,
        all(&[
            parameters(),
            row_description(),
            no_data(),
            parse_complete(),
            parameters(),
            no_data(),
            ready(b'I')
        ])
    );
    let (to_server, to_client) = c.send(&mut two, &[describe(b'S', "zz"), sync()]);
    assert_eq!(to_server, all(&[sync()]));
    assert_eq!(to_client, all(&[missing("zz")]));
}

#[test]
fn copy_out_through_execute_passes_through() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "out", "copy t to stdout");
    c.send(&mut conn, &[bind("", "out"), execute(""), sync()]);
    let (_, seen) = c.recv(&mut conn, &[bind_complete(), frame(b'H', &[0, 0, 0])]);
    assert_eq!(seen, all(&[bind_complete(), frame(b'H', &[0, 0, 0])]));
    assert_eq!(
        c.rw.server_route(b'd'),
        Route::Stream,
        "COPY data need not be held"
    );
    assert_eq!(c.rw.server_route(b'D'), Route::Stream);
    assert_eq!(c.rw.server_route(b'C'), Route::Whole);
    let rows = [copy_data(b"1\n"), copy_data(b"2\n"), frame(b'c', &[])];
    let (_, seen) = c.recv(&mut conn, &rows);
    assert_eq!(seen, all(&rows));
    let (_, seen) = c.recv(&mut conn, &[complete("COPY 2"), ready(b'I')]);
    assert_eq!(seen, all(&[complete("COPY 2"), ready(b'I')]));
    assert!(c.rw.is_idle());
}

#[test]
fn copy_in_through_execute_with_the_sync_the_server_ignores() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "in", "copy t from stdin");
    let q = sn("copy t from stdin", &[]);
    // As libpq and tokio-postgres do: Sync right after Execute, then the
    // data, CopyDone and another Sync; only the second is answered.
    let (to_server, _) = c.send(&mut conn, &[bind("", "in"), execute(""), sync()]);
    assert_eq!(to_server, all(&[bind("", &q), execute(""), sync()]));
    let (_, seen) = c.recv(&mut conn, &[bind_complete(), frame(b'G', &[0, 0, 0])]);
    assert_eq!(seen, all(&[bind_complete(), frame(b'G', &[0, 0, 0])]));
    assert_eq!(c.rw.client_route(b'd'), Route::Stream);
    let data = [copy_data(b"1\n"), copy_data(b"2\n"), copy_done(), sync()];
    let (to_server, to_client) = c.send(&mut conn, &data);
    assert_eq!(to_server, all(&data));
    assert!(to_client.is_empty());
    let (_, seen) = c.recv(&mut conn, &[complete("COPY 2"), ready(b'I')]);
    assert_eq!(seen, all(&[complete("COPY 2"), ready(b'I')]));
    assert!(c.rw.is_idle(), "the ignored Sync is owed nothing");

    // The same with everything sent before the server answered.
    let all_at_once = [
        bind("", "in"),
        execute(""),
        sync(),
        copy_data(b"3\n"),
        copy_done(),
        sync(),
    ];
    c.send(&mut conn, &all_at_once);
    c.recv(
        &mut conn,
        &[
            bind_complete(),
            frame(b'G', &[0, 0, 0]),
            complete("COPY 1"),
            ready(b'I'),
        ],
    );
    assert!(c.rw.is_idle());
}

#[test]
fn unsynced_extended_messages_keep_the_connection() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.send(&mut conn, &[parse("", "select 1", &[]), flush()]);
    c.recv(&mut conn, &[parse_complete()]);
    assert!(!c.rw.is_idle(), "the client's implicit transaction is open");
    c.send(&mut conn, &[sync()]);
    c.recv(&mut conn, &[ready(b'I')]);
    assert!(c.rw.is_idle());
    assert_eq!(c.rw.transaction_status(), b'I');
}

#[test]
fn unexplained_server_message_is_an_error() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let e =
        c.rw.server_message(b'2', &[], &mut conn, &mut to_server, &mut to_client)
            .unwrap_err();
    assert_eq!(e.sqlstate(), "08P01");
    assert!(matches!(e, PreparedError::Server(_)));
}

#[test]
fn malformed_messages_are_protocol_violations() {
    let mut conn = Conn::new(8);
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let cases: [(u8, &[u8]); 7] = [
        (b'P', b"name-without-end"),
        (b'P', b"n\0select 1\0"),           // no type count
        (b'P', b"n\0select 1\0\0\x01\0\0"), // count says one OID, half given
        (b'B', b"portal\0stmt-without-end"),
        (b'D', b"X\0"),
        (b'C', b"S"),
        (b'Q', b"select 1"),
    ];
    for (tag, body) in cases {
        let mut rw = Rewriter::new(10, KEY);
        let e = rw
            .client_message(tag, body, &mut conn, &mut to_server, &mut to_client)
            .unwrap_err();
        assert_eq!(e.sqlstate(), "08P01", "{} {body:?}", tag as char);
        assert!(rw.is_idle() && rw.statements().is_empty());
    }
    assert!(to_server.is_empty() && to_client.is_empty());
}

#[test]
fn too_many_requests_outstanding_is_refused() {
    let mut conn = Conn::new(8);
    let mut rw = Rewriter::new(10, KEY);
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for _ in 0..MAX_OUTSTANDING {
        rw.client_message(b'S', &[], &mut conn, &mut to_server, &mut to_client)
            .unwrap();
    }
    let e = rw
        .client_message(b'S', &[], &mut conn, &mut to_server, &mut to_client)
        .unwrap_err();
    assert_eq!(e.sqlstate(), "54000");
    assert_eq!(rw.backlog(), MAX_OUTSTANDING);
}

#[test]
fn simple_query_sql_recognised() {
    let cases: [(&[u8], Sql); 12] = [
        (b"DEALLOCATE ALL", Sql::ForgetAll),
        (b"deallocate prepare all ;;", Sql::ForgetAll),
        (b"\n DISCARD  all;\n", Sql::ForgetAll),
        (b"DEALLOCATE s1", Sql::Deallocate(b"s1".to_vec())),
        (b"DEALLOCATE S1", Sql::Deallocate(b"s1".to_vec())),
        (b"DEALLOCATE \"S\"\"1\"", Sql::Deallocate(b"S\"1".to_vec())),
        (b"DEALLOCATE \"all\"", Sql::Deallocate(b"all".to_vec())),
        (b"DEALLOCATE prepare", Sql::Deallocate(b"prepare".to_vec())),
        (
            b"DEALLOCATE PREPARE \"x y\"",
            Sql::Deallocate(b"x y".to_vec()),
        ),
        (b"DISCARD PLANS", Sql::Other),
        (b"DEALLOCATE a; DEALLOCATE b", Sql::Other),
        (b"/* c */ DISCARD ALL", Sql::Other),
    ];
    for (sql, want) in cases {
        assert_eq!(classify(sql), want, "{}", String::from_utf8_lossy(sql));
    }
}

#[test]
fn siphash_matches_the_reference() {
    // Reference vector of the SipHash paper: key 00..0f, empty input.
    let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
    let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
    assert_eq!(siphash24(k0, k1, b""), 0x726f_db47_dd0e_0e31);
    // The standard library's (deprecated, but still SipHash-2-4).
    let data: Vec<u8> = (0u8..=80).collect();
    for len in 0..data.len() {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(KEY[0], KEY[1]);
        std::hash::Hasher::write(&mut h, &data[..len]);
        let want = std::hash::Hasher::finish(&h);
        assert_eq!(
            siphash24(KEY[0], KEY[1], &data[..len]),
            want,
            "length {len}"
        );
    }
}

#[test]
fn server_names_round_trip() {
    assert_eq!(server_name(0xab), "pgc_00000000000000ab");
    assert_eq!(server_name_hash("pgc_00000000000000ab"), Some(0xab));
    assert_eq!(server_name_hash(&server_name(u64::MAX)), Some(u64::MAX));
    for bad in [
        "pgc_00000000000000AB",
        "pgc_ab",
        "xyz_00000000000000ab",
        "pgc_+000000000000000",
    ] {
        assert_eq!(server_name_hash(bad), None, "{bad}");
    }
}

#[test]
fn texts_are_stored_once() {
    let mut names = ClientStatements::new(10);
    let a = names.intern(KEY, &text("select 1", &[])).unwrap();
    let b = names.intern(KEY, &text("select 1", &[])).unwrap();
    assert!(Rc::ptr_eq(&a, &b));
    names.insert(b"x", a);
    names.insert(b"y", b);
    assert_eq!(names.len(), 2);
    assert_eq!(names.texts.len(), 1);
}

#[test]
fn the_unnamed_statement_follows_the_client_to_another_connection() {
    let (mut one, mut two) = (Conn::new(8), Conn::new(8));
    let mut c = Client::new();
    c.send(&mut one, &[parse("", "select $1", &[]), sync()]);
    c.recv(&mut one, &[parse_complete(), ready(b'I')]);
    c.rw.attached();
    let (to_server, _) = c.send(&mut two, &[bind("", ""), execute(""), sync()]);
    assert_eq!(
        to_server,
        all(&[
            parse("", "select $1", &[]),
            bind("", ""),
            execute(""),
            sync()
        ])
    );
    // The added Parse's answer is not the client's.
    let (_, seen) = c.recv(
        &mut two,
        &[
            parse_complete(),
            bind_complete(),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        seen,
        all(&[bind_complete(), complete("SELECT 1"), ready(b'I')])
    );
    // Now the connection has it.
    let (to_server, _) = c.send(&mut two, &[bind("", ""), sync()]);
    assert_eq!(to_server, all(&[bind("", ""), sync()]));
}

#[test]
fn a_bind_of_an_unnamed_statement_never_parsed_is_refused_here() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.rw.attached();
    let (to_server, to_client) = c.send(&mut conn, &[bind("", ""), execute(""), sync()]);
    assert_eq!(to_server, all(&[sync()]));
    assert_eq!(to_client[0].0, 'E');
}

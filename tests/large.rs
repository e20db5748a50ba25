//! Big messages pass through intact; absurd or obsolete ones are refused
//! quickly, with an error, and leave the pool unharmed.

mod common;

use std::time::Duration;

use common::{
    read_answer, startup_message, wait_until, write_tolerant, Answer, Client, Pgcorral, Postgres,
};

const MB: usize = 1024 * 1024;

fn big_query_and_big_result(client: &mut Client, how: &str) {
    // 1 MB of query text, with a marker at each end so that a truncated or
    // reordered forward is noticed, not just a short one.
    let text = format!("<{}>", "x".repeat(MB - 2));
    let sql = format!(
        "with t(v) as (select $${text}$$) select length(v), left(v, 2), right(v, 2) from t"
    );
    let row = client
        .query_one(sql.as_str(), &[])
        .unwrap_or_else(|e| panic!("{how}: 1 MB query text: {e}"));
    assert_eq!(
        row.get::<_, i32>(0),
        MB as i32,
        "{how}: length seen by the server"
    );
    assert_eq!(row.get::<_, String>(1), "<x", "{how}: start of the text");
    assert_eq!(row.get::<_, String>(2), "x>", "{how}: end of the text");

    // The same through the simple query protocol (one 'Q' message).
    let msgs = client
        .simple_query(&format!("select length($${text}$$)"))
        .unwrap_or_else(|e| panic!("{how}: 1 MB simple query: {e}"));
    let length = msgs
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row from length()");
    assert_eq!(
        length,
        MB.to_string(),
        "{how}: length in the simple protocol"
    );

    let row = client
        .query_one("select repeat('x', 10*1024*1024) || 'end'", &[])
        .unwrap_or_else(|e| panic!("{how}: 10 MB result: {e}"));
    let big: String = row.get(0);
    assert_eq!(big.len(), 10 * MB + 3, "{how}: size of the 10 MB result");
    assert!(big.ends_with("xend"), "{how}: end of the 10 MB result");
    assert!(
        big.bytes().take(10 * MB).all(|b| b == b'x'),
        "{how}: content of the 10 MB result"
    );

    // And the session is still in step afterwards.
    let v: i32 = client
        .query_one("select 5", &[])
        .unwrap_or_else(|e| panic!("{how}: query after the big ones: {e}"))
        .get(0);
    assert_eq!(v, 5, "{how}: answer after the big messages");
}

#[test]
fn large_query_and_result_pass_intact() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    big_query_and_big_result(&mut pc.connect(), "TCP");
    big_query_and_big_result(&mut pc.connect_unix(), "Unix socket");
}

fn pool_still_serves(pc: &Pgcorral) {
    for i in 0..3 {
        let mut c = pc.connect();
        let v: i32 = c
            .query_one("select $1::int", &[&i])
            .unwrap_or_else(|e| panic!("client {i} after the bad packet: {e}"))
            .get(0);
        assert_eq!(v, i);
    }
    let mut u = pc.connect_unix();
    u.simple_query("select 1")
        .expect("Unix-socket client after the bad packet");
}

#[test]
fn huge_startup_length_is_refused_without_hanging() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    // A served client first, so the pool has a connection to harm.
    pc.connect()
        .simple_query("select 1")
        .expect("a first client");

    for how in ["TCP", "Unix socket"] {
        // Length 0x7fffffff: a pooler that allocates before checking would
        // try to take 2 GB, or sit waiting for 2 GB that never come.
        let packet = [0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0];
        let answer = if how == "TCP" {
            let mut s = pc.tcp_stream();
            write_tolerant(&mut s, &packet);
            read_answer(&mut s)
        } else {
            let mut s = pc.unix_stream();
            write_tolerant(&mut s, &packet);
            read_answer(&mut s)
        };
        eprintln!("{how}: huge length answered with {answer:?}");
        match &answer {
            Answer::Closed => {}
            Answer::Error(_) => assert_eq!(
                answer.sqlstate(),
                Some("08P01"),
                "{how}: huge length: expected protocol_violation, got {answer:?}"
            ),
            Answer::ErrorV2(text) => {
                panic!("{how}: huge length: a protocol 2.0 error to a 3.0 client: {text:?}")
            }
            Answer::Other(tag) => panic!(
                "{how}: huge length: expected an ErrorResponse or a close, got message {:?}",
                *tag as char
            ),
        }
    }

    // The bad clients' workers go away instead of waiting for the rest.
    assert!(
        wait_until(Duration::from_secs(30), || pc.workers().is_empty()),
        "workers of the bad clients still alive: {:?}",
        pc.workers()
    );
    pool_still_serves(&pc);
}

#[test]
fn protocol_2_startup_gets_an_error() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");

    // A protocol 2.0 StartupPacket: fixed 296 bytes, version 0x00020000,
    // then database[64], user[32], options[64], unused[64], tty[64].
    let mut packet = Vec::with_capacity(296);
    packet.extend_from_slice(&296i32.to_be_bytes());
    packet.extend_from_slice(&0x0002_0000i32.to_be_bytes());
    for (value, width) in [
        ("postgres", 64),
        ("postgres", 32),
        ("", 64),
        ("", 64),
        ("", 64),
    ] {
        let mut field = value.as_bytes().to_vec();
        field.resize(width, 0);
        packet.extend_from_slice(&field);
    }
    assert_eq!(packet.len(), 296);

    let mut s = pc.tcp_stream();
    write_tolerant(&mut s, &packet);
    let answer = read_answer(&mut s);
    eprintln!("protocol 2.0 startup answered with {answer:?}");
    // PostgreSQL itself answers in the client's protocol (a 2.0 error
    // text); a pooler may instead send a v3 ErrorResponse with 0A000
    // (feature_not_supported) or 08P01 (protocol_violation).
    match &answer {
        Answer::ErrorV2(text) => assert!(
            text.contains("protocol"),
            "protocol 2.0 startup: the error does not say why: {text:?}"
        ),
        _ => assert!(
            matches!(answer.sqlstate(), Some("0A000" | "08P01")),
            "protocol 2.0 startup: expected an ErrorResponse with 0A000 or 08P01, got {answer:?}"
        ),
    }

    // A well-formed v3 startup on a raw socket still gets the server's
    // AuthenticationOk ('R'): the raw path itself works.
    let mut s = pc.tcp_stream();
    write_tolerant(&mut s, &startup_message("postgres", "postgres"));
    assert_eq!(
        read_answer(&mut s),
        Answer::Other(b'R'),
        "v3 startup answer"
    );
    drop(s);

    pool_still_serves(&pc);
}

//! Notices PostgreSQL sends while a connection starts reach the client it
//! was opened for, where PostgreSQL puts them: after AuthenticationOk,
//! before the parameters. A later client of the pooled connection is not
//! shown them again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use std::time::Duration;

use common::{wait_until, Pgcorral, Postgres};
use pgcorral::segment::Segment;
use pgcorral::slot::SlotState;

/// Slots holding a connection, and how many of them are FREE.
fn pool(seg: &Segment) -> (usize, usize) {
    let used = seg
        .slots()
        .iter()
        .filter(|s| s.state() != SlotState::NotInit);
    let free = used.clone().filter(|s| s.state() == SlotState::Free);
    (used.count(), free.count())
}

/// A v3 StartupMessage with extra parameters.
fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", "postgres"), ("database", "postgres")]
        .iter()
        .chain(params)
    {
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

/// The messages up to and including the first ReadyForQuery.
fn greeting(stream: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).expect("read a message header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        assert!((4..=1 << 20).contains(&len), "message length {len}");
        let mut body = vec![0u8; len as usize - 4];
        stream.read_exact(&mut body).expect("read a message body");
        let tag = head[0];
        out.push((tag, body));
        if tag == b'Z' {
            return out;
        }
    }
}

fn tags(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(t, _)| *t as char).collect()
}

/// A client asking for DEBUG messages gets the login's (PostgreSQL 15
/// reports the login transaction's commit at debug5) in its greeting.
fn start_up_notices_reach_the_client(pipeline: &str) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, &format!("pipeline = \"{pipeline}\""));

    let mut first = pc.tcp_stream();
    first
        .write_all(&startup(&[("options", "-c client_min_messages=debug5")]))
        .expect("send the startup message");
    let got = greeting(&mut first);
    let order = tags(&got);
    assert!(
        order.starts_with("RN"),
        "{pipeline}: no notice right after AuthenticationOk: {order}"
    );
    let notices: Vec<String> = got
        .iter()
        .filter(|(t, _)| *t == b'N')
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        notices.iter().all(|n| n.contains("DEBUG")),
        "{pipeline}: {notices:?}"
    );
    assert!(
        !order
            .trim_start_matches('R')
            .trim_start_matches('N')
            .contains('N'),
        "{pipeline}: notices not together before the parameters: {order}"
    );
    drop(first);

    // The second client, asking the same, is given the pooled connection:
    // its login's notices were the first client's.
    let seg = Segment::attach_pid(pc.pid).expect("attach to the shared segment");
    assert!(
        wait_until(Duration::from_secs(15), || pool(&seg) == (1, 1)),
        "{pipeline}: the connection was not pooled: {:?}",
        pool(&seg)
    );
    let mut second = pc.tcp_stream();
    second
        .write_all(&startup(&[("options", "-c client_min_messages=debug5")]))
        .expect("send the startup message");
    let order = tags(&greeting(&mut second));
    assert_eq!(pool(&seg).0, 1, "{pipeline}: not the pooled connection");
    assert!(
        !order.contains('N'),
        "{pipeline}: a pooled connection's start-up notices shown again: {order}"
    );
}

#[test]
fn session_client_gets_start_up_notices() {
    start_up_notices_reach_the_client("session");
}

#[test]
fn transaction_client_gets_start_up_notices() {
    start_up_notices_reach_the_client("transaction");
}

//! The unnamed prepared statement in the transaction pipeline. A pooled
//! connection keeps the unnamed statement of whoever parsed one last, so a
//! client that binds `""` in a later transaction could land on another
//! client's statement. It must get its own, as on a direct connection, or
//! PostgreSQL's "does not exist" when it has none. A pool of one
//! connection makes every client share it.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{Pgcorral, Postgres};

const ONE_CONNECTION: &str = "pipeline = \"transaction\"\n\
     [[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 1\n";

struct Raw {
    stream: TcpStream,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn parse_unnamed(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, sql);
    b.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &b)
}

/// Bind of the unnamed statement to the unnamed portal, text parameters.
fn bind_unnamed(params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, "");
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    message(b'B', &b)
}

fn execute() -> Vec<u8> {
    message(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// What came back up to ReadyForQuery: the first column of each DataRow,
/// and the SQLSTATE of an error.
#[derive(Debug, Default, PartialEq, Eq)]
struct Result {
    values: Vec<String>,
    error: Option<String>,
}

impl Raw {
    fn start(pc: &Pgcorral) -> Raw {
        let mut raw = Raw {
            stream: pc.tcp_stream(),
        };
        raw.stream
            .write_all(&common::startup_message("postgres", "postgres"))
            .expect("send startup");
        let got = raw.until_ready();
        assert_eq!(got.error, None, "start-up refused");
        raw
    }

    fn until_ready(&mut self) -> Result {
        let mut got = Result::default();
        loop {
            match common::read_message(&mut self.stream) {
                (b'D', body) => {
                    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                    let value = if len < 0 {
                        "null".to_owned()
                    } else {
                        String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                    };
                    got.values.push(value);
                }
                (b'E', body) => {
                    got.error = body
                        .split(|&b| b == 0)
                        .find(|f| f.first() == Some(&b'C'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
                }
                (b'Z', _) => return got,
                _ => {}
            }
        }
    }

    fn send(&mut self, messages: &[Vec<u8>]) -> Result {
        self.stream
            .write_all(&messages.concat())
            .expect("send messages");
        self.until_ready()
    }
}

#[test]
fn a_bind_of_the_unnamed_statement_gets_the_clients_own_in_a_later_transaction() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, ONE_CONNECTION);
    let mut a = Raw::start(&pc);
    let mut b = Raw::start(&pc);

    // A parses in one transaction and binds in the next; in between, B
    // leaves an unnamed statement of two parameters on the one connection.
    assert_eq!(
        a.send(&[parse_unnamed("select $1::text || ' from a'"), sync()]),
        Result::default()
    );
    assert_eq!(
        b.send(&[parse_unnamed("select $1::int + $2::int"), sync()]),
        Result::default()
    );
    let got = a.send(&[bind_unnamed(&["hello"]), execute(), sync()]);
    assert_eq!(got.error, None, "A bound someone else's statement");
    assert_eq!(got.values, vec!["hello from a".to_owned()]);

    // B's own statement is still B's, though A's was parsed again after it.
    let got = b.send(&[bind_unnamed(&["2", "3"]), execute(), sync()]);
    assert_eq!(got.values, vec!["5".to_owned()]);
    assert_eq!(got.error, None);

    // And A's again, twice: once parsed anew, it is used as it is.
    for _ in 0..2 {
        let got = a.send(&[bind_unnamed(&["again"]), execute(), sync()]);
        assert_eq!(got.values, vec!["again from a".to_owned()]);
    }
}

#[test]
fn a_client_without_an_unnamed_statement_is_told_it_does_not_exist() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, ONE_CONNECTION);
    let mut a = Raw::start(&pc);
    let mut b = Raw::start(&pc);
    assert_eq!(
        b.send(&[parse_unnamed("select 'from b'"), sync()]),
        Result::default()
    );

    // Never parsed one: PostgreSQL's answer, not B's statement.
    let got = a.send(&[bind_unnamed(&[]), execute(), sync()]);
    assert_eq!(got.error.as_deref(), Some("26000"));
    assert!(got.values.is_empty(), "A ran B's statement: {got:?}");

    // A simple query drops the unnamed statement, here as on the server.
    assert_eq!(
        a.send(&[parse_unnamed("select 'from a'"), sync()]),
        Result::default()
    );
    let q = {
        let mut body = Vec::new();
        cstr(&mut body, "select 1");
        message(b'Q', &body)
    };
    assert_eq!(a.send(&[q]).error, None);
    let got = a.send(&[bind_unnamed(&[]), execute(), sync()]);
    assert_eq!(got.error.as_deref(), Some("26000"));

    // The connection is still good for everyone.
    let got = b.send(&[bind_unnamed(&[]), execute(), sync()]);
    assert_eq!(got.values, vec!["from b".to_owned()]);
}

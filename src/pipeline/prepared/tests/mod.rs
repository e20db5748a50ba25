use super::sql::{classify, Sql};
use super::*;
use crate::hash::siphash24;
use crate::protocol::ErrorResponse;
use std::cell::RefCell;
use std::rc::Rc;

const KEY: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];

/// A connection's record, least recently used first.
struct Conn {
    cap: usize,
    lru: RefCell<Vec<String>>,
}

impl Conn {
    fn new(cap: usize) -> Self {
        Conn {
            cap,
            lru: RefCell::new(Vec::new()),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.lru.borrow().iter().any(|n| n == name)
    }

    fn names(&self) -> Vec<String> {
        self.lru.borrow().clone()
    }
}

impl ServerStatements for Conn {
    fn contains(&self, name: &str) -> bool {
        let mut lru = self.lru.borrow_mut();
        let Some(i) = lru.iter().position(|n| n == name) else {
            return false;
        };
        let n = lru.remove(i);
        lru.push(n);
        true
    }

    fn insert(&mut self, name: &str) -> Option<String> {
        if self.contains(name) {
            return None;
        }
        let lru = self.lru.get_mut();
        let evicted = (lru.len() >= self.cap).then(|| lru.remove(0));
        lru.push(name.to_owned());
        evicted
    }

    fn remove(&mut self, name: &str) {
        self.lru.get_mut().retain(|n| n != name);
    }

    fn clear(&mut self) {
        self.lru.get_mut().clear();
    }
}

type Msg = (char, Vec<u8>);

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Splits a byte stream into messages, so that a mismatch shows which.
fn frames(mut bytes: &[u8]) -> Vec<Msg> {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 5, "cut header: {bytes:?}");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert!(len >= 4 && bytes.len() > len, "cut message: {bytes:?}");
        v.push((bytes[0] as char, bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    v
}

fn all(msgs: &[Vec<u8>]) -> Vec<Msg> {
    frames(&msgs.concat())
}

fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Query text and parameter types as they follow the name in a Parse.
fn text(sql: &str, oids: &[u32]) -> Vec<u8> {
    let mut b = z(sql);
    b.extend_from_slice(&(oids.len() as i16).to_be_bytes());
    for o in oids {
        b.extend_from_slice(&o.to_be_bytes());
    }
    b
}

fn sn(sql: &str, oids: &[u32]) -> String {
    server_name(statement_hash(KEY, &text(sql, oids)))
}

// Client messages.
fn parse(name: &str, sql: &str, oids: &[u32]) -> Vec<u8> {
    frame(b'P', &[z(name), text(sql, oids)].concat())
}
fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    // No parameter formats, one text parameter "42", no result formats.
    let tail = [0, 0, 0, 1, 0, 0, 0, 2, b'4', b'2', 0, 0];
    frame(b'B', &[z(portal), z(stmt), tail.to_vec()].concat())
}
fn describe(kind: u8, name: &str) -> Vec<u8> {
    frame(b'D', &[vec![kind], z(name)].concat())
}
fn close(kind: u8, name: &str) -> Vec<u8> {
    frame(b'C', &[vec![kind], z(name)].concat())
}
fn execute(portal: &str) -> Vec<u8> {
    frame(b'E', &[z(portal), vec![0, 0, 0, 0]].concat())
}
fn sync() -> Vec<u8> {
    frame(b'S', &[])
}
fn flush() -> Vec<u8> {
    frame(b'H', &[])
}
fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', &z(sql))
}
fn copy_data(data: &[u8]) -> Vec<u8> {
    frame(b'd', data)
}
fn copy_done() -> Vec<u8> {
    frame(b'c', &[])
}

// Server messages.
fn parse_complete() -> Vec<u8> {
    frame(b'1', &[])
}
fn bind_complete() -> Vec<u8> {
    frame(b'2', &[])
}
fn close_complete() -> Vec<u8> {
    frame(b'3', &[])
}
fn parameters() -> Vec<u8> {
    frame(b't', &[0, 1, 0, 0, 0, 23])
}
fn row_description() -> Vec<u8> {
    frame(b'T', &[0, 0])
}
fn no_data() -> Vec<u8> {
    frame(b'n', &[])
}
fn data_row() -> Vec<u8> {
    frame(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
}
fn complete(tag: &str) -> Vec<u8> {
    frame(b'C', &z(tag))
}
fn ready(status: u8) -> Vec<u8> {
    frame(b'Z', &[status])
}
fn error(code: &str, message: &str) -> Vec<u8> {
    let mut v = Vec::new();
    ErrorResponse::error(code, message).encode(&mut v);
    v
}
fn notice() -> Vec<u8> {
    frame(b'N', b"SNOTICE\0C00000\0Mhello\0\0")
}
fn missing(name: &str) -> Vec<u8> {
    error(
        "26000",
        &format!("prepared statement \"{name}\" does not exist"),
    )
}

struct Client {
    rw: Rewriter,
}

impl Client {
    fn new() -> Self {
        Client {
            rw: Rewriter::new(1000, KEY),
        }
    }

    /// Feeds whole client messages: (to the server, to the client).
    fn send(&mut self, conn: &mut Conn, msgs: &[Vec<u8>]) -> (Vec<Msg>, Vec<Msg>) {
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        for (tag, body) in frames(&msgs.concat()) {
            self.rw
                .client_message(tag as u8, &body, conn, &mut to_server, &mut to_client)
                .unwrap();
        }
        (frames(&to_server), frames(&to_client))
    }

    /// Feeds whole server messages: (to the server, to the client).
    fn recv(&mut self, conn: &mut Conn, msgs: &[Vec<u8>]) -> (Vec<Msg>, Vec<Msg>) {
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        for (tag, body) in frames(&msgs.concat()) {
            self.rw
                .server_message(tag as u8, &body, conn, &mut to_server, &mut to_client)
                .unwrap();
        }
        (frames(&to_server), frames(&to_client))
    }

    /// Prepares a statement and lets the server answer.
    fn prepare(&mut self, conn: &mut Conn, name: &str, sql: &str) {
        let (to_server, _) = self.send(conn, &[parse(name, sql, &[]), sync()]);
        let answers: Vec<Vec<u8>> = to_server
            .iter()
            .map(|(tag, _)| match tag {
                'C' => close_complete(),
                'P' => parse_complete(),
                _ => ready(b'I'),
            })
            .collect();
        self.recv(conn, &answers);
        assert!(self.rw.is_idle());
    }
}

#[test]
fn named_statement_on_a_fresh_connection() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    let q = sn("select $1", &[23]);
    assert!(q.starts_with("pgc_") && q.len() == 20, "{q}");
    let (to_server, to_client) = c.send(
        &mut conn,
        &[
            parse("s1", "select $1", &[23]),
            bind("", "s1"),
            execute(""),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q),
            parse(&q, "select $1", &[23]),
            bind("", &q),
            execute(""),
            sync()
        ])
    );
    assert!(to_client.is_empty());
    assert!(!c.rw.is_idle());
    let (extra, seen) = c.recv(
        &mut conn,
        &[
            close_complete(),
            parse_complete(),
            bind_complete(),
            data_row(),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert!(extra.is_empty());
    assert_eq!(
        seen,
        all(&[
            parse_complete(),
            bind_complete(),
            data_row(),
            complete("SELECT 1"),
            ready(b'I')
        ])
    );
    assert!(c.rw.is_idle());
    assert_eq!(conn.names(), [q]);
}

#[test]
fn statement_is_prepared_again_on_a_connection_that_lacks_it() {
    let (mut one, mut two) = (Conn::new(8), Conn::new(8));
    let mut c = Client::new();
    let q = sn("select $1", &[23]);
    c.send(&mut one, &[parse("s1", "select $1", &[23]), sync()]);
    let (_, seen) = c.recv(&mut one, &[close_complete(), parse_complete(), ready(b'I')]);
    assert_eq!(seen, all(&[parse_complete(), ready(b'I')]));

    // The next transaction lands on another connection.
    let (to_server, to_client) = c.send(&mut two, &[bind("", "s1"), execute(""), sync()]);
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q),
            parse(&q, "select $1", &[23]),
            bind("", &q),
            execute(""),
            sync()
        ])
    );
    assert!(to_client.is_empty());
    let (_, seen) = c.recv(
        &mut two,
        &[
            close_complete(),
            parse_complete(),
            bind_complete(),
            data_row(),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        seen,
        all(&[
            bind_complete(),
            data_row(),
            complete("SELECT 1"),
            ready(b'I')
        ]),
        "the client sees no answer to a Parse it did not send"
    );
    assert!(c.rw.is_idle() && two.has(&q));

    // Back on the first one, which has it: nothing is added.
    let (to_server, _) = c.send(&mut one, &[bind("", "s1"), execute(""), sync()]);
    assert_eq!(to_server, all(&[bind("", &q), execute(""), sync()]));
}

#[test]
fn parse_of_a_statement_the_connection_has_reaches_the_server() {
    let mut conn = Conn::new(8);
    Client::new().prepare(&mut conn, "x", "select 1");
    let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));

    // The server analyses every Parse against the schema as it is then,
    // as on a direct connection; the connection keeps one statement per
    // text, so the one it had is replaced.
    let mut c = Client::new();
    let (to_server, to_client) = c.send(
        &mut conn,
        &[
            parse("a", "select 2", &[]),
            bind("", "a"),
            parse("b", "select 1", &[]),
            bind("", "b"),
            execute(""),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q2),
            parse(&q2, "select 2", &[]),
            bind("", &q2),
            close(b'S', &q1),
            parse(&q1, "select 1", &[]),
            bind("", &q1),
            execute(""),
            sync()
        ])
    );
    assert!(to_client.is_empty());
    let (_, seen) = c.recv(
        &mut conn,
        &[
            close_complete(),
            parse_complete(),
            bind_complete(),
            close_complete(),
            parse_complete(),
            bind_complete(),
            data_row(),
            complete("SELECT 1"),
            ready(b'I'),
        ],
    );
    assert_eq!(
        seen,
        all(&[
            parse_complete(),
            bind_complete(),
            parse_complete(),
            bind_complete(),
            data_row(),
            complete("SELECT 1"),
            ready(b'I')
        ])
    );
    assert!(c.rw.is_idle() && conn.has(&q1) && conn.has(&q2));
}

#[test]
fn bind_of_an_unknown_name_fails_and_skips_to_sync() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    let (to_server, to_client) = c.send(
        &mut conn,
        &[
            bind("", "nope"),
            execute(""),
            parse("later", "select 1", &[]),
        ],
    );
    assert!(to_server.is_empty());
    assert_eq!(to_client, all(&[missing("nope")]));
    assert_eq!(c.rw.client_route(b'E'), Route::Drop);
    assert_eq!(c.rw.client_route(b'S'), Route::Whole);
    assert!(!c.rw.is_idle());

    let (to_server, to_client) = c.send(&mut conn, &[sync()]);
    assert_eq!(to_server, all(&[sync()]));
    assert!(to_client.is_empty());
    let (_, seen) = c.recv(&mut conn, &[ready(b'I')]);
    assert_eq!(seen, all(&[ready(b'I')]));
    assert!(
        !c.rw.statements().contains(b"later"),
        "skipped, as PostgreSQL would"
    );
    assert!(c.rw.is_idle());
    assert!(conn.names().is_empty());
}

#[test]
fn server_error_drops_answers_owed_up_to_sync() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "k", "select 1");
    let (q1, bad) = (sn("select 1", &[]), sn("selec oops", &[]));
    let (to_server, to_client) = c.send(
        &mut conn,
        &[
            parse("a", "selec oops", &[]),
            parse("b", "select 1", &[]), // skipped by the server
            close(b'S', "k"),            // answered here
            sync(),
            close(b'S', "b"), // after the Sync: stands
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &bad),
            parse(&bad, "selec oops", &[]),
            close(b'S', &q1),
            parse(&q1, "select 1", &[]),
            sync(),
            sync()
        ])
    );
    assert!(to_client.is_empty());
    assert!(!c.rw.statements().contains(b"k"));

    let syntax = error("42601", "syntax error at or near \"selec\"");
    let (_, seen) = c.recv(&mut conn, &[close_complete(), syntax.clone()]);
    assert_eq!(seen, all(&[syntax]), "k's CloseComplete is dropped");
    let (_, seen) = c.recv(&mut conn, &[ready(b'I'), ready(b'I')]);
    assert_eq!(seen, all(&[ready(b'I'), close_complete(), ready(b'I')]));

    // PostgreSQL carried out nothing between the error and the Sync.
    assert!(
        c.rw.statements().contains(b"k"),
        "the skipped Close is undone"
    );
    assert!(
        !c.rw.statements().contains(b"a"),
        "the failed Parse is undone"
    );
    assert!(!c.rw.statements().contains(b"b"));
    assert!(
        !conn.has(&bad) && conn.has(&q1),
        "the skipped Close left q1 on the server: {:?}",
        conn.names()
    );
    assert!(c.rw.is_idle());

    // The name is free again, so a corrected Parse goes through.
    let (to_server, to_client) = c.send(&mut conn, &[parse("a", "select 2", &[])]);
    assert_eq!(to_server.len(), 2, "Close and Parse: {to_server:?}");
    assert!(to_client.is_empty());
}

#[test]
fn server_error_before_the_sync_arrived_skips_what_follows() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s", "select 1/0");
    let q = sn("select 1/0", &[]);
    let (to_server, _) = c.send(&mut conn, &[bind("", "s"), execute(""), flush()]);
    assert_eq!(to_server, all(&[bind("", &q), execute(""), flush()]));
    let div = error("22012", "division by zero");
    let (_, seen) = c.recv(&mut conn, &[bind_complete(), div.clone()]);
    assert_eq!(seen, all(&[bind_complete(), div]));
    // The server now discards everything up to a Sync; so do we.
    assert_eq!(c.rw.client_route(b'B'), Route::Drop);
    let (to_server, to_client) = c.send(&mut conn, &[bind("", "s"), execute(""), sync()]);
    assert_eq!(to_server, all(&[sync()]));
    assert!(to_client.is_empty());
    let (_, seen) = c.recv(&mut conn, &[ready(b'I')]);
    assert_eq!(seen, all(&[ready(b'I')]));
    assert!(c.rw.is_idle());
}

#[test]
fn names_are_per_client_and_server_names_per_text() {
    let mut conn = Conn::new(8);
    let (mut a, mut b) = (Client::new(), Client::new());
    let (one, two) = (sn("select 1", &[]), sn("select 2", &[]));
    assert_ne!(one, two);
    assert_ne!(
        sn("select $1", &[23]),
        sn("select $1", &[25]),
        "types count"
    );

    let (to_server, _) = a.send(&mut conn, &[parse("s", "select 1", &[])]);
    assert_eq!(
        to_server,
        all(&[close(b'S', &one), parse(&one, "select 1", &[])])
    );
    a.recv(&mut conn, &[close_complete(), parse_complete()]);
    let (to_server, _) = b.send(&mut conn, &[parse("s", "select 2", &[])]);
    assert_eq!(
        to_server,
        all(&[close(b'S', &two), parse(&two, "select 2", &[])])
    );
    b.recv(&mut conn, &[close_complete(), parse_complete()]);
    // b's other name for a's text shares a's server statement, parsed
    // again as b's Parse is.
    let (to_server, to_client) = b.send(&mut conn, &[parse("t", "select 1", &[])]);
    assert_eq!(
        to_server,
        all(&[close(b'S', &one), parse(&one, "select 1", &[])])
    );
    assert!(to_client.is_empty());
    b.recv(&mut conn, &[close_complete(), parse_complete()]);

    let (to_server, _) = a.send(&mut conn, &[bind("", "s"), execute(""), sync()]);
    assert_eq!(to_server, all(&[bind("", &one), execute(""), sync()]));
    let (to_server, _) = b.send(&mut conn, &[bind("", "s"), bind("p", "t"), sync()]);
    assert_eq!(to_server, all(&[bind("", &two), bind("p", &one), sync()]));
    // Another worker, with the same key, agrees.
    let mut other = Client::new();
    let (to_server, _) = other.send(&mut Conn::new(8), &[parse("zz", "select 2", &[])]);
    assert_eq!(
        to_server[1],
        (('P'), [z(&two), text("select 2", &[])].concat())
    );
}

#[test]
fn deallocate_all_and_discard_all_forget_every_statement() {
    for sql in [
        "DEALLOCATE ALL",
        "deallocate prepare all;",
        "  Discard\tALL ; ",
        "discard all",
    ] {
        let mut conn = Conn::new(8);
        let mut c = Client::new();
        c.prepare(&mut conn, "s1", "select 1");
        let (to_server, to_client) = c.send(&mut conn, &[query(sql)]);
        assert_eq!(to_server, all(&[query(sql)]), "{sql}");
        assert!(to_client.is_empty());
        assert!(c.rw.statements().is_empty(), "{sql}");
        assert!(conn.names().is_empty(), "the server drops ours too: {sql}");
        let (_, seen) = c.recv(&mut conn, &[complete("DISCARD ALL"), ready(b'I')]);
        assert_eq!(seen, all(&[complete("DISCARD ALL"), ready(b'I')]));
        let (to_server, to_client) = c.send(&mut conn, &[bind("", "s1"), sync()]);
        assert_eq!(to_server, all(&[sync()]), "{sql}");
        assert_eq!(to_client, all(&[missing("s1")]));
    }
}

mod lifecycle;
mod stale;

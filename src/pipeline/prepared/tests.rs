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
fn parse_of_a_statement_the_connection_has_is_answered_in_order() {
    let mut conn = Conn::new(8);
    Client::new().prepare(&mut conn, "x", "select 1");
    let (q1, q2) = (sn("select 1", &[]), sn("select 2", &[]));

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
            bind("", &q1),
            execute(""),
            sync()
        ])
    );
    assert!(
        to_client.is_empty(),
        "b's ParseComplete waits for a's answers"
    );
    let (_, seen) = c.recv(&mut conn, &[close_complete(), parse_complete()]);
    assert_eq!(seen, all(&[parse_complete()]));
    let (_, seen) = c.recv(&mut conn, &[bind_complete()]);
    assert_eq!(seen, all(&[bind_complete(), parse_complete()]));
    let (_, seen) = c.recv(
        &mut conn,
        &[
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
        ])
    );

    // With nothing outstanding the answer is immediate.
    let (to_server, to_client) = c.send(&mut conn, &[parse("c", "select 1", &[])]);
    assert!(to_server.is_empty());
    assert_eq!(to_client, all(&[parse_complete()]));
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
            parse("b", "select 1", &[]), // the connection has it: answered here
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
            sync(),
            sync()
        ])
    );
    assert!(to_client.is_empty());
    assert!(!c.rw.statements().contains(b"k"));

    let syntax = error("42601", "syntax error at or near \"selec\"");
    let (_, seen) = c.recv(&mut conn, &[close_complete(), syntax.clone()]);
    assert_eq!(
        seen,
        all(&[syntax]),
        "b's ParseComplete and k's CloseComplete are dropped"
    );
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
    assert!(!conn.has(&bad) && conn.has(&q1), "{:?}", conn.names());
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
    // b's other name for a's text shares a's server statement.
    let (to_server, to_client) = b.send(&mut conn, &[parse("t", "select 1", &[])]);
    assert!(to_server.is_empty());
    assert_eq!(to_client, all(&[parse_complete()]));

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

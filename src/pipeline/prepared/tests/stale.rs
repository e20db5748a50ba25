//! Statements whose result changed after they were prepared: the server's
//! refusal forgets the connection's statement, and a client name known to
//! predate the change is refused here.

use super::*;

fn stale() -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in [
        (b'S', "ERROR"),
        (b'C', "0A000"),
        (b'M', "cached plan must not change result type"),
        (b'R', "RevalidateCachedQuery"),
    ] {
        body.push(kind);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    frame(b'E', &body)
}

/// A RowDescription of text-format columns (name, table OID, type OID).
fn columns(fields: &[(&str, u32, u32)]) -> Vec<u8> {
    let mut body = (fields.len() as u16).to_be_bytes().to_vec();
    for (name, table, ty) in fields {
        body.extend_from_slice(&z(name));
        body.extend_from_slice(&table.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&ty.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
    }
    frame(b'T', &body)
}

const INT4: u32 = 23;
const TEXT: u32 = 25;

/// Prepares `name` as a driver does (Parse, Describe, Sync) and lets the
/// server describe it with `description`.
fn prepare_described(c: &mut Client, conn: &mut Conn, name: &str, sql: &str, description: &[u8]) {
    let (to_server, _) = c.send(conn, &[parse(name, sql, &[]), describe(b'S', name), sync()]);
    assert_eq!(
        to_server.len(),
        4,
        "Close, Parse, Describe, Sync: {to_server:?}"
    );
    let (_, seen) = c.recv(
        conn,
        &[
            close_complete(),
            parse_complete(),
            frame(b't', &[0, 0]),
            description.to_vec(),
            ready(b'I'),
        ],
    );
    assert_eq!(seen[1].0, 't');
    assert!(c.rw.is_idle());
}

#[test]
fn a_stale_statement_is_forgotten_and_closed_once_idle() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s", "select * from t");
    let q = sn("select * from t", &[]);
    let (to_server, _) = c.send(
        &mut conn,
        &[
            bind("", "s"),
            execute(""),
            bind("", "s"),
            execute(""),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[bind("", &q), execute(""), bind("", &q), execute(""), sync()])
    );
    let (housekeeping, seen) = c.recv(&mut conn, &[stale()]);
    assert_eq!(
        seen,
        all(&[stale()]),
        "the client gets the server's refusal"
    );
    assert!(
        housekeeping.is_empty(),
        "nothing before the Sync is answered"
    );
    assert!(!conn.has(&q), "forgotten at once");
    assert!(!c.rw.is_idle());
    let (housekeeping, seen) = c.recv(&mut conn, &[ready(b'I')]);
    assert_eq!(seen, all(&[ready(b'I')]));
    assert_eq!(
        housekeeping,
        all(&[close(b'S', &q), sync()]),
        "closed once, though two requests named it"
    );
    let (more, seen) = c.recv(&mut conn, &[close_complete(), ready(b'I')]);
    assert!(more.is_empty() && seen.is_empty());
    assert!(c.rw.is_idle());

    // The name is the client's still: used again, the text is prepared
    // anew. (Had the client been described another result for the text
    // since, it would be refused; see below.)
    let (to_server, _) = c.send(&mut conn, &[bind("", "s"), sync()]);
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &q),
            parse(&q, "select * from t", &[]),
            bind("", &q),
            sync()
        ])
    );
}

#[test]
fn a_stale_statement_is_never_taken_back_and_a_parse_replaces_its_close() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s", "select * from t");
    let q = sn("select * from t", &[]);
    // Inside a transaction block, so the close has to wait.
    c.send(&mut conn, &[bind("", "s"), execute(""), sync()]);
    let (housekeeping, _) = c.recv(&mut conn, &[stale(), ready(b'E')]);
    assert!(housekeeping.is_empty(), "no close inside a transaction");
    assert!(!c.rw.is_idle(), "a close is owed");

    // A Bind after the refusal needs the statement again: it is prepared
    // afresh, not taken back, and that Close is the one owed.
    let (to_server, _) = c.send(&mut conn, &[query("rollback"), bind("", "s"), sync()]);
    assert_eq!(
        to_server,
        all(&[
            query("rollback"),
            close(b'S', &q),
            parse(&q, "select * from t", &[]),
            bind("", &q),
            sync()
        ])
    );
    let (housekeeping, _) = c.recv(
        &mut conn,
        &[
            complete("ROLLBACK"),
            ready(b'I'),
            close_complete(),
            parse_complete(),
            bind_complete(),
            ready(b'I'),
        ],
    );
    assert!(housekeeping.is_empty(), "{housekeeping:?}");
    assert!(c.rw.is_idle() && conn.has(&q));
}

#[test]
fn a_skipped_parse_leaves_the_stale_statement_to_be_closed() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s", "select * from t");
    let q = sn("select * from t", &[]);
    c.send(&mut conn, &[bind("", "s"), sync()]);
    c.recv(&mut conn, &[stale(), ready(b'T')]);

    let bad = sn("selec oops", &[]);
    let (to_server, _) = c.send(
        &mut conn,
        &[
            parse("x", "selec oops", &[]),
            parse("y", "select * from t", &[]),
            sync(),
        ],
    );
    assert_eq!(
        to_server,
        all(&[
            close(b'S', &bad),
            parse(&bad, "selec oops", &[]),
            close(b'S', &q),
            parse(&q, "select * from t", &[]),
            sync()
        ])
    );
    let syntax = error("42601", "syntax error at or near \"selec\"");
    let (housekeeping, _) = c.recv(&mut conn, &[close_complete(), syntax, ready(b'I')]);
    assert_eq!(
        housekeeping,
        all(&[close(b'S', &q), sync()]),
        "the skipped Close is owed again"
    );
    assert!(!conn.has(&q));
}

#[test]
fn a_name_described_before_its_text_changed_result_is_refused() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    let sql = "select * from t";
    let q = sn(sql, &[]);
    let before = columns(&[("a", 16384, INT4), ("b", 16384, INT4)]);
    let after = columns(&[("a", 16384, INT4), ("b", 16384, TEXT)]);
    prepare_described(&mut c, &mut conn, "old", sql, &before);
    prepare_described(&mut c, &mut conn, "same", sql, &before);
    prepare_described(&mut c, &mut conn, "new", sql, &after);

    let (to_server, to_client) = c.send(
        &mut conn,
        &[bind("", "old"), execute(""), bind("", "new"), sync()],
    );
    let refusal = error("0A000", "cached plan must not change result type");
    assert_eq!(
        to_client,
        all(std::slice::from_ref(&refusal)),
        "as PostgreSQL refuses it"
    );
    assert_eq!(
        to_server,
        all(&[sync()]),
        "the rest is skipped up to the Sync"
    );
    c.recv(&mut conn, &[ready(b'I')]);

    for name in ["old", "same"] {
        let (to_server, to_client) = c.send(&mut conn, &[describe(b'S', name), sync()]);
        assert_eq!(to_client, all(std::slice::from_ref(&refusal)), "{name}");
        assert_eq!(to_server, all(&[sync()]));
        c.recv(&mut conn, &[ready(b'I')]);
    }
    let (to_server, to_client) = c.send(&mut conn, &[bind("", "new"), sync()]);
    assert!(to_client.is_empty());
    assert_eq!(to_server, all(&[bind("", &q), sync()]));
    c.recv(&mut conn, &[bind_complete(), ready(b'I')]);

    // Changed back, PostgreSQL takes the old statements again, and so do we.
    prepare_described(&mut c, &mut conn, "back", sql, &before);
    let (to_server, to_client) = c.send(&mut conn, &[bind("", "old"), sync()]);
    assert!(to_client.is_empty());
    assert_eq!(to_server, all(&[bind("", &q), sync()]));
    c.recv(&mut conn, &[bind_complete(), ready(b'I')]);
    // The client may still close the names it cannot use.
    let (_, to_client) = c.send(&mut conn, &[close(b'S', "new")]);
    assert_eq!(to_client, all(&[close_complete()]));
}

#[test]
fn a_table_created_again_with_the_same_columns_changes_nothing() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    let sql = "select * from t";
    prepare_described(
        &mut c,
        &mut conn,
        "old",
        sql,
        &columns(&[("a", 16384, INT4)]),
    );
    prepare_described(
        &mut c,
        &mut conn,
        "new",
        sql,
        &columns(&[("a", 16999, INT4)]),
    );
    let (to_server, to_client) = c.send(&mut conn, &[bind("", "old"), sync()]);
    assert!(to_client.is_empty(), "{to_client:?}");
    assert_eq!(to_server.len(), 2);
    c.recv(&mut conn, &[bind_complete(), ready(b'I')]);
    // A renamed column is a change, as in PostgreSQL.
    prepare_described(
        &mut c,
        &mut conn,
        "renamed",
        sql,
        &columns(&[("z", 16999, INT4)]),
    );
    let (_, to_client) = c.send(&mut conn, &[bind("", "new"), sync()]);
    assert_eq!(to_client[0].0, 'E');
}

#[test]
fn result_shapes() {
    use super::super::registry::result_shape;
    let body = |m: Vec<u8>| m[5..].to_vec();
    let shape = |fields: &[(&str, u32, u32)]| result_shape(KEY, Some(&body(columns(fields))));
    assert_eq!(shape(&[("a", 1, INT4)]), shape(&[("a", 2, INT4)]));
    assert_ne!(shape(&[("a", 1, INT4)]), shape(&[("a", 1, TEXT)]));
    assert_ne!(shape(&[("a", 1, INT4)]), shape(&[("b", 1, INT4)]));
    assert_ne!(
        shape(&[("a", 1, INT4)]),
        shape(&[("a", 1, INT4), ("b", 1, INT4)])
    );
    assert_ne!(
        shape(&[]),
        result_shape(KEY, None),
        "no columns is not no data"
    );
    assert!(shape(&[("a", 1, INT4)]).is_some());
    let mut cut = body(columns(&[("a", 1, INT4)]));
    cut.pop();
    assert_eq!(result_shape(KEY, Some(&cut)), None);
    assert_eq!(result_shape(KEY, Some(&[0, 1])), None);
}

#[test]
fn discard_all_leaves_no_stale_statement_to_close() {
    let mut conn = Conn::new(8);
    let mut c = Client::new();
    c.prepare(&mut conn, "s", "select * from t");
    c.send(&mut conn, &[query("begin"), bind("", "s"), sync()]);
    c.recv(
        &mut conn,
        &[complete("BEGIN"), ready(b'T'), stale(), ready(b'E')],
    );
    assert!(!c.rw.is_idle(), "a close is owed");
    c.send(&mut conn, &[query("rollback"), query("discard all")]);
    let (housekeeping, _) = c.recv(
        &mut conn,
        &[
            complete("ROLLBACK"),
            ready(b'I'),
            complete("DISCARD ALL"),
            ready(b'I'),
        ],
    );
    assert!(housekeeping.is_empty(), "{housekeeping:?}");
    assert!(c.rw.is_idle());
}

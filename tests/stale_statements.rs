//! Protocol-level prepared statements across a change to what their text
//! returns, in the transaction pipeline, where clients share one server
//! statement per text and connection. PostgreSQL refuses a statement
//! prepared before such a change (`0A000 cached plan must not change result
//! type`) but prepares the same text afresh without complaint; through
//! pgcorral it must do the same, however many clients shared the statement.
//! A pool of one connection makes every client use the same one.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{Pgcorral, Postgres};
use postgres::error::SqlState;
use postgres::Client;

const ONE_CONNECTION: &str = "pipeline = \"transaction\"\nlog_level = \"info\"\n\
     [[limit]]\ndatabase = \"all\"\nuser = \"all\"\nmax_size = 1\n";

fn start() -> (Postgres, Pgcorral) {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, ONE_CONNECTION);
    (pg, pc)
}

/// The column names and type names of what `sql`, prepared now, returns,
/// and its rows rendered as text.
fn run(client: &mut Client, sql: &str) -> Result<(Vec<String>, Vec<String>), postgres::Error> {
    let stmt = client.prepare(sql)?;
    let columns = stmt
        .columns()
        .iter()
        .map(|c| format!("{} {}", c.name(), c.type_().name()))
        .collect();
    let rows = client
        .query(&stmt, &[])?
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| render(row, i))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    Ok((columns, rows))
}

fn render(row: &postgres::Row, i: usize) -> String {
    if let Ok(v) = row.try_get::<_, Option<i32>>(i) {
        return v.map_or("null".into(), |v| v.to_string());
    }
    if let Ok(v) = row.try_get::<_, Option<String>>(i) {
        return v.unwrap_or_else(|| "null".into());
    }
    format!("<{}>", row.columns()[i].type_().name())
}

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn is_stale_plan(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
        && e.as_db_error()
            .is_some_and(|d| d.message() == "cached plan must not change result type")
}

/// The reported case: a statement prepared and run, the column's type
/// altered, then the same text prepared under a new name: it describes
/// and runs with the new type, as directly. The statement prepared before
/// the change is refused, as directly.
#[test]
fn a_text_prepared_after_a_column_type_change_runs_with_the_new_type() {
    let (_pg, pc) = start();
    let mut c = pc.connect();
    c.batch_execute("create table t (a int, b int); insert into t values (1, 2)")
        .expect("setup");
    let old = c.prepare("select * from t").expect("prepare");
    assert_eq!(c.query(&old, &[]).expect("run").len(), 1);
    let (columns, rows) = run(&mut c, "select * from t").expect("again, unchanged");
    assert_eq!(
        (columns, rows),
        (cols(&["a int4", "b int4"]), cols(&["1|2"]))
    );

    c.batch_execute("alter table t alter column b type text")
        .expect("alter");
    for round in 0..3 {
        let (columns, rows) = run(&mut c, "select * from t")
            .unwrap_or_else(|e| panic!("prepared after the change (round {round}): {e}"));
        assert_eq!(columns, cols(&["a int4", "b text"]));
        assert_eq!(rows, cols(&["1|2"]));
    }
    let e = c.query(&old, &[]).expect_err("prepared before the change");
    assert!(is_stale_plan(&e), "{e:?}");
    let (columns, _) = run(&mut c, "select * from t").expect("after the refusal");
    assert_eq!(columns, cols(&["a int4", "b text"]));
}

/// Two clients share the server statement of one text. One runs its
/// statement prepared before the change and is refused, as directly; each
/// prepares the text again and gets the new result, whoever comes first.
#[test]
fn clients_sharing_a_statement_both_prepare_it_again_after_the_change() {
    let (_pg, pc) = start();
    let mut a = pc.connect();
    let mut b = pc.connect();
    a.batch_execute("create table t (a int, b int); insert into t values (1, 2)")
        .expect("setup");
    let sql = "select * from t where a = 1";
    let old_a = a.prepare(sql).expect("a prepares");
    let old_b = b.prepare(sql).expect("b prepares the same text");
    assert_eq!(a.query(&old_a, &[]).expect("a runs").len(), 1);
    assert_eq!(b.query(&old_b, &[]).expect("b runs").len(), 1);

    b.batch_execute("alter table t alter column b type text")
        .expect("alter");
    let e = a.query(&old_a, &[]).expect_err("a's statement is stale");
    assert!(is_stale_plan(&e), "{e:?}");
    let (columns, rows) = run(&mut b, sql).expect("b prepares after the change");
    assert_eq!(
        (columns, rows),
        (cols(&["a int4", "b text"]), cols(&["1|2"]))
    );
    let (columns, rows) = run(&mut a, sql).expect("a prepares after the change");
    assert_eq!(
        (columns, rows),
        (cols(&["a int4", "b text"]), cols(&["1|2"]))
    );

    // And the other way round: the first to come after a second change is
    // a new prepare, then the client with the old statement.
    a.batch_execute("alter table t alter column a type bigint")
        .expect("alter again");
    let (columns, _) = run(&mut a, sql).expect("a prepares after the second change");
    assert_eq!(columns, cols(&["a int8", "b text"]));
    let (columns, _) = run(&mut b, sql).expect("b prepares after the second change");
    assert_eq!(columns, cols(&["a int8", "b text"]));
}

/// A table dropped and created again with other columns, and a view
/// replaced with one more column: texts prepared afterwards describe and
/// run with the new columns.
#[test]
fn a_table_created_again_or_a_view_replaced_gets_its_new_columns() {
    let (_pg, pc) = start();
    let mut c = pc.connect();
    let mut other = pc.connect();
    c.batch_execute(
        "create table t (a int, b int); insert into t values (1, 2);
         create view v as select 1 as x",
    )
    .expect("setup");
    let (columns, _) = run(&mut c, "select * from t").expect("before");
    assert_eq!(columns, cols(&["a int4", "b int4"]));
    let (columns, _) = run(&mut other, "select * from v").expect("view before");
    assert_eq!(columns, cols(&["x int4"]));

    other
        .batch_execute(
            "drop table t; create table t (c text, d int, e int);
             insert into t values ('c', 4, 5);
             create or replace view v as select 1 as x, 'y'::text as y",
        )
        .expect("drop and create");
    let (columns, rows) = run(&mut c, "select * from t").expect("table after");
    assert_eq!(columns, cols(&["c text", "d int4", "e int4"]));
    assert_eq!(rows, cols(&["c|4|5"]));
    let (columns, rows) = run(&mut other, "select * from t").expect("other client");
    assert_eq!(
        (columns, rows),
        (cols(&["c text", "d int4", "e int4"]), cols(&["c|4|5"]))
    );
    let (columns, rows) = run(&mut c, "select * from v").expect("view after");
    assert_eq!(
        (columns, rows),
        (cols(&["x int4", "y text"]), cols(&["1|y"]))
    );
}

/// Preparing a text again replaces the connection's statement of that
/// text; a portal bound from the one it replaces, inside the same
/// transaction, keeps its rows coming.
#[test]
fn preparing_a_text_again_leaves_an_open_portal_of_it_alone() {
    let (_pg, pc) = start();
    let mut c = pc.connect();
    c.batch_execute("create table n as select g from generate_series(1, 5) g")
        .expect("setup");
    let sql = "select g from n order by g";
    let mut tx = c.transaction().expect("begin");
    let stmt = tx.prepare(sql).expect("prepare");
    let portal = tx.bind(&stmt, &[]).expect("bind");
    let first: Vec<i32> = tx
        .query_portal(&portal, 2)
        .expect("fetch")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(first, [1, 2]);
    let again = tx.prepare(sql).expect("prepare the text again");
    let rest: Vec<i32> = tx
        .query_portal(&portal, 10)
        .expect("the portal survives")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rest, [3, 4, 5]);
    assert_eq!(tx.query(&again, &[]).expect("run").len(), 5);
    tx.commit().expect("commit");
}

// A client that pipelines, as asyncpg and pgjdbc do: several statements
// parsed, bound and executed before one Sync.

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(statement: &str) -> Vec<u8> {
    message(b'B', format!("\0{statement}\0\0\0\0\0\0\0").as_bytes())
}

fn execute() -> Vec<u8> {
    message(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// What came back up to ReadyForQuery, compactly: tags, with the SQLSTATE
/// of errors and the text of data rows.
fn flight(stream: &mut TcpStream, messages: &[Vec<u8>]) -> Vec<String> {
    stream.write_all(&messages.concat()).expect("send");
    let mut seen = Vec::new();
    loop {
        let (tag, body) = common::read_message(stream);
        match tag {
            b'E' => {
                let code = body
                    .split(|&b| b == 0)
                    .find_map(|f| f.strip_prefix(b"C"))
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .unwrap_or_default();
                seen.push(format!("E{code}"));
            }
            b'D' => {
                // One column, text format.
                let value = String::from_utf8_lossy(body.get(6..).unwrap_or(&[])).into_owned();
                seen.push(format!("D{value}"));
            }
            b'N' | b'S' => {}
            _ => seen.push((tag as char).to_string()),
        }
        if tag == b'Z' {
            return seen;
        }
    }
}

fn raw_session(pc: &Pgcorral) -> TcpStream {
    let mut s = pc.tcp_stream();
    s.write_all(&common::startup_message("postgres", "postgres"))
        .expect("startup");
    loop {
        let (tag, body) = common::read_message(&mut s);
        assert_ne!(tag, b'E', "startup: {}", String::from_utf8_lossy(&body));
        if tag == b'Z' {
            return s;
        }
    }
}

/// In one pipeline: the old statement is refused and what follows it up to
/// the Sync is skipped, as directly; in the next, statements of the same
/// text parsed after the change run, several in one pipeline.
#[test]
fn pipelined_statements_after_a_change() {
    let (_pg, pc) = start();
    let mut s = raw_session(&pc);
    let setup = b"create table t (b int); insert into t values (7)\0";
    assert_eq!(flight(&mut s, &[message(b'Q', setup)]), ["C", "C", "Z"]);
    let sql = "select b from t";
    assert_eq!(
        flight(&mut s, &[parse("old", sql), bind("old"), execute(), sync()]),
        ["1", "2", "D7", "C", "Z"]
    );
    let mut other = pc.connect();
    other
        .batch_execute("alter table t alter column b type text; update t set b = 'seven'")
        .expect("alter");

    assert_eq!(
        flight(
            &mut s,
            &[
                bind("old"),
                execute(),
                parse("skipped", sql),
                bind("skipped"),
                execute(),
                sync()
            ]
        ),
        ["E0A000", "Z"]
    );
    assert_eq!(
        flight(
            &mut s,
            &[
                parse("new1", sql),
                bind("new1"),
                execute(),
                parse("new2", sql),
                bind("new2"),
                execute(),
                bind("new1"),
                execute(),
                sync()
            ]
        ),
        ["1", "2", "Dseven", "C", "1", "2", "Dseven", "C", "2", "Dseven", "C", "Z"]
    );
    assert_eq!(
        flight(
            &mut s,
            &[parse("skipped", sql), bind("skipped"), execute(), sync()]
        ),
        ["1", "2", "Dseven", "C", "Z"],
        "the name skipped before is free"
    );
    assert_eq!(
        flight(&mut s, &[parse("", sql), bind(""), execute(), sync()]),
        ["1", "2", "Dseven", "C", "Z"],
        "the unnamed statement"
    );
}

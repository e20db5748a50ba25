//! The rewriter against a model of PostgreSQL's statement handling: for
//! any script of named Parse/Bind/Describe/Close/Execute/Sync, spread over
//! connections that each know different statements, the client sees the
//! same answers (tags and SQLSTATEs) as it would from one direct server.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::pipeline::responses::sqlstate_of;
use crate::protocol::extended::{Bind, Parse, Target, TargetKind};
use crate::protocol::framer::frames;
use crate::protocol::{message::write_message, ErrorResponse};

const KEY: [u64; 2] = [7, 11];

/// What PostgreSQL does with the extended-protocol messages in a script:
/// named statements per session, and after an error everything up to Sync
/// is discarded. A statement remembers the version of its text's result
/// (see `Schema`) it was parsed at; once that changes, its Binds and
/// Describes are refused as stale.
#[derive(Default)]
struct Session {
    statements: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    skipping: bool,
}

/// What each text returns, shared by all sessions: a version per text,
/// raised by a schema change (0 when never changed).
type Schema = HashMap<Vec<u8>, u32>;

fn stale_error(out: &mut Vec<u8>) {
    write_message(out, b'E', |b| {
        for (kind, value) in [
            (b'S', "ERROR"),
            (b'C', "0A000"),
            (b'M', "cached plan must not change result type"),
            (b'R', "RevalidateCachedQuery"),
        ] {
            b.push(kind);
            b.extend_from_slice(value.as_bytes());
            b.push(0);
        }
        b.push(0);
    });
}

impl Session {
    fn error(&mut self, out: &mut Vec<u8>, code: &str) {
        ErrorResponse::error(code, "model").encode(out);
        self.skipping = true;
    }

    /// Whether the statement exists, and if so whether its result is still
    /// what it was when parsed.
    fn lookup(&self, name: &[u8], schema: &Schema) -> Option<Result<u32, ()>> {
        let (text, version) = self.statements.get(name)?;
        let now = schema.get(text).copied().unwrap_or(0);
        Some(if now == *version { Ok(now) } else { Err(()) })
    }

    /// Answers a stream of whole client messages.
    fn feed(&mut self, stream: &[u8], out: &mut Vec<u8>, schema: &Schema) {
        for f in frames(stream) {
            if self.skipping && f.tag != b'S' {
                continue;
            }
            let reply = |out: &mut Vec<u8>, tag: u8, body: &[u8]| {
                write_message(out, tag, |b| b.extend_from_slice(body))
            };
            match f.tag {
                b'P' => {
                    let p = Parse::read(f.body).unwrap();
                    if !p.name.is_empty() && self.statements.contains_key(p.name) {
                        self.error(out, "42P05");
                    } else {
                        let version = schema.get(p.text).copied().unwrap_or(0);
                        self.statements
                            .insert(p.name.to_vec(), (p.text.to_vec(), version));
                        reply(out, b'1', &[]);
                    }
                }
                b'B' => {
                    let b = Bind::read(f.body).unwrap();
                    match self.lookup(b.statement, schema) {
                        Some(Ok(_)) => reply(out, b'2', &[]),
                        Some(Err(())) => {
                            stale_error(out);
                            self.skipping = true;
                        }
                        None => self.error(out, "26000"),
                    }
                }
                b'D' => {
                    let t = Target::read(b'D', f.body).unwrap();
                    assert_eq!(t.kind, TargetKind::Statement);
                    match self.lookup(t.name, schema) {
                        Some(Ok(0)) => {
                            reply(out, b't', &[0, 0]);
                            reply(out, b'n', &[]);
                        }
                        Some(Ok(version)) => {
                            reply(out, b't', &[0, 0]);
                            // One int4 column named after the version.
                            let mut d = 1u16.to_be_bytes().to_vec();
                            d.extend_from_slice(format!("v{version}\0").as_bytes());
                            d.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 23]);
                            d.extend_from_slice(&[0, 4, 255, 255, 255, 255, 0, 0]);
                            reply(out, b'T', &d);
                        }
                        Some(Err(())) => {
                            stale_error(out);
                            self.skipping = true;
                        }
                        None => self.error(out, "26000"),
                    }
                }
                b'C' => {
                    let t = Target::read(b'C', f.body).unwrap();
                    self.statements.remove(t.name);
                    reply(out, b'3', &[]);
                }
                b'E' => reply(out, b'C', b"SELECT 1\0"),
                b'S' => {
                    self.skipping = false;
                    reply(out, b'Z', b"I");
                }
                other => panic!("unexpected message '{}'", other as char),
            }
        }
    }
}

/// A connection's statement record with least-recently-used eviction, as
/// the slot keeps it.
struct Record {
    cap: usize,
    lru: Vec<String>,
}

impl ServerStatements for Record {
    fn contains(&self, name: &str) -> bool {
        self.lru.iter().any(|n| n == name)
    }
    fn insert(&mut self, name: &str) -> Option<String> {
        self.lru.retain(|n| n != name);
        self.lru.push(name.to_string());
        (self.lru.len() > self.cap).then(|| self.lru.remove(0))
    }
    fn remove(&mut self, name: &str) {
        self.lru.retain(|n| n != name);
    }
    fn clear(&mut self) {
        self.lru.clear();
    }
}

#[derive(Debug, Clone)]
enum Op {
    Parse(usize, usize),
    BindExecute(usize),
    Describe(usize),
    Close(usize),
}

const NAMES: [&str; 3] = ["a", "b", "c"];
const TEXTS: [&str; 2] = ["select 1", "select 2"];

fn encode(op: &Op, out: &mut Vec<u8>) {
    let text = |t: usize| {
        let mut v = TEXTS[t].as_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0]);
        v
    };
    match *op {
        Op::Parse(n, t) => Parse {
            name: NAMES[n].as_bytes(),
            text: &text(t),
        }
        .write(out),
        Op::BindExecute(n) => {
            Bind {
                portal: b"",
                statement: NAMES[n].as_bytes(),
                rest: &[0, 0, 0, 0, 0, 0],
            }
            .write(out);
            write_message(out, b'E', |b| b.extend_from_slice(&[0, 0, 0, 0, 0]));
        }
        Op::Describe(n) => Target::statement(NAMES[n].as_bytes()).write(b'D', out),
        Op::Close(n) => Target::statement(NAMES[n].as_bytes()).write(b'C', out),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..NAMES.len(), 0..TEXTS.len()).prop_map(|(n, t)| Op::Parse(n, t)),
        (0..NAMES.len()).prop_map(Op::BindExecute),
        (0..NAMES.len()).prop_map(Op::Describe),
        (0..NAMES.len()).prop_map(Op::Close),
    ]
}

/// What the client sees, reduced to what must match: tags, and the
/// SQLSTATE of errors (texts differ by design).
fn seen(stream: &[u8]) -> Vec<(u8, [u8; 5])> {
    frames(stream)
        .map(|f| {
            let code = if f.tag == b'E' {
                sqlstate_of(f.body)
            } else {
                [0; 5]
            };
            (f.tag, code)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_sees_what_one_direct_server_would_answer(
        transactions in proptest::collection::vec(
            (proptest::collection::vec(op(), 0..6), 0usize..3),
            1..8,
        ),
        cap in 1usize..4,
    ) {
        let mut direct = Session::default();
        let mut direct_out = Vec::new();
        let mut conns: Vec<(Session, Record)> = (0..3)
            .map(|_| (Session::default(), Record { cap, lru: Vec::new() }))
            .collect();
        let mut rw = Rewriter::new(1000, KEY);
        let mut to_client = Vec::new();
        for (ops, conn) in &transactions {
            let mut script = Vec::new();
            for op in ops {
                encode(op, &mut script);
            }
            write_message(&mut script, b'S', |_| {});
            direct.feed(&script, &mut direct_out, &Schema::new());

            let (session, record) = &mut conns[*conn];
            let mut to_server = Vec::new();
            for f in frames(&script) {
                rw.client_message(f.tag, f.body, record, &mut to_server, &mut to_client)
                    .unwrap();
            }
            // Housekeeping the rewriter adds while answers come back is
            // sent and answered in turn, until the connection is quiet.
            while !to_server.is_empty() {
                let mut answers = Vec::new();
                session.feed(&std::mem::take(&mut to_server), &mut answers, &Schema::new());
                for f in frames(&answers) {
                    rw.server_message(f.tag, f.body, record, &mut to_server, &mut to_client)
                        .unwrap();
                }
            }
            prop_assert!(rw.is_idle(), "idle once the Sync is answered");
            prop_assert_eq!(rw.transaction_status(), b'I');
            for name in &record.lru {
                prop_assert!(session.statements.contains_key(name.as_bytes()),
                    "the record names {} but the connection lacks it", name);
            }
        }
        prop_assert_eq!(seen(&to_client), seen(&direct_out));
    }
}

/// Runs one transaction's script through the rewriter on a connection, with
/// the server's answers fed back until it is quiet; what the client saw.
fn through(
    rw: &mut Rewriter,
    script: &[u8],
    session: &mut Session,
    record: &mut Record,
    schema: &Schema,
) -> Vec<u8> {
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for f in frames(script) {
        rw.client_message(f.tag, f.body, record, &mut to_server, &mut to_client)
            .unwrap();
    }
    while !to_server.is_empty() {
        let mut answers = Vec::new();
        session.feed(&std::mem::take(&mut to_server), &mut answers, schema);
        for f in frames(&answers) {
            rw.server_message(f.tag, f.body, record, &mut to_server, &mut to_client)
                .unwrap();
        }
    }
    to_client
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Scripts over several connections with the results of texts changing
    /// between transactions (another client's DDL): the bookkeeping stays
    /// in step (every request answered, the record never names a statement
    /// the connection lacks), and a text parsed after the changes binds and
    /// runs on every connection, however stale its statements there were.
    #[test]
    fn statements_parsed_after_result_changes_work_everywhere(
        transactions in proptest::collection::vec(
            (proptest::collection::vec(op(), 0..6), 0usize..3, proptest::option::of(0..TEXTS.len())),
            1..10,
        ),
        cap in 1usize..4,
    ) {
        let mut schema = Schema::new();
        let mut conns: Vec<(Session, Record)> = (0..3)
            .map(|_| (Session::default(), Record { cap, lru: Vec::new() }))
            .collect();
        let mut rw = Rewriter::new(1000, KEY);
        let text = |t: usize| {
            let mut v = TEXTS[t].as_bytes().to_vec();
            v.extend_from_slice(&[0, 0, 0]);
            v
        };
        for (ops, conn, change) in &transactions {
            let mut script = Vec::new();
            for op in ops {
                encode(op, &mut script);
            }
            write_message(&mut script, b'S', |_| {});
            let (session, record) = &mut conns[*conn];
            let seen = through(&mut rw, &script, session, record, &schema);
            prop_assert_eq!(frames(&seen).filter(|f| f.tag == b'Z').count(), 1);
            prop_assert!(rw.is_idle(), "idle once the Sync is answered");
            for name in &record.lru {
                prop_assert!(session.statements.contains_key(name.as_bytes()),
                    "the record names {} but the connection lacks it", name);
            }
            if let Some(t) = change {
                *schema.entry(text(*t)).or_default() += 1;
            }
        }
        for (i, (session, record)) in conns.iter_mut().enumerate() {
            for (t, sql) in TEXTS.iter().enumerate() {
                let name = format!("probe{i}{t}");
                let mut script = Vec::new();
                Parse { name: name.as_bytes(), text: &text(t) }.write(&mut script);
                Target::statement(name.as_bytes()).write(b'D', &mut script);
                Bind { portal: b"", statement: name.as_bytes(), rest: &[0, 0, 0, 0, 0, 0] }
                    .write(&mut script);
                write_message(&mut script, b'E', |b| b.extend_from_slice(&[0, 0, 0, 0, 0]));
                write_message(&mut script, b'S', |_| {});
                let seen = through(&mut rw, &script, session, record, &schema);
                let tags: Vec<u8> = frames(&seen).map(|f| f.tag).collect();
                let described = if schema.get(&text(t)).copied().unwrap_or(0) == 0 { b'n' } else { b'T' };
                prop_assert_eq!(
                    tags,
                    vec![b'1', b't', described, b'2', b'C', b'Z'],
                    "{} parsed after the changes, on connection {}", sql, i
                );
            }
        }
    }
}

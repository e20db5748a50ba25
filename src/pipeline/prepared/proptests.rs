//! The rewriter against a model of PostgreSQL's statement handling: for
//! any script of named Parse/Bind/Describe/Close/Execute/Sync, spread over
//! connections that each know different statements, the client sees the
//! same answers (tags and SQLSTATEs) as it would from one direct server.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::pipeline::responses::sqlstate_of;
use crate::protocol::extended::{Bind, Parse, Target, TargetKind};
use crate::protocol::framer::frames;
use crate::protocol::{message::write_message, ErrorResponse};

const KEY: [u64; 2] = [7, 11];

/// What PostgreSQL does with the extended-protocol messages in a script:
/// named statements per session, and after an error everything up to Sync
/// is discarded.
#[derive(Default)]
struct Session {
    statements: HashSet<Vec<u8>>,
    skipping: bool,
}

impl Session {
    fn error(&mut self, out: &mut Vec<u8>, code: &str) {
        ErrorResponse::error(code, "model").encode(out);
        self.skipping = true;
    }

    /// Answers a stream of whole client messages.
    fn feed(&mut self, stream: &[u8], out: &mut Vec<u8>) {
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
                    if !p.name.is_empty() && self.statements.contains(p.name) {
                        self.error(out, "42P05");
                    } else {
                        self.statements.insert(p.name.to_vec());
                        reply(out, b'1', &[]);
                    }
                }
                b'B' => {
                    let b = Bind::read(f.body).unwrap();
                    if self.statements.contains(b.statement) {
                        reply(out, b'2', &[]);
                    } else {
                        self.error(out, "26000");
                    }
                }
                b'D' => {
                    let t = Target::read(b'D', f.body).unwrap();
                    assert_eq!(t.kind, TargetKind::Statement);
                    if self.statements.contains(t.name) {
                        reply(out, b't', &[0, 0]);
                        reply(out, b'n', &[]);
                    } else {
                        self.error(out, "26000");
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
            direct.feed(&script, &mut direct_out);

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
                session.feed(&std::mem::take(&mut to_server), &mut answers);
                for f in frames(&answers) {
                    rw.server_message(f.tag, f.body, record, &mut to_server, &mut to_client)
                        .unwrap();
                }
            }
            prop_assert!(rw.is_idle(), "idle once the Sync is answered");
            prop_assert_eq!(rw.transaction_status(), b'I');
            for name in &record.lru {
                prop_assert!(session.statements.contains(name.as_bytes()),
                    "the record names {} but the connection lacks it", name);
            }
        }
        prop_assert_eq!(seen(&to_client), seen(&direct_out));
    }
}

//! Start-up input that no well-behaved client sends, answered as
//! PostgreSQL answers the very same bytes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{read_answer, write_tolerant, Answer, Pgcorral, Postgres};

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn pgcorral(pc: &Pgcorral) -> Box<dyn Stream> {
    Box::new(pc.tcp_stream())
}

/// PostgreSQL over its Unix socket: over TCP, a server built with GSSAPI
/// accepts a GSSENCRequest, where pgcorral (and PostgreSQL on a Unix
/// socket) declines it.
fn postgres(pg: &Postgres) -> Box<dyn Stream> {
    let path = pg.socket_dir.join(format!(".s.PGSQL.{}", pg.port));
    let s = UnixStream::connect(&path).expect("connect to PostgreSQL's Unix socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    Box::new(s)
}

fn untagged(code: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const SSL: u32 = 80877103;
const GSSENC: u32 = 80877104;

/// Sends the packets in turn; each but the last must be answered with the
/// single byte `N`. Returns the answer to the last.
fn answer_to(mut s: Box<dyn Stream>, packets: &[Vec<u8>]) -> Answer {
    let (last, before) = packets.split_last().expect("at least one packet");
    for p in before {
        s.write_all(p).expect("send");
        let mut n = [0u8; 1];
        s.read_exact(&mut n).expect("read the one-byte answer");
        assert_eq!(n[0], b'N', "an encryption request was not declined");
    }
    write_tolerant(&mut s, last);
    loop {
        match read_answer(&mut s) {
            // PostgreSQL under `trust` says AuthenticationOk before it looks
            // the role up; what comes before the refusal depends on the
            // authentication method, so only the refusal is compared.
            Answer::Other(b'R') => {
                let mut len = [0u8; 4];
                s.read_exact(&mut len).expect("read a message length");
                let len = u32::from_be_bytes(len).clamp(4, 1024) as usize;
                let mut body = vec![0u8; len - 4];
                s.read_exact(&mut body)
                    .expect("read an Authentication body");
            }
            answer => return answer,
        }
    }
}

/// The fields a client acts on: severity, SQLSTATE and message.
fn gist(answer: &Answer) -> Vec<(u8, String)> {
    match answer {
        Answer::Error(fields) => fields
            .iter()
            .filter(|(c, _)| matches!(c, b'S' | b'V' | b'C' | b'M'))
            .cloned()
            .collect(),
        Answer::Other(tag) => panic!("expected an ErrorResponse, got a {:?}", *tag as char),
        other => panic!("expected an ErrorResponse, got {other:?}"),
    }
}

fn same_answer(pg: &Postgres, pc: &Pgcorral, packets: &[Vec<u8>]) {
    let theirs = gist(&answer_to(postgres(pg), packets));
    let ours = gist(&answer_to(pgcorral(pc), packets));
    assert_eq!(ours, theirs, "pgcorral answered otherwise than PostgreSQL");
}

#[test]
fn a_repeated_encryption_request_is_an_unsupported_protocol() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let ssl = untagged(SSL, b"");
    let gss = untagged(GSSENC, b"");
    for packets in [
        vec![ssl.clone(), ssl.clone()],
        vec![gss.clone(), gss.clone()],
        vec![ssl.clone(), gss.clone(), ssl.clone()],
        vec![gss.clone(), ssl.clone(), gss.clone()],
    ] {
        same_answer(&pg, &pc, &packets);
    }
    // The answer is PostgreSQL's, not merely the same as whatever it says.
    let answer = answer_to(pgcorral(&pc), &[ssl.clone(), ssl]);
    assert_eq!(answer.sqlstate(), Some("0A000"));
    assert!(gist(&answer).contains(&(
        b'M',
        "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0".into()
    )));
}

#[test]
fn names_that_are_not_utf8_are_roles_and_databases_that_do_not_exist() {
    let pg = Postgres::start();
    let pc = Pgcorral::start(&pg, "");
    let v3 = 0x0003_0000;
    for payload in [
        &b"user\0bad\xff\xfename\0database\0postgres\0\0"[..],
        b"user\0postgres\0database\0bad\xffdb\0\0",
        b"user\0\xff\0database\0\xfe\0\0",
    ] {
        same_answer(&pg, &pc, &[untagged(v3, payload)]);
    }
    let answer = answer_to(pgcorral(&pc), &[untagged(v3, b"user\0a\xffb\0\0")]);
    assert_eq!(answer.sqlstate(), Some("28000"));
}

/// A tracked setting with a value the server refuses (pgcorral sets these
/// with SET after login, never in the startup packet) is refused with the
/// server's own error, as when the client connects directly.
#[test]
fn a_bad_tracked_setting_gets_the_servers_own_error() {
    let pg = Postgres::start();
    for pipeline in ["session", "transaction"] {
        let pc = Pgcorral::start(&pg, &format!("pipeline = \"{pipeline}\"\n"));
        let v3 = 0x0003_0000;
        for payload in [
            &b"user\0postgres\0database\0postgres\0client_encoding\0bogus\0\0"[..],
            b"user\0postgres\0database\0postgres\0DateStyle\0nonsense\0\0",
            b"user\0postgres\0database\0postgres\0options\0-c TimeZone=Nowhere/Never\0\0",
        ] {
            same_answer(&pg, &pc, &[untagged(v3, payload)]);
        }
        // A good client is unharmed afterwards.
        assert_eq!(pc.psql("select 1"), "1");
    }
}

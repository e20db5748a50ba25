//! Borrowed views of the extended-query messages a client sends that
//! pgcorral has to look into: Parse, Bind, Describe and Close (which share
//! a layout), and the simple Query. Each view points into the message body
//! it was read from, so nothing is copied to inspect a message; `write`
//! puts one back on the wire (with a length back-patched by
//! `write_message`), which is how a rewritten message is sent.
//!
//! Only the fields pgcorral acts on are split out: the rest of a Bind
//! (parameters and formats) is the server's to check, and is carried as
//! one slice.

use super::message::{put_cstr_bytes, write_message, BodyReader};
use super::tag::frontend;
use super::ProtocolError;

/// Parse: statement name, then query text and parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    /// Everything after the name: the query with its NUL, the parameter
    /// type count and the OIDs. Two Parses that differ only in name have
    /// the same `text`.
    pub text: &'a [u8],
}

impl<'a> Parse<'a> {
    /// Checks the whole shape, since `text` is kept and hashed as a unit.
    pub fn read(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = BodyReader::named(body, "Parse");
        let name = r.read_cstr_bytes()?;
        let text = r.clone().remaining();
        r.read_cstr_bytes()?;
        let count = r.read_i16()?;
        let oids = r.remaining();
        if count < 0 || oids.len() != 4 * count as usize {
            return Err(ProtocolError::malformed("Parse"));
        }
        Ok(Parse { name, text })
    }

    /// The query text, without its NUL.
    pub fn query(&self) -> &'a [u8] {
        let end = self.text.iter().position(|&b| b == 0);
        // `read` found the NUL; a view built by hand may lack it.
        &self.text[..end.unwrap_or(self.text.len())]
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        write_message(out, frontend::PARSE, |b| {
            put_cstr_bytes(b, self.name);
            b.extend_from_slice(self.text);
        });
    }
}

/// Bind: portal and statement name; parameters and result formats follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn read(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = BodyReader::named(body, "Bind");
        let portal = r.read_cstr_bytes()?;
        let statement = r.read_cstr_bytes()?;
        Ok(Bind {
            portal,
            statement,
            rest: r.remaining(),
        })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        write_message(out, frontend::BIND, |b| {
            put_cstr_bytes(b, self.portal);
            put_cstr_bytes(b, self.statement);
            b.extend_from_slice(self.rest);
        });
    }
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Statement,
    Portal,
}

impl TargetKind {
    fn byte(self) -> u8 {
        match self {
            TargetKind::Statement => b'S',
            TargetKind::Portal => b'P',
        }
    }
}

/// The body of a Describe or a Close: a kind byte and a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: TargetKind,
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    /// `tag` is the message's (Describe or Close), for the error text.
    pub fn read(tag: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let what = if tag == frontend::CLOSE {
            "Close"
        } else {
            "Describe"
        };
        let mut r = BodyReader::named(body, what);
        let kind = match r.read_u8()? {
            b'S' => TargetKind::Statement,
            b'P' => TargetKind::Portal,
            _ => return Err(ProtocolError::malformed(what)),
        };
        let name = r.read_cstr_bytes()?;
        r.finish()?;
        Ok(Target { kind, name })
    }

    /// A Describe or Close of a statement.
    pub fn statement(name: &'a [u8]) -> Self {
        Target {
            kind: TargetKind::Statement,
            name,
        }
    }

    pub fn write(&self, tag: u8, out: &mut Vec<u8>) {
        write_message(out, tag, |b| {
            b.push(self.kind.byte());
            put_cstr_bytes(b, self.name);
        });
    }
}

/// A simple Query: the SQL up to its NUL. Bytes after the NUL are ignored,
/// as PostgreSQL does; the text need not be UTF-8 (it is in the client's
/// encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub sql: &'a [u8],
}

impl<'a> Query<'a> {
    pub fn read(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let sql = BodyReader::named(body, "Query").read_cstr_bytes()?;
        Ok(Query { sql })
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        write_message(out, frontend::QUERY, |b| put_cstr_bytes(b, self.sql));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framer::frames;
    use proptest::prelude::*;

    fn body_of(wire: &[u8]) -> (u8, &[u8]) {
        let mut all = frames(wire);
        let f = all.next().expect("one message");
        assert!(all.next().is_none());
        (f.tag, f.body)
    }

    fn parse_text(sql: &[u8], oids: &[u32]) -> Vec<u8> {
        let mut t = sql.to_vec();
        t.push(0);
        t.extend_from_slice(&(oids.len() as i16).to_be_bytes());
        for o in oids {
            t.extend_from_slice(&o.to_be_bytes());
        }
        t
    }

    fn cstring() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..24)
    }

    proptest! {
        #[test]
        fn parse_round_trips(name in cstring(), sql in cstring(),
                             oids in proptest::collection::vec(any::<u32>(), 0..8)) {
            let text = parse_text(&sql, &oids);
            let mut wire = Vec::new();
            Parse { name: &name, text: &text }.write(&mut wire);
            let (tag, body) = body_of(&wire);
            prop_assert_eq!(tag, frontend::PARSE);
            let parse = Parse::read(body).unwrap();
            prop_assert_eq!(parse, Parse { name: &name, text: &text });
            prop_assert_eq!(parse.query(), &sql[..]);
        }

        #[test]
        fn bind_round_trips(portal in cstring(), statement in cstring(),
                            rest in proptest::collection::vec(any::<u8>(), 0..32)) {
            let bind = Bind { portal: &portal, statement: &statement, rest: &rest };
            let mut wire = Vec::new();
            bind.write(&mut wire);
            let (tag, body) = body_of(&wire);
            prop_assert_eq!(tag, frontend::BIND);
            prop_assert_eq!(Bind::read(body).unwrap(), bind);
        }

        #[test]
        fn target_round_trips(name in cstring(), portal in any::<bool>(), close in any::<bool>()) {
            let kind = if portal { TargetKind::Portal } else { TargetKind::Statement };
            let tag = if close { frontend::CLOSE } else { frontend::DESCRIBE };
            let target = Target { kind, name: &name };
            let mut wire = Vec::new();
            target.write(tag, &mut wire);
            let (t, body) = body_of(&wire);
            prop_assert_eq!(t, tag);
            prop_assert_eq!(Target::read(tag, body).unwrap(), target);
        }

        #[test]
        fn query_round_trips(sql in cstring()) {
            let mut wire = Vec::new();
            Query { sql: &sql }.write(&mut wire);
            let (tag, body) = body_of(&wire);
            prop_assert_eq!(tag, frontend::QUERY);
            prop_assert_eq!(Query::read(body).unwrap().sql, &sql[..]);
        }

        /// No body, however mangled, makes a reader panic.
        #[test]
        fn readers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Parse::read(&body);
            let _ = Bind::read(&body);
            let _ = Target::read(frontend::CLOSE, &body);
            let _ = Query::read(&body);
        }
    }

    #[test]
    fn malformed_bodies_name_the_message() {
        let cases: [(&str, Result<(), ProtocolError>); 6] = [
            ("Parse", Parse::read(b"no-end").map(drop)),
            ("Parse", Parse::read(b"n\0select 1\0").map(drop)),
            ("Parse", Parse::read(b"n\0select 1\0\0\x01\0\0").map(drop)),
            ("Bind", Bind::read(b"portal\0stmt").map(drop)),
            (
                "Describe",
                Target::read(frontend::DESCRIBE, b"X\0").map(drop),
            ),
            ("Close", Target::read(frontend::CLOSE, b"S").map(drop)),
        ];
        for (what, r) in cases {
            match r {
                Err(ProtocolError::Malformed { what: w }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert!(Target::read(frontend::CLOSE, b"Sname\0extra").is_err());
        assert!(Query::read(b"select 1").is_err());
        assert_eq!(Query::read(b"select 1\0junk").unwrap().sql, b"select 1");
        assert!(Parse::read(b"n\0q\0\xff\xff").is_err(), "negative count");
    }
}

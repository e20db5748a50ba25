//! The statements a client has named, and the server-side name every
//! distinct statement gets.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use super::{PreparedError, SERVER_NAME_PREFIX};
use crate::protocol::extended::Parse;
use crate::protocol::row_description::RowDescription;

/// One distinct statement, shared by every client name that maps to it.
#[derive(Debug)]
pub struct Statement {
    pub(super) hash: u64,
    pub(super) server_name: String,
    /// The Parse body after the statement name: query text with its NUL,
    /// parameter type count and type OIDs. This is what is hashed, so two
    /// Parses that differ only in the name are one statement.
    pub(super) text: Box<[u8]>,
    /// The result shape (see [`result_shape`]) the server last described
    /// for the text to this client.
    pub(super) result: Cell<Option<u64>>,
}

impl Statement {
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub(super) fn write_parse(&self, out: &mut Vec<u8>) {
        Parse {
            name: self.server_name.as_bytes(),
            text: &self.text,
        }
        .write(out);
    }
}

/// The server-side name for a statement hash.
pub fn server_name(hash: u64) -> String {
    format!("{SERVER_NAME_PREFIX}{hash:016x}")
}

/// The hash back from a server-side name (for a record that stores only
/// hashes); `None` for names pgcorral does not make.
pub fn server_name_hash(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(SERVER_NAME_PREFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Hash of a statement's text (the Parse body after the name). SipHash-2-4
/// keyed with `key`: every worker must use the same key so that they agree
/// on names, and a key clients cannot learn keeps them from crafting a text
/// that takes over another statement's name.
pub fn statement_hash(key: [u64; 2], text: &[u8]) -> u64 {
    crate::hash::siphash24(key[0], key[1], text)
}

#[derive(Debug, Clone)]
pub(super) struct Named {
    pub(super) statement: Rc<Statement>,
    pub(super) used: u64,
    /// The result shape the client was first given for this name.
    pub(super) result: Option<u64>,
}

/// What PostgreSQL compares when it decides that a statement's result has
/// changed under it (column count, names, types and type modifiers), from
/// a statement's RowDescription, or NoData (`None` body). `None` for a
/// malformed description. Table and column origins are left out: a table
/// dropped and created again with the same columns changes nothing.
pub fn result_shape(key: [u64; 2], row_description: Option<&[u8]>) -> Option<u64> {
    let Some(body) = row_description else {
        return Some(statement_hash(key, b"no data"));
    };
    let description = RowDescription::read(body).ok()?;
    let mut shape = Vec::with_capacity(body.len());
    shape.extend_from_slice(&(description.len() as u16).to_be_bytes());
    for field in description.fields() {
        shape.extend_from_slice(field.name);
        shape.push(0);
        shape.extend_from_slice(&field.type_oid.to_be_bytes());
        shape.extend_from_slice(&field.type_modifier.to_be_bytes());
    }
    Some(statement_hash(key, &shape))
}

/// The client's own statement names, at most `max` of them: beyond that
/// the least recently used name is forgotten (a later Bind to it gets
/// "does not exist"). Statement texts are held once however many names
/// share them.
#[derive(Debug)]
pub struct ClientStatements {
    pub(super) by_name: HashMap<Box<[u8]>, Named>,
    /// Every statement still referenced, by hash, so a text is stored once.
    pub(super) texts: HashMap<u64, Weak<Statement>>,
    pub(super) clock: u64,
    pub(super) max: usize,
}

impl ClientStatements {
    pub fn new(max: usize) -> Self {
        ClientStatements {
            by_name: HashMap::new(),
            texts: HashMap::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.by_name.contains_key(name)
    }

    /// The statement a client name maps to; counts as a use.
    pub fn lookup(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        self.clock += 1;
        let named = self.by_name.get_mut(name)?;
        named.used = self.clock;
        Some(named.statement.clone())
    }

    /// Maps a new name; returns the name forgotten to make room.
    pub(super) fn insert(
        &mut self,
        name: &[u8],
        statement: Rc<Statement>,
    ) -> Option<(Box<[u8]>, Rc<Statement>)> {
        let mut evicted = None;
        if self.by_name.len() >= self.max && !self.by_name.contains_key(name) {
            let oldest = self
                .by_name
                .iter()
                .min_by_key(|(_, n)| n.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                evicted = self.by_name.remove(&k).map(|n| (k, n.statement));
            }
        }
        self.clock += 1;
        self.by_name.insert(
            name.into(),
            Named {
                statement,
                used: self.clock,
                result: None,
            },
        );
        evicted
    }

    /// The server described the statement `name` maps to (unless the name
    /// was dropped or taken for another statement meanwhile) as `shape`.
    pub(super) fn described(&mut self, name: &[u8], statement: &Rc<Statement>, shape: u64) {
        statement.result.set(Some(shape));
        if let Some(named) = self.by_name.get_mut(name) {
            if Rc::ptr_eq(&named.statement, statement) && named.result.is_none() {
                named.result = Some(shape);
            }
        }
    }

    /// Whether the client was given one result shape for this name and
    /// another for the same text since: the text's result changed after
    /// the name was prepared, and PostgreSQL refuses such a statement.
    pub(super) fn outdated(&self, name: &[u8]) -> bool {
        self.by_name.get(name).is_some_and(|named| {
            matches!(
                (named.result, named.statement.result.get()),
                (Some(mine), Some(latest)) if mine != latest
            )
        })
    }

    pub(super) fn remove(&mut self, name: &[u8]) -> Option<Rc<Statement>> {
        self.by_name.remove(name).map(|n| n.statement)
    }

    pub(super) fn remove_if(&mut self, name: &[u8], statement: &Rc<Statement>) {
        if self
            .by_name
            .get(name)
            .is_some_and(|n| Rc::ptr_eq(&n.statement, statement))
        {
            self.by_name.remove(name);
        }
    }

    /// Puts back a name an undone request had removed, unless the name is
    /// taken again or there is no room (then it stays forgotten, as if
    /// evicted).
    pub(super) fn restore(&mut self, name: Box<[u8]>, statement: Rc<Statement>) {
        if self.by_name.len() < self.max && !self.by_name.contains_key(&name) {
            self.clock += 1;
            self.by_name.insert(
                name,
                Named {
                    statement,
                    used: self.clock,
                    result: None,
                },
            );
        }
    }

    pub(super) fn take_all(&mut self) -> HashMap<Box<[u8]>, Named> {
        std::mem::take(&mut self.by_name)
    }

    /// The one shared statement for this text.
    pub(super) fn intern(
        &mut self,
        key: [u64; 2],
        text: &[u8],
    ) -> Result<Rc<Statement>, PreparedError> {
        let hash = statement_hash(key, text);
        if let Some(existing) = self.texts.get(&hash).and_then(Weak::upgrade) {
            if *existing.text != *text {
                return Err(PreparedError::HashCollision {
                    name: existing.server_name.clone(),
                });
            }
            return Ok(existing);
        }
        let statement = Rc::new(Statement {
            hash,
            server_name: server_name(hash),
            text: text.into(),
            result: Cell::new(None),
        });
        // Dead entries are swept only now and then; the bound keeps the
        // map proportional to the names (plus what the queue still holds).
        if self.texts.len() >= 2 * self.max + 64 {
            self.texts.retain(|_, w| w.strong_count() > 0);
        }
        self.texts.insert(hash, Rc::downgrade(&statement));
        Ok(statement)
    }
}

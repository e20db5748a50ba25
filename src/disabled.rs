//! Databases closed to new clients by `pgcorral-cli disable`: the table in
//! the shared segment and the set it holds.
//!
//! The supervisor keeps the authoritative set and writes it into the table;
//! a worker reads the table once, while its client starts up, and refuses
//! the client (`management::disabled::refuse`). Clients already connected
//! are not affected.
//!
//! The table is a seqlock: the supervisor (its only writer) makes the
//! sequence odd, rewrites the entries and makes it even again; a reader
//! retries when the sequence was odd or changed under it. Every field is
//! an atomic, so a torn read is detected, never undefined.
//!
//! `all` turns the meaning of the entries around: when it is off they are
//! the disabled databases; when it is on (`disable` without a name) every
//! database is disabled except the entries (`enable NAME` afterwards).

use std::collections::BTreeSet;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Databases that can be named at once (disabled ones, or the exceptions
/// while every database is disabled).
pub const MAX_ENTRIES: usize = 32;
/// PostgreSQL's NAMEDATALEN - 1: longer names are compared on their first
/// 63 bytes (whole characters), as PostgreSQL itself truncates them.
const NAME_MAX: usize = 63;
const NAME_WORDS: usize = 8;
/// A reader gives up after this many inconsistent reads (a supervisor that
/// died in the middle of a write) and lets the client in.
const READ_ATTEMPTS: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DisabledError {
    #[error("at most {MAX_ENTRIES} databases can be listed; enable or disable all instead")]
    Full,
}

#[repr(C)]
struct NameRecord {
    len: AtomicU32,
    _reserved: AtomicU32,
    words: [AtomicU64; NAME_WORDS],
}

/// The table in the shared segment (`Segment::disabled`). All-zero bytes
/// are an empty table: every database enabled.
#[repr(C)]
pub struct DisabledTable {
    seq: AtomicU32,
    all: AtomicU32,
    count: AtomicU32,
    _reserved: AtomicU32,
    names: [NameRecord; MAX_ENTRIES],
}

/// The set as the supervisor keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisabledSet {
    /// Every database is disabled, except `names`.
    pub all: bool,
    /// Disabled databases, or (with `all`) the enabled exceptions.
    pub names: BTreeSet<String>,
}

/// The name cut to at most 63 bytes at a character boundary, as
/// PostgreSQL clips identifiers.
fn truncated(name: &str) -> &str {
    let mut end = name.len().min(NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn key(name: &str) -> String {
    truncated(name).to_string()
}

impl DisabledSet {
    pub fn is_disabled(&self, database: &str) -> bool {
        self.all != self.names.contains(&key(database))
    }

    /// `disable` (`None`: every database).
    pub fn disable(&mut self, database: Option<&str>) -> Result<(), DisabledError> {
        match database {
            None => {
                self.all = true;
                self.names.clear();
            }
            Some(db) if self.all => {
                self.names.remove(&key(db));
            }
            Some(db) => {
                if self.names.len() >= MAX_ENTRIES && !self.names.contains(&key(db)) {
                    return Err(DisabledError::Full);
                }
                self.names.insert(key(db));
            }
        }
        Ok(())
    }

    /// `enable` (`None`: every database).
    pub fn enable(&mut self, database: Option<&str>) -> Result<(), DisabledError> {
        match database {
            None => {
                self.all = false;
                self.names.clear();
            }
            Some(db) if self.all => {
                if self.names.len() >= MAX_ENTRIES && !self.names.contains(&key(db)) {
                    return Err(DisabledError::Full);
                }
                self.names.insert(key(db));
            }
            Some(db) => {
                self.names.remove(&key(db));
            }
        }
        Ok(())
    }
}

impl DisabledTable {
    /// Supervisor only (the one writer): publishes `set`.
    pub fn store(&self, set: &DisabledSet) -> Result<(), DisabledError> {
        if set.names.len() > MAX_ENTRIES {
            return Err(DisabledError::Full);
        }
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.all.store(u32::from(set.all), Ordering::Relaxed);
        self.count.store(set.names.len() as u32, Ordering::Relaxed);
        for (rec, name) in self.names.iter().zip(&set.names) {
            let bytes = truncated(name).as_bytes();
            for (i, word) in rec.words.iter().enumerate() {
                let mut w = [0u8; 8];
                let from = (i * 8).min(bytes.len());
                let to = (from + 8).min(bytes.len());
                w[..to - from].copy_from_slice(&bytes[from..to]);
                word.store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
            rec.len.store(bytes.len() as u32, Ordering::Relaxed);
        }
        self.seq.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// A consistent copy of the table; `None` if none could be had (the
    /// writer died in the middle of an update).
    pub fn load(&self) -> Option<DisabledSet> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let all = self.all.load(Ordering::Relaxed) != 0;
            let count = (self.count.load(Ordering::Relaxed) as usize).min(MAX_ENTRIES);
            let mut names = BTreeSet::new();
            for rec in &self.names[..count] {
                let len = (rec.len.load(Ordering::Relaxed) as usize).min(NAME_WORDS * 8);
                let mut bytes = Vec::with_capacity(NAME_WORDS * 8);
                for word in &rec.words {
                    bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
                }
                bytes.truncate(len);
                names.insert(String::from_utf8_lossy(&bytes).into_owned());
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(DisabledSet { all, names });
            }
        }
        None
    }

    pub fn is_disabled(&self, database: &str) -> bool {
        self.load().is_some_and(|set| set.is_disabled(database))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Segment;

    #[test]
    fn set_semantics() {
        let mut s = DisabledSet::default();
        assert!(!s.is_disabled("a"));
        s.disable(Some("a")).unwrap();
        assert!(s.is_disabled("a") && !s.is_disabled("b"));
        s.disable(None).unwrap();
        assert!(s.is_disabled("a") && s.is_disabled("b"));
        s.enable(Some("b")).unwrap();
        assert!(s.is_disabled("a") && !s.is_disabled("b"));
        s.enable(None).unwrap();
        assert!(!s.is_disabled("a") && !s.is_disabled("b"));
        for i in 0..MAX_ENTRIES {
            s.disable(Some(&format!("d{i}"))).unwrap();
        }
        assert_eq!(s.disable(Some("one-more")), Err(DisabledError::Full));
        s.disable(Some("d0")).unwrap();
        let long = "x".repeat(100);
        s.enable(None).unwrap();
        s.disable(Some(&long)).unwrap();
        assert!(s.is_disabled(&"x".repeat(63)), "compared on 63 bytes");
    }

    #[test]
    fn table_round_trips_through_the_segment() {
        let seg = Segment::create(1, &[]).unwrap();
        assert_eq!(seg.disabled().load(), Some(DisabledSet::default()));
        let mut s = DisabledSet::default();
        s.disable(Some("app")).unwrap();
        s.disable(Some(&"y".repeat(80))).unwrap();
        s.disable(Some("ünïcode")).unwrap();
        seg.disabled().store(&s).unwrap();
        let again = Segment::attach_file(seg.memfd().try_clone().unwrap()).unwrap();
        assert_eq!(again.disabled().load(), Some(s.clone()));
        assert!(again.disabled().is_disabled("app"));
        assert!(!again.disabled().is_disabled("other"));
        s.disable(None).unwrap();
        s.enable(Some("other")).unwrap();
        seg.disabled().store(&s).unwrap();
        assert!(again.disabled().is_disabled("app"));
        assert!(!again.disabled().is_disabled("other"));
    }
}

//! Recognises SQL that leaves session state behind, of two kinds. State
//! that cannot follow a client from one pooled connection to the next
//! (temporary tables, LISTEN, session advisory locks, held cursors,
//! SQL-level PREPARE, LOAD): the transaction pipeline keeps the connection
//! of a client that sends any of it. And session-level settings (`SET`,
//! `RESET`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `set_config(..,
//! false)`, `DISCARD ALL`): the lexer only says that they may have
//! changed; the server, asked at the end of the transaction, says what
//! they are (`server::settings_follow`), so GUC rules (rollback, savepoints,
//! `SET LOCAL`) are PostgreSQL's own and not re-implemented here.
//!
//! The lexer follows PostgreSQL's: comments (`--`, nested `/* */`), string
//! literals (`''` doubling, `E''` with backslash escapes, dollar quoting),
//! quoted identifiers, several statements split by `;`. Text it cannot
//! lex (an unterminated literal, or one read differently because the
//! server has `standard_conforming_strings` off) pins when any word that
//! could start such state appears in it, and counts as a setting change
//! when a word that could change one does: a missed pin or change leaks
//! state to another client, a needless one only costs a connection or a
//! round trip.

use std::fmt;

use crate::protocol::extended::{Parse, Query};
use crate::server::params;

/// Why a client keeps its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinReason {
    /// `CREATE TEMP ...` or `SELECT ... INTO TEMP`.
    TempTable,
    Listen,
    /// A session-level advisory lock function.
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    /// SQL-level `PREPARE`.
    Prepare,
    Load,
    /// A Parse or Query too large to be read whole.
    Unread,
    /// Text the lexer could not read, with a telling word in it.
    Unlexable,
}

impl fmt::Display for PinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinReason::TempTable => f.write_str("temporary table"),
            PinReason::Listen => f.write_str("LISTEN"),
            PinReason::AdvisoryLock => f.write_str("session advisory lock"),
            PinReason::HoldCursor => f.write_str("cursor WITH HOLD"),
            PinReason::Prepare => f.write_str("SQL PREPARE"),
            PinReason::Load => f.write_str("LOAD"),
            PinReason::Unread => f.write_str("statement too large to inspect"),
            PinReason::Unlexable => f.write_str("statement not understood"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted keyword or identifier, lowercased.
    Word(String),
    /// A quoted identifier, as written between the quotes (`""` undone).
    Quoted(String),
    /// A string literal's content (escapes not undone).
    Str(Vec<u8>),
    /// `;` (statement end), `(`, `)`, `,`, `.`.
    Punct(u8),
    /// Anything else: numbers, operators, parameters.
    Other,
}

/// What a client's statement text may leave on its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The first statement leaving state that cannot follow the client.
    pub pin: Option<PinReason>,
    /// A session-level setting, the role or the session authorization may
    /// have changed (other than the reported parameters pgcorral carries
    /// from their ParameterStatus).
    pub settings: bool,
    /// Qualified names (`app.tenant`, lowercased) being set or reset: a
    /// placeholder setting is hidden from `pg_settings`, so the server is
    /// asked for these by name.
    pub custom: Vec<String>,
}

/// Every finding needs a word containing one of these, so text without
/// any (most queries) is not lexed at all. A `DO` block changes a setting
/// only through words containing `set` (or through functions, which are
/// out of sight anyway), so `do` needs no entry of its own.
const NEEDED: &[&[u8]] = &[
    b"temp",
    b"listen",
    b"advisory",
    b"hold",
    b"prepare",
    b"load",
    b"set",
    b"call",
    b"discard",
];

fn may_matter(sql: &[u8]) -> bool {
    sql.windows(3).enumerate().any(|(i, w)| {
        let w = [w[0] | 0x20, w[1] | 0x20, w[2] | 0x20];
        NEEDED.iter().any(|n| {
            n[..3] == w
                && sql
                    .get(i..i + n.len())
                    .is_some_and(|t| t.eq_ignore_ascii_case(n))
        })
    })
}

/// What the statements in `sql` may leave on the session.
pub fn inspect(sql: &[u8]) -> Findings {
    if !may_matter(sql) {
        return Findings::default();
    }
    lexed(sql)
}

/// `inspect` without the quick test.
fn lexed(sql: &[u8]) -> Findings {
    let (tokens, rest) = lex(sql);
    let mut found = Findings::default();
    for s in tokens.split(|t| *t == Token::Punct(b';')) {
        statement(s, &mut found);
    }
    if !rest.is_empty() {
        if found.pin.is_none() && telling_word(rest, TELLING_PIN) {
            found.pin = Some(PinReason::Unlexable);
        }
        found.settings |= telling_word(rest, TELLING_SETTINGS);
    }
    found
}

/// The text of a Parse body's query; `None` for a malformed Parse, which
/// the server refuses without running anything.
pub fn parse_query(body: &[u8]) -> Option<&[u8]> {
    Parse::read(body).ok().map(|p| p.query())
}

/// The text of a Query body; all of it when the NUL is missing, so that
/// nothing a server might still run goes unlooked at.
pub fn query_text(body: &[u8]) -> &[u8] {
    Query::read(body).map_or(body, |q| q.sql)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The tokens, and the text from the first thing that could not be lexed
/// (empty when all could).
fn lex(sql: &[u8]) -> (Vec<Token>, &[u8]) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        let b = sql[i];
        let rest = &sql[i..];
        if is_space(b) {
            i += 1;
        } else if rest.starts_with(b"--") {
            i += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        } else if rest.starts_with(b"/*") {
            match block_comment(rest) {
                Some(n) => i += n,
                None => return (out, rest),
            }
        } else if b == b'\'' {
            match quoted(rest, b'\'', false) {
                Some((n, s)) => {
                    out.push(Token::Str(s));
                    i += n;
                }
                None => return (out, rest),
            }
        } else if b == b'"' {
            match quoted(rest, b'"', false) {
                Some((n, s)) => {
                    out.push(Token::Quoted(String::from_utf8_lossy(&s).into_owned()));
                    i += n;
                }
                None => return (out, rest),
            }
        } else if b == b'$' && dollar_tag(rest).is_some() {
            let Some(tag) = dollar_tag(rest) else {
                return (out, rest);
            };
            let body = &rest[tag..];
            match find(body, &rest[..tag]) {
                Some(at) => {
                    out.push(Token::Str(body[..at].to_vec()));
                    i += tag + at + tag;
                }
                None => return (out, rest),
            }
        } else if ident_start(b) {
            let len = rest
                .iter()
                .position(|&c| !ident_cont(c))
                .unwrap_or(rest.len());
            let word = &rest[..len];
            let after = &rest[len..];
            // A one-letter prefix glued to a quote makes a literal of it:
            // E'' with backslash escapes, or B'', X'', N'' and U&'' / U&"".
            if after.first() == Some(&b'\'') && len == 1 {
                let escapes = word.eq_ignore_ascii_case(b"e");
                match quoted(after, b'\'', escapes) {
                    Some((n, s)) => {
                        out.push(Token::Str(s));
                        i += len + n;
                        continue;
                    }
                    None => return (out, rest),
                }
            }
            if word.eq_ignore_ascii_case(b"u") && after.first() == Some(&b'&') {
                if let Some(&q @ (b'\'' | b'"')) = after.get(1) {
                    match quoted(&after[1..], q, false) {
                        Some((n, s)) => {
                            out.push(if q == b'"' {
                                Token::Quoted(String::from_utf8_lossy(&s).into_owned())
                            } else {
                                Token::Str(s)
                            });
                            i += len + 1 + n;
                            continue;
                        }
                        None => return (out, rest),
                    }
                }
            }
            out.push(Token::Word(
                String::from_utf8_lossy(word).to_ascii_lowercase(),
            ));
            i += len;
        } else if matches!(b, b';' | b'(' | b')' | b',' | b'.') {
            out.push(Token::Punct(b));
            i += 1;
        } else if b.is_ascii_digit() {
            // A number may run into letters (`1e5`, `0x1F`, `1_000`); none
            // of it is a word.
            let len = rest
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                .unwrap_or(rest.len());
            out.push(Token::Other);
            i += len;
        } else {
            out.push(Token::Other);
            i += 1;
        }
    }
    (out, &[])
}

/// Length of a (nested) block comment at the start of `s`.
fn block_comment(s: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i + 1 < s.len() {
        match &s[i..i + 2] {
            b"/*" => {
                depth += 1;
                i += 2;
            }
            b"*/" => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// A literal opened by `q` at the start of `s`: its length and content.
/// A doubled quote stands for one; with `escapes` a backslash escapes the
/// next byte.
fn quoted(s: &[u8], q: u8, escapes: bool) -> Option<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 1;
    loop {
        let b = *s.get(i)?;
        if escapes && b == b'\\' {
            out.push(b);
            out.push(*s.get(i + 1)?);
            i += 2;
        } else if b == q && s.get(i + 1) == Some(&q) {
            out.push(q);
            i += 2;
        } else if b == q {
            return Some((i + 1, out));
        } else {
            out.push(b);
            i += 1;
        }
    }
}

/// Length of a dollar-quote opener (`$$` or `$tag$`) at the start of `s`.
fn dollar_tag(s: &[u8]) -> Option<usize> {
    let tag = &s[1..];
    if tag.first() == Some(&b'$') {
        return Some(2);
    }
    if !ident_start(*tag.first()?) {
        return None;
    }
    let len = tag
        .iter()
        .position(|&c| !(ident_start(c) || c.is_ascii_digit()))?;
    (tag[len] == b'$').then_some(len + 2)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Words that may begin state that cannot follow a client, looked for in
/// text the lexer gave up on.
const TELLING_PIN: &[&str] = &[
    "temp",
    "temporary",
    "listen",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "hold",
    "prepare",
    "load",
];

/// Words that may change a setting, looked for in the same text.
const TELLING_SETTINGS: &[&str] = &["set", "reset", "set_config", "call", "discard"];

fn telling_word(text: &[u8], telling: &[&str]) -> bool {
    text.split(|&b| !ident_cont(b) || b == b'$')
        .any(|w| telling.iter().any(|t| t.as_bytes().eq_ignore_ascii_case(w)))
}

fn word(t: Option<&Token>) -> Option<&str> {
    match t {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    }
}

const ADVISORY: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Adds what one statement (between semicolons) may leave on the session.
fn statement(toks: &[Token], found: &mut Findings) {
    // A statement may sit in parentheses: `(SELECT ...)`.
    let start = toks
        .iter()
        .position(|t| *t != Token::Punct(b'('))
        .unwrap_or(toks.len());
    let s = &toks[start..];
    let first = word(s.first());
    let at = |i: usize| word(s.get(i));
    let pin = match first {
        Some("create") => {
            let mut i = 1;
            while matches!(at(i), Some("or" | "replace" | "global" | "local")) {
                i += 1;
            }
            matches!(at(i), Some("temp" | "temporary")).then_some(PinReason::TempTable)
        }
        Some("listen") => Some(PinReason::Listen),
        Some("declare") => s
            .windows(2)
            .any(|w| word(w.first()) == Some("with") && word(w.get(1)) == Some("hold"))
            .then_some(PinReason::HoldCursor),
        // PREPARE TRANSACTION is two-phase commit, not a statement.
        Some("prepare") if at(1) != Some("transaction") => Some(PinReason::Prepare),
        Some("load") => Some(PinReason::Load),
        _ => None,
    };
    found.settings |= match first {
        Some("set") => set(&s[1..], found),
        Some("reset") => reset(&s[1..], found),
        Some("discard") => at(1) == Some("all"),
        // What a procedure or a DO block runs is out of sight; the cost of
        // asking the server afterwards is one round trip.
        Some("call" | "do") => true,
        _ => false,
    };
    let inside = anywhere(s, found);
    if found.pin.is_none() {
        found.pin = pin.or(inside);
    }
}

/// What any statement may contain: `INTO TEMP`, function calls.
fn anywhere(s: &[Token], found: &mut Findings) -> Option<PinReason> {
    let mut pin = None;
    for (i, t) in s.iter().enumerate() {
        let name = match t {
            Token::Word(w) => w.as_str(),
            // A quoted name is case-sensitive and the functions are
            // lowercase, so it needs no lowering.
            Token::Quoted(q) => q.as_str(),
            _ => continue,
        };
        let called = s.get(i + 1) == Some(&Token::Punct(b'('));
        if called && ADVISORY.contains(&name) {
            pin = pin.or(Some(PinReason::AdvisoryLock));
        }
        if called && name == "set_config" && set_config_changes(&s[i + 2..], found) {
            found.settings = true;
        }
        if matches!(t, Token::Word(_)) && name == "into" {
            let mut j = i + 1;
            if matches!(word(s.get(j)), Some("local" | "global")) {
                j += 1;
            }
            if matches!(word(s.get(j)), Some("temp" | "temporary")) {
                pin = pin.or(Some(PinReason::TempTable));
            }
        }
    }
    pin
}

/// `set_config(name, value, is_local)` from just after its `(`: a
/// session-level change unless the scope is plainly `true` or the
/// parameter one pgcorral carries by its ParameterStatus.
fn set_config_changes(args: &[Token], found: &mut Findings) -> bool {
    let mut parts: Vec<&[Token]> = Vec::new();
    let (mut depth, mut from) = (0usize, 0usize);
    let mut end = args.len();
    for (i, t) in args.iter().enumerate() {
        match t {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') if depth == 0 => {
                end = i;
                break;
            }
            Token::Punct(b')') => depth -= 1,
            Token::Punct(b',') if depth == 0 => {
                parts.push(&args[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&args[from..end.max(from)]);
    let session = !matches!(parts.get(2), Some([Token::Word(w)]) if w == "true");
    if let [Token::Str(name)] = parts[0] {
        let name = String::from_utf8_lossy(name);
        if params::is_tracked(&name) {
            return false;
        }
        if session && name.contains('.') {
            custom(&name, found);
        }
    }
    session
}

/// Notes a qualified setting name, if it is one pgcorral can name in a
/// query without quoting.
fn custom(name: &str, found: &mut Findings) {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'));
    let name = name.to_ascii_lowercase();
    if plain && name.len() <= 128 && !found.custom.contains(&name) {
        found.custom.push(name);
    }
}

/// Whether `SET ...` (after the SET) changes a session-level setting.
fn set(s: &[Token], found: &mut Findings) -> bool {
    match word(s.first()) {
        // Transaction-scoped.
        Some("local" | "transaction" | "constraints") => false,
        Some("session") => match word(s.get(1)) {
            Some("authorization" | "characteristics") => true,
            _ => parameter(&s[1..], found),
        },
        Some("role") => true,
        _ => parameter(s, found),
    }
}

/// Whether `RESET ...` (after the RESET) changes a session-level setting.
fn reset(s: &[Token], found: &mut Findings) -> bool {
    match word(s.first()) {
        Some("all" | "role") => true,
        Some("session") if word(s.get(1)) == Some("authorization") => true,
        _ => parameter(s, found),
    }
}

/// A parameter name being set or reset: a change to follow unless
/// pgcorral carries it by its ParameterStatus.
fn parameter(s: &[Token], found: &mut Findings) -> bool {
    let part = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => Some(w.clone()),
        Some(Token::Quoted(q)) => Some(q.to_ascii_lowercase()),
        _ => None,
    };
    let Some(name) = part(s.first()) else {
        return true;
    };
    // `SET TIME ZONE` and `SET NAMES` are the carried TimeZone and
    // client_encoding.
    if name == "names" || (name == "time" && word(s.get(1)) == Some("zone")) {
        return false;
    }
    // A qualified name (`myext.setting`) is never a carried one.
    let qualified = s.get(1) == Some(&Token::Punct(b'.'));
    if qualified {
        // `custom.my.qualified.guc`: every part, dot by dot.
        let mut full = name.clone();
        let mut i = 1;
        while s.get(i) == Some(&Token::Punct(b'.')) {
            let Some(next) = part(s.get(i + 1)) else {
                break;
            };
            full.push('.');
            full.push_str(&next);
            i += 2;
        }
        custom(&full, found);
    }
    qualified || !params::is_tracked(&name)
}

#[cfg(test)]
mod tests;

//! Recognises SQL that leaves session state which cannot follow a client
//! from one pooled connection to the next (temporary tables, LISTEN,
//! session advisory locks, held cursors, SQL-level PREPARE, LOAD, SET of
//! parameters pgcorral does not carry). The transaction pipeline keeps the
//! connection of a client that sends any of it.
//!
//! The lexer follows PostgreSQL's: comments (`--`, nested `/* */`), string
//! literals (`''` doubling, `E''` with backslash escapes, dollar quoting),
//! quoted identifiers, several statements split by `;`. Text it cannot
//! lex (an unterminated literal, or one read differently because the
//! server has `standard_conforming_strings` off) pins when any word that
//! could start such state appears in it: a missed pin leaks state to
//! another client, a needless one only costs a connection.

use std::fmt;

use super::params;

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
    /// `SET` / `RESET` of a parameter pgcorral does not carry (lowercased).
    Set(String),
    /// `SET ROLE` / `SET SESSION AUTHORIZATION` (or their RESET).
    Role,
    /// `set_config(..., false)` or with a scope that is not plainly `true`.
    SetConfig,
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
            PinReason::Set(name) => write!(f, "SET {name}"),
            PinReason::Role => f.write_str("SET ROLE / SESSION AUTHORIZATION"),
            PinReason::SetConfig => f.write_str("set_config outside a transaction scope"),
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

/// Every way to pin needs a word containing one of these, so text
/// without any (most queries) is not lexed at all.
const NEEDED: &[&[u8]] = &[
    b"temp",
    b"listen",
    b"advisory",
    b"hold",
    b"prepare",
    b"load",
    b"set",
];

fn may_pin(sql: &[u8]) -> bool {
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

/// The first state-leaving statement in `sql`, if any.
pub fn pin_reason(sql: &[u8]) -> Option<PinReason> {
    if !may_pin(sql) {
        return None;
    }
    lexed(sql)
}

/// `pin_reason` without the quick test.
fn lexed(sql: &[u8]) -> Option<PinReason> {
    let (tokens, rest) = lex(sql);
    let found = tokens
        .split(|t| *t == Token::Punct(b';'))
        .find_map(statement);
    found.or_else(|| (!rest.is_empty() && telling_word(rest)).then_some(PinReason::Unlexable))
}

/// The text of a Parse body's query (the statement name first).
pub fn parse_query(body: &[u8]) -> Option<&[u8]> {
    let name_end = body.iter().position(|&b| b == 0)?;
    let rest = &body[name_end + 1..];
    let end = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..end])
}

/// The text of a Query body.
pub fn query_text(body: &[u8]) -> &[u8] {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    &body[..end]
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
const TELLING: &[&str] = &[
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
    "set",
    "reset",
    "set_config",
];

fn telling_word(text: &[u8]) -> bool {
    text.split(|&b| !ident_cont(b) || b == b'$')
        .any(|w| TELLING.iter().any(|t| t.as_bytes().eq_ignore_ascii_case(w)))
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

/// Whether one statement (between semicolons) leaves session state.
fn statement(toks: &[Token]) -> Option<PinReason> {
    // A statement may sit in parentheses: `(SELECT ...)`.
    let start = toks
        .iter()
        .position(|t| *t != Token::Punct(b'('))
        .unwrap_or(toks.len());
    let s = &toks[start..];
    let first = word(s.first());
    let at = |i: usize| word(s.get(i));
    let reason = match first {
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
        Some("set") => set(&s[1..]),
        Some("reset") => reset(&s[1..]),
        _ => None,
    };
    reason.or_else(|| anywhere(s))
}

/// What any statement may contain: `INTO TEMP`, function calls.
fn anywhere(s: &[Token]) -> Option<PinReason> {
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
            return Some(PinReason::AdvisoryLock);
        }
        if called && name == "set_config" && set_config_pins(&s[i + 2..]) {
            return Some(PinReason::SetConfig);
        }
        if matches!(t, Token::Word(_)) && name == "into" {
            let mut j = i + 1;
            if matches!(word(s.get(j)), Some("local" | "global")) {
                j += 1;
            }
            if matches!(word(s.get(j)), Some("temp" | "temporary")) {
                return Some(PinReason::TempTable);
            }
        }
    }
    None
}

/// `set_config(name, value, is_local)` from just after its `(`: pins
/// unless the scope is plainly `true` or the parameter one pgcorral
/// carries.
fn set_config_pins(args: &[Token]) -> bool {
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
    if let [Token::Str(name)] = parts[0] {
        if params::is_tracked(&String::from_utf8_lossy(name)) {
            return false;
        }
    }
    !matches!(parts.get(2), Some([Token::Word(w)]) if w == "true")
}

/// `SET ...` after the SET.
fn set(s: &[Token]) -> Option<PinReason> {
    match word(s.first()) {
        // Transaction-scoped.
        Some("local" | "transaction" | "constraints") => None,
        Some("session") => match word(s.get(1)) {
            Some("authorization") => Some(PinReason::Role),
            Some("characteristics") => Some(PinReason::Set("session characteristics".into())),
            _ => parameter(&s[1..]),
        },
        Some("role") => Some(PinReason::Role),
        _ => parameter(s),
    }
}

/// `RESET ...` after the RESET.
fn reset(s: &[Token]) -> Option<PinReason> {
    match word(s.first()) {
        Some("all") => Some(PinReason::Set("all".into())),
        Some("role") => Some(PinReason::Role),
        Some("session") if word(s.get(1)) == Some("authorization") => Some(PinReason::Role),
        _ => parameter(s),
    }
}

/// A parameter name being set or reset: pins unless pgcorral carries it.
fn parameter(s: &[Token]) -> Option<PinReason> {
    let name = match s.first() {
        Some(Token::Word(w)) => w.clone(),
        Some(Token::Quoted(q)) => q.to_ascii_lowercase(),
        _ => return Some(PinReason::Set(String::new())),
    };
    // `SET TIME ZONE` and `SET NAMES` are the carried TimeZone and
    // client_encoding.
    if name == "names" || (name == "time" && word(s.get(1)) == Some("zone")) {
        return None;
    }
    // A qualified name (`myext.setting`) is never a carried one.
    let qualified = s.get(1) == Some(&Token::Punct(b'.'));
    if !qualified && params::is_tracked(&name) {
        return None;
    }
    Some(PinReason::Set(name))
}

#[cfg(test)]
mod tests;

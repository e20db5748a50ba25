//! The few simple queries that change protocol-level statements, recognised
//! only when sent alone.

/// The simple queries that change protocol-level statements.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sql {
    /// `DEALLOCATE [PREPARE] ALL` or `DISCARD ALL`.
    ForgetAll,
    /// `DEALLOCATE [PREPARE] name`, with the name as PostgreSQL reads it.
    Deallocate(Vec<u8>),
    Other,
}

/// Recognises the statement alone, in any case, with surrounding
/// whitespace and trailing semicolons; anything else (comments, several
/// statements) is `Other`.
pub(super) fn classify(sql: &[u8]) -> Sql {
    let mut s = trim_sql(sql);
    let Some((first, _)) = word(&mut s) else {
        return Sql::Other;
    };
    if first.eq_ignore_ascii_case(b"discard") {
        return match word(&mut s) {
            Some((w, false)) if w.eq_ignore_ascii_case(b"all") && s.is_empty() => Sql::ForgetAll,
            _ => Sql::Other,
        };
    }
    if !first.eq_ignore_ascii_case(b"deallocate") {
        return Sql::Other;
    }
    let Some((mut target, mut quoted)) = word(&mut s) else {
        return Sql::Other;
    };
    // PREPARE is optional noise, unless it is the statement's own name.
    if !quoted && target.eq_ignore_ascii_case(b"prepare") && !s.is_empty() {
        let Some(next) = word(&mut s) else {
            return Sql::Other;
        };
        (target, quoted) = next;
    }
    if !s.is_empty() {
        return Sql::Other;
    }
    if !quoted && target.eq_ignore_ascii_case(b"all") {
        return Sql::ForgetAll;
    }
    if quoted {
        Sql::Deallocate(target)
    } else {
        Sql::Deallocate(target.to_ascii_lowercase())
    }
}

fn is_sql_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn trim_sql(sql: &[u8]) -> &[u8] {
    let start = sql
        .iter()
        .position(|&b| !is_sql_space(b))
        .unwrap_or(sql.len());
    let end = sql
        .iter()
        .rposition(|&b| !is_sql_space(b) && b != b';')
        .map_or(start, |i| i + 1);
    &sql[start..end.max(start)]
}

/// The next keyword or identifier: a quoted identifier (with `""` for a
/// quote) comes back unquoted and flagged; an unquoted one as written.
fn word(s: &mut &[u8]) -> Option<(Vec<u8>, bool)> {
    let start = s.iter().position(|&b| !is_sql_space(b))?;
    let rest = &s[start..];
    if rest.first() == Some(&b'"') {
        let mut out = Vec::new();
        let mut i = 1;
        loop {
            match rest.get(i) {
                None => return None,
                Some(b'"') if rest.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                Some(b'"') => break,
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        *s = &rest[i + 1..];
        return (!out.is_empty()).then_some((out, true));
    }
    let first = *rest.first()?;
    if !(first.is_ascii_alphabetic() || first == b'_' || first >= 0x80) {
        return None;
    }
    let len = rest
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80))
        .unwrap_or(rest.len());
    let w = rest[..len].to_vec();
    *s = &rest[len..];
    Some((w, false))
}

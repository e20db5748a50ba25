//! Configuration errors, and the best-effort mapping from a key or a byte offset
//! back to a line of the file so that the daemon can point the user at it.

use std::io;

/// Why a configuration could not be used. The `Display` form is
/// `file:line[:column]: [key: ]reason`, printed as-is by the daemon before it
/// exits with status 1.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// TOML syntax or type error. `line`/`column` are 1-based; 0 when toml gave
    /// no position.
    #[error("{}", display_parse(path, *line, *column, message))]
    Parse {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parsed but a value breaks a rule.
    #[error("{}", display_invalid(path, *line, key, message))]
    Invalid {
        path: String,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

fn display_parse(path: &str, line: usize, column: usize, message: &str) -> String {
    if line == 0 {
        format!("{path}: {message}")
    } else {
        format!("{path}:{line}:{column}: {message}")
    }
}

fn display_invalid(path: &str, line: Option<usize>, key: &str, message: &str) -> String {
    match line {
        Some(line) => format!("{path}:{line}: {key}: {message}"),
        None => format!("{path}: {key}: {message}"),
    }
}

impl ConfigError {
    pub(crate) fn from_toml(path: &str, text: &str, err: &toml::de::Error) -> ConfigError {
        let message = friendly_message(err.message());
        let Some(span) = err.span() else {
            return ConfigError::Parse {
                path: path.to_string(),
                line: 0,
                column: 0,
                message,
            };
        };
        let (line, column) = line_column(text, span.start);
        // toml reports a bad value without the key it belongs to, and a user
        // reading "unknown value `fast`" wants to know which setting that was.
        let message = match key_of_value_at(text, span.start) {
            Some(key) if !message.contains(&format!("`{key}`")) => format!("{key}: {message}"),
            _ => message,
        };
        ConfigError::Parse {
            path: path.to_string(),
            line,
            column,
            message,
        }
    }
}

/// toml's messages can span lines and name Rust types; the daemon prints one
/// line for a user who does not know what a `u16` is.
fn friendly_message(raw: &str) -> String {
    raw.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace("expected u16", "expected an integer from 0 to 65535")
        .replace("expected usize", "expected a non-negative integer")
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Count UTF-8 lead bytes so that a multi-byte character is one column.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

/// Where a key lives, for finding its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section<'a> {
    /// `[pgcorral]`
    Main,
    /// `[server.NAME]`
    Server(&'a str),
    /// The n-th (0-based) `[[limit]]`.
    Limit(usize),
}

/// The table a header line opens, as the scanner tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Header {
    None,
    Table(String),
    Limit(usize),
    OtherArray(String),
}

/// Splits a dotted TOML header or key into its parts, unquoted. Good enough for
/// locating lines; quoted parts containing dots are not handled.
fn normalize_dotted(raw: &str) -> String {
    raw.split('.')
        .map(|part| part.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect::<Vec<_>>()
        .join(".")
}

/// Drops a trailing comment. Strings containing `#` are rare in headers and key
/// names, which is all this is used for.
fn strip_comment(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

/// Calls `visit(line_number, header, trimmed_line)` for every line.
fn scan(text: &str, mut visit: impl FnMut(usize, &Header, &str) -> bool) {
    let mut header = Header::None;
    let mut limits = 0usize;
    for (index, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let name = normalize_dotted(inner);
            header = if name == "limit" {
                limits += 1;
                Header::Limit(limits - 1)
            } else {
                Header::OtherArray(name)
            };
        } else if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            header = Header::Table(normalize_dotted(inner));
        }
        if !visit(index + 1, &header, line) {
            return;
        }
    }
}

fn header_is(header: &Header, section: Section) -> bool {
    match (header, section) {
        (Header::Table(name), Section::Main) => name == "pgcorral",
        (Header::Table(name), Section::Server(server)) => {
            name.strip_prefix("server.") == Some(server)
        }
        (Header::Limit(n), Section::Limit(wanted)) => *n == wanted,
        _ => false,
    }
}

/// The key assigned on a `key = value` line, unquoted.
fn assigned_key(line: &str) -> Option<String> {
    if line.starts_with('[') {
        return None;
    }
    let (key, _) = line.split_once('=')?;
    let key = normalize_dotted(key);
    (!key.is_empty()).then_some(key)
}

/// Line of `key = ...` inside `section`; with `key` empty, or when the key is
/// absent (a default value), the section's header line.
pub(crate) fn find_key_line(text: &str, section: Section, key: &str) -> Option<usize> {
    let mut header_line = None;
    let mut found = None;
    scan(text, |number, header, line| {
        if !header_is(header, section) {
            // Sections can only be opened once (or once per array entry), so
            // leaving the wanted one ends the search.
            return header_line.is_none();
        }
        if header_line.is_none() {
            header_line = Some(number);
        }
        if !key.is_empty() && assigned_key(line).as_deref() == Some(key) {
            found = Some(number);
            return false;
        }
        true
    });
    found.or(header_line)
}

/// If `offset` falls in the value of a `key = value` line, the key qualified
/// the way validation errors name it (`port`, `server.a.port`, `limit.max_size`);
/// on a table header, the table (`limit`, `server.a`).
fn key_of_value_at(text: &str, offset: usize) -> Option<String> {
    let (line_number, column) = line_column(text, offset);
    let mut result = None;
    scan(text, |number, header, line| {
        if number < line_number {
            return true;
        }
        if line.starts_with('[') {
            // An error on a header (a missing field) belongs to that table.
            result = match header {
                Header::Limit(_) => Some("limit".to_string()),
                Header::Table(name) | Header::OtherArray(name) => Some(name.clone()),
                Header::None => None,
            };
            return false;
        }
        let Some(key) = assigned_key(line) else {
            return false;
        };
        let raw = text.lines().nth(number - 1).unwrap_or("");
        let Some(equals) = raw.find('=') else {
            return false;
        };
        if column <= raw[..equals].chars().count() + 1 {
            return false;
        }
        result = Some(match header {
            Header::Table(name) if name == "pgcorral" => key,
            Header::Table(name) | Header::OtherArray(name) => format!("{name}.{key}"),
            Header::Limit(_) => format!("limit.{key}"),
            Header::None => key,
        });
        false
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# comment
[pgcorral]
port = 1
 host=\"x\"   # trailing

[server.a]
port = 5

[server.\"b\"]
host = \"/tmp\"

[[limit]]
database = \"d\"
max_size = 3

[[limit]]
max_size = 4
";

    #[test]
    fn line_and_column() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("a\nbc", 3), (2, 2));
        assert_eq!(line_column("é\nxé=", 6), (2, 3));
        assert_eq!(line_column("a", 99), (1, 2));
    }

    #[test]
    fn finds_keys_by_section() {
        assert_eq!(find_key_line(TEXT, Section::Main, "port"), Some(3));
        assert_eq!(find_key_line(TEXT, Section::Main, "host"), Some(4));
        assert_eq!(find_key_line(TEXT, Section::Main, "log_path"), Some(2));
        assert_eq!(find_key_line(TEXT, Section::Server("a"), "port"), Some(7));
        assert_eq!(find_key_line(TEXT, Section::Server("b"), "host"), Some(10));
        assert_eq!(find_key_line(TEXT, Section::Server("b"), "port"), Some(9));
        assert_eq!(find_key_line(TEXT, Section::Limit(0), "max_size"), Some(14));
        assert_eq!(find_key_line(TEXT, Section::Limit(1), "max_size"), Some(17));
        assert_eq!(find_key_line(TEXT, Section::Limit(1), ""), Some(16));
        assert_eq!(find_key_line(TEXT, Section::Server("zz"), "port"), None);
    }

    #[test]
    fn key_of_value() {
        let offset = TEXT.find("5\n").unwrap();
        assert_eq!(
            key_of_value_at(TEXT, offset).as_deref(),
            Some("server.a.port")
        );
        let offset = TEXT.find("4\n").unwrap();
        assert_eq!(
            key_of_value_at(TEXT, offset).as_deref(),
            Some("limit.max_size")
        );
        let offset = TEXT.find("1\n").unwrap();
        assert_eq!(key_of_value_at(TEXT, offset).as_deref(), Some("port"));
        let offset = TEXT.rfind("[[limit]]").unwrap();
        assert_eq!(key_of_value_at(TEXT, offset).as_deref(), Some("limit"));
        let offset = TEXT.find("[server.a]").unwrap();
        assert_eq!(key_of_value_at(TEXT, offset).as_deref(), Some("server.a"));
        // On the key itself (unknown field), nothing is added.
        let offset = TEXT.find("port = 1").unwrap();
        assert_eq!(key_of_value_at(TEXT, offset), None);
    }
}

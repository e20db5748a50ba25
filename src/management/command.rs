//! Administration over the management socket: what `pgcorral-cli` sends
//! (`Id::Command`) and what the supervisor answers (`Id::Reply`), and the
//! command set itself, parsed the same way on both sides.
//!
//! Command payload, encoding version 1:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | encoding version (1) |
//! | 1 | output format: `t` text, `j` JSON |
//! | 1 | argument count n, 1 to `MAX_ARGS` |
//! | n × (2 + len) | each argument: length (big-endian u16), UTF-8 bytes |
//!
//! The first argument is the command (`status`, `flush`, …), the rest its
//! words, exactly as typed: `["flush", "idle", "mydb"]`. Nothing may follow
//! the last argument.
//!
//! Reply payload, encoding version 1, in each `Reply` message:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | encoding version (1) |
//! | 1 | status: 0 the command succeeded, 1 it failed or was refused |
//! | rest | a piece of the result: UTF-8 text or one JSON document |
//!
//! A result longer than one payload is split over several messages; all but
//! the last carry `message::MORE` in the header's slot field. The pieces
//! concatenated are the result; the status of the last message counts.

use std::fmt;

use super::message::{self, Id, MAX_PAYLOAD};

pub const ENCODING_VERSION: u8 = 1;
pub const MAX_ARGS: usize = 32;
/// Room for the version and status bytes in each reply message.
const REPLY_HEAD: usize = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("malformed command message: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    fn byte(self) -> u8 {
        match self {
            Format::Text => b't',
            Format::Json => b'j',
        }
    }
}

/// A command as it travels: the output format and the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub format: Format,
    pub args: Vec<String>,
}

impl CommandRequest {
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        if self.args.is_empty() || self.args.len() > MAX_ARGS {
            return Err(CommandError::Usage(format!(
                "a command has 1 to {MAX_ARGS} words"
            )));
        }
        let mut out = vec![ENCODING_VERSION, self.format.byte(), self.args.len() as u8];
        for a in &self.args {
            let len = u16::try_from(a.len())
                .map_err(|_| CommandError::Usage("an argument is too long".to_string()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(a.as_bytes());
        }
        if out.len() > MAX_PAYLOAD {
            return Err(CommandError::Usage("the command is too long".to_string()));
        }
        Ok(out)
    }

    pub fn decode(payload: &[u8]) -> Result<Self, CommandError> {
        let malformed = CommandError::Malformed;
        let (&version, rest) = payload.split_first().ok_or(malformed("empty payload"))?;
        if version != ENCODING_VERSION {
            return Err(malformed("unsupported command encoding version"));
        }
        let (&format, rest) = rest.split_first().ok_or(malformed("no format byte"))?;
        let format = match format {
            b't' => Format::Text,
            b'j' => Format::Json,
            _ => return Err(malformed("unknown output format")),
        };
        let (&count, mut rest) = rest.split_first().ok_or(malformed("no argument count"))?;
        let count = count as usize;
        if count == 0 || count > MAX_ARGS {
            return Err(malformed("argument count out of range"));
        }
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            if rest.len() < 2 {
                return Err(malformed("argument length cut short"));
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let body = rest
                .get(2..2 + len)
                .ok_or(malformed("argument cut short"))?;
            let text = std::str::from_utf8(body).map_err(|_| malformed("argument is not UTF-8"))?;
            args.push(text.to_string());
            rest = &rest[2 + len..];
        }
        if !rest.is_empty() {
            return Err(malformed("bytes after the last argument"));
        }
        Ok(CommandRequest { format, args })
    }
}

/// The whole `Reply` message sequence for a result: header and payload of
/// each message, ready to be written.
pub fn encode_reply(ok: bool, text: &str) -> Vec<u8> {
    let status = if ok { 0 } else { 1 };
    let chunk = MAX_PAYLOAD - REPLY_HEAD;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let mut payload = Vec::with_capacity(REPLY_HEAD + piece.len());
        payload.push(ENCODING_VERSION);
        payload.push(status);
        payload.extend_from_slice(piece);
        let more = if i == last {
            message::LAST
        } else {
            message::MORE
        };
        out.extend_from_slice(&message::encode(Id::Reply, more, &payload));
    }
    out
}

/// One `Reply` message's payload: (succeeded, piece of text).
pub fn decode_reply(payload: &[u8]) -> Result<(bool, &[u8]), CommandError> {
    match payload {
        [ENCODING_VERSION, 0, rest @ ..] => Ok((true, rest)),
        [ENCODING_VERSION, 1, rest @ ..] => Ok((false, rest)),
        [ENCODING_VERSION, ..] => Err(CommandError::Malformed("unknown reply status")),
        _ => Err(CommandError::Malformed("unsupported reply encoding")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Idle connections now; those in use when their client gives them back.
    Gracefully,
    /// Idle connections only.
    Idle,
    /// As gracefully, and the clients holding connections are ended.
    All,
}

impl FlushMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FlushMode::Gracefully => "gracefully",
            FlushMode::Idle => "idle",
            FlushMode::All => "all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    /// Like SIGTRAP: no new clients, exit when the last one leaves.
    Gracefully,
    /// Like SIGTERM.
    Immediate,
    /// Stops a graceful shutdown and accepts clients again.
    Cancel,
}

impl ShutdownMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Gracefully => "gracefully",
            ShutdownMode::Immediate => "immediate",
            ShutdownMode::Cancel => "cancel",
        }
    }
}

/// A database a command applies to; `None` is every database (written
/// `*`, `all`, or left out).
pub type Database = Option<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    Ping,
    Status { details: bool },
    Flush { mode: FlushMode, database: Database },
    Enable { database: Database },
    Disable { database: Database },
    Shutdown { mode: ShutdownMode },
    SwitchTo { server: String },
    ConfReload,
    ConfGet { key: String },
    ConfSet { key: String, value: String },
    ConfLs,
    ClearPrometheus,
    ClearServer { server: String },
}

pub const USAGE: &str = "commands: ping | status [details] | flush [gracefully|idle|all] [DB] | \
enable [DB] | disable [DB] | shutdown [gracefully|immediate|cancel] | switch-to SERVER | \
conf reload | conf get KEY | conf set KEY VALUE | conf ls | clear prometheus | clear server NAME";

fn database(word: Option<&String>) -> Database {
    match word.map(String::as_str) {
        None | Some("*") | Some("all") => None,
        Some(db) => Some(db.to_string()),
    }
}

impl AdminCommand {
    /// Parses the words of a command; the error names what is wrong.
    pub fn parse(args: &[String]) -> Result<Self, CommandError> {
        let usage = |what: &str| CommandError::Usage(format!("{what}; {USAGE}"));
        let Some((first, rest)) = args.split_first() else {
            return Err(usage("no command"));
        };
        let command = first.to_ascii_lowercase();
        let at_most = |n: usize| {
            if rest.len() > n {
                Err(usage(&format!("too many arguments to {command}")))
            } else {
                Ok(())
            }
        };
        let sub = rest.first().map(|s| s.to_ascii_lowercase());
        Ok(match command.as_str() {
            "ping" => {
                at_most(0)?;
                AdminCommand::Ping
            }
            "status" => {
                at_most(1)?;
                match sub.as_deref() {
                    None => AdminCommand::Status { details: false },
                    Some("details") => AdminCommand::Status { details: true },
                    Some(other) => return Err(usage(&format!("unknown status option `{other}`"))),
                }
            }
            "flush" => {
                at_most(2)?;
                let mode = match sub.as_deref() {
                    Some("gracefully") => Some(FlushMode::Gracefully),
                    Some("idle") => Some(FlushMode::Idle),
                    Some("all") => Some(FlushMode::All),
                    _ => None,
                };
                match mode {
                    Some(mode) => AdminCommand::Flush {
                        mode,
                        database: database(rest.get(1)),
                    },
                    None => {
                        // No mode: pgagroal's default, gracefully; the one
                        // word is the database.
                        at_most(1)?;
                        AdminCommand::Flush {
                            mode: FlushMode::Gracefully,
                            database: database(rest.first()),
                        }
                    }
                }
            }
            "enable" => {
                at_most(1)?;
                AdminCommand::Enable {
                    database: database(rest.first()),
                }
            }
            "disable" => {
                at_most(1)?;
                AdminCommand::Disable {
                    database: database(rest.first()),
                }
            }
            "shutdown" => {
                at_most(1)?;
                let mode = match sub.as_deref() {
                    None | Some("gracefully") => ShutdownMode::Gracefully,
                    Some("immediate") => ShutdownMode::Immediate,
                    Some("cancel") => ShutdownMode::Cancel,
                    Some(other) => return Err(usage(&format!("unknown shutdown mode `{other}`"))),
                };
                AdminCommand::Shutdown { mode }
            }
            "switch-to" => {
                at_most(1)?;
                let server = rest
                    .first()
                    .ok_or_else(|| usage("switch-to needs a server name"))?;
                AdminCommand::SwitchTo {
                    server: server.clone(),
                }
            }
            "conf" => match sub.as_deref() {
                Some("reload") => {
                    at_most(1)?;
                    AdminCommand::ConfReload
                }
                Some("ls") => {
                    at_most(1)?;
                    AdminCommand::ConfLs
                }
                Some("get") => {
                    at_most(2)?;
                    let key = rest.get(1).ok_or_else(|| usage("conf get needs a key"))?;
                    AdminCommand::ConfGet { key: key.clone() }
                }
                Some("set") => {
                    at_most(3)?;
                    let (Some(key), Some(value)) = (rest.get(1), rest.get(2)) else {
                        return Err(usage("conf set needs a key and a value"));
                    };
                    AdminCommand::ConfSet {
                        key: key.clone(),
                        value: value.clone(),
                    }
                }
                _ => return Err(usage("conf needs reload, get, set or ls")),
            },
            "clear" => match sub.as_deref() {
                Some("prometheus") => {
                    at_most(1)?;
                    AdminCommand::ClearPrometheus
                }
                Some("server") => {
                    at_most(2)?;
                    let server = rest
                        .get(1)
                        .ok_or_else(|| usage("clear server needs a server name"))?;
                    AdminCommand::ClearServer {
                        server: server.clone(),
                    }
                }
                _ => return Err(usage("clear needs prometheus or server NAME")),
            },
            other => return Err(usage(&format!("unknown command `{other}`"))),
        })
    }

    /// The command's name in JSON replies (`"command"`): the words that
    /// select it, without its arguments.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::Ping => "ping",
            AdminCommand::Status { details: false } => "status",
            AdminCommand::Status { details: true } => "status details",
            AdminCommand::Flush { .. } => "flush",
            AdminCommand::Enable { .. } => "enable",
            AdminCommand::Disable { .. } => "disable",
            AdminCommand::Shutdown { .. } => "shutdown",
            AdminCommand::SwitchTo { .. } => "switch-to",
            AdminCommand::ConfReload => "conf reload",
            AdminCommand::ConfGet { .. } => "conf get",
            AdminCommand::ConfSet { .. } => "conf set",
            AdminCommand::ConfLs => "conf ls",
            AdminCommand::ClearPrometheus => "clear prometheus",
            AdminCommand::ClearServer { .. } => "clear server",
        }
    }
}

impl fmt::Display for AdminCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = |d: &Database| d.clone().unwrap_or_else(|| "*".to_string());
        match self {
            AdminCommand::Flush { mode, database } => {
                write!(f, "flush {} {}", mode.as_str(), db(database))
            }
            AdminCommand::Enable { database } => write!(f, "enable {}", db(database)),
            AdminCommand::Disable { database } => write!(f, "disable {}", db(database)),
            AdminCommand::Shutdown { mode } => write!(f, "shutdown {}", mode.as_str()),
            AdminCommand::SwitchTo { server } => write!(f, "switch-to {server}"),
            AdminCommand::ConfGet { key } => write!(f, "conf get {key}"),
            AdminCommand::ConfSet { key, value } => write!(f, "conf set {key} {value}"),
            AdminCommand::ClearServer { server } => write!(f, "clear server {server}"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::management::message::{Header, HEADER_LEN};

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn request_round_trips() {
        let req = CommandRequest {
            format: Format::Json,
            args: vec!["conf".into(), "set".into(), "x y".into(), "é".into()],
        };
        let bytes = req.encode().unwrap();
        assert_eq!(CommandRequest::decode(&bytes).unwrap(), req);
        for cut in 0..bytes.len() {
            assert!(CommandRequest::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(CommandRequest::decode(&long).is_err());
        let mut bad = bytes.clone();
        bad[1] = b'x';
        assert!(CommandRequest::decode(&bad).is_err());
        let mut bad = bytes;
        bad[2] = 0;
        assert!(CommandRequest::decode(&bad).is_err());
        assert!(CommandRequest::decode(&[1, b't', 1, 0, 1, 0xff]).is_err());
    }

    #[test]
    fn long_replies_are_split() {
        let text = "x".repeat(MAX_PAYLOAD * 2);
        let bytes = encode_reply(true, &text);
        let mut at = 0;
        let mut got = Vec::new();
        let mut flags = Vec::new();
        while at < bytes.len() {
            let h = Header::decode(bytes[at..at + HEADER_LEN].try_into().unwrap()).unwrap();
            let payload = &bytes[at + HEADER_LEN..at + HEADER_LEN + h.len as usize];
            let (ok, piece) = decode_reply(payload).unwrap();
            assert!(ok);
            got.extend_from_slice(piece);
            flags.push(h.slot);
            at += HEADER_LEN + h.len as usize;
        }
        assert_eq!(got.len(), text.len());
        assert_eq!(flags, vec![message::MORE, message::MORE, message::LAST]);
        let one = encode_reply(false, "");
        let (ok, piece) = decode_reply(&one[HEADER_LEN..]).unwrap();
        assert!(!ok && piece.is_empty());
    }

    #[test]
    fn parses_the_command_set() {
        use AdminCommand::*;
        let p = |s: &str| AdminCommand::parse(&words(s));
        assert_eq!(p("ping"), Ok(Ping));
        assert_eq!(p("STATUS details"), Ok(Status { details: true }));
        assert_eq!(
            p("flush"),
            Ok(Flush {
                mode: FlushMode::Gracefully,
                database: None
            })
        );
        assert_eq!(
            p("flush idle db1"),
            Ok(Flush {
                mode: FlushMode::Idle,
                database: Some("db1".into())
            })
        );
        assert_eq!(
            p("flush db1"),
            Ok(Flush {
                mode: FlushMode::Gracefully,
                database: Some("db1".into())
            })
        );
        assert_eq!(
            p("flush all *"),
            Ok(Flush {
                mode: FlushMode::All,
                database: None
            })
        );
        assert_eq!(p("disable"), Ok(Disable { database: None }));
        assert_eq!(
            p("enable x"),
            Ok(Enable {
                database: Some("x".into())
            })
        );
        assert_eq!(
            p("shutdown"),
            Ok(Shutdown {
                mode: ShutdownMode::Gracefully
            })
        );
        assert_eq!(
            p("conf set log_level debug"),
            Ok(ConfSet {
                key: "log_level".into(),
                value: "debug".into()
            })
        );
        assert_eq!(p("clear prometheus"), Ok(ClearPrometheus));
        for bad in [
            "",
            "nope",
            "ping x",
            "status x",
            "flush idle a b",
            "shutdown now",
            "switch-to",
            "conf",
            "conf get",
            "conf set k",
            "clear",
            "clear server",
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}

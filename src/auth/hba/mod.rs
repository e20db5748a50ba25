//! Host-based access rules in `pg_hba.conf` syntax.
//!
//! ```text
//! local      DATABASE  USER  METHOD  [OPTIONS]
//! host       DATABASE  USER  ADDRESS  METHOD  [OPTIONS]
//! hostssl    DATABASE  USER  IP-ADDRESS  IP-MASK  METHOD  [OPTIONS]
//! ```
//!
//! Supported as PostgreSQL does: record types `local`, `host`, `hostssl`,
//! `hostnossl` (and `hostgssenc`, which never matches because pgcorral does
//! no GSSAPI encryption, and `hostnogssenc`, which is then the same as
//! `host`); comma lists (spaces after the comma allowed); `all`; `sameuser`
//! in the database column; double-quoted names (a quoted `all` is a plain
//! name; `""` inside quotes is a quote); CIDR addresses, or an address and
//! a mask column; `all` as address; `#` comments; a backslash at the end of
//! a line continues it. Methods: `trust`, `reject`, `password`, `md5`,
//! `scram-sha-256`, `cert` and `all` (use whatever the server asks).
//!
//! Refused with an error naming file and line, because honouring them needs
//! something pgcorral does not have (DNS, the role catalog, other files):
//! host names, `samehost`/`samenet`, `samerole`, `+group`, `/regex`,
//! `@file`, and `include*` directives. `replication` in the database column
//! is accepted and matches nothing (pgcorral does not pool replication
//! connections).

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod parser;
#[cfg(test)]
mod tests;

use parser::{logical_lines, parse_record, tokenize};

/// Biggest HBA file read; real ones are a few KiB.
pub const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HbaError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is {size} bytes, more than the {max} allowed", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
}

/// How a client reached pgcorral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// Unix-domain socket.
    Local,
    /// TCP from `addr`; `ssl` once TLS has been negotiated.
    Host { addr: IpAddr, ssl: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
    HostGssEnc,
    HostNoGssEnc,
}

impl RecordType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "local" => RecordType::Local,
            "host" => RecordType::Host,
            "hostssl" => RecordType::HostSsl,
            "hostnossl" => RecordType::HostNoSsl,
            "hostgssenc" => RecordType::HostGssEnc,
            "hostnogssenc" => RecordType::HostNoGssEnc,
            _ => return None,
        })
    }

    fn matches(self, conn: &ConnKind) -> bool {
        match (self, conn) {
            (RecordType::Local, ConnKind::Local) => true,
            (RecordType::Host | RecordType::HostNoGssEnc, ConnKind::Host { .. }) => true,
            (RecordType::HostSsl, ConnKind::Host { ssl, .. }) => *ssl,
            (RecordType::HostNoSsl, ConnKind::Host { ssl, .. }) => !*ssl,
            _ => false,
        }
    }
}

/// The authentication method of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    Password,
    Md5,
    ScramSha256,
    Cert,
    /// Whatever PostgreSQL asks for this database and user (pgagroal's
    /// `all`): the exchange is relayed, or done with the vault password.
    All,
}

impl Method {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trust" => Method::Trust,
            "reject" => Method::Reject,
            "password" => Method::Password,
            "md5" => Method::Md5,
            "scram-sha-256" => Method::ScramSha256,
            "cert" => Method::Cert,
            "all" => Method::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Trust => "trust",
            Method::Reject => "reject",
            Method::Password => "password",
            Method::Md5 => "md5",
            Method::ScramSha256 => "scram-sha-256",
            Method::Cert => "cert",
            Method::All => "all",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One element of a database or user list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    All,
    /// Database column only: the database named like the user.
    SameUser,
    /// Database column only: physical replication connections, which
    /// pgcorral does not pool, so it never matches.
    Replication,
    Name(String),
}

/// Which client addresses a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMatch {
    /// `local` records, and `all` in the address column.
    Any,
    /// `addr` with its host bits cleared, and the prefix length.
    Net { addr: IpAddr, prefix: u8 },
}

impl AddressMatch {
    fn matches(&self, conn: &ConnKind) -> bool {
        let (net, prefix) = match self {
            AddressMatch::Any => return true,
            AddressMatch::Net { addr, prefix } => (addr, *prefix),
        };
        let ConnKind::Host { addr, .. } = conn else {
            return false;
        };
        match (net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => in_v4(*n, *a, prefix),
            // An IPv4 rule also covers an IPv4 client seen through an IPv6
            // socket as ::ffff:a.b.c.d, as in PostgreSQL.
            (IpAddr::V4(n), IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|a| in_v4(*n, a, prefix))
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => mask128(u128::from(*a), prefix) == u128::from(*n),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn in_v4(net: std::net::Ipv4Addr, addr: std::net::Ipv4Addr, prefix: u8) -> bool {
    mask32(u32::from(addr), prefix) == u32::from(net)
}

fn mask32(v: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => v & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => v & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    /// Line number (1-based) where the record starts.
    pub line: usize,
    pub record: RecordType,
    pub databases: Vec<NameMatch>,
    pub users: Vec<NameMatch>,
    pub address: AddressMatch,
    pub method: Method,
    /// `name=value` options after the method, kept for the caller.
    pub options: Vec<(String, String)>,
}

impl HbaRule {
    fn matches(&self, conn: &ConnKind, database: &str, user: &str) -> bool {
        self.record.matches(conn)
            && self.address.matches(conn)
            && self.databases.iter().any(|m| match m {
                NameMatch::All => true,
                NameMatch::SameUser => database == user,
                NameMatch::Replication => false,
                NameMatch::Name(n) => n == database,
            })
            && self.users.iter().any(|m| match m {
                NameMatch::All => true,
                NameMatch::Name(n) => n == user,
                NameMatch::SameUser | NameMatch::Replication => false,
            })
    }
}

/// A parsed HBA file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<HbaRule>,
}

impl Hba {
    /// Reads and parses `path`; errors name the file (and line).
    pub fn load(path: impl AsRef<Path>) -> Result<Hba, HbaError> {
        let path = path.as_ref();
        let io = |source| HbaError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = String::new();
        let read = file
            .take(MAX_FILE_LEN + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if read as u64 > MAX_FILE_LEN {
            return Err(HbaError::TooLarge {
                path: path.to_owned(),
                size: read as u64,
                max: MAX_FILE_LEN,
            });
        }
        Hba::parse(&text, &path.display().to_string())
    }

    /// Parses file contents; `name` is what errors call the file.
    pub fn parse(text: &str, name: &str) -> Result<Hba, HbaError> {
        let mut rules = Vec::new();
        for (line, record) in logical_lines(text) {
            let syntax = |message: String| HbaError::Syntax {
                file: name.to_owned(),
                line,
                message,
            };
            let fields = tokenize(&record).map_err(syntax)?;
            if fields.is_empty() {
                continue;
            }
            rules.push(parse_record(line, fields).map_err(syntax)?);
        }
        Ok(Hba { rules })
    }

    /// The first rule that covers this connection, database and user, or
    /// `None`: then the client is refused (SQLSTATE 28000), as PostgreSQL
    /// does with "no pg_hba.conf entry".
    pub fn find(&self, conn: ConnKind, database: &str, user: &str) -> Option<&HbaRule> {
        self.rules.iter().find(|r| r.matches(&conn, database, user))
    }

    pub fn rules(&self) -> &[HbaRule] {
        &self.rules
    }
}

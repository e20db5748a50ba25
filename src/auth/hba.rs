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

/// Joins backslash-continued lines; yields (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        match raw.strip_suffix('\\') {
            Some(head) => {
                acc.push_str(head);
                acc.push(' ');
                pending = Some((start, acc));
            }
            None => {
                acc.push_str(raw);
                out.push((start, acc));
            }
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

#[derive(Debug)]
struct Token {
    text: String,
    quoted: bool,
}

/// Splits a line into fields; a field is a comma list of tokens.
fn tokenize(line: &str) -> Result<Vec<Vec<Token>>, String> {
    let mut chars = line.chars().peekable();
    let mut fields = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => break,
            Some(_) => {}
        }
        let mut field = Vec::new();
        loop {
            let token = read_token(&mut chars)?;
            if token.text.is_empty() && !token.quoted {
                return Err("empty element in a list".into());
            }
            field.push(token);
            if chars.next_if_eq(&',').is_none() {
                break;
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if matches!(chars.peek(), None | Some('#')) {
                return Err("list ends with a comma".into());
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

fn read_token(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Token, String> {
    let mut text = String::new();
    let mut quoted = false;
    let mut in_quote = false;
    while let Some(&c) = chars.peek() {
        if in_quote {
            chars.next();
            if c == '"' {
                if chars.next_if_eq(&'"').is_some() {
                    text.push('"');
                } else {
                    in_quote = false;
                }
            } else {
                text.push(c);
            }
        } else if c == '"' {
            chars.next();
            in_quote = true;
            quoted = true;
        } else if c.is_whitespace() || c == ',' || c == '#' {
            break;
        } else {
            chars.next();
            text.push(c);
        }
    }
    if in_quote {
        return Err("unterminated quoted string".into());
    }
    Ok(Token { text, quoted })
}

fn parse_record(line: usize, fields: Vec<Vec<Token>>) -> Result<HbaRule, String> {
    let mut fields = fields.into_iter();
    let kind = single(fields.next(), "connection type")?;
    if kind.text.starts_with("include") && !kind.quoted {
        return Err(format!("\"{}\" is not supported", kind.text));
    }
    let record = RecordType::parse(&kind.text)
        .filter(|_| !kind.quoted)
        .ok_or_else(|| format!("invalid connection type \"{}\"", kind.text))?;
    let databases = fields
        .next()
        .ok_or("end of line before database specification")?
        .into_iter()
        .map(database_match)
        .collect::<Result<Vec<_>, _>>()?;
    let users = fields
        .next()
        .ok_or("end of line before role specification")?
        .into_iter()
        .map(user_match)
        .collect::<Result<Vec<_>, _>>()?;

    let mut rest: Vec<Vec<Token>> = fields.collect();
    let address = if record == RecordType::Local {
        AddressMatch::Any
    } else {
        if rest.is_empty() {
            return Err("end of line before IP address specification".into());
        }
        let addr = single(Some(rest.remove(0)), "IP address")?;
        parse_address(&addr, &mut rest)?
    };

    let mut rest = rest.into_iter();
    let method_token = single(rest.next(), "authentication method")?;
    let method = Method::parse(&method_token.text)
        .filter(|_| !method_token.quoted)
        .ok_or_else(|| format!("invalid authentication method \"{}\"", method_token.text))?;
    if method == Method::Cert && record != RecordType::HostSsl {
        return Err("cert authentication is only supported on hostssl connections".into());
    }
    let mut options = Vec::new();
    for field in rest {
        for t in field {
            let (k, v) = t
                .text
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    format!("authentication option not in name=value format: {}", t.text)
                })?;
            options.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok(HbaRule {
        line,
        record,
        databases,
        users,
        address,
        method,
        options,
    })
}

fn single(field: Option<Vec<Token>>, what: &str) -> Result<Token, String> {
    let mut field = field.ok_or_else(|| format!("end of line before {what}"))?;
    if field.len() != 1 {
        return Err(format!("multiple values given for {what}"));
    }
    field.pop().ok_or_else(|| format!("missing {what}"))
}

fn database_match(t: Token) -> Result<NameMatch, String> {
    if !t.quoted {
        match t.text.as_str() {
            "all" => return Ok(NameMatch::All),
            "sameuser" => return Ok(NameMatch::SameUser),
            "replication" => return Ok(NameMatch::Replication),
            "samerole" | "samegroup" => {
                return Err(format!(
                    "\"{}\" is not supported (it needs the role catalog)",
                    t.text
                ))
            }
            s if s.starts_with('@') => {
                return Err(format!("\"{s}\": @file inclusion is not supported"))
            }
            _ => {}
        }
    }
    name(t)
}

fn user_match(t: Token) -> Result<NameMatch, String> {
    if !t.quoted {
        match t.text.as_str() {
            "all" => return Ok(NameMatch::All),
            s if s.starts_with('+') => {
                return Err(format!("\"{s}\": group membership is not supported"))
            }
            s if s.starts_with('@') => {
                return Err(format!("\"{s}\": @file inclusion is not supported"))
            }
            s if s.starts_with('/') => {
                return Err(format!("\"{s}\": regular expressions are not supported"))
            }
            _ => {}
        }
    }
    name(t)
}

fn name(t: Token) -> Result<NameMatch, String> {
    if t.text.is_empty() {
        return Err("empty name".into());
    }
    Ok(NameMatch::Name(t.text))
}

/// Parses the address column, taking the mask column from `rest` when the
/// address is a bare IP.
fn parse_address(t: &Token, rest: &mut Vec<Vec<Token>>) -> Result<AddressMatch, String> {
    let text = t.text.as_str();
    if !t.quoted {
        match text {
            "all" => return Ok(AddressMatch::Any),
            "samehost" | "samenet" => {
                return Err(format!(
                    "\"{text}\" is not supported; use an address in CIDR notation"
                ))
            }
            _ => {}
        }
    }
    if let Some((ip, len)) = text.split_once('/') {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address \"{ip}\""))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = len
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max && len.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("invalid CIDR mask in address \"{text}\""))?;
        return Ok(net(ip, prefix));
    }
    let Ok(ip) = text.parse::<IpAddr>() else {
        return Err(format!(
            "invalid IP address \"{text}\" (host names are not supported; use CIDR notation)"
        ));
    };
    if rest.is_empty() {
        return Err("end of line before netmask specification; \
                    specify an address range in CIDR notation, or provide a separate netmask"
            .into());
    }
    let mask = single(Some(rest.remove(0)), "IP mask")?;
    let prefix = mask_prefix(&ip, &mask.text)?;
    Ok(net(ip, prefix))
}

fn net(ip: IpAddr, prefix: u8) -> AddressMatch {
    // Host bits are cleared so matching is one mask-and-compare.
    let addr = match ip {
        IpAddr::V4(a) => IpAddr::V4(mask32(u32::from(a), prefix).into()),
        IpAddr::V6(a) => IpAddr::V6(mask128(u128::from(a), prefix).into()),
    };
    AddressMatch::Net { addr, prefix }
}

fn mask_prefix(ip: &IpAddr, mask: &str) -> Result<u8, String> {
    let invalid = || format!("invalid IP mask \"{mask}\"");
    let m: IpAddr = mask.parse().map_err(|_| invalid())?;
    let (bits, width) = match (ip, m) {
        (IpAddr::V4(_), IpAddr::V4(m)) => (u128::from(u32::from(m)) << 96, 32),
        (IpAddr::V6(_), IpAddr::V6(m)) => (u128::from(m), 128),
        _ => return Err("IP address and mask do not match".into()),
    };
    let prefix = bits.leading_ones();
    // Contiguous: nothing set after the leading ones.
    if prefix > width || bits.checked_shl(prefix).unwrap_or(0) != 0 {
        return Err(invalid());
    }
    u8::try_from(prefix).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(a: &str, ssl: bool) -> ConnKind {
        ConnKind::Host {
            addr: a.parse().unwrap(),
            ssl,
        }
    }

    fn parse(text: &str) -> Hba {
        Hba::parse(text, "test.conf").unwrap()
    }

    fn err(text: &str) -> String {
        Hba::parse(text, "test.conf").unwrap_err().to_string()
    }

    fn method(hba: &Hba, conn: ConnKind, db: &str, user: &str) -> Option<Method> {
        hba.find(conn, db, user).map(|r| r.method)
    }

    #[test]
    fn local_records_match_only_unix_sockets() {
        let hba = parse("local all all trust\n");
        assert_eq!(
            method(&hba, ConnKind::Local, "db", "u"),
            Some(Method::Trust)
        );
        assert_eq!(method(&hba, host("127.0.0.1", false), "db", "u"), None);
    }

    #[test]
    fn host_ssl_and_nossl_records() {
        let hba = parse(
            "hostssl   all all 0.0.0.0/0 scram-sha-256\n\
             hostnossl all all 0.0.0.0/0 md5\n\
             host      all all ::/0      password\n",
        );
        let m = |a, ssl| method(&hba, host(a, ssl), "db", "u");
        assert_eq!(m("10.0.0.1", true), Some(Method::ScramSha256));
        assert_eq!(m("10.0.0.1", false), Some(Method::Md5));
        assert_eq!(m("::1", true), Some(Method::Password));
        assert_eq!(m("::1", false), Some(Method::Password));
        assert_eq!(method(&hba, ConnKind::Local, "db", "u"), None);
    }

    #[test]
    fn gssenc_records() {
        let hba = parse("hostgssenc all all all trust\nhostnogssenc all all all md5\n");
        assert_eq!(
            method(&hba, host("1.2.3.4", true), "d", "u"),
            Some(Method::Md5)
        );
    }

    #[test]
    fn every_method_parses() {
        for (text, m) in [
            ("trust", Method::Trust),
            ("reject", Method::Reject),
            ("password", Method::Password),
            ("md5", Method::Md5),
            ("scram-sha-256", Method::ScramSha256),
            ("all", Method::All),
        ] {
            let hba = parse(&format!("host all all all {text}"));
            assert_eq!(hba.rules()[0].method, m);
            assert_eq!(m.as_str(), text);
        }
        let hba = parse("hostssl all all all cert clientcert=verify-full");
        assert_eq!(hba.rules()[0].method, Method::Cert);
        assert_eq!(
            hba.rules()[0].options,
            vec![("clientcert".to_string(), "verify-full".to_string())]
        );
    }

    #[test]
    fn cidr_v4() {
        let hba = parse("host all all 192.168.1.0/24 md5\nhost all all 10.1.2.3/32 trust");
        let m = |a| method(&hba, host(a, false), "d", "u");
        assert_eq!(m("192.168.1.0"), Some(Method::Md5));
        assert_eq!(m("192.168.1.255"), Some(Method::Md5));
        assert_eq!(m("192.168.2.1"), None);
        assert_eq!(m("10.1.2.3"), Some(Method::Trust));
        assert_eq!(m("10.1.2.4"), None);
        // An IPv4 client on an IPv6 socket.
        assert_eq!(m("::ffff:192.168.1.7"), Some(Method::Md5));
        assert_eq!(m("::1"), None);
    }

    #[test]
    fn cidr_host_bits_are_ignored() {
        let hba = parse("host all all 192.168.1.77/24 md5");
        assert_eq!(
            hba.rules()[0].address,
            AddressMatch::Net {
                addr: "192.168.1.0".parse().unwrap(),
                prefix: 24
            }
        );
        assert_eq!(
            method(&hba, host("192.168.1.3", false), "d", "u"),
            Some(Method::Md5)
        );
    }

    #[test]
    fn cidr_v6() {
        let hba = parse(
            "host all all fe80::/10 md5\nhost all all ::1/128 trust\nhost all all ::/0 reject",
        );
        let m = |a| method(&hba, host(a, false), "d", "u");
        assert_eq!(m("fe80::1234:5678"), Some(Method::Md5));
        assert_eq!(m("febf:ffff::1"), Some(Method::Md5));
        assert_eq!(m("fec0::1"), Some(Method::Reject));
        assert_eq!(m("::1"), Some(Method::Trust));
        assert_eq!(m("2001:db8::1"), Some(Method::Reject));
        // An IPv6 rule never covers an IPv4 client.
        assert_eq!(m("127.0.0.1"), None);
    }

    #[test]
    fn zero_prefix_matches_everything_of_its_family() {
        let hba = parse("host all all 0.0.0.0/0 md5");
        assert_eq!(
            method(&hba, host("255.255.255.255", false), "d", "u"),
            Some(Method::Md5)
        );
        assert_eq!(method(&hba, host("2001:db8::1", false), "d", "u"), None);
    }

    #[test]
    fn address_and_mask_columns() {
        let hba = parse(
            "host all all 10.0.0.0 255.0.0.0 md5\n\
             host all all 2001:db8:: ffff:ffff:: trust\n\
             host all all 192.168.0.1 255.255.255.255 password",
        );
        let m = |a| method(&hba, host(a, false), "d", "u");
        assert_eq!(m("10.200.3.4"), Some(Method::Md5));
        assert_eq!(m("11.0.0.1"), None);
        assert_eq!(m("2001:db8:ffff::1"), Some(Method::Trust));
        assert_eq!(m("2001:db9::1"), None);
        assert_eq!(m("192.168.0.1"), Some(Method::Password));
        assert_eq!(m("192.168.0.2"), None);
        assert_eq!(
            hba.rules()[0].address,
            AddressMatch::Net {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
    }

    #[test]
    fn all_address() {
        let hba = parse("host all all all md5");
        assert_eq!(
            method(&hba, host("8.8.8.8", false), "d", "u"),
            Some(Method::Md5)
        );
        assert_eq!(
            method(&hba, host("2001::1", true), "d", "u"),
            Some(Method::Md5)
        );
    }

    #[test]
    fn database_and_user_lists() {
        let hba = parse("host db1,db2, \"db 3\" alice,\"bob\" all md5\n");
        let m = |db, u| method(&hba, host("1.1.1.1", false), db, u);
        assert_eq!(m("db1", "alice"), Some(Method::Md5));
        assert_eq!(m("db2", "bob"), Some(Method::Md5));
        assert_eq!(m("db 3", "bob"), Some(Method::Md5));
        assert_eq!(m("db4", "alice"), None);
        assert_eq!(m("db1", "carol"), None);
        assert_eq!(m("DB1", "alice"), None, "names are case-sensitive");
    }

    #[test]
    fn keywords_and_quoting() {
        let hba = parse(
            "local \"all\" \"all\" trust\n\
             local sameuser all md5\n\
             local replication all reject\n\
             local \"with \"\"quote\"\"\" x password\n",
        );
        assert_eq!(
            method(&hba, ConnKind::Local, "alice", "alice"),
            Some(Method::Md5)
        );
        // Quoted keywords are plain names.
        assert_eq!(
            method(&hba, ConnKind::Local, "all", "all"),
            Some(Method::Trust)
        );
        assert_eq!(method(&hba, ConnKind::Local, "db", "all"), None);
        // "replication" never matches a pooled client.
        assert_eq!(method(&hba, ConnKind::Local, "replication", "u"), None);
        assert_eq!(
            method(&hba, ConnKind::Local, "with \"quote\"", "x"),
            Some(Method::Password)
        );
    }

    #[test]
    fn first_match_wins() {
        let hba = parse(
            "host all bob 10.0.0.0/8 reject\n\
             host all all 10.0.0.0/8 scram-sha-256\n\
             host all bob all trust\n",
        );
        let r = hba.find(host("10.1.1.1", false), "db", "bob").unwrap();
        assert_eq!((r.method, r.line), (Method::Reject, 1));
        let r = hba.find(host("10.1.1.1", false), "db", "alice").unwrap();
        assert_eq!((r.method, r.line), (Method::ScramSha256, 2));
        let r = hba.find(host("11.1.1.1", false), "db", "bob").unwrap();
        assert_eq!((r.method, r.line), (Method::Trust, 3));
        assert!(hba.find(host("11.1.1.1", false), "db", "alice").is_none());
    }

    #[test]
    fn comments_blank_lines_and_continuations() {
        let hba = parse(
            "# a comment\n\
             \n   \t\n\
             local all all trust # trailing comment\n\
             host all \\\n  all 127.0.0.1/32 md5\r\n\
             host \"#notcomment\" all all md5\n",
        );
        assert_eq!(hba.rules().len(), 3);
        assert_eq!(hba.rules()[0].line, 4);
        assert_eq!(
            hba.rules()[1].line,
            5,
            "a continued record has its first line"
        );
        assert_eq!(hba.rules()[2].line, 7);
        assert_eq!(
            hba.rules()[2].databases,
            vec![NameMatch::Name("#notcomment".into())]
        );
        assert!(parse("").rules().is_empty());
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "local all all trust\nhots all all all md5",
                2,
                "invalid connection type \"hots\"",
            ),
            (
                "\n\nhost all all 10.0.0.0/8 md6",
                3,
                "invalid authentication method \"md6\"",
            ),
            ("host all all 10.0.0.0/33 md5", 1, "invalid CIDR mask"),
            ("host all all ::/129 md5", 1, "invalid CIDR mask"),
            ("host all all 10.0.0.0/x md5", 1, "invalid CIDR mask"),
            ("host all all 300.0.0.0/8 md5", 1, "invalid IP address"),
            (
                "host all all db.example.com md5",
                1,
                "host names are not supported",
            ),
            ("host all all 10.0.0.1 md5", 1, "invalid IP mask \"md5\""),
            ("host all all 10.0.0.1", 1, "end of line before netmask"),
            (
                "host all all 10.0.0.0 255.0.255.0 md5",
                1,
                "invalid IP mask",
            ),
            ("host all all 10.0.0.0 ffff:: md5", 1, "do not match"),
            (
                "host all all 10.0.0.0/8",
                1,
                "end of line before authentication method",
            ),
            ("host all all", 1, "end of line before IP address"),
            ("local all", 1, "end of line before role"),
            ("local", 1, "end of line before database"),
            ("local all all trust bogus", 1, "name=value"),
            ("local \"all all trust", 1, "unterminated quoted string"),
            ("local a,,b all trust", 1, "empty element"),
            (
                "local a, all trust",
                1,
                "end of line before authentication method",
            ),
            ("local a,\n", 1, "list ends with a comma"),
            ("local \"\" all trust", 1, "empty name"),
            (
                "local all +admins trust",
                1,
                "group membership is not supported",
            ),
            (
                "local all /^a.*$ trust",
                1,
                "regular expressions are not supported",
            ),
            (
                "local @dbs all trust",
                1,
                "@file inclusion is not supported",
            ),
            ("local samerole all trust", 1, "not supported"),
            ("host all all samenet trust", 1, "not supported"),
            (
                "local all all md5,trust",
                1,
                "multiple values given for authentication method",
            ),
            ("local all all cert", 1, "only supported on hostssl"),
            ("include other.conf", 1, "\"include\" is not supported"),
            (
                "local all all \"trust\"",
                1,
                "invalid authentication method",
            ),
        ];
        for (text, line, needle) in cases {
            let e = Hba::parse(text, "hba.conf").unwrap_err();
            let HbaError::Syntax {
                file,
                line: l,
                message,
            } = &e
            else {
                panic!("{text}: {e}");
            };
            assert_eq!(file, "hba.conf");
            assert_eq!(*l, line, "{text}: {e}");
            assert!(message.contains(needle), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("hba.conf:{line}: ")));
        }
        assert!(err("local all all trust\nlocal").starts_with("test.conf:2: "));
    }

    #[test]
    fn load_reads_a_file_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgcorral_hba.conf");
        std::fs::write(&path, "host all all 127.0.0.1/32 md5\nhost all all x md5\n").unwrap();
        let e = Hba::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2: invalid IP address \"x\" (host names are not supported; use CIDR notation)",
                path.display()
            )
        );
        std::fs::write(&path, "host all all 127.0.0.1/32 md5\n").unwrap();
        assert_eq!(Hba::load(&path).unwrap().rules().len(), 1);
        let missing = dir.path().join("missing.conf");
        let e = Hba::load(&missing).unwrap_err();
        assert!(matches!(e, HbaError::Io { .. }));
        assert!(e.to_string().contains("missing.conf"));
    }
}

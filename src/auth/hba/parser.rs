//! The `pg_hba.conf` syntax: continued lines, quoted tokens, records.

use std::net::IpAddr;

use super::{mask128, mask32, AddressMatch, HbaRule, Method, NameMatch, RecordType};

/// Joins backslash-continued lines; yields (first line number, text).
pub(super) fn logical_lines(text: &str) -> Vec<(usize, String)> {
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
pub(super) struct Token {
    text: String,
    quoted: bool,
}

/// Splits a line into fields; a field is a comma list of tokens.
pub(super) fn tokenize(line: &str) -> Result<Vec<Vec<Token>>, String> {
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

pub(super) fn parse_record(line: usize, fields: Vec<Vec<Token>>) -> Result<HbaRule, String> {
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

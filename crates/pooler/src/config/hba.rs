//! `auth_hba_file`: the subset of `pg_hba.conf` PgBouncer supports.
//!
//! ```text
//! # TYPE     DATABASE        USER         ADDRESS            METHOD   [OPTIONS]
//! local      all             all                             peer
//! host       db1,db2         alice,bob    10.0.0.0/8         scram-sha-256
//! hostssl    sameuser        @admins.txt  ::1/128            md5
//! hostnossl  all             all          192.168.0.0 255.255.0.0  reject
//! ```
//!
//! - Types: `local`, `host`, `hostssl`, `hostnossl`.
//! - Database: `all`, `sameuser`, `replication`, names, comma lists, `@file`.
//! - User: `all`, names, comma lists, `@file` (`+group` is not supported, as in
//!   PgBouncer).
//! - Address (not for `local`): `all`, an IPv4/IPv6 CIDR, or an address followed by a
//!   netmask. `samehost`, `samenet` and host names are not supported (as in PgBouncer).
//! - Method: `trust`, `reject`, `md5`, `scram-sha-256`, `password`, `cert`, `peer`;
//!   `name=value` options may follow.
//! - A quoted word (`"all"`) is a name, never a keyword. `#` starts a comment; a
//!   trailing `\` continues the line.
//! - `@file` is resolved against the HBA file's directory and holds names separated by
//!   blanks, commas or newlines (`#` comments allowed); it is not recursive.
//!
//! Matching is first-match: [`HbaRules::matches`] returns the method of the first rule
//! whose type, database, user and address all match, or `None` (reject) if none does.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{read_text, ConfigError, ConfigErrors, ErrorKind, Location};

/// Connection type a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

/// A database-field item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DbMatch {
    All,
    SameUser,
    Replication,
    Name(String),
}

/// A user-field item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserMatch {
    All,
    Name(String),
}

/// The address field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrMatch {
    /// `local` rules have no address.
    None,
    All,
    Net {
        addr: IpAddr,
        prefix_len: u8,
    },
}

/// The authentication method a rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HbaMethod {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    /// Clear-text password (PgBouncer's `plain`).
    Password,
    Cert,
    Peer,
}

impl HbaMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HbaMethod::Trust => "trust",
            HbaMethod::Reject => "reject",
            HbaMethod::Md5 => "md5",
            HbaMethod::ScramSha256 => "scram-sha-256",
            HbaMethod::Password => "password",
            HbaMethod::Cert => "cert",
            HbaMethod::Peer => "peer",
        }
    }
}

impl fmt::Display for HbaMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One HBA line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    /// 1-based line in the HBA file (the first line, for continued lines).
    pub line: usize,
    pub conn_type: ConnType,
    pub databases: Vec<DbMatch>,
    pub users: Vec<UserMatch>,
    pub address: AddrMatch,
    pub method: HbaMethod,
    /// `name=value` options after the method (e.g. `map=…`).
    pub options: Vec<(String, String)>,
}

/// The facts about a connection that HBA rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo<'a> {
    /// Came in over the Unix socket.
    pub local: bool,
    /// TLS is in use.
    pub tls: bool,
    /// The client's address (ignored for local connections).
    pub addr: IpAddr,
    pub database: &'a str,
    pub user: &'a str,
    /// A replication connection (`replication=true` in the startup packet).
    pub replication: bool,
}

/// The rules of an `auth_hba_file`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HbaRules {
    pub rules: Vec<HbaRule>,
}

impl HbaRule {
    /// Whether this rule applies to `conn`.
    pub fn applies_to(&self, conn: &ConnInfo<'_>) -> bool {
        let type_ok = match self.conn_type {
            ConnType::Local => conn.local,
            ConnType::Host => !conn.local,
            ConnType::HostSsl => !conn.local && conn.tls,
            ConnType::HostNoSsl => !conn.local && !conn.tls,
        };
        type_ok
            && self.databases.iter().any(|d| db_matches(d, conn))
            && self.users.iter().any(|u| match u {
                UserMatch::All => true,
                UserMatch::Name(n) => n == conn.user,
            })
            && (conn.local || addr_matches(&self.address, conn.addr))
    }
}

fn db_matches(d: &DbMatch, conn: &ConnInfo<'_>) -> bool {
    // As in PostgreSQL: replication connections match only the `replication`
    // keyword, and `replication` matches nothing else.
    if conn.replication {
        return matches!(d, DbMatch::Replication);
    }
    match d {
        DbMatch::All => true,
        DbMatch::SameUser => conn.database == conn.user,
        DbMatch::Replication => false,
        DbMatch::Name(n) => n == conn.database,
    }
}

fn addr_matches(a: &AddrMatch, client: IpAddr) -> bool {
    match *a {
        AddrMatch::None => false,
        AddrMatch::All => true,
        AddrMatch::Net { addr, prefix_len } => match (addr, client.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(c)) => {
                let mask = prefix_mask_u32(prefix_len);
                u32::from(net) & mask == u32::from(c) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(c)) => {
                let mask = prefix_mask_u128(prefix_len);
                u128::from(net) & mask == u128::from(c) & mask
            }
            _ => false,
        },
    }
}

fn prefix_mask_u32(len: u8) -> u32 {
    match len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - u32::from(n)),
    }
}

fn prefix_mask_u128(len: u8) -> u128 {
    match len {
        0 => 0,
        n if n >= 128 => u128::MAX,
        n => u128::MAX << (128 - u32::from(n)),
    }
}

impl HbaRules {
    /// Read an HBA file.
    pub fn load(path: &Path) -> Result<HbaRules, ConfigErrors> {
        let text = read_text(path)?;
        HbaRules::parse(&text, path)
    }

    /// Parse HBA text; `file` names it in errors and anchors `@file` references.
    pub fn parse(text: &str, file: &Path) -> Result<HbaRules, ConfigErrors> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (line_no, line) in logical_lines(text) {
            let location = Location::line(file, line_no);
            match parse_rule(&line, line_no, file) {
                Ok(Some(rule)) => rules.push(rule),
                Ok(None) => {}
                Err(message) => {
                    errors.push(ConfigError::new(location, None, ErrorKind::Syntax, message))
                }
            }
        }
        if errors.is_empty() {
            Ok(HbaRules { rules })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The first rule that applies to `conn`.
    pub fn first_match(&self, conn: &ConnInfo<'_>) -> Option<&HbaRule> {
        self.rules.iter().find(|r| r.applies_to(conn))
    }

    /// The method of the first rule that applies; `None` means no rule applies and the
    /// connection is rejected.
    pub fn matches(&self, conn: &ConnInfo<'_>) -> Option<HbaMethod> {
        self.first_match(conn).map(|r| r.method)
    }
}

/// Lines joined at trailing backslashes, with the first line's number.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (start, mut acc) = pending.take().unwrap_or((index + 1, String::new()));
        if let Some(body) = raw.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            pending = Some((start, acc));
        } else {
            acc.push_str(raw);
            out.push((start, acc));
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// A word of a field: its text and whether it was quoted (quoted words are never
/// keywords).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    quoted: bool,
}

/// Split a line into fields; each field is a comma list of words. `#` outside quotes
/// ends the line. `a, b` (comma then blank) continues the list, as in PostgreSQL.
fn fields(line: &str) -> Result<Vec<Vec<Word>>, &'static str> {
    let mut fields: Vec<Vec<Word>> = Vec::new();
    let mut field: Vec<Word> = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut continue_list = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Quoted section (may be part of a word).
                quoted = true;
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err("unterminated double quote"),
                        Some('"') => break,
                        Some(ch) => word.push(ch),
                    }
                }
            }
            '#' => break,
            ',' => {
                field.push(Word {
                    text: std::mem::take(&mut word),
                    quoted,
                });
                quoted = false;
                in_word = false;
                continue_list = true;
            }
            c if c.is_whitespace() => {
                if in_word {
                    field.push(Word {
                        text: std::mem::take(&mut word),
                        quoted,
                    });
                    quoted = false;
                    in_word = false;
                    continue_list = false;
                    // A comma right after blanks continues the list too.
                    while chars.peek().is_some_and(|c| c.is_whitespace()) {
                        chars.next();
                    }
                    if chars.peek() == Some(&',') {
                        continue_list = true;
                        chars.next();
                        continue;
                    }
                    fields.push(std::mem::take(&mut field));
                } else if !continue_list && !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                }
            }
            c => {
                if !in_word && !continue_list && !field.is_empty() {
                    fields.push(std::mem::take(&mut field));
                }
                in_word = true;
                continue_list = false;
                word.push(c);
            }
        }
    }
    if in_word || continue_list {
        field.push(Word { text: word, quoted });
    }
    if !field.is_empty() {
        fields.push(field);
    }
    for f in &fields {
        if f.iter().any(|w| w.text.is_empty() && !w.quoted) {
            return Err("empty item in a comma-separated list");
        }
    }
    Ok(fields)
}

fn single<'a>(field: &'a [Word], what: &str) -> Result<&'a Word, String> {
    match field {
        [w] => Ok(w),
        _ => Err(format!("{what} cannot be a list")),
    }
}

fn keyword(w: &Word, kw: &str) -> bool {
    !w.quoted && w.text.eq_ignore_ascii_case(kw)
}

fn parse_rule(line: &str, line_no: usize, file: &Path) -> Result<Option<HbaRule>, String> {
    let fields = fields(line).map_err(str::to_string)?;
    let mut it = fields.iter();
    let Some(type_field) = it.next() else {
        return Ok(None);
    };
    let t = single(type_field, "connection type")?;
    let conn_type = match t.text.to_ascii_lowercase().as_str() {
        _ if t.quoted => return Err("connection type cannot be quoted".into()),
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "hostgssenc" | "hostnogssenc" => {
            return Err(format!("connection type '{}' is not supported", t.text))
        }
        _ => return Err(format!("invalid connection type '{}'", t.text)),
    };
    let db_field = it.next().ok_or("missing database field")?;
    let user_field = it.next().ok_or("missing user field")?;
    let dir = file.parent().unwrap_or(Path::new(""));
    let databases = expand(db_field, dir)?
        .into_iter()
        .map(|w| {
            if keyword(&w, "all") {
                Ok(DbMatch::All)
            } else if keyword(&w, "sameuser") {
                Ok(DbMatch::SameUser)
            } else if keyword(&w, "replication") {
                Ok(DbMatch::Replication)
            } else if keyword(&w, "samerole") || keyword(&w, "samegroup") {
                Err(format!("database keyword '{}' is not supported", w.text))
            } else {
                Ok(DbMatch::Name(w.text))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let users = expand(user_field, dir)?
        .into_iter()
        .map(|w| {
            if keyword(&w, "all") {
                Ok(UserMatch::All)
            } else if !w.quoted && w.text.starts_with('+') {
                Err("group membership (+group) is not supported".to_string())
            } else {
                Ok(UserMatch::Name(w.text))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    let rest: Vec<&Vec<Word>> = it.collect();
    let mut rest = rest.into_iter();
    let address = if conn_type == ConnType::Local {
        AddrMatch::None
    } else {
        let a = single(rest.next().ok_or("missing address field")?, "address")?;
        parse_address(a, &mut rest)?
    };
    let m = single(
        rest.next().ok_or("missing authentication method")?,
        "method",
    )?;
    let method = match m.text.to_ascii_lowercase().as_str() {
        "trust" => HbaMethod::Trust,
        "reject" => HbaMethod::Reject,
        "md5" => HbaMethod::Md5,
        "scram-sha-256" => HbaMethod::ScramSha256,
        "password" => HbaMethod::Password,
        "cert" => HbaMethod::Cert,
        "peer" => HbaMethod::Peer,
        "ldap" | "pam" | "gss" | "sspi" | "ident" | "radius" | "bsd" | "any" => {
            return Err(format!(
                "authentication method '{}' is not supported",
                m.text
            ))
        }
        _ => return Err(format!("invalid authentication method '{}'", m.text)),
    };
    if method == HbaMethod::Peer && conn_type != ConnType::Local {
        return Err("peer authentication is only for local connections".into());
    }
    let mut options = Vec::new();
    for f in rest {
        for w in f {
            let Some((k, v)) = w.text.split_once('=') else {
                return Err(format!("expected name=value option, found '{}'", w.text));
            };
            options.push((k.to_string(), v.to_string()));
        }
    }
    Ok(Some(HbaRule {
        line: line_no,
        conn_type,
        databases,
        users,
        address,
        method,
        options,
    }))
}

fn parse_address<'a>(
    a: &Word,
    rest: &mut impl Iterator<Item = &'a Vec<Word>>,
) -> Result<AddrMatch, String> {
    if keyword(a, "all") {
        return Ok(AddrMatch::All);
    }
    if keyword(a, "samehost") || keyword(a, "samenet") {
        return Err(format!("address keyword '{}' is not supported", a.text));
    }
    if let Some((ip, len)) = a.text.split_once('/') {
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid IP address '{ip}' (host names are not supported)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = len
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("invalid CIDR mask length '/{len}'"))?;
        return Ok(AddrMatch::Net { addr, prefix_len });
    }
    let addr: IpAddr = a.text.parse().map_err(|_| {
        format!(
            "invalid address '{}': expected all, a CIDR such as 10.0.0.0/8, or an address and netmask",
            a.text
        )
    })?;
    let mask_field = rest
        .next()
        .ok_or("an IP address needs a CIDR length or a netmask")?;
    let mask_word = single(mask_field, "netmask")?;
    let mask: IpAddr = mask_word
        .text
        .parse()
        .map_err(|_| format!("invalid netmask '{}'", mask_word.text))?;
    let prefix_len = match (addr, mask) {
        (IpAddr::V4(_), IpAddr::V4(m)) => contiguous(u128::from(u32::from(m)) << 96),
        (IpAddr::V6(_), IpAddr::V6(m)) => contiguous(u128::from(m)),
        _ => None,
    }
    .ok_or_else(|| format!("netmask '{}' does not fit the address", mask_word.text))?;
    Ok(AddrMatch::Net { addr, prefix_len })
}

/// The prefix length of a contiguous mask (left-aligned in 128 bits).
fn contiguous(mask: u128) -> Option<u8> {
    let ones = mask.leading_ones();
    (mask.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).ok())?
}

/// Replace `@file` words with the names in that file.
fn expand(field: &[Word], dir: &Path) -> Result<Vec<Word>, String> {
    let mut out = Vec::new();
    for w in field {
        match w.text.strip_prefix('@') {
            Some(name) if !w.quoted => {
                let path: PathBuf = dir.join(name);
                let text = read_text(&path).map_err(|e| {
                    format!(
                        "@{name}: {}",
                        e.0.first()
                            .map(|e| e.message.as_str())
                            .unwrap_or("unreadable")
                    )
                })?;
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("");
                    for name in line.split(|c: char| c == ',' || c.is_whitespace()) {
                        if !name.is_empty() {
                            out.push(Word {
                                text: name.to_string(),
                                quoted: false,
                            });
                        }
                    }
                }
            }
            _ => out.push(w.clone()),
        }
    }
    if out.is_empty() {
        return Err("empty list".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<Vec<String>> {
        fields(line)
            .expect("tokenizes")
            .into_iter()
            .map(|f| f.into_iter().map(|w| w.text).collect())
            .collect()
    }

    #[test]
    fn tokenizer_handles_lists_quotes_comments() {
        assert_eq!(
            texts(r#"host  a,b , c  "x y"  1.2.3.4/32 md5 # c"#),
            vec![
                vec!["host"],
                vec!["a", "b", "c"],
                vec!["x y"],
                vec!["1.2.3.4/32"],
                vec!["md5"]
            ]
        );
        assert!(fields(r#"host "open"#).is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(contiguous(u128::MAX), Some(128));
        assert_eq!(contiguous(0), Some(0));
        assert_eq!(contiguous(u128::from(0xffff_0000u32) << 96), Some(16));
        assert_eq!(contiguous(u128::from(0xff00_ff00u32) << 96), None);
        assert_eq!(prefix_mask_u32(24), 0xffff_ff00);
    }
}

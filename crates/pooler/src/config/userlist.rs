//! PgBouncer's `auth_file` (`userlist.txt`):
//!
//! ```text
//! "username" "password-or-secret" [anything else is ignored]
//! ```
//!
//! Each field is in double quotes; `""` inside a field is one quote. Blank lines and
//! lines starting with `;` (PgBouncer) or `#` are comments. The second field is
//! classified as a [`Secret`]: an MD5 hash (`md5` + 32 hex digits), a SCRAM-SHA-256
//! verifier (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), or else a
//! plain-text password. A later line for the same user replaces an earlier one.
//!
//! No error message and no `Debug` output contains a password.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::{read_text, ConfigError, ConfigErrors, ErrorKind, Location};

/// A user's stored password, as written in the file (a separate crate does the
/// crypto). `Debug` shows only the kind.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A clear-text password.
    Plain(String),
    /// `md5` followed by 32 hex digits: `md5(password || username)`.
    Md5(String),
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    ScramVerifier(String),
}

/// The kind of a [`Secret`], safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    Plain,
    Md5,
    ScramVerifier,
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl Secret {
    /// Classify a stored password. A value that starts like a SCRAM verifier but is
    /// malformed is an error (a typo would otherwise silently become a plain password).
    pub fn classify(value: String) -> Result<Secret, &'static str> {
        if is_md5_hash(&value) {
            return Ok(Secret::Md5(value));
        }
        if let Some(rest) = value.strip_prefix(SCRAM_PREFIX) {
            return if is_scram_body(rest) {
                Ok(Secret::ScramVerifier(value))
            } else {
                Err("malformed SCRAM-SHA-256 secret: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
            };
        }
        Ok(Secret::Plain(value))
    }

    pub fn kind(&self) -> SecretKind {
        match self {
            Secret::Plain(_) => SecretKind::Plain,
            Secret::Md5(_) => SecretKind::Md5,
            Secret::ScramVerifier(_) => SecretKind::ScramVerifier,
        }
    }

    /// The secret as written in the file.
    pub fn expose(&self) -> &str {
        match self {
            Secret::Plain(s) | Secret::Md5(s) | Secret::ScramVerifier(s) => s,
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}(<redacted>)", self.kind())
    }
}

fn is_md5_hash(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s.as_bytes()[3..].iter().all(|b| b.is_ascii_hexdigit())
}

/// `<iterations>:<salt>$<StoredKey>:<ServerKey>` with base64 salt and keys.
fn is_scram_body(s: &str) -> bool {
    let Some((iter_salt, keys)) = s.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = iter_salt.split_once(':') else {
        return false;
    };
    let Some((stored, server)) = keys.split_once(':') else {
        return false;
    };
    let base64 = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    };
    !iterations.is_empty()
        && iterations.bytes().all(|b| b.is_ascii_digit())
        && iterations.parse::<u32>().is_ok_and(|n| n > 0)
        && base64(salt)
        && base64(stored)
        && base64(server)
}

/// The users of an `auth_file`, by name.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Userlist {
    users: BTreeMap<String, Secret>,
}

impl fmt::Debug for Userlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.users.iter().map(|(u, s)| (u, s.kind())))
            .finish()
    }
}

impl Userlist {
    /// Read an `auth_file`.
    pub fn load(path: &Path) -> Result<Userlist, ConfigErrors> {
        let text = read_text(path)?;
        Userlist::parse(&text, path)
    }

    /// Parse `auth_file` text; `file` names it in errors. All malformed lines are
    /// reported, each with its line number.
    pub fn parse(text: &str, file: &Path) -> Result<Userlist, ConfigErrors> {
        let mut users = BTreeMap::new();
        let mut errors = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            let location = Location::line(file, index + 1);
            match parse_line(line) {
                Ok(None) => {}
                Ok(Some((user, secret))) => {
                    users.insert(user, secret);
                }
                Err(message) => {
                    errors.push(ConfigError::new(location, None, ErrorKind::Syntax, message))
                }
            }
        }
        if errors.is_empty() {
            Ok(Userlist { users })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.users.iter().map(|(u, s)| (u.as_str(), s))
    }
}

/// One line: `None` for blanks and comments. Error messages never include field text.
fn parse_line(line: &str) -> Result<Option<(String, Secret)>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line).trim_start();
    if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = quoted_field(line).map_err(|e| format!("user name: {e}"))?;
    if user.is_empty() {
        return Err("empty user name".into());
    }
    let (password, _ignored) = quoted_field(rest.trim_start())
        .map_err(|e| format!("password of user '{}': {e}", user_shown(&user)))?;
    let secret = Secret::classify(password)
        .map_err(|e| format!("password of user '{}': {e}", user_shown(&user)))?;
    Ok(Some((user, secret)))
}

fn user_shown(user: &str) -> String {
    user.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Read a `"…"` field (with `""` as a quote) at the start of `s`; return it and the
/// rest of the line.
fn quoted_field(s: &str) -> Result<(String, &str), &'static str> {
    let Some(body) = s.strip_prefix('"') else {
        return Err("expected a field in double quotes");
    };
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if let Some(&(_, '"')) = chars.peek() {
                chars.next();
                out.push('"');
            } else {
                return Ok((out, &body[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    Err("missing closing double quote")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_secrets() {
        let md5 = format!("md5{}", "0123456789abcdef0123456789ABCDEF");
        assert_eq!(Secret::classify(md5).map(|s| s.kind()), Ok(SecretKind::Md5));
        assert_eq!(
            Secret::classify("md5password".into()).map(|s| s.kind()),
            Ok(SecretKind::Plain)
        );
        let scram = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk+/=:c2VydmVy".to_string();
        assert_eq!(
            Secret::classify(scram).map(|s| s.kind()),
            Ok(SecretKind::ScramVerifier)
        );
        assert!(Secret::classify("SCRAM-SHA-256$x:y".into()).is_err());
        assert!(Secret::classify("SCRAM-SHA-256$0:a$b:c".into()).is_err());
    }
}

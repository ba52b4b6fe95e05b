//! libpq-style `key=value key='quoted value'` strings, as PgBouncer reads them in
//! `[databases]` and `[users]` (`loader.c`: `cstr_get_pair`).
//!
//! - Pairs are separated by blanks; blanks around `=` are allowed.
//! - An unquoted value runs to the next blank, with no escapes (PgBouncer's rule).
//! - A quoted value is in single quotes; `''` is a quote (PgBouncer's rule) and, as in
//!   libpq, `\'` is a quote and `\\` a backslash. A backslash before anything else is
//!   kept. (Only a quoted value whose text ends in a backslash reads differently from
//!   PgBouncer; such a value is unlikely outside a password, and libpq agrees with us.)
//! - Empty values are errors (PgBouncer rejects them too); an empty string has no pairs.
//!
//! Error messages name the parameter but never echo a value (it may be a password).

/// Parse into `(key, value)` pairs in order; keys are lower-cased.
pub(crate) fn parse(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = input.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after_key = rest[key_end..].trim_start();
        let Some(after_eq) = after_key.strip_prefix('=') else {
            return Err(if key.is_empty() {
                "expected 'name=value' in connection string".to_string()
            } else {
                format!("parameter '{}' is missing '=value'", printable(key))
            });
        };
        if key.is_empty() {
            return Err("empty parameter name before '=' in connection string".into());
        }
        let key = key.to_ascii_lowercase();
        let value_start = after_eq.trim_start();
        let (value, remainder) = if let Some(quoted) = value_start.strip_prefix('\'') {
            unquote(quoted)
                .ok_or_else(|| format!("unterminated quoted value for parameter '{key}'"))?
        } else {
            let end = value_start
                .find(char::is_whitespace)
                .unwrap_or(value_start.len());
            (value_start[..end].to_string(), &value_start[end..])
        };
        if value.is_empty() {
            return Err(format!("empty value for parameter '{key}'"));
        }
        pairs.push((key, value));
        rest = remainder.trim_start();
    }
    Ok(pairs)
}

/// Read a quoted value after its opening quote; return it and the text after the
/// closing quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => {
                if let Some(&(_, '\'')) = chars.peek() {
                    chars.next();
                    value.push('\'');
                } else {
                    return Some((value, &s[i + 1..]));
                }
            }
            '\\' => match chars.peek() {
                Some(&(_, next @ ('\'' | '\\'))) => {
                    chars.next();
                    value.push(next);
                }
                _ => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    None
}

/// A parameter name safe to put in a message (names are short identifiers; anything
/// else is cut).
fn printable(key: &str) -> String {
    key.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// Quote a value for writing it back into a connection string.
pub(crate) fn quote(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<(String, String)> {
        parse(s).expect("parses")
    }

    #[test]
    fn pairs_and_quotes() {
        assert_eq!(
            p("host=a  port = 5 password='it''s \\'x\\' \\\\ y' dbname=d"),
            vec![
                ("host".into(), "a".into()),
                ("port".into(), "5".into()),
                ("password".into(), "it's 'x' \\ y".into()),
                ("dbname".into(), "d".into()),
            ]
        );
        assert!(p("").is_empty());
        assert!(parse("host=").is_err());
        assert!(parse("host").is_err());
        assert!(parse("password='abc").is_err());
        assert!(!parse("password='sekrit").unwrap_err().contains("sekrit"));
    }

    #[test]
    fn quote_round_trips() {
        for v in ["plain", "with space", "it's", "back\\slash", ""] {
            let s = format!("k={}", quote(v));
            if v.is_empty() {
                assert!(parse(&s).is_err());
            } else {
                assert_eq!(p(&s), vec![("k".to_string(), v.to_string())]);
            }
        }
    }
}

//! Console query syntax, as PgBouncer's `admin.c` accepts it: `WORD [WORD] [;]` and
//! `SET key = value` / `SET key TO 'value'`, case-insensitive; a word is `[0-9a-z_]+`
//! or a double-quoted identifier.

/// One parsed console query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW what` (also reached as a verb; kept separate for clarity in logs).
    Show(String),
    /// `SET key = value`.
    Set { key: String, value: String },
    /// Any other `verb [arg]`, verb lower-cased.
    Verb { verb: String, arg: Option<String> },
}

/// A lexer over the query text.
struct Lexer<'a> {
    rest: &'a str,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.rest.is_empty()
    }

    /// `[0-9A-Za-z_]+` or `"quoted"` (with `""` for a quote).
    fn word(&mut self) -> Option<String> {
        self.skip_ws();
        if let Some(quoted) = self.rest.strip_prefix('"') {
            return self.quoted(quoted, '"');
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w.to_string())
    }

    /// A `'string'` with `''` for a quote.
    fn string(&mut self) -> Option<String> {
        self.skip_ws();
        let quoted = self.rest.strip_prefix('\'')?;
        self.quoted(quoted, '\'')
    }

    fn quoted(&mut self, mut s: &'a str, q: char) -> Option<String> {
        let mut out = String::new();
        loop {
            let i = s.find(q)?;
            out.push_str(&s[..i]);
            s = &s[i + 1..];
            if let Some(after) = s.strip_prefix(q) {
                out.push(q);
                s = after;
            } else {
                self.rest = s;
                return (!out.is_empty()).then_some(out);
            }
        }
    }

    fn symbol(&mut self, sym: &str) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(sym) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    /// An optional `;`, then the end.
    fn end(&mut self) -> bool {
        self.symbol(";");
        self.at_end()
    }
}

impl Command {
    /// `None`: not a console command (PgBouncer's "invalid command").
    pub fn parse(query: &str) -> Option<Command> {
        let mut lx = Lexer { rest: query };
        let verb = lx.word()?.to_ascii_lowercase();
        if verb == "set" {
            let key = lx.word()?;
            lx.skip_ws();
            if !lx.symbol("=") {
                let to = lx.word()?;
                if !to.eq_ignore_ascii_case("to") {
                    return None;
                }
            }
            lx.skip_ws();
            let value = if lx.rest.starts_with('\'') {
                lx.string()?
            } else {
                lx.word()?
            };
            return lx.end().then_some(Command::Set { key, value });
        }
        let arg = if lx.end() {
            None
        } else {
            let a = lx.word()?;
            if !lx.end() {
                return None;
            }
            Some(a)
        };
        Some(match (verb.as_str(), arg) {
            ("show", Some(what)) => Command::Show(what),
            (_, arg) => Command::Verb { verb, arg },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    #[test]
    fn commands_are_case_insensitive_with_an_optional_semicolon() {
        assert_eq!(
            Command::parse("show POOLS;"),
            Some(Command::Show("POOLS".into()))
        );
        assert_eq!(
            Command::parse("  PAUSE mydb ;  "),
            Some(Command::Verb {
                verb: "pause".into(),
                arg: Some("mydb".into())
            })
        );
        assert_eq!(
            Command::parse("RESUME"),
            Some(Command::Verb {
                verb: "resume".into(),
                arg: None
            })
        );
        assert_eq!(
            Command::parse("kill \"My DB\""),
            Some(Command::Verb {
                verb: "kill".into(),
                arg: Some("My DB".into())
            })
        );
    }

    #[test]
    fn set_takes_a_word_or_a_quoted_string() {
        assert_eq!(
            Command::parse("SET default_pool_size = 7;"),
            Some(Command::Set {
                key: "default_pool_size".into(),
                value: "7".into()
            })
        );
        assert_eq!(
            Command::parse("set server_reset_query to 'DISCARD ALL'"),
            Some(Command::Set {
                key: "server_reset_query".into(),
                value: "DISCARD ALL".into()
            })
        );
    }

    #[test]
    fn garbage_is_not_a_command() {
        for q in [
            "",
            ";",
            "show pools extra",
            "select 1 + 1",
            "pause db; resume",
            "set x",
            "'",
        ] {
            assert_eq!(Command::parse(q), None, "{q:?}");
        }
    }
}

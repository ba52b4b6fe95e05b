//! ErrorResponse (`E`) and NoticeResponse (`N`): fields by one-byte code.

use bytes::BytesMut;

/// Field codes (`PG_DIAG_*` in `src/include/postgres_ext.h`; protocol docs
/// "Error and Notice Message Fields").
pub mod field {
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE.
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    pub const POSITION: u8 = b'P';
    pub const INTERNAL_POSITION: u8 = b'p';
    pub const INTERNAL_QUERY: u8 = b'q';
    pub const WHERE: u8 = b'W';
    pub const SCHEMA_NAME: u8 = b's';
    pub const TABLE_NAME: u8 = b't';
    pub const COLUMN_NAME: u8 = b'c';
    pub const DATA_TYPE_NAME: u8 = b'd';
    pub const CONSTRAINT_NAME: u8 = b'n';
    pub const FILE: u8 = b'F';
    pub const LINE: u8 = b'L';
    pub const ROUTINE: u8 = b'R';
}

/// Severity as PostgreSQL spells it in `S`/`V`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// ErrorResponse and NoticeResponse share their layout and API.
macro_rules! field_message {
    ($(#[$doc:meta])* $name:ident, $tag:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            /// `(code, value)` in the order sent; see [`field`].
            pub fields: Vec<(u8, String)>,
        }

        impl $name {
            /// A PostgreSQL-style report: severity (`S` and `V`), SQLSTATE (`C`) and
            /// message (`M`). Add more with the builder methods.
            pub fn new(severity: Severity, sqlstate: &str, message: impl Into<String>) -> Self {
                $name {
                    fields: vec![
                        (field::SEVERITY, severity.as_str().to_owned()),
                        (field::SEVERITY_NONLOCALIZED, severity.as_str().to_owned()),
                        (field::CODE, sqlstate.to_owned()),
                        (field::MESSAGE, message.into()),
                    ],
                }
            }

            /// Set field `code` (replacing an earlier value). Code 0 is the list
            /// terminator and is ignored.
            pub fn with(mut self, code: u8, value: impl Into<String>) -> Self {
                if code == 0 {
                    return self;
                }
                let value = value.into();
                match self.fields.iter_mut().find(|(c, _)| *c == code) {
                    Some(slot) => slot.1 = value,
                    None => self.fields.push((code, value)),
                }
                self
            }

            pub fn detail(self, detail: impl Into<String>) -> Self {
                self.with(field::DETAIL, detail)
            }

            pub fn hint(self, hint: impl Into<String>) -> Self {
                self.with(field::HINT, hint)
            }

            /// 1-based character position in the query.
            pub fn position(self, position: u32) -> Self {
                self.with(field::POSITION, position.to_string())
            }

            pub fn get(&self, code: u8) -> Option<&str> {
                self.fields
                    .iter()
                    .find(|(c, _)| *c == code)
                    .map(|(_, v)| v.as_str())
            }

            /// `V` when present (not localized), else `S`.
            pub fn severity(&self) -> Option<&str> {
                self.get(field::SEVERITY_NONLOCALIZED)
                    .or_else(|| self.get(field::SEVERITY))
            }

            /// The SQLSTATE.
            pub fn code(&self) -> Option<&str> {
                self.get(field::CODE)
            }

            pub fn message(&self) -> Option<&str> {
                self.get(field::MESSAGE)
            }
        }

        impl $crate::message::Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode(body: &[u8]) -> Result<Self, $crate::error::ProtocolError> {
                let mut r = $crate::buf::Reader::new(body, Self::NAME);
                let mut fields = Vec::new();
                loop {
                    let code = r.u8()?;
                    if code == 0 {
                        break;
                    }
                    fields.push((code, r.string()?));
                }
                r.finish()?;
                Ok($name { fields })
            }

            fn encode_body(&self, dst: &mut BytesMut) {
                use bytes::BufMut;
                for (code, value) in self.fields.iter().filter(|(c, _)| *c != 0) {
                    dst.put_u8(*code);
                    $crate::buf::put_cstr(dst, value.as_bytes());
                }
                dst.put_u8(0);
            }
        }
    };
}

field_message!(
    /// ErrorResponse: the command (ERROR) or session (FATAL) failed.
    ErrorResponse,
    b'E'
);
field_message!(
    /// NoticeResponse: a warning or notice; nothing failed.
    NoticeResponse,
    b'N'
);

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.severity().unwrap_or("ERROR"),
            self.message().unwrap_or(""),
            self.code().unwrap_or("?????")
        )
    }
}

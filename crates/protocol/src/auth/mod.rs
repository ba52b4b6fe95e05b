//! Authentication as plain state machines: SCRAM-SHA-256 and md5, server and client
//! side. No I/O; errors never hold a password.

mod md5;
mod scram;
mod scram_client;
mod scram_server;

pub use self::md5::{
    is_md5_hash, md5_client_response, md5_password_hash, md5_response_from_hash, Md5Server,
    MD5_PASSWD_LEN,
};
pub use scram::{
    saslprep, ScramKeys, ScramVerifier, SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN,
    SCRAM_KEY_LEN, SCRAM_RAW_NONCE_LEN, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
pub use scram_client::{select_mechanism, ScramClient, MAX_SERVER_SCRAM_ITERATIONS};
pub use scram_server::ScramServer;

/// A stored secret for a user (pg_authid.rolpassword, a userlist.txt entry), sorted
/// as PostgreSQL's `get_password_type()` does: a valid `SCRAM-SHA-256$…` verifier, an
/// `md5` + 32-hex hash, else cleartext.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredPassword {
    Plain(String),
    Md5(String),
    Scram(ScramVerifier),
}

impl std::fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoredPassword::Plain(_) => "StoredPassword::Plain(<redacted>)",
            StoredPassword::Md5(_) => "StoredPassword::Md5(<redacted>)",
            StoredPassword::Scram(_) => "StoredPassword::Scram(<redacted>)",
        })
    }
}

impl StoredPassword {
    pub fn parse(s: &str) -> StoredPassword {
        if let Ok(v) = ScramVerifier::parse(s) {
            StoredPassword::Scram(v)
        } else if is_md5_hash(s) {
            StoredPassword::Md5(s.to_owned())
        } else {
            StoredPassword::Plain(s.to_owned())
        }
    }

    /// Check a cleartext password (AuthenticationCleartextPassword), in constant time
    /// where the secret allows.
    pub fn verify_cleartext(&self, user: &str, password: &[u8]) -> Result<(), AuthError> {
        use subtle::ConstantTimeEq;
        let ok = match self {
            StoredPassword::Plain(p) => bool::from(p.as_bytes().ct_eq(password)),
            StoredPassword::Md5(h) => bool::from(
                md5_password_hash(user, password)
                    .as_bytes()
                    .ct_eq(h.to_ascii_lowercase().as_bytes()),
            ),
            StoredPassword::Scram(v) => v.verify_password(password),
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::PasswordMismatch)
        }
    }
}

use crate::error::AuthError;

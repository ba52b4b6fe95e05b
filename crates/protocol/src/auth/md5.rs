//! md5 password authentication, both sides: the client sends
//! `"md5" + md5(md5(password || user) || salt)` (`src/common/md5_common.c`,
//! `pg_md5_encrypt()`).

use super::scram::random_bytes;
use super::StoredPassword;
use crate::backend::Authentication;
use crate::error::AuthError;
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Length of `md5` + 32 hex digits (`MD5_PASSWD_LEN` in `src/include/common/md5.h`).
pub const MD5_PASSWD_LEN: usize = 35;

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a stored md5 hash: `md5` and 32 lowercase/uppercase hex digits, as
/// PostgreSQL's `get_password_type()` decides.
pub fn is_md5_hash(s: &str) -> bool {
    s.len() == MD5_PASSWD_LEN
        && s.starts_with("md5")
        && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The stored form: `"md5" + md5(password || user)`.
pub fn md5_password_hash(user: &str, password: &[u8]) -> String {
    format!("md5{}", md5_hex(&[password, user.as_bytes()]))
}

/// The response to AuthenticationMD5Password from a stored `md5…` hash.
pub fn md5_response_from_hash(hash: &str, salt: [u8; 4]) -> String {
    let inner = hash.strip_prefix("md5").unwrap_or(hash);
    format!("md5{}", md5_hex(&[inner.as_bytes(), &salt]))
}

/// The response to AuthenticationMD5Password from a cleartext password.
pub fn md5_client_response(user: &str, password: &[u8], salt: [u8; 4]) -> String {
    md5_response_from_hash(&md5_password_hash(user, password), salt)
}

/// Server side of one md5 exchange.
pub struct Md5Server {
    salt: [u8; 4],
    expected: String,
}

impl std::fmt::Debug for Md5Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Md5Server").finish_non_exhaustive()
    }
}

impl Md5Server {
    /// For `user` with a stored cleartext password or `md5…` hash, with a random salt.
    pub fn new(user: &str, stored: &StoredPassword) -> Result<Md5Server, AuthError> {
        Md5Server::with_salt(user, stored, random_bytes::<4>())
    }

    pub fn with_salt(
        user: &str,
        stored: &StoredPassword,
        salt: [u8; 4],
    ) -> Result<Md5Server, AuthError> {
        let hash = match stored {
            StoredPassword::Plain(p) => md5_password_hash(user, p.as_bytes()),
            StoredPassword::Md5(h) => h.to_ascii_lowercase(),
            StoredPassword::Scram(_) => return Err(AuthError::UnusableSecret("md5")),
        };
        Ok(Md5Server {
            salt,
            expected: md5_response_from_hash(&hash, salt),
        })
    }

    pub fn salt(&self) -> [u8; 4] {
        self.salt
    }

    /// The AuthenticationMD5Password request to send.
    pub fn request(&self) -> Authentication {
        Authentication::Md5Password { salt: self.salt }
    }

    /// Check the PasswordMessage payload, in constant time.
    pub fn verify(&self, response: &[u8]) -> Result<(), AuthError> {
        if bool::from(response.ct_eq(self.expected.as_bytes())) {
            Ok(())
        } else {
            Err(AuthError::PasswordMismatch)
        }
    }
}

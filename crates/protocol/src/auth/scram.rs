//! SCRAM-SHA-256 pieces shared by both sides (RFC 5802, RFC 7677): the stored
//! verifier, key derivation, SASLprep, attribute parsing.

use crate::error::AuthError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// SASL mechanism name.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The channel-binding variant (not offered: we do not implement tls-server-end-point).
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// `SCRAM_SHA_256_DEFAULT_ITERATIONS` in `src/include/common/scram-common.h`.
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;
/// `SCRAM_DEFAULT_SALT_LEN` in `src/include/common/scram-common.h`.
pub const SCRAM_DEFAULT_SALT_LEN: usize = 16;
/// `SCRAM_RAW_NONCE_LEN` in `src/include/common/scram-common.h`.
pub const SCRAM_RAW_NONCE_LEN: usize = 18;
/// SHA-256 output size.
pub const SCRAM_KEY_LEN: usize = 32;

pub(crate) type Key = [u8; SCRAM_KEY_LEN];

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC-SHA-256 accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA-256 with one output block.
pub(crate) fn salted_password(prepared_password: &[u8], salt: &[u8], iterations: u32) -> Key {
    let mut out = [0u8; SCRAM_KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(prepared_password, salt, iterations, &mut out);
    out
}

/// SASLprep the password as PostgreSQL does (`pg_saslprep`): when the password is not
/// UTF-8 or SASLprep refuses it, the raw bytes are used instead.
pub fn saslprep(password: &[u8]) -> Cow<'_, [u8]> {
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(Cow::Borrowed(p))) => Cow::Borrowed(p.as_bytes()),
        Ok(Ok(Cow::Owned(p))) => Cow::Owned(p.into_bytes()),
        _ => Cow::Borrowed(password),
    }
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

/// A fresh printable nonce: base64 of [`SCRAM_RAW_NONCE_LEN`] random bytes.
pub(crate) fn new_nonce() -> String {
    BASE64.encode(random_bytes::<SCRAM_RAW_NONCE_LEN>())
}

pub(crate) fn b64(data: &[u8]) -> String {
    BASE64.encode(data)
}

pub(crate) fn b64_decode(s: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    BASE64
        .decode(s)
        .map_err(|_| AuthError::MalformedScram(what))
}

/// RFC 5802 `printable`: 0x21..=0x7e except ','.
pub(crate) fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Split `a=value` off the front of a comma-separated SCRAM message.
pub(crate) fn attribute<'a>(
    input: &mut &'a str,
    name: char,
    what: &'static str,
) -> Result<&'a str, AuthError> {
    let (head, tail) = match input.split_once(',') {
        Some((h, t)) => (h, Some(t)),
        None => (*input, None),
    };
    let value = head
        .strip_prefix(name)
        .and_then(|v| v.strip_prefix('='))
        .ok_or(AuthError::MalformedScram(what))?;
    *input = tail.unwrap_or("");
    Ok(value)
}

/// Check the optional extensions at the end of a message: each must be `x=value`.
pub(crate) fn check_extensions(rest: &str) -> Result<(), AuthError> {
    if rest.is_empty() {
        return Ok(());
    }
    for ext in rest.split(',') {
        let b = ext.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
            return Err(AuthError::MalformedScram("malformed attribute"));
        }
    }
    Ok(())
}

/// The derived keys: enough to verify a client (`stored_key`) and to prove ourselves
/// (`server_key`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: Key,
    pub server_key: Key,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys { <redacted> }")
    }
}

/// A PostgreSQL SCRAM-SHA-256 verifier, as in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub keys: ScramKeys,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl ScramVerifier {
    /// Parse PostgreSQL's text form (`parse_scram_secret()` in
    /// `src/backend/libpq/auth-scram.c`). Errors never echo the input.
    pub fn parse(s: &str) -> Result<ScramVerifier, AuthError> {
        let bad = AuthError::InvalidVerifier;
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(bad("missing SCRAM-SHA-256$ prefix"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(bad("missing '$'"))?;
        let (iterations, salt) = iter_salt.split_once(':').ok_or(bad("missing ':'"))?;
        let (stored, server) = keys.split_once(':').ok_or(bad("missing ':'"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| bad("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(bad("iteration count is zero"));
        }
        let salt = BASE64.decode(salt).map_err(|_| bad("salt is not base64"))?;
        if salt.is_empty() {
            return Err(bad("salt is empty"));
        }
        let key = |s: &str| -> Result<Key, AuthError> {
            BASE64
                .decode(s)
                .ok()
                .and_then(|k| Key::try_from(k.as_slice()).ok())
                .ok_or(bad("key is not 32 bytes of base64"))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            keys: ScramKeys {
                stored_key: key(stored)?,
                server_key: key(server)?,
            },
        })
    }

    /// Derive a verifier from a password with a random salt and
    /// [`SCRAM_DEFAULT_ITERATIONS`], as `CREATE ROLE … PASSWORD` does.
    pub fn from_password(password: &[u8]) -> ScramVerifier {
        let salt = random_bytes::<SCRAM_DEFAULT_SALT_LEN>();
        ScramVerifier::derive(password, &salt, SCRAM_DEFAULT_ITERATIONS)
    }

    /// Derive a verifier with the given salt and iteration count.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
        let salted = salted_password(&saslprep(password), salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            keys: keys_from_salted(&salted).0,
        }
    }

    /// Check a cleartext password against this verifier (password authentication
    /// against a SCRAM secret), in constant time.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let other = ScramVerifier::derive(password, &self.salt, self.iterations);
        bool::from(other.keys.stored_key.ct_eq(&self.keys.stored_key))
            & bool::from(other.keys.server_key.ct_eq(&self.keys.server_key))
    }
}

impl std::fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            b64(&self.salt),
            b64(&self.keys.stored_key),
            b64(&self.keys.server_key)
        )
    }
}

impl std::str::FromStr for ScramVerifier {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScramVerifier::parse(s)
    }
}

/// `(keys, client_key)` from a SaltedPassword.
pub(crate) fn keys_from_salted(salted: &Key) -> (ScramKeys, Key) {
    let client_key = hmac(salted, &[b"Client Key"]);
    let keys = ScramKeys {
        stored_key: sha256(&client_key),
        server_key: hmac(salted, &[b"Server Key"]),
    };
    (keys, client_key)
}

//! SCRAM-SHA-256 client side (the pooler logging into a server), without I/O.
//!
//! Flow: on AuthenticationSASL check [`select_mechanism`]; send
//! SASLInitialResponse(`SCRAM-SHA-256`, [`ScramClient::client_first`]); feed
//! AuthenticationSASLContinue data to [`ScramClient::handle_server_first`] and send the
//! result as SASLResponse; feed AuthenticationSASLFinal data to
//! [`ScramClient::handle_server_final`].

use super::scram::{
    attribute, b64, b64_decode, check_extensions, hmac, is_valid_nonce, keys_from_salted,
    new_nonce, salted_password, saslprep, Key, SCRAM_KEY_LEN, SCRAM_SHA_256,
};
use crate::error::AuthError;
use subtle::ConstantTimeEq;

/// Most PBKDF2 iterations a server may ask for when the client derives its keys from a
/// password: 244 times PostgreSQL's default of 4096, above the few hundred thousand
/// that hardened setups use (`scram_iterations`, PostgreSQL 16+), and under a second of
/// one core (0.4 s for OpenSSL's PBKDF2 on the 2026 test machine). PostgreSQL accepts up to `INT_MAX`, which would keep a core busy for hours
/// on every login to a hostile or broken server (PgBouncer 1.26.0's CVE-2026-6669).
/// A pass-through login ([`ScramClient::with_keys`]) derives nothing and has no limit.
pub const MAX_SERVER_SCRAM_ITERATIONS: u32 = 1_000_000;

/// Pick our mechanism from those a server offers in AuthenticationSASL.
pub fn select_mechanism<S: AsRef<str>>(offered: &[S]) -> Result<&'static str, AuthError> {
    if offered.iter().any(|m| m.as_ref() == SCRAM_SHA_256) {
        Ok(SCRAM_SHA_256)
    } else {
        Err(AuthError::UnsupportedMechanism)
    }
}

/// What the client proves it knows.
enum Secret {
    /// SASLprep'd password.
    Password(Vec<u8>),
    /// ClientKey and ServerKey, from a pass-through exchange.
    Keys { client_key: Key, server_key: Key },
}

enum State {
    Initial,
    /// client-final sent; expecting this server signature.
    Final {
        server_signature: Key,
    },
    Done,
}

/// One client-side SCRAM exchange.
pub struct ScramClient {
    secret: Secret,
    client_first_bare: String,
    client_nonce: String,
    state: State,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient").finish_non_exhaustive()
    }
}

/// Escape a saslname (RFC 5802: ',' → "=2C", '=' → "=3D").
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    /// With an empty user name in `n=` (the server takes it from the startup packet,
    /// as libpq does) and a random nonce.
    pub fn new(password: &[u8]) -> ScramClient {
        ScramClient::with_nonce("", password, new_nonce())
    }

    /// Log in with keys instead of a password (SCRAM pass-through): the server must
    /// hold the verifier these keys came from.
    pub fn with_keys(client_key: Key, server_key: Key) -> ScramClient {
        let mut c = ScramClient::new(b"");
        c.secret = Secret::Keys {
            client_key,
            server_key,
        };
        c
    }

    /// With a chosen user name and nonce: for test vectors; production uses
    /// [`new`](Self::new).
    pub fn with_nonce(user: &str, password: &[u8], nonce: String) -> ScramClient {
        ScramClient {
            secret: Secret::Password(saslprep(password).into_owned()),
            client_first_bare: format!("n={},r={nonce}", saslname(user)),
            client_nonce: nonce,
            state: State::Initial,
        }
    }

    pub fn mechanism(&self) -> &'static str {
        SCRAM_SHA_256
    }

    /// The client-first-message for SASLInitialResponse. `n,,`: we do not do channel
    /// binding.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Handle the server-first-message; returns the client-final-message. With a
    /// password this runs PBKDF2 with the server's iteration count (up to
    /// [`MAX_SERVER_SCRAM_ITERATIONS`]): async callers run it off their I/O threads.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<String, AuthError> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthError::OutOfOrder);
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(server_first)
            .map_err(|_| AuthError::MalformedScram("server-first-message is not UTF-8"))?;
        let mut attrs = msg;
        if attrs.starts_with("m=") {
            return Err(AuthError::MalformedScram(
                "server requires an unsupported SCRAM extension",
            ));
        }
        let nonce = attribute(&mut attrs, 'r', "expected nonce (r=)")?;
        if !is_valid_nonce(nonce)
            || nonce.len() <= self.client_nonce.len()
            || !nonce.starts_with(&self.client_nonce)
        {
            return Err(AuthError::NonceMismatch);
        }
        let salt = b64_decode(
            attribute(&mut attrs, 's', "expected salt (s=)")?,
            "salt is not base64",
        )?;
        let iterations: u32 = attribute(&mut attrs, 'i', "expected iteration count (i=)")?
            .parse()
            .map_err(|_| AuthError::MalformedScram("invalid iteration count"))?;
        check_extensions(attrs)?;
        if iterations == 0 || salt.is_empty() {
            return Err(AuthError::MalformedScram("invalid salt or iteration count"));
        }
        if iterations > MAX_SERVER_SCRAM_ITERATIONS && matches!(self.secret, Secret::Password(_)) {
            return Err(AuthError::TooManyIterations {
                iterations,
                limit: MAX_SERVER_SCRAM_ITERATIONS,
            });
        }

        let (client_key, server_key) = match &self.secret {
            Secret::Password(p) => {
                let (keys, client_key) = keys_from_salted(&salted_password(p, &salt, iterations));
                (client_key, keys.server_key)
            }
            Secret::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        // c=biws is base64("n,,").
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            msg.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = super::scram::sha256(&client_key);
        let client_signature = hmac(&stored_key, &auth_message);
        let mut proof = [0u8; SCRAM_KEY_LEN];
        for (p, (k, s)) in proof
            .iter_mut()
            .zip(client_key.iter().zip(client_signature.iter()))
        {
            *p = k ^ s;
        }
        self.state = State::Final {
            server_signature: hmac(&server_key, &auth_message),
        };
        Ok(format!("{without_proof},p={}", b64(&proof)))
    }

    /// Check the server-final-message: the server must prove it knows the verifier.
    pub fn handle_server_final(&mut self, server_final: &[u8]) -> Result<(), AuthError> {
        let State::Final { server_signature } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let msg = std::str::from_utf8(server_final)
            .map_err(|_| AuthError::MalformedScram("server-final-message is not UTF-8"))?;
        if let Some(err) = msg.strip_prefix("e=") {
            return Err(AuthError::ServerError(err.to_owned()));
        }
        let mut attrs = msg;
        let verifier = b64_decode(
            attribute(&mut attrs, 'v', "expected server signature (v=)")?,
            "server signature is not base64",
        )?;
        if bool::from(verifier.as_slice().ct_eq(&server_signature)) {
            Ok(())
        } else {
            Err(AuthError::InvalidServerSignature)
        }
    }
}

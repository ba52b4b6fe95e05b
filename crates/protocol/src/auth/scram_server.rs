//! SCRAM-SHA-256 server side: verify a client against a stored verifier (as
//! `src/backend/libpq/auth-scram.c` does), without I/O.
//!
//! Flow: offer [`ScramServer::MECHANISMS`] in AuthenticationSASL; pass the
//! SASLInitialResponse data to [`ScramServer::handle_client_first`] and send the result
//! in AuthenticationSASLContinue; pass the SASLResponse data to
//! [`ScramServer::handle_client_final`] and send the result in AuthenticationSASLFinal,
//! then AuthenticationOk.

use super::scram::{
    attribute, b64, b64_decode, check_extensions, hmac, is_valid_nonce, new_nonce, random_bytes,
    sha256, Key, ScramKeys, ScramVerifier, SCRAM_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN,
    SCRAM_KEY_LEN, SCRAM_SHA_256,
};
use super::StoredPassword;
use crate::error::AuthError;
use subtle::ConstantTimeEq;

enum State {
    Initial,
    /// server-first sent; waiting for client-final.
    Continue {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// One server-side SCRAM exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    /// An exchange for a user that does not exist: it runs to the end and fails, so
    /// a client cannot tell unknown users from wrong passwords.
    mock: bool,
    state: State,
    client_key: Option<Key>,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("mock", &self.mock)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// What to offer in AuthenticationSASL (no `-PLUS`: no channel binding).
    pub const MECHANISMS: &'static [&'static str] = &[SCRAM_SHA_256];

    pub fn new(verifier: ScramVerifier) -> ScramServer {
        ScramServer::with_server_nonce(verifier, new_nonce())
    }

    /// With a chosen server nonce: for test vectors only; production uses [`new`](Self::new).
    pub fn with_server_nonce(verifier: ScramVerifier, server_nonce: String) -> ScramServer {
        ScramServer {
            verifier,
            server_nonce,
            mock: false,
            state: State::Initial,
            client_key: None,
        }
    }

    /// For a cleartext password (e.g. from userlist.txt): derive a verifier with a
    /// random salt and 4096 iterations.
    pub fn from_password(password: &[u8]) -> ScramServer {
        ScramServer::new(ScramVerifier::from_password(password))
    }

    /// From a stored secret: SCRAM verifier or cleartext. An md5 hash cannot do SCRAM.
    pub fn from_stored(stored: &StoredPassword) -> Result<ScramServer, AuthError> {
        match stored {
            StoredPassword::Scram(v) => Ok(ScramServer::new(v.clone())),
            StoredPassword::Plain(p) => Ok(ScramServer::from_password(p.as_bytes())),
            StoredPassword::Md5(_) => Err(AuthError::UnusableSecret("SCRAM-SHA-256")),
        }
    }

    /// For an unknown user: runs the exchange with a random verifier and always ends in
    /// [`AuthError::PasswordMismatch`]. The salt is the same on every attempt for the
    /// same `user` (in this process), as a real user's is, so that asking twice does not
    /// tell unknown users from known ones (PostgreSQL's `scram_mock_salt()`).
    pub fn mock(user: &str) -> ScramServer {
        // A per-process secret, so the salt cannot be computed from the name alone.
        static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(random_bytes);
        let salt = sha256(&[&secret[..], user.as_bytes()].concat());
        // Random keys: nobody can prove them, and unlike a verifier derived from a random
        // password they cost no PBKDF2, so a stream of logins for unknown users costs the
        // pooler no more than the client (PostgreSQL's mock derives nothing either).
        let verifier = ScramVerifier {
            iterations: SCRAM_DEFAULT_ITERATIONS,
            salt: salt[..SCRAM_DEFAULT_SALT_LEN].to_vec(),
            keys: ScramKeys {
                stored_key: random_bytes(),
                server_key: random_bytes(),
            },
        };
        let mut s = ScramServer::new(verifier);
        s.mock = true;
        s
    }

    /// Handle the client-first-message; returns the server-first-message.
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<String, AuthError> {
        if !matches!(self.state, State::Initial) {
            return Err(AuthError::OutOfOrder);
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(client_first)
            .map_err(|_| AuthError::MalformedScram("client-first-message is not UTF-8"))?;

        // gs2-header: cbind-flag "," [authzid] ","
        let mut rest = match msg.as_bytes().first() {
            Some(b'n') | Some(b'y') => &msg[1..],
            Some(b'p') => return Err(AuthError::ChannelBindingUnsupported),
            _ => return Err(AuthError::MalformedScram("invalid channel binding flag")),
        };
        rest = rest.strip_prefix(',').ok_or(AuthError::MalformedScram(
            "expected ',' after channel binding flag",
        ))?;
        if rest.starts_with("a=") {
            return Err(AuthError::MalformedScram(
                "authorization identity is not supported",
            ));
        }
        let client_first_bare = rest
            .strip_prefix(',')
            .ok_or(AuthError::MalformedScram("expected ',' after authzid"))?;
        let gs2_header = msg[..msg.len() - client_first_bare.len()].to_owned();

        let mut attrs = client_first_bare;
        if attrs.starts_with("m=") {
            return Err(AuthError::MalformedScram(
                "client requires an unsupported SCRAM extension",
            ));
        }
        // The user name is ignored, as PostgreSQL does: the startup packet names it.
        attribute(&mut attrs, 'n', "expected user name (n=)")?;
        let client_nonce = attribute(&mut attrs, 'r', "expected nonce (r=)")?;
        if !is_valid_nonce(client_nonce) {
            return Err(AuthError::MalformedScram("invalid client nonce"));
        }
        check_extensions(attrs)?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            b64(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::Continue {
            gs2_header,
            client_first_bare: client_first_bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Handle the client-final-message; on a valid proof returns the
    /// server-final-message (`v=…`).
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<String, AuthError> {
        let State::Continue {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(AuthError::OutOfOrder);
        };
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| AuthError::MalformedScram("client-final-message is not UTF-8"))?;

        let mut attrs = msg;
        let cbind = attribute(&mut attrs, 'c', "expected channel binding (c=)")?;
        let cbind = b64_decode(cbind, "channel binding is not base64")?;
        // Without channel binding, c= must repeat the gs2-header exactly.
        if cbind != gs2_header.as_bytes() {
            return Err(AuthError::ChannelBindingMismatch);
        }
        let final_nonce = attribute(&mut attrs, 'r', "expected nonce (r=)")?;
        if final_nonce != nonce {
            return Err(AuthError::NonceMismatch);
        }
        // Extensions may come before the proof, which is last.
        let (extensions, proof) = attrs.rsplit_once(',').unwrap_or(("", attrs));
        check_extensions(extensions)?;
        let proof = proof
            .strip_prefix("p=")
            .ok_or(AuthError::MalformedScram("expected proof (p=)"))?;
        // client-final-message-without-proof: all before ",p=".
        let without_proof = msg
            .len()
            .checked_sub(proof.len() + 3)
            .and_then(|end| msg.get(..end))
            .ok_or(AuthError::MalformedScram("expected proof (p=)"))?;
        let proof = b64_decode(proof, "proof is not base64")?;
        let proof: Key = proof
            .as_slice()
            .try_into()
            .map_err(|_| AuthError::MalformedScram("proof is not 32 bytes"))?;

        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let ScramKeys {
            stored_key,
            server_key,
        } = &self.verifier.keys;
        let client_signature = hmac(stored_key, &auth_message);
        let mut client_key = [0u8; SCRAM_KEY_LEN];
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature.iter()))
        {
            *k = p ^ s;
        }
        let matches: bool = sha256(&client_key).ct_eq(stored_key).into();
        if !matches || self.mock {
            return Err(AuthError::PasswordMismatch);
        }
        self.client_key = Some(client_key);
        let server_signature = hmac(server_key, &auth_message);
        Ok(format!("v={}", b64(&server_signature)))
    }

    /// After a successful exchange, the client's ClientKey: with the verifier's
    /// ServerKey it lets [`super::ScramClient::with_keys`] log into a server holding
    /// the same verifier (SCRAM pass-through, as PgBouncer does).
    pub fn client_key(&self) -> Option<Key> {
        self.client_key
    }

    pub fn verifier(&self) -> &ScramVerifier {
        &self.verifier
    }
}

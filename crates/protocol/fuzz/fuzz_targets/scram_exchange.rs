//! Arbitrary bytes as what an unauthenticated client sends during SCRAM (the password
//! message framing, client-first, client-final) and as what a server sends to the
//! pooler (server-first, server-final): must only ever end in a typed error or, with
//! the right proof, success — never a panic. The classes PgBouncer fixed in 1.25.2 and
//! 1.26.0 (CVE-2026-6664, CVE-2026-19888) live in exactly these parsers.
//!
//! Layout: byte 0 picks the side; the rest is split at the first 0xFF byte into two
//! messages (0xFF never appears in valid SCRAM text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgherd_protocol::auth::{ScramClient, ScramServer, ScramVerifier};
use pgherd_protocol::frontend::{PasswordMessage, SaslInitialResponse, SaslResponse};
use pgherd_protocol::Message;
use std::sync::OnceLock;

const SALT: &[u8] = b"fuzzsaltfuzzsalt";
const SERVER_NONCE: &str = "serverNONCEserverNONCE";
const CLIENT_NONCE: &str = "clientNONCE";

fn verifier() -> &'static ScramVerifier {
    // Derived once: PBKDF2 per input would make every run slow.
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| ScramVerifier::derive(b"pencil", SALT, 4096))
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, rest)) = data.split_first() else {
        return;
    };
    let (first, second) = match rest.iter().position(|b| *b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    match side % 3 {
        // The pooler as server: a client's password-message bodies, then SCRAM text.
        0 => {
            let _ = PasswordMessage::decode(first);
            let _ = SaslResponse::decode(second);
            if let Ok(initial) = SaslInitialResponse::decode(first) {
                let mut server =
                    ScramServer::with_server_nonce(verifier().clone(), SERVER_NONCE.into());
                if server
                    .handle_client_first(initial.data.as_deref().unwrap_or(&[]))
                    .is_ok()
                {
                    let _ = server.handle_client_final(second);
                    let _ = server.client_key();
                }
            }
        }
        // The same on raw SCRAM text (no message framing), and the mock exchange.
        1 => {
            for mut server in [
                ScramServer::with_server_nonce(verifier().clone(), SERVER_NONCE.into()),
                ScramServer::mock("fuzz"),
            ] {
                if server.handle_client_first(first).is_ok() {
                    let _ = server.handle_client_final(second);
                }
            }
        }
        // The pooler as client of a server: server-first, then server-final. With keys
        // (SCRAM pass-through), so no PBKDF2 runs whatever the iteration count.
        _ => {
            let keys = &verifier().keys;
            let mut client = ScramClient::with_keys(keys.stored_key, keys.server_key);
            let _ = client.client_first();
            if client.handle_server_first(first).is_ok() {
                let _ = client.handle_server_final(second);
            }
            // With a password and a known nonce, to get past the nonce check to the salt
            // and the iteration count; only few iterations, so runs stay fast (the limit
            // itself is a unit test).
            let few_iterations = std::str::from_utf8(first)
                .ok()
                .and_then(|m| m.split(',').find_map(|a| a.strip_prefix("i=")))
                .is_none_or(|i| i.parse::<u64>().map_or(true, |n| n <= 16));
            if few_iterations {
                let mut client = ScramClient::with_nonce("", b"pencil", CLIENT_NONCE.into());
                if client.handle_server_first(first).is_ok() {
                    let _ = client.handle_server_final(second);
                }
            }
        }
    }
});

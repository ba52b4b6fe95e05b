//! The one way pgherd builds HTTP clients (member-to-member calls, `pgherd ctl`): reqwest
//! over a rustls config built with ring ([`ClientTls::rustls_config`]). reqwest is built
//! without a crypto provider of its own, so a client built any other way would fail.

use crate::tls::{ClientTls, TlsError};
use std::time::Duration;

/// A reqwest builder that speaks HTTPS as `tls` says (plain HTTP is unaffected).
pub fn builder(tls: &ClientTls) -> Result<reqwest::ClientBuilder, TlsError> {
    let config = tls.rustls_config()?;
    // The one place allowed to (clippy.toml): with the ring-based config set here.
    #[allow(clippy::disallowed_methods)]
    let builder = reqwest::Client::builder();
    Ok(builder.tls_backend_preconfigured(config))
}

/// A client with `tls` and an overall `timeout` per request.
pub fn client(tls: &ClientTls, timeout: Option<Duration>) -> Result<reqwest::Client, TlsError> {
    let mut b = builder(tls)?;
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| TlsError::Setting {
        key: "HTTP client".into(),
        reason: e.to_string(),
    })
}

/// A client with the system's CAs and no client certificate.
pub fn default_client() -> Result<reqwest::Client, TlsError> {
    client(&ClientTls::default(), None)
}

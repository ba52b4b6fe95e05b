//! TLS toward clients (`client_tls_*`) and toward servers (`server_tls_*`), with
//! rustls and one crypto provider (ring), handed to every config explicitly so
//! nothing depends on a process-wide default.
//!
//! Modes keep libpq's and PgBouncer's meanings. Toward servers: `disable`/`allow`
//! never ask for TLS, `prefer` asks and falls back to plain TCP, `require` insists but
//! does not check the certificate, `verify-ca` checks it against
//! `server_tls_ca_file`, `verify-full` also checks the host name. Toward clients:
//! `disable` declines TLS, `allow`/`prefer` accept it when asked, `require` turns
//! plain-TCP clients away, `verify-ca`/`verify-full` also want a client certificate
//! signed by `client_tls_ca_file`.

use crate::config::{Settings, SslMode};
use pgherd_http::tls::{provider, AnyCertificate};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why a TLS setting could not be put to use.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {}: {reason}", path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{setting}: {source}")]
    Rustls {
        setting: &'static str,
        source: rustls::Error,
    },
}

fn file_error(setting: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        setting,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(setting, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, e))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(setting, path, e))
}

fn read_roots(setting: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(setting, path)? {
        roots.add(cert).map_err(|e| file_error(setting, path, e))?;
    }
    Ok(Arc::new(roots))
}

/// Accepting TLS from clients.
pub struct ClientTls {
    pub mode: SslMode,
    pub acceptor: TlsAcceptor,
}

/// Negotiating TLS with servers.
pub struct ServerTls {
    pub mode: SslMode,
    /// `None` when the mode never asks for TLS.
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// Plain TCP only (`server_tls_sslmode = disable`).
    pub fn disabled() -> Arc<ServerTls> {
        Arc::new(ServerTls {
            mode: SslMode::Disable,
            connector: None,
        })
    }

    /// Whether to send an SSLRequest first.
    pub fn asks(&self) -> bool {
        self.connector.is_some()
    }

    /// Whether a server that declines TLS must be refused.
    pub fn insists(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// The TLS handshake over `tcp`, after the server answered 'S'.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let Some(connector) = &self.connector else {
            return Err(std::io::Error::other("TLS toward servers is disabled"));
        };
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("'{host}' is not a valid TLS server name"),
            )
        })?;
        connector.connect(name, tcp).await
    }

    fn load(s: &Settings) -> Result<Arc<ServerTls>, TlsError> {
        const SETTING: &str = "server_tls_ca_file";
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                setting: "server_tls_sslmode",
                source,
            })?;
        let config = match s.server_tls_sslmode {
            SslMode::Disable | SslMode::Allow => return Ok(ServerTls::disabled()),
            SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth(),
            mode @ (SslMode::VerifyCa | SslMode::VerifyFull) => {
                let path = s
                    .server_tls_ca_file
                    .as_deref()
                    .ok_or_else(|| file_error(SETTING, Path::new(""), "not set"))?;
                let roots = read_roots(SETTING, path)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| file_error(SETTING, path, e))?;
                let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(Arc::new(ServerTls {
            mode: s.server_tls_sslmode,
            connector: Some(TlsConnector::from(Arc::new(config))),
        }))
    }
}

impl ClientTls {
    fn load(s: &Settings) -> Result<Option<Arc<ClientTls>>, TlsError> {
        if s.client_tls_sslmode == SslMode::Disable {
            return Ok(None);
        }
        let missing = |setting| file_error(setting, Path::new(""), "not set");
        let cert_file = s
            .client_tls_cert_file
            .as_deref()
            .ok_or_else(|| missing("client_tls_cert_file"))?;
        let key_file = s
            .client_tls_key_file
            .as_deref()
            .ok_or_else(|| missing("client_tls_key_file"))?;
        let certs = read_certs("client_tls_cert_file", cert_file)?;
        let key = read_key("client_tls_key_file", key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                setting: "client_tls_sslmode",
                source,
            })?;
        let builder = if s.client_tls_sslmode.verifies() {
            const SETTING: &str = "client_tls_ca_file";
            let path = s
                .client_tls_ca_file
                .as_deref()
                .ok_or_else(|| missing(SETTING))?;
            let roots = read_roots(SETTING, path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| file_error(SETTING, path, e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Rustls {
                setting: "client_tls_key_file",
                source,
            })?;
        Ok(Some(Arc::new(ClientTls {
            mode: s.client_tls_sslmode,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })))
    }

    /// Whether a client on plain TCP must be turned away.
    pub fn insists(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// The TLS side of the configuration, built from the settings at start and reload.
#[derive(Clone)]
pub struct TlsContexts {
    /// `None`: clients asking for TLS are told 'N'.
    pub client: Option<Arc<ClientTls>>,
    pub server: Arc<ServerTls>,
}

impl TlsContexts {
    /// Read the certificate and key files the settings name.
    pub fn load(s: &Settings) -> Result<TlsContexts, TlsError> {
        Ok(TlsContexts {
            client: ClientTls::load(s)?,
            server: ServerTls::load(s)?,
        })
    }

    /// No TLS either way.
    pub fn disabled() -> TlsContexts {
        TlsContexts {
            client: None,
            server: ServerTls::disabled(),
        }
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name may be anything.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

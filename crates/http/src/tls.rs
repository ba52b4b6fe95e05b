//! TLS for pgherd's HTTP listeners and clients (the REST API, the metrics listener,
//! `pgherd ctl`, member-to-member calls) and the PEM files they read: rustls with one
//! crypto provider (ring), handed to every config explicitly so nothing depends on a
//! process-wide default.
//!
//! Every error names the config key a file came from (e.g. `restapi.certfile`) and the
//! file, so a wrong path or a key that does not match its certificate is told plainly.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why a TLS setting could not be put to use.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file a setting names is missing, unreadable or holds no usable PEM.
    #[error("{key}: {}: {reason}", path.display())]
    File {
        key: String,
        path: PathBuf,
        reason: String,
    },
    /// The settings do not fit together (or rustls refused them).
    #[error("{key}: {reason}")]
    Setting { key: String, reason: String },
}

/// A file named by a config key: the key is kept for error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The config key that named the file, e.g. `restapi.certfile`.
    pub key: String,
    pub path: PathBuf,
}

impl TlsFile {
    pub fn new(key: impl Into<String>, path: impl Into<PathBuf>) -> TlsFile {
        TlsFile {
            key: key.into(),
            path: path.into(),
        }
    }

    fn error(&self, reason: impl fmt::Display) -> TlsError {
        TlsError::File {
            key: self.key.clone(),
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The file's bytes.
    pub fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|e| self.error(e))
    }

    /// The PEM certificates in the file (at least one).
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))?;
        if certs.is_empty() {
            return Err(self.error("no PEM certificate in it"));
        }
        Ok(certs)
    }

    /// The PEM private key in the file (PKCS#8, PKCS#1 or SEC1, unencrypted).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = self.read()?;
        if is_encrypted_key(&pem) {
            return Err(self.error(
                "the private key is encrypted, which pgherd does not support: store it \
                 unencrypted (e.g. `openssl pkey -in KEY -out KEY.plain`) with permissions \
                 that only let pgherd read it",
            ));
        }
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => self.error("no PEM private key in it"),
            e => self.error(e),
        })
    }

    /// Check that `key` is the private key of this file's certificate (both read).
    pub fn check_pair(&self, key: &TlsFile) -> Result<(), TlsError> {
        let certs = self.certificates()?;
        let der = key.private_key()?;
        let signing = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| key.error(e))?;
        rustls::sign::CertifiedKey::new(certs, signing)
            .keys_match()
            .map_err(|e| key.error(format!("does not fit the certificate: {e}")))
    }

    /// The certificates in the file as trust anchors.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates()? {
            roots.add(cert).map_err(|e| self.error(e))?;
        }
        Ok(Arc::new(roots))
    }
}

impl fmt::Debug for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.path.display())
    }
}

/// An encrypted PKCS#8 key, or a traditional (OpenSSL) PEM key with `Proc-Type: 4,ENCRYPTED`.
fn is_encrypted_key(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

/// The crypto provider of every pgherd TLS config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `restapi.verify_client`, with Patroni's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyClient {
    /// Client certificates are neither asked for nor checked.
    #[default]
    None,
    /// A client certificate is checked when one is sent; requests that change something
    /// (anything but GET, HEAD and OPTIONS) are refused with 403 without one.
    Optional,
    /// Every connection must present a certificate signed by `cafile`.
    Required,
}

impl VerifyClient {
    /// `none`, `optional` or `required` (any case).
    pub fn parse(s: &str) -> Option<VerifyClient> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Some(VerifyClient::None),
            "optional" => Some(VerifyClient::Optional),
            "required" => Some(VerifyClient::Required),
            _ => None,
        }
    }
}

/// HTTPS for a listener (`restapi.certfile` and friends).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain; also holds the key when `keyfile` is not set (as Patroni).
    pub certfile: TlsFile,
    pub keyfile: Option<TlsFile>,
    /// `restapi.keyfile_password`: only accepted for a key that is not encrypted.
    pub keyfile_password: Option<String>,
    /// The CA that signs client certificates (needed unless `verify_client` is none).
    pub cafile: Option<TlsFile>,
    pub verify_client: VerifyClient,
    /// The config key of `verify_client`, for errors.
    pub verify_client_key: String,
}

impl fmt::Debug for ServerTls {
    /// Never the key's password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field(
                "keyfile_password",
                &self.keyfile_password.as_ref().map(|_| "********"),
            )
            .field("cafile", &self.cafile)
            .field("verify_client", &self.verify_client)
            .finish()
    }
}

/// A listener's TLS, ready to accept.
#[derive(Clone)]
pub struct Acceptor {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) verify_client: VerifyClient,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("verify_client", &self.verify_client)
            .finish()
    }
}

impl ServerTls {
    /// Read the files and build the acceptor.
    pub fn acceptor(&self) -> Result<Acceptor, TlsError> {
        let certs = self.certfile.certificates()?;
        let key_file = self.keyfile.as_ref().unwrap_or(&self.certfile);
        let key = key_file.private_key()?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setting(&self.certfile.key, e))?;
        let builder = match self.verify_client {
            VerifyClient::None => builder.with_no_client_auth(),
            mode => {
                let Some(cafile) = &self.cafile else {
                    return Err(TlsError::Setting {
                        key: self.verify_client_key.clone(),
                        reason: "optional and required need a CA file to check client \
                                 certificates with (restapi.cafile)"
                            .into(),
                    });
                };
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(cafile.roots()?, provider());
                let verifier = if mode == VerifyClient::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| cafile.error(e))?)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| key_file.error(format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Acceptor {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verify_client: self.verify_client,
        })
    }
}

fn setting(key: &str, e: impl fmt::Display) -> TlsError {
    TlsError::Setting {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// How a client talks HTTPS (Patroni's `ctl.cacert`/`restapi.cafile`,
/// `ctl.certfile`, `ctl.keyfile`, `ctl.insecure`). Plain `http://` URLs are unaffected.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust: without it the system's CAs.
    pub cacert: Option<TlsFile>,
    /// A client certificate to present.
    pub certfile: Option<TlsFile>,
    /// Its key; without it, the key is read from `certfile`.
    pub keyfile: Option<TlsFile>,
    /// Do not check the server's certificate (still encrypts).
    pub insecure: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("cacert", &self.cacert)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ClientTls {
    /// The rustls config of HTTPS requests.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let key_name = self
            .cacert
            .as_ref()
            .map(|f| f.key.clone())
            .unwrap_or_else(|| "ctl.cacert".into());
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setting(&key_name, e))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.insecure {
            Arc::new(AnyCertificate(provider()))
        } else if let Some(cacert) = &self.cacert {
            WebPkiServerVerifier::builder_with_provider(cacert.roots()?, provider())
                .build()
                .map_err(|e| cacert.error(e))?
        } else {
            match rustls_platform_verifier::Verifier::new(provider()) {
                Ok(v) => Arc::new(v),
                // No system CAs (a minimal container): plain HTTP still works, and
                // HTTPS says what to set.
                Err(e) => Arc::new(NoTrust {
                    signatures: AnyCertificate(provider()),
                    reason: format!(
                        "no CA to check the server's certificate with ({e}): set {key_name} \
                         (or restapi.cafile), or ctl.insecure"
                    ),
                }),
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.certfile {
            Some(certfile) => {
                let certs = certfile.certificates()?;
                let key_file = self.keyfile.as_ref().unwrap_or(certfile);
                let key = key_file.private_key()?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| key_file.error(format!("does not fit the certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// No CA at all: every server certificate is refused, saying why.
#[derive(Debug)]
struct NoTrust {
    /// Checks the handshake's signatures (never reached: every certificate is refused).
    signatures: AnyCertificate,
    reason: String,
}

impl ServerCertVerifier for NoTrust {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(self.reason.clone()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// `insecure` (and the pooler's `server_tls_sslmode = require`): encrypt, trust any
/// certificate, but still check the handshake's signatures so the session keys are the
/// server's.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! Certificates made at test time: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, a client certificate, and a CA that signed nothing, as PEM files.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use std::path::{Path, PathBuf};

/// PEM files in a temp dir (removed on drop), readable by everyone so that processes
/// run as another OS user (PostgreSQL, etcd) can read them too.
pub struct Pki {
    dir: tempfile::TempDir,
    pub ca: PathBuf,
    /// For `localhost` and `127.0.0.1`, usable as a server and as a client certificate.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CN `client`, signed by `ca`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate signed by `other_ca`.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    /// A CA that signed nothing the servers use.
    pub other_ca: PathBuf,
    /// A private key file in the encrypted PKCS#8 form (its content is not a real key).
    pub encrypted_key: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    pub fn new() -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("pgherd-pki-")
            .tempdir()
            .context("creating a temp dir for certificates")?;
        let issuer = ca("pgherd test CA")?;
        let other = ca("someone else")?;
        let (server_cert, server_key) = leaf(&issuer, "localhost", &["localhost", "127.0.0.1"])?;
        let (client_cert, client_key) = leaf(&issuer, "client", &["client"])?;
        let (stranger_cert, stranger_key) = leaf(&other, "stranger", &["stranger"])?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\n\
             MIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIhVd8VbD2bMECAggA\n\
             -----END ENCRYPTED PRIVATE KEY-----\n";
        let pki = Pki {
            ca: write("ca.pem", &issuer.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
            stranger_cert: write("stranger.pem", &stranger_cert)?,
            stranger_key: write("stranger.key", &stranger_key)?,
            other_ca: write("other-ca.pem", &other.pem())?,
            encrypted_key: write("encrypted.key", encrypted)?,
            dir,
        };
        pki.readable_by_all()?;
        Ok(pki)
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn readable_by_all(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(self.dir.path())? {
            std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }
}

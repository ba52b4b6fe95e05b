//! The configuration in force: settings and databases, the `auth_file` secrets, the
//! `auth_hba_file` rules and the TLS contexts, as last loaded. `RELOAD` (and `SET`)
//! swap them whole; readers take the current ones at each decision. [`Files::load`]
//! reads them.

use crate::config::{AuthType, ConfigErrors, HbaMethod, HbaRules, PoolerConfig, Userlist};
use crate::net::Peer;
use crate::tls::{TlsContexts, TlsError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why the configuration files did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Everything read from the configuration files.
pub struct Files {
    pub config: PoolerConfig,
    pub userlist: Userlist,
    pub hba: Option<HbaRules>,
    pub tls: TlsContexts,
}

impl Files {
    /// Read the main file, then the auth_file and auth_hba_file it names, and the TLS
    /// files of its settings.
    pub fn load(path: &Path) -> Result<Files, LoadError> {
        let loaded = PoolerConfig::load(path)?;
        loaded.log_warnings();
        let mut config = loaded.config;
        // Like PgBouncer's `conffile`: SHOW CONFIG shows it and the console's RELOAD reads it.
        if config.settings.get("conffile").is_none_or(|f| f.is_empty()) {
            let _ = config
                .settings
                .apply("conffile", &path.display().to_string());
        }
        let userlist = match &config.settings.auth_file {
            Some(f) => Userlist::load(&resolve(path, f))?,
            None => Userlist::default(),
        };
        let hba = match &config.settings.auth_hba_file {
            Some(f) => Some(HbaRules::load(&resolve(path, f))?),
            None => None,
        };
        let tls = TlsContexts::load(&config.settings)?;
        Ok(Files {
            config,
            userlist,
            hba,
            tls,
        })
    }
}

/// PgBouncer opens relative paths from its working directory; so do we.
fn resolve(_config: &Path, file: &Path) -> PathBuf {
    file.to_path_buf()
}

fn read<T: Clone>(slot: &RwLock<T>) -> T {
    // Swapped whole: a poisoned lock still holds a consistent value.
    match slot.read() {
        Ok(v) => v.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn replace<T>(slot: &RwLock<T>, value: T) {
    match slot.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

/// The configuration files as last loaded.
pub struct LiveConfig {
    config: RwLock<Arc<PoolerConfig>>,
    userlist: RwLock<Arc<Userlist>>,
    hba: RwLock<Option<Arc<HbaRules>>>,
    tls: RwLock<TlsContexts>,
}

impl LiveConfig {
    pub fn new(
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
    ) -> LiveConfig {
        LiveConfig {
            config: RwLock::new(Arc::new(config)),
            userlist: RwLock::new(Arc::new(userlist)),
            hba: RwLock::new(hba.map(Arc::new)),
            tls: RwLock::new(tls),
        }
    }

    /// Replace only the configuration (the console's `SET`).
    pub fn set_config(&self, config: PoolerConfig) {
        replace(&self.config, Arc::new(config));
    }

    /// Swap in re-read files (RELOAD, SIGHUP).
    pub fn replace(
        &self,
        config: PoolerConfig,
        userlist: Userlist,
        hba: Option<HbaRules>,
        tls: TlsContexts,
    ) {
        replace(&self.config, Arc::new(config));
        replace(&self.userlist, Arc::new(userlist));
        replace(&self.hba, hba.map(Arc::new));
        replace(&self.tls, tls);
    }

    pub fn config(&self) -> Arc<PoolerConfig> {
        read(&self.config)
    }

    pub fn userlist(&self) -> Arc<Userlist> {
        read(&self.userlist)
    }

    /// TLS toward clients and servers, as last loaded.
    pub fn tls(&self) -> TlsContexts {
        read(&self.tls)
    }

    /// The method `auth_hba_file` prescribes for a TCP client (first matching line);
    /// `None`: rejected, or a method pgherd does not offer.
    pub fn hba_method(
        &self,
        peer: Peer,
        tls: bool,
        database: &str,
        user: &str,
    ) -> Option<AuthType> {
        let hba = read(&self.hba)?;
        let conn = crate::config::ConnInfo {
            local: peer.ip().is_none(),
            tls,
            addr: peer.ip().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            database,
            user,
            replication: false,
        };
        match hba.matches(&conn)? {
            HbaMethod::Trust => Some(AuthType::Trust),
            HbaMethod::Md5 => Some(AuthType::Md5),
            HbaMethod::ScramSha256 => Some(AuthType::ScramSha256),
            HbaMethod::Password => Some(AuthType::Plain),
            HbaMethod::Reject | HbaMethod::Cert | HbaMethod::Peer => None,
        }
    }
}

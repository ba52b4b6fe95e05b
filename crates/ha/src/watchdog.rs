//! A Linux watchdog device (`/dev/watchdog`, e.g. softdog), as Patroni's `watchdog`
//! section uses it: opened when this member starts to lead, fed after every lease
//! renewal, and closed with the magic character when it stops leading. If the agent
//! stops feeding it (frozen, killed), the kernel resets the machine `ttl -
//! safety_margin` seconds after the last renewal, before the lease can expire.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Patroni's `watchdog.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchdogMode {
    /// No watchdog and no fencer.
    Off,
    /// The device when it can be used, and the fencer process in any case (default).
    #[default]
    Automatic,
    /// The device must be usable, or the agent does not start; the fencer runs too.
    Required,
}

impl WatchdogMode {
    /// Patroni's spellings (`off`/`false`, `automatic`/`true`, `required`).
    pub fn parse(s: &str) -> Option<WatchdogMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "disable" | "disabled" => Some(WatchdogMode::Off),
            "automatic" | "auto" | "true" | "on" => Some(WatchdogMode::Automatic),
            "required" | "require" => Some(WatchdogMode::Required),
            _ => None,
        }
    }
}

/// The `watchdog` section, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogSpec {
    pub mode: WatchdogMode,
    /// Default `/dev/watchdog`.
    pub device: PathBuf,
    /// Seconds before the lease expires that the device fires (default 5; -1: half the
    /// ttl).
    pub safety_margin: i64,
    /// The `pgherd` binary, run as `pgherd fence` (`None`: no fencer, as in the demo,
    /// whose agents share one process).
    pub fencer: Option<PathBuf>,
}

impl Default for WatchdogSpec {
    fn default() -> Self {
        WatchdogSpec {
            mode: WatchdogMode::Automatic,
            device: PathBuf::from("/dev/watchdog"),
            safety_margin: 5,
            fencer: None,
        }
    }
}

impl WatchdogSpec {
    /// The device's timeout for a lease of `ttl`, as Patroni computes it.
    pub fn device_timeout(&self, ttl: Duration) -> Duration {
        let ttl = ttl.as_secs();
        let secs = if self.safety_margin < 0 {
            ttl / 2
        } else {
            ttl.saturating_sub(self.safety_margin as u64)
        };
        Duration::from_secs(secs.max(1))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("watchdog device {}: {source}", device.display())]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("watchdog device {}: cannot set its timeout to {secs} s: {source}", device.display())]
    Timeout {
        device: PathBuf,
        secs: u32,
        source: std::io::Error,
    },
}

// linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int).
const WDIOC_KEEPALIVE: libc::c_ulong = 0x8004_5705;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// An open (and so ticking) watchdog device.
pub struct Watchdog {
    file: File,
    device: PathBuf,
}

impl Watchdog {
    /// Open `device` and set its timeout: from now on it must be fed.
    pub fn activate(device: &Path, timeout: Duration) -> Result<Watchdog, WatchdogError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(|source| WatchdogError::Open {
                device: device.to_path_buf(),
                source,
            })?;
        let watchdog = Watchdog {
            file,
            device: device.to_path_buf(),
        };
        let secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX);
        let mut value = secs as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int, which lives on this stack.
        let rc =
            unsafe { libc::ioctl(watchdog.file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut value) };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            watchdog.disable();
            return Err(WatchdogError::Timeout {
                device: device.to_path_buf(),
                secs,
                source,
            });
        }
        Ok(watchdog)
    }

    /// Feed the device: the countdown starts again.
    pub fn keepalive(&mut self) -> std::io::Result<()> {
        let mut dummy: libc::c_int = 0;
        // SAFETY: WDIOC_KEEPALIVE takes a pointer to one int, which lives on this stack.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), WDIOC_KEEPALIVE as _, &mut dummy) };
        if rc == 0 {
            return Ok(());
        }
        // Drivers without the ioctl take any write as a keepalive.
        self.file.write_all(b"1")
    }

    /// Stop the countdown: the magic close ('V' then close) disarms drivers that allow it.
    pub fn disable(mut self) {
        if let Err(e) = self.file.write_all(b"V") {
            tracing::warn!(device = %self.device.display(), error = %e, "watchdog: the magic close failed; the device may still fire");
        }
    }
}

/// Whether `device` can be opened for writing, without opening it (which would start
/// the countdown): `Err` says why not.
pub fn check_usable(device: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(device).map_err(|e| e.to_string())?;
    if !meta.file_type().is_char_device() {
        return Err("not a character device".into());
    }
    let path = std::ffi::CString::new(device.as_os_str().as_encoded_bytes())
        .map_err(|_| "the path contains a NUL byte".to_string())?;
    // SAFETY: access(2) on a NUL-terminated path that lives until the call returns.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_patronis_spellings() {
        assert_eq!(WatchdogMode::parse("off"), Some(WatchdogMode::Off));
        assert_eq!(WatchdogMode::parse("false"), Some(WatchdogMode::Off));
        assert_eq!(
            WatchdogMode::parse("Automatic"),
            Some(WatchdogMode::Automatic)
        );
        assert_eq!(
            WatchdogMode::parse("required"),
            Some(WatchdogMode::Required)
        );
        assert_eq!(WatchdogMode::parse("sometimes"), None);
    }

    #[test]
    fn the_device_fires_safety_margin_before_the_lease_ends() {
        let spec = WatchdogSpec::default();
        let ttl = Duration::from_secs(30);
        assert_eq!(spec.device_timeout(ttl), Duration::from_secs(25));
        let half = WatchdogSpec {
            safety_margin: -1,
            ..WatchdogSpec::default()
        };
        assert_eq!(half.device_timeout(ttl), Duration::from_secs(15));
        let huge = WatchdogSpec {
            safety_margin: 60,
            ..WatchdogSpec::default()
        };
        assert_eq!(huge.device_timeout(ttl), Duration::from_secs(1));
    }

    #[test]
    fn a_regular_file_is_no_watchdog() {
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(check_usable(file.path())
            .unwrap_err()
            .contains("not a character device"));
        assert!(check_usable(Path::new("/nonexistent/watchdog")).is_err());
        // A character device that is no watchdog refuses the timeout.
        let err = Watchdog::activate(Path::new("/dev/null"), Duration::from_secs(10))
            .err()
            .expect("/dev/null has no watchdog ioctl");
        assert!(err.to_string().contains("cannot set its timeout"), "{err}");
    }
}

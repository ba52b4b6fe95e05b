//! Where the PostgreSQL programs are, and which OS user runs them.

use crate::error::{PgError, Result};
use std::path::{Path, PathBuf};

/// The programs pgherd runs; all must be in the same directory.
pub const REQUIRED_PROGRAMS: &[&str] = &[
    "postgres",
    "pg_ctl",
    "initdb",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// Debian/Ubuntu layout: `/usr/lib/postgresql/<major>/bin`.
const DEBIAN_LIB_DIR: &str = "/usr/lib/postgresql";

/// A directory holding the PostgreSQL server programs, and their major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub dir: PathBuf,
    /// 15 for PostgreSQL 15.x (9 for 9.x: those are not supported anyway).
    pub major_version: u32,
}

impl Binaries {
    /// `bin_dir` if given, else `pg_config --bindir`, else the newest
    /// `/usr/lib/postgresql/*/bin`. Checks every program in [`REQUIRED_PROGRAMS`] is there
    /// and reads the version from `postgres --version`.
    pub fn find(bin_dir: Option<&Path>) -> Result<Binaries> {
        let dir = match bin_dir {
            Some(d) => d.to_path_buf(),
            None => match pg_config_bindir() {
                Some(d) if d.join("postgres").is_file() => d,
                _ => newest_debian_bindir().ok_or_else(|| PgError::BinariesNotFound {
                    looked_in: format!("`pg_config --bindir` and {DEBIAN_LIB_DIR}/*/bin"),
                    detail: "no PostgreSQL installation found; set postgresql.bin_dir".into(),
                })?,
            },
        };
        Self::at(&dir)
    }

    /// Check `dir` holds all programs and read their version.
    pub fn at(dir: &Path) -> Result<Binaries> {
        let looked_in = dir.display().to_string();
        if !dir.is_dir() {
            return Err(PgError::BinariesNotFound {
                looked_in,
                detail: "the directory does not exist".into(),
            });
        }
        let missing: Vec<&str> = REQUIRED_PROGRAMS
            .iter()
            .copied()
            .filter(|p| !is_executable(&dir.join(p)))
            .collect();
        if !missing.is_empty() {
            return Err(PgError::BinariesNotFound {
                looked_in,
                detail: format!("missing or not executable: {}", missing.join(", ")),
            });
        }
        // `postgres --version` is answered before the root check, so this works as root.
        let postgres = dir.join("postgres");
        let out = std::process::Command::new(&postgres)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| PgError::io(format!("running {} --version", postgres.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let major_version = parse_major_version(&text).ok_or_else(|| PgError::Parse {
            what: format!("{} --version", postgres.display()),
            detail: text.trim().to_string(),
        })?;
        Ok(Binaries {
            dir: dir.to_path_buf(),
            major_version,
        })
    }

    /// Full path of one program.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(DEBIAN_LIB_DIR).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(v) = parse_version_number(&name) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("postgres").is_file() {
            continue;
        }
        let better = match &best {
            Some((b, _)) => v > *b,
            None => true,
        };
        if better {
            best = Some((v, bin));
        }
    }
    best.map(|(_, p)| p)
}

/// "9.6" → 906, "15" → 1500: only for ordering directory names.
fn parse_version_number(s: &str) -> Option<u32> {
    let mut it = s.split('.');
    let major: u32 = it.next()?.parse().ok()?;
    let minor: u32 = match it.next() {
        Some(m) => m.parse().ok()?,
        None => 0,
    };
    Some(major * 100 + minor)
}

/// `postgres (PostgreSQL) 15.6 (Debian 15.6-0+deb12u1)` → 15; `... 9.6.24` → 9;
/// `... 16beta1` → 16.
pub fn parse_major_version(version_output: &str) -> Option<u32> {
    let rest = version_output.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// An OS account PostgreSQL programs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    pub fn lookup(name: &str) -> Result<OsUser> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(OsUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            }),
            Ok(None) => Err(PgError::OsUser {
                name: name.to_string(),
                detail: "no such user on this machine".into(),
            }),
            Err(e) => Err(PgError::OsUser {
                name: name.to_string(),
                detail: format!("cannot look it up: {e}"),
            }),
        }
    }

    /// Supplementary groups of this user (including the primary group).
    pub(crate) fn groups(&self) -> Vec<libc::gid_t> {
        let Ok(cname) = std::ffi::CString::new(self.name.clone()) else {
            return vec![self.gid];
        };
        match nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(self.gid)) {
            Ok(gs) => gs.into_iter().map(|g| g.as_raw()).collect(),
            Err(_) => vec![self.gid],
        }
    }
}

/// Which user PostgreSQL programs run as. As root: `os_user` (default `postgres`), never
/// uid 0. Not root: `None` (we run them as ourselves); naming another user is an error
/// then, since we could not switch to it.
pub fn run_as(os_user: Option<&str>) -> Result<Option<OsUser>> {
    if nix::unistd::geteuid().is_root() {
        let user = OsUser::lookup(os_user.unwrap_or("postgres"))?;
        if user.uid == 0 {
            return Err(PgError::RefuseRoot);
        }
        return Ok(Some(user));
    }
    if let Some(name) = os_user {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        if me.as_deref() != Some(name) {
            return Err(PgError::OsUser {
                name: name.to_string(),
                detail: format!(
                    "we run as {} without root, so cannot switch to it; run as that user or as root",
                    me.unwrap_or_else(|| format!("uid {}", nix::unistd::geteuid()))
                ),
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version_from_postgres_version_output() {
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major_version("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_major_version("nonsense"), None);
    }

    #[test]
    fn find_in_a_missing_directory_names_the_path() {
        let err = Binaries::find(Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }

    #[test]
    fn find_in_a_directory_without_programs_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::find(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("pg_rewind") && err.contains("pg_ctl"), "{err}");
    }
}

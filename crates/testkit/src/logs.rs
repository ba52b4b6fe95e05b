//! Every test's logs, kept in one directory for the whole suite, so a check after the
//! run (`scripts/check-log-secrets.sh`) can grep them all for the test passwords.
//!
//! The directory is `$PGHERD_TEST_LOG_DIR`, or `target/test-logs` in the workspace.
//! Processes a test starts write logs into its temp dir; [`harvest`] copies them out
//! when the dir goes. In-process logs go there through [`crate::init_tracing`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// How deep under a test's temp dir log files are looked for.
const MAX_DEPTH: usize = 5;
/// Larger logs are kept only up to this size.
const MAX_BYTES: u64 = 32 << 20;

/// The suite's log directory, created on first use.
pub fn suite_log_dir() -> PathBuf {
    let dir = std::env::var_os("PGHERD_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-logs")
                .to_path_buf()
        });
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// `<test binary>-<pid>`: what this process's kept logs are named after.
pub fn process_label() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "test".into());
    format!("{exe}-{}", std::process::id())
}

/// Copy every `*.log` file under `dir` into the suite's log directory.
pub fn harvest(dir: &Path) {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let target = suite_log_dir().join(format!(
        "{}-{}",
        process_label(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    // Bounded by MAX_DEPTH and the files present.
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && depth < MAX_DEPTH {
                stack.push((path, depth + 1));
            } else if kind.is_file() && path.extension().is_some_and(|x| x == "log") {
                keep(&target, dir, &path);
            }
        }
    }
}

fn keep(target: &Path, root: &Path, file: &Path) {
    let name = file
        .strip_prefix(root)
        .unwrap_or(file)
        .to_string_lossy()
        .replace('/', "_");
    let Ok(mut from) = std::fs::File::open(file) else {
        return;
    };
    if std::fs::create_dir_all(target).is_err() {
        return;
    }
    let Ok(mut to) = std::fs::File::create(target.join(name)) else {
        return;
    };
    let _ = std::io::copy(&mut std::io::Read::take(&mut from, MAX_BYTES), &mut to);
}

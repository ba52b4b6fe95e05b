//! `pgherd pooler --ini` with PgBouncer's `pidfile` and `logfile`, against the real
//! binary. No PostgreSQL: `[databases]` points at an unused port, and the pooler only
//! connects to servers when a client logs in.

use nix::sys::signal::Signal;
use pgherd_testkit::{free_port, wait_until};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(20);
const EVERY: Duration = Duration::from_millis(50);

/// A running `pgherd pooler`, killed on drop; its stderr goes to a file, shown when a
/// test fails.
struct Pooler {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Pooler {
    /// Start on a free port with `extra` lines in `[pgbouncer]`.
    fn start(dir: &Path, name: &str, extra: &str) -> Pooler {
        Pooler::start_on(dir, name, free_port(), extra)
    }

    fn start_on(dir: &Path, name: &str, port: u16, extra: &str) -> Pooler {
        let ini = dir.join(format!("{name}.ini"));
        fs::write(
            &ini,
            format!(
                "[databases]\n\
                 db = host=127.0.0.1 port={unused} dbname=db\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir = {sockets}\n\
                 auth_type = any\n\
                 admin_users = admin\n\
                 {extra}\n",
                unused = free_port(),
                sockets = dir.display(),
            ),
        )
        .expect("write ini");
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .arg("pooler")
            .arg("--ini")
            .arg(&ini)
            .env("PGHERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start pgherd pooler");
        Pooler {
            child,
            port,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    async fn wait_listening(&self) {
        wait_until("the pooler to listen", WITHIN, EVERY, || async {
            self.listening().then_some(())
        })
        .await
    }

    fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal the pooler");
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        wait_until("the pooler to exit", WITHIN, EVERY, || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== pooler stderr =====\n{}", self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn pidfile_holds_the_pid_while_running_and_goes_at_sigterm_and_sigint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pooler.pid");
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut pooler = Pooler::start(
            dir.path(),
            sig.as_str(),
            &format!("pidfile = {}", pidfile.display()),
        );
        pooler.wait_listening().await;
        assert_eq!(read(&pidfile), format!("{}\n", pooler.pid()));
        pooler.signal(sig);
        let status = pooler.wait_exit().await;
        assert!(status.success(), "{sig}: exit status {status}");
        assert!(!pidfile.exists(), "{sig}: the pidfile outlived the pooler");
    }
}

#[tokio::test]
async fn pidfile_goes_at_console_shutdown_and_when_start_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pooler.pid");
    let setting = format!("pidfile = {}", pidfile.display());
    let mut pooler = Pooler::start(dir.path(), "pooler", &setting);
    pooler.wait_listening().await;
    assert!(pidfile.exists());
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=admin dbname=pgbouncer",
            pooler.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("admin console");
    tokio::spawn(conn);
    // The pooler may close the connection before answering.
    let _ = client.simple_query("SHUTDOWN").await;
    assert!(pooler.wait_exit().await.success());
    assert!(!pidfile.exists(), "the pidfile outlived SHUTDOWN");

    // Written, then the port turns out taken: the pidfile goes with the failed start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut pooler = Pooler::start_on(dir.path(), "taken", port, &setting);
    assert!(!pooler.wait_exit().await.success());
    assert!(
        pooler.stderr().contains("cannot listen"),
        "{}",
        pooler.stderr()
    );
    assert!(!pidfile.exists(), "the pidfile outlived a failed start");
}

#[tokio::test]
async fn a_second_pooler_with_the_same_pidfile_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pooler.pid");
    let setting = format!("pidfile = {}", pidfile.display());
    let first = Pooler::start(dir.path(), "first", &setting);
    first.wait_listening().await;
    // Its port answering is not proof enough (another test may hold a port number for
    // a moment): wait for its pidfile too.
    let written = format!("{}\n", first.pid());
    wait_until("the first pidfile", WITHIN, EVERY, || async {
        (fs::read_to_string(&pidfile).ok().as_deref() == Some(written.as_str())).then_some(())
    })
    .await;

    let mut second = Pooler::start(dir.path(), "second", &setting);
    let status = second.wait_exit().await;
    assert!(!status.success(), "the second pooler started");
    let err = second.stderr();
    let expected = format!(
        "pidfile {}: pgherd pooler (or another process) is already running with pid {}",
        pidfile.display(),
        first.pid()
    );
    assert!(err.contains(&expected), "stderr: {err}");
    assert!(!second.listening(), "the second pooler bound its port");
    // The first one's pidfile stays, and so does the first pooler.
    assert_eq!(read(&pidfile), format!("{}\n", first.pid()));
    assert!(first.listening());
}

#[tokio::test]
async fn a_stale_pidfile_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pooler.pid");
    let setting = format!("pidfile = {}", pidfile.display());
    // The pid of a process that has exited, then garbage.
    let mut gone = Command::new("true").spawn().expect("run true");
    gone.wait().expect("wait for true");
    for stale in [format!("{}\n", gone.id()), "not a pid\n".to_string()] {
        fs::write(&pidfile, &stale).expect("write stale pidfile");
        let mut pooler = Pooler::start(dir.path(), "pooler", &setting);
        pooler.wait_listening().await;
        assert_eq!(
            read(&pidfile),
            format!("{}\n", pooler.pid()),
            "was {stale:?}"
        );
        assert!(pooler.stderr().contains("replacing a stale pidfile"));
        pooler.signal(Signal::SIGTERM);
        assert!(pooler.wait_exit().await.success());
        assert!(!pidfile.exists());
    }
}

#[tokio::test]
async fn missing_directories_are_named_in_the_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-dir");
    for (setting, file) in [
        ("pidfile", missing.join("pooler.pid")),
        ("logfile", missing.join("pooler.log")),
    ] {
        let mut pooler = Pooler::start(
            dir.path(),
            setting,
            &format!("{setting} = {}", file.display()),
        );
        let status = pooler.wait_exit().await;
        assert!(!status.success(), "{setting}: started anyway");
        let err = pooler.stderr();
        let line = err
            .lines()
            .find(|l| l.starts_with("pgherd: error:"))
            .unwrap_or_default();
        assert!(
            line.contains(&format!("{setting} {}", file.display())),
            "{setting}: stderr: {err}"
        );
    }
}

#[tokio::test]
async fn logfile_gets_the_log_and_is_reopened_at_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logfile = dir.path().join("pooler.log");
    let pooler = Pooler::start(
        dir.path(),
        "pooler",
        &format!("logfile = {}", logfile.display()),
    );
    pooler.wait_listening().await;
    wait_until(
        "the listening line in the logfile",
        WITHIN,
        EVERY,
        || async { read(&logfile).contains("listening").then_some(()) },
    )
    .await;
    let text = read(&logfile);
    assert!(
        !text.contains('\x1b'),
        "ANSI colours in the logfile: {text:?}"
    );
    let mode = fs::metadata(&logfile)
        .expect("logfile")
        .permissions()
        .mode();
    // Created 0640 (less under a stricter umask): never readable by others.
    assert_eq!(mode & 0o607, 0o600, "logfile mode {mode:o}");
    assert!(pooler.stderr().contains("listening"), "stderr still logs");

    // What logrotate does: move the file away, then SIGHUP.
    let rotated = dir.path().join("pooler.log.1");
    fs::rename(&logfile, &rotated).expect("rotate");
    pooler.signal(Signal::SIGHUP);
    wait_until("a new logfile after SIGHUP", WITHIN, EVERY, || async {
        read(&logfile)
            .contains("configuration reloaded")
            .then_some(())
    })
    .await;
    let old = read(&rotated);
    assert!(old.contains("listening"));
    assert!(!old.contains("configuration reloaded"), "old file: {old}");
}

//! Health checks of static servers (`check=http|sql`), with HAProxy's meanings: every
//! `inter` each host is asked what it is; one that fails `fall` checks in a row is out,
//! one that passes `rise` in a row is back in. A routed pool then logs in only to the
//! hosts of its role that are in, so a write never goes to a replica.
//!
//! `http` asks a Patroni-style REST API (`GET /primary`, `GET /replica?lag=N`: 200 means
//! yes, as HAProxy's `option httpchk` reads it); `sql` logs in as the database's user and
//! runs `SELECT pg_is_in_recovery()`.

use crate::config::{CheckKind, CheckedServer, Fallback, HealthSpec, RouteRole};
use crate::pool::{Endpoint, Pool};
use crate::server::{ServerConnection, ServerTarget};
use std::sync::Weak;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info};

/// What one check of a host found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// It is a primary.
    pub primary: bool,
    /// It is a replica that may serve reads (within `max_lag`, for `http`).
    pub replica: bool,
}

/// HAProxy's up/down state of one host for one question, from consecutive results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Streak {
    pub up: bool,
    /// Consecutive results that disagree with `up`.
    against: u32,
    /// A first result was seen.
    known: bool,
}

impl Streak {
    /// Count one result: `fall` failures in a row take an up host down, `rise`
    /// successes in a row bring a down one up. The first result decides at once (until
    /// then the host is out: no write goes where nobody looked).
    pub fn record(&mut self, passed: bool, fall: u32, rise: u32) {
        if !self.known {
            *self = Streak {
                up: passed,
                against: 0,
                known: true,
            };
            return;
        }
        if passed == self.up {
            self.against = 0;
            return;
        }
        self.against += 1;
        let needed = if self.up { fall } else { rise };
        if self.against >= needed.max(1) {
            self.up = passed;
            self.against = 0;
        }
    }
}

/// Ask `server` what it is, within `timeout`. `None`: no answer (down).
async fn check(
    spec: &HealthSpec,
    server: &CheckedServer,
    target: &ServerTarget,
    timeout: Duration,
) -> Option<Answer> {
    let asked = async {
        match spec.kind {
            CheckKind::Http => {
                let primary = http_ok(server, "/primary").await;
                let path = match spec.max_lag {
                    Some(lag) => format!("/replica?lag={lag}"),
                    None => "/replica".into(),
                };
                let replica = http_ok(server, &path).await;
                match (primary, replica) {
                    (None, None) => None,
                    (p, r) => Some(Answer {
                        primary: p == Some(true),
                        replica: r == Some(true),
                    }),
                }
            }
            CheckKind::Sql => {
                let mut t = target.clone();
                t.host = server.host.clone();
                t.port = server.port;
                t.connect_timeout = timeout;
                let mut conn = ServerConnection::connect(&t).await.ok()?;
                let row = conn
                    .query_first_row("SELECT pg_is_in_recovery()")
                    .await
                    .ok()??;
                conn.close().await;
                let in_recovery = row.first().cloned().flatten()? == "t";
                Some(Answer {
                    primary: !in_recovery,
                    replica: in_recovery,
                })
            }
        }
    };
    tokio::time::timeout(timeout, asked).await.ok().flatten()
}

/// `GET path` on the host's REST API: `Some(true)` for 200, `Some(false)` for another
/// status, `None` when it does not answer.
async fn http_ok(server: &CheckedServer, path: &str) -> Option<bool> {
    let mut stream = TcpStream::connect((server.host.as_str(), server.check_port))
        .await
        .ok()?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: pgherd-pooler\r\n\r\n",
        server.host
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    // The status line is all we read; bounded so that a chatty server cannot grow it.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1)?;
    Some(status == "200")
}

/// The hosts `spec` routes to, given which are up as primary and as readable replica.
fn endpoints(spec: &HealthSpec, primary: &[bool], replica: &[bool]) -> Vec<Endpoint> {
    let pick = |up: &[bool]| -> Vec<Endpoint> {
        spec.servers
            .iter()
            .zip(up)
            .filter(|(_, up)| **up)
            .map(|(s, _)| Endpoint {
                member: format!("{}:{}", s.host, s.port),
                host: s.host.clone(),
                port: s.port,
            })
            .collect()
    };
    match spec.role {
        RouteRole::Primary => pick(primary),
        RouteRole::Replica => {
            let replicas = pick(replica);
            if replicas.is_empty() && spec.fallback == Fallback::Primary {
                pick(primary)
            } else {
                replicas
            }
        }
        RouteRole::Any => {
            let both: Vec<bool> = primary.iter().zip(replica).map(|(p, r)| *p || *r).collect();
            pick(&both)
        }
    }
}

/// Check `spec`'s hosts every `inter` and keep `pool` on those that are up, until the
/// pool or the pooler is gone. A primary route cuts its lent servers on a host that is
/// no longer the primary.
pub async fn follow_health(
    pool: Weak<Pool>,
    spec: HealthSpec,
    mut shutdown: watch::Receiver<bool>,
) {
    let n = spec.servers.len();
    let mut primary = vec![Streak::default(); n];
    let mut replica = vec![Streak::default(); n];
    let mut last: Option<Vec<Endpoint>> = None;
    let timeout = spec.inter.max(Duration::from_millis(100));
    loop {
        let Some(target) = pool.upgrade().map(|p| p.target()) else {
            break;
        };
        let answers = futures::future::join_all(
            spec.servers
                .iter()
                .map(|s| check(&spec, s, &target, timeout)),
        )
        .await;
        for (i, answer) in answers.iter().enumerate() {
            debug!(host = %spec.servers[i].host, port = spec.servers[i].port, ?answer, "health check");
            let a = answer.unwrap_or(Answer {
                primary: false,
                replica: false,
            });
            primary[i].record(a.primary, spec.fall, spec.rise);
            replica[i].record(a.replica, spec.fall, spec.rise);
        }
        let up = |s: &[Streak]| s.iter().map(|s| s.up).collect::<Vec<_>>();
        let now = endpoints(&spec, &up(&primary), &up(&replica));
        if last.as_ref() != Some(&now) {
            let Some(pool) = pool.upgrade() else { break };
            info!(pool = ?pool.key, role = %spec.role,
                hosts = ?now.iter().map(|e| &e.member).collect::<Vec<_>>(),
                "health checks: routing to these hosts");
            let sever = spec.role == RouteRole::Primary && last.is_some();
            pool.route_to(now.clone(), spec.balance, sever);
            last = Some(now);
        }
        tokio::select! {
            _ = tokio::time::sleep(spec.inter) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_goes_down_after_fall_failures_and_up_after_rise_passes() {
        let mut s = Streak::default();
        assert!(!s.up, "not checked yet");
        s.record(false, 3, 2);
        assert!(!s.up, "the first result decides");
        s.record(true, 3, 2);
        assert!(!s.up, "one pass of two");
        s.record(true, 3, 2);
        assert!(s.up);
        s.record(false, 3, 2);
        s.record(false, 3, 2);
        assert!(s.up, "two failures of three");
        s.record(true, 3, 2);
        s.record(false, 3, 2);
        s.record(false, 3, 2);
        assert!(s.up, "a pass in between starts the count again");
        s.record(false, 3, 2);
        assert!(!s.up);
    }

    fn spec(role: RouteRole, fallback: Fallback) -> HealthSpec {
        let server = |port| CheckedServer {
            host: "127.0.0.1".into(),
            port,
            check_port: 8008,
        };
        HealthSpec {
            kind: CheckKind::Http,
            servers: vec![server(5432), server(5433), server(5434)],
            role,
            max_lag: None,
            fallback,
            balance: Default::default(),
            inter: Duration::from_secs(1),
            fall: 1,
            rise: 1,
        }
    }

    #[test]
    fn writes_go_only_to_the_primary_and_reads_to_replicas_or_the_fallback() {
        let ports = |e: Vec<Endpoint>| e.iter().map(|e| e.port).collect::<Vec<_>>();
        let primary = [false, true, false];
        let replica = [true, false, false];
        let s = spec(RouteRole::Primary, Fallback::Primary);
        assert_eq!(ports(endpoints(&s, &primary, &replica)), [5433]);
        let s = spec(RouteRole::Replica, Fallback::Primary);
        assert_eq!(ports(endpoints(&s, &primary, &replica)), [5432]);
        assert_eq!(ports(endpoints(&s, &primary, &[false; 3])), [5433]);
        let s = spec(RouteRole::Replica, Fallback::None);
        assert!(endpoints(&s, &primary, &[false; 3]).is_empty());
        let s = spec(RouteRole::Any, Fallback::Primary);
        assert_eq!(ports(endpoints(&s, &primary, &replica)), [5432, 5433]);
    }
}

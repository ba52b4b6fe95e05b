//! One running member: its REST API and its agent loop, started and stopped together.

use crate::runner::Agent;
use crate::spec::NodeSpec;
use crate::status::{NodeStatus, SharedStatus};
use pgherd_dcs::Dcs;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

/// How long a call to another member's REST API may take.
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A member whose API listens and whose agent runs.
pub struct RunningMember {
    pub name: String,
    pub status: SharedStatus,
    pub api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    agent: JoinHandle<()>,
    api: JoinHandle<()>,
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for the REST API on {addr}: {source}")]
    ApiListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A certificate, key or CA file of the REST API or its client.
    #[error(transparent)]
    Tls(#[from] pgherd_http::TlsError),
}

/// Bind the REST API (failing fast if its port is taken), then start the agent.
pub async fn start(spec: NodeSpec, dcs: Arc<dyn Dcs>) -> Result<RunningMember, StartError> {
    let tls = spec.api_tls.as_ref().map(|t| t.acceptor()).transpose()?;
    let http = pgherd_http::client::client(&spec.client_tls, Some(PEER_TIMEOUT))?;
    let listener = tokio::net::TcpListener::bind(spec.api_listen)
        .await
        .map_err(|source| StartError::ApiListen {
            addr: spec.api_listen,
            source,
        })?;
    let api_addr = listener.local_addr().unwrap_or(spec.api_listen);
    let status = SharedStatus::new(NodeStatus::new(
        &spec.name,
        &spec.scope,
        spec.api_url(),
        spec.conn_url(),
        spec.ha.clone(),
        spec.tags.clone(),
    ));
    let (shutdown, rx) = watch::channel(false);
    let mut api_rx = rx.clone();
    let api_status = status.clone();
    let name = spec.name.clone();
    let mut agent = Agent::new(spec.clone(), dcs.clone(), status.clone(), http.clone());
    let control = crate::api::Control {
        dcs,
        auth: spec.api_auth.clone(),
        agent: Some(agent.handle()),
        http,
    };
    let api = tokio::spawn(async move {
        let stop = async move {
            let _ = api_rx.wait_for(|s| *s).await;
        };
        let served = crate::api::serve_with(listener, api_status, Some(control), tls, stop);
        if let Err(e) = served.await {
            warn!(error = %e, "REST API stopped");
        }
    });
    let agent = tokio::spawn(agent.run(rx));
    Ok(RunningMember {
        name,
        status,
        api_addr,
        shutdown,
        agent,
        api,
    })
}

impl RunningMember {
    /// Stop the agent (which stops PostgreSQL and releases the leader key) and the API.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.agent.await;
        let _ = self.api.await;
    }

    /// Stop the agent and the API where they are, as kill -9 would: no clean stop, no
    /// key released; PostgreSQL keeps running (the demo's drill kills it separately).
    pub async fn crash(self) {
        self.agent.abort();
        self.api.abort();
        let _ = self.agent.await;
        let _ = self.api.await;
    }

    /// The agent ended on its own (it only does so after a shutdown request).
    pub fn is_finished(&self) -> bool {
        self.agent.is_finished()
    }
}

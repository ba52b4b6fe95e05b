//! The clients' life: accept them (up to `max_client_conn`), run each one's session in
//! its own task, park it when idle and resume it when it speaks again, and hand a client
//! of the virtual database `pgbouncer` to the [`admin`] console. Above [`runtime`]
//! (whose state it uses) and [`admin`]; only the service starts it.

use crate::admin;
use crate::client::ClientInfo;
use crate::net::Listener;
use crate::park::{self, ParkOwner, Parker};
use crate::runtime::{ClientSlot, ParkedClient, Runtime};
use crate::session::{self, Ended};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// Accept clients until `shutdown` turns true; at most `max_client_conn` at once (the
/// one over the limit is told so and closed, as PgBouncer does).
pub async fn serve(listener: Listener, runtime: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    start_parker(&runtime);
    let max = runtime.config().settings.max_client_conn as usize;
    let slots = Arc::new(Semaphore::new(max));
    let mut console_shutdown = runtime.shutdown_requested();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            _ = console_shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer, local) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let runtime = runtime.clone();
        match ClientSlot::take(&slots) {
            Some(slot) => {
                let client = runtime.add_client(peer, local);
                let session =
                    session::run(stream, client.clone(), runtime.session_context().clone());
                spawn_client(runtime, client, slot, session);
            }
            None => {
                tokio::spawn(session::refuse(
                    stream,
                    peer,
                    "no more connections allowed (max_client_conn)",
                ));
            }
        }
    }
    // Shutting down: no more min_pool_size fills or janitor passes.
    runtime.session_context().pools.signal_janitor_stop();
}

/// Start parking idle clients (once; inside a Tokio runtime). Without a parker every
/// client keeps its task.
fn start_parker(runtime: &Arc<Runtime>) {
    if runtime.has_parker() {
        return;
    }
    match Parker::new() {
        Ok(parker) => {
            let parker = Arc::new(parker);
            let task = tokio::spawn(park::run(parker.clone(), Arc::downgrade(runtime)));
            runtime.install_parker(parker, task);
        }
        Err(e) => warn!(error = %e, "cannot park idle clients: each keeps its task"),
    }
}

/// Run a client's session in its own task until it leaves, is killed or parks; a client
/// of the admin console is served by the console in the same task.
fn spawn_client(
    runtime: Arc<Runtime>,
    client: Arc<ClientInfo>,
    slot: ClientSlot,
    session: impl Future<Output = Ended> + Send + 'static,
) {
    tokio::spawn(async move {
        let peer = client.peer;
        // KILL drops the session: its sockets close, a held server is closed and its
        // slot freed.
        let ended = tokio::select! {
            biased;
            ended = session => ended,
            _ = client.killed_notified() => {
                debug!(%peer, "client killed");
                Ended::Done
            }
        };
        let session = match ended {
            Ended::Parked(session) => session,
            Ended::Console(console) => {
                // Boxed, as the session's login was: the task stays small for others.
                let console = Box::pin(admin::serve(*console, &client, &runtime));
                tokio::select! {
                    _ = console => {}
                    _ = client.killed_notified() => debug!(%peer, "client killed"),
                }
                runtime.remove_client(client.id);
                drop(slot);
                return;
            }
            Ended::Done => {
                runtime.remove_client(client.id);
                drop(slot);
                return;
            }
        };
        let Some(parker) = runtime.parker() else {
            // Sessions park only when there is a parker.
            runtime.remove_client(client.id);
            session.end(runtime.session_context());
            return;
        };
        let id = client.id;
        client.forget_kill_waker();
        drop(client);
        let parked = ParkedClient { session, slot };
        match parker.park(parked) {
            Ok(()) => {
                // A KILL that came while parking may have missed it in the parker.
                if let Some(killed) = parker.unpark_if(id, |c| c.session.client().is_killed()) {
                    runtime.remove_client(id);
                    killed.session.end(runtime.session_context());
                }
            }
            Err(parked) => resume_client(&runtime, parked),
        }
    });
}

impl ParkOwner<ParkedClient> for Runtime {
    fn resume(self: &Arc<Self>, parked: ParkedClient) {
        resume_client(self, parked);
    }

    fn expire(&self, parked: ParkedClient) {
        info!(peer = %parked.session.client().peer, "client_idle_timeout");
        self.remove_client(parked.session.client().id);
        parked.session.end(self.session_context());
    }

    fn idle_timeout(&self) -> Option<Duration> {
        self.config().settings.client_idle_timeout
    }
}

/// Serve a parked client again, in a new task.
fn resume_client(runtime: &Arc<Runtime>, parked: ParkedClient) {
    let ParkedClient { session, slot } = parked;
    let client = session.client().clone();
    tracing::trace!(peer = %client.peer, "resuming a parked client");
    let session = session::resume(session, runtime.session_context().clone());
    spawn_client(runtime.clone(), client, slot, session);
}

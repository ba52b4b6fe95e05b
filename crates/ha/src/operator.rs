//! Operator commands for one member — restart, reload, reinit, scheduled restarts — on
//! their way from its REST API to its agent. The agent carries a request out through
//! [`crate::decide`] on its next tick and answers on the command's reply channel.

use crate::decide::MemberRequest;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What the agent answers: a message for the operator, or why it did not do it.
pub type Answer = Result<String, String>;

/// One command for the agent.
#[derive(Debug)]
pub enum Command {
    /// Carry this out now.
    Now {
        request: MemberRequest,
        reply: oneshot::Sender<Answer>,
    },
    /// Restart at `at` (seconds since the epoch); with `pending_only`, only if a changed
    /// parameter still needs a restart then.
    ScheduleRestart {
        at: i64,
        pending_only: bool,
        reply: oneshot::Sender<Answer>,
    },
    CancelScheduledRestart {
        reply: oneshot::Sender<Answer>,
    },
}

/// A restart the agent will do later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledRestart {
    pub at: i64,
    pub pending_only: bool,
}

/// The sending side, held by the REST API.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<Command>,
}

/// A handle and the agent's receiving end.
pub fn channel() -> (AgentHandle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(8);
    (AgentHandle { tx }, rx)
}

impl AgentHandle {
    /// Ask for `request` now and wait up to `timeout` for the answer.
    pub async fn request(&self, request: MemberRequest, timeout: Duration) -> Answer {
        self.send(|reply| Command::Now { request, reply }, timeout)
            .await
    }

    pub async fn schedule_restart(&self, at: i64, pending_only: bool) -> Answer {
        self.send(
            |reply| Command::ScheduleRestart {
                at,
                pending_only,
                reply,
            },
            Duration::from_secs(5),
        )
        .await
    }

    pub async fn cancel_scheduled_restart(&self) -> Answer {
        self.send(
            |reply| Command::CancelScheduledRestart { reply },
            Duration::from_secs(5),
        )
        .await
    }

    async fn send(
        &self,
        command: impl FnOnce(oneshot::Sender<Answer>) -> Command,
        timeout: Duration,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| "the agent is not running".to_string())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => Err("the agent dropped the request".into()),
            Err(_) => Err(format!(
                "no answer from the agent within {} s; the request may still be carried out",
                timeout.as_secs()
            )),
        }
    }
}

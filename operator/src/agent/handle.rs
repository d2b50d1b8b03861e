//! [`AgentHandle`]: an [`Agent`] on a thread of its own (its netlink socket is
//! `!Send`), driven over a channel. Requests are served in order, one at a time,
//! so two syncs never race on the committed copy.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use tokio::sync::oneshot;

use super::{Agent, AgentError, AgentInput, AgentReport};

type Reply = oneshot::Sender<Result<AgentReport, AgentError>>;

/// A running agent. Dropping the handle stops the thread; the table stays in the
/// kernel (a restarted agent takes it over).
pub struct AgentHandle {
    node: String,
    requests: Option<mpsc::Sender<(AgentInput, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl AgentHandle {
    /// Starts an agent for `node` in the namespace at `netns` (or the caller's);
    /// returns once its dataplane is open, or with the reason it did not open.
    pub fn spawn(node: &str, netns: Option<PathBuf>) -> Result<AgentHandle, AgentError> {
        let (requests, inbox) = mpsc::channel::<(AgentInput, Reply)>();
        let (opened, open_result) = mpsc::channel();
        let name = node.to_string();
        let thread = thread::Builder::new()
            .name(format!("agent-{node}"))
            .spawn(move || {
                let mut agent = match Agent::open(&name, netns.as_deref()) {
                    Ok(agent) => {
                        let _ = opened.send(Ok(()));
                        agent
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                for (input, reply) in inbox {
                    // The caller may have given up waiting; the sync still stands.
                    let _ = reply.send(agent.sync(&input));
                }
            })
            .map_err(|_| gone(node, "could not start"))?;
        open_result
            .recv()
            .map_err(|_| gone(node, "ended while opening"))??;
        Ok(AgentHandle {
            node: node.to_string(),
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Enforces `input`; returns once the kernel committed it. Blocking: from
    /// async code use [`AgentHandle::sync_async`].
    pub fn sync(&self, input: AgentInput) -> Result<AgentReport, AgentError> {
        self.submit(input)?.wait()
    }

    /// [`AgentHandle::sync`] for async callers.
    pub async fn sync_async(&self, input: AgentInput) -> Result<AgentReport, AgentError> {
        self.submit(input)?.wait_async().await
    }

    /// Hands `input` to the agent and returns at once; the agent works on it
    /// meanwhile. Submitting to every node first and then waiting enforces a
    /// change on all nodes concurrently.
    pub fn submit(&self, input: AgentInput) -> Result<PendingSync, AgentError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .as_ref()
            .and_then(|r| r.send((input, reply)).ok())
            .ok_or_else(|| gone(&self.node, "is not running"))?;
        Ok(PendingSync {
            node: self.node.clone(),
            answer,
        })
    }
}

/// A submitted sync; wait for it to learn whether the kernel committed it.
pub struct PendingSync {
    node: String,
    answer: oneshot::Receiver<Result<AgentReport, AgentError>>,
}

impl PendingSync {
    /// Blocks until the kernel committed (must not be called on a tokio worker).
    pub fn wait(self) -> Result<AgentReport, AgentError> {
        self.answer
            .blocking_recv()
            .map_err(|_| gone(&self.node, "ended without an answer"))?
    }

    pub async fn wait_async(self) -> Result<AgentReport, AgentError> {
        self.answer
            .await
            .map_err(|_| gone(&self.node, "ended without an answer"))?
    }
}

fn gone(node: &str, what: &'static str) -> AgentError {
    AgentError::Gone {
        node: node.to_string(),
        what,
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        // Closing the channel ends the thread's request loop.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! [`AgentHandle`]: an [`Agent`] on a thread of its own (its netlink socket is
//! `!Send`), driven over a channel. Requests are served in order, one at a time,
//! so two syncs never race on the committed copy.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use tokio::sync::oneshot;

use super::{Agent, AgentError, AgentInput, AgentReport};

/// Work for the agent's thread.
type Job = Box<dyn FnOnce(&mut Agent) + Send>;

/// A running agent. Dropping the handle stops the thread; the table stays in the
/// kernel (a restarted agent takes it over).
pub struct AgentHandle {
    node: String,
    requests: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl AgentHandle {
    /// Starts an agent for `node` in the namespace at `netns` (or the caller's);
    /// returns once its dataplane is open, or with the reason it did not open.
    pub fn spawn(node: &str, netns: Option<PathBuf>) -> Result<AgentHandle, AgentError> {
        let (requests, inbox) = mpsc::channel::<Job>();
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
                for job in inbox {
                    job(&mut agent);
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
        self.call(move |agent| agent.sync(&input))
    }

    /// Runs `f` on the agent's thread, after the requests before it; the
    /// answer comes through the returned [`Pending`].
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Agent) -> Result<T, AgentError> + Send + 'static,
    ) -> Result<Pending<T>, AgentError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |agent| {
            // The caller may have given up waiting; the work still stands.
            let _ = reply.send(f(agent));
        });
        self.requests
            .as_ref()
            .and_then(|r| r.send(job).ok())
            .ok_or_else(|| gone(&self.node, "is not running"))?;
        Ok(Pending {
            node: self.node.clone(),
            answer,
        })
    }
}

/// A submitted request; wait for it to learn its outcome.
pub struct Pending<T> {
    node: String,
    answer: oneshot::Receiver<Result<T, AgentError>>,
}

/// A submitted sync; wait for it to learn whether the kernel committed it.
pub type PendingSync = Pending<AgentReport>;

impl<T> Pending<T> {
    /// Blocks until the agent answered (must not be called on a tokio worker).
    pub fn wait(self) -> Result<T, AgentError> {
        self.answer
            .blocking_recv()
            .map_err(|_| gone(&self.node, "ended without an answer"))?
    }

    pub async fn wait_async(self) -> Result<T, AgentError> {
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

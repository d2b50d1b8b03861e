//! The dataplane thread: the [`Agent`] owns a netlink socket (`!Send`), so it
//! lives on a thread of its own and the async control loop sends it work:
//! syncs and drift checks, served in order, never two at once.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use nft::dataplane::Drift;
use nft::Table;
use tokio::sync::oneshot;

use crate::agent::{Agent, AgentError, AgentInput, AgentReport};

/// Size of the enforced table, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSize {
    pub rules: usize,
    /// Elements of sets and maps the agent fills (not dynamic ones).
    pub elements: usize,
}

impl TableSize {
    pub fn of(table: Option<&Table>) -> TableSize {
        let Some(t) = table else {
            return TableSize::default();
        };
        TableSize {
            rules: t.chains.values().map(|c| c.rules.len()).sum(),
            elements: t
                .sets
                .values()
                .filter(|s| !s.flags.dynamic)
                .map(|s| s.elements.len())
                .sum(),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<(T, TableSize), AgentError>>;

enum Request {
    Sync(Box<AgentInput>, Reply<AgentReport>),
    CheckDrift(Reply<Drift>),
}

/// A running dataplane thread. Dropping it ends the thread; the table stays
/// in the kernel for the next agent to take over.
pub struct Worker {
    node: String,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Opens `node`'s table in the namespace at `netns` (or this one);
    /// returns once it is open (the kernel's table read once), or why not.
    pub fn spawn(node: &str, netns: Option<PathBuf>) -> Result<Worker, AgentError> {
        let (requests, inbox) = mpsc::channel::<Request>();
        let (opened, open_result) = mpsc::channel();
        let name = node.to_string();
        let thread = thread::Builder::new()
            .name(format!("dataplane-{node}"))
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
                for request in inbox {
                    // A caller that stopped waiting loses only the answer.
                    match request {
                        Request::Sync(input, reply) => {
                            let result = agent.sync(&input);
                            let _ = reply.send(result.map(|r| (r, size(&agent))));
                        }
                        Request::CheckDrift(reply) => {
                            let result = agent.check_drift();
                            let _ = reply.send(result.map(|d| (d, size(&agent))));
                        }
                    }
                }
            })
            .map_err(|_| gone(node, "could not start"))?;
        open_result
            .recv()
            .map_err(|_| gone(node, "ended while opening"))??;
        Ok(Worker {
            node: node.to_string(),
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Enforces `input`; returns once the kernel committed (or refused).
    pub async fn sync(&self, input: AgentInput) -> Result<(AgentReport, TableSize), AgentError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Sync(Box::new(input), reply))?;
        answer
            .await
            .map_err(|_| gone(&self.node, "ended without an answer"))?
    }

    pub async fn check_drift(&self) -> Result<(Drift, TableSize), AgentError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::CheckDrift(reply))?;
        answer
            .await
            .map_err(|_| gone(&self.node, "ended without an answer"))?
    }

    fn send(&self, request: Request) -> Result<(), AgentError> {
        self.requests
            .as_ref()
            .and_then(|r| r.send(request).ok())
            .ok_or_else(|| gone(&self.node, "is not running"))
    }
}

fn size(agent: &Agent) -> TableSize {
    TableSize::of(agent.committed())
}

fn gone(node: &str, what: &'static str) -> AgentError {
    AgentError::Gone {
        node: node.to_string(),
        what,
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the request loop after the current request.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

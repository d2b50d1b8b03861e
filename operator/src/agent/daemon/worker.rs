//! The dataplane side of the control loop: syncs and drift checks, served in
//! order on the agent's own thread (its netlink socket is `!Send`), never two
//! at once.

use std::path::PathBuf;

use nft::dataplane::Drift;
use nft::Table;

use crate::agent::{Agent, AgentError, AgentHandle, AgentInput, AgentReport};

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

/// The agent of this node on its own thread ([`AgentHandle`]), with the
/// table size reported after every request. Dropping it ends the thread; the
/// table stays in the kernel for the next agent to take over.
pub struct Worker {
    agent: AgentHandle,
}

impl Worker {
    /// Opens `node`'s table in the namespace at `netns` (or this one);
    /// returns once it is open (the kernel's table read once), or why not.
    pub fn spawn(node: &str, netns: Option<PathBuf>) -> Result<Worker, AgentError> {
        Ok(Worker {
            agent: AgentHandle::spawn(node, netns)?,
        })
    }

    /// Enforces `input`; returns once the kernel committed (or refused).
    pub async fn sync(&self, input: AgentInput) -> Result<(AgentReport, TableSize), AgentError> {
        self.agent
            .call(move |agent| agent.sync(&input).map(|r| (r, size(agent))))?
            .wait_async()
            .await
    }

    pub async fn check_drift(&self) -> Result<(Drift, TableSize), AgentError> {
        self.agent
            .call(|agent| agent.check_drift().map(|d| (d, size(agent))))?
            .wait_async()
            .await
    }
}

fn size(agent: &Agent) -> TableSize {
    TableSize::of(agent.committed())
}

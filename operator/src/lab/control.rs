//! The lab's control plane: what carries the lab's model into each node's
//! kernel. [`InProcess`] hands every node's share straight to an in-process
//! agent per node (`kube-nft lab run`); [`super::apiserver::ApiServerPlane`]
//! writes the objects to a real API server and lets the real operator and
//! agents do it (`kube-nft lab run --kubeconfig`). Either way a change is
//! enforced when [`ControlPlane::enforce`] returns, and the lab's probes and
//! truth tables do not know which one ran.

use std::borrow::Cow;

use anyhow::anyhow;
use kube_nft_crds::ir::CompiledPolicy;
use tokio::runtime::Runtime;

use super::topology::Topology;
use crate::agent::{AgentHandle, AgentInput, AgentReport};
use crate::cluster::Cluster;

/// One change to enforce: the lab's model after it, its compile, and what
/// each lab node's agent must end up enforcing (in the topology's node
/// order).
pub struct Change<'a> {
    pub cluster: &'a Cluster,
    pub compiled: &'a CompiledPolicy,
    pub inputs: &'a [AgentInput],
}

pub trait ControlPlane {
    /// `in-process` or `apiserver`.
    fn name(&self) -> &'static str;

    /// The cluster as the agents see it: the lab's model plus whatever the
    /// control plane adds (an API server's own `kubernetes` Service).
    fn view<'a>(&self, cluster: &'a Cluster) -> Cow<'a, Cluster> {
        Cow::Borrowed(cluster)
    }

    /// Called first in every enforcement, before [`Self::view`] (an API
    /// server plane reads the objects it did not write again).
    fn prepare(&mut self, _rt: &Runtime) -> anyhow::Result<()> {
        Ok(())
    }

    /// Carries `change` to every node; returns once each kernel enforces it,
    /// with what each node's sync did.
    fn enforce(&mut self, change: &Change, rt: &Runtime) -> anyhow::Result<Vec<AgentReport>>;

    /// Stops `node`'s agent abruptly (`kill -9` where it is a process) and
    /// starts it again; returns once it runs. The kernel keeps enforcing
    /// meanwhile.
    fn restart_agent(&mut self, node: &str, rt: &Runtime) -> anyhow::Result<()>;

    /// Stops the agents and removes what the control plane created outside
    /// the lab's namespaces.
    fn finish(&mut self, rt: &Runtime) -> anyhow::Result<()>;
}

/// One in-process agent per lab node.
pub struct InProcess {
    agents: Vec<AgentHandle>,
    /// (node, netns path) to start an agent again.
    nodes: Vec<(String, std::path::PathBuf)>,
}

impl InProcess {
    pub fn start(topology: &Topology) -> anyhow::Result<InProcess> {
        let nodes: Vec<(String, std::path::PathBuf)> = topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.netns.path()))
            .collect();
        let agents = nodes
            .iter()
            .map(|(name, netns)| AgentHandle::spawn(name, Some(netns.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InProcess { agents, nodes })
    }
}

impl ControlPlane for InProcess {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn enforce(&mut self, change: &Change, _rt: &Runtime) -> anyhow::Result<Vec<AgentReport>> {
        let pending = self
            .agents
            .iter()
            .zip(change.inputs)
            .map(|(a, input)| a.submit(input.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(pending
            .into_iter()
            .map(|p| p.wait())
            .collect::<Result<Vec<AgentReport>, _>>()?)
    }

    fn restart_agent(&mut self, node: &str, _rt: &Runtime) -> anyhow::Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|(n, _)| n == node)
            .ok_or_else(|| anyhow!("node {node} is not in the lab"))?;
        // The old agent's thread ends before the new one reads the kernel.
        drop(self.agents.remove(i));
        let (name, netns) = &self.nodes[i];
        self.agents
            .insert(i, AgentHandle::spawn(name, Some(netns.clone()))?);
        Ok(())
    }

    fn finish(&mut self, _rt: &Runtime) -> anyhow::Result<()> {
        self.agents.clear();
        Ok(())
    }
}

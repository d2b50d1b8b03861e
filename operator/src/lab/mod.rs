//! The lab's Linux plumbing: a real dataplane on one machine, built from network
//! namespaces (see "The lab" in DESIGN.md).
//!
//! * [`netns`]: named namespaces, running code and creating sockets inside them,
//!   the [`LabGuard`] that removes a run's namespaces, [`cleanup_stale`].
//! * [`addressing`] (pure): the address plan and pod IP allocation.
//! * [`topology`]: underlay, nodes, pods and the outside host from a [`LabSpec`].
//! * [`listen`]: every pod answers on its ports with `namespace/name from <source>`.
//! * [`probe`]: real TCP/UDP connections from inside a namespace, many in parallel.
//! * [`control`]: what carries the model to the nodes: in-process agents, or
//!   ([`apiserver`]) a real API server with the real operator and agents.
//!
//! Nothing here touches the root namespace's interfaces, routes or nftables:
//! every interface is created inside a lab namespace.

pub mod addressing;
pub mod apiserver;
pub mod control;
pub mod listen;
pub mod naming;
pub mod netns;
pub mod probe;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sctp;
pub mod services;
pub mod topology;

use std::io;

pub use kube_nft_crds::ir::Protocol;
pub use listen::{Answer, Listeners, NotServable};
pub use netns::{cleanup_stale, LabGuard, Netns};
pub use probe::{probe, probe_many, ProbeError, ProbeResult, ProbeSpec};
pub use topology::{
    build, LabNode, LabPod, LabSpec, NodeSpec, OutsideHost, PodPort, PodSpec, Topology,
};

/// Everything that can go wrong while building or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The spec itself is wrong; the message names the object and field.
    #[error("lab spec: {0}")]
    Spec(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An `ip` batch failed; `netns` is `-` for the root namespace.
    #[error("`ip -n {netns} -b -` failed ({status}): {stderr}")]
    IpBatch {
        netns: String,
        status: String,
        stderr: String,
    },
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> LabError {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

//! NetworkPolicy semantics: the explain engine (the reference, straight from the
//! NetworkPolicy v1 API), the compiler to the IR, and the IR evaluator (what the
//! kernel ruleset does). A property test checks compiler+evaluator against
//! explain on random clusters.
//!
//! # Decisions where upstream leaves room
//!
//! * **ipBlock matches by IP, pods included.** The API says ipBlock is meant for
//!   cluster-external addresses, but Calico, Cilium and kube-network-policies
//!   match any address, pod IPs included; so do we.
//! * **Host-network pods are not selected** by any policy (neither as target nor
//!   by a pod/namespace selector as peer): their traffic carries the node's
//!   address, so only an ipBlock covering the node IP matches them.
//! * **A node may always reach its own pods**: ingress from an address of the
//!   destination pod's node (Node `InternalIP`s, or addresses the lab/agent adds)
//!   is allowed even when the pod is isolated (kubelet probes need it).
//! * **Only live pods count**: a pod needs an IP and must not be in phase
//!   Succeeded/Failed to be selected or matched.
//! * **Named ports** resolve against the destination pod's container ports (name
//!   and protocol both match): for ingress the selected pod, for egress the peer
//!   pod the traffic goes to. A destination that is not a (non-host-network)
//!   pod has no named ports, so a named-port entry never matches it.
//! * **Pod IP selection**: a pod is identified by its primary IP; for a flow
//!   between dual-stack endpoints the source IP of the destination's family is
//!   used.
//! * A verdict is about policy only: whether anything listens on the port does
//!   not change it (explain says so when the port is not declared).

pub mod compile;
pub mod explain;
pub mod flow;
pub mod incremental;
pub mod ir_eval;
pub mod selector;

pub use compile::{compile, compile_node};
pub use explain::{explain_flow, explain_pod, matrix, matrix_for, Explanation, Matrix, PodReport};
pub use flow::{Endpoint, Family, Flow, IpFlow, PortProto};
pub use ir_eval::{ir_allows, ir_decide, IrDecision};

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

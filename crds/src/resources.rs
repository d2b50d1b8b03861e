//! The custom resources of cluster mode (group `kubenft.io`, version
//! `v1alpha1`, both cluster-scoped). They carry the compiled policy IR
//! ([`crate::ir`]) from the operator to the node agents through the API server:
//!
//! * [`NodePolicyShare`], one per node, named after the node: spec = that
//!   node's [`NodePolicy`] (its isolated pods and their rules, the node's own
//!   addresses). Written by the operator; the node's agent reads it and reports
//!   what it enforces in the status subresource. Not sharded: a node hosts
//!   about a hundred pods, and the peers of their rules that could be large
//!   are address sets, which live in the shards below.
//! * [`AddressSetShard`], the members of the address sets the rules name, split
//!   so that no object nears etcd's size limit; see [`crate::shard`] for the
//!   layout, the names and the labels agents select them by.
//!
//! The schemas are generated from these types by kube's derive; the
//! `#[schemars(transform)]` on each spec makes them structural (see
//! [`crate::structural`]) because a v1.20 API server rejects anything else.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ir::{AddressSetElement, IrPeer, NodePolicy};

/// The API group of every kube-nft custom resource.
pub const GROUP: &str = "kubenft.io";
/// The API version of every kube-nft custom resource.
pub const VERSION: &str = "v1alpha1";
/// The condition an agent sets on its [`NodePolicyShare`]: `True` once the
/// spec's generation is in the kernel, `False` with the reason when the last
/// attempt failed.
pub const ENFORCED_CONDITION: &str = "Enforced";

/// The policy one node enforces.
// clippy reads the repeated `type_ = …` of different printcolumns as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubenft.io",
    version = "v1alpha1",
    kind = "NodePolicyShare",
    status = "NodePolicyShareStatus",
    derive = "PartialEq",
    shortname = "nps",
    category = "kube-nft",
    doc = "The NetworkPolicy rules one node enforces, compiled by the kube-nft operator (one object per node, named after it).",
    printcolumn(name = "Pods", type_ = "integer", json_path = ".spec.summary.pods"),
    printcolumn(name = "Rules", type_ = "integer", json_path = ".spec.summary.rules"),
    printcolumn(
        name = "Sets",
        type_ = "integer",
        json_path = ".spec.summary.addressSets"
    ),
    printcolumn(
        name = "Enforced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Enforced\")].status"
    ),
    printcolumn(
        name = "Generation",
        type_ = "integer",
        json_path = ".metadata.generation",
        priority = 1
    ),
    printcolumn(
        name = "Enforced-Generation",
        type_ = "integer",
        json_path = ".status.enforcedGeneration",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::structural::for_kubernetes)]
pub struct NodePolicyShareSpec {
    /// The node's share of the compiled policy (`node`, `nodeAddresses`, `pods`).
    #[serde(flatten)]
    pub policy: NodePolicy,
    /// Counts for `kubectl get`, derived from the policy (printer columns
    /// cannot count lists).
    pub summary: NodePolicySummary,
}

/// What `kubectl get nodepolicyshares` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicySummary {
    /// Isolated pods on the node.
    pub pods: u32,
    /// Ingress and egress rules of those pods.
    pub rules: u32,
    /// Distinct address sets the rules reference.
    pub address_sets: u32,
}

impl NodePolicyShareSpec {
    pub fn new(policy: NodePolicy) -> Self {
        let rules = policy
            .pods
            .iter()
            .map(|p| p.ingress.len() + p.egress.len())
            .sum::<usize>();
        let summary = NodePolicySummary {
            pods: saturate(policy.pods.len()),
            rules: saturate(rules),
            address_sets: saturate(referenced_sets(&policy).len()),
        };
        NodePolicyShareSpec { policy, summary }
    }
}

impl NodePolicyShare {
    /// The object for `policy.node` (named after the node). The compiled
    /// policy's entry for the empty node name (pods not scheduled yet) has no
    /// object: it is not a valid name and no agent would read it.
    pub fn for_node(policy: NodePolicy) -> Self {
        let name = policy.node.clone();
        NodePolicyShare::new(&name, NodePolicyShareSpec::new(policy))
    }
}

/// The address sets a node's rules name: the ones its agent must watch (by the
/// label [`crate::shard::SET_LABEL`]).
pub fn referenced_sets(policy: &NodePolicy) -> BTreeSet<&str> {
    let rules = policy
        .pods
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress));
    rules
        .flat_map(|r| &r.peers)
        .filter_map(|peer| match peer {
            IrPeer::AddressSet { name } | IrPeer::AddressPortSet { name } => Some(name.as_str()),
            IrPeer::Any | IrPeer::Cidr { .. } => None,
        })
        .collect()
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What the node's agent reports (status subresource; only the agent writes it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyShareStatus {
    /// `metadata.generation` of the latest spec the agent has read, enforced
    /// or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `metadata.generation` of the spec whose rules are in the kernel now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_generation: Option<i64>,
    /// When the kernel transaction for `enforcedGeneration` committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_time: Option<Time>,
    /// `Enforced`: `True` once the spec's generation is in the kernel, `False`
    /// with the reason when the last attempt failed. A map keyed by `type`, so
    /// server-side apply merges conditions one by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One piece of an address set.
#[allow(clippy::duplicated_attributes)] // repeated `type_ = …`, as above
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubenft.io",
    version = "v1alpha1",
    kind = "AddressSetShard",
    derive = "PartialEq",
    shortname = "ashard",
    category = "kube-nft",
    doc = "A piece of one address set of the compiled NetworkPolicies, written by the kube-nft operator: the shards of a set share the kubenft.io/address-set label and form a chain through spec.next.",
    printcolumn(name = "Set", type_ = "string", json_path = ".spec.set"),
    printcolumn(name = "Elements", type_ = "integer", json_path = ".spec.elementCount"),
    printcolumn(
        name = "Next",
        type_ = "string",
        json_path = ".spec.next",
        priority = 1
    ),
    printcolumn(
        name = "Selector",
        type_ = "string",
        json_path = ".spec.selector",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::structural::for_kubernetes)]
pub struct AddressSetShardSpec {
    /// Name of the address set in the compiled policy (what rules reference).
    pub set: String,
    /// Canonical text of what the set stands for (the same in every shard).
    pub selector: String,
    /// Name of the shard holding the next elements; absent on the last shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Number of elements, for `kubectl get`.
    pub element_count: u32,
    /// Sorted; every element is greater than those of the shards before it.
    pub elements: Vec<AddressSetElement>,
}

/// Every kube-nft CRD, sorted by name.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![NodePolicyShare::crd(), AddressSetShard::crd()];
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;

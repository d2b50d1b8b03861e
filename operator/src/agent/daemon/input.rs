//! What the agent enforces, from what it knows (pure): the share's policy,
//! the members of the address sets it references (put back together from
//! their shards), and the node's Service NAT.
//!
//! A set whose shard chain is incomplete (a shard missing, usually a moment
//! in the middle of the operator's update) keeps the members it had at the
//! last sync: enforcing half a set would cut connections the next event
//! restores. A set never seen complete is enforced empty until it is.

use std::collections::BTreeMap;

use kube_nft_crds::ir::{AddressSet, NodePolicy};
use kube_nft_crds::resources::referenced_sets;
use kube_nft_crds::shard::reassemble;

use super::state::State;
use crate::agent::AgentInput;
use crate::service::{self, ServiceConfig};

/// The input of one sync and what to remember for the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub input: AgentInput,
    /// The share's `metadata.generation` this input enforces (`None`: no
    /// share, nothing isolated).
    pub generation: Option<i64>,
    /// The members of every referenced set as enforced by `input`: the
    /// `last_good` of the next build.
    pub sets: BTreeMap<String, AddressSet>,
    /// Sets enforced with old or no members, and why (one line each).
    pub incomplete: Vec<String>,
}

/// `services`: the NAT settings, `None` to leave Service NAT out.
pub fn build(
    state: &State,
    last_good: &BTreeMap<String, AddressSet>,
    services: Option<&ServiceConfig>,
) -> Built {
    let share = state.share();
    let policy = share
        .map(|s| s.spec.policy.clone())
        .unwrap_or_else(|| NodePolicy {
            node: state.node().to_string(),
            ..Default::default()
        });
    let mut assembled = reassemble(state.shards());
    let mut sets = BTreeMap::new();
    let mut incomplete = Vec::new();
    for name in referenced_sets(&policy) {
        let why = match assembled.remove(name) {
            Some(Ok(set)) => {
                sets.insert(name.to_string(), set);
                continue;
            }
            Some(Err(e)) => e.to_string(),
            None => format!("address set {name}: no shard"),
        };
        match last_good.get(name) {
            Some(old) => {
                incomplete.push(format!(
                    "{why}; keeping its last complete members ({})",
                    old.elements.len()
                ));
                sets.insert(name.to_string(), old.clone());
            }
            None => incomplete.push(format!("{why}; enforced empty until it is complete")),
        }
    }
    let input = AgentInput {
        services: services.map(|c| service::compute(state.cluster(), state.node(), c)),
        service_config: services.cloned().unwrap_or_default(),
        address_sets: sets.clone(),
        policy,
    };
    Built {
        input,
        generation: share.and_then(|s| s.metadata.generation),
        sets,
        incomplete,
    }
}

#[cfg(test)]
#[path = "input_tests.rs"]
mod tests;

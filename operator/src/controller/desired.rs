//! What the operator wants in the API server, and the steps from what is there.
//!
//! Pure: from the compiled IR ([`CompiledPolicy`]) and the known Nodes, the
//! [`NodePolicyShare`] of a node and the [`AddressSetShard`]s of a set; then a
//! [`Plan`] against what was last applied ([`Applied`]), restricted to the
//! nodes and sets an event touched ([`Dirty`]).
//!
//! # Order
//!
//! An agent must never see a share naming a set whose shards are not there,
//! nor a chain of shards with a missing link (it would refuse the set). So a
//! plan runs, and stopping after any single write leaves the API server
//! consistent:
//!
//! 1. shard applies, each set's shards **last to first**: a shard only ever
//!    names (`spec.next`) a successor that is already written;
//! 2. share applies: the sets they name exist by now;
//! 3. shard deletes: dropped links are no longer named by their predecessor
//!    (step 1), and whole sets are no longer named by a share (step 2);
//! 4. share deletes (nodes gone).
//!
//! The writer adds the rules for failures (see `writer.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube_nft_crds::ir::{CompiledPolicy, NodePolicy};
use kube_nft_crds::resources::{
    AddressSetShard, AddressSetShardSpec, NodePolicyShare, NodePolicyShareSpec,
};
use kube_nft_crds::shard;

/// The label on every object the operator writes (and the selector it lists
/// its objects by when it becomes leader).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`], and the server-side apply field manager.
pub const MANAGER: &str = "kube-nft-operator";

/// `app.kubernetes.io/managed-by=kube-nft-operator`.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER}")
}

/// The inputs of the desired state.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Compiled without Node objects: `nodes` holds only nodes with isolated
    /// pods, with no addresses (they come from `node_addresses`).
    pub ir: &'a CompiledPolicy,
    /// Every known Node and its addresses (`InternalIP`s).
    pub node_addresses: &'a BTreeMap<String, Vec<IpAddr>>,
    pub max_elements: usize,
}

/// The share of a known node: its isolated pods (maybe none) and its addresses.
pub fn share(inputs: &Inputs, node: &str, addresses: &[IpAddr]) -> NodePolicyShare {
    let pods = inputs
        .ir
        .nodes
        .get(node)
        .map(|np| np.pods.clone())
        .unwrap_or_default();
    let mut share = NodePolicyShare::for_node(NodePolicy {
        node: node.to_string(),
        node_addresses: addresses.to_vec(),
        pods,
    });
    share.metadata.labels = Some(managed_labels());
    share
}

/// The shards of set `name` in chain order; none when the set is gone.
pub fn shards(inputs: &Inputs, name: &str) -> Vec<AddressSetShard> {
    let Some(set) = inputs.ir.address_sets.get(name) else {
        return Vec::new();
    };
    // `shard::shard` works on a map of sets; one entry is the set at hand.
    let one = BTreeMap::from([(name.to_string(), set.clone())]);
    let mut shards = shard::shard(&one, inputs.max_elements);
    for s in &mut shards {
        s.metadata
            .labels
            .get_or_insert_with(Default::default)
            .extend(managed_labels());
    }
    shards
}

fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGER.to_string())])
}

/// Which nodes and sets need recomputing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything (a new leader's first pass, or after a rebuild).
    pub all: bool,
    pub nodes: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

impl Dirty {
    pub fn all() -> Dirty {
        Dirty {
            all: true,
            ..Dirty::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.nodes.is_empty() && self.sets.is_empty()
    }

    pub fn merge(&mut self, other: Dirty) {
        self.all |= other.all;
        self.nodes.extend(other.nodes);
        self.sets.extend(other.sets);
    }
}

/// What the API server holds of ours: the spec last applied (or listed) of
/// every share and shard, by object name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub shares: BTreeMap<String, NodePolicyShareSpec>,
    pub shards: BTreeMap<String, AddressSetShardSpec>,
    /// Set name → names of its shards, so a set's old shards are found
    /// without walking every shard.
    by_set: BTreeMap<String, BTreeSet<String>>,
}

impl Applied {
    /// From the objects a list returned.
    pub fn from_objects(
        shares: impl IntoIterator<Item = NodePolicyShare>,
        shards: impl IntoIterator<Item = AddressSetShard>,
    ) -> Applied {
        let mut applied = Applied::default();
        for s in shares {
            if let Some(name) = s.metadata.name {
                applied.shares.insert(name, s.spec);
            }
        }
        for s in shards {
            if let Some(name) = s.metadata.name {
                applied.put_shard(name, s.spec);
            }
        }
        applied
    }

    pub fn put_share(&mut self, name: String, spec: NodePolicyShareSpec) {
        self.shares.insert(name, spec);
    }

    pub fn remove_share(&mut self, name: &str) {
        self.shares.remove(name);
    }

    pub fn put_shard(&mut self, name: String, spec: AddressSetShardSpec) {
        self.remove_shard(&name);
        self.by_set
            .entry(spec.set.clone())
            .or_default()
            .insert(name.clone());
        self.shards.insert(name, spec);
    }

    pub fn remove_shard(&mut self, name: &str) {
        if let Some(old) = self.shards.remove(name) {
            if let Some(names) = self.by_set.get_mut(&old.set) {
                names.remove(name);
                if names.is_empty() {
                    self.by_set.remove(&old.set);
                }
            }
        }
    }

    /// Names of the shards applied for `set`.
    pub fn shards_of(&self, set: &str) -> impl Iterator<Item = &String> {
        self.by_set.get(set).into_iter().flatten()
    }

    pub fn sets(&self) -> impl Iterator<Item = &String> {
        self.by_set.keys()
    }
}

/// The writes that take the API server from [`Applied`] to the desired state
/// of the dirty nodes and sets, in the order of the module doc.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// By set; each set's shards last to first.
    pub shard_applies: Vec<(String, Vec<AddressSetShard>)>,
    pub share_applies: Vec<NodePolicyShare>,
    /// By set: shards no longer produced. `true` when the whole set is gone.
    pub shard_deletes: Vec<ShardDeletes>,
    pub share_deletes: Vec<String>,
}

/// The shards of one set to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardDeletes {
    pub set: String,
    /// The set is gone entirely (no shard of it is desired).
    pub whole_set: bool,
    pub names: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.shard_applies.is_empty()
            && self.share_applies.is_empty()
            && self.shard_deletes.is_empty()
            && self.share_deletes.is_empty()
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.shard_applies
            .iter()
            .map(|(_, s)| s.len())
            .sum::<usize>()
            + self.share_applies.len()
            + self
                .shard_deletes
                .iter()
                .map(|d| d.names.len())
                .sum::<usize>()
            + self.share_deletes.len()
    }
}

/// The plan for the `dirty` part (see [`Plan`]). Objects whose applied spec
/// equals the desired one are not rewritten.
pub fn plan(inputs: &Inputs, dirty: &Dirty, applied: &Applied) -> Plan {
    let (nodes, sets): (BTreeSet<&String>, BTreeSet<&String>) = if dirty.all {
        (
            inputs
                .node_addresses
                .keys()
                .chain(applied.shares.keys())
                .collect(),
            inputs
                .ir
                .address_sets
                .keys()
                .chain(applied.sets())
                .collect(),
        )
    } else {
        (dirty.nodes.iter().collect(), dirty.sets.iter().collect())
    };

    let mut plan = Plan::default();
    for set in sets {
        let desired = shards(inputs, set);
        let changed: Vec<AddressSetShard> = desired
            .iter()
            .rev()
            .filter(|s| {
                let name = s.metadata.name.as_deref().unwrap_or_default();
                applied.shards.get(name) != Some(&s.spec)
            })
            .cloned()
            .collect();
        let keep: BTreeSet<&str> = desired
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        let stale: Vec<String> = applied
            .shards_of(set)
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        if !changed.is_empty() {
            plan.shard_applies.push((set.clone(), changed));
        }
        if !stale.is_empty() {
            plan.shard_deletes.push(ShardDeletes {
                set: set.clone(),
                whole_set: desired.is_empty(),
                names: stale,
            });
        }
    }
    for node in nodes {
        match inputs.node_addresses.get(node) {
            Some(addresses) => {
                let share = share(inputs, node, addresses);
                if applied.shares.get(node.as_str()) != Some(&share.spec) {
                    plan.share_applies.push(share);
                }
            }
            None if applied.shares.contains_key(node.as_str()) => {
                plan.share_deletes.push(node.clone());
            }
            None => {}
        }
    }
    plan
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;

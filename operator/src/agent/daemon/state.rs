//! The agent's view of the cluster, kept up to date from watch events. Pure:
//! no I/O, so the protocol (lists replacing the store, the address-set watch
//! following the share) is unit-tested without an API server.
//!
//! Every watcher first delivers a complete list (`Init`, `InitApply`…,
//! `InitDone`), and again after each reconnect that needs a relist. A list is
//! collected aside and replaces the kind's store only when complete, so a
//! half-received relist is never enforced and objects deleted while the
//! watch was down disappear with the replacement.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use kube_nft_crds::resources::{referenced_sets, AddressSetShard, NodePolicyShare};
use kube_nft_crds::shard::set_selector;

use crate::cluster::{Cluster, ObjectKey};

/// The kinds of objects the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Share,
    Shards,
    Services,
    EndpointSlices,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Share,
        Kind::Shards,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Share => "nodepolicyshare",
            Kind::Shards => "addresssetshards",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Node => "node",
        }
    }
}

/// One watch event, tagged with the watcher it came from.
// Each update is moved once, from its watcher into the loop: boxing the
// larger variants would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Update {
    Share(Event<NodePolicyShare>),
    /// From the address-set watcher started for `epoch` (see [`ShardWatch`]);
    /// events of an older watcher still in flight are ignored.
    Shards {
        epoch: u64,
        event: Event<AddressSetShard>,
    },
    Service(Event<Service>),
    EndpointSlice(Event<EndpointSlice>),
    Node(Event<Node>),
}

/// Which address-set shards to watch: the label selector of the sets the
/// share references (`None`: no set referenced, no watcher), and the epoch
/// that tags the watcher's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWatch {
    pub epoch: u64,
    pub selector: Option<String>,
}

/// What applying an update did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// What the node enforces may have changed: a sync is due.
    pub changed: bool,
    /// The referenced sets changed: (re)start the shard watcher like this.
    pub restart_shards: Option<ShardWatch>,
    /// Objects that were not taken (the previous version stays), with why.
    pub problems: Vec<String>,
}

impl Effect {
    fn changed(changed: bool) -> Effect {
        Effect {
            changed,
            ..Default::default()
        }
    }
}

/// Lists in progress, one per kind.
#[derive(Debug, Default)]
struct Lists {
    share: Option<Vec<NodePolicyShare>>,
    shards: Option<Vec<AddressSetShard>>,
    services: Option<Vec<Service>>,
    slices: Option<Vec<EndpointSlice>>,
    node: Option<Vec<Node>>,
}

/// What one event means for a store once the list protocol is applied.
enum Step<K> {
    /// Part of a list in progress: nothing visible yet.
    Buffered,
    Upsert(K),
    Delete(K),
    /// A complete list: the store becomes exactly this.
    Replace(Vec<K>),
}

fn step<K>(list: &mut Option<Vec<K>>, event: Event<K>) -> Step<K> {
    match event {
        Event::Init => {
            *list = Some(Vec::new());
            Step::Buffered
        }
        Event::InitApply(o) => {
            list.get_or_insert_with(Vec::new).push(o);
            Step::Buffered
        }
        Event::InitDone => Step::Replace(list.take().unwrap_or_default()),
        Event::Apply(o) => Step::Upsert(o),
        Event::Delete(o) => Step::Delete(o),
    }
}

/// Everything one node's agent knows: its share, the shards of the sets the
/// share references, Services, EndpointSlices and its own Node (the last
/// three in a [`Cluster`], which the Service model is computed from).
#[derive(Debug)]
pub struct State {
    node: String,
    share: Option<NodePolicyShare>,
    /// By object name.
    shards: BTreeMap<String, AddressSetShard>,
    cluster: Cluster,
    shard_watch: ShardWatch,
    lists: Lists,
    /// Kinds whose store holds a complete list (for the shards: of the
    /// current watcher).
    listed: BTreeSet<Kind>,
}

impl State {
    /// The state of `node`'s agent before any event. With `services` false
    /// nothing watches Services and EndpointSlices: they count as listed.
    pub fn new(node: &str, services: bool) -> State {
        // No share yet, so no set referenced: nothing to wait for there.
        let mut listed = BTreeSet::from([Kind::Shards]);
        if !services {
            listed.extend([Kind::Services, Kind::EndpointSlices]);
        }
        State {
            node: node.to_string(),
            share: None,
            shards: BTreeMap::new(),
            cluster: Cluster::new(),
            shard_watch: ShardWatch {
                epoch: 0,
                selector: None,
            },
            lists: Lists::default(),
            listed,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's share; `None` when the operator has not written it (or
    /// deleted it): nothing isolated on this node.
    pub fn share(&self) -> Option<&NodePolicyShare> {
        self.share.as_ref()
    }

    pub fn shards(&self) -> impl Iterator<Item = &AddressSetShard> {
        self.shards.values()
    }

    /// Services, EndpointSlices and this node's Node.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn shard_watch(&self) -> &ShardWatch {
        &self.shard_watch
    }

    /// Every watcher delivered its complete list: the state may be enforced.
    pub fn is_complete(&self) -> bool {
        self.listed.len() == Kind::ALL.len()
    }

    /// The kinds whose first complete list has not arrived yet.
    pub fn waiting_for(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| !self.listed.contains(k))
            .collect()
    }

    pub fn apply(&mut self, update: Update) -> Effect {
        match update {
            Update::Share(e) => self.apply_share(e),
            Update::Shards { epoch, event } => self.apply_shards(epoch, event),
            Update::Service(e) => self.apply_services(e),
            Update::EndpointSlice(e) => self.apply_slices(e),
            Update::Node(e) => self.apply_node(e),
        }
    }

    fn is_ours(&self, name: Option<&str>) -> bool {
        name == Some(self.node.as_str())
    }

    fn apply_share(&mut self, event: Event<NodePolicyShare>) -> Effect {
        let new = match step(&mut self.lists.share, event) {
            Step::Buffered => return Effect::default(),
            // The watch selects our share by name; anything else is not ours.
            Step::Upsert(o) if self.is_ours(o.metadata.name.as_deref()) => Some(o),
            Step::Delete(o) if self.is_ours(o.metadata.name.as_deref()) => None,
            Step::Upsert(_) | Step::Delete(_) => return Effect::default(),
            Step::Replace(list) => {
                self.listed.insert(Kind::Share);
                list.into_iter()
                    .find(|o| self.is_ours(o.metadata.name.as_deref()))
            }
        };
        // Our own status writes come back as events: only the spec (and the
        // generation the status reports) matters.
        let identity = |s: &Option<NodePolicyShare>| {
            s.as_ref().map(|s| {
                (
                    s.spec.clone(),
                    s.metadata.generation,
                    s.metadata.uid.clone(),
                )
            })
        };
        let changed = identity(&self.share) != identity(&new);
        self.share = new;
        let mut effect = Effect::changed(changed);
        let wanted = self
            .share
            .as_ref()
            .and_then(|s| set_selector(referenced_sets(&s.spec.policy)));
        if wanted != self.shard_watch.selector {
            effect.restart_shards = Some(self.restart_shards(wanted));
            effect.changed = true;
        }
        effect
    }

    /// A new shard watcher: the old members stay until its list is complete
    /// (then that list replaces them), so a set never flickers empty.
    fn restart_shards(&mut self, selector: Option<String>) -> ShardWatch {
        self.shard_watch = ShardWatch {
            epoch: self.shard_watch.epoch + 1,
            selector,
        };
        self.lists.shards = None;
        if self.shard_watch.selector.is_none() {
            // Nothing referenced: nothing to watch or wait for.
            self.shards.clear();
            self.listed.insert(Kind::Shards);
        } else {
            self.listed.remove(&Kind::Shards);
        }
        self.shard_watch.clone()
    }

    fn apply_shards(&mut self, epoch: u64, event: Event<AddressSetShard>) -> Effect {
        if epoch != self.shard_watch.epoch || self.shard_watch.selector.is_none() {
            return Effect::default();
        }
        let name = |o: &AddressSetShard| o.metadata.name.clone().unwrap_or_default();
        match step(&mut self.lists.shards, event) {
            Step::Buffered => return Effect::default(),
            Step::Upsert(o) => {
                self.shards.insert(name(&o), o);
            }
            Step::Delete(o) => {
                self.shards.remove(&name(&o));
            }
            Step::Replace(list) => {
                self.shards = list.into_iter().map(|o| (name(&o), o)).collect();
                self.listed.insert(Kind::Shards);
            }
        }
        Effect::changed(true)
    }

    fn apply_services(&mut self, event: Event<Service>) -> Effect {
        match step(&mut self.lists.services, event) {
            Step::Buffered => return Effect::default(),
            Step::Upsert(o) => insert_service(&mut self.cluster, o),
            Step::Delete(o) => {
                self.cluster.remove_service(&ObjectKey::of(&o.metadata));
            }
            Step::Replace(list) => {
                let keep: BTreeSet<ObjectKey> =
                    list.iter().map(|o| ObjectKey::of(&o.metadata)).collect();
                let gone: Vec<ObjectKey> = self
                    .cluster
                    .services()
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.cluster.remove_service(&k);
                }
                for o in list {
                    insert_service(&mut self.cluster, o);
                }
                self.listed.insert(Kind::Services);
            }
        }
        Effect::changed(true)
    }

    fn apply_slices(&mut self, event: Event<EndpointSlice>) -> Effect {
        match step(&mut self.lists.slices, event) {
            Step::Buffered => return Effect::default(),
            Step::Upsert(o) => insert_slice(&mut self.cluster, o),
            Step::Delete(o) => {
                self.cluster
                    .remove_endpoint_slice(&ObjectKey::of(&o.metadata));
            }
            Step::Replace(list) => {
                let keep: BTreeSet<ObjectKey> =
                    list.iter().map(|o| ObjectKey::of(&o.metadata)).collect();
                let gone: Vec<ObjectKey> = self
                    .cluster
                    .endpoint_slices()
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.cluster.remove_endpoint_slice(&k);
                }
                for o in list {
                    insert_slice(&mut self.cluster, o);
                }
                self.listed.insert(Kind::EndpointSlices);
            }
        }
        Effect::changed(true)
    }

    fn apply_node(&mut self, event: Event<Node>) -> Effect {
        let before = self.cluster.node_addresses(&self.node);
        let mut effect = Effect::default();
        let new = match step(&mut self.lists.node, event) {
            Step::Buffered => return effect,
            Step::Upsert(o) if self.is_ours(o.metadata.name.as_deref()) => Some(o),
            Step::Delete(o) if self.is_ours(o.metadata.name.as_deref()) => None,
            Step::Upsert(_) | Step::Delete(_) => return effect,
            Step::Replace(list) => {
                self.listed.insert(Kind::Node);
                list.into_iter()
                    .find(|o| self.is_ours(o.metadata.name.as_deref()))
            }
        };
        match new {
            Some(node) => {
                if let Err(e) = self.cluster.insert_node(node) {
                    effect
                        .problems
                        .push(format!("{e} (keeping the previous addresses)"));
                }
            }
            None => {
                self.cluster.remove_node(&self.node);
            }
        }
        // Kubelet rewrites the Node's status every few seconds; only its
        // addresses reach the ruleset.
        effect.changed |= self.cluster.node_addresses(&self.node) != before;
        effect
    }
}

fn insert_service(cluster: &mut Cluster, o: Service) {
    // Services and EndpointSlices are checked when the Service model is
    // computed (a bad one is reported there and skipped), never here.
    let _ = cluster.insert(crate::cluster::Object::Service(o));
}

fn insert_slice(cluster: &mut Cluster, o: EndpointSlice) {
    let _ = cluster.insert(crate::cluster::Object::EndpointSlice(o));
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

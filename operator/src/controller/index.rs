//! Watch events → the cluster model and its compiled IR, kept current, and the
//! nodes and address sets each event touched.
//!
//! Pure (no I/O): the run loop feeds it what the four watchers deliver.
//!
//! * Until every watcher has listed its kind once, objects only go into a
//!   [`Cluster`]; then one full compile builds the
//!   [`Index`](crate::policy::incremental::Index) and everything is dirty.
//! * After that, each Namespace, Pod and NetworkPolicy event goes through
//!   [`Index::apply`]: the nodes whose pods changed policy and the sets whose
//!   elements changed are what gets recomputed.
//! * Nodes stay out of the Index: the compiler uses a Node only for its
//!   addresses, so the Index compiles without Nodes, and a Node event touches
//!   only its own share (this also makes the frequent Node status updates
//!   free when the addresses did not change).
//! * A watcher that lists again (after its watch expired) delivers every
//!   object anew: unchanged objects (same `resourceVersion`) are skipped, and
//!   the ones missing from the new list are removed.
//! * An object the model rejects is remembered with the error until it is
//!   fixed or deleted, so the run loop can tell about it on the object.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::Resource;
use kube_nft_crds::ir::CompiledPolicy;

use super::desired::Dirty;
use crate::cluster::{Cluster, Object, ObjectKey, ValidationError};
use crate::policy::incremental::{Event, Index, IrDelta};

/// The kinds the operator watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy, Kind::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One item from a watcher.
// Moved once through the channel and consumed; boxing the large Pod and Node
// events would cost an allocation each and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Input {
    Namespace(watcher::Event<Namespace>),
    Pod(watcher::Event<Pod>),
    NetworkPolicy(watcher::Event<NetworkPolicy>),
    Node(watcher::Event<Node>),
}

/// An object the model refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The object at the refused `resourceVersion`.
    pub reference: ObjectReference,
    pub error: ValidationError,
    /// An earlier valid version is still what is enforced.
    pub kept_previous: bool,
}

impl Rejection {
    pub fn resource_version(&self) -> Option<&str> {
        self.reference.resource_version.as_deref()
    }
}

/// `(kind, namespace/name)`; cluster-scoped objects have an empty namespace.
pub type Key = (Kind, ObjectKey);

// One per process.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// Not every kind listed yet.
    Syncing(Cluster),
    Live(Index),
}

/// The model, its compile, and what the run loop needs to know about both.
pub struct State {
    phase: Phase,
    /// Nodes only (see the module doc).
    nodes: Cluster,
    node_addresses: BTreeMap<String, Vec<IpAddr>>,
    /// Keys listed since each relisting kind's `Init`.
    relisting: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    synced: BTreeSet<Kind>,
    rejected: BTreeMap<Key, Rejection>,
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

impl State {
    pub fn new() -> State {
        State {
            phase: Phase::Syncing(Cluster::new()),
            nodes: Cluster::new(),
            node_addresses: BTreeMap::new(),
            relisting: BTreeMap::new(),
            synced: BTreeSet::new(),
            rejected: BTreeMap::new(),
        }
    }

    /// Every kind has been listed once and the IR is compiled.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live(_))
    }

    /// Kinds not listed yet.
    pub fn unsynced(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| !self.synced.contains(k))
            .collect()
    }

    /// The compiled IR, once live. Its `nodes` carry no addresses; see
    /// [`State::node_addresses`].
    pub fn ir(&self) -> Option<&CompiledPolicy> {
        match &self.phase {
            Phase::Live(index) => Some(index.ir()),
            Phase::Syncing(_) => None,
        }
    }

    /// Every known Node and its `InternalIP`s.
    pub fn node_addresses(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.node_addresses
    }

    /// Namespaces, Pods and NetworkPolicies.
    pub fn cluster(&self) -> &Cluster {
        match &self.phase {
            Phase::Live(index) => index.cluster(),
            Phase::Syncing(cluster) => cluster,
        }
    }

    /// Objects currently refused, by key.
    pub fn rejected(&self) -> &BTreeMap<Key, Rejection> {
        &self.rejected
    }

    /// Objects held per kind (namespaces only as declared, not the implicit
    /// ones a pod's namespace creates before it is listed).
    pub fn counts(&self) -> [(Kind, usize); 4] {
        let c = self.cluster();
        let declared = c
            .namespaces()
            .values()
            .filter(|n| n.metadata.resource_version.is_some())
            .count();
        [
            (Kind::Namespace, declared),
            (Kind::Pod, c.pods().len()),
            (Kind::NetworkPolicy, c.policies().len()),
            (Kind::Node, self.nodes.nodes().len()),
        ]
    }

    /// Takes one watcher item; returns what it touched. The first time every
    /// kind is listed, the full compile runs and everything is dirty.
    pub fn ingest(&mut self, input: Input) -> Dirty {
        match input {
            Input::Namespace(e) => self.ingest_event(Kind::Namespace, e, Object::Namespace),
            Input::Pod(e) => self.ingest_event(Kind::Pod, e, Object::Pod),
            Input::NetworkPolicy(e) => {
                self.ingest_event(Kind::NetworkPolicy, e, Object::NetworkPolicy)
            }
            Input::Node(e) => self.ingest_event(Kind::Node, e, Object::Node),
        }
    }

    fn ingest_event<K: Resource<DynamicType = ()>>(
        &mut self,
        kind: Kind,
        event: watcher::Event<K>,
        wrap: fn(K) -> Object,
    ) -> Dirty {
        match event {
            watcher::Event::Init => {
                self.relisting.insert(kind, BTreeSet::new());
                Dirty::default()
            }
            watcher::Event::InitApply(o) => {
                let key = key_of(kind, o.meta());
                if let Some(seen) = self.relisting.get_mut(&kind) {
                    seen.insert(key.clone());
                }
                self.upsert(kind, key, reference(&o), wrap(o))
            }
            watcher::Event::Apply(o) => {
                let key = key_of(kind, o.meta());
                self.upsert(kind, key, reference(&o), wrap(o))
            }
            watcher::Event::Delete(o) => {
                let key = key_of(kind, o.meta());
                self.remove(kind, &key)
            }
            watcher::Event::InitDone => self.init_done(kind),
        }
    }

    fn upsert(
        &mut self,
        kind: Kind,
        key: ObjectKey,
        reference: ObjectReference,
        object: Object,
    ) -> Dirty {
        let stored = self
            .stored(kind, &key)
            .and_then(|m| m.resource_version.as_deref());
        if stored.is_some() && stored == reference.resource_version.as_deref() {
            return Dirty::default();
        }
        let result = match object {
            Object::Node(node) => self.upsert_node(&key.name, node),
            object => match &mut self.phase {
                Phase::Syncing(cluster) => cluster.insert(object).map(|()| Dirty::default()),
                Phase::Live(index) => {
                    let event = match object {
                        Object::Namespace(o) => Event::NamespaceUpsert(o),
                        Object::Pod(o) => Event::PodUpsert(o),
                        Object::NetworkPolicy(o) => Event::PolicyUpsert(o),
                        // Not watched (Services and EndpointSlices are the
                        // agents' business) and Nodes are handled above.
                        Object::Service(_) | Object::EndpointSlice(_) | Object::Node(_) => {
                            return Dirty::default();
                        }
                    };
                    index.apply(event).map(|delta| dirty_of(&delta))
                }
            },
        };
        match result {
            Ok(dirty) => {
                self.rejected.remove(&(kind, key));
                dirty
            }
            Err(error) => {
                let kept_previous = self.stored(kind, &key).is_some();
                let rejection = Rejection {
                    reference,
                    error,
                    kept_previous,
                };
                self.rejected.insert((kind, key), rejection);
                Dirty::default()
            }
        }
    }

    fn upsert_node(&mut self, name: &str, node: Node) -> Result<Dirty, ValidationError> {
        self.nodes.insert_node(node)?;
        let addresses = self.nodes.node_addresses(name);
        if self.node_addresses.get(name) == Some(&addresses) {
            return Ok(Dirty::default());
        }
        self.node_addresses.insert(name.to_string(), addresses);
        Ok(self.live_dirty_node(name))
    }

    fn remove(&mut self, kind: Kind, key: &ObjectKey) -> Dirty {
        self.rejected.remove(&(kind, key.clone()));
        if kind == Kind::Node {
            self.nodes.remove_node(&key.name);
            return match self.node_addresses.remove(&key.name) {
                Some(_) => self.live_dirty_node(&key.name),
                None => Dirty::default(),
            };
        }
        match &mut self.phase {
            Phase::Syncing(cluster) => {
                match kind {
                    Kind::Namespace => drop(cluster.remove_namespace(&key.name)),
                    Kind::Pod => drop(cluster.remove_pod(key)),
                    Kind::NetworkPolicy => drop(cluster.remove_policy(key)),
                    Kind::Node => {}
                }
                Dirty::default()
            }
            Phase::Live(index) => {
                let event = match kind {
                    Kind::Namespace => Event::NamespaceRemove(key.name.clone()),
                    Kind::Pod => Event::PodRemove(key.clone()),
                    Kind::NetworkPolicy => Event::PolicyRemove(key.clone()),
                    Kind::Node => return Dirty::default(),
                };
                // Removals are never invalid.
                index.apply(event).map(|d| dirty_of(&d)).unwrap_or_default()
            }
        }
    }

    /// A list of `kind` completed: what it did not list is gone.
    fn init_done(&mut self, kind: Kind) -> Dirty {
        let mut dirty = Dirty::default();
        if let Some(seen) = self.relisting.remove(&kind) {
            let gone: Vec<ObjectKey> = self
                .known(kind)
                .into_iter()
                .filter(|k| !seen.contains(k))
                .collect();
            for key in gone {
                dirty.merge(self.remove(kind, &key));
            }
            self.rejected
                .retain(|(k, key), _| *k != kind || seen.contains(key));
        }
        self.synced.insert(kind);
        if self.synced.len() == Kind::ALL.len() {
            if let Phase::Syncing(cluster) = &mut self.phase {
                let cluster = std::mem::take(cluster);
                self.phase = Phase::Live(Index::new(cluster, None));
                return Dirty::all();
            }
        }
        dirty
    }

    /// Keys of the objects of `kind` the model holds.
    fn known(&self, kind: Kind) -> Vec<ObjectKey> {
        let c = self.cluster();
        match kind {
            Kind::Namespace => c
                .namespaces()
                .keys()
                .map(|n| ObjectKey::new("", n.as_str()))
                .collect(),
            Kind::Pod => c.pods().keys().cloned().collect(),
            Kind::NetworkPolicy => c.policies().keys().cloned().collect(),
            Kind::Node => self
                .nodes
                .nodes()
                .keys()
                .map(|n| ObjectKey::new("", n.as_str()))
                .collect(),
        }
    }

    /// Metadata of the version the model holds.
    fn stored(&self, kind: Kind, key: &ObjectKey) -> Option<&ObjectMeta> {
        let c = self.cluster();
        match kind {
            Kind::Namespace => c.namespace(&key.name).map(|o| &o.metadata),
            Kind::Pod => c.pod(key).map(|o| &o.metadata),
            Kind::NetworkPolicy => c.policies().get(key).map(|o| &o.metadata),
            Kind::Node => self.nodes.nodes().get(&key.name).map(|o| &o.metadata),
        }
    }

    fn live_dirty_node(&self, name: &str) -> Dirty {
        let mut dirty = Dirty::default();
        if self.is_live() {
            dirty.nodes.insert(name.to_string());
        }
        dirty
    }
}

/// The nodes and sets an IR delta touched.
pub fn dirty_of(delta: &IrDelta) -> Dirty {
    let mut dirty = Dirty::default();
    dirty.sets.extend(delta.sets.keys().cloned());
    for pod in delta.pods.values() {
        for node in [&pod.old_node, &pod.new_node] {
            if !node.is_empty() {
                dirty.nodes.insert(node.clone());
            }
        }
    }
    dirty
}

fn key_of(kind: Kind, meta: &ObjectMeta) -> ObjectKey {
    match kind {
        Kind::Pod | Kind::NetworkPolicy => ObjectKey::of(meta),
        Kind::Namespace | Kind::Node => ObjectKey::new("", meta.name.clone().unwrap_or_default()),
    }
}

/// A reference to the object at its `resourceVersion` (kube's
/// `Resource::object_ref` leaves the version out; events name it, so a
/// later broken version is told about again).
pub fn reference<K: Resource<DynamicType = ()>>(o: &K) -> ObjectReference {
    let meta = o.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;

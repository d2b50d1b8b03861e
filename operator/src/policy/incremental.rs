//! Incremental compile: the cluster plus the compiled IR of one node (or of
//! every node), updated per event in time proportional to what the event
//! touches, with the IR delta the renderer turns into a small batch.
//!
//! - A pod added, removed or changed (labels, ports, IPs, phase): each address
//!   set's definition is evaluated against that pod only, before and after, and
//!   only that pod's own [`PodPolicy`] is recompiled (as a policy target).
//! - A namespace relabelled: only sets with a `namespaceSelector` whose verdict
//!   on the namespace flips are re-evaluated, over the pods of that namespace.
//! - A policy added, changed or deleted: the pods its old or new `podSelector`
//!   selects are recompiled; sets it brings are resolved in full, sets no pod
//!   references any more are dropped (reference counts).
//!
//! Invariant (property-tested): after any event sequence, [`Index::ir`] equals
//! `compile_node(cluster, node)` (or `compile(cluster)` for every node).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube_nft_crds::ir::{AddressSetElement, CompiledPolicy, IrPeer, PodPolicy};

use super::compile::{compile_with_defs, empty_node, Compiler, PeerSpec, Scope, SetDef};
use super::selector::CanonicalSelector;
use crate::cluster::{self, Cluster, ObjectKey, ValidationError};

/// A change to the cluster.
// Events are consumed once, right away; boxing would only cost callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    /// A pod added or replaced (relabelled, new ports, IPs, phase, node).
    PodUpsert(Pod),
    PodRemove(ObjectKey),
    /// A namespace declared or relabelled.
    NamespaceUpsert(Namespace),
    NamespaceRemove(String),
    /// A NetworkPolicy added or changed.
    PolicyUpsert(NetworkPolicy),
    PolicyRemove(ObjectKey),
}

/// How one address set changed. `created`: the set is new (its elements are
/// those of [`Index::ir`]; `added`/`removed` are empty). `deleted`: no pod
/// references it any more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetDelta {
    pub created: bool,
    pub deleted: bool,
    /// Sorted.
    pub added: Vec<AddressSetElement>,
    /// Sorted.
    pub removed: Vec<AddressSetElement>,
}

/// How one pod's policy changed (`None`: not isolated / not in the share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDelta {
    pub old_node: String,
    pub old: Option<PodPolicy>,
    pub new_node: String,
    pub new: Option<PodPolicy>,
}

/// What one event changed in the IR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IrDelta {
    pub sets: BTreeMap<String, SetDelta>,
    /// Only pods whose [`PodPolicy`] (or node) really changed.
    pub pods: BTreeMap<ObjectKey, PodDelta>,
}

impl IrDelta {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.pods.is_empty()
    }

    /// Element changes in all sets (the size of the set-element part).
    pub fn element_changes(&self) -> usize {
        self.sets
            .values()
            .map(|s| s.added.len() + s.removed.len())
            .sum()
    }
}

/// Net element changes of one set during an event.
#[derive(Default)]
struct Pending {
    created: bool,
    dropped: bool,
    added: BTreeSet<AddressSetElement>,
    removed: BTreeSet<AddressSetElement>,
}

/// The cluster and its compiled IR for one node (or all), kept in step.
#[derive(Debug, Clone)]
pub struct Index {
    cluster: Cluster,
    node: Option<String>,
    ir: CompiledPolicy,
    defs: HashMap<String, SetDef>,
    /// References to each set from the pods of the share.
    refs: HashMap<String, usize>,
    /// Every pod holding an IP (duplicates are possible, transiently).
    pods_by_ip: HashMap<IpAddr, BTreeSet<ObjectKey>>,
}

impl Index {
    /// Compiles `cluster` for `node` (`None`: every node) once, in full.
    pub fn new(cluster: Cluster, node: Option<&str>) -> Index {
        let node = node.map(str::to_string);
        let (ir, defs) = match &node {
            Some(n) => compile_with_defs(&cluster, |x| x == n),
            None => compile_with_defs(&cluster, |_| true),
        };
        let mut refs = HashMap::new();
        for pp in ir.nodes.values().flat_map(|n| &n.pods) {
            for name in set_refs(pp) {
                *refs.entry(name.to_string()).or_insert(0) += 1;
            }
        }
        let mut pods_by_ip: HashMap<IpAddr, BTreeSet<ObjectKey>> = HashMap::new();
        for (key, pod) in cluster.pods() {
            for ip in cluster::pod_ips(pod) {
                pods_by_ip.entry(ip).or_default().insert(key.clone());
            }
        }
        Index {
            cluster,
            node,
            ir,
            defs: defs.into_iter().collect(),
            refs,
            pods_by_ip,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The current IR: equal to `compile_node(cluster, node)` (or `compile`).
    pub fn ir(&self) -> &CompiledPolicy {
        &self.ir
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Applies `event` to the cluster and the IR and returns what changed. An
    /// invalid object is rejected with the model and IR unchanged.
    pub fn apply(&mut self, event: Event) -> Result<IrDelta, ValidationError> {
        let mut cx = EventCx::default();
        match event {
            Event::PodUpsert(pod) => {
                let key = ObjectKey::of(&pod.metadata);
                let old = self.cluster.pod(&key).cloned();
                self.cluster.insert_pod(pod)?;
                self.pod_changed(&mut cx, &key, old.as_ref());
            }
            Event::PodRemove(key) => {
                if let Some(old) = self.cluster.remove_pod(&key) {
                    self.pod_changed(&mut cx, &key, Some(&old));
                }
            }
            Event::NamespaceUpsert(ns) => {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let before = self.cluster.namespace_labels(&name);
                self.cluster.insert_namespace(ns);
                self.namespace_changed(&mut cx, &name, &before);
            }
            Event::NamespaceRemove(name) => {
                let before = self.cluster.namespace_labels(&name);
                if self.cluster.remove_namespace(&name).is_some() {
                    self.namespace_changed(&mut cx, &name, &before);
                }
            }
            Event::PolicyUpsert(policy) => {
                let key = ObjectKey::of(&policy.metadata);
                let old = self.cluster.policies().get(&key).cloned();
                self.cluster.insert_policy(policy)?;
                let new = self.cluster.policies().get(&key).cloned();
                self.policy_changed(&mut cx, &key, old.as_ref(), new.as_ref());
            }
            Event::PolicyRemove(key) => {
                if let Some(old) = self.cluster.remove_policy(&key) {
                    self.policy_changed(&mut cx, &key, Some(&old), None);
                }
            }
        }
        Ok(self.finish(cx))
    }

    fn wants(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }

    /// Pod `key` went from `old` to what the cluster holds now.
    fn pod_changed(&mut self, cx: &mut EventCx, key: &ObjectKey, old: Option<&Pod>) {
        let ns_labels = self.cluster.namespace_labels(&key.namespace);
        // 1. Address sets: this pod's contribution before and after.
        let old_ips = old.map(cluster::pod_ips).unwrap_or_default();
        let new_pod = self.cluster.pod(key).cloned();
        let new_ips = new_pod.as_ref().map(cluster::pod_ips).unwrap_or_default();
        let old_peer = old.filter(|p| cluster::is_policy_peer(p));
        let new_peer = new_pod.as_ref().filter(|p| cluster::is_policy_peer(p));
        if old_peer.is_some() || new_peer.is_some() {
            let names: Vec<String> = self.defs.keys().cloned().collect();
            let (mut before, mut after) = (BTreeSet::new(), BTreeSet::new());
            for name in names {
                let def = &self.defs[&name];
                before.clear();
                after.clear();
                if let Some(p) = old_peer {
                    def.pod_elements(key, p, &old_ips, &ns_labels, &mut before);
                }
                if let Some(p) = new_peer {
                    def.pod_elements(key, p, &new_ips, &ns_labels, &mut after);
                }
                if before != after {
                    self.update_elements(cx, &name, key, &before, &after);
                }
            }
        }
        // The IP index follows the pod (after the sets: removal checks look
        // at the other holders of an IP).
        for ip in &old_ips {
            if let Some(keys) = self.pods_by_ip.get_mut(ip) {
                keys.remove(key);
                if keys.is_empty() {
                    self.pods_by_ip.remove(ip);
                }
            }
        }
        for ip in &new_ips {
            self.pods_by_ip.entry(*ip).or_default().insert(key.clone());
        }
        // 2. Its own policy as a target.
        let old_node = old.and_then(cluster::pod_node).unwrap_or("").to_string();
        self.recompile_pod(cx, key, &old_node);
    }

    /// Moves the elements only this pod held out of set `name` and adds its new
    /// ones. An element another pod still contributes stays.
    fn update_elements(
        &mut self,
        cx: &mut EventCx,
        name: &str,
        key: &ObjectKey,
        before: &BTreeSet<AddressSetElement>,
        after: &BTreeSet<AddressSetElement>,
    ) {
        for e in before.difference(after) {
            if !self.held_by_other(name, key, e) {
                self.remove_element(cx, name, e);
            }
        }
        for e in after.difference(before) {
            self.add_element(cx, name, e);
        }
    }

    /// Does a pod other than `key` contribute `e` to set `name`?
    fn held_by_other(&self, name: &str, key: &ObjectKey, e: &AddressSetElement) -> bool {
        let Some(holders) = self.pods_by_ip.get(&e.ip) else {
            return false;
        };
        let def = &self.defs[name];
        let mut out = BTreeSet::new();
        holders.iter().filter(|k| *k != key).any(|k| {
            let Some(pod) = self.cluster.pod(k).filter(|p| cluster::is_policy_peer(p)) else {
                return false;
            };
            out.clear();
            let labels = self.cluster.namespace_labels(&k.namespace);
            def.pod_elements(k, pod, &cluster::pod_ips(pod), &labels, &mut out);
            out.contains(e)
        })
    }

    fn add_element(&mut self, cx: &mut EventCx, name: &str, e: &AddressSetElement) {
        let set = self.ir.address_sets.get_mut(name).expect("defined set");
        if let Err(i) = set.elements.binary_search(e) {
            set.elements.insert(i, e.clone());
            let p = cx.sets.entry(name.to_string()).or_default();
            if !p.removed.remove(e) {
                p.added.insert(e.clone());
            }
        }
    }

    fn remove_element(&mut self, cx: &mut EventCx, name: &str, e: &AddressSetElement) {
        let set = self.ir.address_sets.get_mut(name).expect("defined set");
        if let Ok(i) = set.elements.binary_search(e) {
            set.elements.remove(i);
            let p = cx.sets.entry(name.to_string()).or_default();
            if !p.added.remove(e) {
                p.removed.insert(e.clone());
            }
        }
    }

    /// Recompiles pod `key` as a policy target; `old_node` is where the IR
    /// lists it now (if anywhere).
    fn recompile_pod(&mut self, cx: &mut EventCx, key: &ObjectKey, old_node: &str) {
        let old = self.take_pod(old_node, key);
        let pod = self.cluster.pod(key);
        let new_node = pod.and_then(cluster::pod_node).unwrap_or("").to_string();
        let new = match pod {
            Some(pod) if self.wants(&new_node) => {
                let sets = std::mem::take(&mut self.ir.address_sets);
                let mut compiler = Compiler::new(&self.cluster, sets);
                let pp = compiler.pod_policy(key, pod);
                self.ir.address_sets = compiler.sets;
                for (name, def) in compiler.defs {
                    cx.sets.entry(name.clone()).or_default().created = true;
                    self.defs.insert(name, def);
                }
                pp
            }
            _ => None,
        };
        if let Some(pp) = &new {
            for name in set_refs(pp) {
                *self.refs.entry(name.to_string()).or_insert(0) += 1;
            }
        }
        if let Some(pp) = &old {
            for name in set_refs(pp) {
                let n = self.refs.get_mut(name).expect("counted reference");
                *n -= 1;
                if *n == 0 {
                    cx.unreferenced.insert(name.to_string());
                }
            }
        }
        if let Some(pp) = &new {
            self.put_pod(&new_node, pp.clone());
        }
        if old != new || (old.is_some() && old_node != new_node) {
            let entry = cx.pods.entry(key.clone()).or_insert_with(|| PodDelta {
                old_node: old_node.to_string(),
                old: old.clone(),
                new_node: String::new(),
                new: None,
            });
            entry.new_node = new_node;
            entry.new = new;
        }
    }

    fn take_pod(&mut self, node: &str, key: &ObjectKey) -> Option<PodPolicy> {
        let np = self.ir.nodes.get_mut(node)?;
        let i = np
            .pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&pod_sort_key(key)))
            .ok()?;
        let pp = np.pods.remove(i);
        if np.pods.is_empty() && !self.cluster.nodes().contains_key(node) {
            self.ir.nodes.remove(node);
        }
        Some(pp)
    }

    fn put_pod(&mut self, node: &str, pp: PodPolicy) {
        let cluster = &self.cluster;
        let np = self
            .ir
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| empty_node(cluster, node));
        let key = (pp.namespace.clone(), pp.name.clone());
        match np
            .pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(&key.0, &key.1)))
        {
            Ok(i) => np.pods[i] = pp,
            Err(i) => np.pods.insert(i, pp),
        }
    }

    /// Namespace `name` had labels `before`; re-evaluate the sets whose
    /// namespace selector changes its verdict, over the pods of `name`.
    fn namespace_changed(
        &mut self,
        cx: &mut EventCx,
        name: &str,
        before: &BTreeMap<String, String>,
    ) {
        let after = self.cluster.namespace_labels(name);
        if &after == before {
            return;
        }
        let affected: Vec<String> = self
            .defs
            .iter()
            .filter(|(_, def)| match &def.peer {
                PeerSpec::Selector(s) => match &s.scope {
                    Scope::Namespaces(sel) => sel.matches(before) != sel.matches(&after),
                    Scope::Namespace(_) => false,
                },
                _ => false,
            })
            .map(|(n, _)| n.clone())
            .collect();
        if affected.is_empty() {
            return;
        }
        let pods: Vec<(ObjectKey, Pod)> = pods_in(&self.cluster, name)
            .filter(|(_, p)| cluster::is_policy_peer(p))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let (mut old_el, mut new_el) = (BTreeSet::new(), BTreeSet::new());
        for set in &affected {
            for (key, pod) in &pods {
                let ips = cluster::pod_ips(pod);
                old_el.clear();
                new_el.clear();
                let def = &self.defs[set];
                def.pod_elements(key, pod, &ips, before, &mut old_el);
                def.pod_elements(key, pod, &ips, &after, &mut new_el);
                if old_el != new_el {
                    self.update_elements(cx, set, key, &old_el, &new_el);
                }
            }
        }
    }

    /// Recompiles the pods the old or the new version of policy `key` selects.
    fn policy_changed(
        &mut self,
        cx: &mut EventCx,
        key: &ObjectKey,
        old: Option<&NetworkPolicy>,
        new: Option<&NetworkPolicy>,
    ) {
        let selector = |p: Option<&NetworkPolicy>| {
            p.and_then(|p| p.spec.as_ref()).map(|s| {
                s.pod_selector
                    .as_ref()
                    .map(CanonicalSelector::new)
                    .unwrap_or_default()
            })
        };
        let (old_sel, new_sel) = (selector(old), selector(new));
        let targets: Vec<(ObjectKey, String)> = pods_in(&self.cluster, &key.namespace)
            .filter(|(_, pod)| {
                let labels = super::compile::labels_of(pod);
                old_sel.as_ref().is_some_and(|s| s.matches(labels))
                    || new_sel.as_ref().is_some_and(|s| s.matches(labels))
            })
            .map(|(k, pod)| (k.clone(), cluster::pod_node(pod).unwrap_or("").to_string()))
            .filter(|(_, node)| self.wants(node))
            .collect();
        for (pod, node) in targets {
            self.recompile_pod(cx, &pod, &node);
        }
    }

    /// Drops sets nothing references any more and builds the delta.
    fn finish(&mut self, mut cx: EventCx) -> IrDelta {
        for name in std::mem::take(&mut cx.unreferenced) {
            if self.refs.get(&name) == Some(&0) {
                self.refs.remove(&name);
                self.defs.remove(&name);
                self.ir.address_sets.remove(&name);
                cx.sets.entry(name).or_default().dropped = true;
            }
        }
        let mut delta = IrDelta::default();
        for (name, p) in cx.sets {
            let sd = match (p.created, p.dropped) {
                // Created and dropped within one event: nothing to tell.
                (true, true) => continue,
                (false, true) => SetDelta {
                    deleted: true,
                    ..Default::default()
                },
                (true, false) => SetDelta {
                    created: true,
                    ..Default::default()
                },
                (false, false) if p.added.is_empty() && p.removed.is_empty() => continue,
                (false, false) => SetDelta {
                    added: p.added.into_iter().collect(),
                    removed: p.removed.into_iter().collect(),
                    ..Default::default()
                },
            };
            delta.sets.insert(name, sd);
        }
        delta.pods = cx.pods;
        delta
            .pods
            .retain(|_, d| d.old != d.new || d.old_node != d.new_node);
        delta
    }
}

/// Per-event bookkeeping.
#[derive(Default)]
struct EventCx {
    sets: BTreeMap<String, Pending>,
    pods: BTreeMap<ObjectKey, PodDelta>,
    unreferenced: BTreeSet<String>,
}

fn pod_sort_key(key: &ObjectKey) -> (&str, &str) {
    (key.namespace.as_str(), key.name.as_str())
}

/// Pods of one namespace, in name order.
fn pods_in<'a>(
    cluster: &'a Cluster,
    namespace: &str,
) -> impl Iterator<Item = (&'a ObjectKey, &'a Pod)> + 'a {
    let ns = namespace.to_string();
    cluster
        .pods()
        .range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == ns)
}

/// Names of the address sets a pod's rules reference (with repetition).
fn set_refs(pp: &PodPolicy) -> impl Iterator<Item = &str> {
    pp.ingress
        .iter()
        .chain(&pp.egress)
        .flat_map(|r| &r.peers)
        .filter_map(|p| match p {
            IrPeer::AddressSet { name } | IrPeer::AddressPortSet { name } => Some(name.as_str()),
            _ => None,
        })
}

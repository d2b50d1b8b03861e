//! The compiler: cluster model → policy IR ([`kube_nft_crds::ir`]).
//!
//! Pure and deterministic. Selector peers become shared address sets named after
//! the selector's canonical form (`peer-<hash>`); a named port in an egress rule
//! becomes an (IP, protocol, port) set over the peer's pods (`ports-<hash>`),
//! because the name may resolve to a different number on each destination pod.
//! Named ports in ingress rules resolve against the selected pod itself into
//! plain numbers.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nft_crds::ir::{
    AddressSet, AddressSetElement, CompiledPolicy, IrNamedPort, IrPeer, IrPort, IrRule, NodePolicy,
    PodPolicy, Protocol,
};

use super::selector::{stable_hash, CanonicalSelector};
use crate::cluster::{self, Cluster, ObjectKey};

/// Compiles every node's share and the address sets they use. Every Node object
/// gets an entry, even with no isolated pod.
pub fn compile(cluster: &Cluster) -> CompiledPolicy {
    compile_filtered(cluster, |_| true)
}

/// One node's share (pods with `spec.nodeName == node`) and only the address
/// sets it references.
pub fn compile_node(cluster: &Cluster, node: &str) -> CompiledPolicy {
    compile_filtered(cluster, |n| n == node)
}

fn compile_filtered(cluster: &Cluster, want_node: impl Fn(&str) -> bool) -> CompiledPolicy {
    compile_with_defs(cluster, want_node).0
}

/// [`compile`] restricted to the nodes `want_node` accepts, with the definition
/// of every address set (for incremental updates).
pub(crate) fn compile_with_defs(
    cluster: &Cluster,
    want_node: impl Fn(&str) -> bool,
) -> (CompiledPolicy, BTreeMap<String, SetDef>) {
    let mut cx = Compiler::new(cluster, BTreeMap::new());
    let mut nodes: BTreeMap<String, NodePolicy> = cluster
        .nodes()
        .keys()
        .filter(|n| want_node(n))
        .map(|n| (n.clone(), empty_node(cluster, n)))
        .collect();
    for (key, pod) in cluster.pods() {
        let node = cluster::pod_node(pod).unwrap_or("");
        if !want_node(node) {
            continue;
        }
        if let Some(pp) = cx.pod_policy(key, pod) {
            nodes
                .entry(node.to_string())
                .or_insert_with(|| empty_node(cluster, node))
                .pods
                .push(pp);
        }
    }
    let ir = CompiledPolicy {
        address_sets: cx.sets,
        nodes,
    };
    (ir, cx.defs)
}

pub(crate) fn empty_node(cluster: &Cluster, node: &str) -> NodePolicy {
    NodePolicy {
        node: node.to_string(),
        node_addresses: cluster.node_addresses(node),
        pods: Vec::new(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// (ingress, egress) policy types after API defaulting.
fn effective_types(policy: &NetworkPolicy) -> (bool, bool) {
    let spec = policy.spec.as_ref();
    let listed = spec
        .and_then(|s| s.policy_types.as_ref())
        .filter(|t| !t.is_empty());
    match listed {
        Some(t) => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        None => (
            true,
            spec.and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty()),
        ),
    }
}

/// Who a selector peer stands for, canonically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scope {
    /// The policy's own namespace.
    Namespace(String),
    Namespaces(CanonicalSelector),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SelectorPeer {
    pub(crate) scope: Scope,
    pub(crate) pods: CanonicalSelector,
}

impl SelectorPeer {
    fn new(policy_ns: &str, peer: &NetworkPolicyPeer) -> Self {
        let scope = match &peer.namespace_selector {
            None => Scope::Namespace(policy_ns.to_string()),
            Some(s) => Scope::Namespaces(CanonicalSelector::new(s)),
        };
        // An absent podSelector and `podSelector: {}` both mean every pod of
        // the namespaces in scope.
        let pods = peer
            .pod_selector
            .as_ref()
            .map(CanonicalSelector::new)
            .unwrap_or_default();
        SelectorPeer { scope, pods }
    }

    fn canonical(&self) -> String {
        match &self.scope {
            Scope::Namespace(ns) => format!("namespace={ns};pods={}", self.pods),
            Scope::Namespaces(s) => format!("namespaces={s};pods={}", self.pods),
        }
    }

    /// Does the peer cover pod `key`, whose namespace has `ns_labels`?
    pub(crate) fn matches(
        &self,
        key: &ObjectKey,
        pod: &Pod,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        let ns_ok = match &self.scope {
            Scope::Namespace(ns) => &key.namespace == ns,
            Scope::Namespaces(s) => s.matches(ns_labels),
        };
        ns_ok && self.pods.matches(labels_of(pod))
    }
}

/// A pod's labels, borrowed.
pub(crate) fn labels_of(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// A peer of a rule before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerSpec {
    Any,
    Selector(SelectorPeer),
    Cidr { cidr: IpNet, except: Vec<IpNet> },
}

impl PeerSpec {
    fn new(policy_ns: &str, peer: &NetworkPolicyPeer) -> Option<Self> {
        match &peer.ip_block {
            Some(b) => {
                let cidr: IpNet = b.cidr.parse().ok()?;
                let mut except: Vec<IpNet> = b
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| e.parse::<IpNet>().ok())
                    .map(|e| e.trunc())
                    .collect();
                except.sort();
                except.dedup();
                Some(PeerSpec::Cidr {
                    cidr: cidr.trunc(),
                    except,
                })
            }
            None => Some(PeerSpec::Selector(SelectorPeer::new(policy_ns, peer))),
        }
    }

    fn canonical(&self) -> String {
        match self {
            PeerSpec::Any => "any".into(),
            PeerSpec::Selector(s) => s.canonical(),
            PeerSpec::Cidr { cidr, except } => {
                let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                format!("cidr={cidr};except={}", ex.join(","))
            }
        }
    }

    /// Does this peer cover `ip` of pod `key`?
    fn covers(
        &self,
        key: &ObjectKey,
        pod: &Pod,
        ns_labels: &BTreeMap<String, String>,
        ip: std::net::IpAddr,
    ) -> bool {
        match self {
            PeerSpec::Any => true,
            PeerSpec::Selector(s) => s.matches(key, pod, ns_labels),
            PeerSpec::Cidr { cidr, except } => {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
        }
    }
}

/// What an address set stands for: enough to decide which elements one pod
/// contributes, without looking at any other pod (incremental updates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetDef {
    pub(crate) peer: PeerSpec,
    /// `Some`: an (IP, protocol, port) set for these named ports.
    pub(crate) named: Option<BTreeSet<(Protocol, String)>>,
}

impl SetDef {
    /// The elements pod `key` contributes to the set: `ips` are its IPs
    /// ([`cluster::pod_ips`]), `ns_labels` the labels of its namespace. The
    /// caller checks [`cluster::is_policy_peer`] (others contribute nothing).
    pub(crate) fn pod_elements(
        &self,
        key: &ObjectKey,
        pod: &Pod,
        ips: &[std::net::IpAddr],
        ns_labels: &BTreeMap<String, String>,
        out: &mut BTreeSet<AddressSetElement>,
    ) {
        match &self.named {
            None => {
                let PeerSpec::Selector(s) = &self.peer else {
                    return;
                };
                if s.matches(key, pod, ns_labels) {
                    out.extend(ips.iter().map(|&ip| AddressSetElement {
                        ip,
                        protocol: None,
                        port: None,
                    }));
                }
            }
            Some(named) => {
                for &ip in ips {
                    if !self.peer.covers(key, pod, ns_labels, ip) {
                        continue;
                    }
                    for (protocol, port_name) in named {
                        if let Some(port) = cluster::named_port(pod, port_name, *protocol) {
                            out.insert(AddressSetElement {
                                ip,
                                protocol: Some(*protocol),
                                port: Some(port),
                            });
                        }
                    }
                }
            }
        }
    }
}

pub(crate) struct Compiler<'a> {
    cluster: &'a Cluster,
    pub(crate) sets: BTreeMap<String, AddressSet>,
    /// Definition of every set this compiler created.
    pub(crate) defs: BTreeMap<String, SetDef>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl<'a> Compiler<'a> {
    /// A compiler that treats the sets in `sets` as resolved already.
    pub(crate) fn new(cluster: &'a Cluster, sets: BTreeMap<String, AddressSet>) -> Self {
        Compiler {
            cluster,
            sets,
            defs: BTreeMap::new(),
            ns_labels: BTreeMap::new(),
        }
    }

    /// Every pod's contribution to a new set.
    fn resolve(&mut self, name: String, canonical: String, def: SetDef) {
        if self.ns_labels.is_empty() {
            self.ns_labels = self
                .cluster
                .namespaces()
                .keys()
                .map(|n| (n.clone(), self.cluster.namespace_labels(n)))
                .collect();
        }
        let empty = BTreeMap::new();
        let mut elements = BTreeSet::new();
        for (key, pod) in self.cluster.pods() {
            if !cluster::is_policy_peer(pod) {
                continue;
            }
            let ns_labels = self.ns_labels.get(&key.namespace).unwrap_or(&empty);
            def.pod_elements(key, pod, &cluster::pod_ips(pod), ns_labels, &mut elements);
        }
        self.insert_set(name.clone(), canonical, elements);
        self.defs.insert(name, def);
    }

    pub(crate) fn pod_policy(&mut self, key: &ObjectKey, pod: &Pod) -> Option<PodPolicy> {
        if !cluster::is_policy_peer(pod) {
            return None;
        }
        let labels = labels_of(pod);
        let mut ingress_isolated = false;
        let mut egress_isolated = false;
        let mut ingress = Vec::new();
        let mut egress = Vec::new();
        for (pk, policy) in self.cluster.policies_in(&key.namespace) {
            let Some(spec) = &policy.spec else { continue };
            let selector = spec
                .pod_selector
                .as_ref()
                .map(CanonicalSelector::new)
                .unwrap_or_default();
            if !selector.matches(labels) {
                continue;
            }
            let (ing, eg) = effective_types(policy);
            let name = pk.to_string();
            if ing {
                ingress_isolated = true;
                for (i, r) in spec.ingress.iter().flatten().enumerate() {
                    let rule = (r.from.as_deref(), r.ports.as_deref());
                    ingress.extend(self.rule(Dir::Ingress, &name, &pk.namespace, i, rule, pod));
                }
            }
            if eg {
                egress_isolated = true;
                for (i, r) in spec.egress.iter().flatten().enumerate() {
                    let rule = (r.to.as_deref(), r.ports.as_deref());
                    egress.extend(self.rule(Dir::Egress, &name, &pk.namespace, i, rule, pod));
                }
            }
        }
        if !ingress_isolated && !egress_isolated {
            return None;
        }
        Some(PodPolicy {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            ips: cluster::pod_ips(pod),
            ingress_isolated,
            egress_isolated,
            ingress,
            egress,
        })
    }

    /// The IR rules of one policy rule (zero, one, or two when an egress rule
    /// mixes numeric and named ports).
    fn rule(
        &mut self,
        dir: Dir,
        policy: &str,
        policy_ns: &str,
        rule_index: usize,
        (peers, ports): (Option<&[NetworkPolicyPeer]>, Option<&[NetworkPolicyPort]>),
        pod: &Pod,
    ) -> Vec<IrRule> {
        let peers: Vec<PeerSpec> = match peers.unwrap_or_default() {
            [] => vec![PeerSpec::Any],
            list => list
                .iter()
                .filter_map(|p| PeerSpec::new(policy_ns, p))
                .collect(),
        };
        let ports = ports.unwrap_or_default();
        let make = |peers, ports, named_ports| IrRule {
            policy: policy.to_string(),
            rule_index,
            peers,
            ports,
            named_ports,
        };
        if ports.is_empty() {
            let ir_peers = peers.iter().map(|p| self.plain_peer(p)).collect();
            return vec![make(ir_peers, Vec::new(), Vec::new())];
        }
        let mut numeric = BTreeSet::new();
        let mut local_named = BTreeSet::new();
        let mut named = BTreeSet::new();
        for p in ports {
            let protocol = p
                .protocol
                .as_deref()
                .map_or(Some(Protocol::Tcp), Protocol::parse);
            let Some(protocol) = protocol else { continue };
            match &p.port {
                None => {
                    numeric.insert(IrPort {
                        protocol,
                        port: None,
                        end_port: None,
                    });
                }
                Some(IntOrString::Int(n)) => {
                    let (Ok(port), end_port) = (
                        u16::try_from(*n),
                        p.end_port.and_then(|e| u16::try_from(e).ok()),
                    ) else {
                        continue;
                    };
                    numeric.insert(IrPort {
                        protocol,
                        port: Some(port),
                        end_port: end_port.filter(|e| *e != port),
                    });
                }
                Some(IntOrString::String(name)) => match dir {
                    // Ingress: the destination is the selected pod itself.
                    Dir::Ingress => {
                        if let Some(port) = cluster::named_port(pod, name, protocol) {
                            local_named.insert(IrNamedPort {
                                protocol,
                                name: name.clone(),
                                port,
                            });
                        }
                    }
                    Dir::Egress => {
                        named.insert((protocol, name.clone()));
                    }
                },
            }
        }
        // A rule whose ports all failed to resolve allows nothing: it yields
        // no IR rule (the pod stays isolated through `*_isolated`).
        let mut out = Vec::new();
        if !numeric.is_empty() || !local_named.is_empty() {
            let ir_peers = peers.iter().map(|p| self.plain_peer(p)).collect();
            out.push(make(
                ir_peers,
                numeric.into_iter().collect(),
                local_named.into_iter().collect(),
            ));
        }
        if !named.is_empty() {
            let ir_peers = peers.iter().map(|p| self.port_set(p, &named)).collect();
            out.push(make(ir_peers, Vec::new(), Vec::new()));
        }
        out
    }

    fn plain_peer(&mut self, peer: &PeerSpec) -> IrPeer {
        match peer {
            PeerSpec::Any => IrPeer::Any,
            PeerSpec::Cidr { cidr, except } => IrPeer::Cidr {
                cidr: cidr.to_string(),
                except: except.iter().map(ToString::to_string).collect(),
            },
            PeerSpec::Selector(s) => {
                let canonical = s.canonical();
                let name = format!("peer-{:016x}", stable_hash(&canonical));
                if !self.sets.contains_key(&name) {
                    let def = SetDef {
                        peer: peer.clone(),
                        named: None,
                    };
                    self.resolve(name.clone(), canonical, def);
                }
                IrPeer::AddressSet { name }
            }
        }
    }

    /// The (IP, protocol, port) set of the pods `peer` covers, for the named
    /// ports each of them declares.
    fn port_set(&mut self, peer: &PeerSpec, named: &BTreeSet<(Protocol, String)>) -> IrPeer {
        let names: Vec<String> = named.iter().map(|(p, n)| format!("{p}/{n}")).collect();
        let canonical = format!("{};namedPorts={}", peer.canonical(), names.join(","));
        let name = format!("ports-{:016x}", stable_hash(&canonical));
        if !self.sets.contains_key(&name) {
            let def = SetDef {
                peer: peer.clone(),
                named: Some(named.clone()),
            };
            self.resolve(name.clone(), canonical, def);
        }
        IrPeer::AddressPortSet { name }
    }

    fn insert_set(
        &mut self,
        name: String,
        selector: String,
        elements: BTreeSet<AddressSetElement>,
    ) {
        self.sets.insert(
            name.clone(),
            AddressSet {
                name,
                selector,
                elements: elements.into_iter().collect(),
            },
        );
    }
}

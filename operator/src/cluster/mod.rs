//! The cluster object model: the Kubernetes objects kube-nft reads, indexed for
//! the lookups the policy engine needs. Pure data; the only I/O is in [`load`].
//!
//! Conventions the rest of the engine relies on:
//!
//! * Every namespace carries the `kubernetes.io/metadata.name` label, as the API
//!   server sets it (so `namespaceSelector` can match namespaces by name).
//! * A namespace referenced by a pod or policy but never declared is created
//!   implicitly, with only that label. A later declaration replaces it.
//! * Objects are validated on insertion ([`validate`]); an invalid object is
//!   rejected with an error naming the object and field, and the rest of the
//!   cluster is unaffected.

pub mod load;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use validate::ValidationError;

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Key of a namespaced object (`default` namespace when unset, like kubectl).
    pub fn of(meta: &ObjectMeta) -> Self {
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ObjectKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ObjectKey::new(ns, name))
            }
            _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
        }
    }
}

/// One object of a kind the model holds.
// Objects are moved once into the model, never stored as `Object`s, so boxing
// the large variants would cost every caller and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
    Node(Node),
}

/// The object model. Insert through the `insert_*` methods so that validation,
/// implicit namespaces and the IP index stay consistent.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<ObjectKey, Pod>,
    services: BTreeMap<ObjectKey, Service>,
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    policies: BTreeMap<ObjectKey, NetworkPolicy>,
    nodes: BTreeMap<String, Node>,
    /// Node addresses not in the Node object (the lab or agent knows them).
    extra_node_addresses: BTreeMap<String, BTreeSet<IpAddr>>,
    /// IP → policy peer pod (see [`is_policy_peer`]).
    pod_by_ip: BTreeMap<IpAddr, ObjectKey>,
    /// IP → every policy peer pod holding it, so a removal finds the heir of
    /// a duplicate IP without walking all pods.
    ip_holders: BTreeMap<IpAddr, BTreeSet<ObjectKey>>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates and inserts (or replaces) any supported object.
    pub fn insert(&mut self, object: Object) -> Result<(), ValidationError> {
        match object {
            Object::Namespace(o) => {
                self.insert_namespace(o);
                Ok(())
            }
            Object::Pod(o) => self.insert_pod(o),
            Object::Service(o) => {
                let key = ObjectKey::of(&o.metadata);
                self.ensure_namespace(&key.namespace);
                self.services.insert(key, o);
                Ok(())
            }
            Object::EndpointSlice(o) => {
                let key = ObjectKey::of(&o.metadata);
                self.ensure_namespace(&key.namespace);
                self.endpoint_slices.insert(key, o);
                Ok(())
            }
            Object::NetworkPolicy(o) => self.insert_policy(o),
            Object::Node(o) => self.insert_node(o),
        }
    }

    pub fn insert_namespace(&mut self, mut ns: Namespace) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        ns.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        self.namespaces.insert(name, ns);
    }

    /// Creates `name` with only the metadata.name label if it was never declared.
    fn ensure_namespace(&mut self, name: &str) {
        if !self.namespaces.contains_key(name) {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.into());
            self.insert_namespace(ns);
        }
    }

    pub fn insert_pod(&mut self, pod: Pod) -> Result<(), ValidationError> {
        validate::pod(&pod)?;
        let key = ObjectKey::of(&pod.metadata);
        self.remove_pod(&key);
        self.ensure_namespace(&key.namespace);
        if is_policy_peer(&pod) {
            for ip in pod_ips(&pod) {
                // First pod wins on a duplicate IP; validation cannot see the
                // other pods, and a stale duplicate is a transient state.
                self.pod_by_ip.entry(ip).or_insert_with(|| key.clone());
                self.ip_holders.entry(ip).or_default().insert(key.clone());
            }
        }
        self.pods.insert(key, pod);
        Ok(())
    }

    pub fn remove_pod(&mut self, key: &ObjectKey) -> Option<Pod> {
        let old = self.pods.remove(key)?;
        if is_policy_peer(&old) {
            for ip in pod_ips(&old) {
                let Some(holders) = self.ip_holders.get_mut(&ip) else {
                    continue;
                };
                holders.remove(key);
                // Another pod may hold the freed IP (a transient duplicate):
                // the first in name order inherits it.
                let heir = holders.iter().next().cloned();
                if holders.is_empty() {
                    self.ip_holders.remove(&ip);
                }
                if self.pod_by_ip.get(&ip) == Some(key) {
                    match heir {
                        Some(k) => self.pod_by_ip.insert(ip, k),
                        None => self.pod_by_ip.remove(&ip),
                    };
                }
            }
        }
        Some(old)
    }

    /// Validates and inserts a policy. On error the model is unchanged: a
    /// previous valid version of the same policy stays in force, so a bad
    /// update never loses enforcement.
    pub fn insert_policy(&mut self, policy: NetworkPolicy) -> Result<(), ValidationError> {
        validate::network_policy(&policy)?;
        let key = ObjectKey::of(&policy.metadata);
        self.ensure_namespace(&key.namespace);
        self.policies.insert(key, policy);
        Ok(())
    }

    pub fn remove_policy(&mut self, key: &ObjectKey) -> Option<NetworkPolicy> {
        self.policies.remove(key)
    }

    pub fn insert_node(&mut self, node: Node) -> Result<(), ValidationError> {
        validate::node(&node)?;
        self.nodes
            .insert(node.metadata.name.clone().unwrap_or_default(), node);
        Ok(())
    }

    pub fn remove_node(&mut self, name: &str) -> Option<Node> {
        self.nodes.remove(name)
    }

    /// Removes a declared namespace; while objects still live in it, it stays
    /// as an implicit namespace (only the metadata.name label), as it would
    /// look to selectors until the API server finishes deleting them.
    pub fn remove_namespace(&mut self, name: &str) -> Option<Namespace> {
        let old = self.namespaces.remove(name)?;
        let in_use = self.pods.keys().any(|k| k.namespace == name)
            || self.policies.keys().any(|k| k.namespace == name)
            || self.services.keys().any(|k| k.namespace == name)
            || self.endpoint_slices.keys().any(|k| k.namespace == name);
        if in_use {
            self.ensure_namespace(name);
        }
        Some(old)
    }

    pub fn remove_service(&mut self, key: &ObjectKey) -> Option<Service> {
        self.services.remove(key)
    }

    pub fn remove_endpoint_slice(&mut self, key: &ObjectKey) -> Option<EndpointSlice> {
        self.endpoint_slices.remove(key)
    }

    /// Records an address of `node` that its Node object does not list.
    pub fn add_node_address(&mut self, node: &str, ip: IpAddr) {
        self.extra_node_addresses
            .entry(node.into())
            .or_default()
            .insert(ip);
    }

    pub fn namespaces(&self) -> &BTreeMap<String, Namespace> {
        &self.namespaces
    }
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }
    pub fn pods(&self) -> &BTreeMap<ObjectKey, Pod> {
        &self.pods
    }
    pub fn pod(&self, key: &ObjectKey) -> Option<&Pod> {
        self.pods.get(key)
    }
    pub fn services(&self) -> &BTreeMap<ObjectKey, Service> {
        &self.services
    }
    pub fn endpoint_slices(&self) -> &BTreeMap<ObjectKey, EndpointSlice> {
        &self.endpoint_slices
    }
    pub fn policies(&self) -> &BTreeMap<ObjectKey, NetworkPolicy> {
        &self.policies
    }
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// Policies of one namespace, in name order.
    pub fn policies_in(
        &self,
        namespace: &str,
    ) -> impl Iterator<Item = (&ObjectKey, &NetworkPolicy)> + '_ {
        let namespace = namespace.to_string();
        self.policies
            .range(ObjectKey::new(namespace.clone(), "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
    }

    /// The policy peer pod (see [`is_policy_peer`]) that owns `ip`, if any.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<(&ObjectKey, &Pod)> {
        let key = self.pod_by_ip.get(&ip)?;
        self.pods.get_key_value(key)
    }

    /// Namespace labels (the metadata.name label at least).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.metadata.labels.clone())
            .unwrap_or_else(|| {
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())])
            })
    }

    /// Addresses of a node: its `InternalIP`s plus those given by
    /// [`Cluster::add_node_address`]. Sorted, deduplicated.
    pub fn node_addresses(&self, node: &str) -> Vec<IpAddr> {
        let mut out: BTreeSet<IpAddr> = self
            .extra_node_addresses
            .get(node)
            .cloned()
            .unwrap_or_default();
        if let Some(status) = self.nodes.get(node).and_then(|n| n.status.as_ref()) {
            for a in status.addresses.iter().flatten() {
                if a.type_ == "InternalIP" {
                    if let Ok(ip) = a.address.parse() {
                        out.insert(ip);
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// The pod's IPs: `status.podIPs`, else `status.podIP`. Unparseable entries are
/// impossible after validation and skipped defensively.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok()),
        );
    }
    ips
}

pub fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Running or pending with an IP: a pod whose addresses mean anything.
/// Succeeded/Failed pods keep their IP in status but it may be reused.
pub fn is_live(pod: &Pod) -> bool {
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    );
    !terminal && !pod_ips(pod).is_empty()
}

/// A pod NetworkPolicy can select (as target) or match by selector (as peer):
/// live and not on the host network. Host-network pods share the node's
/// address, so policies neither select them nor match them by pod selector;
/// only an ipBlock covering the node IP matches their traffic.
pub fn is_policy_peer(pod: &Pod) -> bool {
    is_live(pod) && !is_host_network(pod)
}

/// The container port with this name and protocol (TCP when unset), if any.
pub fn named_port(pod: &Pod, name: &str, protocol: kube_nft_crds::ir::Protocol) -> Option<u16> {
    container_ports(pod)
        .find(|(n, p, _)| n.as_deref() == Some(name) && *p == protocol)
        .map(|(_, _, port)| port)
}

/// (name, protocol, number) of every declared container port.
pub fn container_ports(
    pod: &Pod,
) -> impl Iterator<Item = (Option<String>, kube_nft_crds::ir::Protocol, u16)> + '_ {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let protocol =
                kube_nft_crds::ir::Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?;
            let port = u16::try_from(p.container_port).ok()?;
            Some((p.name.clone(), protocol, port))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "status": {"podIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn ip_index_follows_inserts_and_removals() {
        let mut c = Cluster::new();
        c.insert_pod(pod("x", "a", "10.0.0.1")).unwrap();
        c.insert_pod(pod("x", "b", "10.0.0.1")).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(c.pod_by_ip(ip).unwrap().0, &ObjectKey::new("x", "a"));
        c.remove_pod(&ObjectKey::new("x", "a"));
        assert_eq!(c.pod_by_ip(ip).unwrap().0, &ObjectKey::new("x", "b"));
        // Re-inserting with a new IP moves the index.
        c.insert_pod(pod("x", "b", "10.0.0.2")).unwrap();
        assert!(c.pod_by_ip(ip).is_none());
    }

    #[test]
    fn removed_namespace_in_use_stays_implicit() {
        let mut c = Cluster::new();
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"team": "a"}}}))
                .unwrap();
        c.insert_namespace(ns);
        c.insert_pod(pod("x", "a", "10.0.0.1")).unwrap();
        assert_eq!(c.namespace_labels("x").len(), 2);
        c.remove_namespace("x");
        assert_eq!(
            c.namespace_labels("x"),
            BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), "x".to_string())])
        );
    }

    #[test]
    fn node_addresses_merge_status_and_extras() {
        let mut c = Cluster::new();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "172.18.0.2"},
                {"type": "Hostname", "address": "n"}
            ]}
        }))
        .unwrap();
        c.insert_node(node).unwrap();
        c.add_node_address("n", "fd00::2".parse().unwrap());
        let addrs: Vec<String> = c
            .node_addresses("n")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, vec!["172.18.0.2", "fd00::2"]);
    }

    #[test]
    fn keys_parse() {
        assert_eq!("x/a".parse::<ObjectKey>(), Ok(ObjectKey::new("x", "a")));
        assert!("x".parse::<ObjectKey>().is_err());
        assert!("x/a/b".parse::<ObjectKey>().is_err());
    }
}

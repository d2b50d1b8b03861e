//! What the lab writes to the API server (pure): the lab's model as API
//! objects, and the writes that bring the server from what was written last
//! to that.
//!
//! Every object carries only what its author would write: metadata name,
//! namespace, labels and annotations (plus [`RUN_ANNOTATION`]), the spec, and
//! separately the status a kubelet, the API server's allocators or a cloud
//! load balancer would set:
//!
//! - a **Node** gets the `kubernetes.io/hostname` label (the v1.20
//!   EndpointSlice controller takes an endpoint's node from it), its pod
//!   CIDRs, and in status its InternalIPs and `Ready`;
//! - a **Pod** keeps its spec (containers without an image get
//!   [`PLACEHOLDER_IMAGE`]: no kubelet ever pulls it) and gets in status its
//!   phase, IPs, `hostIP` and, unless the manifest gives conditions, `Ready`
//!   and `ContainersReady` (the lab's pods count as ready, so the real
//!   EndpointSlice controller lists them as the lab's synthesized slices do);
//! - a **Service** keeps the ClusterIPs and NodePorts the lab allocated (the
//!   API server accepts given ones from its range), and gets its
//!   load-balancer addresses in status.
//!
//! A Pod whose spec changed is deleted and created again: a pod's spec is
//! immutable apart from a few fields, as a node move or new ports in the lab
//! rebuild the pod too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::cluster::Cluster;

/// Marks every object the lab wrote (its value: the run's prefix), so a later
/// run finds what a crashed one left behind. An annotation, not a label: a
/// label would change what selectors see.
pub const RUN_ANNOTATION: &str = "kubenft.io/lab-run";
/// The image of containers a manifest gives none (the API server requires one).
pub const PLACEHOLDER_IMAGE: &str = "registry.k8s.io/pause:3.9";
/// The label the kubelet puts on its Node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Namespaces the lab never deletes, even when it labelled them.
pub const PROTECTED_NAMESPACES: [&str; 5] = [
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    super::DEPLOY_NAMESPACE,
];

/// The kinds the lab writes, in the order they are created (a Pod needs its
/// Namespace and Node; deletion goes the other way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Service,
    Pod,
    NetworkPolicy,
    EndpointSlice,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
}

/// One object on the server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id {
    pub kind: Kind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.namespaced() {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        }
    }
}

/// An object as the lab wants it on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// What server-side apply sends (apiVersion, kind, metadata, spec…), as v1
    /// for EndpointSlices (the writer converts to the served version).
    pub body: Value,
    /// The `status` the status subresource gets, if any.
    pub status: Option<Value>,
}

/// Everything the lab wants on the server.
pub type Objects = BTreeMap<Id, Desired>;

/// One write of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub id: Id,
    /// Delete the object first (a Pod whose spec changed).
    pub recreate: bool,
    /// Apply this body (new or changed).
    pub body: Option<Value>,
    /// Then set this status (new, changed, or the object was recreated).
    pub status: Option<Value>,
}

/// The writes that bring the server from `before` to `after`: deletions
/// first (policies before pods before namespaces before nodes), then
/// creations and changes in [`Kind`] order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub deletes: Vec<Id>,
    pub writes: Vec<Write>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.writes.is_empty()
    }
}

/// The lab's model as API objects, annotated with `run`. Errors name the
/// object (an object that does not serialize is a bug, not bad input).
pub fn desired(cluster: &Cluster, run: &str) -> Result<Objects, String> {
    let mut out = Objects::new();
    for (name, ns) in cluster.namespaces() {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": metadata(&ns.metadata, run, None),
        });
        insert(&mut out, Kind::Namespace, "", name, body, None);
    }
    for (name, node) in cluster.nodes() {
        out.insert(id(Kind::Node, "", name), node_object(name, node, run)?);
    }
    for (key, svc) in cluster.services() {
        let mut body = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&svc.metadata, run, Some(&key.namespace)),
        });
        body["spec"] = to_value(&svc.spec, &format!("Service {key}"))?;
        default_protocols(body["spec"].get_mut("ports"));
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .filter(|i| !i.is_empty());
        let status = match ingress {
            Some(i) => {
                Some(json!({"loadBalancer": {"ingress": to_value(i, &format!("Service {key}"))?}}))
            }
            None => None,
        };
        insert(
            &mut out,
            Kind::Service,
            &key.namespace,
            &key.name,
            body,
            status,
        );
    }
    for (key, pod) in cluster.pods() {
        let what = format!("Pod {key}");
        if pod.metadata.deletion_timestamp.is_some() {
            return Err(format!(
                "{what}: metadata.deletionTimestamp: a terminating pod cannot be written \
                 through an API server (only a kubelet's graceful deletion makes one); \
                 run this scenario without --kubeconfig"
            ));
        }
        let mut body = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata(&pod.metadata, run, Some(&key.namespace)),
        });
        let mut spec = to_value(&pod.spec, &what)?;
        for list in ["containers", "initContainers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    c["image"] = PLACEHOLDER_IMAGE.into();
                }
                default_protocols(c.get_mut("ports"));
            }
        }
        body["spec"] = spec;
        let host_ip = crate::cluster::pod_node(pod).and_then(|n| {
            cluster
                .node_addresses(n)
                .into_iter()
                .find(|ip| ip.is_ipv4())
        });
        let status = pod_status(pod, host_ip, &what)?;
        insert(&mut out, Kind::Pod, &key.namespace, &key.name, body, status);
    }
    for (key, policy) in cluster.policies() {
        let mut body = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(&policy.metadata, run, Some(&key.namespace)),
        });
        body["spec"] = to_value(&policy.spec, &format!("NetworkPolicy {key}"))?;
        insert(
            &mut out,
            Kind::NetworkPolicy,
            &key.namespace,
            &key.name,
            body,
            None,
        );
    }
    for (key, slice) in cluster.endpoint_slices() {
        let what = format!("EndpointSlice {key}");
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::service::spec::SERVICE_NAME_LABEL));
        let selected = service.and_then(|s| {
            cluster.services().get(&crate::cluster::ObjectKey::new(
                key.namespace.as_str(),
                s.as_str(),
            ))
        });
        if selected.is_some_and(|svc| svc.spec.as_ref().is_some_and(|s| s.selector.is_some())) {
            return Err(format!(
                "{what}: Service {}/{} has a selector, so the API server's EndpointSlice \
                 controller writes its slices too; give the slice a selector-less Service",
                key.namespace,
                service.map(String::as_str).unwrap_or_default()
            ));
        }
        let mut body = to_value(slice, &what)?;
        body["apiVersion"] = "discovery.k8s.io/v1".into();
        body["kind"] = "EndpointSlice".into();
        body["metadata"] = metadata(&slice.metadata, run, Some(&key.namespace));
        insert(
            &mut out,
            Kind::EndpointSlice,
            &key.namespace,
            &key.name,
            body,
            None,
        );
    }
    Ok(out)
}

/// Spells out `protocol: TCP` on every port of a list: server-side apply of
/// v1.20 keys Service and container ports by (port, protocol) and refuses an
/// element without the key, although TCP is the default.
fn default_protocols(ports: Option<&mut Value>) {
    for p in ports.and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(p) = p.as_object_mut() {
            p.entry("protocol").or_insert_with(|| "TCP".into());
        }
    }
}

fn id(kind: Kind, namespace: &str, name: &str) -> Id {
    Id {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn insert(
    out: &mut Objects,
    kind: Kind,
    namespace: &str,
    name: &str,
    body: Value,
    status: Option<Value>,
) {
    out.insert(id(kind, namespace, name), Desired { body, status });
}

fn to_value<T: Serialize>(v: &T, what: &str) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("{what}: {e}"))
}

/// Name, namespace, labels and annotations only: a manifest copied from
/// `kubectl get -o yaml` carries a resourceVersion, uid and the like, which
/// server-side apply would take as preconditions.
fn metadata(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    run: &str,
    namespace: Option<&str>,
) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), meta.name.clone().unwrap_or_default().into());
    if let Some(ns) = namespace {
        m.insert("namespace".into(), ns.into());
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        m.insert("labels".into(), json!(labels));
    }
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    annotations.insert(RUN_ANNOTATION.into(), run.into());
    m.insert("annotations".into(), json!(annotations));
    Value::Object(m)
}

fn node_object(
    name: &str,
    node: &k8s_openapi::api::core::v1::Node,
    run: &str,
) -> Result<Desired, String> {
    let what = format!("Node {name}");
    let mut meta = metadata(&node.metadata, run, None);
    let labels = meta
        .as_object_mut()
        .expect("metadata is an object")
        .entry("labels")
        .or_insert_with(|| json!({}));
    if labels.get(HOSTNAME_LABEL).is_none() {
        labels[HOSTNAME_LABEL] = name.into();
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": to_value(&node.spec, &what)?,
    });
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| to_value(a, &what))
        .transpose()?
        .unwrap_or_else(|| json!([]));
    let status = json!({
        "addresses": addresses,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeNftLab",
            "message": "a kube-nft lab node (a network namespace)",
        }],
    });
    Ok(Desired {
        body,
        status: Some(status),
    })
}

/// The status a kubelet would report for the lab's view of `pod`.
fn pod_status(
    pod: &k8s_openapi::api::core::v1::Pod,
    host_ip: Option<std::net::IpAddr>,
    what: &str,
) -> Result<Option<Value>, String> {
    let Some(status) = &pod.status else {
        return Ok(None);
    };
    let mut s = to_value(status, what)?;
    let obj = s.as_object_mut().expect("a status is an object");
    if let Some(ip) = host_ip {
        obj.entry("hostIP").or_insert_with(|| ip.to_string().into());
    }
    let running = status.phase.as_deref() == Some("Running");
    let has_conditions = status.conditions.as_ref().is_some_and(|c| !c.is_empty());
    if running && !has_conditions {
        obj.insert(
            "conditions".into(),
            json!([
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ]),
        );
    }
    Ok(Some(s))
}

/// The writes from `before` (what the lab wrote last) to `after`.
pub fn plan(before: &Objects, after: &Objects) -> Plan {
    let mut deletes: Vec<Id> = before
        .keys()
        .filter(|id| !after.contains_key(id))
        .cloned()
        .collect();
    // Policies and slices first, namespaces and nodes last.
    deletes.sort_by(|a, b| b.kind.cmp(&a.kind).then_with(|| a.cmp(b)));
    let mut writes: Vec<Write> = Vec::new();
    for (id, want) in after {
        let old = before.get(id);
        let recreate = id.kind == Kind::Pod
            && old.is_some_and(|o| o.body.get("spec") != want.body.get("spec"));
        let body_changed = recreate || old.is_none_or(|o| o.body != want.body);
        let status_changed = recreate || old.is_none_or(|o| o.status != want.status);
        if !body_changed && !status_changed {
            continue;
        }
        writes.push(Write {
            id: id.clone(),
            recreate,
            body: body_changed.then(|| want.body.clone()),
            status: want.status.clone().filter(|_| status_changed),
        });
    }
    Plan { deletes, writes }
}

/// Namespaces `objects` puts things into, or declares.
pub fn namespaces(objects: &Objects) -> BTreeSet<String> {
    objects
        .keys()
        .map(|id| match id.kind {
            Kind::Namespace => id.name.clone(),
            _ => id.namespace.clone(),
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// A `discovery.k8s.io/v1` EndpointSlice as `v1beta1`, for servers that serve
/// nothing newer (v1.20): the inverse of
/// [`crate::kubeapi::endpoint_slices::to_v1`]. An endpoint's node and zone
/// go into `topology`, where the v1beta1 controller puts them; `hints`
/// (v1.21+) are dropped.
pub fn slice_to_v1beta1(mut slice: Value) -> Value {
    slice["apiVersion"] = "discovery.k8s.io/v1beta1".into();
    if let Some(endpoints) = slice.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in endpoints.iter_mut().filter_map(Value::as_object_mut) {
            let mut topology = match ep.remove("deprecatedTopology") {
                Some(Value::Object(t)) => t,
                _ => Map::new(),
            };
            if let Some(node) = ep.remove("nodeName") {
                topology.entry(HOSTNAME_LABEL).or_insert(node);
            }
            if let Some(zone) = ep.remove("zone") {
                topology
                    .entry("topology.kubernetes.io/zone")
                    .or_insert(zone);
            }
            ep.remove("hints");
            if !topology.is_empty() {
                ep.insert("topology".into(), Value::Object(topology));
            }
        }
    }
    slice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::endpoint_slices::to_v1;

    fn cluster(yaml: &str) -> Cluster {
        crate::cluster::load::cluster_from_yaml(yaml)
    }

    const MODEL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 172.31.0.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}, resourceVersion: "42", uid: u-1}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  selector: {app: a}
  ports: [{port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.1}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
"#;

    fn key(kind: Kind, ns: &str, name: &str) -> Id {
        id(kind, ns, name)
    }

    #[test]
    fn objects_carry_what_their_authors_write() {
        let objects = desired(&cluster(MODEL), "kn-abc").unwrap();
        let kinds: Vec<String> = objects.keys().map(ToString::to_string).collect();
        assert_eq!(
            kinds,
            [
                "Namespace x",
                "Node n1",
                "Service x/web",
                "Pod x/a",
                "NetworkPolicy x/deny"
            ]
        );
        let pod = &objects[&key(Kind::Pod, "x", "a")];
        let meta = &pod.body["metadata"];
        assert_eq!(meta["annotations"][RUN_ANNOTATION], "kn-abc");
        assert!(meta.get("resourceVersion").is_none(), "{meta}");
        assert!(meta.get("uid").is_none(), "{meta}");
        assert_eq!(
            meta["labels"]["app"], "a",
            "labels stay: selectors read them"
        );
        assert_eq!(
            pod.body["spec"]["containers"][0]["image"],
            PLACEHOLDER_IMAGE
        );
        assert!(pod.body.get("status").is_none(), "status goes apart");
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status["hostIP"], "172.31.0.10");
        assert_eq!(status["podIP"], "10.244.1.5");
        assert_eq!(status["conditions"][1]["type"], "Ready");
        assert_eq!(status["conditions"][1]["status"], "True");
        let node = &objects[&key(Kind::Node, "", "n1")];
        assert_eq!(node.body["metadata"]["labels"][HOSTNAME_LABEL], "n1");
        assert_eq!(node.body["spec"]["podCIDR"], "10.244.1.0/24");
        let node_status = node.status.as_ref().unwrap();
        assert_eq!(node_status["addresses"][0]["address"], "172.31.0.10");
        assert!(node_status["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        let svc = &objects[&key(Kind::Service, "x", "web")];
        assert_eq!(svc.body["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc.body["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(svc.body["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            pod.body["spec"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        assert_eq!(
            svc.status.as_ref().unwrap()["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.1"
        );
        assert_eq!(namespaces(&objects).into_iter().collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn what_an_api_server_cannot_hold_is_named() {
        let terminating = MODEL.replace(
            "resourceVersion: \"42\"",
            "deletionTimestamp: \"2024-01-01T00:00:00Z\"",
        );
        let e = desired(&cluster(&terminating), "r").unwrap_err();
        assert!(e.starts_with("Pod x/a: metadata.deletionTimestamp"), "{e}");
        let slice = format!(
            "{MODEL}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: x, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nendpoints: []\n"
        );
        let e = desired(&cluster(&slice), "r").unwrap_err();
        assert!(
            e.starts_with("EndpointSlice x/web-1: Service x/web has a selector"),
            "{e}"
        );
    }

    #[test]
    fn given_pod_conditions_are_kept() {
        let model = MODEL.replace(
            "podIPs: [{ip: 10.244.1.5}]}",
            "podIPs: [{ip: 10.244.1.5}], conditions: [{type: Ready, status: \"False\"}]}",
        );
        let objects = desired(&cluster(&model), "r").unwrap();
        let status = objects[&key(Kind::Pod, "x", "a")].status.clone().unwrap();
        assert_eq!(status["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(status["conditions"][0]["status"], "False");
    }

    #[test]
    fn plan_writes_only_what_changed_and_recreates_pods_whose_spec_changed() {
        let before = desired(&cluster(MODEL), "r").unwrap();
        assert!(plan(&before, &before).is_empty());

        let relabelled = desired(
            &cluster(&MODEL.replace("{app: a}, resourceVersion", "{app: b}, resourceVersion")),
            "r",
        )
        .unwrap();
        let p = plan(&before, &relabelled);
        assert!(p.deletes.is_empty());
        assert_eq!(p.writes.len(), 1, "{p:?}");
        assert_eq!(p.writes[0].id.to_string(), "Pod x/a");
        assert!(!p.writes[0].recreate);
        assert!(p.writes[0].body.is_some());
        assert!(p.writes[0].status.is_none(), "status unchanged");

        let moved = desired(
            &cluster(&MODEL.replace("containerPort: 80", "containerPort: 81")),
            "r",
        )
        .unwrap();
        let p = plan(&before, &moved);
        assert!(p.writes[0].recreate);
        assert!(
            p.writes[0].status.is_some(),
            "a new pod needs its status again"
        );

        let readdressed =
            desired(&cluster(&MODEL.replace("10.244.1.5", "10.244.1.6")), "r").unwrap();
        let p = plan(&before, &readdressed);
        assert!(p.writes[0].body.is_none());
        assert!(p.writes[0].status.is_some());
    }

    #[test]
    fn deletions_go_from_policies_to_nodes() {
        let before = desired(&cluster(MODEL), "r").unwrap();
        let p = plan(&before, &Objects::new());
        let order: Vec<String> = p.deletes.iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "NetworkPolicy x/deny",
                "Pod x/a",
                "Service x/web",
                "Node n1",
                "Namespace x"
            ]
        );
    }

    #[test]
    fn a_v1_slice_goes_to_v1beta1_and_back() {
        let v1 = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "x",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true},
                           "nodeName": "n1", "zone": "z1",
                           "hints": {"forZones": [{"name": "z1"}]}}],
            "ports": [{"port": 80, "protocol": "TCP"}]
        });
        let beta = slice_to_v1beta1(v1);
        assert_eq!(beta["apiVersion"], "discovery.k8s.io/v1beta1");
        let ep = &beta["endpoints"][0];
        assert_eq!(ep["topology"][HOSTNAME_LABEL], "n1");
        assert_eq!(ep["topology"]["topology.kubernetes.io/zone"], "z1");
        assert!(ep.get("hints").is_none() && ep.get("nodeName").is_none());
        let back = to_v1(beta).unwrap();
        assert_eq!(back.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(back.endpoints[0].zone.as_deref(), Some("z1"));
    }
}

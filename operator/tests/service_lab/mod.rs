//! A one-node lab for the Agent's Service tests (needs root): a node
//! namespace running one [`Agent`], a client pod and two endpoint pods
//! (`ep-a`, `ep-b`) that answer `default/ep-x from <source>` on UDP 5353 and
//! TCP 8080. Services and EndpointSlices are written by hand, as a cluster's
//! control plane would hand them to the agent, so a test decides exactly
//! which endpoints a Service has at each sync.
//!
//! Shared by `service_udp_flow.rs` and `service_affinity.rs` (a directory
//! module, so cargo does not build it as a test target of its own).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_nft::agent::{Agent, AgentInput, AgentReport};
use kube_nft::cluster::{Cluster, Object};
use kube_nft::lab::{
    self, LabGuard, LabNode, LabPod, LabSpec, Listeners, NodeSpec, PodPort, PodSpec, Protocol,
    Topology,
};
use kube_nft::render::{service::affinity_map, TABLE_FAMILY, TABLE_NAME};
use kube_nft::service::{IpFamily, ServiceConfig};
use kube_nft_crds::ir::CompiledPolicy;
use nft::netlink::Conn;
use nft::{ElemData, KeyPart, Value};
use serde_json::{json, Value as Json};

pub const NODE: &str = "node-a";
pub const NAMESPACE: &str = "default";
pub const UDP_TARGET: PodPort = PodPort {
    protocol: Protocol::Udp,
    port: 5353,
};
pub const TCP_TARGET: PodPort = PodPort {
    protocol: Protocol::Tcp,
    port: 8080,
};

/// The lab and what serves in it. Fields drop in order: listeners (their
/// sockets keep pod namespaces alive), the runtime that serves them, then
/// the guard, which removes every namespace, also when a test panics.
pub struct ServiceLab {
    pub listeners: Listeners,
    /// Multi-threaded, so listeners answer while the test thread blocks in
    /// an agent sync or a blocking socket call.
    pub rt: tokio::runtime::Runtime,
    pub topology: Topology,
    guard: LabGuard,
}

impl ServiceLab {
    /// Node `node-a` with pods `default/client`, `default/ep-a` and
    /// `default/ep-b`; both endpoints listen on UDP 5353 and TCP 8080.
    pub fn start() -> ServiceLab {
        nft::testing::require_root();
        let pod = |name: &str, ports: Vec<PodPort>| PodSpec {
            namespace: NAMESPACE.into(),
            name: name.into(),
            node: NODE.into(),
            ip: None,
            ipv6: None,
            ports,
        };
        let spec = LabSpec {
            nodes: vec![NodeSpec {
                name: NODE.into(),
                pod_cidr: "10.244.0.0/24".parse().unwrap(),
                pod_cidr_v6: None,
            }],
            pods: vec![
                pod("client", vec![]),
                pod("ep-a", vec![UDP_TARGET, TCP_TARGET]),
                pod("ep-b", vec![UDP_TARGET, TCP_TARGET]),
            ],
        };
        let guard = LabGuard::new().expect("lab guard");
        let topology = lab::build(&spec, &guard).expect("lab topology");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listeners = rt
            .block_on(Listeners::serve_pods(&topology))
            .expect("listeners");
        ServiceLab {
            listeners,
            rt,
            topology,
            guard,
        }
    }

    pub fn node(&self) -> &LabNode {
        self.topology.node(NODE).expect("the lab's node")
    }

    pub fn pod(&self, name: &str) -> &LabPod {
        self.topology.pod(NAMESPACE, name).expect("a lab pod")
    }

    /// NAT masquerades what leaves the node's pod CIDR (as the lab run does).
    pub fn config(&self) -> ServiceConfig {
        ServiceConfig {
            cluster_cidrs: vec![IpNet::V4(self.node().pod_cidr)],
            ..ServiceConfig::default()
        }
    }

    /// The node's agent, in the node's namespace.
    pub fn agent(&self) -> Agent {
        Agent::open(NODE, Some(&self.node().netns.path())).expect("agent")
    }

    /// An empty cluster that knows the node's address.
    pub fn cluster(&self) -> Cluster {
        let mut c = Cluster::new();
        c.add_node_address(NODE, IpAddr::V4(self.node().internal_ip));
        c
    }

    /// Syncs the node to `cluster` (no NetworkPolicy) and returns the report;
    /// the Services must be valid.
    pub fn sync(&self, agent: &mut Agent, cluster: &Cluster) -> AgentReport {
        let input =
            AgentInput::for_cluster(cluster, &CompiledPolicy::default(), NODE, &self.config());
        let services = input.services.as_ref().expect("Service NAT input");
        assert!(services.errors.is_empty(), "{:?}", services.errors);
        let report = agent.sync(&input).expect("sync");
        eprintln!("sync: {report:?}");
        report
    }

    /// A netlink socket in the node's namespace, to read what the kernel holds.
    pub fn node_conn(&self) -> Conn {
        Conn::open_in_netns(self.node().netns.path()).expect("netlink in the node")
    }

    /// The IPv4 affinity map's elements as the kernel holds them now:
    /// `(client, frontend, endpoint)`.
    pub fn affinity(&self) -> Vec<Affinity> {
        let map = self
            .node_conn()
            .read_set(TABLE_FAMILY, TABLE_NAME, &affinity_map(IpFamily::V4))
            .expect("reading the affinity map")
            .expect("the affinity map exists");
        map.elements
            .iter()
            .map(|(key, value)| {
                let addr = |part: &KeyPart| match part {
                    KeyPart::Value(Value::Ipv4(a)) => IpAddr::V4(*a),
                    other => panic!("not an IPv4 key part: {other:?}"),
                };
                let port = match &key[3] {
                    KeyPart::Value(Value::Port(p)) => *p,
                    other => panic!("not a port: {other:?}"),
                };
                let endpoint = match &value.data {
                    Some(ElemData::Values(v)) => match v.as_slice() {
                        [Value::Ipv4(a), Value::Port(p)] => SocketAddr::new(IpAddr::V4(*a), *p),
                        other => panic!("not an endpoint: {other:?}"),
                    },
                    other => panic!("not an endpoint: {other:?}"),
                };
                Affinity {
                    client: addr(&key[0]),
                    frontend: SocketAddr::new(addr(&key[1]), port),
                    endpoint,
                    timeout: value.timeout,
                }
            })
            .collect()
    }
}

/// One element of the affinity map (TCP and UDP frontends alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub client: IpAddr,
    pub frontend: SocketAddr,
    pub endpoint: SocketAddr,
    pub timeout: Option<Duration>,
}

/// A ClusterIP Service `default/<name>` on `vip:port` (one unnamed port of
/// `protocol`; its endpoints' port comes from the slice), plus `extra` spec
/// fields.
pub fn service(name: &str, vip: &str, protocol: Protocol, port: u16, extra: Json) -> Object {
    let mut spec = json!({
        "clusterIP": vip,
        "clusterIPs": [vip],
        "ports": [{"port": port, "protocol": protocol.as_str()}],
    });
    for (k, v) in extra.as_object().expect("extra spec fields") {
        spec[k] = v.clone();
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }))
    .expect("a Service");
    Object::Service(svc)
}

/// The EndpointSlice of Service `default/<service>`: `endpoints` (ready pods
/// of the node) serving `target`. Always the same slice name, so inserting
/// it again replaces the previous endpoint list.
pub fn slice(service: &str, target: PodPort, endpoints: &[&LabPod]) -> Object {
    let endpoints: Vec<Json> = endpoints
        .iter()
        .map(|pod| {
            json!({
                "addresses": [pod.ip.to_string()],
                "conditions": {"ready": true},
                "nodeName": pod.node,
                "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
            })
        })
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{service}-ipv4"),
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"port": target.port, "protocol": target.protocol.as_str()}],
        "endpoints": endpoints,
    }))
    .expect("an EndpointSlice");
    Object::EndpointSlice(slice)
}

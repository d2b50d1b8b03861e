//! Objects for the daemon's unit tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::runtime::watcher::Event;
use kube_nft_crds::ir::{AddressSet, AddressSetElement, IrPeer, IrRule, NodePolicy, PodPolicy};
use kube_nft_crds::resources::{AddressSetShard, NodePolicyShare};
use kube_nft_crds::shard::shard;

use super::state::{State, Update};

pub const NODE: &str = "n1";

/// `NODE`'s share: one pod isolated for ingress, allowed from `sets`.
pub fn share(generation: i64, sets: &[&str]) -> NodePolicyShare {
    let rules = sets
        .iter()
        .enumerate()
        .map(|(i, s)| IrRule {
            policy: "x/allow".into(),
            rule_index: i,
            peers: vec![IrPeer::AddressSet {
                name: (*s).to_string(),
            }],
            ports: vec![],
            named_ports: vec![],
        })
        .collect();
    let mut share = NodePolicyShare::for_node(NodePolicy {
        node: NODE.into(),
        node_addresses: vec!["172.31.0.10".parse().unwrap()],
        pods: vec![PodPolicy {
            namespace: "x".into(),
            name: "a".into(),
            ips: vec!["10.244.0.2".parse().unwrap()],
            ingress_isolated: true,
            ingress: rules,
            ..Default::default()
        }],
    });
    share.metadata.generation = Some(generation);
    share.metadata.uid = Some("uid-1".into());
    share
}

pub fn set(name: &str, ips: &[&str]) -> AddressSet {
    let mut elements: Vec<AddressSetElement> = ips
        .iter()
        .map(|ip| AddressSetElement {
            ip: ip.parse().unwrap(),
            protocol: None,
            port: None,
        })
        .collect();
    elements.sort();
    AddressSet {
        name: name.into(),
        selector: format!("pods of {name}"),
        elements,
    }
}

/// The shards of `set`, at most `max` elements each.
pub fn shards(set: &AddressSet, max: usize) -> Vec<AddressSetShard> {
    shard(&BTreeMap::from([(set.name.clone(), set.clone())]), max)
}

pub fn service(ns: &str, name: &str, cluster_ip: &str) -> Service {
    let mut s = Service::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.spec = Some(ServiceSpec {
        cluster_ip: Some(cluster_ip.into()),
        cluster_ips: Some(vec![cluster_ip.into()]),
        ports: Some(vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    s
}

pub fn slice(ns: &str, service: &str, ip: &str) -> EndpointSlice {
    let mut s = EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        metadata: Default::default(),
    };
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(format!("{service}-abc"));
    s.metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        service.to_string(),
    )]));
    s
}

pub fn node(addresses: &[&str]) -> Node {
    let mut n = Node::default();
    n.metadata.name = Some(NODE.into());
    n.status = Some(NodeStatus {
        addresses: Some(
            addresses
                .iter()
                .map(|a| NodeAddress {
                    type_: "InternalIP".into(),
                    address: (*a).into(),
                })
                .collect(),
        ),
        ..Default::default()
    });
    n
}

/// The events of a complete list.
pub fn listed<K>(objects: Vec<K>) -> Vec<Event<K>> {
    let mut events = vec![Event::Init];
    events.extend(objects.into_iter().map(Event::InitApply));
    events.push(Event::InitDone);
    events
}

/// A state where every watcher listed: `share` (if any), its shards (epoch
/// 1 when it references sets), the Services and slices, and the Node.
pub fn complete_state(
    share: Option<NodePolicyShare>,
    shards: Vec<AddressSetShard>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
) -> State {
    let mut state = State::new(NODE, true);
    for e in listed(share.into_iter().collect()) {
        state.apply(Update::Share(e));
    }
    let epoch = state.shard_watch().epoch;
    for event in listed(shards) {
        state.apply(Update::Shards { epoch, event });
    }
    for e in listed(services) {
        state.apply(Update::Service(e));
    }
    for e in listed(slices) {
        state.apply(Update::EndpointSlice(e));
    }
    for e in listed(vec![node(&["172.31.0.10"])]) {
        state.apply(Update::Node(e));
    }
    assert!(state.is_complete(), "{:?}", state.waiting_for());
    state
}

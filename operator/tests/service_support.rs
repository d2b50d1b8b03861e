//! A small cluster with one Service of each kind, shared by the Service NAT
//! tests (included with `#[path]`, not a test target of its own).
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_nft::cluster::{Cluster, Object};
use kube_nft::render::service::contribute;
use kube_nft::service::{compute, ServiceConfig};
use nft::{Family, Table};
use serde_json::{json, Value};

pub const NODE: &str = "node-a";
pub const WEB_VIP: &str = "10.96.0.10";
pub const STICKY_VIP: &str = "10.96.0.20";
pub const EMPTY_VIP: &str = "10.96.0.30";

pub fn config() -> ServiceConfig {
    ServiceConfig {
        cluster_cidrs: vec![
            "10.0.0.0/16".parse().unwrap(),
            "fd00:10::/56".parse().unwrap(),
        ],
        no_masquerade_cidrs: vec![
            "10.1.0.0/16".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ],
        ..Default::default()
    }
}

fn service(v: Value) -> Object {
    Object::Service(serde_json::from_value::<Service>(v).unwrap())
}

fn slice(v: Value) -> Object {
    Object::EndpointSlice(serde_json::from_value::<EndpointSlice>(v).unwrap())
}

/// A TCP Service `name` on `vip:80` with endpoints `eps` on port 8080 of
/// node `node-b`, plus `extra` spec fields.
pub fn add_service_with(c: &mut Cluster, name: &str, vip: &str, eps: &[&str], extra: Value) {
    let mut spec = json!({"clusterIPs": [vip], "ports": [{"name": "http", "port": 80}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    c.insert(service(json!({
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec
    })))
    .unwrap();
    let family = if vip.contains(':') { "IPv6" } else { "IPv4" };
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|a| json!({"addresses": [a], "nodeName": "node-b"}))
        .collect();
    c.insert(slice(json!({
        "metadata": {"name": format!("{name}-{family}"), "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    })))
    .unwrap();
}

pub fn add_service(c: &mut Cluster, name: &str, vip: &str, eps: &[&str]) {
    add_service_with(c, name, vip, eps, json!({}));
}

/// `demo/web` (ClusterIP + NodePort, 2 endpoints, one local), `demo/sticky`
/// (ClientIP affinity, 60 s), `demo/empty` (no endpoints), `demo/lb`
/// (LoadBalancer, `externalTrafficPolicy: Local`, source ranges) and
/// `demo/web6` (IPv6, 1 endpoint).
pub fn example_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.add_node_address(NODE, "192.168.0.1".parse().unwrap());
    c.add_node_address(NODE, "fd00::1".parse().unwrap());
    add_service_with(
        &mut c,
        "web",
        WEB_VIP,
        &["10.0.1.11", "10.0.1.12"],
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    // One endpoint of web is local: it gets a hairpin pair.
    let mut s = c.endpoint_slices()[&kube_nft::cluster::ObjectKey::new("demo", "web-IPv4")].clone();
    s.endpoints[0].node_name = Some(NODE.into());
    c.insert(Object::EndpointSlice(s)).unwrap();
    add_service_with(
        &mut c,
        "sticky",
        STICKY_VIP,
        &["10.0.1.21"],
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    );
    add_service(&mut c, "empty", EMPTY_VIP, &[]);
    add_service_with(
        &mut c,
        "lb",
        "10.96.0.40",
        &["10.0.1.41"],
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
               "externalIPs": ["198.51.100.7"],
               "loadBalancerSourceRanges": ["203.0.113.0/24"]}),
    );
    let mut lb = c.services()[&kube_nft::cluster::ObjectKey::new("demo", "lb")].clone();
    lb.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}))
            .unwrap(),
    );
    c.insert(Object::Service(lb)).unwrap();
    add_service(&mut c, "web6", "fd00:96::10", &["fd00:10::11"]);
    c
}

/// The NAT part of node [`NODE`]'s table for `c`.
pub fn render_example(c: &Cluster, config: &ServiceConfig) -> Table {
    let s = compute(c, NODE, config);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let mut t = Table::new(Family::Inet, "kube-nft");
    contribute(&mut t, &s, config);
    t
}

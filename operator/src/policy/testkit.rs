//! Helpers for the policy tests: tiny cluster builders, and a flow check that
//! asserts explain and the compiled IR agree on every verdict it is asked for.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::flow::{Endpoint, Flow, IpFlow, PortProto};
use super::{compile, explain_flow, ir_allows, ir_decide};
use crate::cluster::{Cluster, Object};

/// A pod on node-1; `ports` are (name, protocol, number).
pub fn pod(ns: &str, name: &str, labels: Value, ip: &str, ports: &[(&str, &str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, c)| json!({"name": n, "protocol": p, "containerPort": c}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip}
    })
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    })
}

pub fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
}

/// Builds a cluster from JSON objects, failing the test on invalid ones.
pub fn build(objects: &[Value]) -> Cluster {
    let mut c = Cluster::new();
    for o in objects {
        let obj = match o["kind"].as_str().unwrap() {
            "Pod" => Object::Pod(serde_json::from_value(o.clone()).unwrap()),
            "Namespace" => Object::Namespace(serde_json::from_value(o.clone()).unwrap()),
            "NetworkPolicy" => Object::NetworkPolicy(serde_json::from_value(o.clone()).unwrap()),
            "Node" => Object::Node(serde_json::from_value(o.clone()).unwrap()),
            k => panic!("kind {k}"),
        };
        c.insert(obj).unwrap();
    }
    c
}

/// The verdict on `from` → `to` on `port` ("80", "53/UDP"), after checking that
/// the compiled IR decides the same.
pub fn allowed(c: &Cluster, from: &str, to: &str, port: &str) -> bool {
    let port: PortProto = port.parse().unwrap();
    let flow = Flow {
        from: from.parse::<Endpoint>().unwrap(),
        to: to.parse::<Endpoint>().unwrap(),
        protocol: port.protocol,
        port: port.port,
    };
    let e = explain_flow(c, &flow).unwrap();
    let ir = compile(c);
    let ip_flow = IpFlow {
        src: e.from.ip,
        dst: e.to.ip,
        protocol: port.protocol,
        port: port.port,
    };
    let decisions = (
        e.egress.verdict.as_ir_decision(),
        e.ingress.verdict.as_ir_decision(),
    );
    assert_eq!(
        ir_decide(&ir, &ip_flow),
        decisions,
        "IR and explain decide differently on {from} -> {to} {port}\n{e}"
    );
    assert_eq!(
        ir_allows(&ir, &ip_flow),
        e.allowed,
        "IR and explain disagree on {from} -> {to} {port}\n{e}\n{}",
        serde_json::to_string_pretty(&ir).unwrap()
    );
    e.allowed
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

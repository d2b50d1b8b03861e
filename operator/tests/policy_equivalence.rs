//! Property: on random clusters and policies, the compiled IR (as the kernel
//! will evaluate it) gives the same verdict as explain, the reference
//! semantics, for every flow between pods, node addresses and outside IPs.

use kube_nft::cluster::{Cluster, Object, ObjectKey};
use kube_nft::policy::{compile, explain_flow, ir_allows, ir_decide, Endpoint, Flow, IpFlow};
use kube_nft_crds::ir::Protocol;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const NODE_IPS: [&str; 2] = ["172.18.0.1", "172.18.0.2"];

fn labels() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::sample::select(&VALUES[..])),
        prop::option::of(prop::sample::select(&VALUES[..])),
    )
        .prop_map(|(a, t)| {
            let mut m = Map::new();
            if let Some(a) = a {
                m.insert("app".into(), json!(a));
            }
            if let Some(t) = t {
                m.insert("tier".into(), json!(t));
            }
            Value::Object(m)
        })
}

fn selector() -> impl Strategy<Value = Value> {
    let expr = (
        prop::sample::select(&KEYS[..]),
        prop::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
        prop::collection::btree_set(prop::sample::select(&VALUES[..]), 1..3),
    )
        .prop_map(|(k, op, vs)| match op {
            "In" | "NotIn" => json!({"key": k, "operator": op, "values": vs}),
            _ => json!({"key": k, "operator": op}),
        });
    (
        prop::option::of(labels()),
        prop::option::of(prop::collection::vec(expr, 0..3)),
    )
        .prop_map(|(ml, me)| {
            let mut m = Map::new();
            if let Some(ml) = ml {
                m.insert("matchLabels".into(), ml);
            }
            if let Some(me) = me {
                m.insert("matchExpressions".into(), json!(me));
            }
            Value::Object(m)
        })
}

fn ns_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(&NAMESPACES[..])
            .prop_map(|n| json!({"matchLabels": {"kubernetes.io/metadata.name": n}})),
        prop::sample::select(&["a", "b"][..]).prop_map(|t| json!({"matchLabels": {"team": t}})),
        Just(json!({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]})),
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        ns_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (selector(), ns_selector())
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        prop::sample::select(vec![
            json!({"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.0.3.0/24"]}),
            json!({"cidr": "10.0.2.0/24"}),
            json!({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}),
            json!({"cidr": "172.18.0.0/16"}),
            json!({"cidr": "10.0.4.7/32"}),
        ])
        .prop_map(|b| json!({"ipBlock": b})),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    let proto = prop::option::of(prop::sample::select(&["TCP", "UDP", "SCTP"][..]));
    let number = prop_oneof![
        Just(None),
        (
            prop::sample::select(&[9, 53, 80, 81, 5353, 8080][..]),
            prop::option::of(0..100i32)
        )
            .prop_map(|(p, end)| Some((json!(p), end.map(|e| p + e)))),
        prop::sample::select(&["http", "dns", "sctp", "nope"][..])
            .prop_map(|n| Some((json!(n), None))),
    ];
    (proto, number).prop_map(|(proto, number)| {
        let mut m = Map::new();
        if let Some(p) = proto {
            m.insert("protocol".into(), json!(p));
        }
        if let Some((port, end)) = number {
            m.insert("port".into(), port);
            if let Some(e) = end {
                m.insert("endPort".into(), json!(e));
            }
        }
        Value::Object(m)
    })
}

fn rules(peer_field: &'static str) -> impl Strategy<Value = Option<Value>> {
    let rule = (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut m = Map::new();
            if let Some(p) = peers {
                m.insert(peer_field.into(), json!(p));
            }
            if let Some(p) = ports {
                m.insert("ports".into(), json!(p));
            }
            Value::Object(m)
        });
    prop::option::of(prop::collection::vec(rule, 0..3).prop_map(|v| json!(v)))
}

fn policy() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&NAMESPACES[..]),
        selector(),
        prop::sample::select(vec![None, Some(vec!["Ingress"]), Some(vec!["Egress"]), Some(vec!["Ingress", "Egress"])]),
        rules("from"),
        rules("to"),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| {
            let mut spec = Map::new();
            spec.insert("podSelector".into(), sel);
            if let Some(t) = types {
                spec.insert("policyTypes".into(), json!(t));
            }
            if let Some(i) = ingress {
                spec.insert("ingress".into(), i);
            }
            if let Some(e) = egress {
                spec.insert("egress".into(), e);
            }
            (ns, Value::Object(spec))
        })
        .prop_map(|(ns, spec)| json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": "p"}, "spec": spec}))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PodKind {
    Normal,
    HostNetwork,
    Finished,
}

fn pod() -> impl Strategy<Value = (Value, PodKind)> {
    let ports = (
        prop::option::of(prop::sample::select(&[80u16, 8080][..])),
        prop::option::of(prop::sample::select(&[53u16, 5353][..])),
        any::<bool>(),
        any::<bool>(),
    );
    let kind = prop_oneof![
        8 => Just(PodKind::Normal),
        1 => Just(PodKind::HostNetwork),
        1 => Just(PodKind::Finished),
    ];
    (
        prop::sample::select(&NAMESPACES[..]),
        labels(),
        ports,
        0..2usize,
        kind,
    )
        .prop_map(|(ns, labels, (http, dns, plain, sctp), node, kind)| {
            let mut ports = Vec::new();
            if let Some(p) = http {
                ports.push(json!({"name": "http", "containerPort": p}));
            }
            if let Some(p) = dns {
                ports.push(json!({"name": "dns", "containerPort": p, "protocol": "UDP"}));
                // Same name, other protocol, other number: the protocol must match too.
                ports.push(json!({"name": "dns", "containerPort": p + 1, "protocol": "TCP"}));
            }
            if plain {
                ports.push(json!({"containerPort": 81}));
            }
            if sctp {
                ports.push(json!({"name": "sctp", "containerPort": 9, "protocol": "SCTP"}));
            }
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": ns, "name": "", "labels": labels},
                "spec": {"nodeName": format!("node-{}", node + 1), "hostNetwork": kind == PodKind::HostNetwork,
                         "containers": [{"name": "c", "ports": ports}]},
                "status": {"phase": if kind == PodKind::Finished { "Failed" } else { "Running" }}
            });
            (pod, kind)
        })
}

fn namespace_labels() -> impl Strategy<Value = Vec<Option<&'static str>>> {
    prop::collection::vec(prop::option::of(prop::sample::select(&["a", "b"][..])), 3)
}

fn build(
    ns_labels: &[Option<&str>],
    pods: &[(Value, PodKind)],
    policies: &[Value],
) -> (Cluster, Vec<Endpoint>) {
    let mut c = Cluster::new();
    let mut endpoints = Vec::new();
    for (ns, team) in NAMESPACES.iter().zip(ns_labels) {
        let mut labels = Map::new();
        if let Some(t) = team {
            labels.insert("team".into(), json!(t));
        }
        let o = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}});
        c.insert(Object::Namespace(serde_json::from_value(o).unwrap()))
            .unwrap();
    }
    for (i, ip) in NODE_IPS.iter().enumerate() {
        let o = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{}", i + 1)},
                       "status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
        c.insert(Object::Node(serde_json::from_value(o).unwrap()))
            .unwrap();
        endpoints.push(Endpoint::Ip(ip.parse().unwrap()));
    }
    for (i, (pod, kind)) in pods.iter().enumerate() {
        let mut pod = pod.clone();
        let name = format!("p{i}");
        pod["metadata"]["name"] = json!(name);
        // Pods spread over 10.0.0-5.x so the ipBlocks cover some of them.
        let ip = if *kind == PodKind::HostNetwork {
            let node = pod["spec"]["nodeName"].as_str().unwrap();
            NODE_IPS[usize::from(node == "node-2")].to_string()
        } else {
            format!("10.0.{}.{}", i % 6, 7 + i / 6)
        };
        pod["status"]["podIP"] = json!(ip);
        let key = ObjectKey::new(pod["metadata"]["namespace"].as_str().unwrap(), name);
        c.insert(Object::Pod(serde_json::from_value(pod).unwrap()))
            .unwrap();
        if *kind != PodKind::Finished {
            endpoints.push(Endpoint::Pod(key));
        }
        if *kind != PodKind::HostNetwork {
            endpoints.push(Endpoint::Ip(ip.parse().unwrap()));
        }
    }
    for (i, p) in policies.iter().enumerate() {
        let mut p = p.clone();
        p["metadata"]["name"] = json!(format!("np{i}"));
        // Invalid combinations (endPort on a named port) are rejected, as the
        // API server would.
        let _ = c.insert(Object::NetworkPolicy(serde_json::from_value(p).unwrap()));
    }
    for ip in ["10.0.9.9", "192.168.1.1", "10.0.1.200"] {
        endpoints.push(Endpoint::Ip(ip.parse().unwrap()));
    }
    (c, endpoints)
}

const PROBES: [(Protocol, u16); 9] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Tcp, 8080),
    (Protocol::Tcp, 54),
    (Protocol::Tcp, 120),
    (Protocol::Udp, 53),
    (Protocol::Udp, 5353),
    (Protocol::Sctp, 9),
    (Protocol::Sctp, 80),
];

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.

    #[test]
    fn ir_agrees_with_explain(
        ns_labels in namespace_labels(),
        pods in prop::collection::vec(pod(), 1..9),
        policies in prop::collection::vec(policy(), 0..5),
    ) {
        let (cluster, endpoints) = build(&ns_labels, &pods, &policies);
        let ir = compile(&cluster);
        for from in &endpoints {
            for to in &endpoints {
                if from == to {
                    continue;
                }
                for (protocol, port) in PROBES {
                    let flow = Flow { from: from.clone(), to: to.clone(), protocol, port };
                    let e = explain_flow(&cluster, &flow).unwrap();
                    let ip_flow = IpFlow { src: e.from.ip, dst: e.to.ip, protocol, port };
                    prop_assert_eq!(
                        ir_decide(&ir, &ip_flow),
                        (e.egress.verdict.as_ir_decision(), e.ingress.verdict.as_ir_decision()),
                        "{} -> {} {}/{}\n{}", from, to, protocol, port, e
                    );
                    prop_assert_eq!(
                        ir_allows(&ir, &ip_flow), e.allowed,
                        "{} -> {} {}/{}\n{}\nIR: {}", from, to, protocol, port, e,
                        serde_json::to_string_pretty(&ir).unwrap()
                    );
                }
            }
        }
    }
}

//! Unit tests of the Service NAT model: one test per rule of the module docs.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_nft_crds::ir::Protocol;
use serde_json::{json, Value};

use super::*;
use crate::cluster::{Cluster, Object, ObjectKey};

fn svc(v: Value) -> Object {
    Object::Service(serde_json::from_value::<Service>(v).unwrap())
}

fn slice(v: Value) -> Object {
    Object::EndpointSlice(serde_json::from_value::<EndpointSlice>(v).unwrap())
}

fn pod(v: Value) -> Object {
    Object::Pod(serde_json::from_value::<Pod>(v).unwrap())
}

fn cluster(objects: Vec<Object>) -> Cluster {
    let mut c = Cluster::new();
    for o in objects {
        c.insert(o).unwrap();
    }
    c.add_node_address("node-a", "192.168.0.1".parse().unwrap());
    c.add_node_address("node-a", "fd00::1".parse().unwrap());
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An endpoint of a slice: `(address, ready, serving, terminating, node)`.
fn ep(addr: &str, ready: bool, serving: bool, terminating: bool, node: &str) -> Value {
    json!({
        "addresses": [addr],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": format!("p-{addr}"), "namespace": "demo"}
    })
}

fn web_service(extra: Value) -> Object {
    let mut spec = json!({
        "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "port": 80, "targetPort": "web"}]
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    svc(json!({"metadata": {"name": "web", "namespace": "demo"}, "spec": spec}))
}

fn web_slice(endpoints: Vec<Value>) -> Object {
    slice(json!({
        "metadata": {"name": "web-1", "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
}

fn compute_a(c: &Cluster) -> NodeServices {
    compute(c, "node-a", &ServiceConfig::default())
}

fn only(s: &NodeServices, kind: FrontendKind) -> Vec<&Entry> {
    s.entries
        .iter()
        .filter(|e| e.frontend.kind == kind)
        .collect()
}

fn addrs(e: &Entry) -> Vec<(IpAddr, u16)> {
    e.endpoints().iter().map(|e| (e.addr, e.port)).collect()
}

#[test]
fn cluster_ips_of_both_families_every_port_and_protocol() {
    let c = cluster(vec![
        svc(json!({
            "metadata": {"name": "dns", "namespace": "demo"},
            "spec": {
                "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
                    {"name": "sig", "port": 9, "protocol": "SCTP"}
                ]
            }
        })),
        slice(json!({
            "metadata": {"name": "dns-v4", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4",
            "ports": [
                {"name": "dns", "port": 5353, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                {"name": "sig", "port": 9, "protocol": "SCTP"}
            ],
            "endpoints": [{"addresses": ["10.0.1.5"]}, {"addresses": ["10.0.2.5"]}]
        })),
        slice(json!({
            "metadata": {"name": "dns-v6", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv6",
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["fd00:1::5"]}]
        })),
    ]);
    let s = compute_a(&c);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let summary: Vec<String> = s
        .entries
        .iter()
        .map(|e| {
            format!(
                "{} {} -> {:?} ({})",
                e.frontend,
                e.label(),
                addrs(e),
                e.frontend.kind.as_str()
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "10.96.0.10:53/TCP demo/dns:dns-tcp -> [(10.0.1.5, 5354), (10.0.2.5, 5354)] (ClusterIP)",
            "10.96.0.10:53/UDP demo/dns:dns -> [(10.0.1.5, 5353), (10.0.2.5, 5353)] (ClusterIP)",
            "10.96.0.10:9/SCTP demo/dns:sig -> [(10.0.1.5, 9), (10.0.2.5, 9)] (ClusterIP)",
            "[fd00:96::10]:53/TCP demo/dns:dns-tcp -> [] (ClusterIP)",
            "[fd00:96::10]:53/UDP demo/dns:dns -> [(fd00:1::5, 5353)] (ClusterIP)",
            "[fd00:96::10]:9/SCTP demo/dns:sig -> [] (ClusterIP)",
        ]
    );
    // The IPv6 slice lists no TCP or SCTP port: those IPv6 frontends reject.
    let v6_tcp = s
        .entries
        .iter()
        .find(|e| e.frontend.family == IpFamily::V6 && e.frontend.protocol == Protocol::Tcp)
        .unwrap();
    assert_eq!(v6_tcp.backend, Backend::Reject);
}

#[test]
fn named_target_port_comes_resolved_from_the_slice_port_of_the_same_name() {
    let c = cluster(vec![
        web_service(json!({})),
        web_slice(vec![ep("10.0.1.5", true, true, false, "node-a")]),
        // Another slice names its port differently: not this Service port.
        slice(json!({
            "metadata": {"name": "web-2", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090}],
            "endpoints": [{"addresses": ["10.0.1.6"]}]
        })),
    ]);
    let s = compute_a(&c);
    assert_eq!(addrs(&s.entries[0]), vec![(ip("10.0.1.5"), 8080)]);
    assert_eq!(
        s.entries[0].endpoints()[0].pod.as_deref(),
        Some("demo/p-10.0.1.5")
    );
}

#[test]
fn headless_and_external_name_services_have_no_entries() {
    let c = cluster(vec![
        svc(json!({"metadata": {"name": "h", "namespace": "demo"},
                   "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
        svc(json!({"metadata": {"name": "x", "namespace": "demo"},
                   "spec": {"type": "ExternalName", "externalName": "db.example.com"}})),
    ]);
    let s = compute_a(&c);
    assert!(s.entries.is_empty() && s.errors.is_empty(), "{s:?}");
    let x = &c.services()[&ObjectKey::new("demo", "x")];
    let note = external_name_note(x).unwrap();
    assert!(
        note.starts_with("ExternalName Services are DNS only"),
        "{note}"
    );
    assert!(note.contains("db.example.com"), "{note}");
    assert_eq!(
        external_name_note(&c.services()[&ObjectKey::new("demo", "h")]),
        None
    );
}

#[test]
fn only_ready_endpoints_and_serving_terminating_ones_when_none_is_ready() {
    let not_ready = ep("10.0.1.1", false, false, false, "node-a");
    let draining = ep("10.0.1.2", false, true, true, "node-a");
    let gone = ep("10.0.1.3", false, false, true, "node-a");
    let ready = ep("10.0.1.4", true, true, false, "node-b");
    let c = cluster(vec![
        web_service(json!({})),
        web_slice(vec![not_ready.clone(), draining.clone(), gone.clone()]),
    ]);
    assert_eq!(
        addrs(&compute_a(&c).entries[0]),
        vec![(ip("10.0.1.2"), 8080)],
        "fallback to serving and terminating"
    );
    let c = cluster(vec![
        web_service(json!({})),
        web_slice(vec![not_ready, draining, gone, ready]),
    ]);
    assert_eq!(
        addrs(&compute_a(&c).entries[0]),
        vec![(ip("10.0.1.4"), 8080)]
    );
    // Unset conditions: ready.
    let c = cluster(vec![
        web_service(json!({})),
        web_slice(vec![json!({"addresses": ["10.0.1.9"]})]),
    ]);
    assert_eq!(
        addrs(&compute_a(&c).entries[0]),
        vec![(ip("10.0.1.9"), 8080)]
    );
}

#[test]
fn a_port_without_endpoints_rejects_on_every_frontend() {
    let c = cluster(vec![
        web_service(json!({"type": "LoadBalancer", "externalIPs": ["192.0.2.7"],
                           "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
        web_slice(vec![ep("10.0.1.1", false, false, false, "node-a")]),
    ]);
    let s = compute_a(&c);
    let kinds: Vec<FrontendKind> = s.entries.iter().map(|e| e.frontend.kind).collect();
    assert_eq!(
        kinds,
        vec![
            FrontendKind::ClusterIp,
            FrontendKind::NodePort,
            FrontendKind::ExternalIp
        ]
    );
    assert!(s.entries.iter().all(|e| e.backend == Backend::Reject));
}

#[test]
fn external_traffic_policy_local_uses_local_endpoints_and_keeps_the_client() {
    let spec = json!({
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000,
        "externalIPs": ["192.0.2.7"],
        "loadBalancerSourceRanges": ["203.0.113.0/24", "2001:db8::/32"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": "web"}]
    });
    let lb = |c: &mut Cluster| {
        let mut s = c.services()[&ObjectKey::new("demo", "web")].clone();
        s.status = Some(
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}))
                .unwrap(),
        );
        c.insert(Object::Service(s)).unwrap();
    };
    let mut c = cluster(vec![
        web_service(spec),
        web_slice(vec![
            ep("10.0.1.5", true, true, false, "node-a"),
            ep("10.0.2.5", true, true, false, "node-b"),
        ]),
    ]);
    lb(&mut c);
    let a = compute_a(&c);
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    let cip = only(&a, FrontendKind::ClusterIp)[0];
    assert_eq!(cip.endpoints().len(), 2, "ClusterIP keeps every endpoint");
    assert_eq!(
        cip.masquerade,
        Masquerade::Never,
        "no cluster CIDR configured"
    );
    for kind in [
        FrontendKind::NodePort,
        FrontendKind::LoadBalancer,
        FrontendKind::ExternalIp,
    ] {
        let e = only(&a, kind)[0];
        assert_eq!(addrs(e), vec![(ip("10.0.1.5"), 8080)], "{kind:?}");
        assert_eq!(e.masquerade, Masquerade::Never);
    }
    let lb_entry = only(&a, FrontendKind::LoadBalancer)[0];
    assert_eq!(
        lb_entry.source_ranges,
        Some(vec!["203.0.113.0/24".parse().unwrap()]),
        "only the ranges of the frontend's family"
    );
    assert_eq!(only(&a, FrontendKind::ExternalIp)[0].source_ranges, None);
    assert_eq!(
        a.health_checks,
        vec![HealthCheck {
            service: ObjectKey::new("demo", "web"),
            node_port: Some(32000),
            local_endpoints: 1
        }]
    );
    // A node without a local endpoint drops external traffic (others have one).
    let c_node = compute(&c, "node-c", &ServiceConfig::default());
    for kind in [FrontendKind::NodePort, FrontendKind::LoadBalancer] {
        assert_eq!(only(&c_node, kind)[0].backend, Backend::Drop, "{kind:?}");
    }
    assert_eq!(c_node.health_checks[0].local_endpoints, 0);
}

#[test]
fn external_traffic_policy_cluster_masquerades_external_frontends() {
    let c = cluster(vec![
        web_service(json!({"type": "NodePort",
                           "ports": [{"name": "http", "port": 80, "nodePort": 30080}]})),
        web_slice(vec![ep("10.0.2.5", true, true, false, "node-b")]),
    ]);
    let config = ServiceConfig {
        cluster_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let s = compute(&c, "node-a", &config);
    assert_eq!(
        only(&s, FrontendKind::NodePort)[0].masquerade,
        Masquerade::Always
    );
    assert_eq!(
        only(&s, FrontendKind::ClusterIp)[0].masquerade,
        Masquerade::FromOutsideCluster
    );
    assert_eq!(only(&s, FrontendKind::NodePort)[0].frontend.addr, None);
    assert!(s.health_checks.is_empty());
}

#[test]
fn internal_traffic_policy_local_drops_without_a_local_endpoint() {
    let c = cluster(vec![
        web_service(json!({"internalTrafficPolicy": "Local"})),
        web_slice(vec![
            ep("10.0.1.5", true, true, false, "node-a"),
            ep("10.0.2.5", true, true, false, "node-b"),
        ]),
    ]);
    assert_eq!(
        addrs(&compute_a(&c).entries[0]),
        vec![(ip("10.0.1.5"), 8080)]
    );
    let c_node = compute(&c, "node-c", &ServiceConfig::default());
    assert_eq!(c_node.entries[0].backend, Backend::Drop);
    // No endpoint anywhere: reject, whatever the policy.
    let c = cluster(vec![web_service(json!({"internalTrafficPolicy": "Local"}))]);
    assert_eq!(compute_a(&c).entries[0].backend, Backend::Reject);
}

#[test]
fn session_affinity_timeout_defaults_to_three_hours() {
    let c = cluster(vec![web_service(json!({"sessionAffinity": "ClientIP"}))]);
    assert_eq!(
        compute_a(&c).entries[0].affinity,
        Some(Duration::from_secs(10_800))
    );
    let c = cluster(vec![web_service(json!({
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}
    }))]);
    assert_eq!(
        compute_a(&c).entries[0].affinity,
        Some(Duration::from_secs(60))
    );
    assert_eq!(cluster(vec![web_service(json!({}))]).services().len(), 1);
}

#[test]
fn bad_objects_are_reported_by_object_and_field_and_skipped() {
    let c = cluster(vec![
        svc(json!({"metadata": {"name": "bad", "namespace": "demo"},
                   "spec": {"clusterIP": "10.96.0.9",
                            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 70000}]}})),
        svc(json!({"metadata": {"name": "aff", "namespace": "demo"},
                   "spec": {"clusterIP": "10.96.0.8", "sessionAffinity": "ClientIP",
                            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
                            "ports": [{"port": 80}]}})),
        // Its own ClusterIP as external IP: the same frontend, merged silently.
        web_service(json!({"externalIPs": ["10.96.0.10"]})),
        slice(json!({
            "metadata": {"name": "web-x", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["fd00::5"]}]
        })),
        web_slice(vec![ep("10.0.1.5", true, true, false, "node-a")]),
    ]);
    let s = compute_a(&c);
    let errors: Vec<String> = s.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec![
            "EndpointSlice demo/web-x: field endpoints[0].addresses[0]: fd00::5 is not an IPv4 address, but addressType is IPv4",
            "Service demo/aff: field spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not between 1 and 86400",
            "Service demo/bad: field spec.ports[1].port: 70000 is not a port number (1-65535)",
        ]
    );
    // The good slice of web still counts; the bad one is skipped whole.
    assert_eq!(s.entries.len(), 1);
    assert_eq!(addrs(&s.entries[0]), vec![(ip("10.0.1.5"), 8080)]);
}

#[test]
fn a_frontend_claimed_by_two_services_stays_with_the_first() {
    let other = svc(json!({"metadata": {"name": "zz", "namespace": "demo"},
                           "spec": {"clusterIP": "10.96.0.11", "externalIPs": ["10.96.0.10"],
                                    "ports": [{"name": "http", "port": 80}]}}));
    let c = cluster(vec![web_service(json!({})), other]);
    let s = compute_a(&c);
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert!(s.errors[0].object == "Service demo/zz" && s.errors[0].field == "spec.externalIPs[0]");
    let owners: Vec<String> = s.entries.iter().map(Entry::label).collect();
    assert_eq!(owners, vec!["demo/web:http", "demo/zz:http"]);
}

fn lab_pod(name: &str, ips: &[&str], labels: Value, ports: Value, extra: Value) -> Object {
    let ips: Vec<Value> = ips.iter().map(|i| json!({"ip": i})).collect();
    let mut v = json!({
        "metadata": {"name": name, "namespace": "demo", "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": ports}]},
        "status": {"podIP": ips[0]["ip"], "podIPs": ips}
    });
    for (k, x) in extra.as_object().unwrap() {
        match k.as_str() {
            "deletionTimestamp" => v["metadata"][k] = x.clone(),
            _ => v["status"][k] = x.clone(),
        }
    }
    pod(v)
}

#[test]
fn synthesized_slices_follow_the_endpoint_slice_controller() {
    let web_ports = json!([{"name": "web", "containerPort": 8080}]);
    let alt_ports = json!([{"name": "web", "containerPort": 9090}]);
    let c = cluster(vec![
        svc(json!({"metadata": {"name": "web", "namespace": "demo"},
                   "spec": {"clusterIPs": ["10.96.0.10", "fd00:96::10"], "selector": {"app": "web"},
                            "ports": [{"name": "http", "port": 80, "targetPort": "web"},
                                      {"name": "admin", "port": 81, "targetPort": 7000}]}})),
        lab_pod(
            "a",
            &["10.0.1.1", "fd00:1::1"],
            json!({"app": "web"}),
            web_ports.clone(),
            json!({}),
        ),
        lab_pod(
            "b",
            &["10.0.1.2"],
            json!({"app": "web"}),
            alt_ports,
            json!({}),
        ),
        lab_pod(
            "c",
            &["10.0.1.3"],
            json!({"app": "web"}),
            web_ports.clone(),
            json!({"conditions": [{"type": "Ready", "status": "False"}]}),
        ),
        lab_pod(
            "d",
            &["10.0.1.4"],
            json!({"app": "web"}),
            web_ports.clone(),
            json!({"deletionTimestamp": "2024-01-01T00:00:00Z"}),
        ),
        lab_pod(
            "e",
            &["10.0.1.5"],
            json!({"app": "web"}),
            json!([]),
            json!({}),
        ),
        lab_pod(
            "f",
            &["10.0.1.6"],
            json!({"app": "db"}),
            web_ports.clone(),
            json!({}),
        ),
        lab_pod(
            "g",
            &["10.0.1.7"],
            json!({"app": "web"}),
            web_ports.clone(),
            json!({"phase": "Succeeded"}),
        ),
    ]);
    let slices = synthesize_slices(&c);
    let summary: Vec<String> = slices
        .iter()
        .map(|s| {
            let ports: Vec<String> = s
                .ports
                .iter()
                .flatten()
                .map(|p| format!("{}={}", p.name.as_deref().unwrap(), p.port.unwrap()))
                .collect();
            let eps: Vec<String> = s
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.as_ref().unwrap();
                    format!(
                        "{}{}{}{}",
                        e.addresses[0],
                        if c.ready.unwrap() { "" } else { " !ready" },
                        if c.serving.unwrap() { "" } else { " !serving" },
                        if c.terminating.unwrap() {
                            " terminating"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            format!(
                "{} {} [{}] {}",
                s.metadata.name.as_deref().unwrap(),
                s.address_type,
                ports.join(","),
                eps.join(", ")
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            // Pod e has no port named `web`: only the numeric port.
            "web-v4-0 IPv4 [admin=7000] 10.0.1.5",
            "web-v4-1 IPv4 [http=8080,admin=7000] 10.0.1.1, 10.0.1.3 !ready !serving, 10.0.1.4 !ready terminating",
            "web-v4-2 IPv4 [http=9090,admin=7000] 10.0.1.2",
            "web-v6-0 IPv6 [http=8080,admin=7000] fd00:1::1",
        ]
    );
    assert_eq!(slices[1].endpoints[0].node_name.as_deref(), Some("node-a"));
    // Inserted into the cluster, they feed compute: ready pods on both ports.
    let mut c2 = c.clone();
    for s in slices {
        c2.insert(Object::EndpointSlice(s)).unwrap();
    }
    let s = compute_a(&c2);
    let http_v4 = s
        .entries
        .iter()
        .find(|e| e.port_name == "http" && e.frontend.family == IpFamily::V4)
        .unwrap();
    assert_eq!(
        addrs(http_v4),
        vec![(ip("10.0.1.1"), 8080), (ip("10.0.1.2"), 9090)]
    );
    // A Service that has a slice in the manifests gets none synthesized.
    assert!(synthesize_slices(&c2).is_empty());
}

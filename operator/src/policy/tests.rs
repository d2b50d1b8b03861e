//! Unit tests of NetworkPolicy semantics. Every verdict goes through
//! [`testkit::allowed`], which also checks the compiled IR agrees with explain.

use serde_json::json;

use super::testkit::{allowed, build, ip, namespace, node, pod, policy};
use super::{compile, explain_flow, Endpoint, Flow};
use crate::cluster::ObjectKey;
use kube_nft_crds::ir::{IrPeer, Protocol};

fn base() -> Vec<serde_json::Value> {
    vec![
        namespace("x", json!({"team": "front"})),
        namespace("y", json!({"team": "back"})),
        pod(
            "x",
            "a",
            json!({"app": "a"}),
            "10.0.1.1",
            &[("http", "TCP", 80)],
        ),
        pod(
            "x",
            "b",
            json!({"app": "b"}),
            "10.0.1.2",
            &[("http", "TCP", 80)],
        ),
        pod(
            "y",
            "a",
            json!({"app": "a"}),
            "10.0.2.1",
            &[("http", "TCP", 80)],
        ),
        pod(
            "y",
            "b",
            json!({"app": "b"}),
            "10.0.2.2",
            &[("http", "TCP", 8080)],
        ),
    ]
}

fn with(policies: &[serde_json::Value]) -> crate::cluster::Cluster {
    let mut objs = base();
    objs.extend(policies.iter().cloned());
    build(&objs)
}

#[test]
fn no_policy_allows_everything() {
    let c = with(&[]);
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(allowed(&c, "x/a", "192.0.2.1", "443"));
}

#[test]
fn default_deny_ingress_isolates_only_ingress() {
    let c = with(&[policy(
        "y",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    assert!(!allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "y/a", "y/b", "80"));
    assert!(allowed(&c, "y/b", "x/a", "80"), "egress not isolated");
    assert!(allowed(&c, "x/a", "x/b", "80"), "other namespace untouched");
}

#[test]
fn allow_all_ingress_idiom() {
    let c = with(&[
        policy("y", "deny", json!({"podSelector": {}})),
        policy(
            "y",
            "allow-all",
            json!({"podSelector": {}, "ingress": [{}]}),
        ),
    ]);
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(allowed(&c, "198.51.100.7", "y/b", "9999/UDP"));
}

#[test]
fn default_deny_egress_and_policy_types_defaulting() {
    // policyTypes absent + egress rules → Ingress and Egress.
    let c = with(&[policy(
        "x",
        "egress-only-y",
        json!({"podSelector": {"matchLabels": {"app": "a"}},
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "back"}}}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "x/a", "x/b", "80"));
    assert!(
        !allowed(&c, "x/b", "x/a", "80"),
        "ingress isolated by defaulting, no ingress rule"
    );
    // `egress: []` is no egress rule: Ingress only.
    let c = with(&[policy("x", "p", json!({"podSelector": {}, "egress": []}))]);
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "y/a", "x/a", "80"));
}

#[test]
fn policy_types_egress_only_ignores_ingress_rules() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "nobody"}}}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/b", "80"), "not isolated for ingress");
    assert!(
        !allowed(&c, "y/b", "x/a", "80"),
        "isolated for egress, no egress rule"
    );
}

#[test]
fn one_policy_allows_while_another_only_isolates() {
    let c = with(&[
        policy(
            "y",
            "isolate",
            json!({"podSelector": {"matchLabels": {"app": "b"}}}),
        ),
        policy(
            "y",
            "allow-x",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "front"}}}]}]}),
        ),
    ]);
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "y/a", "y/b", "80"));
    let e = explain_flow(&c, &flow("x/a", "y/b", 80)).unwrap();
    assert_eq!(e.ingress.selected_by, vec!["y/allow-x", "y/isolate"]);
}

#[test]
fn empty_pod_selector_in_peer_means_own_namespace() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )]);
    assert!(allowed(&c, "y/a", "y/b", "80"));
    assert!(!allowed(&c, "x/a", "y/b", "80"));
}

#[test]
fn empty_namespace_selector_means_all_namespaces() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    )]);
    assert!(allowed(&c, "y/a", "y/b", "80"));
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "203.0.113.9", "y/b", "80"), "not a pod");
}

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "front"}}, "podSelector": {"matchLabels": {"app": "a"}}}
        ]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "x/b", "y/b", "80"));
    assert!(!allowed(&c, "y/a", "y/b", "80"));
    // Two peers are ORed.
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "front"}}}, {"podSelector": {"matchLabels": {"app": "a"}}}
        ]}]}),
    )]);
    assert!(allowed(&c, "x/b", "y/b", "80"));
    assert!(allowed(&c, "y/a", "y/b", "80"));
}

#[test]
fn namespace_selected_by_metadata_name_label() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}
        ]}]}),
    )]);
    assert!(allowed(&c, "x/b", "y/b", "80"));
}

#[test]
fn match_expressions_operators() {
    let sel = |exprs: serde_json::Value| {
        with(&[policy(
            "y",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {}, "podSelector": {"matchExpressions": exprs}}
            ]}]}),
        )])
    };
    let c = sel(json!([{"key": "app", "operator": "In", "values": ["a", "z"]}]));
    assert!(allowed(&c, "x/a", "y/b", "80"));
    assert!(!allowed(&c, "x/b", "y/b", "80"));
    let c = sel(json!([{"key": "app", "operator": "NotIn", "values": ["a"]}]));
    assert!(!allowed(&c, "x/a", "y/b", "80"));
    assert!(allowed(&c, "x/b", "y/b", "80"));
    let c = sel(json!([{"key": "tier", "operator": "NotIn", "values": ["x"]}]));
    assert!(
        allowed(&c, "x/a", "y/b", "80"),
        "NotIn matches an absent label"
    );
    let c = sel(json!([{"key": "tier", "operator": "Exists"}]));
    assert!(!allowed(&c, "x/a", "y/b", "80"));
    let c = sel(json!([{"key": "tier", "operator": "DoesNotExist"}]));
    assert!(allowed(&c, "x/a", "y/b", "80"));
}

#[test]
fn ip_block_with_except() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}
        ]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/b", "80"), "pod IPs match ipBlock too");
    assert!(!allowed(&c, "y/a", "y/b", "80"), "inside except");
    assert!(allowed(&c, "10.0.9.9", "y/b", "80"));
    assert!(!allowed(&c, "10.0.2.200", "y/b", "80"));
    assert!(!allowed(&c, "192.168.1.1", "y/b", "80"));
}

#[test]
fn egress_ip_block_to_external() {
    let c = with(&[policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "192.0.2.10", "443"));
    assert!(!allowed(&c, "x/a", "192.0.2.10", "80"));
    assert!(!allowed(&c, "x/a", "y/a", "443"));
}

#[test]
fn ports_numbers_ranges_and_protocols() {
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80},
            {"protocol": "UDP", "port": 5000, "endPort": 5010},
            {"protocol": "SCTP"}
        ]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/b", "80/TCP"));
    assert!(
        !allowed(&c, "x/a", "y/b", "80/UDP"),
        "absent protocol is TCP"
    );
    assert!(allowed(&c, "x/a", "y/b", "5000/UDP"));
    assert!(allowed(&c, "x/a", "y/b", "5010/UDP"));
    assert!(!allowed(&c, "x/a", "y/b", "5011/UDP"));
    assert!(!allowed(&c, "x/a", "y/b", "5005/TCP"));
    assert!(
        allowed(&c, "x/a", "y/b", "1234/SCTP"),
        "protocol without port = all ports"
    );
}

#[test]
fn ingress_named_port_resolves_on_the_destination_pod() {
    // "http" is 80 on y/a and 8080 on y/b.
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/a", "80"));
    assert!(!allowed(&c, "x/a", "y/a", "8080"));
    assert!(allowed(&c, "x/a", "y/b", "8080"));
    assert!(!allowed(&c, "x/a", "y/b", "80"));
    // Name and protocol must both match.
    let c = with(&[policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "protocol": "UDP"}]}]}),
    )]);
    assert!(!allowed(&c, "x/a", "y/a", "80/TCP"));
    assert!(!allowed(&c, "x/a", "y/a", "80/UDP"));
}

#[test]
fn egress_named_port_resolves_differently_per_destination_pod() {
    let c = with(&[policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}, {"port": 9000}]}]}),
    )]);
    assert!(allowed(&c, "x/a", "y/a", "80"));
    assert!(!allowed(&c, "x/a", "y/a", "8080"));
    assert!(allowed(&c, "x/a", "y/b", "8080"));
    assert!(!allowed(&c, "x/a", "y/b", "80"));
    assert!(allowed(&c, "x/a", "y/b", "9000"));
    assert!(
        !allowed(&c, "x/a", "198.51.100.1", "80"),
        "no pod, no named port"
    );
    // The IR carries per-pod ports in an address+port set.
    let ir = compile(&c);
    let pods = &ir.nodes["node-1"].pods;
    let a = pods
        .iter()
        .find(|p| p.namespace == "x" && p.name == "a")
        .unwrap();
    assert_eq!(
        a.egress.len(),
        2,
        "numeric and named ports split: {:?}",
        a.egress
    );
    let IrPeer::AddressPortSet { name } = &a.egress[1].peers[0] else {
        panic!("{:?}", a.egress[1]);
    };
    let set = &ir.address_sets[name];
    assert!(set.elements.iter().any(|e| e.ip == ip("10.0.2.2")
        && e.port == Some(8080)
        && e.protocol == Some(Protocol::Tcp)));
    assert!(set
        .elements
        .iter()
        .any(|e| e.ip == ip("10.0.2.1") && e.port == Some(80)));
}

#[test]
fn relabelled_pod_changes_set_elements_not_names() {
    let p = policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}]}]}),
    );
    let c1 = with(std::slice::from_ref(&p));
    assert!(allowed(&c1, "x/a", "y/b", "80"));
    let mut objs = base();
    objs[2] = pod(
        "x",
        "a",
        json!({"app": "other"}),
        "10.0.1.1",
        &[("http", "TCP", 80)],
    );
    objs.push(p);
    let c2 = build(&objs);
    assert!(
        !allowed(&c2, "x/a", "y/b", "80"),
        "relabelled out of the selector"
    );
    let (ir1, ir2) = (compile(&c1), compile(&c2));
    let names = |ir: &kube_nft_crds::ir::CompiledPolicy| {
        ir.address_sets.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(names(&ir1), names(&ir2));
    assert_ne!(ir1.address_sets, ir2.address_sets);
}

#[test]
fn identical_peers_share_one_address_set_and_output_is_deterministic() {
    let peer = json!([{"podSelector": {"matchLabels": {"app": "a"}}, "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["front", "back"]}]}}]);
    let peer_reordered = json!([{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["back", "front"]}]}, "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]}}]);
    let c = with(&[
        policy(
            "y",
            "p1",
            json!({"podSelector": {}, "ingress": [{"from": peer}]}),
        ),
        policy(
            "y",
            "p2",
            json!({"podSelector": {}, "egress": [{"to": peer_reordered}]}),
        ),
    ]);
    let ir = compile(&c);
    assert_eq!(ir.address_sets.len(), 1, "{:#?}", ir.address_sets);
    assert_eq!(ir, compile(&c));
    assert_eq!(
        serde_json::to_string(&ir).unwrap(),
        serde_json::to_string(&compile(&c)).unwrap()
    );
}

#[test]
fn compile_node_has_only_that_node_and_its_sets() {
    let mut objs = base();
    let mut other = pod("z", "c", json!({"app": "c"}), "10.0.3.1", &[]);
    other["spec"]["nodeName"] = json!("node-2");
    objs.push(other);
    objs.push(policy("z", "p", json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}]})));
    objs.push(policy("y", "p", json!({"podSelector": {}})));
    let c = build(&objs);
    let n2 = super::compile_node(&c, "node-2");
    assert_eq!(n2.nodes.keys().collect::<Vec<_>>(), vec!["node-2"]);
    assert_eq!(n2.nodes["node-2"].pods.len(), 1);
    assert_eq!(n2.address_sets.len(), 1);
    let n1 = super::compile_node(&c, "node-1");
    assert!(n1.address_sets.is_empty());
    assert_eq!(n1.nodes["node-1"].pods.len(), 2);
}

#[test]
fn node_may_reach_its_pods_and_host_network_pods_are_not_selected() {
    let mut objs = base();
    objs.push(node("node-1", "172.18.0.2"));
    let mut host = pod("x", "host", json!({"app": "a"}), "172.18.0.2", &[]);
    host["spec"]["hostNetwork"] = json!(true);
    objs.push(host);
    objs.push(policy(
        "y",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    ));
    objs.push(policy(
        "x",
        "deny",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    ));
    let c = build(&objs);
    assert!(allowed(&c, "172.18.0.2", "y/b", "80"), "own node");
    assert!(
        allowed(&c, "x/host", "y/b", "80"),
        "host-network pod = node address"
    );
    assert!(!allowed(&c, "172.18.0.3", "y/b", "80"));
    assert!(
        allowed(&c, "x/a", "x/host", "80"),
        "x/deny does not select a host-network pod"
    );
    assert!(
        !allowed(&c, "y/a", "x/host", "80"),
        "y/a itself is isolated for egress"
    );
}

#[test]
fn host_network_pod_matched_only_by_ip_block() {
    let mut objs = base();
    let mut host = pod("x", "host", json!({"app": "a"}), "172.18.0.9", &[]);
    host["spec"]["hostNetwork"] = json!(true);
    objs.push(host);
    objs.push(policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    ));
    let c = build(&objs);
    assert!(
        !allowed(&c, "x/host", "y/b", "80"),
        "selectors do not match host-network pods"
    );
    assert!(allowed(&c, "x/a", "y/b", "80"));
    let c = {
        let mut objs = base();
        let mut host = pod("x", "host", json!({}), "172.18.0.9", &[]);
        host["spec"]["hostNetwork"] = json!(true);
        objs.push(host);
        objs.push(policy("y", "p", json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "172.18.0.0/16"}}]}]})));
        build(&objs)
    };
    assert!(allowed(&c, "x/host", "y/b", "80"));
}

#[test]
fn finished_pods_take_no_part() {
    let mut objs = base();
    let mut done = pod("x", "done", json!({"app": "a"}), "10.0.1.99", &[]);
    done["status"]["phase"] = json!("Succeeded");
    objs.push(done);
    objs.push(policy(
        "y",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    ));
    let c = build(&objs);
    assert!(
        !allowed(&c, "10.0.1.99", "y/b", "80"),
        "the IP no longer stands for the pod"
    );
    assert!(explain_flow(&c, &flow("x/done", "y/b", 80)).is_err());
}

#[test]
fn invalid_policy_is_rejected_naming_the_field() {
    let mut c = with(&[policy("y", "good", json!({"podSelector": {}}))]);
    let mut bad = |spec: serde_json::Value| -> crate::cluster::ValidationError {
        let p: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(policy("y", "bad", spec)).unwrap();
        c.insert_policy(p).unwrap_err()
    };
    let e = bad(
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]}),
    );
    assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.except[0]");
    assert_eq!(e.object, "NetworkPolicy y/bad");
    let e = bad(json!({"podSelector": {}, "egress": [{"ports": [{"port": 90, "endPort": 80}]}]}));
    assert_eq!(e.field, "spec.egress[0].ports[0].endPort");
    let e = bad(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}));
    assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");
    let e =
        bad(json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0/8"}}]}]}));
    assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
    let e =
        bad(json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}));
    assert_eq!(e.field, "spec.ingress[0].ports[0].endPort");
    let e = bad(
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
    );
    assert_eq!(e.field, "spec.ingress[0].from[0]");
    // The good policy is still enforced.
    assert!(!allowed(&c, "x/a", "y/b", "80"));
    assert_eq!(c.policies().len(), 1);
}

#[test]
fn walkthrough_names_policy_and_verdict() {
    let c = with(&[policy("y", "deny-all", json!({"podSelector": {}}))]);
    let e = explain_flow(&c, &flow("x/a", "y/b", 80)).unwrap();
    let text = e.to_string();
    assert!(
        text.contains("[NetworkPolicy y/deny-all] isolates y/b for ingress"),
        "{text}"
    );
    assert!(
        text.contains("no ingress rule allows x/a on TCP/80"),
        "{text}"
    );
    assert!(text.contains("declares no container port TCP/80"), "{text}");
    assert!(text.ends_with("DROPPED"), "{text}");
    let c = with(&[policy(
        "y",
        "allow",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    )]);
    let text = explain_flow(&c, &flow("x/a", "y/b", 8080))
        .unwrap()
        .to_string();
    assert!(
        text.contains(
            "ingress rule #0 allows x/a (peer #0: all pods in all namespaces) on TCP/8080"
        ),
        "{text}"
    );
    assert!(text.ends_with("ALLOWED"), "{text}");
}

#[test]
fn explain_pod_describes_rules_and_current_peers() {
    let c = with(&[policy(
        "y",
        "allow-x",
        json!({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "front"}}}], "ports": [{"port": "http"}]}]}),
    )]);
    let r = super::explain_pod(&c, &ObjectKey::new("y", "b")).unwrap();
    assert_eq!(r.ingress.isolated_by, vec!["y/allow-x"]);
    assert_eq!(r.ingress.rules[0].current_pods, vec!["x/a", "x/b"]);
    let text = r.to_string();
    assert!(
        text.contains("from all pods in namespaces with team=front on TCP/http (=8080)"),
        "{text}"
    );
    assert!(text.contains("Egress: not isolated"), "{text}");
}

#[test]
fn matrix_covers_all_pairs() {
    let c = with(&[policy("y", "deny", json!({"podSelector": {}}))]);
    let m = super::matrix(&c, &[(Protocol::Tcp, 80)]);
    assert_eq!(m.probes[0].results.len(), 4 * 3);
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["probes"][0]["protocol"], "TCP");
    assert_eq!(v["probes"][0]["to"], "pod");
    assert_eq!(
        v["probes"][0]["results"][0],
        json!({"from": "x/a", "to": "x/b", "allowed": true})
    );
    assert_eq!(
        super::explain::declared_ports(&c),
        vec![(Protocol::Tcp, 80), (Protocol::Tcp, 8080)]
    );
}

fn flow(from: &str, to: &str, port: u16) -> Flow {
    Flow {
        from: from.parse::<Endpoint>().unwrap(),
        to: to.parse::<Endpoint>().unwrap(),
        protocol: Protocol::Tcp,
        port,
    }
}

//! Service NAT on real packets: `kube-nft lab run --output json` on small
//! clusters, one behaviour per test (issue 5's list). The lab plays the
//! EndpointSlice controller and the API server's allocators; every answer in
//! the JSON names the backend that replied and the source address it saw, so
//! spread, client-IP preservation and masquerade are asserted from there.
//! Every run must also agree with explain (`ok`), which judges each backend
//! by the source its node sees.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The lab's outside host and node network (see `lab::addressing`).
const OUTSIDE_NET: &str = "203.0.113.";
const NODE_NET: &str = "172.31.0.";
const POD_NET: &str = "10.244.";

struct Files(PathBuf);

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the lab on `manifests` with `scenario`; returns the JSON report.
fn lab(name: &str, manifests: &str, scenario: &str, extra: &[&str]) -> Value {
    let dir = std::env::temp_dir().join(format!("kube-nft-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = Files(dir);
    let m = files.0.join("cluster.yaml");
    let s = files.0.join("scenario.yaml");
    std::fs::write(&m, manifests).unwrap();
    std::fs::write(&s, scenario).unwrap();
    let out = Command::new(common::kube_nft())
        .args(["lab", "run", "-f"])
        .arg(&m)
        .arg("--scenario")
        .arg(&s)
        .args(["--output", "json"])
        .args(extra)
        .output()
        .expect("running kube-nft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: no JSON report ({e}); exit {}\nstderr:\n{stderr}",
            out.status
        )
    })
}

fn pod(name: &str, node: &str, labels: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {labels}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, ports: {ports}}}]}}\n"
    )
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
const WEB_PORTS: &str = "[{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}, {containerPort: 9090}]";

/// Cells of every probe whose `to` starts with `to`.
fn cells<'a>(report: &'a Value, to: &str) -> Vec<&'a Value> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["results"].as_array().unwrap())
        .filter(|c| c["to"].as_str().unwrap().starts_with(to))
        .collect()
}

fn cell<'a>(report: &'a Value, from: &str, to: &str) -> Vec<&'a Value> {
    cells(report, to)
        .into_iter()
        .filter(|c| c["from"] == from && c["to"] == to)
        .collect()
}

fn assert_ok(report: &Value) {
    assert_eq!(
        report["ok"], true,
        "mismatches {} disagreements {}\n{report:#}",
        report["mismatches"], report["disagreements"]
    );
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

#[test]
fn cluster_ip_spreads_over_ready_endpoints_on_every_port_and_protocol() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", WEB_PORTS);
    m += &pod("web-2", "node-2", "{app: web}", WEB_PORTS);
    m += &pod("web-3", "node-1", "{app: web}", WEB_PORTS);
    // Not ready: never a backend.
    m += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-4, namespace: demo, labels: {app: web}}\n\
          spec: {nodeName: node-2, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\n\
          status: {conditions: [{type: Ready, status: 'False'}]}\n";
    // Terminating but still serving, and the only pod of its Service: kept
    // as the fallback when no endpoint is ready.
    m += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: old, namespace: demo, labels: {app: old}, deletionTimestamp: '2026-01-01T00:00:00Z'}\n\
          spec: {nodeName: node-2, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\n\
          status: {conditions: [{type: Ready, status: 'True'}]}\n";
    for i in 1..=3 {
        m += &pod(&format!("client-{i}"), "node-1", "{app: client}", "[]");
    }
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
          spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}, \
          {name: metrics, port: 9000, targetPort: 9090}, {name: dns, port: 53, targetPort: dns, protocol: UDP}]}\n";
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: old, namespace: demo}\n\
          spec: {selector: {app: old}, ports: [{port: 81, targetPort: 8080}]}\n";
    let probe = "  - probe: {port: 80, to: service}\n";
    let scenario = format!(
        "steps:\n{}  - probe: {{port: 9000, to: service}}\n  - probe: {{port: 53, protocol: UDP, to: service}}\n  - probe: {{port: 81, to: service}}\n",
        probe.repeat(4)
    );
    let r = lab("spread", &m, &scenario, &[]);
    assert_ok(&r);
    let web = cells(&r, "demo/web");
    let backends: BTreeSet<&str> = web
        .iter()
        .filter(|c| c["allowed"] == true)
        .map(|c| s(&c["backend"]))
        .collect();
    assert!(
        backends.len() >= 2
            && backends
                .iter()
                .all(|b| ["demo/web-1", "demo/web-2", "demo/web-3"].contains(b)),
        "{backends:?}"
    );
    // Every client reached the Service on every port and protocol.
    for port in [80, 9000, 53] {
        let probes: Vec<&Value> = r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["port"] == port)
            .collect();
        for p in probes {
            for c in p["results"].as_array().unwrap() {
                if s(&c["from"]).starts_with("demo/client") && c["to"] == "demo/web" {
                    assert_eq!(c["allowed"], true, "port {port}: {c}");
                }
            }
        }
    }
    for c in cells(&r, "demo/old") {
        assert_eq!(c["backend"], "demo/old", "{c}");
    }
}

#[test]
fn hairpin_is_masqueraded_and_other_clients_keep_their_address() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("solo", "node-1", "{app: solo}", "[{containerPort: 8080}]");
    m += &pod("client", "node-1", "{app: client}", "[]");
    m += &pod("far", "node-2", "{app: client}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: solo, namespace: demo}\n\
          spec: {selector: {app: solo}, ports: [{port: 80, targetPort: 8080}]}\n";
    let r = lab(
        "hairpin",
        &m,
        "steps:\n  - probe: {port: 80, to: service}\n",
        &[],
    );
    assert_ok(&r);
    let hairpin = &cell(&r, "demo/solo", "demo/solo")[0];
    assert_eq!(hairpin["allowed"], true, "{hairpin}");
    assert_eq!(hairpin["backend"], "demo/solo");
    assert!(
        s(&hairpin["sourceIp"]).starts_with(NODE_NET),
        "a pod reaching itself through its Service sees its node: {hairpin}"
    );
    for from in ["demo/client", "demo/far"] {
        let c = &cell(&r, from, "demo/solo")[0];
        assert!(s(&c["sourceIp"]).starts_with(POD_NET), "{c}");
    }
}

const LOCAL_AND_CLUSTER: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: demo}\n\
    spec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n\
    ---\napiVersion: v1\nkind: Service\nmetadata: {name: cluster, namespace: demo}\n\
    spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_drops_without_local_endpoints() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += LOCAL_AND_CLUSTER;
    let r = lab(
        "etp",
        &m,
        "steps:\n  - probe: {port: 80, to: nodeport, from: outside}\n  - probe: {port: 80, to: loadbalancer, from: outside}\n",
        &["--timeout-ms", "600"],
    );
    assert_ok(&r);
    // Local, node with the endpoint: the client's own address arrives.
    let c = &cell(&r, "outside", "demo/local@node-1")[0];
    assert_eq!(c["allowed"], true, "{c}");
    assert!(s(&c["sourceIp"]).starts_with(OUTSIDE_NET), "{c}");
    // Local, node without one: dropped.
    let c = &cell(&r, "outside", "demo/local@node-2")[0];
    assert_eq!(c["allowed"], false, "{c}");
    // Cluster: both nodes serve, masqueraded to the node that received it.
    for node in ["node-1", "node-2"] {
        let c = &cell(&r, "outside", &format!("demo/cluster@{node}"))[0];
        assert_eq!(c["allowed"], true, "{c}");
        assert!(s(&c["sourceIp"]).starts_with(NODE_NET), "{c}");
    }
    // The load balancer sends to a node with local endpoints: client kept.
    let c = &cell(&r, "outside", "demo/local")[0];
    assert_eq!(c["allowed"], true, "{c}");
    assert!(s(&c["sourceIp"]).starts_with(OUTSIDE_NET), "{c}");
    let c = &cell(&r, "outside", "demo/cluster")[0];
    assert!(s(&c["sourceIp"]).starts_with(NODE_NET), "{c}");
}

#[test]
fn pods_reach_an_external_traffic_policy_local_address_from_any_node() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("near", "node-1", "{app: client}", "[]");
    m += &pod("far", "node-2", "{app: client}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: demo}\n\
          spec: {type: LoadBalancer, externalTrafficPolicy: Local, externalIPs: [198.51.100.8], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    let r = lab(
        "etp-internal",
        &m,
        "steps:\n  - probe: {port: 80, to: loadbalancer, from: outside}\n  - probe: {port: 80, to: loadbalancer}\n",
        &["--timeout-ms", "600"],
    );
    assert_ok(&r);
    // From outside: only through the node with the endpoint, client kept.
    for c in cells(&r, "demo/local")
        .iter()
        .filter(|c| c["from"] == "outside")
    {
        assert_eq!(c["allowed"], true, "{c}");
        assert!(s(&c["sourceIp"]).starts_with(OUTSIDE_NET), "{c}");
    }
    // From a pod on node-2, which has no local endpoint: not dropped, DNATed
    // on its own node to the endpoint on node-1 like a ClusterIP, and
    // unmasqueraded (both the LB IP and the external IP).
    let far = cell(&r, "demo/far", "demo/local");
    assert_eq!(far.len(), 2, "{r:#}");
    for c in far {
        assert_eq!(c["allowed"], true, "{c}");
        assert_eq!(c["backend"], "demo/web-1");
        assert!(s(&c["sourceIp"]).starts_with(POD_NET), "{c}");
    }
}

#[test]
fn a_service_without_endpoints_rejects_at_once() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("client", "node-1", "{app: client}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: demo}\n\
          spec: {selector: {app: nothing}, ports: [{port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]}\n";
    let r = lab(
        "reject",
        &m,
        "steps:\n  - probe: {port: 80, to: service, expect: {deny: ['*/*->demo/empty']}}\n  - probe: {port: 53, protocol: UDP, to: service, expect: {deny: ['*/*->demo/empty']}}\n",
        &["--timeout-ms", "5000"],
    );
    assert_ok(&r);
    for c in cells(&r, "demo/empty") {
        assert_eq!(c["allowed"], false, "{c}");
        assert_eq!(
            c["detail"], "refused",
            "TCP reset / ICMP unreachable, not a timeout: {c}"
        );
    }
}

#[test]
fn network_policy_judges_the_backend_behind_a_cluster_ip() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("web-2", "node-2", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("client", "node-1", "{app: client}", "[]");
    m += &pod("other", "node-2", "{app: other}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
          spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n\
          ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\n\
          spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]}\n";
    let scenario = "steps:\n  - probe: {port: 80, to: service, expect: {allow: ['demo/client->demo/web']}}\n  - probe: {port: 80, to: service, expect: {allow: ['demo/client->demo/web']}}\n";
    let r = lab("policy", &m, scenario, &["--timeout-ms", "600"]);
    assert_ok(&r);
    assert_eq!(cell(&r, "demo/client", "demo/web")[0]["allowed"], true);
    assert_eq!(cell(&r, "demo/other", "demo/web")[0]["allowed"], false);
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: open, namespace: demo}\n\
          spec: {type: LoadBalancer, loadBalancerSourceRanges: [203.0.113.0/24], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n\
          ---\napiVersion: v1\nkind: Service\nmetadata: {name: closed, namespace: demo}\n\
          spec: {type: LoadBalancer, loadBalancerSourceRanges: [198.51.100.0/24], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    let r = lab(
        "ranges",
        &m,
        "steps:\n  - probe: {port: 80, to: loadbalancer, from: outside, expect: {allow: ['outside->demo/open']}}\n",
        &["--timeout-ms", "600"],
    );
    assert_ok(&r);
}

#[test]
fn internal_traffic_policy_local_serves_only_local_clients() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("near", "node-1", "{app: client}", "[]");
    m += &pod("far", "node-2", "{app: client}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
          spec: {internalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    let r = lab(
        "itp",
        &m,
        "steps:\n  - probe: {port: 80, to: service, expect: {allow: ['demo/near->demo/web', 'demo/web-1->demo/web']}}\n",
        &["--timeout-ms", "600"],
    );
    assert_ok(&r);
    assert_eq!(
        cell(&r, "demo/near", "demo/web")[0]["backend"],
        "demo/web-1"
    );
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    for (i, node) in [(1, "node-1"), (2, "node-2"), (3, "node-1"), (4, "node-2")] {
        m += &pod(
            &format!("web-{i}"),
            node,
            "{app: web}",
            "[{containerPort: 8080}]",
        );
    }
    m += &pod("client", "node-1", "{app: client}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: demo}\n\
          spec: {sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n\
          ---\napiVersion: v1\nkind: Service\nmetadata: {name: spread, namespace: demo}\n\
          spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    let scenario = format!(
        "steps:\n{}",
        "  - probe: {port: 80, to: service}\n".repeat(8)
    );
    let r = lab("affinity", &m, &scenario, &[]);
    assert_ok(&r);
    let sticky: BTreeSet<&str> = cell(&r, "demo/client", "demo/sticky")
        .iter()
        .map(|c| s(&c["backend"]))
        .collect();
    assert_eq!(sticky.len(), 1, "one backend for 8 connections: {sticky:?}");
    // The control: without affinity the same client is spread.
    let spread: BTreeSet<&str> = cell(&r, "demo/client", "demo/spread")
        .iter()
        .map(|c| s(&c["backend"]))
        .collect();
    assert!(spread.len() >= 2, "{spread:?}");
}

#[test]
fn dual_stack_services_answer_over_ipv6() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("web-2", "node-2", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("client", "node-1", "{app: client}", "[]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
          spec: {ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6, IPv4], type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    let r = lab(
        "ipv6",
        &m,
        "steps:\n  - probe: {port: 80, to: service, family: IPv6}\n  - probe: {port: 80, to: service}\n  - probe: {port: 80, to: nodeport, from: outside, family: IPv6}\n",
        &["--pod-cidr-v6", "fd00:10::/56"],
    );
    assert_ok(&r);
    let v6: Vec<&Value> = r["probes"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(!v6.is_empty());
    for c in v6 {
        assert_eq!(c["allowed"], true, "{c}");
        assert!(s(&c["sourceIp"]).contains(':'), "{c}");
    }
    for c in r["probes"][2]["results"].as_array().unwrap() {
        assert_eq!(c["allowed"], true, "{c}");
    }
}

#[test]
fn off_cluster_clients_of_a_cluster_ip_and_external_ips_are_masqueraded() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += &pod("web-2", "node-2", "{app: web}", "[{containerPort: 8080}]");
    m += "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
          spec: {externalIPs: [198.51.100.7], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n";
    // The lab's router sends the Service CIDR to node-1, and the external IP
    // to a node with endpoints.
    let scenario = format!(
        "steps:\n{}",
        "  - probe: {port: 80, to: service, from: outside}\n  - probe: {port: 80, to: loadbalancer, from: outside}\n"
            .repeat(3)
    );
    let r = lab("offcluster", &m, &scenario, &[]);
    assert_ok(&r);
    let all = cells(&r, "demo/web");
    assert_eq!(all.len(), 6, "{r:#}");
    for c in all {
        assert_eq!(c["allowed"], true, "{c}");
        // Replies must come back through the node that NATed: the backend
        // sees a node address, never the off-cluster client's.
        assert!(s(&c["sourceIp"]).starts_with(NODE_NET), "{c}");
    }
}

#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded_except_to_no_masquerade_ranges() {
    nft::testing::require_root();
    let mut m = NAMESPACE.to_string();
    m += &pod("a", "node-1", "{app: a}", "[]");
    m += &pod("b", "node-2", "{app: b}", "[]");
    let scenario = "steps:\n  - probe: {port: 443, to: outside}\n  - probe: {port: 53, protocol: UDP, to: outside}\n";
    let r = lab("egress-masq", &m, scenario, &[]);
    assert_ok(&r);
    let out = cells(&r, "outside");
    assert_eq!(out.len(), 4, "{r:#}");
    for c in &out {
        assert_eq!(c["allowed"], true, "{c}");
        assert!(s(&c["sourceIp"]).starts_with(NODE_NET), "{c}");
    }
    let r = lab(
        "no-masq",
        &m,
        scenario,
        &["--no-masquerade-cidr", "203.0.113.0/24"],
    );
    assert_ok(&r);
    for c in cells(&r, "outside") {
        assert!(s(&c["sourceIp"]).starts_with(POD_NET), "{c}");
    }
}

#[test]
fn policy_sees_the_client_address_that_reaches_the_backend() {
    nft::testing::require_root();
    // Only the outside network may reach web, by ipBlock.
    let mut m = NAMESPACE.to_string();
    m += &pod("web-1", "node-1", "{app: web}", "[{containerPort: 8080}]");
    m += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\n\
          spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}]}]}\n";
    m += LOCAL_AND_CLUSTER;
    let r = lab(
        "policy-client",
        &m,
        "steps:\n  - probe: {port: 80, to: nodeport, from: outside}\n",
        &["--timeout-ms", "600"],
    );
    // Explain agrees on every cell: it judges each backend by the source its
    // node sees.
    assert_ok(&r);
    let verdict = |to: &str| cell(&r, "outside", to)[0]["allowed"].clone();
    // Local: the client address arrives, the ipBlock admits it.
    assert_eq!(verdict("demo/local@node-1"), true);
    // Cluster, received on the backend's node: policy judges before the
    // masquerade in postrouting, so the client address still counts.
    assert_eq!(verdict("demo/cluster@node-1"), true);
    // Cluster, received on node-2: forwarded masqueraded to node-2's address,
    // which the ipBlock does not admit.
    assert_eq!(verdict("demo/cluster@node-2"), false);
}

//! `kube-nft lab run` over IPv4 and IPv6 on a real kernel (root): dual-stack
//! nodes and pods, policies judged per family, explain asked about the very
//! addresses probed.

mod common;
use common::kube_nft;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Two dual-stack nodes and one IPv4-only node; `app` is default-deny for
/// ingress, `web` admits namespace `client`, `db` admits an IPv6-only ipBlock
/// with an exception. Some addresses are given (`status.podIPs`), others
/// allocated.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: ["10.244.1.0/24", "fd00:10:244:1::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: ["10.244.2.0/24", "fd00:10:244:2::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: n3}
spec: {podCIDR: 10.244.3.0/24}
---
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {team: app}}
---
apiVersion: v1
kind: Namespace
metadata: {name: client, labels: {team: client}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]}]
status: {podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: app, labels: {app: db}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c1, namespace: client}
spec: {nodeName: n1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c2, namespace: client}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: 10.244.2.20}, {ip: "fd00:10:244:2::20"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c3, namespace: client}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIPs: [{ip: "fd00:10:244:2::30"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: client}
spec: {nodeName: n3, containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: app}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {team: client}}}]
      ports: [{port: http}, {port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-v6-block, namespace: app}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{ipBlock: {cidr: "fd00:10:244:2::/64", except: ["fd00:10:244:2::30/128"]}}]
      ports: [{port: 5432}]
"#;

/// Everyone reaches the (unisolated) client pods; only `client/*` reaches web.
const WEB: &str = r#"["client/*->app/web", "*/*->client/*"]"#;

fn scenario() -> String {
    let mut s = String::from("steps:\n");
    for family in ["IPv4", "IPv6"] {
        s.push_str(&format!(
            "  - probe: {{port: 80, family: {family}, expect: {{allow: {WEB}}}}}\n"
        ));
        s.push_str(&format!(
            "  - probe: {{protocol: UDP, port: 53, family: {family}, expect: {{allow: {WEB}}}}}\n"
        ));
    }
    // The ipBlock is IPv6-only: over IPv4 nobody reaches db; over IPv6 c2 does
    // (in the block), c3 does not (the exception), nor anyone else.
    s.push_str("  - probe: {port: 5432, expect: {allow: [\"*/*->client/*\"]}}\n");
    s.push_str("  - probe: {port: 5432, family: IPv6, expect: {allow: [\"client/c2->app/db\", \"*/*->client/*\"]}}\n");
    s
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("kube-nft-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `lab run -f MANIFESTS [--scenario FILE] -o json EXTRA…`.
fn lab_json(manifests: &Path, scenario: Option<&Path>, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec![
        "lab",
        "run",
        "-f",
        manifests.to_str().unwrap(),
        "-o",
        "json",
    ];
    if let Some(s) = scenario {
        args.extend(["--scenario", s.to_str().unwrap()]);
    }
    args.extend(extra);
    let (code, out, err) = kube_nft(&args);
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, json, err)
}

fn probe(report: &Value, step: u64) -> &Value {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["step"] == step)
        .unwrap_or_else(|| panic!("no probe for step {step}: {report}"))
}

/// The kernel's verdict for `from -> to` in the probe of `step` (None: not probed).
fn cell(report: &Value, step: u64, from: &str, to: &str) -> Option<bool> {
    probe(report, step)["results"]
        .as_array()?
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .map(|c| c["allowed"].as_bool().unwrap())
}

#[test]
fn dual_stack_policies_hold_over_both_families() {
    let dir = TempDir::new("lab-ipv6");
    let manifests = dir.write("cluster.yaml", MANIFESTS);
    let scenario = dir.write("scenario.yaml", &scenario());
    let (code, report, err) = lab_json(&manifests, Some(&scenario), &[]);
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["mismatches"].as_array().unwrap().is_empty());
    assert!(report["disagreements"].as_array().unwrap().is_empty());

    let families: Vec<&str> = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["family"].as_str().unwrap())
        .collect();
    assert_eq!(
        families,
        ["IPv4", "IPv4", "IPv6", "IPv6", "IPv4", "IPv6"],
        "{report}"
    );

    // 6 pods over IPv4: 30 ordered pairs. Over IPv6 legacy (IPv4-only node)
    // is not probed: 5 pods, 20 pairs, and it is named.
    assert_eq!(probe(&report, 0)["results"].as_array().unwrap().len(), 30);
    assert!(probe(&report, 0).get("noAddress").is_none());
    assert_eq!(probe(&report, 2)["results"].as_array().unwrap().len(), 20);
    assert_eq!(
        probe(&report, 2)["noAddress"],
        serde_json::json!(["client/legacy"])
    );
    assert_eq!(cell(&report, 2, "client/legacy", "app/web"), None);
    assert_eq!(cell(&report, 0, "client/legacy", "app/web"), Some(true));

    // Namespace-selected peers work over both families, TCP and UDP.
    for step in [0, 1, 2, 3] {
        assert_eq!(cell(&report, step, "client/c1", "app/web"), Some(true));
        assert_eq!(cell(&report, step, "client/c3", "app/web"), Some(true));
        assert_eq!(cell(&report, step, "app/db", "app/web"), Some(false));
        assert_eq!(cell(&report, step, "app/web", "client/c2"), Some(true));
    }
    // The IPv6-only ipBlock: allowed over IPv6 only, and not for the exception.
    assert_eq!(cell(&report, 4, "client/c2", "app/db"), Some(false));
    assert_eq!(cell(&report, 5, "client/c2", "app/db"), Some(true));
    assert_eq!(cell(&report, 5, "client/c3", "app/db"), Some(false));
    assert_eq!(cell(&report, 5, "client/c1", "app/db"), Some(false));
    assert_eq!(cell(&report, 5, "app/web", "app/db"), Some(false));
    // Explain was asked about the IPv6 addresses (it allows c2 -> db there only).
    let explain_of = |step: u64| {
        probe(&report, step)["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["from"] == "client/c2" && c["to"] == "app/db")
            .map(|c| c["explain"].as_bool().unwrap())
    };
    assert_eq!((explain_of(4), explain_of(5)), (Some(false), Some(true)));
}

#[test]
fn without_a_scenario_every_port_is_probed_over_both_families() {
    let dir = TempDir::new("lab-ipv6-default");
    // Pods and policies only, addresses all allocated: --pod-cidr-v6 gives each
    // generated node a /64.
    let manifests: String = MANIFESTS
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: Node"))
        .map(|doc| {
            doc.lines()
                .filter(|l| !l.starts_with("status:"))
                .map(|l| l.replace("nodeName: n3", "nodeName: node-1"))
                .map(|l| l.replace("nodeName: n1", "nodeName: node-1"))
                .map(|l| l.replace("nodeName: n2", "nodeName: node-2"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n---\n");
    let manifests = dir.write("cluster.yaml", &manifests);
    let (code, report, err) = lab_json(&manifests, None, &["--pod-cidr-v6", "fd00:10:244::/48"]);
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["ok"], true, "{report}");
    let probes: Vec<(String, u64, String)> = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
                p["family"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, u64, String)> = [
        ("UDP", 53, "IPv4"),
        ("UDP", 53, "IPv6"),
        ("TCP", 80, "IPv4"),
        ("TCP", 80, "IPv6"),
        ("TCP", 5432, "IPv4"),
        ("TCP", 5432, "IPv6"),
    ]
    .iter()
    .map(|(p, n, f)| (p.to_string(), *n, f.to_string()))
    .collect();
    assert_eq!(probes, want, "{report}");
    // Every pod has both families now: 6 pods, 30 pairs per probe.
    for p in report["probes"].as_array().unwrap() {
        assert_eq!(p["results"].as_array().unwrap().len(), 30, "{p}");
        assert!(p.get("noAddress").is_none(), "{p}");
    }
    for step in [1, 3] {
        assert_eq!(cell(&report, step, "client/c1", "app/web"), Some(true));
        assert_eq!(cell(&report, step, "app/db", "app/web"), Some(false));
    }

    // The human table says the family of IPv6 probes.
    let (code, out, err) = kube_nft(&[
        "lab",
        "run",
        "-f",
        manifests.to_str().unwrap(),
        "--pod-cidr-v6",
        "fd00:10:244::/48",
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("step 2: TCP/80 to pod\n"), "{out}");
    assert!(out.contains("step 3: TCP/80 to pod over IPv6\n"), "{out}");
}

#[test]
fn a_given_ipv6_outside_the_node_cidr_names_the_pod() {
    let dir = TempDir::new("lab-ipv6-bad");
    let manifests = dir.write(
        "cluster.yaml",
        &MANIFESTS.replace("fd00:10:244:1::10", "fd00:10:244:9::10"),
    );
    let (code, out, err) = kube_nft(&["lab", "run", "-f", manifests.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("pod app/web: ipv6 fd00:10:244:9::10 is outside podCIDR fd00:10:244:1::/64"),
        "{err}"
    );
}

#[test]
fn a_pod_added_mid_run_gets_an_ipv6_address() {
    let dir = TempDir::new("lab-ipv6-apply");
    let manifests = dir.write("cluster.yaml", MANIFESTS);
    // c4 lands on n2 (allocated: inside the ipBlock), c5 asks for the excepted
    // address c3 gives up by moving to n1.
    let scenario = dir.write(
        "scenario.yaml",
        r#"
steps:
  - apply:
      - {apiVersion: v1, kind: Pod, metadata: {name: c4, namespace: client}, spec: {nodeName: n2, containers: [{name: c}]}}
      - {apiVersion: v1, kind: Pod, metadata: {name: c3, namespace: client}, spec: {nodeName: n1, containers: [{name: c}]}}
      - apiVersion: v1
        kind: Pod
        metadata: {name: c5, namespace: client}
        spec: {nodeName: n2, containers: [{name: c}]}
        status: {podIPs: [{ip: "fd00:10:244:2::30"}]}
  - probe: {port: 5432, family: IPv6, expect: {allow: ["client/c2->app/db", "client/c4->app/db", "*/*->client/*"]}}
  - apply:
      - apiVersion: v1
        kind: Pod
        metadata: {name: c6, namespace: client}
        spec: {nodeName: n1, containers: [{name: c}]}
        status: {podIPs: [{ip: "fd00:10:244:2::66"}]}
"#,
    );
    let (code, out, err) = kube_nft(&[
        "lab",
        "run",
        "-f",
        manifests.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ]);
    // The last apply fails: c6's IPv6 address is not in n1's IPv6 pod CIDR.
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("steps[2].apply[0]")
            && err.contains("Pod client/c6: status.podIPs fd00:10:244:2::66 is outside"),
        "{err}"
    );
    // Without the bad step, the run holds.
    let text = std::fs::read_to_string(&scenario).unwrap();
    let good = text
        .split("  - apply:\n      - apiVersion: v1\n        kind: Pod\n        metadata: {name: c6")
        .next()
        .unwrap();
    let scenario = dir.write("scenario.yaml", good);
    let (code, report, err) = lab_json(&manifests, Some(&scenario), &[]);
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(cell(&report, 1, "client/c4", "app/db"), Some(true));
    assert_eq!(cell(&report, 1, "client/c5", "app/db"), Some(false));
    assert_eq!(cell(&report, 1, "client/c3", "app/db"), Some(false));
    assert_eq!(cell(&report, 1, "client/c5", "client/c4"), Some(true));
}

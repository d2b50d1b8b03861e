//! `kube-nft lab run` and `kube-nft agent apply` on a real kernel (root): network
//! namespaces, nftables in each node's namespace, real connections.

mod common;
use common::kube_nft;

use std::path::PathBuf;

use serde_json::Value;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `lab run -f examples/ [--scenario FILE] -o json`.
fn lab_json(scenario: Option<&str>) -> (i32, Value, String) {
    let dir = examples();
    let mut args = vec!["lab", "run", "-f", dir.to_str().unwrap(), "-o", "json"];
    let file = scenario.map(|text| {
        let path = std::env::temp_dir().join(format!(
            "kube-nft-scenario-{}-{}.yaml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    });
    if let Some(p) = &file {
        args.extend(["--scenario", p.to_str().unwrap()]);
    }
    let (code, out, err) = kube_nft(&args);
    if let Some(p) = file {
        let _ = std::fs::remove_file(p);
    }
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, json, err)
}

/// The verdict the kernel gave `from -> to` in the probe of `step`.
fn cell(report: &Value, step: u64, from: &str, to: &str) -> Option<bool> {
    report["probes"]
        .as_array()?
        .iter()
        .find(|p| p["step"] == step)?["results"]
        .as_array()?
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .map(|c| c["allowed"].as_bool().unwrap())
}

#[test]
fn the_store_example_enforces_what_explain_says() {
    let (code, report, err) = lab_json(None);
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["ok"], true);
    let probes = report["probes"].as_array().unwrap();
    let shape: Vec<(u64, &str, &str)> = probes
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap();
            (p["port"].as_u64().unwrap(), s("to"), s("from"))
        })
        .collect();
    // Every declared port pod to pod, then every Service port through its
    // ClusterIP, then the LoadBalancer from outside.
    assert_eq!(
        shape,
        [
            (80, "pod", "pod"),
            (5978, "pod", "pod"),
            (6379, "pod", "pod"),
            (80, "service", "pod"),
            (5978, "service", "pod"),
            (6379, "service", "pod"),
            (80, "loadbalancer", "outside"),
        ]
    );
    // 5 pods: 20 ordered pairs per pod probe, 5 clients per Service.
    let sizes: Vec<usize> = probes
        .iter()
        .map(|p| p["results"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [20, 20, 20, 5, 5, 5, 1]);
    // Through the Services, policy judges the pods behind them.
    assert_eq!(
        cell(&report, 3, "default/debug", "shop/frontend"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 5, "shop/frontend-1", "shop/backend"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 5, "default/debug", "shop/backend"),
        Some(false)
    );
    assert_eq!(
        cell(&report, 4, "shop/backend", "shop-data/database"),
        Some(true)
    );
    assert_eq!(cell(&report, 6, "outside", "shop/frontend"), Some(true));
    // Anyone reaches the frontends on 80; frontends reach only the backend on
    // 6379; only the backend reaches the database; debug reaches no store backend.
    assert_eq!(
        cell(&report, 0, "default/debug", "shop/frontend-1"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 0, "shop/frontend-1", "shop/frontend-2"),
        Some(false)
    );
    assert_eq!(
        cell(&report, 2, "shop/frontend-2", "shop/backend"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 2, "default/debug", "shop/backend"),
        Some(false)
    );
    assert_eq!(
        cell(&report, 1, "shop/backend", "shop-data/database"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 1, "shop/frontend-1", "shop-data/database"),
        Some(false)
    );
    assert!(report["mismatches"].as_array().unwrap().is_empty());
    assert!(report["disagreements"].as_array().unwrap().is_empty());
}

#[test]
fn the_human_table_reads_at_a_glance() {
    let dir = examples();
    let (code, out, err) = kube_nft(&["lab", "run", "-f", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("step 0: TCP/80 to pod"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when not on a terminal");
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("shop/backend"))
        .unwrap();
    assert!(row.contains('.') && row.contains('✗'), "{row}");
    assert!(
        out.contains("0 mismatches, 0 disagreements with explain — OK"),
        "{out}"
    );
}

const CHANGES: &str = r#"
steps:
  - probe: {port: 6379, expect: {allow: ["shop/frontend-1->shop/backend", "shop/frontend-2->shop/backend"]}}
  # A new frontend mid-run: it gets a namespace, a veth and listeners; the
  # backend's peer set grows. debug is relabelled: still in the wrong namespace.
  - apply:
      - apiVersion: v1
        kind: Pod
        metadata: {name: frontend-3, namespace: shop, labels: {role: frontend}}
        spec: {containers: [{name: web, ports: [{name: http, containerPort: 80}]}]}
      - apiVersion: v1
        kind: Pod
        metadata: {name: debug, namespace: default, labels: {role: frontend}}
        spec: {containers: [{name: shell}]}
  - probe: {port: 6379, expect: {allow: ["shop/frontend-*->shop/backend", "shop/frontend-3->shop/backend"]}}
  # Relabel frontend-2 out of the frontend role, delete frontend-1.
  - apply:
      - apiVersion: v1
        kind: Pod
        metadata: {name: frontend-2, namespace: shop, labels: {role: retired}}
        spec: {nodeName: worker-2, containers: [{name: web, ports: [{name: http, containerPort: 80}]}]}
  - delete: [{kind: Pod, namespace: shop, name: frontend-1}]
  - probe: {port: 6379, expect: {allow: ["shop/frontend-3->shop/backend"]}}
  # Without the backend's ingress policy, default-deny still isolates it.
  - delete: [{kind: NetworkPolicy, namespace: shop, name: backend-ingress}]
  - probe: {port: 6379, expect: {allow: []}}
"#;

#[test]
fn apply_delete_and_relabel_steps_change_the_tables() {
    let (code, report, err) = lab_json(Some(&CHANGES.replace(
        "shop/frontend-*",
        "shop/frontend-1->shop/backend\", \"shop/frontend-2",
    )));
    assert_eq!(code, 0, "{err}\n{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        cell(&report, 0, "shop/frontend-2", "shop/backend"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 2, "shop/frontend-3", "shop/backend"),
        Some(true)
    );
    assert_eq!(
        cell(&report, 2, "default/debug", "shop/backend"),
        Some(false)
    );
    assert_eq!(
        cell(&report, 5, "shop/frontend-2", "shop/backend"),
        Some(false)
    );
    assert_eq!(
        cell(&report, 5, "shop/frontend-1", "shop/backend"),
        None,
        "deleted"
    );
    assert_eq!(
        cell(&report, 7, "shop/frontend-3", "shop/backend"),
        Some(false)
    );
    // One enforcement at start and one per apply/delete step.
    let steps: Vec<Value> = report["enforcements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["step"].clone())
        .collect();
    assert_eq!(
        steps,
        vec![Value::Null, 1.into(), 3.into(), 4.into(), 6.into()]
    );
}

#[test]
fn a_wrong_expectation_fails_and_names_the_pair() {
    let wrong = "steps:\n  - probe: {port: 5978, expect: {allow: [\"shop/frontend-1->shop-data/database\"]}}\n";
    let (code, report, err) = lab_json(Some(wrong));
    assert_ne!(code, 0);
    assert!(err.contains("mismatch"), "{err}");
    assert_eq!(report["ok"], false);
    let mismatches = report["mismatches"].as_array().unwrap();
    // frontend-1 -> database is blocked, and backend -> database is allowed but
    // was not listed: two mismatches, no disagreement with explain.
    assert_eq!(mismatches.len(), 2, "{report}");
    let m = mismatches
        .iter()
        .find(|m| m["from"] == "shop/frontend-1")
        .unwrap();
    assert_eq!(m["to"], "shop-data/database");
    assert_eq!(m["expected"], true);
    assert_eq!(m["observed"], false);
    assert_eq!(m["step"], 0);
    assert_eq!(m["port"], 5978);
    assert!(report["disagreements"].as_array().unwrap().is_empty());
}

#[test]
fn agent_dry_run_prints_the_nft_script() {
    let dir = examples();
    let (code, out, err) = kube_nft(&[
        "agent",
        "apply",
        "--node",
        "worker-1",
        "-f",
        dir.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    for chain in [
        "add chain inet kube-nft forward",
        "add chain inet kube-nft input",
        "add chain inet kube-nft in-",
        "add chain inet kube-nft eg-",
        "ingress-class-v4",
        "egress-class-v4",
        "ingress-chains",
        "egress-chains",
    ] {
        assert!(out.contains(chain), "missing {chain}:\n{out}");
    }
    assert!(out.contains("kube-nft"), "{out}");
}

//! The `kube-nft` binary on the example manifests in tests/data.

mod common;
use common::kube_nft;

use std::path::PathBuf;

use serde_json::{json, Value};

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

#[test]
fn matrix_json_is_the_lab_contract() {
    let basic = data("basic");
    let (code, out, err) = kube_nft(&[
        "explain",
        "-f",
        basic.to_str().unwrap(),
        "matrix",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 1, "only TCP/80 is declared");
    assert_eq!(probes[0]["protocol"], "TCP");
    assert_eq!(probes[0]["port"], 80);
    assert_eq!(probes[0]["to"], "pod");
    let results = probes[0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 12);
    for r in results {
        let (from, to) = (r["from"].as_str().unwrap(), r["to"].as_str().unwrap());
        let expected = !to.starts_with("y/") || (to == "y/b" && from == "x/a");
        assert_eq!(r, &json!({"from": from, "to": to, "allowed": expected}));
    }
}

#[test]
fn matrix_text_and_explicit_ports() {
    let basic = data("basic");
    let (code, out, err) = kube_nft(&[
        "explain",
        "matrix",
        "-f",
        basic.to_str().unwrap(),
        "--port",
        "80",
        "--port",
        "53/udp",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("TCP/80"), "{out}");
    assert!(out.contains("UDP/53"), "{out}");
    assert!(
        out.contains('✓') && out.contains('✗') && out.contains('.'),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no colour when not a terminal");
}

#[test]
fn flow_walkthrough() {
    let basic = data("basic");
    let f = basic.to_str().unwrap();
    let (code, out, _) = kube_nft(&[
        "explain", "-f", f, "flow", "--from", "x/b", "--to", "y/b", "--port", "80/TCP",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("[NetworkPolicy y/deny-all] isolates y/b for ingress"),
        "{out}"
    );
    assert!(
        out.contains("no ingress rule allows x/b on TCP/80"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("DROPPED"), "{out}");
    let (_, out, _) = kube_nft(&[
        "explain", "-f", f, "flow", "--from", "x/a", "--to", "y/b", "--port", "80",
    ]);
    assert!(
        out.contains("[NetworkPolicy y/allow-x-a] ingress rule #0 allows x/a"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("ALLOWED"), "{out}");
}

#[test]
fn pod_report() {
    let basic = data("basic");
    let (code, out, _) = kube_nft(&["explain", "-f", basic.to_str().unwrap(), "pod", "y/b"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "Ingress: isolated by [NetworkPolicy y/allow-x-a], [NetworkPolicy y/deny-all]"
        ),
        "{out}"
    );
    assert!(out.contains("(now: x/a)"), "{out}");
}

#[test]
fn errors_are_clear_and_fail() {
    let basic = data("basic");
    let f = basic.to_str().unwrap();
    let (code, _, err) = kube_nft(&["explain", "-f", f, "pod", "y/nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("pod y/nope not found"), "{err}");
    let (code, _, err) = kube_nft(&[
        "explain", "-f", f, "flow", "--from", "x", "--to", "y/b", "--port", "80",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("neither NAMESPACE/POD nor an IP"), "{err}");
    let (code, _, err) = kube_nft(&["explain", "pod", "y/b"]);
    assert_ne!(code, 0);
    assert!(err.contains("-f PATH"), "{err}");
    let (code, _, err) = kube_nft(&[
        "explain",
        "-f",
        data("bad").to_str().unwrap(),
        "--strict",
        "pod",
        "x/ok",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("document 2: Pod x/broken: field spec.containers[0].ports[0].containerPort"),
        "{err}"
    );
    let (code, out, err) = kube_nft(&[
        "explain",
        "-f",
        data("bad").to_str().unwrap(),
        "pod",
        "x/ok",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Pod x/ok"), "{out}");
    assert!(
        err.contains("NetworkPolicy x/bad-cidr: field spec.ingress[0].from[0].ipBlock.except[0]"),
        "{err}"
    );
    assert!(err.contains("warning: ") && err.contains("Widget"), "{err}");
}

#[test]
fn help_lists_explain() {
    let (code, out, _) = kube_nft(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("explain"), "{out}");
}

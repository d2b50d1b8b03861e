//! What only servers newer than v1.20 serve: NetworkPolicy `endPort` (1.21+)
//! and `discovery.k8s.io/v1` EndpointSlices (1.21+). On the suite's own
//! v1.20.2 control plane each test says it is skipped and why; given a newer
//! server through `KUBE_NFT_TEST_KUBECONFIG` it runs.
//!
//! Both read the cluster through live `kube-nft explain`, which goes through
//! the same API readers (`kubeapi`) and the same compiler as the operator.

mod common;
#[path = "common/control_plane.rs"]
mod control_plane;

use std::process::Command;

use control_plane::ControlPlane;

fn explain(cp: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(common::kube_nft())
        .arg("explain")
        .args(args)
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .output()
        .expect("running kube-nft explain");
    // explain exits non-zero for a dropped flow; only stdout matters here.
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates `ns/name` bound to `node` and reports it Running and Ready with
/// `ip`, as a kubelet would (no kubelet runs).
fn running_pod(cp: &ControlPlane, ns: &str, name: &str, labels: &str, ip: &str) {
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: c, image: none, ports: [{{containerPort: 5005}}]}}]}}\n"
        ),
    );
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
    );
    cp.kubectl(&[
        "patch",
        "pod",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

#[test]
fn network_policy_end_port_allows_the_whole_range() {
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "namespace", "ranges"]);
    cp.wait_for_default_service_account("ranges");
    running_pod(&cp, "ranges", "server", "{app: server}", "10.244.1.10");
    running_pod(&cp, "ranges", "client", "{app: client}", "10.244.1.11");
    // Not validated by kubectl against the server's schema, so that a server
    // without `endPort` receives it and drops it (what the check below reads).
    cp.kubectl_stdin(
        &["apply", "--validate=false", "-f", "-"],
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: range, namespace: ranges}\n\
         spec:\n  podSelector: {matchLabels: {app: server}}\n\
         \x20 ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{protocol: TCP, port: 5000, endPort: 5010}]}]\n",
    );
    let end_port = cp.kubectl(&[
        "get",
        "networkpolicy",
        "range",
        "-n",
        "ranges",
        "-o",
        "jsonpath={.spec.ingress[0].ports[0].endPort}",
    ]);
    if end_port.trim().is_empty() {
        eprintln!(
            "skipped: this API server drops NetworkPolicy endPort (served from Kubernetes 1.21; \
             the suite's own server is v1.20.2); give a newer one through KUBE_NFT_TEST_KUBECONFIG"
        );
        return;
    }
    assert_eq!(end_port.trim(), "5010");
    let flow = |port: &str| {
        explain(
            &cp,
            &[
                "flow",
                "--from",
                "ranges/client",
                "--to",
                "ranges/server",
                "--port",
                port,
            ],
        )
    };
    for inside in ["5000/TCP", "5005/TCP", "5010/TCP"] {
        let out = flow(inside);
        assert!(out.trim_end().ends_with("ALLOWED"), "{inside}: {out}");
    }
    for outside in ["4999/TCP", "5011/TCP", "5005/UDP"] {
        let out = flow(outside);
        assert!(out.trim_end().ends_with("DROPPED"), "{outside}: {out}");
    }
}

#[test]
fn discovery_v1_endpoint_slices_are_read() {
    let cp = ControlPlane::start();
    if !cp.serves("discovery.k8s.io/v1") {
        eprintln!(
            "skipped: this API server serves EndpointSlices only as discovery.k8s.io/v1beta1 \
             (v1 from Kubernetes 1.21; the suite's own server is v1.20.2, whose v1beta1 the \
             other cluster suites cover); give a newer one through KUBE_NFT_TEST_KUBECONFIG"
        );
        return;
    }
    cp.kubectl(&["create", "namespace", "slices"]);
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: slices}\n\
         spec: {clusterIP: 10.96.7.7, ports: [{name: http, port: 80, protocol: TCP}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-1, namespace: slices, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\n\
         endpoints: [{addresses: [10.244.1.2], conditions: {ready: true}, nodeName: node-1}]\n\
         ports: [{name: http, port: 8080, protocol: TCP}]\n",
    );
    let out = explain(&cp, &["service", "slices/web"]);
    assert!(
        out.contains("ClusterIP 10.96.7.7:80/TCP") && out.contains("10.244.1.2:8080"),
        "{out}"
    );
}

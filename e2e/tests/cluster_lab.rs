//! `kube-nft lab run --kubeconfig`: the lab with a real API server (v1.20
//! control plane, see `common/control_plane.rs`) as its control plane, the
//! real operator and one real agent per lab node as processes.
//!
//! * the store example gives the same truth tables as the in-process lab;
//! * the conformance suite's update scenario passes, and a second run on
//!   the same server measures event→kernel latency over pod relabels;
//! * an agent killed with SIGKILL and started again drops no established
//!   connection, and new connections are judged as before (library API: the
//!   CLI has no step that holds a connection);
//! * with the API server stopped the kernel keeps enforcing; after it comes
//!   back a policy change is enforced (library API);
//! * `kubectl apply --dry-run=server -k deploy/` passes.
//!
//! Each test starts its own control plane. Needs root (network namespaces,
//! nftables) and the API server build (`scripts/apiserver-build`).

mod common;
#[path = "common/control_plane.rs"]
mod control_plane;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_plane::ControlPlane;
use kube_nft::cluster::load::{load_str, Loaded};
use kube_nft::cluster::Cluster;
use kube_nft::lab::apiserver::ApiServerOptions;
use kube_nft::lab::report::ProbeReport;
use kube_nft::lab::run::{RunOptions, Session};
use kube_nft::lab::scenario::{Family, ObjectRef, ProbeStep, Source, Target};
use kube_nft::lab::Protocol;
use serde::Deserialize;
use serde_json::{json, Value};

fn root() -> PathBuf {
    common::workspace_root()
}

/// `kube-nft lab run ARGS -o json`: the report, or a panic with stderr.
fn lab_json(args: &[&str]) -> Value {
    let out = Command::new(common::kube_nft())
        .args(["lab", "run", "--output", "json"])
        .args(args)
        .output()
        .expect("running kube-nft lab run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab run {args:?} ({}) printed no JSON report ({e}); stderr:\n{stderr}",
            out.status
        )
    });
    assert!(
        out.status.success() && report["ok"] == true,
        "lab run {args:?} failed ({}):\nmismatches {}\ndisagreements {}\nstderr:\n{stderr}",
        out.status,
        report["mismatches"],
        report["disagreements"]
    );
    report
}

/// Every judged cell, without what depends on chance (which backend of a
/// Service answered, and so the source it saw).
fn cells(report: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in report["probes"].as_array().unwrap() {
        for c in p["results"].as_array().unwrap() {
            out.push(json!({
                "step": p["step"], "protocol": p["protocol"], "port": p["port"],
                "to": p["to"], "from": p["from"], "family": p["family"],
                "cell": [c["from"], c["to"], c["allowed"], c["expected"], c["explain"]],
            }));
        }
        if let Some(skipped) = p.get("skipped") {
            out.push(json!({"step": p["step"], "skipped": skipped}));
        }
    }
    out
}

/// Each enforcement's event→kernel time: its slowest node, in ms.
fn event_to_kernel(report: &Value) -> Vec<(Option<u64>, f64)> {
    report["enforcements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let slowest = e["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["elapsed"].as_f64().unwrap())
                .fold(0.0, f64::max);
            (e["step"].as_u64(), slowest)
        })
        .collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

#[test]
fn the_store_example_through_the_api_server_matches_the_in_process_lab() {
    nft::testing::require_root();
    let cp = ControlPlane::start();
    let examples = root().join("examples");
    let examples = examples.to_str().unwrap();
    let local = lab_json(&["-f", examples]);
    let api = lab_json(&[
        "-f",
        examples,
        "--kubeconfig",
        cp.kubeconfig.to_str().unwrap(),
    ]);
    assert_eq!(api["controlPlane"], "apiserver");
    assert!(local.get("controlPlane").is_none(), "{local}");
    let (want, got) = (cells(&local), cells(&api));
    assert!(!want.is_empty());
    assert_eq!(
        got, want,
        "the truth tables through the API server differ from the in-process lab's"
    );
    // The lab leaves nothing behind but the CRDs, RBAC and its namespace.
    let pods = cp.kubectl(&["get", "pods", "--all-namespaces", "-o", "name"]);
    assert_eq!(pods.trim(), "", "pods left behind");
    let nodes = cp.kubectl(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.trim(), "", "nodes left behind");
    let shares = cp.kubectl(&["get", "nodepolicyshares", "-o", "name"]);
    assert_eq!(shares.trim(), "", "shares left behind");
}

/// `x/b` of the conformance base as a manifest with `labels`.
fn base_pod(namespace: &str, name: &str, labels: Value) -> Value {
    let text = std::fs::read_to_string(root().join("e2e/scenarios/base/pods.yaml")).unwrap();
    let mut pod = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == namespace)
        .unwrap_or_else(|| panic!("{namespace}/{name} is not in base/pods.yaml"));
    pod["metadata"]["labels"] = labels;
    pod
}

#[test]
fn updates_pass_through_the_api_server_and_relabels_reach_the_kernel_fast() {
    nft::testing::require_root();
    let cp = ControlPlane::start();
    let kubeconfig = cp.kubeconfig.to_str().unwrap();
    let base = root().join("e2e/scenarios/base");
    let base = base.to_str().unwrap();
    let updates = root().join("e2e/scenarios/updates.yaml");
    let report = lab_json(&[
        "-f",
        base,
        "--scenario",
        updates.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
    ]);
    let enforced = event_to_kernel(&report);
    assert!(enforced.len() > 10, "{enforced:?}");

    // A second run on the same server: x/a admits pods labelled
    // `role: client`; x/b (another node) gains and loses the label.
    const CHANGES: usize = 20;
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "a-from-clients", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {},
                                        "podSelector": {"matchLabels": {"role": "client"}}}]}]}
    });
    let mut steps = vec![json!({"apply": [policy]})];
    for i in 0..CHANGES {
        let labels = if i % 2 == 0 {
            json!({"pod": "b", "role": "client"})
        } else {
            json!({"pod": "b"})
        };
        steps.push(json!({"apply": [base_pod("x", "b", labels)]}));
    }
    steps.push(json!({"probe": {"port": 80, "expect": {"deny": ["*/*->x/a"]}}}));
    let dir = std::env::temp_dir().join(format!("kube-nft-cluster-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("relabels.yaml");
    std::fs::write(&scenario, json!({ "steps": steps }).to_string()).unwrap();
    let report = lab_json(&[
        "-f",
        base,
        "--scenario",
        scenario.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    let mut latencies: Vec<f64> = event_to_kernel(&report)
        .into_iter()
        .filter(|(step, _)| step.is_some_and(|s| s >= 1))
        .map(|(_, ms)| ms)
        .collect();
    assert_eq!(latencies.len(), CHANGES);
    assert!(
        latencies.iter().all(|ms| *ms > 0.0),
        "every relabel changed a kernel: {latencies:?}"
    );
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "event→kernel through the API server, {CHANGES} pod relabels: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (`cargo run -p e2e --bin bench -- cluster` for 200)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

// ---------------------------------------------------------------------------
// through the library

const MODEL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"#;

fn model() -> Cluster {
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("model.yaml"), MODEL);
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    loaded.cluster
}

fn session(kubeconfig: &Path) -> Session {
    let options = RunOptions {
        api_server: Some(ApiServerOptions {
            kubeconfig: kubeconfig.to_path_buf(),
            binary: Some(common::kube_nft().to_path_buf()),
            timeout: Duration::from_secs(90),
        }),
        ..RunOptions::default()
    };
    Session::start(model(), &options, &[(Protocol::Tcp, 80)]).expect("starting the lab")
}

/// TCP/80 pod to pod, judged against explain.
fn probe(s: &mut Session) -> ProbeReport {
    let report = s
        .probe(&ProbeStep {
            protocol: Protocol::Tcp,
            port: 80,
            to: Target::Pod,
            from: Source::Pod,
            family: Family::IPv4,
            expect: None,
        })
        .expect("probing");
    for c in &report.results {
        assert_eq!(
            c.allowed, c.explain,
            "{} -> {}: kernel {}, explain {} ({:?})",
            c.from, c.to, c.allowed, c.explain, c.detail
        );
    }
    report
}

/// The verdict of `from -> to` in a probe report.
fn verdict(report: &ProbeReport, from: &str, to: &str) -> bool {
    report
        .results
        .iter()
        .find(|c| c.from == from && c.to == to)
        .unwrap_or_else(|| panic!("no cell {from} -> {to}"))
        .allowed
}

/// A TCP connection from pod `from` to pod `to` (port 7000, which the lab's
/// listeners leave free), with an echo server on `to`'s side.
struct Held {
    client: TcpStream,
}

impl Held {
    fn open(s: &Session, from: (&str, &str), to: (&str, &str)) -> Held {
        let server_pod = s.pod(to.0, to.1).unwrap();
        let client_pod = s.pod(from.0, from.1).unwrap();
        let addr = SocketAddr::new(IpAddr::V4(server_pod.ip), 7000);
        let listener = server_pod
            .netns
            .run(move || TcpListener::bind(addr))
            .unwrap()
            .expect("listening in the server pod");
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accepting");
            let mut buf = [0u8; 64];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let client = client_pod
            .netns
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .unwrap()
            .expect("connecting from the client pod");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        Held { client }
    }

    /// Sends `text` and returns the echo (an error when it does not come back).
    fn echo(&mut self, text: &str) -> std::io::Result<String> {
        self.client.write_all(text.as_bytes())?;
        let mut buf = vec![0u8; text.len()];
        self.client.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[test]
fn an_agent_killed_and_restarted_drops_no_established_connection() {
    nft::testing::require_root();
    let cp = ControlPlane::start();
    let mut s = session(&cp.kubeconfig);
    assert_eq!(s.control_plane(), "apiserver");
    let before = probe(&mut s);
    assert!(verdict(&before, "x/a", "x/b"));
    assert!(!verdict(&before, "x/c", "x/b"));

    let mut held = Held::open(&s, ("x", "a"), ("x", "b"));
    assert_eq!(held.echo("before").unwrap(), "before");
    // b's node enforces b's ingress: its agent goes.
    s.restart_agent("node-2").expect("restarting the agent");
    assert_eq!(
        held.echo("after the restart")
            .expect("the established connection survives"),
        "after the restart"
    );
    let after = probe(&mut s);
    assert!(
        verdict(&after, "x/a", "x/b"),
        "new connections still allowed"
    );
    assert!(!verdict(&after, "x/c", "x/b"), "and still denied");
    // The restarted agent follows changes.
    s.delete(&[ObjectRef {
        kind: "NetworkPolicy".into(),
        namespace: Some("x".into()),
        name: "b-from-a".into(),
    }])
    .expect("deleting the policy");
    assert!(verdict(&probe(&mut s), "x/c", "x/b"));
    assert_eq!(held.echo("still there").unwrap(), "still there");
    s.close().expect("closing the lab");
}

/// A TCP relay on loopback in front of the API server, as a load balancer
/// in front of a real control plane: `scripts/apiserver-run` resumes the
/// server on its old port only while that port is free, and the relay keeps
/// the address the lab's components know either way.
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let to = target.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(down) = conn else { continue };
                let upstream = *to.lock().unwrap();
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
                    continue; // dropped: the client sees the server as down
                };
                for (mut from, mut into) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, target }
    }

    fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }
}

/// The `server:` address of a kubeconfig (https://127.0.0.1:PORT).
fn server_of(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no https://ADDR server in {}", kubeconfig.display()))
}

#[test]
fn policy_keeps_working_while_the_api_server_is_down() {
    nft::testing::require_root();
    let cp = ControlPlane::start();
    if !cp.is_owned() {
        eprintln!("skipped: the control plane is not ours to stop (KUBE_NFT_TEST_KUBECONFIG)");
        return;
    }
    let relay = Relay::start(server_of(&cp.kubeconfig));
    let dir = std::env::temp_dir().join(format!("kube-nft-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let relayed = dir.join("relayed.kubeconfig");
    let original = server_of(&cp.kubeconfig).to_string();
    std::fs::write(
        &relayed,
        std::fs::read_to_string(&cp.kubeconfig)
            .unwrap()
            .replace(&original, &relay.addr.to_string()),
    )
    .unwrap();

    let mut s = session(&relayed);
    let enforced = probe(&mut s);
    let table = |r: &ProbeReport| -> BTreeMap<(String, String), bool> {
        r.results
            .iter()
            .map(|c| ((c.from.clone(), c.to.clone()), c.allowed))
            .collect()
    };
    assert!(verdict(&enforced, "x/a", "x/b") && !verdict(&enforced, "x/c", "x/b"));

    cp.pause();
    std::thread::sleep(Duration::from_secs(3));
    let during = probe(&mut s);
    assert_eq!(
        table(&during),
        table(&enforced),
        "the verdicts hold without the API server"
    );

    cp.resume();
    relay.retarget(server_of(&cp.kubeconfig));
    let change = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "b-from-a", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}
    });
    let e = s
        .apply(&[change])
        .expect("a change after the outage is enforced");
    eprintln!(
        "first change after the API server came back: event→kernel {:.0} ms",
        e.nodes
            .iter()
            .map(|n| n.elapsed.as_secs_f64() * 1000.0)
            .fold(0.0, f64::max)
    );
    let after = probe(&mut s);
    assert!(!verdict(&after, "x/a", "x/b") && verdict(&after, "x/c", "x/b"));
    s.close().expect("closing the lab");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn deploy_passes_a_server_side_dry_run() {
    let kustomization = root().join("deploy/kustomization.yaml");
    assert!(
        kustomization.is_file(),
        "deploy/kustomization.yaml is missing"
    );
    let cp = ControlPlane::start();
    let deploy = root().join("deploy");
    // The dry run creates nothing, so the objects in the namespace would
    // not find it: create the namespace for real first.
    cp.kubectl(&[
        "apply",
        "-f",
        deploy.join("namespace.yaml").to_str().unwrap(),
    ]);
    let out = cp.kubectl_output(&["apply", "--dry-run=server", "-k", deploy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=server -k deploy/ failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

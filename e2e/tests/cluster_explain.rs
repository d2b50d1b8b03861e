//! Live `kube-nft explain` (no `-f`): it reads a real API server and must say
//! exactly what it says offline about the same objects.
//!
//! The bundled example (`examples/`) goes into a v1.20 control plane (with the
//! controller-manager, which writes the EndpointSlices) the way a cluster
//! would hold it: no kubelet runs, so this suite plays it: pods are created
//! bound to their node (`spec.nodeName`, the Nodes created first) and their
//! status (phase, IPs, `Ready`) is written through the status subresource
//! with the values the manifests declare. The ClusterIPs and the NodePort
//! are declared in the manifests too and lie in the control plane's ranges,
//! so every output compares whole.
//!
//! Also: an unreachable API server fails fast with a clear error. The
//! comparison skips under `KUBE_NFT_TEST_KUBECONFIG` (it needs a cluster that
//! holds nothing but the example).

mod common;
#[path = "common/control_plane.rs"]
mod control_plane;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use control_plane::ControlPlane;
use serde::Deserialize;
use serde_json::{json, Value};

fn examples() -> PathBuf {
    common::workspace_root().join("examples")
}

/// Every object of `examples/*.yaml`, in file order.
fn example_objects() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples())
        .expect("reading examples/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            serde_norway::Deserializer::from_str(&text)
                .map(|doc| Value::deserialize(doc).unwrap())
                .filter(|v| !v.is_null())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn ns_name(o: &Value) -> (String, String) {
    let m = &o["metadata"];
    (
        m["namespace"].as_str().unwrap_or("default").to_string(),
        m["name"].as_str().unwrap().to_string(),
    )
}

/// Polls `ready` every 200 ms until it is true; panics with `what` after
/// `limit`.
fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Puts the example into the cluster as a kubelet-run cluster would hold it.
fn apply_examples(cp: &ControlPlane) {
    let objects = example_objects();
    let of_kind = |k: &'static str| objects.iter().filter(move |o| kind(o) == k);
    for k in ["Node", "Namespace"] {
        for o in of_kind(k) {
            cp.kubectl_stdin(&["create", "-f", "-"], &o.to_string());
        }
    }
    // The ServiceAccount admission rejects pods until the namespace's default
    // ServiceAccount (and, on v1.20, its token secret) exists.
    let mut namespaces: Vec<String> = of_kind("Pod").map(|p| ns_name(p).0).collect();
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        cp.wait_for_default_service_account(ns);
    }
    for pod in of_kind("Pod") {
        let (ns, name) = ns_name(pod);
        let mut created = pod.clone();
        // Status is the kubelet's: the API server ignores it on create.
        let status = created.as_object_mut().unwrap().remove("status").unwrap();
        assert!(
            created["spec"]["nodeName"].is_string(),
            "{ns}/{name} names its node"
        );
        cp.kubectl_stdin(&["create", "-f", "-"], &created.to_string());
        let ip = status["podIP"]
            .as_str()
            .expect("example pods declare podIP");
        let patch = json!({"status": {
            "phase": status["phase"],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            // The EndpointSlice controller lists only Ready pods as ready,
            // and the offline model counts a pod without conditions as ready.
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        cp.kubectl(&[
            "patch",
            "pod",
            &name,
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]);
    }
    for k in ["Service", "NetworkPolicy"] {
        for o in of_kind(k) {
            cp.kubectl_stdin(&["create", "-f", "-"], &o.to_string());
        }
    }
    // The pods each Service selects, as the controller should list them.
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    for svc in of_kind("Service") {
        let (ns, _) = ns_name(svc);
        let selector = svc["spec"]["selector"].as_object().unwrap();
        let n = of_kind("Pod")
            .filter(|p| ns_name(p).0 == ns)
            .filter(|p| {
                selector
                    .iter()
                    .all(|(k, v)| &p["metadata"]["labels"][k] == v)
            })
            .count();
        assert!(n > 0, "{:?} selects a pod", ns_name(svc));
        expected.insert(ns_name(svc), n);
    }
    wait_for(
        "the EndpointSlice controller to list every Service's pods as ready",
        Duration::from_secs(60),
        || ready_endpoints(cp) == expected,
    );
}

/// Ready endpoint addresses per Service of the example, from the cluster's
/// EndpointSlices (whichever version kubectl reads them as).
fn ready_endpoints(cp: &ControlPlane) -> BTreeMap<(String, String), usize> {
    let list: Value =
        serde_json::from_str(&cp.kubectl(&["get", "endpointslices", "-A", "-o", "json"])).unwrap();
    let mut out = BTreeMap::new();
    for slice in list["items"].as_array().unwrap() {
        let ns = slice["metadata"]["namespace"].as_str().unwrap().to_string();
        let Some(svc) = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str() else {
            continue;
        };
        if ns == "default" && svc == "kubernetes" {
            continue;
        }
        let ready = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"] == true)
            .map(|e| e["addresses"].as_array().map_or(0, Vec::len))
            .sum::<usize>();
        *out.entry((ns, svc.to_string())).or_default() += ready;
    }
    out
}

fn run(args: &[&str]) -> Output {
    Command::new(common::kube_nft())
        .args(args)
        .output()
        .expect("running kube-nft")
}

/// stdout of a successful run that reported nothing on stderr.
fn clean_stdout(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "kube-nft {}: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn live_explain_says_what_offline_explain_says() {
    let cp = ControlPlane::start();
    if !cp.is_owned() {
        // The comparison needs a cluster holding the example and nothing
        // else (the matrix lists every pod), with no kubelet rewriting the
        // pods' status.
        eprintln!("skipped: needs a control plane of its own, not KUBE_NFT_TEST_KUBECONFIG");
        return;
    }
    apply_examples(&cp);
    let kubeconfig = cp.kubeconfig.to_str().unwrap().to_string();
    let examples = examples().to_str().unwrap().to_string();
    let queries: &[&[&str]] = &[
        &[
            "flow",
            "--from",
            "default/debug",
            "--to",
            "shop/backend",
            "--port",
            "6379/TCP",
        ],
        &[
            "flow",
            "--from",
            "shop/frontend-1",
            "--to",
            "shop/backend",
            "--port",
            "6379",
        ],
        &[
            "flow",
            "--from",
            "shop/backend",
            "--to",
            "shop-data/database",
            "--port",
            "5978",
            "-o",
            "json",
        ],
        &[
            "flow",
            "--from",
            "default/debug",
            "--to",
            "shop/frontend-2",
            "--port",
            "80",
        ],
        &["pod", "shop/backend"],
        &["pod", "shop-data/database", "--output", "json"],
        &["pod", "default/debug"],
        &["matrix", "--output", "json"],
        &["matrix", "--port", "80/TCP", "--output", "json"],
        &["matrix", "--port", "5978"],
        &["service", "shop/backend"],
        &["service", "shop/frontend"],
        &["service", "shop-data/database", "--output", "json"],
        &[
            "service",
            "shop/frontend",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--output",
            "json",
        ],
    ];
    for q in queries {
        let live: Vec<&str> = [&["explain", "--kubeconfig", &kubeconfig][..], q].concat();
        let offline: Vec<&str> = [&["explain", "-f", &examples][..], q].concat();
        let (live, offline) = (clean_stdout(&live), clean_stdout(&offline));
        // `-f` with a flow the engine cannot name would print nothing; make
        // sure each query said something before comparing.
        assert!(offline.len() > 20, "explain {}: {offline}", q.join(" "));
        assert_eq!(
            live,
            offline,
            "explain {}: live (left) and offline (right) differ",
            q.join(" ")
        );
    }
    // Live only: the API server writes the EndpointSlice of its own
    // selector-less Service (to the address `scripts/apiserver-run`
    // advertises); nothing synthesizes it from pods, so its endpoint shows
    // that live explain reads the cluster's slices (v1beta1 on v1.20).
    let out = clean_stdout(&[
        "explain",
        "service",
        "default/kubernetes",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(
        out.contains("ClusterIP 10.96.0.1:443/TCP") && out.contains("dnat to one of 203.0.113.1:"),
        "{out}"
    );
}

/// A kubeconfig for `server`, that a connection to it would use.
fn kubeconfig_for(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: c, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
         users: [{{name: u, user: {{token: t}}}}]\n\
         contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
         current-context: x\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kube-nft-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a live explain against `kubeconfig`; returns stderr and how long it took.
fn failing_explain(kubeconfig: &Path) -> (String, Duration) {
    // Build (or find) the binary first: only the command is timed.
    common::kube_nft();
    let start = Instant::now();
    let out = run(&[
        "explain",
        "matrix",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    let took = start.elapsed();
    assert!(!out.status.success(), "explain against nothing succeeded");
    assert!(out.stdout.is_empty());
    (String::from_utf8_lossy(&out.stderr).into_owned(), took)
}

#[test]
fn a_closed_port_fails_at_once_with_a_clear_error() {
    let dir = temp_dir("closed-port");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let kc = kubeconfig_for(&dir, &format!("https://127.0.0.1:{port}"));
    let (stderr, took) = failing_explain(&kc);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert!(
        stderr.starts_with("error: reading the live cluster (--kubeconfig ")
            && stderr.contains("asking the API server for its API groups: ")
            && stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
}

#[test]
fn a_silent_server_fails_after_the_deadline() {
    let dir = temp_dir("silent");
    // Accepts connections (the kernel completes the handshake into the
    // backlog) and never says a word, so TLS never starts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let kc = kubeconfig_for(&dir, &format!("https://{}", listener.local_addr().unwrap()));
    let (stderr, took) = failing_explain(&kc);
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(took < Duration::from_secs(15), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("the API server did not answer within 10 s"),
        "{stderr}"
    );
}

#[test]
fn no_kubeconfig_anywhere_is_a_clear_error() {
    let home = temp_dir("no-kubeconfig");
    let mut cmd = Command::new(common::kube_nft());
    cmd.args(["explain", "pod", "shop/backend"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", &home);
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&home);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: no -f PATH given, so reading the live cluster: no kubeconfig given and none found"),
        "{stderr}"
    );
}

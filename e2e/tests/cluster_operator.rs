//! `kube-nft operator` against a real API server (v1.20 control plane, no
//! kubelet: this suite plays it, creating pods bound to their node and
//! writing their status through the status subresource).
//!
//! * `operator_compiles_and_follows_the_cluster`: the NodePolicyShares and
//!   AddressSetShards equal what the library's offline compiler makes of the
//!   same live objects, after start-up and after each change; a relabel
//!   rewrites only the touched set's shard and node's share (the others keep
//!   their `resourceVersion`); an invalid NetworkPolicy gets one Warning Event
//!   naming the field while the rest is compiled, and a broken update keeps
//!   the previous version enforced; a Node's share goes with the Node;
//!   deleting the policies empties the shares and deletes every shard;
//!   `/metrics` and `/readyz` answer; SIGTERM exits 0 and releases the Lease.
//! * `standby_takes_over`: two replicas, exactly one holds the Lease and
//!   writes; after `kill -9` of the holder the other writes a change within
//!   the Lease term plus a few seconds; after SIGTERM of the new holder (exit
//!   0) a restarted standby takes over in under 3 s. Both times are printed.

#[allow(dead_code)] // the suites use different parts
mod common;
#[path = "common/control_plane.rs"]
mod control_plane;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use control_plane::ControlPlane;
use kube_nft::cluster::{Cluster, Object};
use kube_nft_crds::resources::{
    AddressSetShard, AddressSetShardSpec, NodePolicyShare, NodePolicyShareSpec,
};
use kube_nft_crds::shard;
use serde_json::{json, Value};

const NS: &str = "kube-nft";
const LEASE: &str = "kube-nft-operator";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

// ---------------------------------------------------------------------------
// the operator process

/// A `kube-nft operator` child; killed (and its log shown, if the test is
/// failing) when dropped.
struct Operator {
    child: Option<Child>,
    identity: String,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Operator {
    /// Runs as `kubeconfig`'s user (the tests give the operator's
    /// ServiceAccount, so a rule missing from deploy/ fails them).
    fn start(kubeconfig: &Path, identity: &str) -> Operator {
        let metrics = free_port();
        let log = std::env::temp_dir().join(format!(
            "kube-nft-operator-{}-{identity}-{}.log",
            std::process::id(),
            metrics.port()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::kube_nft())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", NS, "--identity", identity])
            .args(["--metrics-addr", &metrics.to_string()])
            .env("RUST_LOG", "info,kube_nft=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting kube-nft operator");
        Operator {
            child: Some(child),
            identity: identity.to_string(),
            metrics,
            log,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics, path)
    }

    fn wait_ready(&self) {
        wait_for(
            &format!("{}'s /readyz", self.identity),
            Duration::from_secs(60),
            || self.get("/readyz").is_some_and(|(code, _)| code == 200),
        );
    }

    /// The `kube_nft_operator_leader` gauge.
    fn leader_gauge(&self) -> Option<i64> {
        let (_, body) = self.get("/metrics")?;
        metric(&body, "kube_nft_operator_leader").map(|v| v as i64)
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; waits (at most 20 s) for the exit status.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("{} did not exit within 20 s of SIGTERM", self.identity);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- operator {} log (last lines) ---", self.identity);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// The value of the sample whose name (with labels) is exactly `series`.
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------
// the cluster

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CRDs, and deploy/'s namespace and operator RBAC; returns a kubeconfig
/// of the operator's ServiceAccount.
fn install(cp: &ControlPlane) -> PathBuf {
    let out = Command::new(common::kube_nft())
        .arg("crds")
        .output()
        .expect("kube-nft crds");
    assert!(out.status.success(), "kube-nft crds failed");
    cp.kubectl_stdin(
        &["apply", "-f", "-"],
        &String::from_utf8(out.stdout).unwrap(),
    );
    for crd in ["nodepolicyshares.kubenft.io", "addresssetshards.kubenft.io"] {
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}"),
        ]);
    }
    let deploy = common::workspace_root().join("deploy");
    for file in ["namespace.yaml", "rbac-operator.yaml"] {
        cp.kubectl(&["apply", "-f", deploy.join(file).to_str().unwrap()]);
    }
    cp.service_account_kubeconfig(NS, "kube-nft-operator")
}

/// Sets shop/web-2's `app` label (`label` is `app=VALUE`).
fn relabel_web_2(cp: &ControlPlane, label: &str) {
    cp.kubectl(&["label", "pod", "-n", "shop", "web-2", label, "--overwrite"]);
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                    {"type": "Hostname", "address": name}]}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}})
}

fn create(cp: &ControlPlane, objects: &[Value]) {
    for o in objects {
        cp.kubectl_stdin(&["create", "-f", "-"], &o.to_string());
    }
}

/// Creates pods bound to their node and writes their status as a kubelet
/// would. `pods`: (namespace, name, node, labels, ip, named ports).
fn create_pods(cp: &ControlPlane, pods: &[(&str, &str, &str, Value, &str, Value)]) {
    let mut namespaces: Vec<&str> = pods.iter().map(|p| p.0).collect();
    namespaces.sort();
    namespaces.dedup();
    // The ServiceAccount admission rejects pods until the namespace's default
    // ServiceAccount and (on v1.20) its token exist.
    for ns in namespaces {
        cp.wait_for_default_service_account(ns);
    }
    for (ns, name, node, labels, ip, ports) in pods {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none", "ports": ports}]}});
        cp.kubectl_stdin(&["create", "-f", "-"], &pod.to_string());
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}});
        cp.kubectl(&[
            "patch",
            "pod",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }
}

fn items(cp: &ControlPlane, what: &str) -> Vec<Value> {
    let text = cp.kubectl(&["get", what, "-A", "-o", "json"]);
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// What the operator should have written: the library's offline compile of
/// the live Namespaces, Pods, NetworkPolicies and Nodes.
struct Expected {
    shares: BTreeMap<String, NodePolicyShareSpec>,
    shards: BTreeMap<String, AddressSetShardSpec>,
}

fn expected(cp: &ControlPlane) -> Expected {
    let mut cluster = Cluster::new();
    for item in items(cp, "namespaces,pods,networkpolicies,nodes") {
        let object = match item["kind"].as_str().unwrap() {
            "Namespace" => Object::Namespace(serde_json::from_value(item).unwrap()),
            "Pod" => Object::Pod(serde_json::from_value(item).unwrap()),
            "NetworkPolicy" => Object::NetworkPolicy(serde_json::from_value(item).unwrap()),
            "Node" => Object::Node(serde_json::from_value(item).unwrap()),
            other => panic!("unexpected kind {other}"),
        };
        // An invalid object is left out, as the operator leaves it out.
        let _ = cluster.insert(object);
    }
    let ir = kube_nft::policy::compile(&cluster);
    let shares = cluster
        .nodes()
        .keys()
        .map(|n| (n.clone(), NodePolicyShareSpec::new(ir.nodes[n].clone())))
        .collect();
    let shards = shard::shard(&ir.address_sets, shard::DEFAULT_MAX_ELEMENTS)
        .into_iter()
        .map(|s| (s.metadata.name.unwrap(), s.spec))
        .collect();
    Expected { shares, shards }
}

/// The operator's objects: spec and resourceVersion by name.
struct Written {
    shares: BTreeMap<String, (NodePolicyShareSpec, String)>,
    shards: BTreeMap<String, (AddressSetShardSpec, String)>,
}

fn written(cp: &ControlPlane) -> Written {
    let managed = |o: &Value| o["metadata"]["labels"][MANAGED_BY] == "kube-nft-operator";
    let rv = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let shares = items(cp, "nodepolicyshares")
        .into_iter()
        .inspect(|o| assert!(managed(o), "share without the managed-by label: {o}"))
        .map(|o| {
            let v = rv(&o);
            let s: NodePolicyShare = serde_json::from_value(o).unwrap();
            (s.metadata.name.unwrap(), (s.spec, v))
        })
        .collect();
    let shards = items(cp, "addresssetshards")
        .into_iter()
        .inspect(|o| assert!(managed(o), "shard without the managed-by label: {o}"))
        .map(|o| {
            let v = rv(&o);
            let s: AddressSetShard = serde_json::from_value(o).unwrap();
            (s.metadata.name.unwrap(), (s.spec, v))
        })
        .collect();
    Written { shares, shards }
}

fn matches(w: &Written, e: &Expected) -> bool {
    let shares: BTreeMap<&String, &NodePolicyShareSpec> =
        w.shares.iter().map(|(n, (s, _))| (n, s)).collect();
    let shards: BTreeMap<&String, &AddressSetShardSpec> =
        w.shards.iter().map(|(n, (s, _))| (n, s)).collect();
    shares == e.shares.iter().collect::<BTreeMap<_, _>>()
        && shards == e.shards.iter().collect::<BTreeMap<_, _>>()
}

/// Polls until the written objects equal the offline compile; returns how
/// long it took and what is written.
fn converge(cp: &ControlPlane, limit: Duration) -> (Duration, Written) {
    let start = Instant::now();
    loop {
        let e = expected(cp);
        let w = written(cp);
        if matches(&w, &e) {
            return (start.elapsed(), w);
        }
        if start.elapsed() > limit {
            let names = |m: Vec<&String>| m.into_iter().cloned().collect::<Vec<_>>();
            panic!(
                "the operator's objects did not converge in {limit:?}\n\
                 written shares {:?}, shards {:?}\nexpected shares {:?}, shards {:?}\n\
                 first differing share: {:#?}",
                names(w.shares.keys().collect()),
                names(w.shards.keys().collect()),
                names(e.shares.keys().collect()),
                names(e.shards.keys().collect()),
                e.shares
                    .iter()
                    .find(|(n, s)| w.shares.get(*n).map(|x| &x.0) != Some(s))
                    .map(|(n, s)| (n, s, w.shares.get(n).map(|x| &x.0))),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names whose resourceVersion in `a` differs from `b`'s (or is new).
fn changed<T>(a: &BTreeMap<String, (T, String)>, b: &BTreeMap<String, (T, String)>) -> Vec<String> {
    a.iter()
        .filter(|(n, (_, rv))| b.get(*n).map(|x| &x.1) != Some(rv))
        .map(|(n, _)| n.clone())
        .collect()
}

fn lease_holder(cp: &ControlPlane) -> Option<String> {
    let out = cp.kubectl(&[
        "get",
        "lease",
        LEASE,
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    Some(out.trim().to_string()).filter(|h| !h.is_empty())
}

/// Warning Events (events.k8s.io/v1) on `namespace/name`.
fn warnings(cp: &ControlPlane, namespace: &str, name: &str) -> Vec<Value> {
    let text = cp.kubectl(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        namespace,
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == name && e["type"] == "Warning")
        .cloned()
        .collect()
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A shop: web and db tiers over two nodes, a cache whose egress to the db
/// goes by a named port, a client in another namespace; node n3 hosts
/// nothing.
fn shop(cp: &ControlPlane) {
    create(
        cp,
        &[
            node("n1", "172.18.0.11"),
            node("n2", "172.18.0.12"),
            node("n3", "172.18.0.13"),
            namespace("shop", json!({"team": "shop"})),
            namespace("other", json!({"team": "other"})),
        ],
    );
    let http = json!([{"name": "http", "containerPort": 8080}]);
    let pg = json!([{"name": "postgres", "containerPort": 5432}]);
    create_pods(
        cp,
        &[
            (
                "shop",
                "web-1",
                "n1",
                json!({"app": "web"}),
                "10.244.1.10",
                http.clone(),
            ),
            (
                "shop",
                "web-2",
                "n2",
                json!({"app": "web"}),
                "10.244.2.10",
                http.clone(),
            ),
            ("shop", "db", "n2", json!({"app": "db"}), "10.244.2.20", pg),
            (
                "shop",
                "cache",
                "n1",
                json!({"app": "cache"}),
                "10.244.1.30",
                json!([]),
            ),
            (
                "other",
                "client",
                "n1",
                json!({"app": "client"}),
                "10.244.1.40",
                json!([]),
            ),
        ],
    );
    create(cp, &shop_policies());
}

fn db_ingress() -> Value {
    policy(
        "shop",
        "db-ingress",
        json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                         "ports": [{"port": 5432}]}]
        }),
    )
}

fn shop_policies() -> Vec<Value> {
    vec![
        db_ingress(),
        policy(
            "shop",
            "web-ingress",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
                             "ports": [{"port": "http"}]}]
            }),
        ),
        policy(
            "shop",
            "cache-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "cache"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                            "ports": [{"port": "postgres"}]}]
            }),
        ),
    ]
}

/// An ipBlock whose `except` is an IPv4-mapped IPv6 network inside the IPv4
/// `cidr`: v1.20's API validation (Go's `net.IPNet.Contains` unmaps the
/// address) accepts it, the engine does not (field
/// `spec.ingress[0].from[0].ipBlock.except[0]`).
fn broken_ingress() -> Value {
    json!([{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::ffff:10.1.0.0/112"]}}]}])
}

const BROKEN_FIELD: &str = "spec.ingress[0].from[0].ipBlock.except[0]";

// ---------------------------------------------------------------------------
// the tests

#[test]
fn operator_compiles_and_follows_the_cluster() {
    let cp = ControlPlane::start();
    let operator = install(&cp);
    shop(&cp);

    let start = Instant::now();
    let mut op = Operator::start(&operator, "a");
    op.wait_ready();
    let (_, before) = converge(&cp, Duration::from_secs(60));
    eprintln!("first complete write {:?} after start", start.elapsed());
    assert_eq!(
        before.shares.keys().collect::<Vec<_>>(),
        vec!["n1", "n2", "n3"]
    );
    assert!(
        before.shares["n3"].0.policy.pods.is_empty(),
        "n3 hosts nothing"
    );
    assert_eq!(
        before.shards.len(),
        3,
        "app=web, app=client in any namespace, postgres ports of app=db"
    );
    assert_eq!(lease_holder(&cp).as_deref(), Some("a"));

    // A relabel: web-2 leaves the web tier. Only the app=web set's shard and
    // n2's share (web-2 is no longer isolated) are rewritten.
    relabel_web_2(&cp, "app=old");
    let (took, after) = converge(&cp, Duration::from_secs(20));
    eprintln!("relabel written in {took:?}");
    assert_eq!(changed(&after.shares, &before.shares), vec!["n2"]);
    let changed_shards = changed(&after.shards, &before.shards);
    assert_eq!(changed_shards.len(), 1, "{changed_shards:?}");
    assert!(after.shards[&changed_shards[0]]
        .0
        .selector
        .contains("app=web"));
    assert!(!after.shards[&changed_shards[0]]
        .0
        .elements
        .iter()
        .any(|e| e.ip.to_string() == "10.244.2.10"));

    // A new, invalid policy: one Warning Event naming the field; everything
    // else still compiled (the offline compile leaves it out too).
    create(
        &cp,
        &[policy(
            "shop",
            "bad",
            json!({"podSelector": {}, "ingress": broken_ingress()}),
        )],
    );
    wait_for(
        "the InvalidPolicy event on shop/bad",
        Duration::from_secs(20),
        || !warnings(&cp, "shop", "bad").is_empty(),
    );
    converge(&cp, Duration::from_secs(20));
    let events = warnings(&cp, "shop", "bad");
    assert_eq!(events[0]["reason"], "InvalidPolicy");
    let note = events[0]["note"].as_str().unwrap();
    assert!(note.contains(BROKEN_FIELD), "{note}");
    assert_eq!(events[0]["reportingController"], "kube-nft-operator");
    // Not repeated by later passes (the lease renewals wake the loop).
    std::thread::sleep(Duration::from_secs(3));
    let events = warnings(&cp, "shop", "bad");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0]["series"].is_null(), "{events:?}");

    // A broken update of db-ingress: the previous version stays enforced.
    let enforced = written(&cp);
    let mut broken = db_ingress();
    broken["spec"]["ingress"] = broken_ingress();
    cp.kubectl_stdin(&["apply", "-f", "-"], &broken.to_string());
    wait_for(
        "the InvalidPolicy event on shop/db-ingress",
        Duration::from_secs(20),
        || !warnings(&cp, "shop", "db-ingress").is_empty(),
    );
    let note = warnings(&cp, "shop", "db-ingress")[0]["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(note.contains("previous valid version"), "{note}");
    let now = written(&cp);
    assert_eq!(
        now.shares
            .iter()
            .map(|(n, s)| (n, &s.0))
            .collect::<Vec<_>>(),
        enforced
            .shares
            .iter()
            .map(|(n, s)| (n, &s.0))
            .collect::<Vec<_>>()
    );
    assert!(now.shares["n2"]
        .0
        .policy
        .pods
        .iter()
        .any(|p| p.name == "db"));

    // Fixed again: compiled as written.
    cp.kubectl_stdin(&["apply", "-f", "-"], &db_ingress().to_string());
    converge(&cp, Duration::from_secs(20));

    // A Node goes: its share goes.
    cp.kubectl(&["delete", "node", "n3"]);
    let (_, w) = converge(&cp, Duration::from_secs(20));
    assert!(!w.shares.contains_key("n3"));

    // Every policy goes: the shares are empty and no shard is left.
    cp.kubectl(&["delete", "networkpolicies", "--all", "-n", "shop"]);
    let (_, w) = converge(&cp, Duration::from_secs(20));
    assert!(
        w.shards.is_empty(),
        "{:?}",
        w.shards.keys().collect::<Vec<_>>()
    );
    assert!(w.shares.values().all(|(s, _)| s.policy.pods.is_empty()));
    assert_eq!(w.shares.len(), 2);

    // The endpoints.
    let (code, body) = op.get("/metrics").unwrap();
    assert_eq!(code, 200);
    for (series, at_least) in [
        ("kube_nft_operator_leader", 1.0),
        (r#"kube_nft_operator_watched_objects{kind="Pod"}"#, 5.0),
        (r#"kube_nft_operator_watched_objects{kind="Node"}"#, 2.0),
        (
            r#"kube_nft_operator_writes_total{kind="AddressSetShard",op="apply"}"#,
            3.0,
        ),
        (
            r#"kube_nft_operator_writes_total{kind="AddressSetShard",op="delete"}"#,
            3.0,
        ),
        (
            r#"kube_nft_operator_writes_total{kind="NodePolicyShare",op="delete"}"#,
            1.0,
        ),
        (
            r#"kube_nft_operator_errors_total{kind="NetworkPolicy",reason="invalid"}"#,
            2.0,
        ),
        ("kube_nft_operator_compile_duration_seconds_count", 1.0),
    ] {
        let v = metric(&body, series).unwrap_or_else(|| panic!("{series} missing:\n{body}"));
        assert!(v >= at_least, "{series} = {v}, want at least {at_least}");
    }
    assert_eq!(op.get("/healthz").unwrap().0, 200);

    // SIGTERM: exit 0, the Lease released.
    let status = op.terminate();
    assert!(status.success(), "exit status {status}");
    assert_eq!(lease_holder(&cp), None, "the lease is released on exit");
}

#[test]
fn standby_takes_over() {
    let cp = ControlPlane::start();
    let operator = install(&cp);
    shop(&cp);

    let a = Operator::start(&operator, "a");
    let b = Operator::start(&operator, "b");
    a.wait_ready();
    b.wait_ready();
    converge(&cp, Duration::from_secs(60));
    let holder = lease_holder(&cp).expect("a holder");
    let (mut leader, standby) = if holder == "a" { (a, b) } else { (b, a) };
    assert_eq!(leader.identity, holder);
    // Exactly one leads; the standby is ready too.
    wait_for("the leader gauges", Duration::from_secs(10), || {
        leader.leader_gauge() == Some(1) && standby.leader_gauge() == Some(0)
    });

    // The leader dies without a word: the standby writes the next change
    // once the Lease term (10 s by default) has run out.
    leader.kill9();
    let killed = Instant::now();
    relabel_web_2(&cp, "app=old");
    converge(&cp, Duration::from_secs(30));
    let takeover = killed.elapsed();
    eprintln!("takeover after kill -9: {takeover:?} (lease duration 10 s)");
    assert!(takeover < Duration::from_secs(10 + 5), "{takeover:?}");
    assert_eq!(
        lease_holder(&cp).as_deref(),
        Some(standby.identity.as_str())
    );
    let mut leader = standby;

    // The killed replica comes back as the standby.
    let standby = Operator::start(&operator, &holder);
    standby.wait_ready();
    wait_for(
        "the restarted replica to stand by",
        Duration::from_secs(10),
        || standby.leader_gauge() == Some(0),
    );

    // SIGTERM: exit 0, the Lease released at once, the standby writes the
    // next change within a poll or two.
    let stopped = Instant::now();
    let status = leader.terminate();
    assert!(status.success(), "exit status {status}");
    let exited = stopped.elapsed();
    assert_ne!(
        lease_holder(&cp).as_deref(),
        Some(leader.identity.as_str()),
        "the lease still names the stopped replica"
    );
    relabel_web_2(&cp, "app=web");
    converge(&cp, Duration::from_secs(10));
    let handover = stopped.elapsed();
    eprintln!("handover after SIGTERM: {handover:?} (process exited after {exited:?})");
    assert!(handover < Duration::from_secs(3), "{handover:?}");
    assert_eq!(
        lease_holder(&cp).as_deref(),
        Some(standby.identity.as_str())
    );
}

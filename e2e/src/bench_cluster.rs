//! `bench cluster`: event→kernel latency of pod relabels through a real API
//! server, the real operator and agents (`kube-nft lab run --kubeconfig`'s
//! control plane), against the in-process lab measured in the same run.
//!
//! Two lab nodes; `x/a` on node-1 admits pods labelled `role: client`; `x/b`
//! on node-2 gains and loses the label, one change per step. Through the
//! API server a change's time runs from the lab's first write to the moment
//! node-1's kernel holds the new address set (the lab polls the kernel every
//! millisecond); in-process, from the model change to the agent's commit.
//!
//! Without `--kubeconfig` it starts its own v1.20 control plane with
//! `scripts/apiserver-run` (built by `scripts/apiserver-build`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kube_nft::cluster::load::{load_str, Loaded};
use kube_nft::cluster::Cluster;
use kube_nft::lab::apiserver::ApiServerOptions;
use kube_nft::lab::run::{RunOptions, Session};
use kube_nft::lab::scenario::{Family, ProbeStep, Source, Target};
use kube_nft::lab::Protocol;
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Pod relabels through the API server (and as many in-process).
    #[arg(long, default_value_t = 200)]
    pub changes: usize,
    /// Admin kubeconfig of a throwaway API server; default: start one.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kube-nft binary the operator and agents run from; default:
    /// $KUBE_NFT_BIN, else `kube-nft` next to this bench binary.
    #[arg(long, value_name = "PATH")]
    pub kube_nft: Option<PathBuf>,
}

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
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: node-2, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]
"#;

fn model() -> Result<Cluster> {
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("bench.yaml"), MODEL);
    ensure!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    Ok(loaded.cluster)
}

fn pod_b(client: bool) -> Value {
    let labels = if client {
        json!({"pod": "b", "role": "client"})
    } else {
        json!({"pod": "b"})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "b", "namespace": "x", "labels": labels},
        "spec": {"nodeName": "node-2", "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}
    })
}

/// A control plane of our own (scripts/apiserver-run), stopped when dropped.
struct OwnControlPlane {
    dir: PathBuf,
    script: PathBuf,
}

impl OwnControlPlane {
    fn start() -> Result<OwnControlPlane> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("e2e lives inside the workspace")?;
        let cp = OwnControlPlane {
            dir: std::env::temp_dir().join(format!("kube-nft-bench-cp-{}", std::process::id())),
            script: root.join("scripts/apiserver-run"),
        };
        let out = Command::new("bash")
            .arg(&cp.script)
            .arg("start")
            .arg(&cp.dir)
            .output()
            .context("running scripts/apiserver-run")?;
        if !out.status.success() {
            bail!(
                "scripts/apiserver-run start failed (built? scripts/apiserver-build): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(cp)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary(args: &ClusterArgs) -> Result<PathBuf> {
    if let Some(b) = args
        .kube_nft
        .clone()
        .or_else(|| std::env::var_os("KUBE_NFT_BIN").map(PathBuf::from))
    {
        return Ok(b);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("kube-nft");
    ensure!(
        sibling.is_file(),
        "no kube-nft binary at {} (build it with the same profile: cargo build -p kube-nft, or pass --kube-nft)",
        sibling.display()
    );
    Ok(sibling)
}

/// Relabels `changes` times; returns each change's time (`event_to_kernel`:
/// the enforcement's slowest node, else the wall time of the apply).
fn relabel(session: &mut Session, changes: usize, event_to_kernel: bool) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(changes);
    for i in 0..changes {
        let t0 = Instant::now();
        let e = session.apply(&[pod_b(i % 2 == 0)])?;
        let wall = t0.elapsed();
        let slowest = e.nodes.iter().map(|n| n.elapsed).max().unwrap_or_default();
        ensure!(
            slowest > Duration::ZERO || !event_to_kernel,
            "change {i} changed no kernel"
        );
        times.push(if event_to_kernel { slowest } else { wall });
    }
    // The last change took the label away: nobody reaches x/a.
    let probe = session.probe(&ProbeStep {
        protocol: Protocol::Tcp,
        port: 80,
        to: Target::Pod,
        from: Source::Pod,
        family: Family::IPv4,
        expect: None,
    })?;
    for c in &probe.results {
        ensure!(
            c.allowed == c.explain,
            "{} -> {}: kernel {}, explain {}",
            c.from,
            c.to,
            c.allowed,
            c.explain
        );
    }
    Ok(times)
}

fn stats(mut xs: Vec<Duration>) -> (f64, f64, f64) {
    xs.sort();
    let at = |q: f64| xs[((xs.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), at(1.0))
}

pub fn run(args: ClusterArgs) -> Result<()> {
    nft::testing::require_root();
    ensure!(args.changes >= 1, "--changes must be at least 1");
    let own;
    let kubeconfig = match &args.kubeconfig {
        Some(k) => k.clone(),
        None => {
            eprintln!("starting a v1.20 control plane (scripts/apiserver-run)…");
            own = OwnControlPlane::start()?;
            own.kubeconfig()
        }
    };
    let api_options = RunOptions {
        api_server: Some(ApiServerOptions {
            kubeconfig,
            binary: Some(binary(&args)?),
            timeout: Duration::from_secs(60),
        }),
        ..RunOptions::default()
    };
    let ports = [(Protocol::Tcp, 80)];

    let mut local = Session::start(model()?, &RunOptions::default(), &ports)?;
    let baseline = relabel(&mut local, args.changes, false)?;
    local.close()?;

    let mut cluster = Session::start(model()?, &api_options, &ports)?;
    let through_api = relabel(&mut cluster, args.changes, true)?;
    cluster.close()?;

    let (b50, b99, bmax) = stats(baseline);
    let (a50, a99, amax) = stats(through_api);
    println!(
        "{} pod relabels, 2 lab nodes (x/b's label decides whether it may reach x/a)",
        args.changes
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    println!(
        "{:<44} {:>7.2} ms {:>7.2} ms {:>7.2} ms",
        "in-process lab: model change → kernel", b50, b99, bmax
    );
    println!(
        "{:<44} {:>7.2} ms {:>7.2} ms {:>7.2} ms",
        "API server, operator, agent: write → kernel", a50, a99, amax
    );
    println!(
        "ratio (API server / in-process), p50: {:.0}×",
        a50 / b50.max(1e-6)
    );
    Ok(())
}

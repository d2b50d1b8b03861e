//! `bench policy`: NetworkPolicy compile + render + apply on a node hosting
//! 10,000 isolated pods under 1,000 policies (~2,000 address sets), in a
//! throwaway network namespace; then pod relabels through the incremental path
//! (event → IR delta → delta batch → kernel ACK) against the full path
//! (recompile + re-render + diff + apply) measured in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube_nft::cluster::{Cluster, Object, ObjectKey};
use kube_nft::policy::compile_node;
use kube_nft::policy::incremental::{Event, Index};
use kube_nft::render::delta::DeltaRenderer;
use kube_nft::render::render_policy;
use kube_nft_crds::ir::{CompiledPolicy, NodePolicy};
use nft::dataplane::Dataplane;
use nft::testing::NetNs;
use nft::Table;
use serde_json::{json, Value};

use crate::measure::{median, ms};

pub const NODE: &str = "bench-node";

/// Sizes and counts of `bench policy`.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    #[arg(long, default_value_t = 1_000)]
    pub policies: usize,
    /// Relabels through the incremental path.
    #[arg(long, default_value_t = 1_000)]
    pub relabels: usize,
    /// Relabels through the full path (each recompiles everything).
    #[arg(long, default_value_t = 20)]
    pub baseline_relabels: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// xorshift64*: a deterministic synthetic cluster for a given seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const APPS: usize = 10;
const TIERS: [&str; 3] = ["frontend", "backend", "db"];
const TEAMS: usize = 10;

/// The synthetic cluster: namespaces labelled team/env, pods labelled
/// app/tier/team with named container ports, one default-deny policy per
/// namespace (every pod isolated both ways) and the rest selecting by app or
/// tier with pod, namespace and combined peers, ipBlocks and named ports.
pub struct Synthetic {
    pub cluster: Cluster,
    /// Keys of every pod, for picking relabel targets.
    pub pods: Vec<ObjectKey>,
}

fn ns_name(i: usize) -> String {
    format!("ns-{i:03}")
}

pub fn pod_object(ns: &str, name: &str, ip: &str, app: usize, tier: &str, team: usize) -> Pod {
    let mut ports = vec![
        json!({"name": "http", "containerPort": 8080 + (app % 3) as i32, "protocol": "TCP"}),
        json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"}),
    ];
    if tier == "db" {
        ports.push(json!({"name": "db", "containerPort": 5432, "protocol": "TCP"}));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {
            "app": format!("app-{app}"), "tier": tier, "team": format!("team-{team}")
        }},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip}
    }))
    .expect("pod JSON")
}

fn pod_selector(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({"matchLabels": {"tier": TIERS[r.below(3)]}}),
        1 => {
            let a = r.below(APPS);
            let b = (a + 1 + r.below(APPS - 1)) % APPS;
            json!({"matchExpressions": [{"key": "app", "operator": "In",
                "values": [format!("app-{a}"), format!("app-{b}")]}]})
        }
        _ => json!({"matchLabels": {"app": format!("app-{}", r.below(APPS))}}),
    }
}

fn peer(r: &mut Rng, nss: usize) -> Value {
    match r.below(10) {
        0..=4 => json!({"podSelector": pod_selector(r)}),
        5 | 6 => json!({
            "namespaceSelector": {"matchLabels": {"team": format!("team-{}", r.below(TEAMS))}},
            "podSelector": pod_selector(r)
        }),
        7 => json!({"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": ns_name(r.below(nss))}}}),
        8 => {
            let b = 100 + r.below(50);
            json!({"ipBlock": {"cidr": format!("10.{b}.0.0/16"),
                "except": [format!("10.{b}.{}.0/24", r.below(256))]}})
        }
        _ => json!({"namespaceSelector": {"matchLabels": {"env": "prod"}},
            "podSelector": {"matchLabels": {"tier": TIERS[r.below(3)]}}}),
    }
}

fn ports(r: &mut Rng) -> Value {
    match r.below(5) {
        0 => json!([]),
        1 => json!([{"port": "http"}]),
        2 => json!([{"port": 8080}, {"port": 9090}]),
        3 => json!([{"port": "metrics"}, {"port": 443}]),
        _ => json!([{"port": 8000, "endPort": 8100}]),
    }
}

impl Synthetic {
    pub fn generate(a: &PolicyArgs) -> Result<Synthetic> {
        let mut r = Rng::new(a.seed);
        let mut c = Cluster::new();
        let node = json!({"metadata": {"name": NODE},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.1"}]}});
        c.insert(Object::Node(serde_json::from_value(node)?))?;
        let nss = a.namespaces.max(1);
        for i in 0..nss {
            let ns = json!({"metadata": {"name": ns_name(i), "labels": {
                "team": format!("team-{}", i % TEAMS),
                "env": if i % 3 == 0 { "prod" } else { "staging" }
            }}});
            c.insert(Object::Namespace(serde_json::from_value(ns)?))?;
        }
        let mut pods = Vec::with_capacity(a.pods);
        for k in 0..a.pods {
            let ns = ns_name(k % nss);
            let name = format!("pod-{k:05}");
            let ip = format!("10.{}.{}.{}", 64 + k / 62_500, (k / 250) % 250, k % 250 + 1);
            let p = pod_object(
                &ns,
                &name,
                &ip,
                r.below(APPS),
                TIERS[r.below(3)],
                (k % nss) % TEAMS,
            );
            c.insert(Object::Pod(p))?;
            pods.push(ObjectKey::new(ns, name));
        }
        for i in 0..a.policies {
            let ns = ns_name(i % nss);
            let j = i / nss;
            let spec = if j == 0 {
                // Default deny both ways, DNS allowed to ns-000.
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": ns_name(0)}}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]})
            } else {
                let from: Vec<Value> = (0..2 + r.below(3)).map(|_| peer(&mut r, nss)).collect();
                let mut spec = json!({
                    "podSelector": pod_selector(&mut r),
                    "ingress": [{"from": from, "ports": ports(&mut r)}]
                });
                if r.below(2) == 0 {
                    // Egress to databases by named port (an IP . port set).
                    spec["egress"] = json!([{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}},
                        peer(&mut r, nss)], "ports": [{"port": "db"}, {"port": "http"}]}]);
                    spec["policyTypes"] = json!(["Ingress", "Egress"]);
                }
                spec
            };
            let p = json!({"metadata": {"name": format!("np-{j:02}"), "namespace": ns},
                "spec": spec});
            c.insert(Object::NetworkPolicy(serde_json::from_value(p)?))?;
        }
        Ok(Synthetic { cluster: c, pods })
    }
}

/// A relabel of a random pod that changes which selectors match it: a new
/// `app`, and one time in three a new `tier` too.
pub fn relabel(r: &mut Rng, cluster: &Cluster, pods: &[ObjectKey]) -> Pod {
    let key = &pods[r.below(pods.len())];
    let mut pod = cluster.pod(key).expect("pod exists").clone();
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    let app = labels.get("app").cloned().unwrap_or_default();
    let new_app = loop {
        let a = format!("app-{}", r.below(APPS));
        if a != app {
            break a;
        }
    };
    labels.insert("app".into(), new_app);
    if r.below(3) == 0 {
        labels.insert("tier".into(), TIERS[r.below(3)].into());
    }
    pod
}

fn share(ir: &CompiledPolicy) -> NodePolicy {
    ir.nodes.get(NODE).cloned().unwrap_or_default()
}

fn pct(xs: &[Duration], p: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn row(metric: &str, value: String, target: &str) {
    println!("| {metric:<48} | {value:>16} | {target:<10} |");
}

pub fn run(a: PolicyArgs) -> Result<()> {
    nft::testing::require_root();
    let t = Instant::now();
    let syn = Synthetic::generate(&a)?;
    let generate = t.elapsed();
    let mut cluster = syn.cluster;

    let t = Instant::now();
    let ir = compile_node(&cluster, NODE);
    let compile = t.elapsed();
    let node = share(&ir);
    let t = Instant::now();
    let table = render_policy(&node, &ir.address_sets);
    let render = t.elapsed();
    let isolated = node
        .pods
        .iter()
        .filter(|p| p.ingress_isolated && p.egress_isolated)
        .count();
    let elements: usize = table.sets.values().map(|s| s.elements.len()).sum();
    println!(
        "policy bench: {} pods ({} isolated both ways on {NODE}), {} policies, {} namespaces, \
         {} address sets; table: {} chains, {} sets, {} elements, {} load messages \
         (generated in {})",
        cluster.pods().len(),
        isolated,
        cluster.policies().len(),
        cluster.namespaces().len(),
        ir.address_sets.len(),
        table.chains.len(),
        table.sets.len(),
        elements,
        nft::diff::full_load(&table).message_count(),
        ms(generate),
    );
    ensure!(
        isolated == cluster.pods().len(),
        "every pod must be isolated"
    );

    let ns = NetNs::new("bench-policy")?;
    let mut dp = Dataplane::open(ns.conn()?, table.family, &table.name)?;
    let cold = dp.sync(&table).context("cold load")?;

    // Baseline first: each relabel recompiles, re-renders, diffs and applies.
    let mut r = Rng::new(a.seed ^ 0xbead);
    let mut base = Vec::new();
    let (mut b_compile, mut b_render, mut b_sync) = (Vec::new(), Vec::new(), Vec::new());
    let mut b_changes = 0;
    for _ in 0..a.baseline_relabels {
        let pod = relabel(&mut r, &cluster, &syn.pods);
        let t0 = Instant::now();
        cluster.insert_pod(pod)?;
        let ir = compile_node(&cluster, NODE);
        let t1 = Instant::now();
        let table = render_policy(&share(&ir), &ir.address_sets);
        let t2 = Instant::now();
        let rep = dp.sync(&table)?;
        let t3 = Instant::now();
        base.push(t3 - t0);
        b_compile.push(t1 - t0);
        b_render.push(t2 - t1);
        b_sync.push(t3 - t2);
        b_changes += rep.changes;
    }

    // Incremental: the index and reference counts are built once.
    let t = Instant::now();
    let mut index = Index::new(cluster, Some(NODE));
    let index_build = t.elapsed();
    let mut renderer = DeltaRenderer::new(dp.committed().context("committed table")?);
    let mut total = Vec::with_capacity(a.relabels);
    let (mut i_compute, mut i_render, mut i_apply) = (Vec::new(), Vec::new(), Vec::new());
    // Kernel time split: batches that only change elements of address and
    // selection sets, batches that also change a pod's class (data map)
    // element, and batches that add rules or verdict elements (a policy chain
    // or namespace chain comes, or a namespace chain's guards are rewritten),
    // which makes the kernel re-validate the jump graph of the table on
    // commit.
    let (mut k_sets, mut k_dispatch, mut k_verdict) = (Vec::new(), Vec::new(), Vec::new());
    // The kernel transaction alone (send to last ACK), without the committed
    // copy's update.
    let mut k_transaction = Vec::new();
    let (mut msgs, mut member_changes, mut policy_changes, mut new_chains) = (0, 0, 0, 0);
    for _ in 0..a.relabels {
        let pod = relabel(&mut r, index.cluster(), &syn.pods);
        let t0 = Instant::now();
        let delta = index.apply(Event::PodUpsert(pod))?;
        let t1 = Instant::now();
        let committed = dp.committed().context("committed table")?;
        let batch = renderer.render(committed, NODE, &delta, &index.ir().address_sets)?;
        let t2 = Instant::now();
        let rep = dp.apply_batch(&batch)?;
        let t3 = Instant::now();
        total.push(t3 - t0);
        let touches = |f: &dyn Fn(&str) -> bool| {
            batch.ops.iter().any(|op| match op {
                nft::Op::AddElements { set, .. } | nft::Op::DeleteElements { set, .. } => f(set),
                _ => false,
            })
        };
        let verdict = touches(&|s: &str| s.ends_with("-chains"))
            || batch
                .ops
                .iter()
                .any(|op| matches!(op, nft::Op::AddRule { .. }));
        let dispatch = touches(&|s: &str| s.contains("-class-"));
        if verdict {
            k_verdict.push(t3 - t2);
        } else if dispatch {
            k_dispatch.push(t3 - t2);
        } else {
            k_sets.push(t3 - t2);
        }
        i_compute.push(t1 - t0);
        i_render.push(t2 - t1);
        i_apply.push(t3 - t2);
        k_transaction.push(rep.longest_transaction);
        msgs += rep.changes;
        member_changes += usize::from(delta.element_changes() > 0);
        policy_changes += usize::from(!delta.pods.is_empty());
        new_chains += batch
            .ops
            .iter()
            .filter(|op| matches!(op, nft::Op::AddChain(_)))
            .count();
    }

    // Correctness: the kernel holds the committed copy, which is the full
    // render of the final state.
    let ir = index.ir();
    ensure!(
        ir == &compile_node(index.cluster(), NODE),
        "incremental IR differs from a full compile"
    );
    let want: Table = render_policy(&share(ir), &ir.address_sets);
    let back = dp.conn().read_table(want.family, &want.name)?;
    let committed_ok = dp.committed() == Some(&want);
    let kernel_ok = back.as_ref() == Some(&want);
    ensure!(committed_ok, "committed copy differs from a full render");
    ensure!(kernel_ok, "kernel table differs from a full render");

    let n = a.relabels.max(1);
    println!();
    row("metric", "value".into(), "target");
    println!("|{:-<50}|{:-<18}|{:-<12}|", "", "", "");
    row("full compile (compile_node)", ms(compile), "");
    row("render (render_policy)", ms(render), "");
    row(
        &format!("cold apply (Dataplane::sync, {} txns)", cold.transactions),
        ms(cold.elapsed),
        "",
    );
    row("index build (Index::new, once)", ms(index_build), "");
    row(
        &format!("relabel incremental p50 (n={n})"),
        ms(pct(&total, 0.5)),
        "",
    );
    row("relabel incremental p99", ms(pct(&total, 0.99)), "<= 5 ms");
    row("relabel incremental max", ms(pct(&total, 1.0)), "");
    row("  compute p50 / p99", pair(&i_compute), "");
    row("  delta render p50 / p99", pair(&i_render), "");
    row("  netlink send + ACK p50 / p99", pair(&i_apply), "");
    row(
        "    of which the kernel transaction p50 / p99",
        pair(&k_transaction),
        "",
    );
    row(
        &format!("    set elements only (n={}) p50 / p99", k_sets.len()),
        pair(&k_sets),
        "",
    );
    row(
        &format!(
            "    class element change (n={}) p50 / p99",
            k_dispatch.len()
        ),
        pair(&k_dispatch),
        "",
    );
    row(
        &format!(
            "    rules or verdicts added (n={}) p50 / p99",
            k_verdict.len()
        ),
        pair(&k_verdict),
        "",
    );
    row(
        "  changes per batch (avg)",
        format!("{:.1}", msgs as f64 / n as f64),
        "",
    );
    row(
        "  relabels changing sets / own policy / chains",
        format!("{member_changes} / {policy_changes} / {new_chains}"),
        "",
    );
    row(
        &format!("relabel full reload median (n={})", base.len()),
        ms(median(&base)),
        "",
    );
    row("  compile median", ms(median(&b_compile)), "");
    row("  render median", ms(median(&b_render)), "");
    row("  diff + apply median", ms(median(&b_sync)), "");
    row(
        "  changes per batch (avg)",
        format!("{:.1}", b_changes as f64 / base.len().max(1) as f64),
        "",
    );
    println!(
        "verified: incremental IR == compile_node; committed == full render: {committed_ok}; \
         kernel read-back == full render: {kernel_ok}"
    );
    let ratio = median(&base).as_secs_f64() / median(&total).as_secs_f64().max(1e-9);
    println!("(ratio = full-reload median / incremental median; target >= 50)");
    println!("ratio relabel full-reload/incremental: {ratio:.0}");
    drop(ns);
    Ok(())
}

fn pair(xs: &[Duration]) -> String {
    format!(
        "{:.2} / {:.2} ms",
        pct(xs, 0.5).as_secs_f64() * 1e3,
        pct(xs, 0.99).as_secs_f64() * 1e3
    )
}

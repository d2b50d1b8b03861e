//! kube-nft benchmarks on a real kernel, each measurement in a fresh throwaway
//! network namespace. Ratios are against a baseline measured in the same run.
//!
//! `bench dataplane`: a kube-proxy-sized Service ruleset (5,000 services × 50
//! endpoints, 10,000 policy elements, grouped by endpoint count: see
//! `e2e::ruleset`) loaded through netlink ([`Dataplane::sync`], staged in chunks)
//! vs. `nft -f` of the same table rendered as text; then event-driven changes
//! through the delta path ([`Delta`] + [`Dataplane::apply_batch`]: no render, no
//! diff of the table) vs. `nft -f` of the same batches rendered as text.
//!
//! `bench services`: the real Service NAT renderer at 5,000 services × 50
//! endpoints, cold sync and one-service adds through netlink vs. `nft -f`, and
//! the new-connection rate through a ClusterIP with 10,000 services vs. 1
//! (see `e2e::bench_services`).
//!
//! `bench cluster`: pod relabels from the lab's write to the kernel through a
//! real API server, the operator and one agent per node, vs the in-process
//! lab (see `e2e::bench_cluster`).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use e2e::measure::{median, ms, peak_rss_kib};
use e2e::ruleset::{
    default_endpoints, endpoint, Layout, ServiceRuleset, ServiceState, SERVICES_CHAIN, TABLE,
};
use nft::dataplane::{Dataplane, SyncReport, DEFAULT_CHUNK_MESSAGES};
use nft::diff::Delta;
use nft::testing::NetNs;
use nft::{Batch, Family, Table};

#[derive(Parser)]
#[command(about = "kube-nft benchmarks (root; everything in throwaway network namespaces)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cold load and incremental changes of a kube-proxy-sized ruleset: netlink vs nft -f.
    Dataplane(DataplaneArgs),
    /// NetworkPolicy on a 10,000-pod node: compile, render, cold apply; pod
    /// relabels incremental (event to kernel ACK) vs full reload.
    Policy(e2e::bench_policy::PolicyArgs),
    /// Service NAT: cold sync and one-service adds (netlink vs nft -f) at
    /// 5,000 × 50, and connection rate through a ClusterIP at 10k vs 1 services.
    Services(e2e::bench_services::ServicesArgs),
    /// Event→kernel latency of pod relabels through a real API server, the
    /// operator and agents (the lab's cluster mode) vs the in-process lab.
    Cluster(e2e::bench_cluster::ClusterArgs),
}

#[derive(Args)]
struct DataplaneArgs {
    #[arg(long, default_value_t = 5_000)]
    services: u32,
    #[arg(long, default_value_t = 50)]
    endpoints: u32,
    #[arg(long, default_value_t = 10_000)]
    policy_elements: u32,
    /// Cold loads through netlink (median reported).
    #[arg(long, default_value_t = 5)]
    netlink_runs: usize,
    /// Cold loads through `nft -f` (median reported).
    #[arg(long, default_value_t = 3)]
    nft_runs: usize,
    /// Incremental changes per kind.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Staged transaction size, in messages.
    #[arg(long, default_value_t = DEFAULT_CHUNK_MESSAGES)]
    chunk: usize,
    /// Also time one cold load per chunk size in this list (e.g. 2000,5000,20000,1000000).
    #[arg(long, value_delimiter = ',')]
    sweep_chunks: Vec<usize>,
    /// Also measure the old per-service shape (a chain and a map per Service
    /// behind a goto verdict map): one cold load each way, full-sync adds (~10 s).
    #[arg(long)]
    old_shape: bool,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Dataplane(a) => dataplane(a),
        Cmd::Policy(a) => e2e::bench_policy::run(a),
        Cmd::Services(a) => e2e::bench_services::run(a),
        Cmd::Cluster(a) => e2e::bench_cluster::run(a),
    }
}

/// One row of the result table.
struct Row {
    metric: &'static str,
    netlink: String,
    nft_f: String,
    target: &'static str,
}

fn dataplane(a: DataplaneArgs) -> Result<()> {
    nft::testing::require_root();
    let gen = ServiceRuleset {
        family: Family::Ip,
        services: a.services,
        endpoints: a.endpoints,
        policy_elements: a.policy_elements,
        layout: Layout::ByEndpointCount,
    };
    let t0 = Instant::now();
    let mut state = ServiceState::new(gen);
    let table = state.table();
    let build = t0.elapsed();
    let t0 = Instant::now();
    let text = nft::render::render_text(&table);
    let render = t0.elapsed();
    let problems = nft::render::validate(&table);
    ensure!(
        problems.is_empty(),
        "generated table does not render: {problems:?}"
    );
    let file = std::env::temp_dir().join(format!("kn-bench-{}.nft", std::process::id()));
    std::fs::write(&file, &text).context("write rendered ruleset")?;
    let _cleanup = RemoveOnDrop(file.clone());
    let counts = ServiceRuleset::element_counts(&table);
    println!(
        "ruleset: {} services × {} endpoints, {} policy elements, grouped by endpoint count: \
         {} chains, {} sets, {} rules, {} elements; {} changes; build {}, render {} ({} KiB text)",
        a.services,
        a.endpoints,
        a.policy_elements,
        table.chains.len(),
        table.sets.len(),
        table.chains.values().map(|c| c.rules.len()).sum::<usize>(),
        counts.0 + counts.1 + counts.2,
        nft::diff::full_load(&table).message_count(),
        ms(build),
        ms(render),
        text.len() / 1024,
    );

    for &chunk in &a.sweep_chunks {
        let ns = NetNs::new("bench-sweep")?;
        let mut dp = Dataplane::open(ns.conn()?, Family::Ip, TABLE)?.with_chunk_messages(chunk);
        let r = dp.sync(&table)?;
        println!(
            "sweep chunk {chunk:>8}: cold load {} in {} transactions, longest transaction {}",
            ms(r.elapsed),
            r.transactions,
            ms(r.longest_transaction)
        );
        let times: Vec<String> = r.transaction_times.iter().map(|d| ms(*d)).collect();
        println!("  diff {}, transactions: {}", ms(r.diff), times.join(", "));
    }

    // Cold loads through netlink; the last namespace stays for incremental runs.
    let (cold, ns, mut dp, cold_report) = cold_netlink(&table, a.netlink_runs, a.chunk, counts)?;

    // Cold loads through `nft -f`, a whole process as an operator would run it.
    let mut cold_nft = Vec::new();
    let mut nft_ns = None;
    for run in 0..a.nft_runs.max(1) {
        drop(nft_ns.take());
        let ns = NetNs::new("bench-nft")?;
        let t = Instant::now();
        nft_file(&ns, &file)?;
        cold_nft.push(t.elapsed());
        if run == 0 {
            // Cheap check through the CLI: chains, and the group rules.
            let chains = ns.nft(&["list", "chains", "ip"])?;
            let n_chains = chains.matches("\tchain ").count();
            let rules = ns.nft(&["list", "chain", "ip", TABLE, SERVICES_CHAIN])?;
            let n_rules = rules.matches(" map @eps-").count();
            ensure!(
                (n_chains, n_rules) == (table.chains.len(), state.groups.len()),
                "nft -f loaded {n_chains} chains / {n_rules} group rules, model has {} / {}",
                table.chains.len(),
                state.groups.len()
            );
        }
        nft_ns = Some(ns);
    }
    let nft_ns = nft_ns.expect("at least one run");

    // Event-driven: add one new Service per batch (same endpoint count: N
    // element adds into an existing map). Timed: delta build + encode + send +
    // kernel ACK + committed-copy update.
    let mut next_svc = a.services;
    let nft_changes = a.changes.min(10);
    let add_one = |state: &mut ServiceState, dp: &mut Dataplane, svc: u32, n: u32| {
        let t = Instant::now();
        let mut d = Delta::new(Family::Ip, TABLE);
        state.set_endpoints(&mut d, svc, default_endpoints(svc, n, 0));
        let batch = d.into_batch();
        let r = dp.apply_batch(&batch)?;
        anyhow::Ok((t.elapsed(), r, batch))
    };
    let mut adds = Vec::new();
    let mut add_batches = Vec::new();
    let mut add_msgs = 0;
    for k in 0..a.changes {
        let (took, r, batch) = add_one(&mut state, &mut dp, next_svc, a.endpoints)?;
        next_svc += 1;
        ensure!(r.transactions == 1, "one service must be one transaction");
        adds.push(took);
        add_msgs = r.changes;
        if k < nft_changes {
            add_batches.push(batch);
        }
        verbose_report("add", took, &r);
    }
    // A Service with an endpoint count no other Service has: a new map and rule.
    let mut adds_new_n = Vec::new();
    let mut add_new_n_batches = Vec::new();
    let mut add_new_n_msgs = 0;
    for k in 0..nft_changes {
        let n = a.endpoints + 1 + k as u32;
        let (took, r, batch) = add_one(&mut state, &mut dp, next_svc, n)?;
        next_svc += 1;
        adds_new_n.push(took);
        add_new_n_msgs = r.changes;
        add_new_n_batches.push(batch);
        verbose_report("add new N", took, &r);
    }
    // Move 100 endpoints per batch.
    let mut eps = Vec::new();
    let mut eps_batches = Vec::new();
    let mut ep_msgs = 0;
    for k in 0..a.changes {
        let g = k as u32 + 1;
        let t = Instant::now();
        let mut d = Delta::new(Family::Ip, TABLE);
        for (svc, ep) in state.moved(100, g) {
            let mut list = state.services[&svc].clone();
            list[ep as usize] = endpoint(svc, ep, g);
            state.set_endpoints(&mut d, svc, list);
        }
        let batch = d.into_batch();
        let r = dp.apply_batch(&batch)?;
        let took = t.elapsed();
        eps.push(took);
        ep_msgs = r.changes;
        if k < nft_changes {
            eps_batches.push(batch);
        }
        verbose_report("eps", took, &r);
    }
    // The same batches through `nft -f` of their rendered text, in the same order
    // (the nft namespace holds the same table).
    let adds_nft = nft_batches(&nft_ns, &add_batches)?;
    let adds_new_n_nft = nft_batches(&nft_ns, &add_new_n_batches)?;
    let eps_nft = nft_batches(&nft_ns, &eps_batches)?;
    drop(nft_ns);

    // The committed copy equals a full render of the final state and the kernel.
    let desired = state.table();
    ensure!(
        dp.committed() == Some(&desired),
        "committed copy drifted from the state"
    );
    let back = dp.conn().read_table(Family::Ip, TABLE)?;
    ensure!(
        back.as_ref() == Some(&desired),
        "kernel drifted from the model"
    );
    ensure!(
        dp.sync(&desired)?.transactions == 0,
        "no-op sync sent a batch"
    );
    drop(dp);
    drop(ns);

    let old = if a.old_shape {
        Some(old_shape(&a)?)
    } else {
        None
    };

    let rss = peak_rss_kib().unwrap_or(0);
    let (cold_med, cold_nft_med) = (median(&cold), median(&cold_nft));
    let mut rows = vec![
        Row {
            metric: "cold load (median)",
            netlink: format!("{} ({} runs)", ms(cold_med), cold.len()),
            nft_f: format!("{} ({} runs)", ms(cold_nft_med), cold_nft.len()),
            target: "≤ 2 s netlink, ratio ≥ 3",
        },
        Row {
            metric: "cold load transactions",
            netlink: format!(
                "{} × ≤{} msgs, longest {}",
                cold_report.transactions,
                a.chunk,
                ms(cold_report.longest_transaction)
            ),
            nft_f: "1".into(),
            target: "",
        },
        Row {
            metric: "netlink messages / bytes",
            netlink: format!(
                "{} / {} KiB",
                cold_report.messages,
                cold_report.bytes / 1024
            ),
            nft_f: format!("{} KiB text", text.len() / 1024),
            target: "",
        },
        Row {
            metric: "add 1 service (median)",
            netlink: format!(
                "{} ({add_msgs} changes, {} runs)",
                ms(median(&adds)),
                adds.len()
            ),
            nft_f: format!("{} ({} runs)", ms(median(&adds_nft)), adds_nft.len()),
            target: "≤ 2 ms in-process",
        },
        Row {
            metric: "add 1 service, new N (median)",
            netlink: format!(
                "{} ({add_new_n_msgs} changes, {} runs)",
                ms(median(&adds_new_n)),
                adds_new_n.len()
            ),
            nft_f: format!(
                "{} ({} runs)",
                ms(median(&adds_new_n_nft)),
                adds_new_n_nft.len()
            ),
            target: "",
        },
        Row {
            metric: "move 100 endpoints (median)",
            netlink: format!(
                "{} ({ep_msgs} changes, {} runs)",
                ms(median(&eps)),
                eps.len()
            ),
            nft_f: format!("{} ({} runs)", ms(median(&eps_nft)), eps_nft.len()),
            target: "",
        },
    ];
    if let Some(o) = &old {
        rows.push(Row {
            metric: "old per-service shape: cold",
            netlink: format!("{} ({} runs)", ms(median(&o.cold)), o.cold.len()),
            nft_f: format!("{} (1 run)", ms(o.cold_nft)),
            target: "",
        });
        rows.push(Row {
            metric: "old shape: add 1 service (sync)",
            netlink: format!("{} ({} runs)", ms(median(&o.adds)), o.adds.len()),
            nft_f: "-".into(),
            target: "",
        });
    }
    rows.push(Row {
        metric: "peak RSS of bench process",
        netlink: format!("{} MiB", rss / 1024),
        nft_f: "-".into(),
        target: "",
    });
    print_table(&rows);
    let ratio = cold_nft_med.as_secs_f64() / cold_med.as_secs_f64().max(1e-9);
    println!("ratio cold-load nft-f/netlink: {ratio:.2}");
    Ok(())
}

/// `runs` cold loads of `table` into fresh namespaces through netlink; the first
/// is read back and compared. Returns the times and the last namespace.
fn cold_netlink(
    table: &Table,
    runs: usize,
    chunk: usize,
    counts: (usize, usize, usize),
) -> Result<(Vec<Duration>, NetNs, Dataplane, SyncReport)> {
    let mut cold = Vec::new();
    let mut last: Option<(NetNs, Dataplane, SyncReport)> = None;
    for run in 0..runs.max(1) {
        drop(last.take());
        let ns = NetNs::new("bench-netlink")?;
        let mut dp = Dataplane::open(ns.conn()?, Family::Ip, TABLE)?.with_chunk_messages(chunk);
        let r = dp.sync(table)?;
        cold.push(r.elapsed);
        if run == 0 {
            check_kernel(&mut dp, table, counts)?;
        }
        last = Some((ns, dp, r));
    }
    let (ns, dp, r) = last.expect("at least one run");
    Ok((cold, ns, dp, r))
}

struct OldShape {
    cold: Vec<Duration>,
    cold_nft: Duration,
    adds: Vec<Duration>,
}

/// The old per-service layout: cold loads both ways, then one-service adds
/// through a full `sync` (render of the desired table + diff + send).
fn old_shape(a: &DataplaneArgs) -> Result<OldShape> {
    let gen = ServiceRuleset {
        family: Family::Ip,
        services: a.services,
        endpoints: a.endpoints,
        policy_elements: a.policy_elements,
        layout: Layout::PerService,
    };
    let table = gen.build();
    let counts = ServiceRuleset::element_counts(&table);
    let (cold, ns, mut dp, _) = cold_netlink(&table, a.netlink_runs.min(3), a.chunk, counts)?;
    let mut desired = table.clone();
    let mut adds = Vec::new();
    for k in 0..a.changes.min(10) {
        let t = Instant::now();
        gen.add_service(&mut desired, a.services + k as u32);
        dp.sync(&desired)?;
        adds.push(t.elapsed());
    }
    drop(dp);
    drop(ns);
    let file = std::env::temp_dir().join(format!("kn-bench-{}-old.nft", std::process::id()));
    std::fs::write(&file, nft::render::render_text(&table))?;
    let _rm = RemoveOnDrop(file.clone());
    let ns = NetNs::new("bench-old-nft")?;
    let t = Instant::now();
    nft_file(&ns, &file)?;
    let cold_nft = t.elapsed();
    Ok(OldShape {
        cold,
        cold_nft,
        adds,
    })
}

/// Apply each batch through `nft -f` of its rendered text; the time of each.
fn nft_batches(ns: &NetNs, batches: &[Batch]) -> Result<Vec<Duration>> {
    let f = std::env::temp_dir().join(format!("kn-bench-{}-delta.nft", std::process::id()));
    let _rm = RemoveOnDrop(f.clone());
    let mut out = Vec::new();
    for b in batches {
        std::fs::write(&f, nft::render::render_batch(b))?;
        let t = Instant::now();
        nft_file(ns, &f)?;
        out.push(t.elapsed());
    }
    Ok(out)
}

fn verbose_report(what: &str, took: Duration, r: &SyncReport) {
    if verbose() {
        println!(
            "{what}: in-process {} kernel {:?} ({} changes, {} messages)",
            ms(took),
            r.transaction_times,
            r.changes,
            r.messages
        );
    }
}

/// Read back element counts (cheap) and the table as a whole (once).
fn check_kernel(dp: &mut Dataplane, table: &Table, counts: (usize, usize, usize)) -> Result<()> {
    let back = dp
        .conn()
        .read_table(Family::Ip, TABLE)
        .context("read back the netlink-loaded table")?
        .context("table missing after load")?;
    let got = ServiceRuleset::element_counts(&back);
    ensure!(
        got == counts,
        "kernel holds {got:?} elements, model {counts:?}"
    );
    ensure!(&back == table, "kernel read-back differs from the model");
    Ok(())
}

fn verbose() -> bool {
    std::env::var_os("BENCH_VERBOSE").is_some()
}

fn nft_file(ns: &NetNs, file: &std::path::Path) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f"])
        .arg(file)
        .output()
        .context("spawn nft")?;
    ensure!(
        out.status.success(),
        "nft -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn print_table(rows: &[Row]) {
    let w0 = rows
        .iter()
        .map(|r| r.metric.chars().count())
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r.netlink.chars().count())
        .max()
        .unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.nft_f.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let line = |o: &mut dyn Write, a: &str, b: &str, c: &str, d: &str| {
        let pad =
            |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            pad(a, w0),
            pad(b, w1),
            pad(c, w2),
            d
        );
    };
    line(&mut out, "metric", "netlink", "nft -f", "target");
    let _ = writeln!(
        out,
        "|{}|{}|{}|---|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        line(&mut out, r.metric, &r.netlink, &r.nft_f, r.target);
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

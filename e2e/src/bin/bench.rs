//! kube-nft benchmarks on a real kernel, each measurement in a fresh throwaway
//! network namespace. Ratios are against a baseline measured in the same run.
//!
//! `bench dataplane`: a kube-proxy-sized Service ruleset (5,000 services × 50
//! endpoints, 10,000 policy elements) loaded through netlink ([`Dataplane`], staged
//! in chunks) vs. `nft -f` of the same table rendered as text; then incremental
//! changes through the Dataplane vs. `nft -f` of the rendered diff.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use e2e::measure::{median, ms, peak_rss_kib};
use e2e::ruleset::{ServiceRuleset, TABLE};
use nft::dataplane::{Dataplane, SyncReport, DEFAULT_CHUNK_MESSAGES};
use nft::testing::NetNs;
use nft::{Family, Table};

#[derive(Parser)]
#[command(about = "kube-nft benchmarks (root; everything in throwaway network namespaces)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cold load and incremental syncs of a kube-proxy-sized ruleset: netlink vs nft -f.
    Dataplane(DataplaneArgs),
    /// Policy compile + render + sync (not yet implemented).
    Policy,
    /// Services model → ruleset → sync (not yet implemented).
    Services,
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
    /// Incremental syncs per change kind.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Staged transaction size, in messages.
    #[arg(long, default_value_t = DEFAULT_CHUNK_MESSAGES)]
    chunk: usize,
    /// Also time one cold load per chunk size in this list (e.g. 2000,5000,20000,1000000).
    #[arg(long, value_delimiter = ',')]
    sweep_chunks: Vec<usize>,
    /// Also time the shared-endpoint-map layout through `nft -f` (slow: ~2 min).
    #[arg(long)]
    shared_map_alt: bool,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Dataplane(a) => dataplane(a),
        Cmd::Policy | Cmd::Services => bail!("not implemented yet; try `bench dataplane`"),
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
    };
    let t0 = Instant::now();
    let table = gen.build();
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
        "ruleset: {} services × {} endpoints, {} policy elements: {} chains, {} sets, \
         {} elements; {} changes; build {}, render {} ({} KiB text)",
        a.services,
        a.endpoints,
        a.policy_elements,
        table.chains.len(),
        table.sets.len(),
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
    let mut cold = Vec::new();
    let mut last: Option<(NetNs, Dataplane, SyncReport)> = None;
    for run in 0..a.netlink_runs.max(1) {
        drop(last.take());
        let ns = NetNs::new("bench-netlink")?;
        let mut dp = Dataplane::open(ns.conn()?, Family::Ip, TABLE)?.with_chunk_messages(a.chunk);
        let r = dp.sync(&table)?;
        cold.push(r.elapsed);
        if run == 0 {
            check_kernel(&mut dp, &table, counts)?;
        }
        last = Some((ns, dp, r));
    }
    let (ns, mut dp, cold_report) = last.expect("at least one run");

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
            // Cheap check through the CLI (our read-back cannot decode the
            // `typeof numgen` integer key type nft gives the endpoint maps).
            let chains = ns.nft(&["list", "chains", "ip"])?;
            let n_chains = chains.matches("\tchain ").count();
            let services = ns.nft(&["list", "map", "ip", TABLE, e2e::ruleset::SERVICES])?;
            let n_services = services.matches(": goto ").count();
            ensure!(
                (n_chains, n_services) == (table.chains.len(), counts.0),
                "nft -f loaded {n_chains} chains / {n_services} services, model has {} / {}",
                table.chains.len(),
                counts.0
            );
        }
        nft_ns = Some(ns);
    }
    let nft_ns = nft_ns.expect("at least one run");

    // The alternative layout (one shared endpoint map), through `nft -f` only.
    let alt = if a.shared_map_alt {
        let (cold, add) = shared_map_alternative(&gen, &file)?;
        (ms(cold), format!("{} (median of 5)", ms(add)))
    } else {
        (
            "(--shared-map-alt)".to_string(),
            "(--shared-map-alt)".to_string(),
        )
    };

    // Incremental: add one new service per sync.
    let mut desired = table.clone();
    let mut adds = Vec::new();
    let mut add_msgs = 0;
    for k in 0..a.changes {
        gen.add_service(&mut desired, a.services + k as u32);
        let r = dp.sync(&desired)?;
        ensure!(r.transactions == 1, "one service must be one transaction");
        adds.push(r.elapsed);
        add_msgs = r.changes;
        if verbose() {
            println!(
                "add: total {} diff {} kernel {:?}",
                ms(r.elapsed),
                ms(r.diff),
                r.transaction_times
            );
        }
    }
    // The same adds through `nft -f` of the rendered diff, into the nft namespace.
    let mut nft_state = table.clone();
    let mut adds_nft = Vec::new();
    for k in 0..a.changes.min(10) {
        let mut next = nft_state.clone();
        gen.add_service(&mut next, a.services + k as u32);
        let batch = nft::diff::diff(Some(&nft_state), &next);
        let script = nft::render::render_batch_with(&batch, Some(&nft_state));
        let f = std::env::temp_dir().join(format!("kn-bench-{}-add.nft", std::process::id()));
        std::fs::write(&f, script)?;
        let _rm = RemoveOnDrop(f.clone());
        let t = Instant::now();
        nft_file(&nft_ns, &f)?;
        adds_nft.push(t.elapsed());
        nft_state = next;
    }
    drop(nft_ns);

    // Incremental: move 100 endpoints.
    let mut eps = Vec::new();
    let mut ep_msgs = 0;
    for k in 0..a.changes {
        gen.change_endpoints(&mut desired, 100, k as u32 + 1);
        let r = dp.sync(&desired)?;
        eps.push(r.elapsed);
        ep_msgs = r.changes;
        if verbose() {
            println!(
                "eps: total {} diff {} kernel {:?}",
                ms(r.elapsed),
                ms(r.diff),
                r.transaction_times
            );
        }
    }
    // Still exactly what the model says, and a no-op sync is empty.
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

    let rss = peak_rss_kib().unwrap_or(0);
    let (cold_med, cold_nft_med) = (median(&cold), median(&cold_nft));
    let rows = [
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
            target: "≤ 2 ms",
        },
        Row {
            metric: "alt. shared endpoint map: cold",
            netlink: "- (model lacks numgen offset)".into(),
            nft_f: alt.0.clone(),
            target: "",
        },
        Row {
            metric: "alt. shared endpoint map: add 1",
            netlink: "-".into(),
            nft_f: alt.1.clone(),
            target: "",
        },
        Row {
            metric: "move 100 endpoints (median)",
            netlink: format!(
                "{} ({ep_msgs} changes, {} runs)",
                ms(median(&eps)),
                eps.len()
            ),
            nft_f: "-".into(),
            target: "",
        },
        Row {
            metric: "peak RSS of bench process",
            netlink: format!("{} MiB", rss / 1024),
            nft_f: "-".into(),
            target: "",
        },
    ];
    print_table(&rows);
    let ratio = cold_nft_med.as_secs_f64() / cold_med.as_secs_f64().max(1e-9);
    println!("ratio cold-load nft-f/netlink: {ratio:.2}");
    Ok(())
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

/// Cold load and one-service adds of the shared-endpoint-map layout via `nft -f`,
/// in a fresh namespace; `scratch` names a temp file to reuse.
fn shared_map_alternative(
    gen: &ServiceRuleset,
    scratch: &std::path::Path,
) -> Result<(std::time::Duration, std::time::Duration)> {
    let ns = NetNs::new("bench-alt")?;
    let f = scratch.with_extension("alt.nft");
    let _rm = RemoveOnDrop(f.clone());
    std::fs::write(
        &f,
        e2e::ruleset::shared_map_text(gen, 0..gen.services, true),
    )?;
    let t = Instant::now();
    nft_file(&ns, &f)?;
    let cold = t.elapsed();
    let mut adds = Vec::new();
    for k in 0..5 {
        let svc = gen.services + k;
        std::fs::write(&f, e2e::ruleset::shared_map_text(gen, svc..svc + 1, false))?;
        let t = Instant::now();
        nft_file(&ns, &f)?;
        adds.push(t.elapsed());
    }
    Ok((cold, median(&adds)))
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

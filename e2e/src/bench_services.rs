//! `bench services`: the Service NAT dataplane as the agent would run it, on
//! a real kernel, against kube-proxy's mechanism (`nft -f` of text) measured
//! in the same run.
//!
//! What is measured:
//!
//! 1. **Cold load** of 5,000 ClusterIP Services × 50 endpoints, rendered by
//!    the real renderer ([`kube_nft::render::service::contribute`] from a
//!    synthetic [`NodeServices`]): [`Dataplane::sync`] over netlink (diff
//!    against nothing, staged in chunks) vs. `nft -f -` of the same table's
//!    text ([`nft::render::render_text`]), each into a fresh network
//!    namespace. Both sides start from the same rendered [`Table`]: the
//!    netlink time includes diffing and encoding, the `nft` time the whole
//!    `nft` process (spawned from a thread already inside the namespace, so no
//!    `ip netns exec` overhead is charged to it) but not the text rendering.
//! 2. **Adding one Service** (same endpoint count as the others) to that loaded
//!    table: over netlink through a delta (the new Service rendered alone by
//!    the same renderer, its elements checked against the committed copy and
//!    sent as one [`Dataplane::apply_batch`]), and through the full path
//!    (re-render everything, [`nft::diff::diff`] against the committed copy,
//!    apply); vs. `nft -f -` of exactly the elements the delta sends, which is
//!    what an `nft`-text proxy sends in a partial sync. Timed from the updated
//!    model to the kernel's ACK; the `nft` side is not charged for making its
//!    text.
//! 3. **New connections per second through a ClusterIP** with 10,000 Services
//!    present vs. 1 Service present, on a real topology: client, node and
//!    server namespaces joined by veths ([`Topology`]); the node holds the
//!    kube-nft table (nat prerouting DNAT) and routes the pod range to the
//!    server, which owns every endpoint address (a local route) and listens on
//!    `:8080`. Client threads open a TCP connection to the VIP, wait for the
//!    server's byte and close with a reset (`SO_LINGER 0`: no TIME_WAIT), for
//!    a fixed time. The probed VIP is the same Service in both configurations
//!    (the 10k configuration is that Service plus 9,999 others, all with 50
//!    endpoints, so the probed Service's map holds 500,000 elements instead
//!    of 50), the table is switched in place through [`Dataplane::sync`], and
//!    rounds alternate (1, 10k, 10k, 1, …) so drift hits both alike. Per
//!    connection the nat chain runs once, so this is the per-packet cost of
//!    the Service lookup as the number of Services grows. (With
//!    `--connect-endpoint-mix K` the other Services get 1..=K endpoints, so
//!    the table holds one group per distinct endpoint count; dispatch by
//!    group id keeps that out of the per-connection path too.) The
//!    node's conntrack CLOSE timeout is set to 1 s in its namespace, so
//!    reset connections do not pile up across rounds.
//! 4. Peak RSS of the bench process.
//!
//! Every section checks its result: read-backs of the kernel tables, element
//! counts of the `nft`-loaded ones, the committed copy against a full render,
//! and for the connection test that the server accepted at least every
//! counted connection, only on the probed Service's endpoints, and on all of
//! them.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kube_nft::cluster::ObjectKey;
use kube_nft::render::service::{contribute, eps_map, fixed_set};
use kube_nft::render::{TABLE_COMMENT, TABLE_FAMILY, TABLE_NAME};
use kube_nft::service::{
    Backend, Endpoint, Entry, Frontend, FrontendKind, IpFamily, Masquerade, NodeServices,
    ServiceConfig,
};
use kube_nft_crds::ir::Protocol;
use nft::dataplane::{Dataplane, SyncReport, DEFAULT_CHUNK_MESSAGES};
use nft::diff::Delta;
use nft::testing::NetNs;
use nft::{Batch, Table};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::measure::{median, ms, peak_rss_kib};
use crate::topo::{spawn_in, Topology, ROUTER_CLIENT_SIDE, SERVER};

/// The node the synthetic Services are computed for.
pub const NODE: &str = "bench-node";
/// Where every endpoint runs (not this node: no hairpin pairs).
const ENDPOINT_NODE: &str = "bench-other-node";
/// Service port and endpoint port.
pub const SERVICE_PORT: u16 = 80;
pub const ENDPOINT_PORT: u16 = 8080;
/// ClusterIPs are `10.96.0.0/12`, endpoints (pods) `10.128.0.0/12`.
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
const POD_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const POD_RANGE: &str = "10.128.0.0/12";
const POD_RANGE_SIZE: u64 = 1 << 20;
/// The byte the server answers each connection with.
const REPLY: u8 = b'k';

/// Sizes and counts of `bench services`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServicesArgs {
    /// Services of the cold load and the add test.
    #[arg(long, default_value_t = 5_000)]
    pub services: u32,
    /// Endpoints of every Service.
    #[arg(long, default_value_t = 50)]
    pub endpoints: u32,
    /// Cold loads through netlink (median reported).
    #[arg(long, default_value_t = 3)]
    pub netlink_runs: usize,
    /// Cold loads through `nft -f` (median reported).
    #[arg(long, default_value_t = 3)]
    pub nft_runs: usize,
    /// Service adds through the netlink delta path.
    #[arg(long, default_value_t = 50)]
    pub adds: usize,
    /// Service adds through the full path (render everything + diff).
    #[arg(long, default_value_t = 10)]
    pub full_adds: usize,
    /// Service adds through `nft -f` (the first of the delta batches, as text).
    #[arg(long, default_value_t = 20)]
    pub nft_adds: usize,
    /// Staged transaction size of the cold sync, in messages.
    #[arg(long, default_value_t = DEFAULT_CHUNK_MESSAGES)]
    pub chunk: usize,
    /// Services present in the large configuration of the connection test.
    #[arg(long, default_value_t = 10_000)]
    pub connect_services: u32,
    /// Seconds of one connection round.
    #[arg(long, default_value_t = 2.5)]
    pub connect_seconds: f64,
    /// Rounds per configuration (alternating 1, 10k, 10k, 1, …).
    #[arg(long, default_value_t = 6)]
    pub connect_rounds: usize,
    /// Give the other Services of the connection test endpoint counts spread
    /// over 1..=K instead of all `--endpoints` (0: all the same): K
    /// endpoint-count groups, each with its map and chain.
    #[arg(long, default_value_t = 0)]
    pub connect_endpoint_mix: u32,
    /// Concurrent client workers (and server threads).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Skip the connection test (sections 1, 2 and 4 only).
    #[arg(long)]
    pub no_connect: bool,
}

// ---------------------------------------------------------------------------
// The synthetic model
// ---------------------------------------------------------------------------

fn add(base: Ipv4Addr, offset: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32))
}

/// ClusterIP of Service `i`.
pub fn vip(i: u32) -> Ipv4Addr {
    add(VIP_BASE, u64::from(i) + 1)
}

/// Address of endpoint `ep` of Service `svc`: each Service has a block of
/// `stride` addresses.
pub fn endpoint_addr(svc: u32, ep: u32, stride: u32) -> Ipv4Addr {
    add(
        POD_BASE,
        u64::from(svc) * u64::from(stride) + u64::from(ep) + 1,
    )
}

/// The agent's settings: pods (and the bench's clients, `10.10.0.0/16`) are
/// in the cluster CIDRs, so ClusterIPs masquerade only off-cluster clients,
/// as `service::compute` decides with cluster CIDRs configured.
pub fn config() -> ServiceConfig {
    ServiceConfig {
        cluster_cidrs: vec![
            "10.10.0.0/16".parse().expect("CIDR"),
            POD_RANGE.parse().expect("CIDR"),
        ],
        ..Default::default()
    }
}

/// The entry `service::compute` makes for ClusterIP Service `bench/svc-<i>`
/// (TCP port `http` 80 → `:8080` on `endpoints` pods of another node).
pub fn entry(i: u32, endpoints: u32) -> Entry {
    entry_with(i, endpoints, endpoints)
}

/// [`entry`] with `endpoints` endpoints in an address block of `stride`.
pub fn entry_with(i: u32, endpoints: u32, stride: u32) -> Entry {
    let eps = (0..endpoints)
        .map(|ep| Endpoint {
            addr: IpAddr::V4(endpoint_addr(i, ep, stride)),
            port: ENDPOINT_PORT,
            node: Some(ENDPOINT_NODE.into()),
            pod: Some(format!("bench/svc-{i:05}-{ep:03}")),
        })
        .collect();
    Entry {
        frontend: Frontend {
            kind: FrontendKind::ClusterIp,
            family: IpFamily::V4,
            addr: Some(IpAddr::V4(vip(i))),
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
        },
        service: ObjectKey::new("bench", format!("svc-{i:05}")),
        port_name: "http".into(),
        backend: Backend::Endpoints(eps),
        masquerade: Masquerade::FromOutsideCluster,
        affinity: None,
        source_ranges: None,
        internal_endpoints: Vec::new(),
    }
}

/// The node's Service model for Services `range`, each with `endpoints`.
pub fn node_services(range: std::ops::Range<u32>, endpoints: u32) -> NodeServices {
    node_services_with(range, endpoints, |_| endpoints)
}

/// The node's Service model for Services `range`, Service `i` with
/// `count(i)` ≤ `stride` endpoints.
pub fn node_services_with(
    range: std::ops::Range<u32>,
    stride: u32,
    count: impl Fn(u32) -> u32,
) -> NodeServices {
    NodeServices {
        node: NODE.into(),
        node_addresses: vec![IpAddr::V4(ROUTER_CLIENT_SIDE)],
        entries: range.map(|i| entry_with(i, count(i), stride)).collect(),
        ..Default::default()
    }
}

/// The node's whole table: kube-nft's table with the Service NAT part.
pub fn render(services: &NodeServices, config: &ServiceConfig) -> Table {
    let mut t = Table::new(TABLE_FAMILY, TABLE_NAME);
    t.comment = Some(TABLE_COMMENT.into());
    contribute(&mut t, services, config);
    t
}

/// The group map of Services with `n` endpoints.
fn group(n: u32) -> String {
    eps_map(IpFamily::V4, n)
}

fn cluster_ips() -> String {
    fixed_set("cluster-ips", IpFamily::V4)
}

/// The batch that adds one Service to `committed`, or `None` when it needs
/// more than element adds (a new endpoint count: a new map and rule; or an
/// element that exists with another value): then the full path applies.
///
/// The Service is rendered alone by the same renderer; each element of it
/// that the committed table lacks is added. O(size of the Service), no walk
/// of the table.
pub fn add_service_batch(
    committed: &Table,
    services: &NodeServices,
    new: Entry,
    config: &ServiceConfig,
) -> Option<Batch> {
    let one = NodeServices {
        node: services.node.clone(),
        node_addresses: services.node_addresses.clone(),
        entries: vec![new],
        ..Default::default()
    };
    let mut part = Table::new(committed.family, committed.name.clone());
    part.comment = committed.comment.clone();
    contribute(&mut part, &one, config);
    let mut d = Delta::new(committed.family, committed.name.clone());
    for (name, set) in &part.sets {
        if set.elements.is_empty() || set.flags.dynamic {
            continue;
        }
        let cur = committed.sets.get(name)?;
        let same_header = cur.key == set.key
            && cur.data == set.data
            && cur.flags == set.flags
            && cur.timeout == set.timeout
            && cur.comment == set.comment;
        if !same_header {
            return None;
        }
        let mut adds = Vec::new();
        for (k, v) in &set.elements {
            match cur.elements.get(k) {
                Some(old) if old == v => {}
                Some(_) => return None,
                None => adds.push((k.clone(), v.clone())),
            }
        }
        d.add_elements(name, adds);
    }
    // Every rule the Service needs must be live already.
    for (name, chain) in &part.chains {
        let cur = committed.chains.get(name)?;
        if !chain.rules.iter().all(|r| cur.rules.contains(r)) {
            return None;
        }
    }
    Some(d.into_batch())
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

struct Row {
    metric: String,
    value: String,
    target: &'static str,
}

fn row(metric: impl Into<String>, value: impl Into<String>, target: &'static str) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target,
    }
}

fn print_table(rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.metric.chars().count()).max();
    let w1 = rows.iter().map(|r| r.value.chars().count()).max();
    let (w0, w1) = (w0.unwrap_or(0).max(6), w1.unwrap_or(0).max(5));
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "| {} | {} | target |",
        pad("metric", w0),
        pad("value", w1)
    );
    let _ = writeln!(out, "|{}|{}|---|", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            pad(&r.metric, w0),
            pad(&r.value, w1),
            r.target
        );
    }
}

fn secs(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        ms(d)
    }
}

fn mib(kib: u64) -> String {
    format!("{} MiB", kib / 1024)
}

fn verbose() -> bool {
    std::env::var_os("BENCH_VERBOSE").is_some()
}

fn progress(msg: impl AsRef<str>) {
    println!("# {}", msg.as_ref());
    let _ = io::stdout().flush();
}

// ---------------------------------------------------------------------------
// Kernel helpers
// ---------------------------------------------------------------------------

/// Load `text` with `nft -f -` from a thread inside `ns` (the child inherits
/// the thread's namespace). Returns the time from spawn to exit.
fn nft_stdin(ns: &NetNs, text: &str) -> Result<Duration> {
    ns.run(|| -> Result<Duration> {
        let t = Instant::now();
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(text.as_bytes())
            .context("write to nft")?;
        let out = child.wait_with_output().context("wait for nft")?;
        let took = t.elapsed();
        ensure!(
            out.status.success(),
            "nft -f failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2_000)
                .collect::<String>()
        );
        Ok(took)
    })
}

/// Elements per set and rules per chain: what must match between a model and
/// a kernel table, whatever loaded it.
fn shape(t: &Table) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    (
        t.sets
            .iter()
            .filter(|(_, s)| !s.flags.dynamic)
            .map(|(n, s)| (n.clone(), s.elements.len()))
            .collect(),
        t.chains
            .iter()
            .map(|(n, c)| (n.clone(), c.rules.len()))
            .collect(),
    )
}

/// Read the netlink-loaded table back from `ns` and compare it with `want`.
fn check_kernel(ns: &NetNs, want: &Table, what: &str) -> Result<()> {
    let back = ns
        .conn()?
        .read_table(want.family, &want.name)
        .with_context(|| format!("{what}: read back"))?
        .with_context(|| format!("{what}: table missing"))?;
    ensure!(
        shape(&back) == shape(want),
        "{what}: kernel holds {:?}, model {:?}",
        shape(&back),
        shape(want)
    );
    ensure!(&back == want, "{what}: kernel read-back differs from model");
    Ok(())
}

/// Check an `nft`-loaded table through the `nft` CLI (the netlink reader
/// does not parse the key types `nft` gives `typeof` concatenations): the
/// same sets and chains, rules per chain, elements per non-empty set.
fn check_nft_kernel(ns: &NetNs, want: &Table, what: &str) -> Result<()> {
    let fam = want.family.to_string();
    let terse = ns.nft(&["-t", "list", "table", &fam, &want.name])?;
    let (mut sets, mut chains) = (BTreeMap::new(), BTreeMap::new());
    let mut in_chain: Option<String> = None;
    for line in terse.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set" | "map", name, "{"] => {
                sets.insert(name.to_string(), 0usize);
            }
            ["chain", name, "{"] => {
                chains.insert(name.to_string(), 0usize);
                in_chain = Some(name.to_string());
            }
            ["}"] => in_chain = None,
            _ => {
                if let Some(c) = &in_chain {
                    let header = ["type ", "comment ", "policy "]
                        .iter()
                        .any(|p| line.starts_with(p));
                    if !line.is_empty() && !header {
                        *chains.get_mut(c).expect("chain") += 1;
                    }
                }
            }
        }
    }
    let (want_sets, want_chains) = shape(want);
    ensure!(
        chains == want_chains,
        "{what}: nft lists chains with rules {chains:?}, model {want_chains:?}"
    );
    for (name, n) in &want_sets {
        ensure!(sets.contains_key(name), "{what}: set {name} missing");
        if *n > 0 {
            let kind = if want.sets[name].data.is_some() {
                "map"
            } else {
                "set"
            };
            let listing = ns.nft(&["list", kind, &fam, &want.name, name])?;
            let got = count_elements(&listing);
            ensure!(
                got == *n,
                "{what}: nft lists {got} elements in {name}, model {n}"
            );
        }
    }
    Ok(())
}

/// Elements in an `nft list set` listing: top-level commas of the
/// `elements = { … }` block, outside quotes, plus one.
fn count_elements(listing: &str) -> usize {
    let Some(start) = listing.find("elements = {") else {
        return 0;
    };
    let (mut n, mut quoted, mut any) = (0, false, false);
    for c in listing[start + "elements = {".len()..].chars() {
        match c {
            '"' => quoted = !quoted,
            '}' if !quoted => break,
            ',' if !quoted => n += 1,
            c if !c.is_whitespace() => any = true,
            _ => {}
        }
    }
    if any {
        n + 1
    } else {
        0
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// What the sections report: rows of the table and `ratio …` lines.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    ratios: Vec<String>,
}

pub fn run(a: ServicesArgs) -> Result<()> {
    nft::testing::require_root();
    ensure!(a.endpoints >= 1, "--endpoints must be at least 1");
    let largest = a
        .services
        .saturating_add((a.adds + a.full_adds) as u32)
        .max(a.connect_services);
    let stride = a.endpoints.max(a.connect_endpoint_mix);
    ensure!(
        u64::from(largest) * u64::from(stride) < POD_RANGE_SIZE - 1,
        "{largest} services × {stride} endpoints do not fit {POD_RANGE}"
    );
    ensure!(
        u64::from(largest) < (1 << 20) - 1,
        "too many services for the VIP range"
    );
    let start = Instant::now();
    let config = config();
    let mut report = Report::default();

    let loaded = cold(&a, &config, &mut report)?;
    let rss_cold = peak_rss_kib().unwrap_or(0);
    adds(&a, &config, loaded, &mut report)?;
    let rss_adds = peak_rss_kib().unwrap_or(0);
    let connect = if a.no_connect {
        None
    } else {
        Some(connect_rate(&a, &config, &mut report)?)
    };
    let rss_connect = peak_rss_kib().unwrap_or(0);

    // The bench holds the model, the rendered table, the dataplane's
    // committed copy, in-flight batches and read-backs. `VmHWM` only grows:
    // the section that raised it last set the peak.
    report.rows.push(row(
        "peak RSS of the bench process (VmHWM after sections 1 / 2 / 3)",
        format!(
            "{} / {} / {}",
            mib(rss_cold),
            mib(rss_adds),
            if a.no_connect {
                "-".into()
            } else {
                mib(rss_connect)
            }
        ),
        "",
    ));
    println!();
    print_table(&report.rows);
    println!("(bench took {:.0} s)", start.elapsed().as_secs_f64());
    for r in &report.ratios {
        println!("{r}");
    }
    if let Some(ratio) = connect {
        println!("ratio connect-rate 10k-services/1-service: {ratio:.3}");
    }
    Ok(())
}

/// The state section 1 leaves for section 2: the model, and the same table
/// loaded both ways.
struct Loaded {
    services: NodeServices,
    nl_ns: NetNs,
    dp: Dataplane,
    nft_ns: NetNs,
}

/// Section 1: cold load through netlink vs `nft -f`.
fn cold(a: &ServicesArgs, config: &ServiceConfig, report: &mut Report) -> Result<Loaded> {
    let t = Instant::now();
    let services = node_services(0..a.services, a.endpoints);
    let model = t.elapsed();
    let t = Instant::now();
    let table = render(&services, config);
    let render_time = t.elapsed();
    let t = Instant::now();
    let text = nft::render::render_text(&table);
    let text_time = t.elapsed();
    let problems = nft::render::validate(&table);
    ensure!(problems.is_empty(), "rendered table: {problems:?}");
    let elements: usize = table.sets.values().map(|s| s.elements.len()).sum();
    let group_len = table
        .sets
        .get(&group(a.endpoints))
        .map(|s| s.elements.len());
    ensure!(
        group_len == Some(a.services as usize * a.endpoints as usize),
        "the renderer made {group_len:?} endpoint elements"
    );
    println!(
        "services bench: {} ClusterIP services × {} endpoints, rendered by \
         render::service::contribute: {} chains, {} sets, {} rules, {} elements, {} load \
         messages, {} KiB of nft text (model {}, render {}, render_text {})",
        a.services,
        a.endpoints,
        table.chains.len(),
        table.sets.len(),
        table.chains.values().map(|c| c.rules.len()).sum::<usize>(),
        elements,
        nft::diff::full_load(&table).message_count(),
        text.len() / 1024,
        ms(model),
        ms(render_time),
        ms(text_time),
    );

    progress(format!(
        "cold sync through netlink × {}",
        a.netlink_runs.max(1)
    ));
    let mut cold = Vec::new();
    let mut last: Option<(NetNs, Dataplane, SyncReport)> = None;
    let mut read_back = Duration::ZERO;
    for run in 0..a.netlink_runs.max(1) {
        drop(last.take());
        let ns = NetNs::new("bench-svc-nl")?;
        let mut dp =
            Dataplane::open(ns.conn()?, TABLE_FAMILY, TABLE_NAME)?.with_chunk_messages(a.chunk);
        let r = dp.sync(&table).context("cold sync")?;
        cold.push(r.elapsed);
        if verbose() {
            println!("  netlink run {run}: {}", secs(r.elapsed));
        }
        if run == 0 {
            let t = Instant::now();
            check_kernel(&ns, &table, "netlink cold load")?;
            read_back = t.elapsed();
        }
        last = Some((ns, dp, r));
    }
    let (nl_ns, dp, cold_report) = last.expect("at least one run");

    progress(format!("cold load through nft -f × {}", a.nft_runs.max(1)));
    let mut cold_nft = Vec::new();
    let mut nft_ns = None;
    for run in 0..a.nft_runs.max(1) {
        drop(nft_ns.take());
        let ns = NetNs::new("bench-svc-nft")?;
        let took = nft_stdin(&ns, &text).context("cold nft -f")?;
        cold_nft.push(took);
        if verbose() {
            println!("  nft -f run {run}: {}", secs(took));
        }
        if run == 0 {
            let t = Instant::now();
            check_nft_kernel(&ns, &table, "nft -f cold load")?;
            if verbose() {
                println!("  nft listing check: {}", secs(t.elapsed()));
            }
        }
        nft_ns = Some(ns);
    }
    let nft_ns = nft_ns.expect("at least one run");

    let (cold_med, cold_nft_med) = (median(&cold), median(&cold_nft));
    report.rows.push(row(
        format!(
            "cold sync {} × {}, netlink (Dataplane::sync), median of {}",
            a.services,
            a.endpoints,
            cold.len()
        ),
        format!(
            "{} ({} transactions, longest {})",
            secs(cold_med),
            cold_report.transactions,
            ms(cold_report.longest_transaction)
        ),
        "",
    ));
    report.rows.push(row(
        format!(
            "cold load {} × {}, nft -f (one process), median of {}",
            a.services,
            a.endpoints,
            cold_nft.len()
        ),
        secs(cold_nft_med),
        "",
    ));
    report.rows.push(row(
        "  render (contribute) / render_text, in neither time",
        format!("{} / {}", ms(render_time), ms(text_time)),
        "",
    ));
    report.rows.push(row(
        format!("  read the table back ({elements} elements, Conn::read_table)"),
        secs(read_back),
        "",
    ));
    report.ratios.push(format!(
        "ratio cold-sync nft-f/netlink: {:.2}",
        cold_nft_med.as_secs_f64() / cold_med.as_secs_f64().max(1e-9)
    ));
    Ok(Loaded {
        services,
        nl_ns,
        dp,
        nft_ns,
    })
}

/// Section 2: add one Service at a time to the loaded table.
fn adds(
    a: &ServicesArgs,
    config: &ServiceConfig,
    loaded: Loaded,
    report: &mut Report,
) -> Result<()> {
    let Loaded {
        mut services,
        nl_ns,
        mut dp,
        nft_ns,
    } = loaded;
    progress(format!(
        "add 1 service: {} through the netlink delta, {} through full render + diff, \
         {} through nft -f",
        a.adds, a.full_adds, a.nft_adds
    ));
    let mut next = a.services;
    let mut delta_times = Vec::new();
    let mut delta_kernel = Vec::new();
    let mut delta_changes = 0;
    let mut texts = Vec::new();
    for k in 0..a.adds {
        let e = entry(next, a.endpoints);
        next += 1;
        let t0 = Instant::now();
        let committed = dp.committed().context("committed table")?;
        let batch = add_service_batch(committed, &services, e.clone(), config)
            .context("a Service with an existing endpoint count must be element adds only")?;
        let r = dp.apply_batch(&batch)?;
        delta_times.push(t0.elapsed());
        delta_kernel.push(r.longest_transaction);
        delta_changes = r.changes;
        ensure!(r.transactions == 1, "one Service must be one transaction");
        services.entries.push(e);
        if k < a.nft_adds {
            let text = nft::render::render_batch_with(&batch, dp.committed());
            if verbose() && k == 0 {
                let head: String = text.chars().take(400).collect();
                println!("  nft text of one add ({} bytes):\n{head}…", text.len());
            }
            texts.push(text);
        }
    }
    let mut full_times = Vec::new();
    let (mut full_render, mut full_diff, mut full_apply) = (Vec::new(), Vec::new(), Vec::new());
    let mut full_changes = 0;
    for _ in 0..a.full_adds {
        services.entries.push(entry(next, a.endpoints));
        next += 1;
        let t0 = Instant::now();
        let desired = render(&services, config);
        let t1 = Instant::now();
        let batch = nft::diff::diff(dp.committed(), &desired);
        let t2 = Instant::now();
        let r = dp.apply_batch(&batch)?;
        let t3 = Instant::now();
        full_times.push(t3 - t0);
        full_render.push(t1 - t0);
        full_diff.push(t2 - t1);
        full_apply.push(t3 - t2);
        full_changes = r.changes;
    }
    let mut nft_times = Vec::new();
    for text in &texts {
        nft_times.push(nft_stdin(&nft_ns, text).context("nft -f of an added Service")?);
    }

    // The committed copy is the full render of the final model, and so is
    // the kernel.
    let desired = render(&services, config);
    ensure!(
        dp.committed() == Some(&desired),
        "committed copy differs from a full render after the adds"
    );
    check_kernel(&nl_ns, &desired, "netlink after adds")?;
    drop(desired);
    // The nft namespace holds the first Services plus the ones it was sent.
    let sent = a.services..a.services + texts.len() as u32;
    let fam = TABLE_FAMILY.to_string();
    let ips = nft_ns.nft(&["list", "set", &fam, TABLE_NAME, &cluster_ips()])?;
    ensure!(
        count_elements(&ips) == sent.end as usize,
        "nft -f after adds: {} ClusterIPs, want {}",
        count_elements(&ips),
        sent.end
    );
    // (`nft get element` of these keys crashes nft 1.0.6: count them all.)
    let eps = nft_ns.nft(&["list", "map", &fam, TABLE_NAME, &group(a.endpoints)])?;
    let want = sent.end as usize * a.endpoints as usize;
    ensure!(
        count_elements(&eps) == want,
        "nft -f after adds: {} endpoint elements, want {want}",
        count_elements(&eps)
    );
    drop(dp);
    drop(nl_ns);
    drop(nft_ns);

    let add_med = median(&delta_times);
    let nft_add_med = median(&nft_times);
    report.rows.push(row(
        format!(
            "add 1 service, netlink delta (render it + apply_batch), median of {}",
            delta_times.len()
        ),
        format!(
            "{} ({delta_changes} changes; kernel transaction {})",
            ms(add_med),
            ms(median(&delta_kernel))
        ),
        "",
    ));
    report.rows.push(row(
        format!(
            "add 1 service, netlink full render + diff + apply, median of {}",
            full_times.len()
        ),
        format!(
            "{} (render {}, diff {}, apply {}; {full_changes} changes)",
            ms(median(&full_times)),
            ms(median(&full_render)),
            ms(median(&full_diff)),
            ms(median(&full_apply)),
        ),
        "",
    ));
    report.rows.push(row(
        format!(
            "add 1 service, nft -f of the same elements, median of {}",
            nft_times.len()
        ),
        ms(nft_add_med),
        "",
    ));
    report.ratios.push(format!(
        "ratio add-service nft-f/netlink: {:.2}",
        nft_add_med.as_secs_f64() / add_med.as_secs_f64().max(1e-9)
    ));
    if !full_times.is_empty() {
        report.ratios.push(format!(
            "ratio add-service nft-f/netlink-full-render: {:.3}",
            nft_add_med.as_secs_f64() / median(&full_times).as_secs_f64().max(1e-9)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Section 3: connection rate
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    One,
    All,
}

/// Section 3: new-connection rate through one ClusterIP, 1 vs `n` Services
/// present. Returns the ratio of the median rates (n / 1).
fn connect_rate(a: &ServicesArgs, config: &ServiceConfig, report: &mut Report) -> Result<f64> {
    let n = a.connect_services;
    ensure!(n >= 2, "--connect-services must be at least 2");
    let probe = n / 2;
    let probe_vip = vip(probe);
    progress(format!(
        "connection rate through ClusterIP {probe_vip}: 1 vs {n} services, {} rounds each of {} s, {} workers",
        a.connect_rounds.max(1),
        a.connect_seconds,
        a.workers.max(1)
    ));
    let stride = a.endpoints.max(a.connect_endpoint_mix);
    let mix = a.connect_endpoint_mix;
    let count = |i: u32| {
        if i == probe || mix == 0 {
            a.endpoints
        } else {
            1 + ((u64::from(i) * 2_654_435_761) % u64::from(mix)) as u32
        }
    };
    let one = render(&node_services_with(probe..probe + 1, stride, count), config);
    let all = render(&node_services_with(0..n, stride, count), config);
    let groups = all
        .sets
        .keys()
        .filter(|s| s.starts_with("svc-eps-v4-"))
        .count();
    println!(
        "  {n} services: {} endpoint elements in {groups} group maps ({groups} group chains); \
         the probed Service's map: {} elements",
        all.sets
            .iter()
            .filter(|(k, _)| k.starts_with("svc-eps-v4-"))
            .map(|(_, s)| s.elements.len())
            .sum::<usize>(),
        all.sets[&group(a.endpoints)].elements.len()
    );
    ensure!(
        one.sets[&group(a.endpoints)]
            .elements
            .keys()
            .all(|k| all.sets[&group(a.endpoints)].elements.contains_key(k)),
        "the probed Service must be the same in both configurations"
    );

    let topo = Topology::new("bench-svc")?;
    // Node: the pod range lives behind the server. Server: owns every pod
    // address (a local route) so the listener accepts on any endpoint.
    topo.router.exec(
        "ip",
        &["route", "add", POD_RANGE, "via", &SERVER.to_string()],
    )?;
    topo.server
        .exec("ip", &["route", "add", "local", POD_RANGE, "dev", "lo"])?;
    topo.client.exec(
        "sysctl",
        &["-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"],
    )?;
    // Connections end with a reset (conntrack CLOSE, 10 s by default); a
    // short timeout keeps the node's conntrack table small across rounds.
    if let Err(e) = topo.router.exec(
        "sysctl",
        &["-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_close=1"],
    ) {
        eprintln!("warning: could not shorten conntrack CLOSE timeout in the node: {e}");
    }

    let mut dp = Dataplane::open(topo.router.conn()?, TABLE_FAMILY, TABLE_NAME)?;
    let server = Server::start(
        topo.server.path().to_path_buf(),
        a.workers.max(1),
        endpoint_addr(probe, 0, stride),
        a.endpoints,
    )?;
    let dur = Duration::from_secs_f64(a.connect_seconds.max(0.1));
    let warm = Duration::from_millis(500);
    let client = topo.client.path().to_path_buf();

    let mut order = Vec::new();
    for r in 0..a.connect_rounds.max(1) {
        if r % 2 == 0 {
            order.extend([Config::One, Config::All]);
        } else {
            order.extend([Config::All, Config::One]);
        }
    }
    let mut current = None;
    let big = format!("{n} services");
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // Rates in round order, to pair each round with its neighbour.
    let mut sequence = Vec::new();
    let mut swaps = Vec::new();
    let mut checked = Vec::new();
    let mut full_read = Duration::ZERO;
    let mut failures = 0u64;
    let mut total_ok = 0u64;
    for (round, cfg) in order.iter().enumerate() {
        let (table, services, label) = match cfg {
            Config::One => (&one, 1usize, "1 service"),
            Config::All => (&all, n as usize, big.as_str()),
        };
        if current != Some(*cfg) {
            let r = dp.sync(table).context("switch the node's table")?;
            swaps.push(r.elapsed);
            // The kernel holds every Service of this configuration: all
            // ClusterIPs each time, every element the first time (a dump
            // of the whole table is slow: see the row it gets).
            let t = Instant::now();
            let conn = dp.conn();
            let ips = conn
                .read_set(TABLE_FAMILY, TABLE_NAME, &cluster_ips())?
                .map(|s| s.elements.len());
            ensure!(
                ips == Some(services),
                "{label}: the node's kernel table holds {ips:?} ClusterIPs, want {services}"
            );
            if !checked.contains(cfg) {
                let back = conn
                    .read_table(TABLE_FAMILY, TABLE_NAME)?
                    .context("node table missing")?;
                ensure!(
                    shape(&back) == shape(table),
                    "{label}: the node's kernel table differs from the model: {:?}",
                    shape(&back)
                );
                checked.push(*cfg);
                if *cfg == Config::All {
                    full_read = t.elapsed();
                }
            }
            ensure!(dp.committed() == Some(table), "committed copy drifted");
            if verbose() {
                println!(
                    "  switched to {label} in {}, checked in {}",
                    secs(r.elapsed),
                    secs(t.elapsed())
                );
            }
            current = Some(*cfg);
        }
        // Warm-up: caches, conntrack, the listener backlog (not counted).
        let w = client_round(&client, probe_vip, a.workers.max(1), warm)?;
        ensure!(w.ok > 0, "no connection through {probe_vip} succeeded");
        let before = server.snapshot();
        let m = client_round(&client, probe_vip, a.workers.max(1), dur)?;
        // Every worker is done: give the server a moment to count the last.
        std::thread::sleep(Duration::from_millis(50));
        let after = server.snapshot();
        let accepted = after.accepted - before.accepted;
        let stray = after.stray - before.stray;
        let per_ep: Vec<u64> = after
            .per_endpoint
            .iter()
            .zip(&before.per_endpoint)
            .map(|(x, y)| x - y)
            .collect();
        let hit = per_ep.iter().filter(|c| **c > 0).count();
        ensure!(
            stray == 0,
            "{label}: the server accepted {stray} connections on addresses that are not \
             endpoints of the probed Service"
        );
        ensure!(
            accepted >= m.ok,
            "{label}: client counted {} connections, the server accepted only {accepted}",
            m.ok
        );
        ensure!(
            m.ok >= 20 * u64::from(a.endpoints),
            "{label}: only {} connections in {:?}",
            m.ok,
            dur
        );
        ensure!(
            hit == a.endpoints as usize,
            "{label}: DNAT reached {hit} of {} endpoints",
            a.endpoints
        );
        ensure!(
            m.failed * 100 <= m.ok,
            "{label}: {} of {} connections failed",
            m.failed,
            m.ok + m.failed
        );
        let rate = m.ok as f64 / m.elapsed.as_secs_f64();
        failures += m.failed;
        total_ok += m.ok;
        println!(
            "  round {round}: {label:>12}: {rate:>9.0} connections/s ({} ok, {} failed, server \
             accepted {accepted} on {hit} endpoints)",
            m.ok, m.failed
        );
        rates.entry(label).or_default().push(rate);
        sequence.push((*cfg, rate));
    }
    server.stop()?;
    drop(dp);
    drop(topo);

    let med = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    };
    let r1 = med(&rates["1 service"]);
    let rn = med(&rates[big.as_str()]);
    let spread = |xs: &[f64]| {
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(0.0, f64::max);
        format!("{lo:.0}–{hi:.0}")
    };
    let spread_f = |xs: &[f64]| {
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(0.0, f64::max);
        format!("{lo:.3}–{hi:.3}")
    };
    let rounds = rates["1 service"].len();
    // Rounds 2k and 2k+1 are one of each configuration, next to each other
    // in time: their ratio is immune to slow drift of the machine.
    let paired: Vec<f64> = sequence
        .chunks(2)
        .filter_map(|p| match p {
            [(Config::One, one), (Config::All, all)] | [(Config::All, all), (Config::One, one)] => {
                Some(all / one)
            }
            _ => None,
        })
        .collect();
    let total: usize = all
        .sets
        .values()
        .filter(|s| !s.flags.dynamic)
        .map(|s| s.elements.len())
        .sum();
    report.rows.push(row(
        format!("connections/s through ClusterIP, 1 service (median of {rounds})"),
        format!("{r1:.0} (rounds {})", spread(&rates["1 service"])),
        "",
    ));
    report.rows.push(row(
        format!("connections/s through ClusterIP, {n} services (median of {rounds})"),
        format!("{rn:.0} (rounds {})", spread(&rates[big.as_str()])),
        "≥ 0.9 × 1 service",
    ));
    report.rows.push(row(
        format!("  paired rounds {n}/1 ratio, median of {}", paired.len()),
        format!("{:.3} (pairs {})", med(&paired), spread_f(&paired)),
        "",
    ));
    report.rows.push(row(
        "  connections counted / failed, all rounds",
        format!("{total_ok} / {failures}"),
        "",
    ));
    report.rows.push(row(
        format!("  table switch 1 ↔ {n} services (Dataplane::sync), median"),
        format!("{} ({} switches)", secs(median(&swaps)), swaps.len()),
        "",
    ));
    report.rows.push(row(
        format!("  read the {n}-service table back ({total} elements, Conn::read_table)"),
        secs(full_read),
        "",
    ));
    Ok(rn / r1.max(1e-9))
}

/// Counters of the server at one moment.
struct Snapshot {
    accepted: u64,
    stray: u64,
    per_endpoint: Vec<u64>,
}

/// Listener threads in the server namespace on `0.0.0.0:8080`: each accepts,
/// counts the local address the connection arrived at (the endpoint DNAT
/// chose), answers one byte, and waits for the client's reset.
struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    stray: Arc<AtomicU64>,
    per_endpoint: Arc<Vec<AtomicU64>>,
    first: Ipv4Addr,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Server {
    fn start(path: PathBuf, threads: usize, first: Ipv4Addr, endpoints: u32) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let stray = Arc::new(AtomicU64::new(0));
        let per_endpoint: Arc<Vec<AtomicU64>> =
            Arc::new((0..endpoints).map(|_| AtomicU64::new(0)).collect());
        let listener = spawn_in(path.clone(), move || -> io::Result<TcpListener> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SockAddr::from(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                ENDPOINT_PORT,
            ))))?;
            s.listen(4096)?;
            Ok(s.into())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))?
        .context("listen in the server namespace")?;
        let mut handles = Vec::new();
        for _ in 0..threads {
            let l = listener.try_clone()?;
            let (stop, accepted, stray, per_endpoint) = (
                stop.clone(),
                accepted.clone(),
                stray.clone(),
                per_endpoint.clone(),
            );
            handles.push(std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let local = match s.local_addr() {
                        Ok(SocketAddr::V4(a)) => *a.ip(),
                        _ => Ipv4Addr::UNSPECIFIED,
                    };
                    let i = u32::from(local).wrapping_sub(u32::from(first)) as usize;
                    match per_endpoint.get(i) {
                        Some(c) => {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            stray.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    // Errors here are the client's business (it counts them).
                    if s.write_all(&[REPLY]).is_ok() {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut b = [0u8; 1];
                        let _ = s.read(&mut b);
                    }
                }
            }));
        }
        Ok(Server {
            path,
            stop,
            accepted,
            stray,
            per_endpoint,
            first,
            threads: handles,
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            stray: self.stray.load(Ordering::Relaxed),
            per_endpoint: self
                .per_endpoint
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Wake every thread with one connection each (from inside the server
    /// namespace) and join them.
    fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.threads.len();
        let first = self.first;
        let wakers = spawn_in(self.path.clone(), move || -> io::Result<Vec<TcpStream>> {
            (0..n)
                .map(|_| TcpStream::connect((first, ENDPOINT_PORT)))
                .collect()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("waker thread panicked"))?
        .context("wake the server threads")?;
        for h in self.threads {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("server thread: {e}"),
                Err(_) => bail!("server thread panicked"),
            }
        }
        drop(wakers);
        Ok(())
    }
}

struct RoundResult {
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

/// `workers` threads in the client namespace connect to `vip:80` for `dur`:
/// connect, read the server's byte, close with a reset.
fn client_round(
    client: &std::path::Path,
    vip: Ipv4Addr,
    workers: usize,
    dur: Duration,
) -> Result<RoundResult> {
    let barrier = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let barrier = barrier.clone();
            spawn_in(client.to_path_buf(), move || {
                let to = SockAddr::from(SocketAddr::from((vip, SERVICE_PORT)));
                barrier.wait();
                let deadline = Instant::now() + dur;
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match connect_once(&to) {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            if verbose() && failed <= 3 {
                                eprintln!("connect to {vip}: {e}");
                            }
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        let (o, f) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client worker panicked"))?;
        ok += o;
        failed += f;
    }
    Ok(RoundResult {
        ok,
        failed,
        elapsed: t.elapsed(),
    })
}

/// One connection: connect, read one byte, close with a reset (`SO_LINGER`
/// 0: no FIN exchange and no TIME_WAIT, so local ports are free at once).
fn connect_once(to: &SockAddr) -> io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_linger(Some(Duration::ZERO))?;
    s.connect_timeout(to, Duration::from_secs(1))?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != REPLY {
        return Err(io::Error::other("unexpected reply"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_service_batch_equals_the_full_diff() {
        let config = config();
        let mut services = node_services(0..20, 3);
        let before = render(&services, &config);
        let e = entry(20, 3);
        let batch = add_service_batch(&before, &services, e.clone(), &config).unwrap();
        services.entries.push(e);
        let after = render(&services, &config);
        let mut state = Some(before.clone());
        nft::diff::apply(&mut state, &batch).unwrap();
        assert_eq!(state.as_ref(), Some(&after));
        assert_eq!(
            batch.message_count(),
            nft::diff::diff(Some(&before), &after).message_count()
        );
        // A new endpoint count needs a new map and rule: not a delta.
        assert!(add_service_batch(&after, &services, entry(21, 4), &config).is_none());
    }

    #[test]
    fn probed_service_is_the_same_in_both_configurations() {
        let one = node_services(5..6, 4);
        let all = node_services(0..10, 4);
        assert_eq!(one.entries[0], all.entries[5]);
        assert_ne!(endpoint_addr(5, 3, 4), endpoint_addr(6, 0, 4));
        assert_eq!(endpoint_addr(0, 0, 4), Ipv4Addr::new(10, 128, 0, 1));
    }
}

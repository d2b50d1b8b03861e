//! `kube-nft lab run --kubeconfig`: the lab with a real API server as its
//! control plane.
//!
//! At the start the lab installs the CRDs and deploy/'s namespace,
//! ServiceAccounts and RBAC, gets a token for each ServiceAccount
//! (TokenRequest) and writes one kubeconfig per component into a private
//! temporary directory. Every enforcement then
//!
//! 1. writes what changed in the lab's model through the API ([`objects`],
//!    [`writer`]): Nodes, Namespaces, Pods bound to lab nodes with the
//!    status a kubelet would report (the lab's IPs, `Ready`), Services with
//!    the lab's ClusterIPs and NodePorts, NetworkPolicies. The real
//!    EndpointSlice controller derives the slices from the ready pods;
//! 2. on the first one, starts `kube-nft operator` and one `kube-nft agent
//!    run --netns <node>` per lab node as processes authenticated as the
//!    deploy/ ServiceAccounts (so a missing RBAC rule fails the lab);
//! 3. waits until every node's kernel holds the table the in-process agent
//!    would have committed for the same objects ([`kernel`]), the
//!    NodePolicyShares and AddressSetShards equal the lab's own compile, and
//!    each agent reports the share's generation enforced ([`progress`]). The
//!    time from the first write to each kernel is the step's event→kernel
//!    time per node.
//!
//! At the end the processes are killed and everything the lab wrote is
//! deleted (the CRDs, RBAC and the `kube-nft` namespace stay: applying
//! them again is idempotent). Objects carry [`objects::RUN_ANNOTATION`], so
//! a run that could not clean up (killed) is cleaned up by the next one.
//!
//! Limits of a v1.20 server: single-stack IPv4 Services (its Service CIDR is
//! 10.96.0.0/16, the lab's too), no `endPort` in NetworkPolicies, no
//! serving/terminating endpoint conditions. The server refuses what it does
//! not know, and the lab reports it with the object's name.

mod access;
pub mod deploy;
mod kernel;
pub mod objects;
pub mod procs;
pub mod progress;
mod setup;
mod writer;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::config::Kubeconfig;
use kube::{Api, Client, ResourceExt};
use kube_nft_crds::resources::{AddressSetShard, NodePolicyShare};
use nft::Table;
use tokio::runtime::Runtime;

use super::control::{Change, ControlPlane};
use crate::agent::{AgentInput, AgentReport};
use crate::cluster::{Cluster, Object};
use crate::kubeapi::endpoint_slices;
use crate::service::ServiceConfig;
use kernel::KernelWatch;
use objects::{Kind, Objects, PROTECTED_NAMESPACES};
use procs::{PrivateDir, Processes};
use writer::{api_error, retrying, Writer};

/// The namespace of deploy/ (ServiceAccounts, the operator's Lease).
pub const DEPLOY_NAMESPACE: &str = "kube-nft";
/// The lab operator's identity in leader election.
pub const OPERATOR_IDENTITY: &str = "lab";
/// The operator's leader Lease (the operator's default name).
pub const OPERATOR_LEASE: &str = "kube-nft-operator";
const OPERATOR_ACCOUNT: &str = "kube-nft-operator";
const AGENT_ACCOUNT: &str = "kube-nft-agent";
/// How often a component that exits on its own is started again before the
/// run fails.
const MAX_RESTARTS: usize = 3;
/// Kernel polls while waiting: often, the event→kernel time is measured by them.
const KERNEL_POLL: Duration = Duration::from_millis(1);
/// API polls once the kernels agree.
const API_POLL: Duration = Duration::from_millis(10);
/// How often the Services the lab did not write are read again while a
/// kernel differs from the expectation.
const FOREIGN_REFRESH: Duration = Duration::from_secs(1);
/// After how long (and then how often) a change still not enforced is
/// reported on stderr with what it waits for.
const SLOW_NOTE: Duration = Duration::from_secs(10);

/// `lab run --kubeconfig` settings.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Admin credentials for the API server.
    pub kubeconfig: PathBuf,
    /// The `kube-nft` binary the operator and agents run from; default:
    /// this executable.
    pub binary: Option<PathBuf>,
    /// How long one enforcement may take.
    pub timeout: Duration,
}

/// A lab node as the API server plane drives it.
struct NodeEntry {
    name: String,
    kernel: KernelWatch,
    metrics: SocketAddr,
}

/// The API server as the lab's control plane (see the module doc).
pub struct ApiServerPlane {
    client: Client,
    writer: Writer,
    /// The value of [`objects::RUN_ANNOTATION`]: the lab's run prefix.
    run: String,
    procs: Processes,
    started: bool,
    operator_args: Vec<String>,
    agent_args: Vec<Vec<String>>,
    nodes: Vec<NodeEntry>,
    written: Objects,
    /// Namespaces that existed before the run: never deleted.
    existing_namespaces: BTreeSet<String>,
    /// The Services the lab did not write (the `kubernetes` Service) and
    /// their EndpointSlices: agents see them too. Read again before each
    /// enforcement and while waiting (an API server restarted on another
    /// port moves the `kubernetes` endpoint).
    foreign_services: Vec<Service>,
    foreign_slices: Vec<EndpointSlice>,
    slice_version: endpoint_slices::SliceVersion,
    config: ServiceConfig,
    timeout: Duration,
    // Last: removed after the processes that write into it are gone.
    dir: PrivateDir,
}

impl ApiServerPlane {
    /// Prepares the API server for a run (`nodes`: each lab node and its
    /// network namespace; `cluster`: the lab's model, for the namespaces it
    /// will write). The operator and agents start with the first
    /// enforcement, once their Nodes exist.
    pub fn start(
        options: &ApiServerOptions,
        run: &str,
        nodes: &[(String, PathBuf)],
        cluster: &Cluster,
        config: &ServiceConfig,
        rt: &Runtime,
    ) -> anyhow::Result<ApiServerPlane> {
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("locating the kube-nft binary")?,
        };
        let dir = PrivateDir::new(&format!("kube-nft-{run}"))?;
        let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
        let keep: BTreeSet<String> = cluster.namespaces().keys().cloned().collect();
        let prepared = rt.block_on(prepare(&options.kubeconfig, &names, &keep))?;
        let operator_kubeconfig = access::write_private(
            dir.path(),
            "operator.kubeconfig",
            &access::kubeconfig_text(
                &prepared.cluster_entry,
                OPERATOR_ACCOUNT,
                &prepared.operator_token,
            ),
        )?;
        let agent_kubeconfig = access::write_private(
            dir.path(),
            "agent.kubeconfig",
            &access::kubeconfig_text(
                &prepared.cluster_entry,
                AGENT_ACCOUNT,
                &prepared.agent_token,
            ),
        )?;
        let operator_metrics = free_port()?;
        let operator_args = [
            "operator",
            "--kubeconfig",
            &path_arg(&operator_kubeconfig),
            "--namespace",
            DEPLOY_NAMESPACE,
            "--identity",
            OPERATOR_IDENTITY,
            "--lease-name",
            OPERATOR_LEASE,
            "--metrics-addr",
            &operator_metrics.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut entries = Vec::new();
        let mut agent_args = Vec::new();
        for (name, netns) in nodes {
            let metrics = free_port()?;
            let mut args: Vec<String> = [
                "agent",
                "run",
                "--node",
                name,
                "--netns",
                &path_arg(netns),
                "--kubeconfig",
                &path_arg(&agent_kubeconfig),
                "--metrics-addr",
                &metrics.to_string(),
            ]
            .map(String::from)
            .to_vec();
            for c in &config.cluster_cidrs {
                args.extend(["--cluster-cidr".to_string(), c.to_string()]);
            }
            for c in &config.no_masquerade_cidrs {
                args.extend(["--no-masquerade-cidr".to_string(), c.to_string()]);
            }
            agent_args.push(args);
            entries.push(NodeEntry {
                name: name.clone(),
                kernel: KernelWatch::open(name, netns)?,
                metrics,
            });
        }
        if prepared.removed > 0 {
            eprintln!(
                "removed {} objects left on the API server by earlier lab runs",
                prepared.removed
            );
        }
        Ok(ApiServerPlane {
            writer: Writer::new(prepared.client.clone(), prepared.slices),
            client: prepared.client,
            run: run.to_string(),
            procs: Processes::new(binary),
            started: false,
            operator_args,
            agent_args,
            nodes: entries,
            written: Objects::new(),
            existing_namespaces: prepared.existing_namespaces,
            foreign_services: prepared.foreign_services,
            foreign_slices: prepared.foreign_slices,
            slice_version: prepared.slices,
            config: config.clone(),
            timeout: options.timeout,
            dir,
        })
    }

    fn start_components(&mut self) -> anyhow::Result<()> {
        let operator_log = self.dir.path().join("operator.log");
        self.procs
            .spawn("operator", self.operator_args.clone(), operator_log)?;
        for (node, args) in self.nodes.iter().zip(&self.agent_args) {
            let name = agent_name(&node.name);
            let path = self.dir.path().join(format!("agent-{}.log", node.name));
            self.procs.spawn(&name, args.clone(), path)?;
        }
        self.started = true;
        Ok(())
    }

    /// Writes `plan`'s deletions and writes, in order, keeping `written`
    /// up to date (an object counts as written before its write is sent, so
    /// an error leaves nothing the clean-up does not know of).
    async fn write(
        writer: &mut Writer,
        plan: &objects::Plan,
        keep: &BTreeSet<String>,
        written: &mut Objects,
        desired: &Objects,
    ) -> anyhow::Result<()> {
        for id in &plan.deletes {
            if !(id.kind == Kind::Namespace && keep.contains(&id.name)) {
                writer.delete(id).await?;
            }
            written.remove(id);
        }
        for w in &plan.writes {
            if let Some(d) = desired.get(&w.id) {
                written.insert(w.id.clone(), d.clone());
            }
            writer.write(w).await?;
        }
        Ok(())
    }

    fn protected(&self) -> BTreeSet<String> {
        let mut keep = self.existing_namespaces.clone();
        keep.extend(PROTECTED_NAMESPACES.iter().map(|s| s.to_string()));
        keep
    }

    /// Reads the foreign Services and EndpointSlices again; true when they
    /// changed.
    fn refresh_foreign(&mut self, rt: &Runtime) -> anyhow::Result<bool> {
        let (services, slices) =
            rt.block_on(setup::foreign_services(&self.client, self.slice_version))?;
        let changed = services != self.foreign_services || slices != self.foreign_slices;
        self.foreign_services = services;
        self.foreign_slices = slices;
        Ok(changed)
    }

    /// What each node's agent must enforce for `change` as the agents see
    /// it now (with the foreign Services as last read).
    fn expected_tables(&self, change: &Change) -> Vec<Table> {
        let view = crate::service::with_synthesized_slices(&self.view(change.cluster));
        self.nodes
            .iter()
            .map(|n| {
                AgentInput::for_cluster(&view, change.compiled, &n.name, &self.config).render()
            })
            .collect()
    }

    /// Waits until every kernel holds `wants` and the API side caught up;
    /// returns each node's report, timed from `t0`.
    fn wait(
        &mut self,
        change: &Change,
        mut wants: Vec<Table>,
        before: &[(u32, Option<Table>)],
        t0: Instant,
        rt: &Runtime,
    ) -> anyhow::Result<Vec<AgentReport>> {
        let deadline = t0 + self.timeout;
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let mut matched: Vec<Option<Matched>> = vec![None; self.nodes.len()];
        // Read once the kernels agree.
        let mut api_gaps: Vec<String> = Vec::new();
        let mut refreshed = Instant::now();
        let mut next_note = SLOW_NOTE;
        loop {
            let kernel_gaps = self.observe_kernels(&wants, &mut matched)?;
            self.restart_exited()?;
            if !kernel_gaps.is_empty() && refreshed.elapsed() > FOREIGN_REFRESH {
                refreshed = Instant::now();
                // Best effort: an unreachable server is reported by the
                // other checks.
                if self.refresh_foreign(rt).unwrap_or(false) {
                    wants = self.expected_tables(change);
                }
            }
            let noting = t0.elapsed() > next_note;
            // The API side is read once the kernels agree (and for a note:
            // whether the operator or an agent lags).
            if kernel_gaps.is_empty() || noting {
                api_gaps = match rt.block_on(read_progress(&self.client)) {
                    Ok((shares, shards)) => {
                        progress::gaps(change.compiled, &names, &shares, &shards)
                    }
                    Err(e) => vec![format!(
                        "reading NodePolicyShares and AddressSetShards: {e:#}"
                    )],
                };
                if kernel_gaps.is_empty() && api_gaps.is_empty() {
                    break;
                }
            }
            let mut gaps = kernel_gaps;
            gaps.extend(api_gaps.iter().cloned());
            if noting {
                // A slow change says what it waits for, long before the timeout.
                eprintln!(
                    "still waiting after {} s:\n  {}",
                    next_note.as_secs(),
                    gaps.join("\n  ")
                );
                next_note += SLOW_NOTE;
            }
            if Instant::now() > deadline {
                bail!(
                    "not enforced after {} s:\n  {}\nlogs of the lab's operator and agents:\n{}",
                    self.timeout.as_secs(),
                    gaps.join("\n  "),
                    self.procs.tails(15)
                );
            }
            std::thread::sleep(if all_matched(&matched) {
                API_POLL
            } else {
                KERNEL_POLL
            });
        }
        Ok(self
            .nodes
            .iter()
            .zip(matched)
            .zip(before)
            .map(|((node, m), before)| {
                let m = m.expect("every node matched");
                report(&node.name, before, &m, t0)
            })
            .collect())
    }

    /// Reads every kernel: a node whose table equals its `wants` entry is
    /// matched (since the first read that saw it so); the others are gaps.
    fn observe_kernels(
        &mut self,
        wants: &[Table],
        matched: &mut [Option<Matched>],
    ) -> anyhow::Result<Vec<String>> {
        let now = Instant::now();
        let mut gaps = Vec::new();
        for ((node, want), m) in self.nodes.iter_mut().zip(wants).zip(matched) {
            let (generation, table) = node.kernel.read()?;
            let missing = kernel::missing(table, want);
            if !missing.is_empty() {
                *m = None;
                gaps.push(format!(
                    "node {}: the kernel's table differs from the expected one ({})",
                    node.name,
                    kernel::describe(&missing)
                ));
            } else if m.is_none() {
                *m = Some(Matched {
                    at: now,
                    generation,
                    table: table.cloned(),
                });
            }
        }
        Ok(gaps)
    }

    /// Starts components that exited again (as the kubelet would), saying
    /// so; fails once one exited more than [`MAX_RESTARTS`] times.
    fn restart_exited(&mut self) -> anyhow::Result<()> {
        for exit in self.procs.reap_and_restart(MAX_RESTARTS) {
            if exit.restarts > MAX_RESTARTS {
                bail!(
                    "the lab's {} exited ({}) {} times; its log ends:\n{}",
                    exit.name,
                    exit.status,
                    exit.restarts,
                    exit.tail
                );
            }
            eprintln!(
                "warning: the lab's {} exited ({}); started again, as the kubelet would. Its log ends:\n{}",
                exit.name, exit.status, exit.tail
            );
        }
        Ok(())
    }
}

/// A node's kernel as first seen holding the expected table.
#[derive(Clone)]
struct Matched {
    at: Instant,
    generation: u32,
    table: Option<Table>,
}

fn all_matched(matched: &[Option<Matched>]) -> bool {
    matched.iter().all(Option::is_some)
}

/// What a change did to one node's kernel, from its state before the
/// lab's first write (`before`: generation and table) to `after`.
fn report(node: &str, before: &(u32, Option<Table>), after: &Matched, t0: Instant) -> AgentReport {
    let (gen_before, table_before) = before;
    let batch = match &after.table {
        Some(t) => nft::diff::diff(table_before.as_ref(), t),
        None => nft::Batch::new(crate::render::TABLE_FAMILY, crate::render::TABLE_NAME),
    };
    let transactions = after.generation.wrapping_sub(*gen_before) as usize;
    let changed = transactions > 0 || !batch.is_empty();
    AgentReport {
        node: node.to_string(),
        ops: batch.ops.len(),
        elements: batch.message_count(),
        transactions,
        // A node the change did not concern took no time.
        elapsed: if changed {
            after.at.saturating_duration_since(t0)
        } else {
            Duration::ZERO
        },
        // Not observable from outside the agent.
        stale_flows_cleared: 0,
    }
}

fn agent_name(node: &str) -> String {
    format!("agent {node}")
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// A loopback address with a port nobody listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("finding a free port")
}

/// What [`prepare`] found and made.
struct Prepared {
    client: Client,
    slices: endpoint_slices::SliceVersion,
    cluster_entry: serde_json::Value,
    operator_token: String,
    agent_token: String,
    existing_namespaces: BTreeSet<String>,
    foreign_services: Vec<Service>,
    foreign_slices: Vec<EndpointSlice>,
    removed: usize,
}

async fn prepare(
    kubeconfig: &Path,
    nodes: &[String],
    keep: &BTreeSet<String>,
) -> anyhow::Result<Prepared> {
    let admin = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let cluster_entry = access::current_cluster(&admin, kubeconfig)?;
    let client = crate::kubeapi::client(Some(kubeconfig)).await?;
    let slices = endpoint_slices::served_version(&client)
        .await
        .with_context(|| format!("reaching the API server of {}", kubeconfig.display()))?;
    setup::check_nodes(&client, nodes).await?;
    setup::check_no_foreign_operator(&client).await?;
    let removed = setup::remove_leftovers(&client, slices, keep).await?;
    setup::install_crds(&client).await?;
    setup::install_deploy(&client).await?;
    let operator_token = access::token(&client, DEPLOY_NAMESPACE, OPERATOR_ACCOUNT).await?;
    let agent_token = access::token(&client, DEPLOY_NAMESPACE, AGENT_ACCOUNT).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let all = ListParams::default();
    let existing_namespaces = retrying(|| namespaces.list(&all))
        .await
        .map_err(|e| anyhow!("listing Namespaces: {}", api_error(&e)))?
        .items
        .iter()
        .filter(|n| !n.annotations().contains_key(objects::RUN_ANNOTATION))
        .map(|n| n.name_any())
        .collect();
    let (foreign_services, foreign_slices) = setup::foreign_services(&client, slices).await?;
    Ok(Prepared {
        client,
        slices,
        cluster_entry,
        operator_token,
        agent_token,
        existing_namespaces,
        foreign_services,
        foreign_slices,
        removed,
    })
}

async fn read_progress(
    client: &Client,
) -> anyhow::Result<(Vec<NodePolicyShare>, Vec<AddressSetShard>)> {
    let shares: Api<NodePolicyShare> = Api::all(client.clone());
    let shards: Api<AddressSetShard> = Api::all(client.clone());
    let lp = ListParams::default();
    let (a, b) = futures::future::join(shares.list(&lp), shards.list(&lp)).await;
    Ok((
        a.map_err(|e| anyhow!("{}", api_error(&e)))?.items,
        b.map_err(|e| anyhow!("{}", api_error(&e)))?.items,
    ))
}

/// Whether `GET /readyz` on `addr` answers 200.
async fn ready(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl ControlPlane for ApiServerPlane {
    fn name(&self) -> &'static str {
        "apiserver"
    }

    fn view<'a>(&self, cluster: &'a Cluster) -> Cow<'a, Cluster> {
        if self.foreign_services.is_empty() {
            return Cow::Borrowed(cluster);
        }
        let mut view = cluster.clone();
        let mut added = BTreeSet::new();
        for svc in &self.foreign_services {
            let key = crate::cluster::ObjectKey::of(&svc.metadata);
            if cluster.services().contains_key(&key) {
                continue;
            }
            added.insert(key);
            let _ = view.insert(Object::Service(svc.clone()));
        }
        for slice in &self.foreign_slices {
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::service::spec::SERVICE_NAME_LABEL));
            if service.is_some_and(|s| {
                added.contains(&crate::cluster::ObjectKey::new(ns.as_str(), s.as_str()))
            }) {
                let _ = view.insert(Object::EndpointSlice(slice.clone()));
            }
        }
        Cow::Owned(view)
    }

    fn prepare(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        self.refresh_foreign(rt).map(|_| ())
    }

    fn enforce(&mut self, change: &Change, rt: &Runtime) -> anyhow::Result<Vec<AgentReport>> {
        let desired = objects::desired(change.cluster, &self.run).map_err(|e| anyhow!("{e}"))?;
        let plan = objects::plan(&self.written, &desired);
        let wants: Vec<Table> = change.inputs.iter().map(AgentInput::render).collect();
        let mut before = Vec::new();
        for node in &mut self.nodes {
            let (generation, table) = node.kernel.read()?;
            before.push((generation, table.cloned()));
        }
        let keep = self.protected();
        let t0 = Instant::now();
        rt.block_on(Self::write(
            &mut self.writer,
            &plan,
            &keep,
            &mut self.written,
            &desired,
        ))?;
        if !self.started {
            self.start_components()?;
        }
        self.wait(change, wants, &before, t0, rt)
    }

    fn restart_agent(&mut self, node: &str, rt: &Runtime) -> anyhow::Result<()> {
        let entry = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| anyhow!("node {node} is not in the lab"))?;
        let metrics = entry.metrics;
        let name = agent_name(node);
        self.procs.kill(&name)?;
        self.procs.restart(&name)?;
        let deadline = Instant::now() + self.timeout;
        while !rt.block_on(ready(metrics)) {
            if Instant::now() > deadline {
                bail!(
                    "the lab's {name} is not ready (GET http://{metrics}/readyz) {} s after its restart; its log ends:\n{}",
                    self.timeout.as_secs(),
                    self.procs.tail(&name, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn finish(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        self.procs.stop_all();
        let plan = objects::plan(&self.written, &Objects::new());
        let keep = self.protected();
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let client = self.client.clone();
        let writer = &mut self.writer;
        let written = &mut self.written;
        rt.block_on(async move {
            Self::write(writer, &plan, &keep, written, &Objects::new()).await?;
            setup::remove_operator_output(&client, &names).await
        })
        .context("removing the lab's objects from the API server")?;
        self.written.clear();
        Ok(())
    }
}

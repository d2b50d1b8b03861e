//! `kube-nft lab run`: manifests (+ a scenario) → a lab, one agent per node
//! enforcing the compiled policy, real probes, a [`LabReport`].
//!
//! The pure part plans the lab from the cluster model ([`plan_lab`]: nodes,
//! pod placement, listening ports); the rest drives the edges in order:
//! build the namespaces, write the lab's addresses back into the model (so
//! explain and the compiler see what the kernel sees), start the control
//! plane and listeners, then run the steps. After every `apply`/`delete` the
//! whole cluster is recompiled and every node gets its share; the step ends
//! when every node's kernel holds it, so probes never race a sync. The
//! control plane ([`super::control`]) is one in-process agent per node, or
//! (`--kubeconfig`) a real API server with the real operator and agents.
//!
//! [`Session`] is the same lab driven one step at a time by a program (the
//! cluster e2e tests, `bench cluster`).
//!
//! Dual-stack: a node's IPv6 pod CIDR comes from its `spec.podCIDRs` (or
//! `--pod-cidr-v6`, a /64 per node); every pod on such a node gets an IPv6
//! address too (`status.podIPs` kept when given). Each probe runs over one
//! family (see [`Family`]) and asks explain about exactly the addresses probed.
//! Without a scenario, every declared port is probed over IPv6 too when any pod
//! has an IPv6 address.
//!
//! The main thread does the blocking work (namespaces, agents, kernel reads);
//! a small tokio runtime serves listeners, runs probes and talks to the API
//! server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec as K8sNodeSpec, Pod, PodIP};
use tokio::runtime::Runtime;

use super::apiserver::{ApiServerOptions, ApiServerPlane};
use super::control::{Change, ControlPlane, InProcess};
use super::netns::{run_ip_batches, IpBatch};
use super::report::{Cell, Enforcement, LabReport, ProbeReport};
use super::scenario::{self, Family, ObjectRef, ProbeStep, Scenario, Source, Step, Target};
use super::services::{self, Client, ServiceTarget, Via};
use super::topology::{self, LabPod, NodeSpec, PodPort, PodSpec, Topology};
use super::{addressing, sctp, LabGuard, Listeners, Netns, ProbeResult, ProbeSpec, Protocol};
use crate::agent::AgentInput;
use crate::cluster::{self, Cluster, Object, ObjectKey};
use crate::policy::{compile, explain_flow, Endpoint, Flow};
use crate::service::{NodeServices, ServiceConfig};

/// Command-line knobs of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Nodes to generate when the manifests hold no Node.
    pub nodes: usize,
    /// Where generated nodes (and Nodes without `spec.podCIDR`) get their /24s.
    pub pod_cidr: Ipv4Net,
    /// Where nodes without an IPv6 pod CIDR in `spec.podCIDRs` get a /64;
    /// `None`: such nodes (and their pods) stay IPv4-only.
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// Per connection attempt.
    pub timeout: Duration,
    /// `--cluster-cidr`: empty = the lab nodes' pod CIDRs.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--no-masquerade-cidr`.
    pub no_masquerade_cidrs: Vec<IpNet>,
    /// In-process agents (`None`), or a real API server with the real
    /// operator and agents (`--kubeconfig`).
    pub api_server: Option<ApiServerOptions>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            nodes: 2,
            pod_cidr: "10.244.0.0/16".parse().expect("valid CIDR"),
            pod_cidr_v6: None,
            timeout: Duration::from_millis(1000),
            cluster_cidrs: Vec::new(),
            no_masquerade_cidrs: Vec::new(),
            api_server: None,
        }
    }
}

// ---------------------------------------------------------------------------
// planning (pure)

/// The lab's nodes: every Node manifest (its `spec.podCIDR`, or the next free
/// /24 of `pod_cidr`), else `count` generated nodes `node-1`… with /24s. IPv6:
/// the IPv6 entry of `spec.podCIDRs`, else the next free /64 of `pod_cidr_v6`
/// when given, else none.
pub fn plan_nodes(
    cluster: &Cluster,
    count: usize,
    pod_cidr: Ipv4Net,
    pod_cidr_v6: Option<Ipv6Net>,
) -> anyhow::Result<Vec<NodeSpec>> {
    let mut given: Vec<(String, Option<Ipv4Net>, Option<Ipv6Net>)> = Vec::new();
    for (name, node) in cluster.nodes() {
        let spec = node.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.pod_cidr.clone()));
        let (mut v4, mut v6) = (None, None);
        for c in cidrs {
            match c.parse::<IpNet>() {
                Ok(IpNet::V4(net)) => v4 = v4.or(Some(net.trunc())),
                Ok(IpNet::V6(net)) => v6 = v6.or(Some(net.trunc())),
                Err(e) => bail!("Node {name}: spec.podCIDR `{c}`: {e}"),
            }
        }
        given.push((name.clone(), v4, v6));
    }
    if given.is_empty() {
        if count == 0 {
            bail!("--nodes must be at least 1");
        }
        given = (1..=count)
            .map(|i| (format!("node-{i}"), None, None))
            .collect();
    }
    let taken: Vec<Ipv4Net> = given.iter().filter_map(|(_, c, _)| *c).collect();
    let taken_v6: Vec<Ipv6Net> = given.iter().filter_map(|(_, _, c)| *c).collect();
    let mut free_v6 = match pod_cidr_v6 {
        None => None,
        Some(net) => Some(
            net.subnets(net.prefix_len().max(64))
                .map_err(|e| anyhow!("--pod-cidr-v6 {net}: {e}"))?
                .filter(|s| {
                    !taken_v6
                        .iter()
                        .any(|t| t.contains(&s.network()) || s.contains(&t.network()))
                }),
        ),
    };
    let mut free = pod_cidr
        .subnets(pod_cidr.prefix_len().max(24))
        .map_err(|e| anyhow!("--pod-cidr {pod_cidr}: {e}"))?
        .filter(|s| {
            !taken
                .iter()
                .any(|t| t.contains(&s.network()) || s.contains(&t.network()))
        });
    given
        .into_iter()
        .map(|(name, cidr, cidr_v6)| {
            let pod_cidr = match cidr {
                Some(c) => c,
                None => free.next().ok_or_else(|| {
                    anyhow!("--pod-cidr {pod_cidr} has no free /24 left for node {name}")
                })?,
            };
            let pod_cidr_v6 = match (cidr_v6, free_v6.as_mut()) {
                (Some(c), _) => Some(c),
                (None, Some(free)) => Some(free.next().ok_or_else(|| {
                    anyhow!(
                        "--pod-cidr-v6 {} has no free /64 left for node {name}",
                        pod_cidr_v6.map(|c| c.to_string()).unwrap_or_default()
                    )
                })?),
                (None, None) => None,
            };
            Ok(NodeSpec {
                name,
                pod_cidr,
                pod_cidr_v6,
            })
        })
        .collect()
}

/// Whether the lab gives `pod` a namespace: live or about to be (no terminal
/// phase) and not on the host network (it would share its node's namespace).
pub fn is_lab_pod(pod: &Pod) -> bool {
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !terminal && !cluster::is_host_network(pod)
}

/// Every (protocol, port) the lab's pods declare (they have no IP yet, so
/// explain's `declared_ports`, which counts live pods only, would see none).
pub fn declared_ports(cluster: &Cluster) -> Vec<(Protocol, u16)> {
    let mut ports: BTreeSet<(u16, Protocol)> = BTreeSet::new();
    for pod in cluster.pods().values().filter(|p| is_lab_pod(p)) {
        ports.extend(cluster::container_ports(pod).map(|(_, proto, port)| (port, proto)));
    }
    ports
        .into_iter()
        .map(|(port, proto)| (proto, port))
        .collect()
}

/// Ports a pod listens on: its declared ports plus every probed one.
fn listen_ports(pod: &Pod, probed: &[(Protocol, u16)]) -> Vec<PodPort> {
    let mut ports: BTreeSet<PodPort> = cluster::container_ports(pod)
        .map(|(_, protocol, port)| PodPort { protocol, port })
        .collect();
    ports.extend(
        probed
            .iter()
            .map(|&(protocol, port)| PodPort { protocol, port }),
    );
    ports.into_iter().collect()
}

/// A pod's given addresses (`status.podIPs`, else `status.podIP`), at most
/// one per family.
fn given_ips(key: &ObjectKey, pod: &Pod) -> anyhow::Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let (mut v4, mut v6) = (None, None);
    for ip in cluster::pod_ips(pod) {
        match ip {
            IpAddr::V4(ip) => {
                if let Some(first) = v4.replace(ip) {
                    bail!("Pod {key}: status.podIPs has two IPv4 addresses ({first}, {ip})");
                }
            }
            IpAddr::V6(ip) => {
                if let Some(first) = v6.replace(ip) {
                    bail!("Pod {key}: status.podIPs has two IPv6 addresses ({first}, {ip})");
                }
            }
        }
    }
    Ok((v4, v6))
}

/// Pod placement: `spec.nodeName`, else round-robin over the nodes starting at
/// `*next`. Names an unknown node clearly.
fn place(
    key: &ObjectKey,
    pod: &Pod,
    nodes: &[NodeSpec],
    next: &mut usize,
) -> anyhow::Result<String> {
    match cluster::pod_node(pod) {
        Some(n) if nodes.iter().any(|x| x.name == n) => Ok(n.to_string()),
        Some(n) => bail!(
            "Pod {key}: spec.nodeName `{n}` is not a lab node (nodes: {})",
            nodes
                .iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => {
            let node = nodes[*next % nodes.len()].name.clone();
            *next += 1;
            Ok(node)
        }
    }
}

/// The lab to build for the model, plus the round-robin position reached.
pub fn plan_lab(
    cluster: &Cluster,
    options: &RunOptions,
    probed: &[(Protocol, u16)],
) -> anyhow::Result<(topology::LabSpec, usize)> {
    let nodes = plan_nodes(
        cluster,
        options.nodes,
        options.pod_cidr,
        options.pod_cidr_v6,
    )?;
    let mut next = 0;
    let mut pods = Vec::new();
    for (key, pod) in cluster.pods().iter().filter(|(_, p)| is_lab_pod(p)) {
        let (ip, ipv6) = given_ips(key, pod)?;
        pods.push(PodSpec {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            node: place(key, pod, &nodes, &mut next)?,
            ip,
            ipv6,
            ports: listen_ports(pod, probed),
        });
    }
    Ok((topology::LabSpec { nodes, pods }, next))
}

/// `pod` as the lab built it: its IPs (IPv4 first) and node written into the model.
fn with_lab_addresses(mut pod: Pod, lab: &LabPod) -> Pod {
    pod.spec.get_or_insert_with(Default::default).node_name = Some(lab.node.clone());
    let status = pod.status.get_or_insert_with(Default::default);
    status.pod_ip = Some(lab.ip.to_string());
    status.pod_ips = Some(
        lab.ips()
            .into_iter()
            .map(|ip| PodIP { ip: ip.to_string() })
            .collect(),
    );
    if status.phase.is_none() {
        status.phase = Some("Running".into());
    }
    pod
}

/// `node` with the lab's InternalIP(s) and pod CIDR(s) (other addresses are not
/// real here). A dual-stack node reports its IPv6 InternalIP too.
fn with_lab_node(node: Option<Node>, lab: &topology::LabNode) -> Node {
    let mut node = node.unwrap_or_else(|| {
        let mut n = Node::default();
        n.metadata.name = Some(lab.name.clone());
        n
    });
    let spec = node.spec.get_or_insert_with(K8sNodeSpec::default);
    spec.pod_cidr = Some(lab.pod_cidr.to_string());
    spec.pod_cidrs = Some(
        std::iter::once(lab.pod_cidr.to_string())
            .chain(lab.pod_cidr_v6.map(|c| c.to_string()))
            .collect(),
    );
    let status = node.status.get_or_insert_with(Default::default);
    let mut addresses: Vec<NodeAddress> = status
        .addresses
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ != "InternalIP")
        .collect();
    let internal = std::iter::once(IpAddr::V4(lab.internal_ip)).chain(
        lab.pod_cidr_v6
            .is_some()
            .then_some(IpAddr::V6(lab.internal_ipv6)),
    );
    addresses.splice(
        0..0,
        internal.map(|ip| NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        }),
    );
    status.addresses = Some(addresses);
    node
}

/// Explain's verdict, the reference; a flow explain cannot judge counts as allowed
/// (no policy isolates what explain does not know). Asked by address (explain
/// resolves them to the pods), so the verdict is for the family probed: asked by
/// pod name, explain would pick the first family both pods have.
fn explain_verdict(cluster: &Cluster, from: IpAddr, to: IpAddr, p: &ProbeStep) -> bool {
    let flow = Flow {
        from: Endpoint::Ip(from),
        to: Endpoint::Ip(to),
        protocol: p.protocol,
        port: p.port,
    };
    explain_flow(cluster, &flow)
        .map(|e| e.allowed)
        .unwrap_or(true)
}

// ---------------------------------------------------------------------------
// the run (edges)

/// A running lab: the model, namespaces, control plane and listeners.
struct Lab {
    cluster: Cluster,
    topology: Topology,
    control: Box<dyn ControlPlane>,
    listeners: BTreeMap<ObjectKey, Listeners>,
    probed: Vec<(Protocol, u16)>,
    timeout: Duration,
    next_node: usize,
    next_index: usize,
    enforcements: Vec<Enforcement>,
    /// Each node's Service NAT model as last enforced.
    services: BTreeMap<String, NodeServices>,
    service_config: ServiceConfig,
    /// Load-balancer and external IPs → the node the underlay routes them to.
    lb_routes: BTreeMap<IpAddr, String>,
    /// Service problems already reported (each is printed once).
    reported: BTreeSet<String>,
    rt: Runtime,
}

/// Runs the lab for `cluster` (from manifests) and `scenario` (default: one
/// probe per declared port, then one per Service port through its ClusterIP
/// and, for NodePort and LoadBalancer Services, from outside, expecting
/// explain's verdict). Everything it builds
/// is removed before it returns, also on error; leftovers of crashed runs are
/// removed first.
pub fn run(
    cluster: Cluster,
    scenario: Option<Scenario>,
    options: &RunOptions,
) -> anyhow::Result<LabReport> {
    let (scenario, default_ports) = match scenario {
        Some(s) => (s, None),
        None => {
            let ports = declared_ports(&cluster);
            if ports.is_empty() {
                bail!("no pod declares a container port; give a --scenario with probe steps");
            }
            (Scenario::from_ports(&ports, &[Family::IPv4]), Some(ports))
        }
    };
    let probed = scenario.probed_ports();
    let (spec, next_node) = plan_lab(&cluster, options, &probed)?;
    // Check addresses before creating anything: clear errors, nothing to undo.
    let addresses = addressing::plan(&spec)?;
    // The default scenario probes IPv6 too once some pod has an IPv6 address,
    // and every Service port after the pods.
    let scenario = match default_ports {
        Some(ports) => {
            let mut s = if addresses.pods.iter().any(|p| p.ipv6.is_some()) {
                Scenario::from_ports(&ports, &[Family::IPv4, Family::IPv6])
            } else {
                scenario
            };
            s.steps.extend(Scenario::service_probes(&cluster).steps);
            s
        }
        None => scenario,
    };
    let mut session = Session::build(
        cluster,
        options,
        spec,
        next_node,
        probed,
        &scenario.outside_ports(),
    )?;
    let outcome = session.lab_mut().run_steps(&scenario);
    let closed = session.close();
    let report = outcome?;
    closed?;
    Ok(report)
}

/// A lab held open between steps, for programs that drive it one step at a
/// time (the cluster e2e tests: hold a connection across an agent restart,
/// stop the API server between steps). [`run`] is a session that runs a
/// scenario. Closing it (or dropping it) removes everything it built.
pub struct Session {
    lab: Option<Lab>,
    guard: Option<LabGuard>,
    /// Steps so far (apply/delete/probe), numbering the next one.
    steps: usize,
}

impl Session {
    /// Builds the lab for `cluster` and enforces its policy. Every pod
    /// listens on `ports` besides its declared ones; pods place as in
    /// [`plan_lab`].
    pub fn start(
        cluster: Cluster,
        options: &RunOptions,
        ports: &[(Protocol, u16)],
    ) -> anyhow::Result<Session> {
        let (spec, next_node) = plan_lab(&cluster, options, ports)?;
        addressing::plan(&spec)?;
        Session::build(cluster, options, spec, next_node, ports.to_vec(), &[])
    }

    fn build(
        cluster: Cluster,
        options: &RunOptions,
        spec: topology::LabSpec,
        next_node: usize,
        probed: Vec<(Protocol, u16)>,
        outside_ports: &[(Protocol, u16)],
    ) -> anyhow::Result<Session> {
        let removed = super::cleanup_stale().context("removing leftovers of crashed lab runs")?;
        if !removed.is_empty() {
            eprintln!(
                "removed {} namespaces left by crashed lab runs",
                removed.len()
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let guard = LabGuard::new()?;
        let topology = topology::build(&spec, &guard).context("building the lab")?;
        let next_index = topology.pods.len();
        let cluster_cidrs: Vec<IpNet> = if options.cluster_cidrs.is_empty() {
            topology
                .nodes
                .iter()
                .flat_map(|n| {
                    std::iter::once(IpNet::V4(n.pod_cidr)).chain(n.pod_cidr_v6.map(IpNet::V6))
                })
                .collect()
        } else {
            options.cluster_cidrs.clone()
        };
        let service_config = services::config(&cluster_cidrs, &options.no_masquerade_cidrs);
        let control: Box<dyn ControlPlane> = match &options.api_server {
            None => Box::new(InProcess::start(&topology)?),
            Some(api) => {
                let nodes: Vec<(String, std::path::PathBuf)> = topology
                    .nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.netns.path()))
                    .collect();
                Box::new(ApiServerPlane::start(
                    api,
                    guard.prefix(),
                    &nodes,
                    &cluster,
                    &service_config,
                    &rt,
                )?)
            }
        };
        let lab = Lab {
            cluster,
            topology,
            control,
            listeners: BTreeMap::new(),
            probed,
            timeout: options.timeout,
            next_node,
            next_index,
            enforcements: Vec::new(),
            services: BTreeMap::new(),
            service_config,
            lb_routes: BTreeMap::new(),
            reported: BTreeSet::new(),
            rt,
        };
        let mut session = Session {
            lab: Some(lab),
            guard: Some(guard),
            steps: 0,
        };
        if let Err(e) = session.lab_mut().start(outside_ports) {
            let _ = session.close();
            return Err(e);
        }
        Ok(session)
    }

    fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("a session's lab lives until it is closed")
    }

    fn lab_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("a session's lab lives until it is closed")
    }

    /// `in-process` or `apiserver`.
    pub fn control_plane(&self) -> &'static str {
        self.lab().control.name()
    }

    /// A pod as the lab built it (namespace, IPs, node).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&LabPod> {
        self.lab().topology.pod(namespace, name)
    }

    /// Applies manifests (as a scenario's `apply` step) and enforces them;
    /// returns the enforcement (per node: what changed and when the kernel
    /// had it).
    pub fn apply(&mut self, items: &[serde_json::Value]) -> anyhow::Result<Enforcement> {
        let step = self.next_step();
        let lab = self.lab_mut();
        lab.apply(step, items)?;
        lab.enforce(Some(step))?;
        Ok(lab.enforcements.last().cloned().expect("just enforced"))
    }

    /// Deletes objects (as a scenario's `delete` step) and enforces that.
    pub fn delete(&mut self, refs: &[ObjectRef]) -> anyhow::Result<Enforcement> {
        let step = self.next_step();
        let lab = self.lab_mut();
        lab.delete(step, refs)?;
        lab.enforce(Some(step))?;
        Ok(lab.enforcements.last().cloned().expect("just enforced"))
    }

    /// Runs one probe step now and judges it.
    pub fn probe(&mut self, probe: &ProbeStep) -> anyhow::Result<ProbeReport> {
        let step = self.next_step();
        let mut reports = self.lab_mut().probe(&[(step, probe)])?;
        Ok(reports.remove(0))
    }

    /// Stops `node`'s agent abruptly (`kill -9` through the API server) and
    /// starts it again; returns once it runs.
    pub fn restart_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let lab = self.lab_mut();
        lab.control.restart_agent(node, &lab.rt)
    }

    fn next_step(&mut self) -> usize {
        self.steps += 1;
        self.steps - 1
    }

    /// Stops the agents, removes what the control plane wrote and the lab's
    /// namespaces.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> anyhow::Result<()> {
        let Some(mut lab) = self.lab.take() else {
            return Ok(());
        };
        let finished = lab.control.finish(&lab.rt);
        // Sockets in lab namespaces go first, then the namespaces.
        lab.listeners.clear();
        drop(lab);
        let removal = self.guard.take().map(LabGuard::remove).transpose();
        finished?;
        removal.context("removing the lab's namespaces")?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            eprintln!("warning: cleaning up the lab: {e:#}");
        }
    }
}

impl Lab {
    /// Writes the lab's addresses into the model, starts listeners and
    /// enforces the initial policy.
    fn start(&mut self, outside_ports: &[(Protocol, u16)]) -> anyhow::Result<()> {
        self.write_back()?;
        let pods = self.topology.pods.clone();
        for pod in &pods {
            self.serve(pod)?;
        }
        self.serve_outside(outside_ports)?;
        self.route_service_cidr()?;
        self.enforce(None)
    }

    fn run_steps(&mut self, scenario: &Scenario) -> anyhow::Result<LabReport> {
        let mut probes = Vec::new();
        let mut batch: Vec<(usize, &ProbeStep)> = Vec::new();
        for (i, step) in scenario.steps.iter().enumerate() {
            if let Step::Probe(p) = step {
                batch.push((i, p));
                continue;
            }
            // Consecutive probes run together: the policy does not change between them.
            probes.extend(self.probe(&std::mem::take(&mut batch))?);
            match step {
                Step::Apply(items) => self.apply(i, items)?,
                Step::Delete(refs) => self.delete(i, refs)?,
                Step::Probe(_) => unreachable!("handled above"),
            }
            self.enforce(Some(i))?;
        }
        probes.extend(self.probe(&batch)?);
        // One line per port and reason, not per pod.
        let mut grouped: BTreeMap<(String, &str), Vec<&str>> = BTreeMap::new();
        for n in self.listeners.values().flat_map(|l| l.not_servable()) {
            let port = format!("{}/{}", n.port.protocol, n.port.port);
            grouped.entry((port, &n.reason)).or_default().push(&n.who);
        }
        let not_servable = grouped
            .into_iter()
            .map(|((port, reason), who)| format!("{port} on {}: {reason}", who.join(", ")))
            .collect();
        let mut report =
            LabReport::new(probes, std::mem::take(&mut self.enforcements), not_servable);
        report.control_plane = match self.control.name() {
            "in-process" => None,
            other => Some(other.to_string()),
        };
        Ok(report)
    }

    /// Writes every lab pod's IP/node and every node's InternalIP/podCIDR into the model.
    fn write_back(&mut self) -> anyhow::Result<()> {
        for lab in &self.topology.nodes {
            let node = with_lab_node(self.cluster.nodes().get(&lab.name).cloned(), lab);
            self.cluster
                .insert(Object::Node(node))
                .map_err(|e| anyhow!("{e}"))?;
        }
        for lab in self.topology.pods.clone() {
            self.write_back_pod(&lab)?;
        }
        Ok(())
    }

    fn write_back_pod(&mut self, lab: &LabPod) -> anyhow::Result<()> {
        let key = ObjectKey::new(lab.namespace.as_str(), lab.name.as_str());
        let pod = self
            .cluster
            .pod(&key)
            .cloned()
            .ok_or_else(|| anyhow!("Pod {key} vanished from the model"))?;
        self.cluster
            .insert_pod(with_lab_addresses(pod, lab))
            .map_err(|e| anyhow!("{e}"))
    }

    /// The outside host answers on the ports `to: outside` probes use.
    fn serve_outside(&mut self, outside_ports: &[(Protocol, u16)]) -> anyhow::Result<()> {
        let ports: Vec<PodPort> = outside_ports
            .iter()
            .map(|&(protocol, port)| PodPort { protocol, port })
            .collect();
        if ports.is_empty() {
            return Ok(());
        }
        let o = self.topology.outside.clone();
        let mut listeners = Listeners::new();
        self.rt.block_on(listeners.serve(
            &o.netns,
            scenario::OUTSIDE,
            &[o.ip.into(), o.ipv6.into()],
            &ports,
        ))?;
        self.listeners.insert(scenario::outside_key(), listeners);
        Ok(())
    }

    /// Routes the Service CIDR from the underlay to the first node, as
    /// clusters that announce their Service range do, so the outside host
    /// can reach ClusterIPs (and is masqueraded there, being off-cluster).
    fn route_service_cidr(&mut self) -> anyhow::Result<()> {
        // The first by name: the node `services::targets` expects.
        let Some(first) = self.topology.nodes.iter().min_by_key(|n| &n.name) else {
            return Ok(());
        };
        run_ip_batches(&[IpBatch {
            netns: Some(self.topology.underlay.name.clone()),
            commands: vec![
                format!(
                    "route replace {} via {}",
                    services::SERVICE_CIDR_V4,
                    first.internal_ip
                ),
                format!(
                    "route replace {} via {}",
                    services::SERVICE_CIDR_V6,
                    first.internal_ipv6
                ),
            ],
            force: false,
        }])
        .context("routing the Service CIDR in the underlay")?;
        Ok(())
    }

    fn serve(&mut self, pod: &LabPod) -> anyhow::Result<()> {
        let mut listeners = Listeners::new();
        self.rt
            .block_on(listeners.serve(&pod.netns, &pod.label(), &pod.ips(), &pod.ports))?;
        self.listeners.insert(
            ObjectKey::new(pod.namespace.as_str(), pod.name.as_str()),
            listeners,
        );
        Ok(())
    }

    /// Recompiles, hands every node its share of the policy and its Service
    /// NAT (Services completed and EndpointSlices derived as a cluster's
    /// control plane would), waits until each kernel committed it, and points
    /// the lab's load balancer at the nodes that serve each address.
    fn enforce(&mut self, step: Option<usize>) -> anyhow::Result<()> {
        services::complete_services(&mut self.cluster)?;
        self.control.prepare(&self.rt)?;
        let compiled = compile(&self.cluster);
        // What the agents see: the model plus what the control plane adds,
        // with EndpointSlices as the controller derives them.
        let with_slices =
            crate::service::with_synthesized_slices(&self.control.view(&self.cluster));
        let inputs: Vec<AgentInput> = self
            .topology
            .nodes
            .iter()
            .map(|n| {
                AgentInput::for_cluster(&with_slices, &compiled, &n.name, &self.service_config)
            })
            .collect();
        drop(with_slices);
        self.services = inputs
            .iter()
            .map(|i| {
                (
                    i.policy.node.clone(),
                    i.services.clone().unwrap_or_default(),
                )
            })
            .collect();
        for e in self.services.values().flat_map(|s| &s.errors) {
            if self.reported.insert(e.to_string()) {
                eprintln!("warning: {e} (skipped)");
            }
        }
        let change = Change {
            cluster: &self.cluster,
            compiled: &compiled,
            inputs: &inputs,
        };
        let nodes = self
            .control
            .enforce(&change, &self.rt)
            .with_context(|| match step {
                Some(i) => format!("enforcing after steps[{i}]"),
                None => "enforcing the initial policy".to_string(),
            })?;
        self.enforcements.push(Enforcement { step, nodes });
        self.route_load_balancers()
    }

    /// Routes each load-balancer and external IP from the underlay to the
    /// node [`services::lb_routes`] picks (as a cloud load balancer following
    /// health checks would), and drops routes of addresses that went away.
    fn route_load_balancers(&mut self) -> anyhow::Result<()> {
        let want = services::lb_routes(&self.services);
        let mut commands = Vec::new();
        for (ip, node) in &want {
            if self.lb_routes.get(ip) == Some(node) {
                continue;
            }
            let lab = self
                .topology
                .node(node)
                .ok_or_else(|| anyhow!("node {node} is not in the lab"))?;
            let via: IpAddr = match ip {
                IpAddr::V4(_) => lab.internal_ip.into(),
                IpAddr::V6(_) => lab.internal_ipv6.into(),
            };
            commands.push(format!("route replace {} via {via}", IpNet::from(*ip)));
        }
        for ip in self.lb_routes.keys().filter(|ip| !want.contains_key(ip)) {
            commands.push(format!("route del {}", IpNet::from(*ip)));
        }
        run_ip_batches(&[IpBatch {
            netns: Some(self.topology.underlay.name.clone()),
            commands,
            force: false,
        }])
        .context("routing load-balancer addresses in the underlay")?;
        self.lb_routes = want;
        Ok(())
    }

    fn apply(&mut self, step: usize, items: &[serde_json::Value]) -> anyhow::Result<()> {
        for (j, item) in items.iter().enumerate() {
            let object = super::scenario::to_object(item)
                .map_err(|e| anyhow!("steps[{step}].apply[{j}]: {e}"))?;
            let at = |e: anyhow::Error| e.context(format!("steps[{step}].apply[{j}]"));
            match object {
                Object::Pod(pod) => self.apply_pod(pod).map_err(at)?,
                Object::Node(node) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    let Some(lab) = self.topology.node(&name).cloned() else {
                        return Err(at(anyhow!(
                            "Node {name}: adding nodes mid-scenario is not supported by the lab"
                        )));
                    };
                    self.cluster
                        .insert(Object::Node(with_lab_node(Some(node), &lab)))
                        .map_err(|e| at(anyhow!("{e}")))?;
                }
                other => self.cluster.insert(other).map_err(|e| at(anyhow!("{e}")))?,
            }
        }
        Ok(())
    }

    /// A new pod gets a namespace, veth and listeners; an existing one keeps them
    /// unless its node, IP or ports change (then it is rebuilt); a label change
    /// only updates the model.
    fn apply_pod(&mut self, pod: Pod) -> anyhow::Result<()> {
        let key = ObjectKey::of(&pod.metadata);
        if !is_lab_pod(&pod) {
            self.remove_lab_pod(&key)?;
            self.cluster.insert_pod(pod).map_err(|e| anyhow!("{e}"))?;
            return Ok(());
        }
        let (given, given_v6) = given_ips(&key, &pod)?;
        let ports = listen_ports(&pod, &self.probed);
        let existing = self.topology.pod(&key.namespace, &key.name).cloned();
        if let Some(lab) = existing {
            let node_kept = cluster::pod_node(&pod).is_none_or(|n| n == lab.node);
            let ip_kept = given.is_none_or(|ip| ip == lab.ip)
                && given_v6.is_none_or(|ip| Some(ip) == lab.ipv6);
            if node_kept && ip_kept && ports == lab.ports {
                self.cluster
                    .insert_pod(with_lab_addresses(pod, &lab))
                    .map_err(|e| anyhow!("{e}"))?;
                return Ok(());
            }
            self.remove_lab_pod(&key)?;
        }
        let node_specs: Vec<NodeSpec> = self
            .topology
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                pod_cidr: n.pod_cidr,
                pod_cidr_v6: n.pod_cidr_v6,
            })
            .collect();
        let node = place(&key, &pod, &node_specs, &mut self.next_node)?;
        let (cidr, cidr_v6) = self
            .topology
            .node(&node)
            .map(|n| (n.pod_cidr, n.pod_cidr_v6))
            .ok_or_else(|| anyhow!("node {node} vanished"))?;
        let taken: BTreeMap<IpAddr, String> = self
            .topology
            .pods
            .iter()
            .flat_map(|p| p.ips().into_iter().map(move |ip| (ip, p.label())))
            .collect();
        let ip = match given {
            Some(ip) => {
                if !cidr.contains(&ip) {
                    bail!(
                        "Pod {key}: status.podIP {ip} is outside podCIDR {cidr} of its node {node}"
                    );
                }
                if let Some(owner) = taken.get(&IpAddr::V4(ip)) {
                    bail!("Pod {key}: status.podIP {ip} is already {owner}'s");
                }
                ip
            }
            None => match addressing::allocate(&IpNet::V4(cidr), &taken) {
                Some(IpAddr::V4(ip)) => ip,
                _ => bail!("Pod {key}: podCIDR {cidr} of node {node} is full"),
            },
        };
        let ipv6 = match (given_v6, cidr_v6) {
            (Some(ip), None) => bail!(
                "Pod {key}: status.podIPs {ip}: node {node} has no IPv6 pod CIDR \
                 (spec.podCIDRs or --pod-cidr-v6)"
            ),
            (Some(ip), Some(cidr)) => {
                if !cidr.contains(&ip) {
                    bail!(
                        "Pod {key}: status.podIPs {ip} is outside IPv6 podCIDR {cidr} of its node {node}"
                    );
                }
                if let Some(owner) = taken.get(&IpAddr::V6(ip)) {
                    bail!("Pod {key}: status.podIPs {ip} is already {owner}'s");
                }
                Some(ip)
            }
            (None, Some(cidr)) => match addressing::allocate(&IpNet::V6(cidr), &taken) {
                Some(IpAddr::V6(ip)) => Some(ip),
                _ => bail!("Pod {key}: IPv6 podCIDR {cidr} of node {node} is full"),
            },
            (None, None) => None,
        };
        let spec = PodSpec {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            node,
            ip: Some(ip),
            ipv6,
            ports,
        };
        let index = self.next_index;
        self.next_index += 1;
        let lab = topology::add_pod(&mut self.topology, &spec, ip, index)
            .with_context(|| format!("adding Pod {key} to the lab"))?;
        self.serve(&lab)?;
        self.cluster
            .insert_pod(with_lab_addresses(pod, &lab))
            .map_err(|e| anyhow!("{e}"))
    }

    fn remove_lab_pod(&mut self, key: &ObjectKey) -> anyhow::Result<()> {
        // Close the pod's sockets first, or its namespace outlives its name.
        self.listeners.remove(key);
        topology::remove_pod(&mut self.topology, &key.namespace, &key.name)
            .with_context(|| format!("removing Pod {key} from the lab"))?;
        Ok(())
    }

    fn delete(&mut self, step: usize, refs: &[ObjectRef]) -> anyhow::Result<()> {
        for (j, r) in refs.iter().enumerate() {
            let key = r.key();
            let found = match r.kind.as_str() {
                "Pod" => {
                    self.remove_lab_pod(&key)?;
                    self.cluster.remove_pod(&key).is_some()
                }
                "NetworkPolicy" => self.cluster.remove_policy(&key).is_some(),
                "Service" => self.cluster.remove_service(&key).is_some(),
                "EndpointSlice" => self.cluster.remove_endpoint_slice(&key).is_some(),
                // Like the API server: a namespace's objects go with it.
                "Namespace" => {
                    let pods: Vec<ObjectKey> = self
                        .cluster
                        .pods()
                        .keys()
                        .filter(|k| k.namespace == r.name)
                        .cloned()
                        .collect();
                    for k in &pods {
                        self.remove_lab_pod(k)?;
                        self.cluster.remove_pod(k);
                    }
                    let policies: Vec<ObjectKey> = self
                        .cluster
                        .policies_in(&r.name)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in &policies {
                        self.cluster.remove_policy(k);
                    }
                    let in_ns = |k: &&ObjectKey| k.namespace == r.name;
                    let services: Vec<ObjectKey> = self
                        .cluster
                        .services()
                        .keys()
                        .filter(in_ns)
                        .cloned()
                        .collect();
                    for k in &services {
                        self.cluster.remove_service(k);
                    }
                    let slices: Vec<ObjectKey> = self
                        .cluster
                        .endpoint_slices()
                        .keys()
                        .filter(in_ns)
                        .cloned()
                        .collect();
                    for k in &slices {
                        self.cluster.remove_endpoint_slice(k);
                    }
                    self.cluster.remove_namespace(&r.name).is_some() || !pods.is_empty()
                }
                _ => bail!(
                    "steps[{step}].delete[{j}]: deleting a {} is not supported by the lab",
                    r.kind
                ),
            };
            if !found {
                bail!("steps[{step}].delete[{j}]: {r} not found");
            }
        }
        Ok(())
    }

    /// Runs the probes of consecutive probe steps at once and judges them. Each
    /// probe uses both ends' addresses of its family; a pair where either end
    /// has none is neither probed nor judged.
    fn probe(&mut self, steps: &[(usize, &ProbeStep)]) -> anyhow::Result<Vec<ProbeReport>> {
        let mut pods: Vec<&LabPod> = self.topology.pods.iter().collect();
        pods.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));
        let keys: Vec<ObjectKey> = pods
            .iter()
            .map(|p| ObjectKey::new(p.namespace.as_str(), p.name.as_str()))
            .collect();
        let mut specs = Vec::new();
        let mut reports = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        for &(step, p) in steps {
            check_expectation_names(step, p, &keys, &self.cluster)?;
            let addresses: Vec<Option<IpAddr>> = pods
                .iter()
                .map(|pod| pod.ips().into_iter().find(|ip| p.family.has(ip)))
                .collect();
            let sources: Vec<Party> = match p.from {
                Source::Pod => pods
                    .iter()
                    .zip(&keys)
                    .zip(&addresses)
                    .filter_map(|((pod, key), ip)| {
                        Some(Party {
                            key: key.clone(),
                            netns: pod.netns.clone(),
                            ip: (*ip)?,
                            node: Some(pod.node.clone()),
                        })
                    })
                    .collect(),
                Source::Outside => {
                    let o = &self.topology.outside;
                    let ip: IpAddr = match p.family {
                        Family::IPv4 => o.ip.into(),
                        Family::IPv6 => o.ipv6.into(),
                    };
                    vec![Party {
                        key: scenario::outside_key(),
                        netns: o.netns.clone(),
                        ip,
                        node: None,
                    }]
                }
            };
            let targets: Vec<(ObjectKey, String, SocketAddr, Option<ServiceTarget>)> = match p.to {
                Target::Outside => {
                    let o = &self.topology.outside;
                    let ip: IpAddr = match p.family {
                        Family::IPv4 => o.ip.into(),
                        Family::IPv6 => o.ipv6.into(),
                    };
                    vec![(
                        scenario::outside_key(),
                        scenario::OUTSIDE.to_string(),
                        SocketAddr::new(ip, p.port),
                        None,
                    )]
                }
                Target::Pod => keys
                    .iter()
                    .zip(&addresses)
                    .filter_map(|(k, ip)| {
                        Some((
                            k.clone(),
                            k.to_string(),
                            SocketAddr::new((*ip)?, p.port),
                            None,
                        ))
                    })
                    .collect(),
                to => {
                    let via = match to {
                        Target::NodePort => Via::NodePort,
                        Target::LoadBalancer => Via::LoadBalancer,
                        _ => Via::ClusterIp,
                    };
                    services::targets(
                        &self.cluster,
                        &self.services,
                        via,
                        p.protocol,
                        p.port,
                        p.family,
                    )
                    .into_iter()
                    .map(|t| {
                        let addr = SocketAddr::new(t.addr, t.port);
                        (t.service.clone(), t.label.clone(), addr, Some(t))
                    })
                    .collect()
                }
            };
            let skipped = if p.protocol == Protocol::Sctp {
                Some(sctp::unsupported_reason().to_string())
            } else if p.to == Target::Pod && addresses.iter().all(Option::is_none) {
                Some(format!(
                    "no pod has an {} address (give nodes an IPv6 pod CIDR: \
                     spec.podCIDRs or --pod-cidr-v6)",
                    p.family
                ))
            } else if targets.is_empty() {
                Some(format!(
                    "no Service has a {} for {}/{} over {}",
                    p.to.as_str(),
                    p.protocol,
                    p.port,
                    p.family
                ))
            } else {
                None
            };
            let no_address = if skipped.is_some() || p.to != Target::Pod {
                Vec::new()
            } else {
                keys.iter()
                    .zip(&addresses)
                    .filter(|(_, a)| a.is_none())
                    .map(|(k, _)| k.to_string())
                    .collect()
            };
            reports.push(ProbeReport {
                step,
                protocol: p.protocol,
                port: p.port,
                to: p.to.as_str().into(),
                from: match p.from {
                    Source::Pod => "pod".into(),
                    Source::Outside => scenario::OUTSIDE.into(),
                },
                family: p.family,
                results: Vec::new(),
                skipped: skipped.clone(),
                no_address,
            });
            if skipped.is_some() {
                continue;
            }
            for source in &sources {
                for (key, label, addr, service) in &targets {
                    // A pod probing itself is never judged (through a Service
                    // it is: that is hairpin traffic).
                    if service.is_none() && *key == source.key {
                        continue;
                    }
                    pending.push(Pending {
                        report: reports.len() - 1,
                        step: p,
                        from: source.clone(),
                        to: key.clone(),
                        label: label.clone(),
                        addr: *addr,
                        service: service.clone(),
                        spec: specs.len(),
                    });
                    specs.push(ProbeSpec {
                        from: source.netns.clone(),
                        to: *addr,
                        protocol: p.protocol,
                        timeout: self.timeout,
                    });
                }
            }
        }
        let results = self.rt.block_on(super::probe_many(&specs));
        for job in pending {
            let cell = self.judge(&job, &results[job.spec]);
            reports[job.report].results.push(cell);
        }
        Ok(reports)
    }

    /// One probe's cell: the kernel's verdict (the destination, or for a
    /// Service one of its backends, answered) against the expectation and
    /// explain.
    fn judge(&self, job: &Pending, result: &ProbeResult) -> Cell {
        let p = job.step;
        let answer = result.answer.as_ref();
        let responder = answer.map(|a| a.responder.clone());
        let (allowed, explain) = match &job.service {
            None => {
                let allowed = result.answered() && responder.as_deref() == Some(job.label.as_str());
                let explain = explain_verdict(&self.cluster, job.from.ip, job.addr.ip(), p);
                (allowed, explain)
            }
            Some(target) => {
                let verdicts = self.service_verdicts(job, target);
                let allowed = result.answered()
                    && verdicts
                        .iter()
                        .any(|(pod, _)| Some(pod) == responder.as_ref());
                let all = verdicts.iter().all(|(_, ok)| *ok);
                let none = !verdicts.iter().any(|(_, ok)| *ok);
                // Backends policy treats differently: judged by the one that
                // answered (a connection that got no answer went to one that
                // policy denies).
                let explain = if all || none {
                    !verdicts.is_empty() && all
                } else {
                    verdicts
                        .iter()
                        .any(|(pod, ok)| *ok && Some(pod) == responder.as_ref())
                };
                (allowed, explain)
            }
        };
        let detail = match (&result.error, &responder) {
            (Some(e), _) => Some(e.to_string()),
            (None, Some(who)) if !allowed => Some(format!("answered by {who}")),
            (None, None) if !allowed => Some("no answer".into()),
            _ => None,
        };
        let expected = p
            .expect
            .as_ref()
            .map_or(explain, |e| e.expected(&job.from.key, &job.to));
        Cell {
            from: party_label(&job.from.key),
            to: job.label.clone(),
            allowed,
            expected,
            explain,
            backend: responder.filter(|_| result.answered()),
            source_ip: answer.and_then(|a| a.seen_source),
            detail,
        }
    }

    /// Explain's verdict for each backend a connection through `target` may
    /// reach (`namespace/name` of its pod): the client's egress where its node
    /// judges it, and the backend's ingress from the source its node sees.
    fn service_verdicts(&self, job: &Pending, target: &ServiceTarget) -> Vec<(String, bool)> {
        let addresses: services::NodeAddresses = self
            .topology
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    vec![n.internal_ip.into(), n.internal_ipv6.into()],
                )
            })
            .collect();
        let client = Client {
            ip: job.from.ip,
            node: job.from.node.as_deref(),
        };
        let Some(route) = services::route(
            &self.services,
            &addresses,
            &self.service_config,
            client,
            target,
        ) else {
            return Vec::new();
        };
        let protocol = job.step.protocol;
        let explain = |from: IpAddr, to: IpAddr, port: u16| {
            explain_flow(
                &self.cluster,
                &Flow {
                    from: Endpoint::Ip(from),
                    to: Endpoint::Ip(to),
                    protocol,
                    port,
                },
            )
            .ok()
        };
        route
            .backends
            .iter()
            .map(|(ep, seen)| {
                let egress = match (job.from.node.is_some(), route.first_hop) {
                    (false, _) => true,
                    (true, Some((ip, port))) => {
                        explain(job.from.ip, ip, port).is_none_or(|e| e.egress.verdict.allowed())
                    }
                    (true, None) => explain(job.from.ip, ep.addr, ep.port)
                        .is_none_or(|e| e.egress.verdict.allowed()),
                };
                let ingress =
                    explain(*seen, ep.addr, ep.port).is_none_or(|e| e.ingress.verdict.allowed());
                (ep.pod.clone().unwrap_or_default(), egress && ingress)
            })
            .collect()
    }
}

/// `namespace/name`, or the bare name of the outside host.
fn party_label(key: &ObjectKey) -> String {
    if key.namespace.is_empty() {
        key.name.clone()
    } else {
        key.to_string()
    }
}

/// One end of a probe.
#[derive(Debug, Clone)]
struct Party {
    key: ObjectKey,
    netns: Netns,
    ip: IpAddr,
    /// The node of a pod; `None` for the outside host.
    node: Option<String>,
}

/// A probe sent, waiting to be judged.
struct Pending<'a> {
    report: usize,
    step: &'a ProbeStep,
    from: Party,
    /// The pod or Service expectations name.
    to: ObjectKey,
    /// The column: `namespace/name` (`@node` for a NodePort).
    label: String,
    addr: SocketAddr,
    service: Option<ServiceTarget>,
    spec: usize,
}

/// Every pod (or, for a Service probe, Service) an expectation names
/// exactly must exist at that step: a typo must not silently turn into
/// "every other pair".
fn check_expectation_names(
    step: usize,
    p: &ProbeStep,
    pods: &[ObjectKey],
    cluster: &Cluster,
) -> anyhow::Result<()> {
    let Some(expect) = &p.expect else {
        return Ok(());
    };
    let outside = scenario::outside_key();
    for pair in &expect.pairs {
        for (side, is_to) in [(&pair.from, false), (&pair.to, true)] {
            let Some(k) = side.exact() else { continue };
            let (known, what) = if is_to && p.to != Target::Pod {
                (cluster.services().contains_key(&k), "Service")
            } else if !is_to && p.from == Source::Outside {
                (k == outside, "source")
            } else {
                (pods.contains(&k), "pod")
            };
            if !known && k != outside {
                bail!("steps[{step}].probe.expect: `{pair}` names {what} {k}, which is not in the lab at this step");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Cluster {
        crate::cluster::load::cluster_from_yaml(yaml)
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {containers: [{name: c, ports: [{containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.244.0.7}
"#;

    #[test]
    fn generated_nodes_and_round_robin_placement() {
        let c = cluster(PODS);
        let (spec, next) = plan_lab(&c, &RunOptions::default(), &[(Protocol::Tcp, 80)]).unwrap();
        let nodes: Vec<_> = spec
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.pod_cidr.to_string()))
            .collect();
        assert_eq!(
            nodes,
            vec![
                ("node-1", "10.244.0.0/24".into()),
                ("node-2", "10.244.1.0/24".into())
            ]
        );
        let placed: Vec<_> = spec
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.node.as_str(), p.ip))
            .collect();
        assert_eq!(
            placed,
            vec![
                ("a", "node-1", None),
                ("b", "node-2", None),
                ("c", "node-1", Some("10.244.0.7".parse().unwrap()))
            ]
        );
        assert_eq!(next, 2);
        // Every pod listens on the probed port too.
        assert!(spec.pods[1].ports.contains(&PodPort {
            protocol: Protocol::Tcp,
            port: 80
        }));
        assert!(spec.pods[1].ports.contains(&PodPort {
            protocol: Protocol::Udp,
            port: 53
        }));
    }

    #[test]
    fn node_manifests_win_and_unknown_nodes_are_named() {
        let c = cluster(&format!(
            "{PODS}---\napiVersion: v1\nkind: Node\nmetadata: {{name: w1}}\nspec: {{podCIDR: 10.9.1.0/24}}\n---\napiVersion: v1\nkind: Node\nmetadata: {{name: w2}}\n"
        ));
        let nodes = plan_nodes(&c, 5, "10.244.0.0/16".parse().unwrap(), None).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].pod_cidr.to_string(), "10.9.1.0/24");
        assert_eq!(nodes[1].pod_cidr.to_string(), "10.244.0.0/24");
        let e = plan_lab(&c, &RunOptions::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Pod x/c: spec.nodeName `node-1` is not a lab node"),
            "{e}"
        );
    }

    #[test]
    fn given_ip_outside_the_node_cidr_is_a_clear_error() {
        let c = cluster(&PODS.replace("10.244.0.7", "10.244.1.7"));
        let (spec, _) = plan_lab(&c, &RunOptions::default(), &[]).unwrap();
        let e = addressing::plan(&spec).unwrap_err().to_string();
        assert!(
            e.contains("pod x/c: ip 10.244.1.7 is outside podCIDR 10.244.0.0/24"),
            "{e}"
        );
    }

    const DUAL_STACK: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: w1}
spec: {podCIDRs: ["10.9.1.0/24", "fd00:10:9:1::/64"]}
---
apiVersion: v1
kind: Node
metadata: {name: w2}
spec: {podCIDR: 10.9.2.0/24}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: w1, containers: [{name: c}]}
status: {podIPs: [{ip: 10.9.1.5}, {ip: "fd00:10:9:1::5"}]}
"#;

    #[test]
    fn dual_stack_nodes_and_given_ipv6_addresses() {
        let c = cluster(DUAL_STACK);
        let nodes = plan_nodes(&c, 2, "10.244.0.0/16".parse().unwrap(), None).unwrap();
        let v6: Vec<Option<String>> = nodes
            .iter()
            .map(|n| n.pod_cidr_v6.map(|c| c.to_string()))
            .collect();
        assert_eq!(v6, [Some("fd00:10:9:1::/64".into()), None]);
        // --pod-cidr-v6 fills in the nodes without one, skipping taken /64s.
        let nodes = plan_nodes(
            &c,
            2,
            "10.244.0.0/16".parse().unwrap(),
            Some("fd00:10:9::/48".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(nodes[1].pod_cidr_v6.unwrap().to_string(), "fd00:10:9::/64");
        let (spec, _) = plan_lab(&c, &RunOptions::default(), &[]).unwrap();
        assert_eq!(spec.pods[0].ip, Some("10.9.1.5".parse().unwrap()));
        assert_eq!(spec.pods[0].ipv6, Some("fd00:10:9:1::5".parse().unwrap()));
    }

    #[test]
    fn generated_nodes_get_a_slash_64_each_from_pod_cidr_v6() {
        let c = cluster(PODS);
        let options = RunOptions {
            pod_cidr_v6: Some("fd00:10:244::/48".parse().unwrap()),
            ..RunOptions::default()
        };
        let (spec, _) = plan_lab(&c, &options, &[]).unwrap();
        let v6: Vec<String> = spec
            .nodes
            .iter()
            .map(|n| n.pod_cidr_v6.unwrap().to_string())
            .collect();
        assert_eq!(v6, ["fd00:10:244::/64", "fd00:10:244:1::/64"]);
        let plan = addressing::plan(&spec).unwrap();
        assert!(plan.pods.iter().all(|p| p.ipv6.is_some()));
    }

    #[test]
    fn given_ipv6_outside_the_node_cidr_names_the_pod() {
        let c = cluster(&DUAL_STACK.replace("fd00:10:9:1::5", "fd00:10:9:7::5"));
        let (spec, _) = plan_lab(&c, &RunOptions::default(), &[]).unwrap();
        let e = addressing::plan(&spec).unwrap_err().to_string();
        assert!(
            e.contains("pod x/a: ipv6 fd00:10:9:7::5 is outside podCIDR fd00:10:9:1::/64"),
            "{e}"
        );
        let two = cluster(&DUAL_STACK.replace("{ip: 10.9.1.5}", "{ip: \"fd00:10:9:1::6\"}"));
        let e = plan_lab(&two, &RunOptions::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Pod x/a: status.podIPs has two IPv6 addresses"),
            "{e}"
        );
    }

    #[test]
    fn dual_stack_addresses_are_written_into_the_model() {
        let c = cluster(DUAL_STACK);
        let lab = LabPod {
            namespace: "x".into(),
            name: "a".into(),
            node: "w1".into(),
            netns: super::super::Netns::new("kn-000000-p0-x.a"),
            ip: "10.9.1.5".parse().unwrap(),
            ipv6: Some("fd00:10:9:1::5".parse().unwrap()),
            ports: vec![],
            node_iface: "pod0".into(),
        };
        let pod = with_lab_addresses(c.pod(&"x/a".parse().unwrap()).unwrap().clone(), &lab);
        assert_eq!(
            cluster::pod_ips(&pod),
            vec![
                "10.9.1.5".parse::<IpAddr>().unwrap(),
                "fd00:10:9:1::5".parse().unwrap()
            ]
        );
        let node = topology::LabNode {
            name: "w1".into(),
            netns: super::super::Netns::new("kn-000000-n0-w1"),
            internal_ip: "172.31.0.10".parse().unwrap(),
            internal_ipv6: "fd00:31::a".parse().unwrap(),
            pod_cidr: "10.9.1.0/24".parse().unwrap(),
            pod_cidr_v6: Some("fd00:10:9:1::/64".parse().unwrap()),
        };
        let mut model = Cluster::default();
        model
            .insert(Object::Node(with_lab_node(None, &node)))
            .unwrap();
        let addrs: Vec<String> = model
            .node_addresses("w1")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["172.31.0.10", "fd00:31::a"]);
        let written = &model.nodes()["w1"];
        assert_eq!(
            written.spec.as_ref().unwrap().pod_cidrs.as_deref(),
            Some(&["10.9.1.0/24".to_string(), "fd00:10:9:1::/64".to_string()][..])
        );
    }

    #[test]
    fn lab_addresses_are_written_into_the_model() {
        let c = cluster(PODS);
        let lab = LabPod {
            namespace: "x".into(),
            name: "a".into(),
            node: "node-2".into(),
            netns: super::super::Netns::new("kn-000000-p0-x.a"),
            ip: "10.244.1.2".parse().unwrap(),
            ipv6: None,
            ports: vec![],
            node_iface: "pod0".into(),
        };
        let pod = with_lab_addresses(c.pod(&"x/a".parse().unwrap()).unwrap().clone(), &lab);
        assert_eq!(cluster::pod_node(&pod), Some("node-2"));
        assert_eq!(
            cluster::pod_ips(&pod),
            vec!["10.244.1.2".parse::<IpAddr>().unwrap()]
        );
        assert!(cluster::is_live(&pod));
    }
}

//! The explain engine: NetworkPolicy v1 semantics evaluated directly on the API
//! objects, with a walkthrough a person can read. This is the reference the
//! compiler and the kernel are checked against, so it shares nothing with the
//! compiler beyond the cluster model; see the module docs of [`crate::policy`]
//! for the decisions taken where upstream leaves room.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nft_crds::ir::Protocol;
use serde::Serialize;

use super::flow::{Endpoint, Family, Flow};
use crate::cluster::{self, Cluster, ObjectKey};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("pod {0} not found")]
    UnknownPod(ObjectKey),
    #[error("pod {0} has no IP (not scheduled or not started), so no traffic flows to or from it")]
    NoIp(ObjectKey),
    #[error("pod {0} is {1}; finished pods take no part in policy")]
    Terminal(ObjectKey, String),
    #[error("{0} and {1} have no IP address of the same family")]
    FamilyMismatch(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// What an endpoint is, as far as policy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// A live pod on the pod network: policies select and match it.
    Pod,
    /// A pod on the host network: never selected, matched only by ipBlock.
    HostNetworkPod,
    /// An address that is no pod's (outside the cluster, a node, a Service VIP…).
    External,
}

/// One end of a flow, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Party {
    /// `namespace/name` for pods, the IP otherwise.
    pub name: String,
    pub ip: IpAddr,
    pub role: Role,
    #[serde(skip)]
    pub key: Option<ObjectKey>,
}

impl Party {
    fn pod<'a>(&self, cluster: &'a Cluster) -> Option<&'a Pod> {
        self.key.as_ref().and_then(|k| cluster.pod(k))
    }
}

/// One line of the walkthrough, attributed to a policy when one is responsible.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub text: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "[NetworkPolicy {p}] {}", self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// The outcome for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Verdict {
    /// The endpoint is not a pod policies can select.
    NotApplicable,
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// Ingress from the pod's own node.
    FromOwnNode,
    #[serde(rename_all = "camelCase")]
    AllowedBy {
        policy: String,
        rule_index: usize,
        /// `None` when the rule has no peers (all sources/destinations).
        peer_index: Option<usize>,
    },
    Denied,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Verdict::Denied)
    }

    /// The same decision in IR terms: what the compiled ruleset must agree
    /// with, down to the policy rule that allowed the flow (both walk policies
    /// in name order and rules in index order).
    pub fn as_ir_decision(&self) -> super::ir_eval::IrDecision {
        use super::ir_eval::IrDecision;
        match self {
            Verdict::NotApplicable | Verdict::NotIsolated => IrDecision::NotIsolated,
            Verdict::FromOwnNode => IrDecision::FromOwnNode,
            Verdict::AllowedBy {
                policy, rule_index, ..
            } => IrDecision::Rule {
                policy: policy.clone(),
                rule_index: *rule_index,
            },
            Verdict::Denied => IrDecision::Denied,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectionReport {
    pub direction: Direction,
    /// The pod whose policies decide this direction (source for egress,
    /// destination for ingress).
    pub subject: String,
    pub selected_by: Vec<String>,
    pub verdict: Verdict,
    pub steps: Vec<Step>,
}

/// The verdict on a flow with both halves of the walkthrough.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub from: Party,
    pub to: Party,
    pub protocol: Protocol,
    pub port: u16,
    pub egress: DirectionReport,
    pub ingress: DirectionReport,
    pub allowed: bool,
    pub notes: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}) → {} ({}) on {}/{}",
            self.from.name, self.from.ip, self.to.name, self.to.ip, self.protocol, self.port
        )?;
        for d in [&self.egress, &self.ingress] {
            writeln!(f, "{} at {}:", d.direction, d.subject)?;
            for s in &d.steps {
                writeln!(f, "  {s}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(f, "{}", if self.allowed { "ALLOWED" } else { "DROPPED" })
    }
}

/// Decides `flow`: egress at the source, then ingress at the destination.
pub fn explain_flow(cluster: &Cluster, flow: &Flow) -> Result<Explanation, ExplainError> {
    let (from, to) = resolve_pair(cluster, &flow.from, &flow.to)?;
    let (protocol, port) = (flow.protocol, flow.port);
    let egress = decide(cluster, Direction::Egress, &from, &to, protocol, port);
    let ingress = decide(cluster, Direction::Ingress, &to, &from, protocol, port);
    let mut notes = Vec::new();
    if let Some(pod) = to.pod(cluster) {
        let declared = cluster::container_ports(pod).any(|(_, p, n)| p == protocol && n == port);
        if !declared {
            notes.push(format!(
                "{} declares no container port {protocol}/{port}; the verdict is policy's \
                 alone and does not depend on whether anything listens",
                to.name
            ));
        }
    }
    Ok(Explanation {
        allowed: egress.verdict.allowed() && ingress.verdict.allowed(),
        from,
        to,
        protocol,
        port,
        egress,
        ingress,
        notes,
    })
}

/// Resolves both ends and picks addresses of one family.
fn resolve_pair(
    cluster: &Cluster,
    from: &Endpoint,
    to: &Endpoint,
) -> Result<(Party, Party), ExplainError> {
    let (src_ips, src) = resolve(cluster, from)?;
    let (dst_ips, dst) = resolve(cluster, to)?;
    for d in &dst_ips {
        if let Some(s) = src_ips.iter().find(|s| s.is_ipv4() == d.is_ipv4()) {
            return Ok((Party { ip: *s, ..src }, Party { ip: *d, ..dst }));
        }
    }
    Err(ExplainError::FamilyMismatch(src.name, dst.name))
}

/// An endpoint's candidate IPs and a party template (its `ip` is a placeholder).
fn resolve(cluster: &Cluster, endpoint: &Endpoint) -> Result<(Vec<IpAddr>, Party), ExplainError> {
    match endpoint {
        Endpoint::Pod(key) => {
            let pod = cluster
                .pod(key)
                .ok_or_else(|| ExplainError::UnknownPod(key.clone()))?;
            if let Some(phase @ ("Succeeded" | "Failed")) =
                pod.status.as_ref().and_then(|s| s.phase.as_deref())
            {
                return Err(ExplainError::Terminal(key.clone(), phase.to_string()));
            }
            let ips = cluster::pod_ips(pod);
            let Some(first) = ips.first().copied() else {
                return Err(ExplainError::NoIp(key.clone()));
            };
            let role = if cluster::is_host_network(pod) {
                Role::HostNetworkPod
            } else {
                Role::Pod
            };
            Ok((
                ips,
                Party {
                    name: key.to_string(),
                    ip: first,
                    role,
                    key: Some(key.clone()),
                },
            ))
        }
        Endpoint::Ip(ip) => {
            let party = match cluster.pod_by_ip(*ip) {
                Some((key, _)) => Party {
                    name: key.to_string(),
                    ip: *ip,
                    role: Role::Pod,
                    key: Some(key.clone()),
                },
                None => Party {
                    name: ip.to_string(),
                    ip: *ip,
                    role: Role::External,
                    key: None,
                },
            };
            Ok((vec![*ip], party))
        }
    }
}

/// Policy types in effect: as listed, or by the API's defaulting (Ingress
/// always, Egress when the policy has egress rules).
pub fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &policy.spec else {
        return (true, false);
    };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// Label selector semantics: matchLabels AND every matchExpression; the empty
/// selector matches everything.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|req| {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // Rejected by validation; an unknown operator selects nothing.
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Does `policy` select `pod` (a live pod-network pod) for `direction`?
fn selects(
    policy_key: &ObjectKey,
    policy: &NetworkPolicy,
    pod_key: &ObjectKey,
    pod: &Pod,
    direction: Direction,
) -> bool {
    if policy_key.namespace != pod_key.namespace || !cluster::is_policy_peer(pod) {
        return false;
    }
    let (ingress, egress) = policy_types(policy);
    let wanted = match direction {
        Direction::Ingress => ingress,
        Direction::Egress => egress,
    };
    let empty = LabelSelector::default();
    let sel = policy
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref())
        .unwrap_or(&empty);
    wanted && selector_matches(sel, &cluster::pod_labels(pod))
}

/// The policies selecting `pod` for `direction`, in namespace/name order.
pub fn selecting_policies<'a>(
    cluster: &'a Cluster,
    pod_key: &ObjectKey,
    direction: Direction,
) -> Vec<(&'a ObjectKey, &'a NetworkPolicy)> {
    let Some(pod) = cluster.pod(pod_key) else {
        return Vec::new();
    };
    cluster
        .policies_in(&pod_key.namespace)
        .filter(|(k, p)| selects(k, p, pod_key, pod, direction))
        .collect()
}

/// Does one peer entry of a policy in `policy_ns` match `remote`?
fn peer_matches(
    cluster: &Cluster,
    policy_ns: &str,
    peer: &NetworkPolicyPeer,
    remote: &Party,
) -> bool {
    if let Some(block) = &peer.ip_block {
        let inside = |s: &str| s.parse::<IpNet>().is_ok_and(|n| n.contains(&remote.ip));
        return inside(&block.cidr) && !block.except.iter().flatten().any(|e| inside(e));
    }
    if remote.role != Role::Pod {
        return false;
    }
    let (Some(key), Some(pod)) = (&remote.key, remote.pod(cluster)) else {
        return false;
    };
    let ns_ok = match &peer.namespace_selector {
        None => key.namespace == policy_ns,
        Some(sel) => selector_matches(sel, &cluster.namespace_labels(&key.namespace)),
    };
    let pod_ok = match &peer.pod_selector {
        None => true,
        Some(sel) => selector_matches(sel, &cluster::pod_labels(pod)),
    };
    (peer.pod_selector.is_some() || peer.namespace_selector.is_some()) && ns_ok && pod_ok
}

/// Does one port entry cover (protocol, port)? Named ports resolve against
/// `port_owner`, the destination pod, if it is one.
fn port_matches(
    entry: &NetworkPolicyPort,
    protocol: Protocol,
    port: u16,
    port_owner: Option<&Pod>,
) -> bool {
    let entry_proto = entry
        .protocol
        .as_deref()
        .map_or(Some(Protocol::Tcp), Protocol::parse);
    if entry_proto != Some(protocol) {
        return false;
    }
    match &entry.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = entry.end_port.unwrap_or(*n);
            (*n..=end).contains(&i32::from(port))
        }
        Some(IntOrString::String(name)) => {
            port_owner.and_then(|pod| cluster::named_port(pod, name, protocol)) == Some(port)
        }
    }
}

/// Decides one direction at `subject` (the source for egress, the destination
/// for ingress) against `remote`.
fn decide(
    cluster: &Cluster,
    direction: Direction,
    subject: &Party,
    remote: &Party,
    protocol: Protocol,
    port: u16,
) -> DirectionReport {
    let mut steps = Vec::new();
    let report = |selected_by, verdict, steps| DirectionReport {
        direction,
        subject: subject.name.clone(),
        selected_by,
        verdict,
        steps,
    };
    let key = match (subject.role, &subject.key) {
        (Role::Pod, Some(key)) => key,
        (Role::HostNetworkPod, _) => {
            steps.push(step(None, format!(
                "{} uses the host network; NetworkPolicy does not select host-network pods → allowed",
                subject.name
            )));
            return report(vec![], Verdict::NotApplicable, steps);
        }
        _ => {
            steps.push(step(
                None,
                format!(
                    "{} is not a pod; no {direction} policy applies → allowed",
                    subject.name
                ),
            ));
            return report(vec![], Verdict::NotApplicable, steps);
        }
    };
    let policies = selecting_policies(cluster, key, direction);
    let selected_by: Vec<String> = policies.iter().map(|(k, _)| k.to_string()).collect();
    if policies.is_empty() {
        steps.push(step(
            None,
            format!(
                "no NetworkPolicy selects {} for {direction} → not isolated → allowed",
                subject.name
            ),
        ));
        return report(selected_by, Verdict::NotIsolated, steps);
    }
    for (k, _) in &policies {
        steps.push(step(
            Some(k),
            format!("isolates {} for {direction}", subject.name),
        ));
    }
    if direction == Direction::Ingress {
        let node = subject.pod(cluster).and_then(cluster::pod_node);
        if let Some(node) = node {
            if cluster.node_addresses(node).contains(&remote.ip) {
                steps.push(step(None, format!(
                    "{} is an address of {}'s own node {node}; a node may always reach its pods → allowed",
                    remote.ip, subject.name
                )));
                return report(selected_by, Verdict::FromOwnNode, steps);
            }
        }
    }
    // Named ports belong to the destination: the subject for ingress, the
    // remote pod for egress.
    let port_owner = match direction {
        Direction::Ingress => subject.pod(cluster),
        Direction::Egress => (remote.role == Role::Pod)
            .then(|| remote.pod(cluster))
            .flatten(),
    };
    for (k, policy) in &policies {
        let Some(spec) = &policy.spec else { continue };
        let rules = rules_of(spec, direction);
        if rules.is_empty() {
            steps.push(step(
                Some(k),
                format!("has no {direction} rules (allows nothing)"),
            ));
        }
        for (i, RuleView { peers, ports }) in rules.into_iter().enumerate() {
            if !ports.is_empty()
                && !ports
                    .iter()
                    .any(|p| port_matches(p, protocol, port, port_owner))
            {
                steps.push(step(
                    Some(k),
                    format!(
                        "{direction} rule #{i}: ports {} do not cover {protocol}/{port}",
                        describe_ports(ports, port_owner)
                    ),
                ));
                continue;
            }
            let matched = if peers.is_empty() {
                Some(None)
            } else {
                peers
                    .iter()
                    .position(|p| peer_matches(cluster, &k.namespace, p, remote))
                    .map(Some)
            };
            let Some(peer_index) = matched else {
                steps.push(step(
                    Some(k),
                    format!("{direction} rule #{i}: no peer matches {}", remote.name),
                ));
                continue;
            };
            let whom = match peer_index {
                None => format!(
                    "{} (the rule allows {})",
                    remote.name,
                    if direction == Direction::Ingress {
                        "all sources"
                    } else {
                        "all destinations"
                    }
                ),
                Some(p) => format!(
                    "{} (peer #{p}: {})",
                    remote.name,
                    describe_peer(&peers[p], &k.namespace)
                ),
            };
            steps.push(step(
                Some(k),
                format!("{direction} rule #{i} allows {whom} on {protocol}/{port} → allowed"),
            ));
            return report(
                selected_by,
                Verdict::AllowedBy {
                    policy: k.to_string(),
                    rule_index: i,
                    peer_index,
                },
                steps,
            );
        }
    }
    steps.push(step(
        None,
        format!(
            "→ no {direction} rule allows {} on {protocol}/{port} → denied",
            remote.name
        ),
    ));
    report(selected_by, Verdict::Denied, steps)
}

/// One ingress or egress rule: its peers (`from`/`to`) and ports, absent
/// lists read as empty (both mean "all").
struct RuleView<'a> {
    peers: &'a [NetworkPolicyPeer],
    ports: &'a [NetworkPolicyPort],
}

fn rules_of(spec: &NetworkPolicySpec, direction: Direction) -> Vec<RuleView<'_>> {
    match direction {
        Direction::Ingress => spec
            .ingress
            .iter()
            .flatten()
            .map(|r| RuleView {
                peers: r.from.as_deref().unwrap_or_default(),
                ports: r.ports.as_deref().unwrap_or_default(),
            })
            .collect(),
        Direction::Egress => spec
            .egress
            .iter()
            .flatten()
            .map(|r| RuleView {
                peers: r.to.as_deref().unwrap_or_default(),
                ports: r.ports.as_deref().unwrap_or_default(),
            })
            .collect(),
    }
}

fn step(policy: Option<&ObjectKey>, text: String) -> Step {
    Step {
        policy: policy.map(ToString::to_string),
        text,
    }
}

/// `app=web, tier in (a, b), !legacy`; `all` for the empty selector.
pub fn describe_selector(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for req in sel.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default().join(", ");
        parts.push(match req.operator.as_str() {
            "In" => format!("{} in ({values})", req.key),
            "NotIn" => format!("{} notin ({values})", req.key),
            "Exists" => req.key.clone(),
            "DoesNotExist" => format!("!{}", req.key),
            other => format!("{} {other} ({values})", req.key),
        });
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(", ")
    }
}

/// A peer in words.
pub fn describe_peer(peer: &NetworkPolicyPeer, policy_ns: &str) -> String {
    if let Some(b) = &peer.ip_block {
        let except = b.except.as_deref().unwrap_or_default();
        return if except.is_empty() {
            format!("IPs in {}", b.cidr)
        } else {
            format!("IPs in {} except {}", b.cidr, except.join(", "))
        };
    }
    let pods = match &peer.pod_selector {
        Some(s) if s != &LabelSelector::default() => format!("pods with {}", describe_selector(s)),
        _ => "all pods".into(),
    };
    let ns = match &peer.namespace_selector {
        None => format!("in namespace {policy_ns}"),
        Some(s) if s == &LabelSelector::default() => "in all namespaces".into(),
        Some(s) => format!("in namespaces with {}", describe_selector(s)),
    };
    format!("{pods} {ns}")
}

/// Port entries in words: `TCP/80, TCP/8000-8080, TCP/http (=8080), UDP/any`.
/// Named ports show what they resolve to on `port_owner`, the destination pod.
pub fn describe_ports(ports: &[NetworkPolicyPort], port_owner: Option<&Pod>) -> String {
    if ports.is_empty() {
        return "any port".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match (&p.port, p.end_port) {
                (None, _) => format!("{proto}/any"),
                (Some(IntOrString::Int(n)), Some(end)) => format!("{proto}/{n}-{end}"),
                (Some(IntOrString::Int(n)), None) => format!("{proto}/{n}"),
                (Some(IntOrString::String(s)), _) => {
                    let resolved = Protocol::parse(proto)
                        .zip(port_owner)
                        .map(|(p, pod)| cluster::named_port(pod, s, p));
                    match resolved {
                        None => format!("{proto}/{s}"),
                        Some(Some(n)) => format!("{proto}/{s} (={n})"),
                        Some(None) => format!("{proto}/{s} (not declared: matches nothing)"),
                    }
                }
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// explain pod

/// What one rule allows, in words, with the pods it matches right now.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSummary {
    pub policy: String,
    pub rule_index: usize,
    pub text: String,
    pub current_pods: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDirection {
    pub direction: Direction,
    pub isolated_by: Vec<String>,
    pub rules: Vec<RuleSummary>,
}

/// `explain pod`: which policies select a pod and what they allow.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub pod: String,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub node_addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub role: Role,
    pub ingress: PodDirection,
    pub egress: PodDirection,
}

pub fn explain_pod(cluster: &Cluster, key: &ObjectKey) -> Result<PodReport, ExplainError> {
    let (ips, party) = resolve(cluster, &Endpoint::Pod(key.clone()))?;
    let pod = cluster
        .pod(key)
        .ok_or_else(|| ExplainError::UnknownPod(key.clone()))?;
    let node = cluster::pod_node(pod).map(str::to_string);
    let direction = |d: Direction| {
        let policies = selecting_policies(cluster, key, d);
        let mut rules = Vec::new();
        for (pk, policy) in &policies {
            let Some(spec) = &policy.spec else { continue };
            let list = rules_of(spec, d);
            // Ingress named ports resolve on this pod; egress ones per peer.
            let owner = (d == Direction::Ingress).then_some(pod);
            for (i, RuleView { peers, ports }) in list.into_iter().enumerate() {
                let (text, current_pods) = if peers.is_empty() {
                    (
                        format!(
                            "{} anywhere on {}",
                            if d == Direction::Ingress {
                                "from"
                            } else {
                                "to"
                            },
                            describe_ports(ports, owner)
                        ),
                        Vec::new(),
                    )
                } else {
                    let words: Vec<String> = peers
                        .iter()
                        .map(|p| describe_peer(p, &pk.namespace))
                        .collect();
                    let mut now = BTreeSet::new();
                    for (other_key, other) in cluster.pods() {
                        if other_key == key || !cluster::is_policy_peer(other) {
                            continue;
                        }
                        for ip in cluster::pod_ips(other) {
                            let remote = Party {
                                name: other_key.to_string(),
                                ip,
                                role: Role::Pod,
                                key: Some(other_key.clone()),
                            };
                            if peers
                                .iter()
                                .any(|p| peer_matches(cluster, &pk.namespace, p, &remote))
                            {
                                now.insert(other_key.to_string());
                            }
                        }
                    }
                    (
                        format!(
                            "{} {} on {}",
                            if d == Direction::Ingress {
                                "from"
                            } else {
                                "to"
                            },
                            words.join(" or "),
                            describe_ports(ports, owner)
                        ),
                        now.into_iter().collect(),
                    )
                };
                rules.push(RuleSummary {
                    policy: pk.to_string(),
                    rule_index: i,
                    text,
                    current_pods,
                });
            }
        }
        PodDirection {
            direction: d,
            isolated_by: policies.iter().map(|(k, _)| k.to_string()).collect(),
            rules,
        }
    };
    Ok(PodReport {
        pod: key.to_string(),
        ips,
        node_addresses: node
            .as_deref()
            .map(|n| cluster.node_addresses(n))
            .unwrap_or_default(),
        node,
        labels: cluster::pod_labels(pod),
        role: party.role,
        ingress: direction(Direction::Ingress),
        egress: direction(Direction::Egress),
    })
}

impl fmt::Display for PodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
        write!(f, "Pod {} ({})", self.pod, ips.join(", "))?;
        if let Some(n) = &self.node {
            write!(f, " on node {n}")?;
        }
        writeln!(f)?;
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            f,
            "  labels: {}",
            if labels.is_empty() {
                "(none)".into()
            } else {
                labels.join(", ")
            }
        )?;
        if self.role == Role::HostNetworkPod {
            writeln!(f, "It uses the host network: no NetworkPolicy selects it; its traffic carries the node's address and only ipBlock peers match it.")?;
            return Ok(());
        }
        for d in [&self.ingress, &self.egress] {
            let (verb, anyone) = match d.direction {
                Direction::Ingress => ("may reach it", "Anything may reach it"),
                Direction::Egress => ("it may reach", "It may reach anything"),
            };
            if d.isolated_by.is_empty() {
                writeln!(
                    f,
                    "{}: not isolated (no NetworkPolicy selects it for {}). {anyone}.",
                    title(d.direction),
                    d.direction
                )?;
                continue;
            }
            writeln!(
                f,
                "{}: isolated by {}.",
                title(d.direction),
                d.isolated_by
                    .iter()
                    .map(|p| format!("[NetworkPolicy {p}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            if d.rules.is_empty() {
                writeln!(
                    f,
                    "  No rule allows anything: nothing {verb}{}.",
                    if d.direction == Direction::Ingress {
                        " except its own node"
                    } else {
                        ""
                    }
                )?;
            } else {
                writeln!(f, "  Only this {verb}:")?;
                for r in &d.rules {
                    write!(
                        f,
                        "  - [NetworkPolicy {}] rule #{}: {}",
                        r.policy, r.rule_index, r.text
                    )?;
                    if !r.current_pods.is_empty() {
                        write!(f, " (now: {})", r.current_pods.join(", "))?;
                    }
                    writeln!(f)?;
                }
            }
            if d.direction == Direction::Ingress {
                let addrs: Vec<String> = self
                    .node_addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                writeln!(
                    f,
                    "  Its own node{} may always reach it.",
                    if addrs.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", addrs.join(", "))
                    }
                )?;
            }
        }
        Ok(())
    }
}

fn title(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    }
}

// ---------------------------------------------------------------------------
// explain matrix

/// The pod-to-pod truth table. Serializes to the contract shared with the lab:
/// `{"probes":[{"protocol":"TCP","port":80,"to":"pod","results":[{"from":"x/a","to":"y/b","allowed":true}]}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub protocol: Protocol,
    pub port: u16,
    /// What is probed: `pod` (Services come later).
    pub to: String,
    pub results: Vec<ProbeResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub allowed: bool,
}

/// Every (port, protocol) that live pods declare, sorted by port then protocol.
pub fn declared_ports(cluster: &Cluster) -> Vec<(Protocol, u16)> {
    let mut set = BTreeSet::new();
    for pod in cluster.pods().values().filter(|p| cluster::is_live(p)) {
        for (_, proto, port) in cluster::container_ports(pod) {
            set.insert((port, proto));
        }
    }
    set.into_iter().map(|(port, proto)| (proto, port)).collect()
}

/// Verdicts for every ordered pair of distinct live pods (host-network pods
/// included) on each probe, in from/to name order. A pod's traffic to itself is
/// not a policy question and is left out; so are pairs without a common family.
pub fn matrix(cluster: &Cluster, probes: &[(Protocol, u16)]) -> Matrix {
    matrix_for(cluster, probes, None)
}

/// The truth table over one address family: each pair is judged between the
/// two pods' addresses of `family`, and pairs where either pod has none are left
/// out. Without a family, each pair is judged the way `explain flow` judges two
/// pods (the first family both have).
pub fn matrix_for(cluster: &Cluster, probes: &[(Protocol, u16)], family: Option<Family>) -> Matrix {
    let pods: Vec<(&ObjectKey, &Pod)> = cluster
        .pods()
        .iter()
        .filter(|(_, p)| cluster::is_live(p))
        .collect();
    let endpoint = |key: &ObjectKey, pod: &Pod| -> Option<Endpoint> {
        match family {
            None => Some(Endpoint::Pod(key.clone())),
            Some(family) => cluster::pod_ips(pod)
                .into_iter()
                .find(|ip| family.has(ip))
                .map(Endpoint::Ip),
        }
    };
    let probes = probes
        .iter()
        .map(|&(protocol, port)| {
            let mut results = Vec::new();
            for (from, from_pod) in &pods {
                for (to, to_pod) in &pods {
                    if from == to {
                        continue;
                    }
                    let (Some(src), Some(dst)) = (endpoint(from, from_pod), endpoint(to, to_pod))
                    else {
                        continue;
                    };
                    let flow = Flow {
                        from: src,
                        to: dst,
                        protocol,
                        port,
                    };
                    if let Ok(e) = explain_flow(cluster, &flow) {
                        results.push(ProbeResult {
                            from: from.to_string(),
                            to: to.to_string(),
                            allowed: e.allowed,
                        });
                    }
                }
            }
            Probe {
                protocol,
                port,
                to: "pod".into(),
                results,
            }
        })
        .collect();
    Matrix { probes }
}

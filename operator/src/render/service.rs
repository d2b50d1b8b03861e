//! Service NAT → nftables: a node's [`NodeServices`] becomes the NAT part of
//! the `inet kube-nft` table. Every object is prefixed `svc-` or `nat-` (the
//! regular chain is `services`), so it never meets the policy part's names.
//!
//! # Layout
//!
//! ```text
//! nat-prerouting (nat, prerouting, dstnat -100) ─┐
//! nat-output     (nat, output,     dstnat -100) ─┴─ jump services
//! services
//!   ip daddr . meta l4proto . th dport @svc-masq-v4 meta mark set meta mark | 0x4000
//!   ip saddr != @svc-cluster-cidrs-v4 ip daddr . meta l4proto . th dport @svc-cluster-ips-v4 meta mark set …
//!   meta l4proto @svc-l4protos dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @svc-affinity-v4
//!   ct mark set ip daddr . meta l4proto . th dport map @svc-count-v4          ; frontend → group id
//!   ip daddr @svc-node-addrs-v4 ct mark set meta l4proto . th dport map @svc-np-count-v4
//!   ip saddr @svc-cluster-cidrs-v4 ct mark set ip daddr . meta l4proto . th dport map @svc-int-count-v4
//!                  ; pods reaching an externalTrafficPolicy Local address: all endpoints
//!   (the same for ip6)
//!   ct mark vmap @svc-groups                                                 ; group id → goto its chain
//! svc-group-eps-v4-N / svc-group-np-v4-N        one per endpoint-count group
//!   meta l4proto @svc-l4protos dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map @svc-eps-v4-N
//! nat-postrouting (nat, postrouting, srcnat 100)
//!   meta l4proto tcp ct status dnat ct original ip daddr . meta l4proto . ct original proto-dst @svc-aff-v4-T
//!       update @svc-affinity-v4 { ip saddr . ct original ip daddr . meta l4proto . ct original proto-dst timeout T : ip daddr . th dport }
//!   ct status dnat ip saddr . ip daddr @svc-hairpin-v4 masquerade
//!   meta mark & 0x4000 != 0 masquerade fully-random
//!   ip saddr @svc-cluster-cidrs-v4 ip daddr != @svc-no-masq-v4 masquerade fully-random
//! svc-filter-input / -forward / -output (filter, priority -10: before policy)
//!   ct state new meta l4proto tcp ip daddr . meta l4proto . th dport @svc-reject-v4 reject with tcp reset
//!   ct state new ip daddr . meta l4proto . th dport @svc-reject-v4 reject with icmpx port-unreachable
//!   ct state new ip daddr . meta l4proto . th dport @svc-drop-v4 drop
//! svc-firewall-prerouting / -output (filter, priority -110: before DNAT)
//!   ip daddr . meta l4proto . th dport @svc-fw-v4 ip daddr . meta l4proto . th dport . ip saddr != @svc-fw-allow-v4 drop
//! ```
//!
//! # Why this shape (measured, see `docs/DESIGN.md` and the nftables notes)
//!
//! - **Endpoint choice is grouped by endpoint count N**, as in
//!   `e2e/src/ruleset.rs`: one map per (family, N), keyed `vip . proto . port .
//!   numgen random mod N`, one DNAT rule per map in the group's own chain. No
//!   chain per Service or endpoint, no map per Service (the kernel keeps a
//!   table's sets in a list), and no verdict element per Service (adding a
//!   `jump`/`goto` element makes the kernel re-validate the table): a Service
//!   change is element adds and deletes in existing maps; a new N adds one
//!   map, one chain and one `svc-groups` element.
//! - **Dispatch by group id**, the class-id trick of the policy part: a data
//!   map `frontend → group id` stores the id in the conntrack mark (NAT sees
//!   only a connection's first packet, whose ct mark is 0), and one verdict
//!   map `group id → goto` the group's chain. A new connection costs the same
//!   few lookups however many endpoint counts exist (measured: with one DNAT
//!   rule per count in one chain, 100 distinct counts cost 17% of the
//!   connection rate). Group ids have bit 30 set, which NetworkPolicy class
//!   ids never have, so the id a DNATed connection carries into the filter
//!   hooks never dispatches a policy chain. External
//!   frontends under `externalTrafficPolicy: Local` have their own (local)
//!   endpoint list, so they land in the group of their own N.
//! - `meta l4proto @svc-l4protos` is only there for `nft`: it refuses a NAT
//!   port without a protocol match, and accepts a set of protocols (1.0.6);
//!   the map key holds the protocol, so the match decides nothing.
//! - **Masquerade by a mark bit** set before DNAT (DNAT ends the chain: it is
//!   a terminal statement), for frontends that always masquerade (external
//!   traffic, policy Cluster) and for off-cluster clients of ClusterIPs.
//!   Hairpin (a pod reaching itself through its Service) cannot be known
//!   before the endpoint is chosen, and nft cannot compare two fields, so
//!   postrouting looks `saddr . daddr` up in a set of `ep . ep` pairs of local
//!   endpoints.
//! - **Session affinity without per-endpoint chains**: a dynamic map per
//!   family, `client . vip . proto . port → endpoint . port`, consulted before
//!   the random choice, and recorded in postrouting from the conntrack
//!   original tuple, once per new connection (nat chains see only the first
//!   packet of a connection), which refreshes the entry's timeout as
//!   kube-proxy's `recent` match does. `ct original proto-dst` has a type in
//!   `nft` only after `meta l4proto <one protocol>`, so the record rules are
//!   per (family, timeout, protocol), guarded by a set of the frontends with
//!   that timeout. Stale entries (an endpoint left) would keep steering
//!   clients to it until the timeout: [`stale_affinity`] finds them for the
//!   agent to delete. IPv6: the kernel takes the 40-byte key and 20-byte data
//!   (4-byte registers), but `nft` 1.0.6 aborts on any IPv6 dynamic map
//!   update with concatenated data (an assertion in its register allocator,
//!   checked in a network namespace), so the rendered *text* of a table with
//!   IPv6 affinity does not load with that `nft`; netlink does.
//! - **Reject at once** for Service ports with no endpoint, **drop** for local
//!   traffic policies without a local endpoint, in filter chains at priority
//!   -10: after DNAT (a Service with endpoints never matches, its packets
//!   already carry an endpoint address) and before NetworkPolicy (0).
//! - **`loadBalancerSourceRanges`** before DNAT (priority -110), while the
//!   destination is still the load balancer IP: a firewalled frontend
//!   (`svc-fw-*`) drops sources whose `vip . proto . port . saddr` is not in
//!   the interval set `svc-fw-allow-*`.
//!
//! Everything but the group maps, their rules and the per-timeout affinity
//! record rules exists whatever the Services, so base chains never change
//! after start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use kube_nft_crds::ir::Protocol;
use nft::{
    ct_state, ct_status, BaseChain, Chain, ChainPolicy, ChainType, DataType, ElemData, ElemKey,
    ElemValue, Expr, Field, Hook, KeyPart, MapKey, MatchOp, NatFamily, NatTarget, RejectKind, Rhs,
    Rule, Set, SetData, SetFlags, SetUpdateOp, Table, Value, Verdict,
};

use super::intervals;
use super::names::comment;
use super::values::{ip_value, proto_number};
use crate::service::{
    Backend, Endpoint, Entry, FrontendKind, IpFamily, Masquerade, NodeServices, ServiceConfig,
};

/// The regular chain both NAT base chains jump to.
pub const SERVICES: &str = "services";
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";
/// Reject/drop chains, after DNAT and before NetworkPolicy.
pub const FILTER_CHAINS: [(&str, Hook); 3] = [
    ("svc-filter-input", Hook::Input),
    ("svc-filter-forward", Hook::Forward),
    ("svc-filter-output", Hook::Output),
];
/// `loadBalancerSourceRanges` chains, before DNAT.
pub const FIREWALL_CHAINS: [(&str, Hook); 2] = [
    ("svc-firewall-prerouting", Hook::Prerouting),
    ("svc-firewall-output", Hook::Output),
];
/// The constant set `{ tcp, udp, sctp }` (see the module doc).
pub const L4PROTOS: &str = "svc-l4protos";

const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER_PRIORITY: i32 = -10;
const FIREWALL_PRIORITY: i32 = DSTNAT - 10;

/// `svc-eps-v4-3`: ClusterIP, LoadBalancer and external-IP frontends with 3
/// endpoints.
pub fn eps_map(fam: IpFamily, n: u32) -> String {
    format!("svc-eps-{}-{n}", fam.suffix())
}

/// `svc-np-v4-3`: NodePorts with 3 endpoints.
pub fn nodeport_map(fam: IpFamily, n: u32) -> String {
    format!("svc-np-{}-{n}", fam.suffix())
}

/// `svc-group-eps-v4-3` / `svc-group-np-v4-3`: the chain holding the DNAT
/// rule of one endpoint-count group.
pub fn group_chain(fam: IpFamily, n: u32, nodeport: bool) -> String {
    let kind = if nodeport { "np" } else { "eps" };
    format!("svc-group-{kind}-{}-{n}", fam.suffix())
}

/// `svc-count-v4` / `svc-np-count-v4`: frontend → the id of its endpoint-count
/// group (a data map: no verdict, so a Service change never re-validates the
/// table).
pub fn count_map(fam: IpFamily, nodeport: bool) -> String {
    let kind = if nodeport { "np-count" } else { "count" };
    format!("svc-{kind}-{}", fam.suffix())
}

/// `svc-int-count-v4`: for clients inside the cluster, an external frontend
/// of an `externalTrafficPolicy: Local` Service → the group id of the
/// endpoints they reach (as through the ClusterIP).
pub fn int_count_map(fam: IpFamily) -> String {
    format!("svc-int-count-{}", fam.suffix())
}

/// `svc-groups`: group id → `goto` its chain, one element per group.
pub const GROUPS: &str = "svc-groups";

/// Bit 30 marks a Service group id in the conntrack mark. NetworkPolicy class
/// ids never have it (see [`super::policy::class_id`]), so neither side can
/// dispatch on the other's id.
pub const GROUP_ID_BIT: u32 = 0x4000_0000;

/// The conntrack-mark id of group (family, N, NodePort?): bit 30, a bit each
/// for IPv6 and NodePort, and N below.
pub fn group_id(fam: IpFamily, n: u32, nodeport: bool) -> u32 {
    let v6 = if fam == IpFamily::V6 { 0x2000_0000 } else { 0 };
    let np = if nodeport { 0x1000_0000 } else { 0 };
    GROUP_ID_BIT | v6 | np | (n & 0x0fff_ffff)
}

/// `svc-affinity-v4`: the dynamic map of sticky clients.
pub fn affinity_map(fam: IpFamily) -> String {
    format!("svc-affinity-{}", fam.suffix())
}

/// `svc-aff-v4-10800`: frontends whose affinity timeout is 10800 s.
pub fn affinity_frontends(fam: IpFamily, timeout: Duration) -> String {
    format!("svc-aff-{}-{}", fam.suffix(), timeout.as_secs())
}

/// `svc-<what>-v4` for the fixed sets.
pub fn fixed_set(what: &str, fam: IpFamily) -> String {
    format!("svc-{what}-{}", fam.suffix())
}

const NODE_ADDRS: &str = "node-addrs";
const MASQ: &str = "masq";
const CLUSTER_IPS: &str = "cluster-ips";
const CLUSTER_CIDRS: &str = "cluster-cidrs";
const NO_MASQ: &str = "no-masq";
const HAIRPIN: &str = "hairpin";
const REJECT: &str = "reject";
const DROP: &str = "drop";
const FW: &str = "fw";
const FW_ALLOW: &str = "fw-allow";

fn original_daddr(fam: IpFamily) -> Field {
    match fam {
        IpFamily::V4 => Field::CtOriginalIpDaddr,
        IpFamily::V6 => Field::CtOriginalIp6Daddr,
    }
}

fn nat_family(fam: IpFamily) -> NatFamily {
    match fam {
        IpFamily::V4 => NatFamily::Ip,
        IpFamily::V6 => NatFamily::Ip6,
    }
}

fn v(x: Value) -> KeyPart {
    KeyPart::Value(x)
}

fn commented(text: &str) -> ElemValue {
    ElemValue {
        comment: Some(comment(text)),
        ..Default::default()
    }
}

fn endpoint_value(e: &Endpoint, label: &str) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Values(vec![
            ip_value(&e.addr),
            Value::Port(e.port),
        ])),
        timeout: None,
        comment: Some(comment(label)),
    }
}

/// Frontend key parts: `addr . proto . port`.
fn frontend_key(addr: &IpAddr, proto: Protocol, port: u16) -> ElemKey {
    vec![
        v(ip_value(addr)),
        v(Value::Proto(proto_number(proto))),
        v(Value::Port(port)),
    ]
}

/// The addresses a frontend listens on: its own, or every node address of
/// its family for a NodePort.
fn frontend_addrs(e: &Entry, services: &NodeServices) -> Vec<IpAddr> {
    match e.frontend.addr {
        Some(a) => vec![a],
        None => services
            .node_addresses
            .iter()
            .filter(|a| IpFamily::of(a) == e.frontend.family)
            .copied()
            .collect(),
    }
}

/// The frontends sharing one affinity timeout (elements of `svc-aff-*`) and
/// the protocols they use (one record rule each).
type AffinityGroup = (BTreeMap<ElemKey, ElemValue>, BTreeSet<Protocol>);

/// The elements of each set, gathered from the entries before the table is
/// assembled.
#[derive(Default)]
struct Content {
    /// Group maps by (family, N, nodeport?).
    groups: BTreeMap<(IpFamily, u32, bool), BTreeMap<ElemKey, ElemValue>>,
    /// Count maps by (family, nodeport?): frontend key → group id.
    counts: BTreeMap<(IpFamily, bool), BTreeMap<ElemKey, ElemValue>>,
    /// In-cluster count maps by family: external frontend → group id of its
    /// `internal_endpoints`.
    int_counts: BTreeMap<IpFamily, BTreeMap<ElemKey, ElemValue>>,
    /// Fixed sets by name.
    sets: BTreeMap<String, BTreeMap<ElemKey, ElemValue>>,
    /// Affinity frontends by (family, timeout), with the protocols they use.
    affinity: BTreeMap<(IpFamily, Duration), AffinityGroup>,
    /// Allowed source ranges per firewalled frontend, merged later.
    firewall: BTreeMap<(IpFamily, ElemKey), (Vec<IpNet>, String)>,
}

impl Content {
    fn add(&mut self, set: String, key: ElemKey, value: ElemValue) {
        self.sets.entry(set).or_default().insert(key, value);
    }

    fn entry(&mut self, e: &Entry, services: &NodeServices) {
        let fam = e.frontend.family;
        let (proto, port) = (e.frontend.protocol, e.frontend.port);
        let label = e.label();
        let addrs = frontend_addrs(e, services);
        let keys: Vec<ElemKey> = addrs.iter().map(|a| frontend_key(a, proto, port)).collect();
        if let Some(ranges) = &e.source_ranges {
            for k in &keys {
                self.add(fixed_set(FW, fam), k.clone(), commented(&label));
                self.firewall
                    .insert((fam, k.clone()), (ranges.clone(), label.clone()));
            }
        }
        // Clients inside the cluster reaching an external address of an
        // `externalTrafficPolicy: Local` Service: their own group (the
        // endpoints they would reach through the ClusterIP), picked by the
        // in-cluster count map, also where the node has no local endpoint.
        if !e.internal_endpoints.is_empty() {
            let n = e.internal_endpoints.len() as u32;
            for k in &keys {
                self.int_counts
                    .entry(fam)
                    .or_default()
                    .insert(k.clone(), group_value(fam, n, false, &label));
                let group = self.groups.entry((fam, n, false)).or_default();
                for (i, ep) in e.internal_endpoints.iter().enumerate() {
                    let mut key = k.clone();
                    key.push(v(Value::Mark(i as u32)));
                    group.insert(key, endpoint_value(ep, &label));
                }
            }
            self.hairpin(fam, &e.internal_endpoints, services);
        }
        let eps = match &e.backend {
            Backend::Reject | Backend::Drop => {
                let set = if e.backend == Backend::Reject {
                    REJECT
                } else {
                    DROP
                };
                for k in keys {
                    self.add(fixed_set(set, fam), k, commented(&label));
                }
                return;
            }
            Backend::Endpoints(eps) => eps,
        };
        let n = eps.len() as u32;
        let nodeport = e.frontend.kind == FrontendKind::NodePort;
        let counts = self.counts.entry((fam, nodeport)).or_default();
        let id = group_value(fam, n, nodeport, &label);
        let proto_port = [v(Value::Proto(proto_number(proto))), v(Value::Port(port))];
        match e.frontend.addr {
            Some(a) if !nodeport => {
                let key = std::iter::once(v(ip_value(&a)))
                    .chain(proto_port.clone())
                    .collect();
                counts.insert(key, id);
            }
            _ => {
                counts.insert(proto_port.to_vec(), id);
            }
        }
        let group = self.groups.entry((fam, n, nodeport)).or_default();
        for (i, ep) in eps.iter().enumerate() {
            let slot = v(Value::Mark(i as u32));
            let proto_port = [v(Value::Proto(proto_number(proto))), v(Value::Port(port))];
            let key: ElemKey = match e.frontend.addr {
                Some(a) if !nodeport => std::iter::once(v(ip_value(&a)))
                    .chain(proto_port)
                    .chain([slot])
                    .collect(),
                _ => proto_port.into_iter().chain([slot]).collect(),
            };
            group.insert(key, endpoint_value(ep, &label));
        }
        match e.masquerade {
            Masquerade::Never => {}
            Masquerade::Always => {
                for k in &keys {
                    self.add(fixed_set(MASQ, fam), k.clone(), commented(&label));
                }
            }
            Masquerade::FromOutsideCluster => {
                for k in &keys {
                    self.add(fixed_set(CLUSTER_IPS, fam), k.clone(), commented(&label));
                }
            }
        }
        if let Some(t) = e.affinity {
            let (set, protos) = self.affinity.entry((fam, t)).or_default();
            protos.insert(proto);
            for k in &keys {
                set.insert(k.clone(), commented(&label));
            }
        }
        self.hairpin(fam, eps, services);
    }

    /// Local endpoints reaching themselves through a frontend are
    /// masqueraded (see the module doc).
    fn hairpin(&mut self, fam: IpFamily, eps: &[Endpoint], services: &NodeServices) {
        for ep in eps.iter().filter(|ep| services.is_local(ep)) {
            let who = ep.pod.clone().unwrap_or_else(|| ep.addr.to_string());
            self.add(
                fixed_set(HAIRPIN, fam),
                vec![v(ip_value(&ep.addr)), v(ip_value(&ep.addr))],
                commented(&who),
            );
        }
    }
}

/// A count-map value: the id of group (family, N, NodePort?).
fn group_value(fam: IpFamily, n: u32, nodeport: bool, label: &str) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Values(vec![Value::Mark(group_id(
            fam, n, nodeport,
        ))])),
        timeout: None,
        comment: Some(comment(label)),
    }
}

/// Adds the Service NAT part of a node's ruleset to `table` (see the module
/// doc for the layout and the reasons).
pub fn contribute(table: &mut Table, services: &NodeServices, config: &ServiceConfig) {
    let mut content = Content::default();
    for e in &services.entries {
        content.entry(e, services);
    }
    for a in &services.node_addresses {
        content.add(
            fixed_set(NODE_ADDRS, IpFamily::of(a)),
            vec![v(ip_value(a))],
            ElemValue::default(),
        );
    }
    let cidrs = |fam: IpFamily, nets: &[&IpNet]| -> BTreeMap<ElemKey, ElemValue> {
        let ranges = nets
            .iter()
            .filter(|n| IpFamily::of_net(n) == fam)
            .map(|n| intervals::prefix_range(n))
            .collect();
        intervals::union(ranges)
            .into_iter()
            .map(|(lo, hi)| {
                let key = vec![KeyPart::range(fam.value(lo), fam.value(hi))];
                (key, ElemValue::default())
            })
            .collect()
    };
    let cluster: Vec<&IpNet> = config.cluster_cidrs.iter().collect();
    let no_masq: Vec<&IpNet> = cluster
        .iter()
        .copied()
        .chain(&config.no_masquerade_cidrs)
        .collect();
    let mut sets = Vec::new();
    for fam in IpFamily::ALL {
        let mut fixed = |what: &str, key: Vec<DataType>, interval: bool, text: String| {
            let name = fixed_set(what, fam);
            let elements = content.sets.remove(&name).unwrap_or_default();
            sets.push(Set {
                name,
                key,
                flags: SetFlags {
                    interval,
                    ..Default::default()
                },
                comment: Some(comment(&text)),
                elements,
                ..Default::default()
            });
        };
        let a = fam.addr_type();
        let frontend = vec![a, DataType::InetProto, DataType::InetService];
        fixed(
            NODE_ADDRS,
            vec![a],
            false,
            format!("kube-nft: addresses of node {}: NodePorts", services.node),
        );
        fixed(
            MASQ,
            frontend.clone(),
            false,
            "kube-nft: external frontends of Services with externalTrafficPolicy Cluster".into(),
        );
        fixed(
            CLUSTER_IPS,
            frontend.clone(),
            false,
            "kube-nft: ClusterIP frontends, masqueraded for clients outside the cluster".into(),
        );
        fixed(
            HAIRPIN,
            vec![a, a],
            false,
            "kube-nft: local endpoint . itself: hairpin traffic to masquerade".into(),
        );
        fixed(
            REJECT,
            frontend.clone(),
            false,
            "kube-nft: Service ports without endpoints".into(),
        );
        fixed(
            DROP,
            frontend.clone(),
            false,
            "kube-nft: local traffic policy, no endpoint on this node".into(),
        );
        fixed(
            FW,
            frontend.clone(),
            false,
            "kube-nft: load balancer frontends with loadBalancerSourceRanges".into(),
        );
        let mut allow = Set {
            name: fixed_set(FW_ALLOW, fam),
            key: vec![a, DataType::InetProto, DataType::InetService, a],
            flags: SetFlags {
                interval: true,
                ..Default::default()
            },
            comment: Some(comment(
                "kube-nft: load balancer frontend . allowed source range",
            )),
            ..Default::default()
        };
        for ((f, key), (ranges, label)) in &content.firewall {
            if *f != fam {
                continue;
            }
            let nets: Vec<&IpNet> = ranges.iter().collect();
            for (k, _) in cidrs(fam, &nets) {
                let mut full = key.clone();
                full.extend(k);
                allow.elements.insert(full, commented(label));
            }
        }
        sets.push(allow);
        sets.push(Set {
            name: fixed_set(CLUSTER_CIDRS, fam),
            key: vec![a],
            flags: SetFlags {
                interval: true,
                ..Default::default()
            },
            comment: Some("kube-nft: cluster CIDRs (pod addresses)".into()),
            elements: cidrs(fam, &cluster),
            ..Default::default()
        });
        sets.push(Set {
            name: fixed_set(NO_MASQ, fam),
            key: vec![a],
            flags: SetFlags {
                interval: true,
                ..Default::default()
            },
            comment: Some("kube-nft: destinations pods reach unmasqueraded".into()),
            elements: cidrs(fam, &no_masq),
            ..Default::default()
        });
        sets.push(Set {
            name: affinity_map(fam),
            key: vec![a, a, DataType::InetProto, DataType::InetService],
            data: Some(SetData::Values(vec![a, DataType::InetService])),
            flags: SetFlags {
                timeout: true,
                dynamic: true,
                ..Default::default()
            },
            comment: Some(comment(
                "kube-nft: sessionAffinity ClientIP: client . frontend -> endpoint",
            )),
            ..Default::default()
        });
    }
    sets.push(Set {
        name: L4PROTOS.into(),
        key: vec![DataType::InetProto],
        comment: Some("kube-nft: protocols of Service ports".into()),
        elements: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .map(|p| (vec![v(Value::Proto(proto_number(p)))], ElemValue::default()))
            .collect(),
        ..Default::default()
    });
    for ((fam, n, nodeport), elements) in &content.groups {
        let a = fam.addr_type();
        let mut key = if *nodeport { vec![] } else { vec![a] };
        key.extend([DataType::InetProto, DataType::InetService, DataType::Mark]);
        let (name, what) = if *nodeport {
            (nodeport_map(*fam, *n), "NodePorts")
        } else {
            (eps_map(*fam, *n), "Service frontends")
        };
        sets.push(Set {
            name,
            key,
            data: Some(SetData::Values(vec![a, DataType::InetService])),
            comment: Some(format!("kube-nft: {what} with {n} endpoints")),
            elements: elements.clone(),
            ..Default::default()
        });
    }
    for fam in IpFamily::ALL {
        for nodeport in [false, true] {
            let a = fam.addr_type();
            let mut key = if nodeport { vec![] } else { vec![a] };
            key.extend([DataType::InetProto, DataType::InetService]);
            let what = if nodeport { "NodePort" } else { "frontend" };
            sets.push(Set {
                name: count_map(fam, nodeport),
                key,
                data: Some(SetData::Values(vec![DataType::Mark])),
                comment: Some(format!(
                    "kube-nft: {what} -> id of its endpoint-count group"
                )),
                elements: content
                    .counts
                    .get(&(fam, nodeport))
                    .cloned()
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    for fam in IpFamily::ALL {
        let a = fam.addr_type();
        sets.push(Set {
            name: int_count_map(fam),
            key: vec![a, DataType::InetProto, DataType::InetService],
            data: Some(SetData::Values(vec![DataType::Mark])),
            comment: Some(
                "kube-nft: external frontend (externalTrafficPolicy Local) -> group id for clients inside the cluster"
                    .into(),
            ),
            elements: content.int_counts.get(&fam).cloned().unwrap_or_default(),
            ..Default::default()
        });
    }
    sets.push(Set {
        name: GROUPS.into(),
        key: vec![DataType::Mark],
        data: Some(SetData::Verdict),
        comment: Some("kube-nft: endpoint-count group id -> its DNAT chain".into()),
        elements: content
            .groups
            .keys()
            .map(|&(fam, n, nodeport)| {
                let chain = group_chain(fam, n, nodeport);
                (
                    vec![v(Value::Mark(group_id(fam, n, nodeport)))],
                    ElemValue {
                        data: Some(ElemData::Verdict(Verdict::Goto(chain.clone()))),
                        timeout: None,
                        comment: Some(chain),
                    },
                )
            })
            .collect(),
        ..Default::default()
    });
    for ((fam, t), (elements, _)) in &content.affinity {
        sets.push(Set {
            name: affinity_frontends(*fam, *t),
            key: vec![fam.addr_type(), DataType::InetProto, DataType::InetService],
            comment: Some(format!(
                "kube-nft: frontends with sessionAffinity ClientIP, timeout {}s",
                t.as_secs()
            )),
            elements: elements.clone(),
            ..Default::default()
        });
    }
    for s in sets {
        table.add_set(s);
    }
    chains(table, &content, config);
}

fn base(kind: ChainType, hook: Hook, priority: i32) -> Option<BaseChain> {
    Some(BaseChain {
        kind,
        hook,
        priority,
        policy: ChainPolicy::Accept,
    })
}

fn lookup(left: Vec<Field>, op: MatchOp, set: String) -> Expr {
    Expr::Match {
        left,
        op,
        right: Rhs::Set(set),
    }
}

fn frontend_fields(fam: IpFamily) -> Vec<Field> {
    vec![fam.daddr(), Field::L4Proto, Field::ThDport]
}

fn l4protos() -> Expr {
    lookup(vec![Field::L4Proto], MatchOp::Eq, L4PROTOS.into())
}

fn l4proto(p: Protocol) -> Expr {
    Expr::Match {
        left: vec![Field::L4Proto],
        op: MatchOp::Eq,
        right: Rhs::Value(vec![Value::Proto(proto_number(p))]),
    }
}

fn new_connection() -> Expr {
    Expr::Match {
        left: vec![Field::CtState],
        op: MatchOp::Eq,
        right: Rhs::Bits(ct_state::NEW),
    }
}

fn dnatted() -> Expr {
    Expr::Match {
        left: vec![Field::CtStatus],
        op: MatchOp::Eq,
        right: Rhs::Bits(ct_status::DNAT),
    }
}

fn chains(table: &mut Table, content: &Content, config: &ServiceConfig) {
    let has_cidr = |fam: IpFamily| {
        config
            .cluster_cidrs
            .iter()
            .any(|c| IpFamily::of_net(c) == fam)
    };
    let jump = Rule::new(vec![Expr::Verdict(Verdict::Jump(SERVICES.into()))])
        .with_comment("kube-nft: Service DNAT");
    for (name, hook) in [
        (NAT_PREROUTING, Hook::Prerouting),
        (NAT_OUTPUT, Hook::Output),
    ] {
        table.add_chain(Chain {
            name: name.into(),
            base: base(ChainType::Nat, hook, DSTNAT),
            comment: Some("kube-nft: Service DNAT".into()),
            rules: vec![jump.clone()],
        });
    }

    // services: marks first (DNAT ends the chain), then affinity, then groups.
    let mark = Expr::SetMarkBits(config.masquerade_bit);
    let mut rules = Vec::new();
    for fam in IpFamily::ALL {
        rules.push(
            Rule::new(vec![
                lookup(frontend_fields(fam), MatchOp::Eq, fixed_set(MASQ, fam)),
                mark.clone(),
            ])
            .with_comment("kube-nft: masquerade external traffic (externalTrafficPolicy Cluster)"),
        );
        if has_cidr(fam) {
            rules.push(
                Rule::new(vec![
                    lookup(
                        vec![fam.saddr()],
                        MatchOp::Neq,
                        fixed_set(CLUSTER_CIDRS, fam),
                    ),
                    lookup(
                        frontend_fields(fam),
                        MatchOp::Eq,
                        fixed_set(CLUSTER_IPS, fam),
                    ),
                    mark.clone(),
                ])
                .with_comment("kube-nft: masquerade off-cluster clients of ClusterIPs"),
            );
        }
    }
    for fam in IpFamily::ALL {
        rules.push(
            Rule::new(vec![
                l4protos(),
                Expr::Dnat {
                    family: nat_family(fam),
                    to: NatTarget::Map {
                        key: MapKey::Fields(vec![
                            fam.saddr(),
                            fam.daddr(),
                            Field::L4Proto,
                            Field::ThDport,
                        ]),
                        map: affinity_map(fam),
                    },
                },
            ])
            .with_comment("kube-nft: sessionAffinity ClientIP: a known client keeps its endpoint"),
        );
    }
    // The endpoint-count group of the frontend, into the conntrack mark (a
    // miss leaves it: 0 on a new connection), then one verdict-map lookup:
    // two lookups per new connection however many groups exist.
    for fam in IpFamily::ALL {
        rules.push(
            Rule::new(vec![Expr::SetFromMap {
                target: Field::CtMark,
                key: MapKey::Fields(frontend_fields(fam)),
                map: count_map(fam, false),
            }])
            .with_comment("kube-nft: endpoint-count group of a Service frontend"),
        );
        rules.push(
            Rule::new(vec![
                lookup(vec![fam.daddr()], MatchOp::Eq, fixed_set(NODE_ADDRS, fam)),
                Expr::SetFromMap {
                    target: Field::CtMark,
                    key: MapKey::Fields(vec![Field::L4Proto, Field::ThDport]),
                    map: count_map(fam, true),
                },
            ])
            .with_comment("kube-nft: endpoint-count group of a NodePort"),
        );
        if has_cidr(fam) {
            rules.push(
                Rule::new(vec![
                    lookup(vec![fam.saddr()], MatchOp::Eq, fixed_set(CLUSTER_CIDRS, fam)),
                    Expr::SetFromMap {
                        target: Field::CtMark,
                        key: MapKey::Fields(frontend_fields(fam)),
                        map: int_count_map(fam),
                    },
                ])
                .with_comment(
                    "kube-nft: clients inside the cluster of an externalTrafficPolicy Local address",
                ),
            );
        }
    }
    rules.push(
        Rule::new(vec![Expr::Vmap {
            key: MapKey::Fields(vec![Field::CtMark]),
            map: GROUPS.into(),
        }])
        .with_comment("kube-nft: DNAT in the frontend's endpoint-count group"),
    );
    for (fam, n, nodeport) in content.groups.keys() {
        let (fam, n) = (*fam, *n);
        let rule = if *nodeport {
            Rule::new(vec![
                l4protos(),
                Expr::Dnat {
                    family: nat_family(fam),
                    to: NatTarget::Map {
                        key: MapKey::FieldsAndNumgen {
                            fields: vec![Field::L4Proto, Field::ThDport],
                            modulus: n,
                        },
                        map: nodeport_map(fam, n),
                    },
                },
            ])
            .with_comment(format!("kube-nft: NodePorts with {n} endpoints"))
        } else {
            Rule::new(vec![
                l4protos(),
                Expr::Dnat {
                    family: nat_family(fam),
                    to: NatTarget::Map {
                        key: MapKey::FieldsAndNumgen {
                            fields: frontend_fields(fam),
                            modulus: n,
                        },
                        map: eps_map(fam, n),
                    },
                },
            ])
            .with_comment(format!("kube-nft: Service frontends with {n} endpoints"))
        };
        table.add_chain(Chain {
            name: group_chain(fam, n, *nodeport),
            base: None,
            comment: Some(format!(
                "kube-nft: {} with {n} endpoints",
                if *nodeport {
                    "NodePorts"
                } else {
                    "Service frontends"
                }
            )),
            rules: vec![rule],
        });
    }
    table.add_chain(Chain {
        name: SERVICES.into(),
        base: None,
        comment: Some("kube-nft: Service DNAT, dispatched by endpoint-count group".into()),
        rules,
    });

    // nat-postrouting: record affinity, then masquerade.
    let mut post = Vec::new();
    for ((fam, t), (_, protos)) in &content.affinity {
        let fam = *fam;
        for p in protos {
            let original = vec![
                original_daddr(fam),
                Field::L4Proto,
                Field::CtOriginalProtoDst,
            ];
            post.push(
                Rule::new(vec![
                    l4proto(*p),
                    dnatted(),
                    lookup(original.clone(), MatchOp::Eq, affinity_frontends(fam, *t)),
                    Expr::MapUpdate {
                        op: SetUpdateOp::Update,
                        map: affinity_map(fam),
                        key: std::iter::once(fam.saddr()).chain(original).collect(),
                        data: vec![fam.daddr(), Field::ThDport],
                        timeout: Some(*t),
                    },
                ])
                .with_comment(format!(
                    "kube-nft: sessionAffinity ClientIP: remember the endpoint for {}s",
                    t.as_secs()
                )),
            );
        }
    }
    for fam in IpFamily::ALL {
        post.push(
            Rule::new(vec![
                dnatted(),
                lookup(
                    vec![fam.saddr(), fam.daddr()],
                    MatchOp::Eq,
                    fixed_set(HAIRPIN, fam),
                ),
                Expr::Masquerade {
                    fully_random: false,
                },
            ])
            .with_comment("kube-nft: hairpin: a pod reaching itself through its Service"),
        );
    }
    post.push(
        Rule::new(vec![
            Expr::Match {
                left: vec![Field::Mark],
                op: MatchOp::Eq,
                right: Rhs::Bits(config.masquerade_bit),
            },
            Expr::Masquerade { fully_random: true },
        ])
        .with_comment("kube-nft: connections marked for masquerade"),
    );
    for fam in IpFamily::ALL.into_iter().filter(|f| has_cidr(*f)) {
        post.push(
            Rule::new(vec![
                lookup(
                    vec![fam.saddr()],
                    MatchOp::Eq,
                    fixed_set(CLUSTER_CIDRS, fam),
                ),
                lookup(vec![fam.daddr()], MatchOp::Neq, fixed_set(NO_MASQ, fam)),
                Expr::Masquerade { fully_random: true },
            ])
            .with_comment("kube-nft: pod traffic leaving the cluster"),
        );
    }
    table.add_chain(Chain {
        name: NAT_POSTROUTING.into(),
        base: base(ChainType::Nat, Hook::Postrouting, SRCNAT),
        comment: Some("kube-nft: Service affinity and masquerade".into()),
        rules: post,
    });

    let mut filter = Vec::new();
    for fam in IpFamily::ALL {
        let frontend = || frontend_fields(fam);
        filter.push(
            Rule::new(vec![
                new_connection(),
                l4proto(Protocol::Tcp),
                lookup(frontend(), MatchOp::Eq, fixed_set(REJECT, fam)),
                Expr::Reject(RejectKind::TcpReset),
            ])
            .with_comment("kube-nft: Service port without endpoints"),
        );
        filter.push(
            Rule::new(vec![
                new_connection(),
                lookup(frontend(), MatchOp::Eq, fixed_set(REJECT, fam)),
                Expr::Reject(RejectKind::IcmpxPortUnreachable),
            ])
            .with_comment("kube-nft: Service port without endpoints"),
        );
        filter.push(
            Rule::new(vec![
                new_connection(),
                lookup(frontend(), MatchOp::Eq, fixed_set(DROP, fam)),
                Expr::Verdict(Verdict::Drop),
            ])
            .with_comment("kube-nft: local traffic policy and no local endpoint"),
        );
    }
    for (name, hook) in FILTER_CHAINS {
        table.add_chain(Chain {
            name: name.into(),
            base: base(ChainType::Filter, hook, FILTER_PRIORITY),
            comment: Some("kube-nft: Services that reject or drop new connections".into()),
            rules: filter.clone(),
        });
    }

    let mut fw = Vec::new();
    for fam in IpFamily::ALL {
        let mut with_source = frontend_fields(fam);
        with_source.push(fam.saddr());
        fw.push(
            Rule::new(vec![
                lookup(frontend_fields(fam), MatchOp::Eq, fixed_set(FW, fam)),
                lookup(with_source, MatchOp::Neq, fixed_set(FW_ALLOW, fam)),
                Expr::Verdict(Verdict::Drop),
            ])
            .with_comment("kube-nft: source outside loadBalancerSourceRanges"),
        );
    }
    for (name, hook) in FIREWALL_CHAINS {
        table.add_chain(Chain {
            name: name.into(),
            base: base(ChainType::Filter, hook, FIREWALL_PRIORITY),
            comment: Some("kube-nft: loadBalancerSourceRanges, before DNAT".into()),
            rules: fw.clone(),
        });
    }
}

/// Elements of an affinity map as read back from the kernel (the kernel adds
/// them, the agent never does) whose endpoint no longer serves their frontend,
/// or whose frontend lost its affinity: the agent deletes them, or clients
/// would stay stuck to a gone endpoint until the timeout.
pub fn stale_affinity(map: &Set, services: &NodeServices) -> Vec<ElemKey> {
    let mut valid: BTreeSet<(ElemKey, Vec<Value>)> = BTreeSet::new();
    for e in services.entries.iter().filter(|e| e.affinity.is_some()) {
        for addr in frontend_addrs(e, services) {
            for ep in e.endpoints() {
                valid.insert((
                    frontend_key(&addr, e.frontend.protocol, e.frontend.port),
                    vec![ip_value(&ep.addr), Value::Port(ep.port)],
                ));
            }
        }
    }
    map.elements
        .iter()
        .filter(|(key, value)| {
            let Some(ElemData::Values(data)) = &value.data else {
                return true;
            };
            // key = client . frontend addr . proto . port
            let frontend = key.get(1..).map(<[KeyPart]>::to_vec).unwrap_or_default();
            !valid.contains(&(frontend, data.clone()))
        })
        .map(|(k, _)| k.clone())
        .collect()
}

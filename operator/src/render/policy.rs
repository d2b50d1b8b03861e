//! NetworkPolicy → nftables: a node's share of the policy IR becomes the filter
//! part of the kube-nft table (see the [module doc](super) for the layout and an
//! example).
//!
//! Chains are shared by content: a pod's ingress (or egress) chain is the
//! rendering of its rule list, named by a hash of that rendering, so 10,000 pods
//! selected by the same policies share one chain, a pod that moves into an
//! existing combination changes one verdict-map element, and a policy change
//! creates new chains for the new content while untouched chains stay as they
//! are (the diff then deletes chains nothing jumps to any more).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube_nft_crds::ir::{
    AddressSet, AddressSetElement, IrPeer, IrPort, IrRule, NodePolicy, PodPolicy, Protocol,
};
use nft::render::render_rule;
use nft::{
    ct_state, BaseChain, Chain, ChainPolicy, ChainType, DataType, ElemData, ElemKey, ElemValue,
    Expr, Family, Field, Hook, KeyPart, MapKey, MatchOp, Rhs, Rule, Set, SetData, SetFlags, Table,
    Value, Verdict,
};

use super::intervals::{self, Range};
use super::names::{comment, ir_object_name, ContentNames};

/// The filter base chain for traffic routed through the node (pod ↔ pod, pod ↔
/// elsewhere). Priority 0 runs after Service DNAT (`dstnat`, -100) in
/// prerouting, so policy judges the real pod address behind a Service VIP.
pub const FORWARD: &str = "forward";
/// The filter base chain for traffic to the node's own addresses, where only
/// the egress policy of the sending pod applies.
pub const INPUT: &str = "input";

/// Address family of a pod IP, a peer or a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub const ALL: [Fam; 2] = [Fam::V4, Fam::V6];

    pub fn of(ip: &IpAddr) -> Fam {
        match ip {
            IpAddr::V4(_) => Fam::V4,
            IpAddr::V6(_) => Fam::V6,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        }
    }

    fn addr_type(self) -> DataType {
        match self {
            Fam::V4 => DataType::Ipv4Addr,
            Fam::V6 => DataType::Ipv6Addr,
        }
    }

    fn saddr(self) -> Field {
        match self {
            Fam::V4 => Field::IpSaddr,
            Fam::V6 => Field::Ip6Saddr,
        }
    }

    fn daddr(self) -> Field {
        match self {
            Fam::V4 => Field::IpDaddr,
            Fam::V6 => Field::Ip6Daddr,
        }
    }

    /// An address of this family from its integer form (see [`intervals`]).
    fn value(self, x: u128) -> Value {
        match self {
            Fam::V4 => Value::Ipv4((x as u32).into()),
            Fam::V6 => Value::Ipv6(x.into()),
        }
    }
}

fn ip_value(ip: &IpAddr) -> Value {
    match ip {
        IpAddr::V4(a) => Value::Ipv4(*a),
        IpAddr::V6(a) => Value::Ipv6(*a),
    }
}

/// Direction of a policy, from the point of view of the isolated pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub fn label(self) -> &'static str {
        match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }
    }

    fn chain_prefix(self) -> &'static str {
        match self {
            Dir::Ingress => "in",
            Dir::Egress => "eg",
        }
    }

    /// The packet field holding the remote end: the source for ingress, the
    /// destination for egress.
    fn remote(self, fam: Fam) -> Field {
        match self {
            Dir::Ingress => fam.saddr(),
            Dir::Egress => fam.daddr(),
        }
    }

    /// What an allow rule does. Egress returns to the base chain so that the
    /// ingress check of a destination pod on the same node still runs; ingress
    /// is the last check and accepts.
    fn allow(self) -> Verdict {
        match self {
            Dir::Ingress => Verdict::Accept,
            Dir::Egress => Verdict::Return,
        }
    }
}

/// `ingress-v4`, `egress-v6`, …: the verdict map from a local isolated pod's IP
/// to its chain.
pub fn dispatch_map(dir: Dir, fam: Fam) -> String {
    format!("{}-{}", dir.label(), fam.suffix())
}

/// `node-addrs-v4` / `-v6`: the node's own addresses, exempt from ingress policy.
pub fn node_addrs_set(fam: Fam) -> String {
    format!("node-addrs-{}", fam.suffix())
}

/// Adds the NetworkPolicy part of `node`'s ruleset to `table`: the dispatch
/// maps, the base chains `forward` and `input`, one chain per distinct rule
/// list, and the sets those chains use. `address_sets` may hold more sets than
/// the node uses; only referenced ones are rendered. A referenced set missing
/// from it renders empty (matches nothing: an allow rule fails closed).
pub fn contribute(
    table: &mut Table,
    node: &NodePolicy,
    address_sets: &BTreeMap<String, AddressSet>,
) {
    let mut r = PolicyRenderer {
        table,
        address_sets,
        names: ContentNames::default(),
        ir_sets: None,
    };
    r.dispatch(node);
    for pod in &node.pods {
        r.pod(pod);
    }
}

struct PolicyRenderer<'a> {
    table: &'a mut Table,
    address_sets: &'a BTreeMap<String, AddressSet>,
    names: ContentNames,
    /// `Some`: render `as-`/`asp-` sets as headers only and record here what
    /// they stand for (see [`pod_chain`]).
    ir_sets: Option<BTreeMap<String, IrSetRef>>,
}

/// What an `as-`/`asp-` set renders: an IR address set, one family, and
/// whether its elements carry the protocol and port (`asp-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrSetRef {
    pub ir_name: String,
    pub fam: Fam,
    pub ports: bool,
}

/// One direction's chain of a pod, rendered on its own (see [`pod_chain`]).
#[derive(Debug, Clone)]
pub struct PodChain {
    /// The content name of the chain (`in-…`/`eg-…`).
    pub name: String,
    /// The chain and every set its rules use; `as-`/`asp-` sets are headers
    /// without elements ([`ir_set_elements`] fills them).
    pub objects: Table,
    /// What each `as-`/`asp-` set in `objects` stands for.
    pub ir_sets: BTreeMap<String, IrSetRef>,
}

/// The chain a pod with IPs `ips` gets for `rules` in direction `dir`, exactly
/// as [`contribute`] renders it (same content, same name), without the rest of
/// the table. `None` when the pod has no IP. Content names are computed afresh,
/// so the (never seen) hash-collision suffix of a full render is not reproduced.
pub fn pod_chain(
    dir: Dir,
    rules: &[IrRule],
    ips: &[IpAddr],
    address_sets: &BTreeMap<String, AddressSet>,
) -> Option<PodChain> {
    let fams: BTreeSet<Fam> = ips.iter().map(Fam::of).collect();
    if fams.is_empty() {
        return None;
    }
    let mut objects = Table::new(Family::Inet, super::TABLE_NAME);
    let mut r = PolicyRenderer {
        table: &mut objects,
        address_sets,
        names: ContentNames::default(),
        ir_sets: Some(BTreeMap::new()),
    };
    let name = r.chain(dir, rules, &fams);
    let ir_sets = r.ir_sets.take().unwrap_or_default();
    Some(PodChain {
        name,
        objects,
        ir_sets,
    })
}

/// The nft elements of an `as-`/`asp-` set.
pub fn ir_set_elements(
    r: &IrSetRef,
    address_sets: &BTreeMap<String, AddressSet>,
) -> BTreeMap<ElemKey, ElemValue> {
    address_sets
        .get(&r.ir_name)
        .into_iter()
        .flat_map(|s| &s.elements)
        .filter(|e| Fam::of(&e.ip) == r.fam)
        .filter_map(|e| Some((ir_element_key(r.ports, e)?, ElemValue::default())))
        .collect()
}

/// The key of an IR element in an `as-` (`ports` false) or `asp-` set.
pub fn ir_element_key(ports: bool, e: &AddressSetElement) -> Option<ElemKey> {
    if !ports {
        return Some(vec![KeyPart::Value(ip_value(&e.ip))]);
    }
    Some(vec![
        KeyPart::Value(ip_value(&e.ip)),
        KeyPart::Value(Value::Proto(proto_number(e.protocol?))),
        KeyPart::Value(Value::Port(e.port?)),
    ])
}

/// The key of a pod IP in a dispatch map.
pub fn ip_key(ip: &IpAddr) -> ElemKey {
    vec![KeyPart::Value(ip_value(ip))]
}

/// The dispatch-map element of pod `namespace/name` jumping to `chain`.
pub fn dispatch_element(namespace: &str, name: &str, chain: &str) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Verdict(Verdict::Jump(chain.to_string()))),
        timeout: None,
        comment: Some(comment(&format!("{namespace}/{name}"))),
    }
}

/// How a rule's `ports` list restricts it.
enum PortMatch {
    /// No `ports`: every port of every protocol (ICMP included).
    All,
    /// Only ports that no packet has (every entry was an empty range).
    Nothing,
    /// These statements, to put after the address match.
    Exprs(Vec<Expr>),
}

impl PolicyRenderer<'_> {
    /// Maps, node address sets and the two base chains. They exist even when the
    /// node isolates no pod, so that base chains never change after start-up.
    fn dispatch(&mut self, node: &NodePolicy) {
        for fam in Fam::ALL {
            for dir in [Dir::Ingress, Dir::Egress] {
                self.table.add_set(Set {
                    name: dispatch_map(dir, fam),
                    key: vec![fam.addr_type()],
                    data: Some(SetData::Verdict),
                    comment: Some(format!(
                        "kube-nft: {} policy chain of each isolated local pod",
                        dir.label()
                    )),
                    ..Default::default()
                });
            }
            let elements = node
                .node_addresses
                .iter()
                .filter(|ip| Fam::of(ip) == fam)
                .map(|ip| (vec![KeyPart::Value(ip_value(ip))], ElemValue::default()))
                .collect();
            self.table.add_set(Set {
                name: node_addrs_set(fam),
                key: vec![fam.addr_type()],
                comment: Some(format!(
                    "kube-nft: addresses of node {}; they may always reach its pods",
                    node.node
                ))
                .map(|c| comment(&c)),
                elements,
                ..Default::default()
            });
        }

        let ct_bits = |bits: u32| Expr::Match {
            left: vec![Field::CtState],
            op: MatchOp::Eq,
            right: Rhs::Bits(bits),
        };
        let established = Rule::new(vec![
            ct_bits(ct_state::ESTABLISHED | ct_state::RELATED),
            Expr::Verdict(Verdict::Accept),
        ])
        .with_comment("kube-nft: policy decides new connections only");
        let egress = |fam: Fam| {
            Rule::new(vec![Expr::Vmap {
                key: MapKey::Fields(vec![fam.saddr()]),
                map: dispatch_map(Dir::Egress, fam),
            }])
            .with_comment("kube-nft: egress policy of isolated local pods")
        };
        // Node → local pod is exempt from ingress policy. Skipping the ingress
        // dispatch (instead of accepting) leaves later rules of this chain, such
        // as future Service rules, in force for that traffic.
        let ingress = |fam: Fam| {
            Rule::new(vec![
                Expr::Match {
                    left: vec![fam.saddr()],
                    op: MatchOp::Neq,
                    right: Rhs::Set(node_addrs_set(fam)),
                },
                Expr::Vmap {
                    key: MapKey::Fields(vec![fam.daddr()]),
                    map: dispatch_map(Dir::Ingress, fam),
                },
            ])
            .with_comment("kube-nft: ingress policy of isolated local pods")
        };

        let base = |hook| {
            Some(BaseChain {
                kind: ChainType::Filter,
                hook,
                priority: 0,
                policy: ChainPolicy::Accept,
            })
        };
        self.table.add_chain(Chain {
            name: FORWARD.into(),
            base: base(Hook::Forward),
            comment: Some("kube-nft: NetworkPolicy for traffic of local pods".into()),
            rules: vec![
                established.clone(),
                Rule::new(vec![
                    ct_bits(ct_state::INVALID),
                    Expr::Verdict(Verdict::Drop),
                ])
                .with_comment("kube-nft: invalid packets"),
                egress(Fam::V4),
                egress(Fam::V6),
                ingress(Fam::V4),
                ingress(Fam::V6),
            ],
        });
        // Only egress applies here: the destination is the node itself. Node →
        // own pod leaves through the output hook, which kube-nft never filters
        // (the node may always reach its pods). Invalid packets are not dropped
        // here: input carries all of the host's own traffic, which is not ours
        // to judge. Untracked packets are accepted because IPv6 neighbour
        // discovery and MLD are untracked: an egress-isolated pod must still
        // resolve its node's link-layer address, or no policy could allow
        // anything over IPv6.
        self.table.add_chain(Chain {
            name: INPUT.into(),
            base: base(Hook::Input),
            comment: Some("kube-nft: NetworkPolicy egress of local pods to this node".into()),
            rules: vec![
                established,
                Rule::new(vec![
                    ct_bits(ct_state::UNTRACKED),
                    Expr::Verdict(Verdict::Accept),
                ])
                .with_comment("kube-nft: IPv6 neighbour discovery and MLD are untracked"),
                egress(Fam::V4),
                egress(Fam::V6),
            ],
        });
    }

    fn pod(&mut self, pod: &PodPolicy) {
        // A pod's IPs never change, so the families its chains cover do not
        // either: a v4-only pod's chain holds v4 rules only.
        let fams: BTreeSet<Fam> = pod.ips.iter().map(Fam::of).collect();
        for (dir, isolated, rules) in [
            (Dir::Ingress, pod.ingress_isolated, &pod.ingress),
            (Dir::Egress, pod.egress_isolated, &pod.egress),
        ] {
            if !isolated || fams.is_empty() {
                continue;
            }
            let chain = self.chain(dir, rules, &fams);
            for ip in &pod.ips {
                let map = self
                    .table
                    .sets
                    .get_mut(&dispatch_map(dir, Fam::of(ip)))
                    .expect("dispatch() created every map");
                map.elements.insert(
                    ip_key(ip),
                    dispatch_element(&pod.namespace, &pod.name, &chain),
                );
            }
        }
    }

    /// The (shared) chain for one direction of a pod: its name, created if new.
    fn chain(&mut self, dir: Dir, rules: &[IrRule], fams: &BTreeSet<Fam>) -> String {
        let mut body = Vec::new();
        for rule in rules {
            self.rule(dir, rule, fams, &mut body);
        }
        body.push(
            Rule::new(vec![Expr::Counter, Expr::Verdict(Verdict::Drop)]).with_comment(format!(
                "kube-nft: {} not allowed by any NetworkPolicy",
                dir.label()
            )),
        );
        let policies: BTreeSet<&str> = rules.iter().map(|r| r.policy.as_str()).collect();
        let header = comment(&if policies.is_empty() {
            format!("{}: isolated, no rule allows anything", dir.label())
        } else {
            let list: Vec<&str> = policies.into_iter().collect();
            format!("{}: NetworkPolicy {}", dir.label(), list.join(", "))
        });
        // The identity of a chain is all of it, comment included, so the
        // comment never depends on which pod happened to create the chain.
        let mut content = header.clone();
        for r in &body {
            content.push('\n');
            content.push_str(&render_rule(Family::Inet, r));
        }
        let (name, new) = self.names.name(dir.chain_prefix(), &content);
        if new {
            self.table.add_chain(Chain {
                name: name.clone(),
                base: None,
                comment: Some(header),
                rules: body,
            });
        }
        name
    }

    /// Appends the nft rules of one IR rule: one per (peer, family).
    fn rule(&mut self, dir: Dir, rule: &IrRule, fams: &BTreeSet<Fam>, out: &mut Vec<Rule>) {
        let note = comment(&format!(
            "NetworkPolicy {} {}[{}]",
            rule.policy,
            dir.label(),
            rule.rule_index
        ));
        let ports = self.ports(&rule.ports);
        let allow = Expr::Verdict(dir.allow());
        let mut push = |mut exprs: Vec<Expr>, with_ports: bool| {
            if with_ports {
                match &ports {
                    PortMatch::All => {}
                    PortMatch::Nothing => return,
                    PortMatch::Exprs(p) => exprs.extend(p.iter().cloned()),
                }
            }
            exprs.push(allow.clone());
            out.push(Rule::new(exprs).with_comment(note.clone()));
        };
        let in_set = |field: Vec<Field>, set: String| Expr::Match {
            left: field,
            op: MatchOp::Eq,
            right: Rhs::Set(set),
        };
        for peer in &rule.peers {
            match peer {
                IrPeer::Any => push(Vec::new(), true),
                IrPeer::AddressSet { name } => {
                    for &fam in fams {
                        let set = self.address_set(name, fam);
                        push(vec![in_set(vec![dir.remote(fam)], set)], true);
                    }
                }
                IrPeer::AddressPortSet { name } => {
                    for &fam in fams {
                        let set = self.address_port_set(name, fam);
                        let key = vec![dir.remote(fam), Field::L4Proto, Field::ThDport];
                        push(vec![in_set(key, set)], false);
                    }
                }
                IrPeer::Cidr { cidr, except } => {
                    if let Some((fam, set)) = self.cidr_set(cidr, except, fams) {
                        push(vec![in_set(vec![dir.remote(fam)], set)], true);
                    }
                }
            }
        }
    }

    /// The elements of a new `as-`/`asp-` set, or none (recorded for later)
    /// when rendering a chain alone.
    fn ir_set(
        &mut self,
        nft_name: &str,
        ir_name: &str,
        fam: Fam,
        ports: bool,
    ) -> BTreeMap<ElemKey, ElemValue> {
        let r = IrSetRef {
            ir_name: ir_name.to_string(),
            fam,
            ports,
        };
        match &mut self.ir_sets {
            Some(lazy) => {
                lazy.insert(nft_name.to_string(), r);
                BTreeMap::new()
            }
            None => ir_set_elements(&r, self.address_sets),
        }
    }

    /// `as-<name>-v4`: the IPs of an IR address set of one family.
    fn address_set(&mut self, ir_name: &str, fam: Fam) -> String {
        let name = ir_object_name("as", ir_name, fam.suffix());
        if !self.table.sets.contains_key(&name) {
            let ir = self.address_sets.get(ir_name);
            let elements = self.ir_set(&name, ir_name, fam, false);
            self.table.add_set(Set {
                name: name.clone(),
                key: vec![fam.addr_type()],
                comment: Some(set_comment(ir_name, ir)),
                elements,
                ..Default::default()
            });
        }
        name
    }

    /// `asp-<name>-v4`: (IP, protocol, port) elements of an IR address set, for
    /// named ports that resolve per destination pod.
    fn address_port_set(&mut self, ir_name: &str, fam: Fam) -> String {
        let name = ir_object_name("asp", ir_name, fam.suffix());
        if !self.table.sets.contains_key(&name) {
            let ir = self.address_sets.get(ir_name);
            let elements = self.ir_set(&name, ir_name, fam, true);
            self.table.add_set(Set {
                name: name.clone(),
                key: vec![fam.addr_type(), DataType::InetProto, DataType::InetService],
                comment: Some(set_comment(ir_name, ir)),
                elements,
                ..Default::default()
            });
        }
        name
    }

    /// `cidr-<hash>`: an ipBlock minus its excepts as disjoint intervals, shared
    /// by every rule with the same block. `None` when the block is of a family
    /// not in `fams`, when nothing is left, or when the block does not parse (the compiler validates blocks; failing closed
    /// here keeps a bad one from allowing more than it says).
    fn cidr_set(
        &mut self,
        cidr: &str,
        except: &[String],
        fams: &BTreeSet<Fam>,
    ) -> Option<(Fam, String)> {
        let net = cidr.parse::<IpNet>().ok()?.trunc();
        let fam = Fam::of(&net.addr());
        if !fams.contains(&fam) {
            return None;
        }
        let mut holes = Vec::new();
        for e in except {
            let e = e.parse::<IpNet>().ok()?.trunc();
            // An except of the other family cannot exclude anything.
            if Fam::of(&e.addr()) == fam {
                holes.push(e);
            }
        }
        holes.sort();
        holes.dedup();
        let ranges = intervals::subtract(
            intervals::prefix_range(&net),
            holes.iter().map(intervals::prefix_range).collect(),
        );
        if ranges.is_empty() {
            return None;
        }
        let text = if holes.is_empty() {
            format!("ipBlock {net}")
        } else {
            let list: Vec<String> = holes.iter().map(ToString::to_string).collect();
            format!("ipBlock {net} except {}", list.join(", "))
        };
        let (name, new) = self.names.name("cidr", &text);
        if new {
            let elements = ranges
                .into_iter()
                .map(|(lo, hi)| {
                    let key = vec![KeyPart::range(fam.value(lo), fam.value(hi))];
                    (key, ElemValue::default())
                })
                .collect();
            self.table.add_set(Set {
                name: name.clone(),
                key: vec![fam.addr_type()],
                flags: SetFlags {
                    interval: true,
                    ..Default::default()
                },
                comment: Some(comment(&text)),
                elements,
                ..Default::default()
            });
        }
        Some((fam, name))
    }

    /// The statements matching a rule's `ports`: inline for one protocol and one
    /// port or range (`meta l4proto tcp th dport 80`), otherwise a lookup in a
    /// shared `ports-<hash>` set of `inet_proto . inet_service` intervals.
    fn ports(&mut self, ports: &[IrPort]) -> PortMatch {
        if ports.is_empty() {
            return PortMatch::All;
        }
        let mut by_proto: BTreeMap<u8, Vec<Range>> = BTreeMap::new();
        for p in ports {
            let (lo, hi) = match (p.port, p.end_port) {
                (None, _) => (0, u16::MAX),
                (Some(p), None) => (p, p),
                (Some(p), Some(end)) => (p, end), // end < p: empty, dropped by union
            };
            by_proto
                .entry(proto_number(p.protocol))
                .or_default()
                .push((lo.into(), hi.into()));
        }
        let entries: Vec<(u8, u16, u16)> = by_proto
            .into_iter()
            .flat_map(|(proto, ranges)| {
                intervals::union(ranges)
                    .into_iter()
                    .map(move |(lo, hi)| (proto, lo as u16, hi as u16))
            })
            .collect();
        let l4 = |proto: u8| Expr::Match {
            left: vec![Field::L4Proto],
            op: MatchOp::Eq,
            right: Rhs::Value(vec![Value::Proto(proto)]),
        };
        match entries.as_slice() {
            [] => PortMatch::Nothing,
            [(proto, 0, u16::MAX)] => PortMatch::Exprs(vec![l4(*proto)]),
            [(proto, lo, hi)] => {
                let right = if lo == hi {
                    Rhs::Value(vec![Value::Port(*lo)])
                } else {
                    Rhs::Range(Value::Port(*lo), Value::Port(*hi))
                };
                PortMatch::Exprs(vec![
                    l4(*proto),
                    Expr::Match {
                        left: vec![Field::ThDport],
                        op: MatchOp::Eq,
                        right,
                    },
                ])
            }
            many => {
                let text: Vec<String> = many
                    .iter()
                    .map(|(proto, lo, hi)| {
                        let proto = proto_name(*proto);
                        if lo == hi {
                            format!("{proto}/{lo}")
                        } else {
                            format!("{proto}/{lo}-{hi}")
                        }
                    })
                    .collect();
                let text = format!("ports {}", text.join(","));
                let (name, new) = self.names.name("ports", &text);
                if new {
                    let elements = many
                        .iter()
                        .map(|(proto, lo, hi)| {
                            let key = vec![
                                KeyPart::Value(Value::Proto(*proto)),
                                KeyPart::range(Value::Port(*lo), Value::Port(*hi)),
                            ];
                            (key, ElemValue::default())
                        })
                        .collect();
                    self.table.add_set(Set {
                        name: name.clone(),
                        key: vec![DataType::InetProto, DataType::InetService],
                        flags: SetFlags {
                            interval: true,
                            ..Default::default()
                        },
                        comment: Some(comment(&text)),
                        elements,
                        ..Default::default()
                    });
                }
                PortMatch::Exprs(vec![Expr::Match {
                    left: vec![Field::L4Proto, Field::ThDport],
                    op: MatchOp::Eq,
                    right: Rhs::Set(name),
                }])
            }
        }
    }
}

/// A set's comment from its IR selector; stable for a given IR name, so a
/// membership change never changes the header (which would recreate the set).
fn set_comment(ir_name: &str, ir: Option<&AddressSet>) -> String {
    match ir {
        Some(s) if !s.selector.is_empty() => comment(&s.selector),
        Some(_) => comment(&format!("address set {ir_name}")),
        None => comment(&format!("address set {ir_name} (not received: empty)")),
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => nft::proto::TCP,
        Protocol::Udp => nft::proto::UDP,
        Protocol::Sctp => nft::proto::SCTP,
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        nft::proto::TCP => "tcp",
        nft::proto::UDP => "udp",
        _ => "sctp",
    }
}

//! NetworkPolicy → nftables: a node's share of the policy IR becomes the filter
//! part of the kube-nft table (see the [module doc](super) for the layout and an
//! example).
//!
//! Chains are shared by content: a pod's ingress (or egress) chain is the
//! rendering of its rule list, named by a hash of that rendering, so 10,000 pods
//! selected by the same policies share one chain, and a policy change creates
//! new chains for the new content while untouched chains stay as they are (the
//! diff then deletes chains nothing dispatches to any more).
//!
//! # Dispatch by class id
//!
//! Pods are not mapped to chains by a verdict map. Each chain has a 32-bit
//! *class id* ([`class_id`], a hash of its name), and dispatch takes two lookups:
//!
//! - the data maps `ingress-class-v4`/`-v6` and `egress-class-v4`/`-v6`
//!   (`type ipv4_addr : mark`) map a local isolated pod's IP to the class id of
//!   its chain; the base chain stores the id in the conntrack mark:
//!   `ct mark set ip saddr map @egress-class-v4` (a miss changes nothing);
//! - the verdict maps `ingress-chains` / `egress-chains` (`type mark : verdict`)
//!   hold one element per chain, `class id : jump <chain>`, applied by one rule
//!   per direction after the lookups of both families: `ct mark vmap
//!   @egress-chains`.
//!
//! Why: adding a `jump` element to a verdict map (or any rule) makes the kernel
//! re-validate the jump graph of the whole table on commit, walking every
//! element of every verdict map once per rule that names the map, into its
//! chain. With one verdict element per pod IP that is 20,000 walks for a
//! 10,000-pod node; with one per chain it is the number of chains, three times
//! (`forward` egress and ingress, `input` egress), and only when a chain is
//! created. A pod that moves to an existing chain changes a data-map element,
//! which no validation walks.
//!
//! **The conntrack mark.** kube-nft uses the conntrack mark of NEW forwarded
//! connections of local pods (and of NEW connections from local pods to the
//! node, in `input`); the packet mark (`meta mark`) stays free for the
//! masquerade bits of Service NAT. Only NEW connections reach the dispatch
//! rules (established and related ones are accepted, invalid ones dropped
//! before them). A class-map miss leaves the ct mark unchanged, so each
//! `ct mark vmap` may see a value this packet did not store; why that never
//! picks a chain of the wrong direction or pod:
//!
//! - a new connection starts with ct mark 0, and 0 is never an id;
//! - the id spaces are disjoint: ingress ids have the top bit clear, egress ids
//!   set. When the source's egress id is in the ct mark and the destination is
//!   not ingress-isolated, the ingress vmap misses: a stale egress id never
//!   dispatches into ingress chains, nor an ingress id into egress chains;
//! - the ids a packet finds are those of the pods it is from and to: stored
//!   by this packet, or by an earlier packet of the same still-NEW (unreplied)
//!   connection when its pod has left every class of that direction since, in
//!   which case the packet is judged by the class the connection started in,
//!   as an established connection would be.
//!
//! Ids are unique per direction: when two chains' ids collide (or an id is 0
//! in its 31 bits), the later chain in render order gets a name
//! suffix (`-c1`, `-c2`…) and with it another id, as content-name collisions do. The
//! incremental renderer cannot reproduce "later" and asks for a full sync.
//! Untracked packets (`notrack`) have no conntrack entry to carry the mark, so
//! `forward` would not dispatch them; kube-nft never untracks pod traffic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use super::names::{comment, ir_object_name, stable_hash32, ContentNames};

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

/// `ingress-class-v4`, `egress-class-v6`, …: the data map from a local
/// isolated pod's IP to the class id of its chain.
pub fn class_map(dir: Dir, fam: Fam) -> String {
    format!("{}-class-{}", dir.label(), fam.suffix())
}

/// `ingress-chains` / `egress-chains`: the verdict map from a class id to
/// `jump <chain>`.
pub fn chains_map(dir: Dir) -> String {
    format!("{}-chains", dir.label())
}

/// The bit that marks egress class ids.
const EGRESS_BIT: u32 = 0x8000_0000;

/// The class id of chain `chain` in direction `dir`: 31 bits of the FNV-1a hash
/// of its name, with the top bit set for egress. `None` when those 31 bits are
/// 0 (never an id: a new connection's ct mark is 0); the renderer then renames
/// the chain like a collision.
pub fn class_id(dir: Dir, chain: &str) -> Option<u32> {
    let low = stable_hash32(chain) & !EGRESS_BIT;
    if low == 0 {
        return None;
    }
    Some(match dir {
        Dir::Ingress => low,
        Dir::Egress => low | EGRESS_BIT,
    })
}

/// The direction of a policy chain, from its name (`in-…` / `eg-…`).
pub fn chain_dir(chain: &str) -> Option<Dir> {
    if chain.starts_with("in-") {
        Some(Dir::Ingress)
    } else if chain.starts_with("eg-") {
        Some(Dir::Egress)
    } else {
        None
    }
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
        classes: Default::default(),
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
    classes: Classes,
}

/// Class ids handed out so far, per direction, and the chains renamed because
/// of an id collision (content name → final name).
#[derive(Default)]
struct Classes {
    owner: HashMap<(bool, u32), String>,
    renamed: HashMap<String, String>,
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
    /// Its class id ([`class_id`]); `None` when the name has no valid id (a
    /// full render would rename the chain).
    pub class: Option<u32>,
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
        classes: Classes::default(),
    };
    let (name, class) = r.chain(dir, rules, &fams);
    let ir_sets = r.ir_sets.take().unwrap_or_default();
    // Alone, `chain` renames only for an invalid id; a full render may rename
    // differently (it depends on the other chains), so the id is withheld.
    let class = r.classes.renamed.is_empty().then_some(class);
    Some(PodChain {
        name,
        class,
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

/// The key of a pod IP in a class map.
pub fn ip_key(ip: &IpAddr) -> ElemKey {
    vec![KeyPart::Value(ip_value(ip))]
}

/// The class-map element of pod `namespace/name` in class `class`.
pub fn class_element(namespace: &str, name: &str, class: u32) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Values(vec![Value::Mark(class)])),
        timeout: None,
        comment: Some(comment(&format!("{namespace}/{name}"))),
    }
}

/// The class id a class-map element holds.
pub fn element_class(v: &ElemValue) -> Option<u32> {
    match &v.data {
        Some(ElemData::Values(vals)) => match vals.as_slice() {
            [Value::Mark(c)] => Some(*c),
            _ => None,
        },
        _ => None,
    }
}

/// The key of class `class` in a chains map.
pub fn class_key(class: u32) -> ElemKey {
    vec![KeyPart::Value(Value::Mark(class))]
}

/// The chains-map element jumping to `chain`.
pub fn chains_element(chain: &str) -> ElemValue {
    ElemValue {
        data: Some(ElemData::Verdict(Verdict::Jump(chain.to_string()))),
        timeout: None,
        comment: Some(comment(chain)),
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
        for dir in [Dir::Ingress, Dir::Egress] {
            self.table.add_set(Set {
                name: chains_map(dir),
                key: vec![DataType::Mark],
                data: Some(SetData::Verdict),
                comment: Some(format!(
                    "kube-nft: class id -> {} policy chain",
                    dir.label()
                )),
                ..Default::default()
            });
        }
        for fam in Fam::ALL {
            for dir in [Dir::Ingress, Dir::Egress] {
                self.table.add_set(Set {
                    name: class_map(dir, fam),
                    key: vec![fam.addr_type()],
                    data: Some(SetData::Values(vec![DataType::Mark])),
                    comment: Some(format!(
                        "kube-nft: {} policy class id of each isolated local pod",
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
        // One `ct mark vmap` rule per direction and base chain, after the
        // class lookups of both families: each rule naming a verdict map is a
        // walk of all its elements when the kernel validates the table (see the
        // module doc for why a stale ct mark cannot dispatch wrongly).
        let set_class = |dir: Dir, field: Field, fam: Fam| Expr::SetFromMap {
            target: Field::CtMark,
            key: MapKey::Fields(vec![field]),
            map: class_map(dir, fam),
        };
        let vmap = |dir: Dir| {
            Rule::new(vec![Expr::Vmap {
                key: MapKey::Fields(vec![Field::CtMark]),
                map: chains_map(dir),
            }])
            .with_comment(format!(
                "kube-nft: {} policy of isolated local pods",
                dir.label()
            ))
        };
        let egress = || {
            let class = |fam: Fam| {
                Rule::new(vec![set_class(Dir::Egress, fam.saddr(), fam)])
                    .with_comment("kube-nft: egress class of isolated local pods")
            };
            [class(Fam::V4), class(Fam::V6), vmap(Dir::Egress)]
        };
        // Node → local pod is exempt from ingress policy. Skipping the ingress
        // class lookup (instead of accepting) leaves later rules of this chain,
        // such as future Service rules, in force for that traffic.
        let ingress = || {
            let class = |fam: Fam| {
                Rule::new(vec![
                    Expr::Match {
                        left: vec![fam.saddr()],
                        op: MatchOp::Neq,
                        right: Rhs::Set(node_addrs_set(fam)),
                    },
                    set_class(Dir::Ingress, fam.daddr(), fam),
                ])
                .with_comment("kube-nft: ingress class of isolated local pods")
            };
            [class(Fam::V4), class(Fam::V6), vmap(Dir::Ingress)]
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
            ]
            .into_iter()
            .chain(egress())
            .chain(ingress())
            .collect(),
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
            ]
            .into_iter()
            .chain(egress())
            .collect(),
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
            let (_, class) = self.chain(dir, rules, &fams);
            for ip in &pod.ips {
                let map = self
                    .table
                    .sets
                    .get_mut(&class_map(dir, Fam::of(ip)))
                    .expect("dispatch() created every map");
                map.elements
                    .insert(ip_key(ip), class_element(&pod.namespace, &pod.name, class));
            }
        }
    }

    /// The (shared) chain for one direction of a pod: its name and class id,
    /// created (with its chains-map element, when the table has that map) if
    /// new.
    fn chain(&mut self, dir: Dir, rules: &[IrRule], fams: &BTreeSet<Fam>) -> (String, u32) {
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
        let (base, new) = self.names.name(dir.chain_prefix(), &content);
        let egress = dir == Dir::Egress;
        if !new {
            let name = self.classes.renamed.get(&base).unwrap_or(&base).clone();
            let class = class_id(dir, &name).expect("a chain's name has a valid id");
            return (name, class);
        }
        // A class id collision (or an invalid id) renames the later chain.
        let mut name = base.clone();
        let mut class = class_id(dir, &name);
        for i in 1.. {
            match class {
                Some(c) if !self.classes.owner.contains_key(&(egress, c)) => break,
                _ => {
                    // `-c<i>`: no content name (`<prefix>-<hash>[-<i>]`) has
                    // this form, so the new name is free.
                    name = format!("{base}-c{i}");
                    class = class_id(dir, &name);
                }
            }
        }
        let class = class.expect("the loop ends on a valid id");
        if name != base {
            self.classes.renamed.insert(base, name.clone());
        }
        self.classes.owner.insert((egress, class), name.clone());
        self.table.add_chain(Chain {
            name: name.clone(),
            base: None,
            comment: Some(header),
            rules: body,
        });
        if let Some(map) = self.table.sets.get_mut(&chains_map(dir)) {
            map.elements.insert(class_key(class), chains_element(&name));
        }
        (name, class)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_ids_are_disjoint_per_direction_and_never_zero() {
        for name in ["in-0f3c94c9d0ed2740", "eg-cc1439ddcfbf0533", "x"] {
            let i = class_id(Dir::Ingress, name).unwrap();
            let e = class_id(Dir::Egress, name).unwrap();
            assert_eq!(i & EGRESS_BIT, 0);
            assert_eq!(e & EGRESS_BIT, EGRESS_BIT);
            assert_eq!(i, e & !EGRESS_BIT);
            assert_ne!(i, 0);
        }
        assert_eq!(chain_dir("in-1"), Some(Dir::Ingress));
        assert_eq!(chain_dir("eg-1"), Some(Dir::Egress));
        assert_eq!(chain_dir("forward"), None);
    }

    /// A chain whose class id is taken gets a `-c1` name, the id of that name
    /// and its own `*-chains` element; asking again returns the same chain.
    #[test]
    fn class_id_collision_renames_the_later_chain() {
        let mut table = Table::new(Family::Inet, "kube-nft");
        let sets = BTreeMap::new();
        let mut r = PolicyRenderer {
            table: &mut table,
            address_sets: &sets,
            names: ContentNames::default(),
            ir_sets: None,
            classes: Classes::default(),
        };
        r.dispatch(&NodePolicy::default());
        let fams: BTreeSet<Fam> = [Fam::V4].into();
        // Render once elsewhere to learn the name and id the chain would get.
        let plain = pod_chain(Dir::Ingress, &[], &["10.0.0.1".parse().unwrap()], &sets).unwrap();
        let taken = plain.class.unwrap();
        r.classes
            .owner
            .insert((false, taken), "in-someone-else".into());
        let (name, class) = r.chain(Dir::Ingress, &[], &fams);
        assert_eq!(name, format!("{}-c1", plain.name));
        assert_eq!(Some(class), class_id(Dir::Ingress, &name));
        assert_ne!(class, taken);
        assert_eq!(r.chain(Dir::Ingress, &[], &fams), (name.clone(), class));
        let chains = &table.sets[&chains_map(Dir::Ingress)];
        assert_eq!(chains.elements.len(), 1);
        assert_eq!(
            chains.elements[&class_key(class)],
            chains_element(&name),
            "{chains:?}"
        );
        assert!(table.chains.contains_key(&name));
    }
}

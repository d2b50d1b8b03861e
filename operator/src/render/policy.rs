//! NetworkPolicy → nftables: a node's share of the policy IR becomes the filter
//! part of the kube-nft table (see the [module doc](super) for the layout and an
//! example).
//!
//! # Three levels: namespace chain, policy chains, selection sets
//!
//! A pod isolated in a direction is dispatched to the chain of its
//! *namespace* for that direction (`in-ns-<namespace>` / `eg-ns-<namespace>`).
//! That chain holds one guard per policy chain used in the namespace,
//! `ip daddr @sel-<chain>-v4 jump <chain>`, and ends in `drop`. A *policy
//! chain* (`in-<hash>` / `eg-<hash>`) holds the allow rules one NetworkPolicy
//! gives a pod; it is named by a hash of its content, so every pod the policy
//! selects shares it (pods whose named ports resolve differently get different
//! chains). The *selection set* `sel-<chain>-v4` holds the IPs of the local
//! pods that use the chain.
//!
//! Why this shape: the kernel re-validates the jump graph of the whole table
//! (every rule of every chain reachable from a base chain) whenever a batch
//! adds a rule or a `jump` element. A pod that is relabelled, created or
//! deleted changes only which policies select it, which here is set elements:
//! the selection sets, the class maps below and the peer address sets. Chains
//! and rules appear only when a policy (or a new variant of its named ports)
//! first applies to a pod of this node, and when a namespace gets its first
//! isolated pod. One chain per *combination* of policies would instead create
//! a chain on a large share of relabels (a pod's new label set is often a
//! combination no other pod has), each costing a walk of the whole table;
//! measured on the 10,000-pod bench that walk was 4–7 ms.
//!
//! Per packet, only NEW connections reach the dispatch (established and
//! related ones are accepted first), and they pay two map lookups plus one set
//! lookup per policy chain of their namespace.
//!
//! # Dispatch by class id
//!
//! Pods are not mapped to their namespace chain by a verdict map. Each
//! namespace chain has a 32-bit *class id* ([`class_id`], a hash of its name),
//! and dispatch takes two lookups:
//!
//! - the data maps `ingress-class-v4`/`-v6` and `egress-class-v4`/`-v6`
//!   (`type ipv4_addr : mark`) map a local isolated pod's IP to the class id of
//!   its namespace chain; the base chain stores the id in the conntrack mark:
//!   `ct mark set ip saddr map @egress-class-v4` (a miss changes nothing);
//! - the verdict maps `ingress-chains` / `egress-chains` (`type mark : verdict`)
//!   hold one element per namespace chain, `class id : jump <chain>`, applied
//!   by one rule per base chain after the lookups of both families: `ct mark
//!   vmap @egress-chains`.
//!
//! Why: a `jump` element, like a rule, makes the kernel re-validate the table.
//! With one verdict element per pod IP every new pod would pay that walk;
//! with one per namespace chain only a namespace's first isolated pod does.
//!
//! # Two base chains on the forward hook
//!
//! Egress and ingress are judged in separate base chains, `forward-egress`
//! (priority -1) and `forward` (priority 0), so an allow rule can `accept` from
//! any depth of jumps: an accept ends one base chain and the packet goes on to
//! the next, while a drop is final. Traffic from a local pod to another local
//! pod thus passes the sender's egress and then the receiver's ingress check.
//!
//! **The conntrack mark.** kube-nft uses the conntrack mark of NEW forwarded
//! connections of local pods (and of NEW connections from local pods to the
//! node, in `input`); the packet mark (`meta mark`) stays free for the
//! masquerade bits of Service NAT. A class-map miss leaves the ct mark
//! unchanged, so each `ct mark vmap` may see a value this packet did not
//! store; why that never picks a chain of the wrong direction or pod:
//!
//! - a new connection starts with ct mark 0, or with the id of its Service's
//!   endpoint-count group after DNAT; neither 0 nor a group id (bit 30) is
//!   ever a class id;
//! - the id spaces are disjoint: ingress ids have the top bit clear, egress ids
//!   set. When the source's egress id is in the ct mark and the destination is
//!   not ingress-isolated, the ingress vmap misses: a stale egress id never
//!   dispatches into ingress chains, nor an ingress id into egress chains;
//! - the ids a packet finds are those of the pods it is from and to: stored
//!   by this packet, or by an earlier packet of the same still-NEW (unreplied)
//!   connection when its pod has left every class of that direction since, in
//!   which case the packet is judged by the namespace chain the connection
//!   started in; the selection sets there are current, so the pod's current
//!   policies decide.
//!
//! Ids are unique per direction: when two namespace chains' ids collide (or an
//! id is 0 in its 30 bits), the later chain in render order gets a name suffix
//! (`_c1`, `_c2`…) and with it another id. The incremental renderer cannot
//! reproduce "later" and asks for a full sync. Untracked packets (`notrack`)
//! have no conntrack entry to carry the mark, so `forward` would not dispatch
//! them; kube-nft never untracks pod traffic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use kube_nft_crds::ir::{
    AddressSet, AddressSetElement, IrPeer, IrPort, IrRule, NodePolicy, PodPolicy,
};
use nft::render::{is_valid_name, render_rule};
use nft::{
    ct_state, BaseChain, Chain, ChainPolicy, ChainType, DataType, ElemData, ElemKey, ElemValue,
    Expr, Family, Field, Hook, KeyPart, MapKey, MatchOp, Rhs, Rule, Set, SetData, SetFlags, Table,
    Value, Verdict,
};

use super::intervals::{self, Range};
use super::names::{comment, ir_object_name, stable_hash, stable_hash32, ContentNames};
use super::values::{ip_value, proto_number};
pub use crate::service::IpFamily;

/// The filter base chain judging the ingress policy of local pods for traffic
/// routed through the node. Priority 0 runs after Service DNAT (`dstnat`,
/// -100) in prerouting, so policy judges the real pod address behind a
/// Service VIP.
pub const FORWARD: &str = "forward";
/// The filter base chain judging the egress policy of local pods for traffic
/// routed through the node (priority -1: before [`FORWARD`], also after DNAT).
pub const FORWARD_EGRESS: &str = "forward-egress";
/// The filter base chain for traffic to the node's own addresses, where only
/// the egress policy of the sending pod applies.
pub const INPUT: &str = "input";

/// Direction of a policy, from the point of view of the isolated pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    pub const ALL: [Dir; 2] = [Dir::Ingress, Dir::Egress];

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
    fn remote(self, fam: IpFamily) -> Field {
        match self {
            Dir::Ingress => fam.saddr(),
            Dir::Egress => fam.daddr(),
        }
    }

    /// The packet field holding the isolated local pod.
    fn local(self, fam: IpFamily) -> Field {
        match self {
            Dir::Ingress => fam.daddr(),
            Dir::Egress => fam.saddr(),
        }
    }
}

/// `ingress-class-v4`, `egress-class-v6`, …: the data map from a local
/// isolated pod's IP to the class id of its namespace chain.
pub fn class_map(dir: Dir, fam: IpFamily) -> String {
    format!("{}-class-{}", dir.label(), fam.suffix())
}

/// `ingress-chains` / `egress-chains`: the verdict map from a class id to
/// `jump <namespace chain>`.
pub fn chains_map(dir: Dir) -> String {
    format!("{}-chains", dir.label())
}

/// The bit that marks egress class ids.
const EGRESS_BIT: u32 = 0x8000_0000;

/// The class id of namespace chain `chain` in direction `dir`: 30 bits of the
/// FNV-1a hash of its name, with the top bit set for egress. Bit 30 is never
/// set: it marks Service group ids, which Service DNAT leaves in the ct mark
/// of a new connection (see [`super::service::GROUP_ID_BIT`]). `None` when
/// the 30 bits are 0 (never an id: a new connection's ct mark is 0); the
/// renderer then renames the chain like a collision.
pub fn class_id(dir: Dir, chain: &str) -> Option<u32> {
    let low = stable_hash32(chain) & 0x3fff_ffff;
    if low == 0 {
        return None;
    }
    Some(match dir {
        Dir::Ingress => low,
        Dir::Egress => low | EGRESS_BIT,
    })
}

/// The direction of a namespace or policy chain, from its name (`in-…` /
/// `eg-…`).
pub fn chain_dir(chain: &str) -> Option<Dir> {
    if chain.starts_with("in-") {
        Some(Dir::Ingress)
    } else if chain.starts_with("eg-") {
        Some(Dir::Egress)
    } else {
        None
    }
}

/// `in-ns-<namespace>` / `eg-ns-<namespace>`: the chain isolated pods of a
/// namespace are dispatched to (before any class-id collision rename).
/// Namespace names are DNS labels, valid in nft names; anything else (names
/// come from another process in a cluster) is hashed under `-nsx-`.
pub fn ns_chain_name(dir: Dir, namespace: &str) -> String {
    let readable = format!("{}-ns-{namespace}", dir.chain_prefix());
    if readable.len() <= 80 && is_valid_name(&readable) {
        readable
    } else {
        format!("{}-nsx-{:016x}", dir.chain_prefix(), stable_hash(namespace))
    }
}

/// Whether `chain` is a namespace chain (policy chains are `in-<hex>`, which
/// never contains `ns`).
pub fn is_ns_chain(chain: &str) -> bool {
    chain.get(2..6) == Some("-ns-") || chain.get(2..7) == Some("-nsx-")
}

/// `sel-<chain>-v4` / `-v6`: the IPs of the local pods that use policy chain
/// `chain`.
pub fn sel_set(chain: &str, fam: IpFamily) -> String {
    format!("sel-{chain}-{}", fam.suffix())
}

/// `node-addrs-v4` / `-v6`: the node's own addresses, exempt from ingress policy.
pub fn node_addrs_set(fam: IpFamily) -> String {
    format!("node-addrs-{}", fam.suffix())
}

/// Adds the NetworkPolicy part of `node`'s ruleset to `table`: the dispatch
/// maps, the base chains, one chain per namespace with isolated pods, one
/// chain per distinct (policy, rule list) and the sets those chains use.
/// `address_sets` may hold more sets than the node uses; only referenced ones
/// are rendered. A referenced set missing from it renders empty (matches
/// nothing: an allow rule fails closed).
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
        guards: BTreeMap::new(),
        pod_elements: Vec::new(),
    };
    r.dispatch(node);
    for pod in &node.pods {
        r.pod(pod);
    }
    for (ns_chain, guards) in std::mem::take(&mut r.guards) {
        let dir = chain_dir(&ns_chain).expect("namespace chains are in- or eg-");
        let chain = r
            .table
            .chains
            .get_mut(&ns_chain)
            .expect("ns_chain() created it");
        chain.rules = ns_chain_rules(dir, &guards);
    }
}

/// The guards of a namespace chain: (policy chain, family) → the policy's
/// `namespace/name`.
pub type Guards = BTreeMap<(String, IpFamily), String>;

struct PolicyRenderer<'a> {
    table: &'a mut Table,
    address_sets: &'a BTreeMap<String, AddressSet>,
    names: ContentNames,
    /// `Some`: render `as-`/`asp-` sets as headers only and record here what
    /// they stand for (see [`pod_policy_chains`]).
    ir_sets: Option<BTreeMap<String, IrSetRef>>,
    classes: Classes,
    /// Guards per namespace chain, filled while pods are rendered.
    guards: BTreeMap<String, Guards>,
    /// The current pod's elements in `np-` sets, from the last
    /// [`policy_chain`](Self::policy_chain).
    pod_elements: Vec<(String, ElemKey)>,
}

/// Class ids handed out so far, per direction, and the namespace chains
/// renamed because of an id collision (plain name → final name).
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
    pub fam: IpFamily,
    pub ports: bool,
}

/// One policy chain of a pod, rendered on its own (see [`pod_policy_chains`]).
#[derive(Debug, Clone)]
pub struct PolicyChain {
    /// The content name of the chain (`in-…`/`eg-…`).
    pub name: String,
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    /// The families its rules cover (those of the pod's IPs).
    pub fams: BTreeSet<IpFamily>,
    /// The chain and every set its rules use; `as-`/`asp-` sets are headers
    /// without elements ([`ir_set_elements`] fills them).
    pub objects: Table,
    /// What each `as-`/`asp-` set in `objects` stands for.
    pub ir_sets: BTreeMap<String, IrSetRef>,
    /// The pod's own elements in the chain's `np-` sets (its named ports),
    /// which `objects` renders without elements.
    pub pod_elements: Vec<(String, ElemKey)>,
}

/// The policy chains a pod with IPs `ips` uses for `rules` in direction
/// `dir`, exactly as [`contribute`] renders them (same content, same names),
/// without the rest of the table. Empty when the pod has no IP or no rule
/// can match. Content names are computed afresh, so the (never seen)
/// hash-collision suffix of a full render is not reproduced.
pub fn pod_policy_chains(
    dir: Dir,
    rules: &[IrRule],
    ips: &[IpAddr],
    address_sets: &BTreeMap<String, AddressSet>,
) -> Vec<PolicyChain> {
    let fams: BTreeSet<IpFamily> = ips.iter().map(IpFamily::of).collect();
    if fams.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (policy, group) in by_policy(rules) {
        let mut objects = Table::new(Family::Inet, super::TABLE_NAME);
        let mut r = PolicyRenderer {
            table: &mut objects,
            address_sets,
            names: ContentNames::default(),
            ir_sets: Some(BTreeMap::new()),
            classes: Classes::default(),
            guards: BTreeMap::new(),
            pod_elements: Vec::new(),
        };
        let Some(name) = r.policy_chain(dir, policy, &group, ips) else {
            continue;
        };
        let ir_sets = r.ir_sets.take().unwrap_or_default();
        let pod_elements = std::mem::take(&mut r.pod_elements);
        out.push(PolicyChain {
            name,
            policy: policy.to_string(),
            fams: fams.clone(),
            objects,
            ir_sets,
            pod_elements,
        });
    }
    out
}

/// A pod's rules grouped by the policy they come from, in first-seen order
/// of the policies (the IR lists them sorted) and rule order within each.
fn by_policy(rules: &[IrRule]) -> Vec<(&str, Vec<&IrRule>)> {
    let mut groups: Vec<(&str, Vec<&IrRule>)> = Vec::new();
    for rule in rules {
        match groups.iter_mut().find(|(p, _)| *p == rule.policy) {
            Some((_, g)) => g.push(rule),
            None => groups.push((&rule.policy, vec![rule])),
        }
    }
    groups
}

/// The header of namespace chain `name` for `namespace`.
pub fn ns_chain_header(dir: Dir, name: &str, namespace: &str) -> Chain {
    Chain {
        name: name.to_string(),
        base: None,
        comment: Some(comment(&format!(
            "{}: isolated pods of namespace {namespace}",
            dir.label()
        ))),
        rules: Vec::new(),
    }
}

/// The rules of a namespace chain: one guard per (policy chain, family), in
/// name order, then the drop for what no policy allows.
pub fn ns_chain_rules(dir: Dir, guards: &Guards) -> Vec<Rule> {
    let mut rules: Vec<Rule> = guards
        .iter()
        .map(|((chain, fam), policy)| {
            Rule::new(vec![
                Expr::Match {
                    left: vec![dir.local(*fam)],
                    op: MatchOp::Eq,
                    right: Rhs::Set(sel_set(chain, *fam)),
                },
                Expr::Verdict(Verdict::Jump(chain.clone())),
            ])
            .with_comment(comment(&format!("NetworkPolicy {policy}")))
        })
        .collect();
    rules.push(
        Rule::new(vec![Expr::Counter, Expr::Verdict(Verdict::Drop)]).with_comment(format!(
            "kube-nft: {} not allowed by any NetworkPolicy",
            dir.label()
        )),
    );
    rules
}

/// The guards of a rendered namespace chain (the inverse of
/// [`ns_chain_rules`]).
pub fn ns_chain_guards(chain: &Chain) -> Guards {
    let mut guards = Guards::new();
    for rule in &chain.rules {
        if let [Expr::Match {
            left,
            right: Rhs::Set(_),
            ..
        }, Expr::Verdict(Verdict::Jump(target))] = rule.exprs.as_slice()
        {
            let Some(fam) = left.first().and_then(|f| IpFamily::of_field(*f)) else {
                continue;
            };
            let policy = rule
                .comment
                .as_deref()
                .and_then(|c| c.strip_prefix("NetworkPolicy "))
                .unwrap_or_default();
            guards.insert((target.clone(), fam), policy.to_string());
        }
    }
    guards
}

/// The header of the selection set of `chain` for `fam`.
pub fn sel_set_header(chain: &str, fam: IpFamily, policy: &str) -> Set {
    Set {
        name: sel_set(chain, fam),
        key: vec![fam.addr_type()],
        comment: Some(comment(&format!(
            "local pods selected by NetworkPolicy {policy}"
        ))),
        ..Default::default()
    }
}

/// The element of a pod in a selection set.
pub fn sel_element(namespace: &str, name: &str) -> ElemValue {
    ElemValue {
        data: None,
        timeout: None,
        comment: Some(comment(&format!("{namespace}/{name}"))),
    }
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
        .filter(|e| IpFamily::of(&e.ip) == r.fam)
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

/// The key of a pod IP in a class map or selection set.
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
    /// Maps, node address sets and the three base chains. They exist even when
    /// the node isolates no pod, so that base chains never change after
    /// start-up.
    fn dispatch(&mut self, node: &NodePolicy) {
        for dir in Dir::ALL {
            self.table.add_set(Set {
                name: chains_map(dir),
                key: vec![DataType::Mark],
                data: Some(SetData::Verdict),
                comment: Some(format!(
                    "kube-nft: class id -> {} namespace chain",
                    dir.label()
                )),
                ..Default::default()
            });
        }
        for fam in IpFamily::ALL {
            for dir in Dir::ALL {
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
                .filter(|ip| IpFamily::of(ip) == fam)
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
        let invalid = Rule::new(vec![
            ct_bits(ct_state::INVALID),
            Expr::Verdict(Verdict::Drop),
        ])
        .with_comment("kube-nft: invalid packets");
        // One `ct mark vmap` rule per base chain, after the class lookups of
        // both families (see the module doc for why a stale ct mark cannot
        // dispatch wrongly).
        let set_class = |dir: Dir, fam: IpFamily| Expr::SetFromMap {
            target: Field::CtMark,
            key: MapKey::Fields(vec![dir.local(fam)]),
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
            let class = |fam: IpFamily| {
                Rule::new(vec![set_class(Dir::Egress, fam)])
                    .with_comment("kube-nft: egress class of isolated local pods")
            };
            [class(IpFamily::V4), class(IpFamily::V6), vmap(Dir::Egress)]
        };
        // Node → local pod is exempt from ingress policy. Skipping the ingress
        // class lookup (instead of accepting) leaves later rules of this chain
        // in force for that traffic.
        let ingress = || {
            let class = |fam: IpFamily| {
                Rule::new(vec![
                    Expr::Match {
                        left: vec![fam.saddr()],
                        op: MatchOp::Neq,
                        right: Rhs::Set(node_addrs_set(fam)),
                    },
                    set_class(Dir::Ingress, fam),
                ])
                .with_comment("kube-nft: ingress class of isolated local pods")
            };
            [class(IpFamily::V4), class(IpFamily::V6), vmap(Dir::Ingress)]
        };

        let base = |hook, priority| {
            Some(BaseChain {
                kind: ChainType::Filter,
                hook,
                priority,
                policy: ChainPolicy::Accept,
            })
        };
        self.table.add_chain(Chain {
            name: FORWARD_EGRESS.into(),
            base: base(Hook::Forward, -1),
            comment: Some("kube-nft: NetworkPolicy egress of local pods".into()),
            rules: [established.clone(), invalid.clone()]
                .into_iter()
                .chain(egress())
                .collect(),
        });
        self.table.add_chain(Chain {
            name: FORWARD.into(),
            base: base(Hook::Forward, 0),
            comment: Some("kube-nft: NetworkPolicy ingress of local pods".into()),
            rules: [established.clone(), invalid]
                .into_iter()
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
            base: base(Hook::Input, 0),
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
        // either: a v4-only pod's chains hold v4 rules only.
        let fams: BTreeSet<IpFamily> = pod.ips.iter().map(IpFamily::of).collect();
        for (dir, isolated, rules) in [
            (Dir::Ingress, pod.ingress_isolated, &pod.ingress),
            (Dir::Egress, pod.egress_isolated, &pod.egress),
        ] {
            if !isolated || fams.is_empty() {
                continue;
            }
            let (ns_chain, class) = self.ns_chain(dir, &pod.namespace);
            for ip in &pod.ips {
                let map = self
                    .table
                    .sets
                    .get_mut(&class_map(dir, IpFamily::of(ip)))
                    .expect("dispatch() created every map");
                map.elements
                    .insert(ip_key(ip), class_element(&pod.namespace, &pod.name, class));
            }
            for (policy, group) in by_policy(rules) {
                let Some(chain) = self.policy_chain(dir, policy, &group, &pod.ips) else {
                    continue;
                };
                for (set, key) in std::mem::take(&mut self.pod_elements) {
                    let set = self.table.sets.get_mut(&set).expect("rule() created it");
                    set.elements
                        .insert(key, sel_element(&pod.namespace, &pod.name));
                }
                for ip in &pod.ips {
                    let fam = IpFamily::of(ip);
                    let set = self
                        .table
                        .sets
                        .entry(sel_set(&chain, fam))
                        .or_insert_with(|| sel_set_header(&chain, fam, policy));
                    set.elements
                        .insert(ip_key(ip), sel_element(&pod.namespace, &pod.name));
                    self.guards
                        .entry(ns_chain.clone())
                        .or_default()
                        .insert((chain.clone(), fam), policy.to_string());
                }
            }
        }
    }

    /// The namespace chain of direction `dir` for `namespace`: its name and
    /// class id, its header and chains-map element created if new (the
    /// guards are filled in at the end of the render).
    fn ns_chain(&mut self, dir: Dir, namespace: &str) -> (String, u32) {
        let base = ns_chain_name(dir, namespace);
        let egress = dir == Dir::Egress;
        let name = self.classes.renamed.get(&base).unwrap_or(&base).clone();
        if self.table.chains.contains_key(&name) {
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
                    // `_c<i>`: namespace names (DNS labels) have no `_`, so
                    // the new name is free.
                    name = format!("{base}_c{i}");
                    class = class_id(dir, &name);
                }
            }
        }
        let class = class.expect("the loop ends on a valid id");
        if name != base {
            self.classes.renamed.insert(base, name.clone());
        }
        self.classes.owner.insert((egress, class), name.clone());
        self.table.add_chain(ns_chain_header(dir, &name, namespace));
        self.guards.entry(name.clone()).or_default();
        if let Some(map) = self.table.sets.get_mut(&chains_map(dir)) {
            map.elements.insert(class_key(class), chains_element(&name));
        }
        (name, class)
    }

    /// The (shared) chain of one policy's rules for one direction of a pod:
    /// its name, created if new. `None` when no rule can match anything.
    fn policy_chain(
        &mut self,
        dir: Dir,
        policy: &str,
        rules: &[&IrRule],
        ips: &[IpAddr],
    ) -> Option<String> {
        let fams: BTreeSet<IpFamily> = ips.iter().map(IpFamily::of).collect();
        let mut body = Vec::new();
        self.pod_elements.clear();
        for rule in rules {
            self.rule(dir, rule, ips, &fams, &mut body);
        }
        if body.is_empty() {
            return None;
        }
        let header = comment(&format!("{}: NetworkPolicy {policy}", dir.label()));
        // The identity of a chain is all of it, comment included, so the
        // comment never depends on which pod happened to create the chain;
        // and the families of its pods, which fix its selection sets (a
        // dual-stack pod's rules may render the same as a v4-only pod's).
        let mut content = header.clone();
        for fam in &fams {
            content.push(' ');
            content.push_str(fam.suffix());
        }
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
        Some(name)
    }

    /// Appends the nft rules of one IR rule: one per (peer, family).
    fn rule(
        &mut self,
        dir: Dir,
        rule: &IrRule,
        ips: &[IpAddr],
        fams: &BTreeSet<IpFamily>,
        out: &mut Vec<Rule>,
    ) {
        let note = comment(&format!(
            "NetworkPolicy {} {}[{}]",
            rule.policy,
            dir.label(),
            rule.rule_index
        ));
        // What a peer match is combined with: the numeric ports (every port
        // when the rule names none at all), and per family the pod's own named
        // ports, looked up by (local pod, protocol, port).
        let numeric = match (rule.ports.is_empty(), rule.named_ports.is_empty()) {
            (true, true) => Some(PortMatch::All),
            (true, false) => None,
            (false, _) => Some(self.ports(&rule.ports)),
        };
        let in_set = |field: Vec<Field>, set: String| Expr::Match {
            left: field,
            op: MatchOp::Eq,
            right: Rhs::Set(set),
        };
        // Peer matches first: (statements, family they are limited to,
        // whether the ports apply).
        let mut matches: Vec<(Vec<Expr>, Option<IpFamily>, bool)> = Vec::new();
        for peer in &rule.peers {
            match peer {
                IrPeer::Any => matches.push((Vec::new(), None, true)),
                IrPeer::AddressSet { name } => {
                    for &fam in fams {
                        let set = self.address_set(name, fam);
                        matches.push((vec![in_set(vec![dir.remote(fam)], set)], Some(fam), true));
                    }
                }
                IrPeer::AddressPortSet { name } => {
                    for &fam in fams {
                        let set = self.address_port_set(name, fam);
                        let key = vec![dir.remote(fam), Field::L4Proto, Field::ThDport];
                        matches.push((vec![in_set(key, set)], Some(fam), false));
                    }
                }
                IrPeer::Cidr { cidr, except } => {
                    if let Some((fam, set)) = self.cidr_set(cidr, except, fams) {
                        matches.push((vec![in_set(vec![dir.remote(fam)], set)], Some(fam), true));
                    }
                }
            }
        }
        // Named-port sets only for the families some port-restricted match
        // uses, so no set exists that no rule names.
        let mut named = BTreeMap::new();
        if !rule.named_ports.is_empty() {
            for &fam in fams {
                let used = matches
                    .iter()
                    .any(|(_, f, ports)| *ports && f.is_none_or(|f| f == fam));
                if used {
                    named.insert(fam, self.local_port_set(dir, rule, ips, fam));
                }
            }
        }
        let allow = Expr::Verdict(Verdict::Accept);
        for (exprs, fam, with_ports) in matches {
            let mut emit = |extra: &[Expr]| {
                let mut e = exprs.clone();
                e.extend(extra.iter().cloned());
                e.push(allow.clone());
                out.push(Rule::new(e).with_comment(note.clone()));
            };
            if !with_ports {
                emit(&[]);
                continue;
            }
            match &numeric {
                Some(PortMatch::All) => emit(&[]),
                Some(PortMatch::Exprs(p)) => emit(p),
                Some(PortMatch::Nothing) | None => {}
            }
            for (f, set) in &named {
                if fam.is_none_or(|x| x == *f) {
                    emit(&[Expr::Match {
                        left: vec![dir.local(*f), Field::L4Proto, Field::ThDport],
                        op: MatchOp::Eq,
                        right: Rhs::Set(set.clone()),
                    }]);
                }
            }
        }
    }

    /// `np-<hash>-v4`: (local pod IP, protocol, port) of the named ports of
    /// one policy rule, resolved on each pod that uses it, so pods whose
    /// ports differ share one chain. The pod's elements go to
    /// `pod_elements`.
    fn local_port_set(&mut self, dir: Dir, rule: &IrRule, ips: &[IpAddr], fam: IpFamily) -> String {
        let names: Vec<String> = rule
            .named_ports
            .iter()
            .map(|p| format!("{}/{}", p.protocol, p.name))
            .collect();
        let text = format!(
            "NetworkPolicy {} {}[{}] named ports {}",
            rule.policy,
            dir.label(),
            rule.rule_index,
            names.join(",")
        );
        let (base, _) = self.names.name("np", &text);
        let name = format!("{base}-{}", fam.suffix());
        if !self.table.sets.contains_key(&name) {
            self.table.add_set(Set {
                name: name.clone(),
                key: vec![fam.addr_type(), DataType::InetProto, DataType::InetService],
                comment: Some(comment(&text)),
                ..Default::default()
            });
        }
        for ip in ips.iter().filter(|ip| IpFamily::of(ip) == fam) {
            for p in &rule.named_ports {
                let key = vec![
                    KeyPart::Value(ip_value(ip)),
                    KeyPart::Value(Value::Proto(proto_number(p.protocol))),
                    KeyPart::Value(Value::Port(p.port)),
                ];
                self.pod_elements.push((name.clone(), key));
            }
        }
        name
    }

    /// The elements of a new `as-`/`asp-` set, or none (recorded for later)
    /// when rendering a chain alone.
    fn ir_set(
        &mut self,
        nft_name: &str,
        ir_name: &str,
        fam: IpFamily,
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
    fn address_set(&mut self, ir_name: &str, fam: IpFamily) -> String {
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
    fn address_port_set(&mut self, ir_name: &str, fam: IpFamily) -> String {
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
        fams: &BTreeSet<IpFamily>,
    ) -> Option<(IpFamily, String)> {
        let net = cidr.parse::<IpNet>().ok()?.trunc();
        let fam = IpFamily::of(&net.addr());
        if !fams.contains(&fam) {
            return None;
        }
        let mut holes = Vec::new();
        for e in except {
            let e = e.parse::<IpNet>().ok()?.trunc();
            // An except of the other family cannot exclude anything.
            if IpFamily::of(&e.addr()) == fam {
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
        for name in ["in-ns-default", "eg-ns-kube-system", "x"] {
            let i = class_id(Dir::Ingress, name).unwrap();
            let e = class_id(Dir::Egress, name).unwrap();
            assert_eq!(i & EGRESS_BIT, 0);
            assert_eq!((i | e) & super::super::service::GROUP_ID_BIT, 0);
            assert_eq!(e & EGRESS_BIT, EGRESS_BIT);
            assert_eq!(i, e & !EGRESS_BIT);
            assert_ne!(i, 0);
        }
        assert_eq!(chain_dir("in-1"), Some(Dir::Ingress));
        assert_eq!(chain_dir("eg-1"), Some(Dir::Egress));
        assert_eq!(chain_dir("forward"), None);
    }

    #[test]
    fn namespace_chain_names() {
        assert_eq!(ns_chain_name(Dir::Ingress, "default"), "in-ns-default");
        assert_eq!(
            ns_chain_name(Dir::Egress, "kube-system"),
            "eg-ns-kube-system"
        );
        let odd = ns_chain_name(Dir::Ingress, "a b");
        assert!(odd.starts_with("in-nsx-") && is_valid_name(&odd), "{odd}");
        for ns in ["in-ns-default", "eg-nsx-0011223344556677", "in-ns-a_c1"] {
            assert!(is_ns_chain(ns), "{ns}");
        }
        for chain in ["in-0f3c94c9d0ed2740", "eg-cc1439ddcfbf0533-1", "forward"] {
            assert!(!is_ns_chain(chain), "{chain}");
        }
    }

    /// A namespace chain whose class id is taken gets a `_c1` name, the id of
    /// that name and its own `*-chains` element; asking again returns the
    /// same chain.
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
            guards: BTreeMap::new(),
            pod_elements: Vec::new(),
        };
        r.dispatch(&NodePolicy::default());
        let plain = ns_chain_name(Dir::Ingress, "demo");
        let taken = class_id(Dir::Ingress, &plain).unwrap();
        r.classes
            .owner
            .insert((false, taken), "in-ns-someone-else".into());
        let (name, class) = r.ns_chain(Dir::Ingress, "demo");
        assert_eq!(name, format!("{plain}_c1"));
        assert_eq!(Some(class), class_id(Dir::Ingress, &name));
        assert_ne!(class, taken);
        assert_eq!(r.ns_chain(Dir::Ingress, "demo"), (name.clone(), class));
        let chains = &table.sets[&chains_map(Dir::Ingress)];
        assert_eq!(chains.elements.len(), 1);
        assert_eq!(
            chains.elements[&class_key(class)],
            chains_element(&name),
            "{chains:?}"
        );
        assert!(table.chains.contains_key(&name));
    }

    #[test]
    fn guards_round_trip_through_rules() {
        let guards: Guards = [
            (("in-00aa".to_string(), IpFamily::V4), "demo/a".to_string()),
            (("in-00aa".to_string(), IpFamily::V6), "demo/a".to_string()),
            (("in-00bb".to_string(), IpFamily::V4), "demo/b".to_string()),
        ]
        .into();
        let mut chain = ns_chain_header(Dir::Ingress, "in-ns-demo", "demo");
        chain.rules = ns_chain_rules(Dir::Ingress, &guards);
        assert_eq!(chain.rules.len(), 4, "three guards and the drop");
        assert_eq!(ns_chain_guards(&chain), guards);
    }
}

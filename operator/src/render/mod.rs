//! The agent's renderer: a node's share of the policy IR and its Service
//! NAT model → the desired `nft::Table`. Pure: the same input always renders the
//! same table, byte for byte, so the agent can diff it against the committed one
//! (`nft::diff::diff`) and send only the difference.
//!
//! One table, `inet kube-nft`, assembled here from contributions: [`policy`]
//! adds the NetworkPolicy chains, [`service`] the Service NAT and masquerade
//! chains (see its module doc for their layout).
//!
//! # NetworkPolicy layout
//!
//! ```text
//! forward-egress (filter, hook forward, priority -1)          after Service DNAT
//!   ct state established,related accept
//!   ct state invalid drop
//!   ct mark set ip saddr map @egress-class-v4               ; same for ip6
//!   ct mark vmap @egress-chains                              → eg-ns-<namespace>
//! forward (filter, hook forward, priority 0)
//!   ct state established,related accept
//!   ct state invalid drop
//!   ip saddr != @node-addrs-v4 ct mark set ip daddr map @ingress-class-v4   ; same for ip6
//!   ct mark vmap @ingress-chains                             → in-ns-<namespace>
//! input (filter, hook input, priority 0)                      pod → this node
//!   ct state established,related accept
//!   ct state untracked accept           (IPv6 neighbour discovery, MLD)
//!   ct mark set ip saddr map @egress-class-v4               ; same for ip6
//!   ct mark vmap @egress-chains
//! in-ns-<namespace> / eg-ns-<namespace>   one per namespace with isolated local pods
//!   ip daddr @sel-in-<hash>-v4 jump in-<hash>                ; one guard per policy chain
//!   counter drop
//! in-<hash> / eg-<hash>                   one NetworkPolicy's rules, shared by its pods
//!   ip saddr @as-peer-…-v4 meta l4proto tcp th dport 80 accept
//! ```
//!
//! - A pod isolated in a direction has its IPs in that direction's class map
//!   (its namespace chain's class id, stored in the conntrack mark) and in the
//!   selection set `sel-<chain>-v4/-v6` of each policy chain it uses; so a pod
//!   created, deleted or relabelled changes set elements only, never a rule
//!   (see [`policy`] for why, and for the use of the ct mark).
//! - Pods not isolated in a direction have no element in that direction's map,
//!   and traffic of pods on other nodes never matches either map: policy accept.
//! - Egress and ingress are separate base chains, so allow rules `accept` at
//!   any depth and a same-node destination's ingress check still runs.
//! - The node's own addresses (`node-addrs-v4/-v6`) skip the ingress dispatch,
//!   in `forward` too, so a node address reaching a local pod through another
//!   interface is allowed like node → pod through the output hook, which
//!   kube-nft never filters (the node may always reach its pods).
//! - Policy chains are named by a hash of their content (comment, families and
//!   rules), so the pods a policy selects share one chain. Ingress named ports
//!   resolve per pod, so pods whose ports differ get different chains.
//! - Sets: `as-<ir>-v4/-v6` (IPs of an IR address set), `asp-<ir>-v4/-v6` (IP .
//!   proto . port for named egress ports), `cidr-<hash>` (an ipBlock minus its
//!   excepts, disjoint intervals), `ports-<hash>` (`inet_proto . inet_service`
//!   intervals when a rule has several ports), `sel-<chain>-v4/-v6`. Only sets
//!   that some chain uses are rendered.
//!
//! Example (abridged `render_text`): pod `demo/web` selected by a deny-all policy
//! and `demo/allow-web` (TCP 80 and 8000-8080 from pods labelled `role=client`),
//! pod `demo/client` selected by deny-all only:
//!
//! ```text
//! table inet kube-nft {
//!     comment "kube-nft: NetworkPolicy and Services, managed by the kube-nft agent"
//!     set as-peer-aa9ee1d30e485868-v4 {
//!         type ipv4_addr
//!         comment "namespace=demo;pods=role=client"
//!         elements = { 10.0.1.11 }
//!     }
//!     map ingress-chains {
//!         type mark : verdict
//!         elements = { 0x3bb9e1ee comment "in-ns-demo" : jump in-ns-demo }
//!     }
//!     map ingress-class-v4 {
//!         type ipv4_addr : mark
//!         elements = { 10.0.1.10 comment "demo/web" : 0x3bb9e1ee,
//!                      10.0.1.11 comment "demo/client" : 0x3bb9e1ee }
//!     }
//!     set node-addrs-v4 { type ipv4_addr; elements = { 192.168.0.1 } }
//!     set ports-ab4b74d4e2b3dd92 {
//!         type inet_proto . inet_service
//!         flags interval
//!         elements = { tcp . 80, tcp . 8000-8080 }
//!     }
//!     set sel-in-7cdfff2cf935b221-v4 {
//!         type ipv4_addr
//!         comment "local pods selected by NetworkPolicy demo/allow-web"
//!         elements = { 10.0.1.10 comment "demo/web" }
//!     }
//!     chain in-7cdfff2cf935b221 {
//!         comment "ingress: NetworkPolicy demo/allow-web"
//!         ip saddr @as-peer-aa9ee1d30e485868-v4 meta l4proto . th dport @ports-ab4b74d4e2b3dd92 accept comment "NetworkPolicy demo/allow-web ingress[0]"
//!     }
//!     chain in-ns-demo {
//!         comment "ingress: isolated pods of namespace demo"
//!         ip daddr @sel-in-7cdfff2cf935b221-v4 jump in-7cdfff2cf935b221 comment "NetworkPolicy demo/allow-web"
//!         counter drop comment "kube-nft: ingress not allowed by any NetworkPolicy"
//!     }
//!     (egress-chains, egress-class-v4/-v6, ingress-class-v6 and node-addrs-v6
//!      maps/sets; chains forward-egress, forward, input)
//! }
//! ```

pub mod delta;
pub mod intervals;
pub mod names;
pub mod policy;
pub mod service;
mod values;

use std::collections::BTreeMap;

use kube_nft_crds::ir::{AddressSet, NodePolicy};

use crate::service::{NodeServices, ServiceConfig};
use nft::{Family, Table};

/// The table kube-nft owns (family `inet`: one table for IPv4 and IPv6).
pub const TABLE_NAME: &str = "kube-nft";
pub const TABLE_FAMILY: Family = Family::Inet;
/// Constant on purpose: a changed table comment makes the diff reload the table.
pub const TABLE_COMMENT: &str =
    "kube-nft: NetworkPolicy and Services, managed by the kube-nft agent";

/// Everything one node's table is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    /// The node's share of the compiled policy.
    pub policy: &'a NodePolicy,
    /// Address sets by IR name; may hold more than the node references.
    pub address_sets: &'a BTreeMap<String, AddressSet>,
    /// The node's Service NAT model and settings; `None` renders the policy
    /// part alone.
    pub services: Option<(&'a NodeServices, &'a ServiceConfig)>,
}

/// The whole desired table for a node.
pub fn render(input: &RenderInput<'_>) -> Table {
    let mut table = Table::new(TABLE_FAMILY, TABLE_NAME);
    table.comment = Some(TABLE_COMMENT.into());
    policy::contribute(&mut table, input.policy, input.address_sets);
    if let Some((services, config)) = input.services {
        service::contribute(&mut table, services, config);
    }
    table
}

/// The table for a node's NetworkPolicy share alone.
pub fn render_policy(node: &NodePolicy, address_sets: &BTreeMap<String, AddressSet>) -> Table {
    render(&RenderInput {
        policy: node,
        address_sets,
        services: None,
    })
}

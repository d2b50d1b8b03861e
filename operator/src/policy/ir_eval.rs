//! The IR evaluator: what the kernel ruleset rendered from the IR will decide
//! for a new connection. Used to check the compiler against explain, and by the
//! lab to say which IR rule let a packet through.

use std::net::IpAddr;

use ipnet::IpNet;
use kube_nft_crds::ir::{AddressSetElement, CompiledPolicy, IrPeer, IrRule, PodPolicy};

use super::flow::IpFlow;

/// How the IR decides one direction of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrDecision {
    /// No isolated pod owns the address on this side.
    NotIsolated,
    /// Ingress from an address of the destination pod's node.
    FromOwnNode,
    /// The first rule that matched.
    Rule {
        policy: String,
        rule_index: usize,
    },
    Denied,
}

impl IrDecision {
    pub fn allowed(&self) -> bool {
        !matches!(self, IrDecision::Denied)
    }
}

/// Is `flow` allowed by the compiled policy (egress at the source's pod and
/// ingress at the destination's pod)?
pub fn ir_allows(ir: &CompiledPolicy, flow: &IpFlow) -> bool {
    let (egress, ingress) = ir_decide(ir, flow);
    egress.allowed() && ingress.allowed()
}

/// (egress, ingress) decisions for `flow`.
pub fn ir_decide(ir: &CompiledPolicy, flow: &IpFlow) -> (IrDecision, IrDecision) {
    let egress = match find_pod(ir, flow.src) {
        Some((_, pod)) if pod.egress_isolated => first_match(ir, &pod.egress, flow.dst, flow),
        _ => IrDecision::NotIsolated,
    };
    let ingress = match find_pod(ir, flow.dst) {
        Some((node_addresses, pod)) if pod.ingress_isolated => {
            if node_addresses.contains(&flow.src) {
                IrDecision::FromOwnNode
            } else {
                first_match(ir, &pod.ingress, flow.src, flow)
            }
        }
        _ => IrDecision::NotIsolated,
    };
    (egress, ingress)
}

fn find_pod(ir: &CompiledPolicy, ip: IpAddr) -> Option<(&[IpAddr], &PodPolicy)> {
    ir.nodes.values().find_map(|n| {
        n.pods
            .iter()
            .find(|p| p.ips.contains(&ip))
            .map(|p| (n.node_addresses.as_slice(), p))
    })
}

fn first_match(ir: &CompiledPolicy, rules: &[IrRule], remote: IpAddr, flow: &IpFlow) -> IrDecision {
    rules
        .iter()
        .find(|r| rule_matches(ir, r, remote, flow))
        .map_or(IrDecision::Denied, |r| IrDecision::Rule {
            policy: r.policy.clone(),
            rule_index: r.rule_index,
        })
}

fn rule_matches(ir: &CompiledPolicy, rule: &IrRule, remote: IpAddr, flow: &IpFlow) -> bool {
    let ports_ok = rule.ports_match(flow.protocol, flow.port);
    let in_set = |name: &str, element: &AddressSetElement| {
        ir.address_sets
            .get(name)
            .is_some_and(|s| s.elements.binary_search(element).is_ok())
    };
    rule.peers.iter().any(|peer| match peer {
        IrPeer::Any => ports_ok,
        IrPeer::AddressSet { name } => {
            ports_ok
                && in_set(
                    name,
                    &AddressSetElement {
                        ip: remote,
                        protocol: None,
                        port: None,
                    },
                )
        }
        IrPeer::Cidr { cidr, except } => {
            let inside = |s: &str| s.parse::<IpNet>().is_ok_and(|n| n.contains(&remote));
            ports_ok && inside(cidr) && !except.iter().any(|e| inside(e))
        }
        IrPeer::AddressPortSet { name } => in_set(
            name,
            &AddressSetElement {
                ip: remote,
                protocol: Some(flow.protocol),
                port: Some(flow.port),
            },
        ),
    })
}

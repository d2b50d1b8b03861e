//! The compiled policy IR: what the operator computes from NetworkPolicies and
//! what each node's agent renders into nftables.
//!
//! The types are plain serde + `JsonSchema` data (camelCase on the wire) so they
//! flow in-process through the lab today and can become CRD specs later.
//! Everything is ordered (sorted `Vec`s, `BTreeMap`s) so the same cluster always
//! compiles to byte-identical output.
//!
//! # Semantics a renderer must implement (the IR evaluator in
//! `kube_nft::policy::ir_eval` is the executable version)
//!
//! * A pod absent from every [`NodePolicy`] is not isolated in either direction.
//! * For an isolated direction, a new connection is allowed iff the remote address
//!   is one of the node's [`NodePolicy::node_addresses`] (ingress only: the node may
//!   always reach its own pods) or some [`IrRule`] of that direction matches.
//! * A rule matches iff one of its peers matches:
//!   - [`IrPeer::Any`], [`IrPeer::AddressSet`] and [`IrPeer::Cidr`] match on the
//!     remote IP alone, and then the rule's `ports` must match too (an empty
//!     `ports` list means every port of every protocol);
//!   - [`IrPeer::AddressPortSet`] matches on (remote IP, protocol, port) from its
//!     set's elements and ignores the rule's `ports` (it is how a named port in an
//!     egress rule resolves differently per destination pod).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Transport protocol of a NetworkPolicy port (TCP when a policy omits it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); case-insensitive
    /// because people type `tcp` on the command line.
    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole compiled cluster: shared address sets plus each node's share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    /// Address sets by name (names are stable: derived from the selector, not
    /// from the pods it currently matches).
    pub address_sets: BTreeMap<String, AddressSet>,
    /// Per-node shares by node name. Pods with an IP but no `spec.nodeName`
    /// are listed under the empty node name.
    pub nodes: BTreeMap<String, NodePolicy>,
}

/// A resolved peer selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressSet {
    pub name: String,
    /// Canonical text of what the set stands for (for comments and explain).
    pub selector: String,
    /// Sorted, deduplicated.
    pub elements: Vec<AddressSetElement>,
}

/// One member of an [`AddressSet`]: an IP, or an IP with the protocol and port a
/// named port resolved to on that pod.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AddressSetElement {
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The policy one node enforces: only the pods it hosts that some policy isolates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicy {
    pub node: String,
    /// Addresses of the node itself: traffic from them to an isolated pod on this
    /// node is always allowed (kubelet probes; upstream NetworkPolicy semantics).
    pub node_addresses: Vec<IpAddr>,
    /// Sorted by namespace/name.
    pub pods: Vec<PodPolicy>,
}

/// Policy of one pod isolated in at least one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodPolicy {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Only meaningful when `ingress_isolated`.
    pub ingress: Vec<IrRule>,
    /// Only meaningful when `egress_isolated`.
    pub egress: Vec<IrRule>,
}

/// One allow rule, traceable to the NetworkPolicy rule it came from. One policy
/// rule may yield two IR rules with the same `policy`/`rule_index` (numeric ports
/// and named egress ports are split).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IrRule {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule_index: usize,
    pub peers: Vec<IrPeer>,
    /// Numeric ports. Empty (and `named_ports` empty too) = every port of
    /// every protocol.
    pub ports: Vec<IrPort>,
    /// Ingress only: the rule's named ports, resolved on the pod the rule
    /// belongs to. They add to `ports`. Kept apart so that a renderer can
    /// share one chain between pods that resolve a name to different numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<IrNamedPort>,
}

impl IrRule {
    /// Whether the rule's ports allow `protocol`/`port` (peers aside).
    pub fn ports_match(&self, protocol: Protocol, port: u16) -> bool {
        (self.ports.is_empty() && self.named_ports.is_empty())
            || self.ports.iter().any(|p| p.matches(protocol, port))
            || self
                .named_ports
                .iter()
                .any(|p| p.protocol == protocol && p.port == port)
    }
}

/// A named container port of the pod a rule belongs to: the name the policy
/// gives and the number it has on that pod.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct IrNamedPort {
    pub protocol: Protocol,
    pub name: String,
    pub port: u16,
}

/// Where a rule allows traffic from (ingress) or to (egress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum IrPeer {
    /// Any address (the rule had no `from`/`to`).
    Any,
    /// Addresses of the named [`AddressSet`] (elements carry no ports).
    #[serde(rename_all = "camelCase")]
    AddressSet { name: String },
    /// (address, protocol, port) elements of the named [`AddressSet`]; the
    /// rule's `ports` do not apply to this peer.
    #[serde(rename_all = "camelCase")]
    AddressPortSet { name: String },
    /// An ipBlock.
    #[serde(rename_all = "camelCase")]
    Cidr { cidr: String, except: Vec<String> },
}

/// A port match: `port: None` = every port of `protocol`; with `end_port`, the
/// inclusive range `port..=end_port`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct IrPort {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl IrPort {
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        if self.protocol != protocol {
            return false;
        }
        match (self.port, self.end_port) {
            (None, _) => true,
            (Some(p), None) => p == port,
            (Some(p), Some(end)) => (p..=end).contains(&port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_camel_case_and_round_trips() {
        let ir = CompiledPolicy {
            address_sets: BTreeMap::from([(
                "ports-1".to_string(),
                AddressSet {
                    name: "ports-1".into(),
                    selector: "any;namedPorts=TCP/http".into(),
                    elements: vec![AddressSetElement {
                        ip: "10.0.0.1".parse().unwrap(),
                        protocol: Some(Protocol::Tcp),
                        port: Some(8080),
                    }],
                },
            )]),
            nodes: BTreeMap::from([(
                "n".to_string(),
                NodePolicy {
                    node: "n".into(),
                    node_addresses: vec!["172.18.0.1".parse().unwrap()],
                    pods: vec![PodPolicy {
                        namespace: "x".into(),
                        name: "a".into(),
                        ips: vec!["10.0.0.2".parse().unwrap()],
                        ingress_isolated: true,
                        egress_isolated: false,
                        ingress: vec![IrRule {
                            policy: "x/p".into(),
                            rule_index: 0,
                            peers: vec![
                                IrPeer::AddressPortSet {
                                    name: "ports-1".into(),
                                },
                                IrPeer::Cidr {
                                    cidr: "10.0.0.0/8".into(),
                                    except: vec![],
                                },
                            ],
                            ports: vec![IrPort {
                                protocol: Protocol::Udp,
                                port: Some(53),
                                end_port: Some(60),
                            }],
                            named_ports: vec![IrNamedPort {
                                protocol: Protocol::Tcp,
                                name: "http".into(),
                                port: 8080,
                            }],
                        }],
                        egress: vec![],
                    }],
                },
            )]),
        };
        let v = serde_json::to_value(&ir).unwrap();
        let pod = &v["nodes"]["n"]["pods"][0];
        assert_eq!(pod["ingressIsolated"], true);
        assert_eq!(pod["ingress"][0]["ruleIndex"], 0);
        assert_eq!(pod["ingress"][0]["peers"][0]["kind"], "addressPortSet");
        assert_eq!(pod["ingress"][0]["ports"][0]["endPort"], 60);
        assert_eq!(pod["ingress"][0]["ports"][0]["protocol"], "UDP");
        assert_eq!(pod["ingress"][0]["namedPorts"][0]["name"], "http");
        assert_eq!(v["nodes"]["n"]["nodeAddresses"][0], "172.18.0.1");
        let back: CompiledPolicy = serde_json::from_value(v).unwrap();
        assert_eq!(back, ir);
    }

    #[test]
    fn schema_generates() {
        let schema = schemars::schema_for!(CompiledPolicy);
        let text = serde_json::to_string(&schema).unwrap();
        assert!(text.contains("addressSets"), "{text}");
    }

    #[test]
    fn port_ranges() {
        let p = IrPort {
            protocol: Protocol::Tcp,
            port: Some(80),
            end_port: Some(90),
        };
        assert!(p.matches(Protocol::Tcp, 80) && p.matches(Protocol::Tcp, 90));
        assert!(!p.matches(Protocol::Tcp, 91) && !p.matches(Protocol::Udp, 85));
        let any = IrPort {
            protocol: Protocol::Sctp,
            port: None,
            end_port: None,
        };
        assert!(any.matches(Protocol::Sctp, 1) && !any.matches(Protocol::Tcp, 1));
        assert_eq!(Protocol::parse("udp"), Some(Protocol::Udp));
    }
}

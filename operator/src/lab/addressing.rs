//! The lab's address plan (pure): fixed underlay and outside ranges, node
//! InternalIPs, and each pod's IPs checked against or allocated from its node's
//! pod CIDR.
//!
//! Pods attach Calico-style: the pod has its /32 (/128) on `eth0` and a default
//! route via a link-local gateway that the node's veth answers for (proxy ARP for
//! IPv4, a real `fe80::1` address for IPv6), so no per-node pod subnet or bridge
//! is needed and every pod IP is routed individually on its node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::topology::LabSpec;
use super::LabError;

/// The node network: the underlay router and every node's InternalIP.
pub const UNDERLAY_V4: Ipv4Net = net4(Ipv4Addr::new(172, 31, 0, 0), 24);
pub const UNDERLAY_V6: Ipv6Net = net6(Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 0), 64);
/// The underlay router's address on the node network.
pub const UNDERLAY_ROUTER_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
pub const UNDERLAY_ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
/// Node `i` is `172.31.0.(10 + i)`; the first ten addresses stay free for
/// infrastructure such as the router.
const FIRST_NODE_HOST: u8 = 10;

/// The outside host's network (TEST-NET-3), beyond every cluster CIDR and routed
/// through the underlay.
pub const OUTSIDE_V4: Ipv4Net = net4(Ipv4Addr::new(203, 0, 113, 0), 24);
pub const OUTSIDE_V6: Ipv6Net = net6(Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 0), 64);
pub const OUTSIDE_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const OUTSIDE_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 1);
pub const OUTSIDE_HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const OUTSIDE_HOST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 0x10);

/// Every pod's default gateway (answered by its node's veth).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

const fn net4(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, len) {
        Ok(net) => net,
        Err(_) => panic!("invalid IPv4 prefix length"),
    }
}

const fn net6(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    match Ipv6Net::new(addr, len) {
        Ok(net) => net,
        Err(_) => panic!("invalid IPv6 prefix length"),
    }
}

/// Ranges the lab uses itself; a pod CIDR overlapping one would be unroutable.
fn reserved_ranges() -> Vec<(IpNet, &'static str)> {
    vec![
        (UNDERLAY_V4.into(), "the lab's node network"),
        (UNDERLAY_V6.into(), "the lab's node network"),
        (OUTSIDE_V4.into(), "the lab's outside network"),
        (OUTSIDE_V6.into(), "the lab's outside network"),
        (net4(Ipv4Addr::new(169, 254, 0, 0), 16).into(), "link-local"),
        (
            net6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10).into(),
            "link-local",
        ),
        (net4(Ipv4Addr::new(127, 0, 0, 0), 8).into(), "loopback"),
    ]
}

/// Addresses of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddresses {
    pub internal_ip: Ipv4Addr,
    pub internal_ipv6: Ipv6Addr,
}

/// Addresses of one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddresses {
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

/// Addresses for every node and pod, in spec order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    pub nodes: Vec<NodeAddresses>,
    pub pods: Vec<PodAddresses>,
}

/// Checks the spec and assigns addresses: given pod IPs must lie in their node's
/// pod CIDR; the others are allocated from it in spec order, skipping the
/// network address, the first host (conventionally the gateway), the broadcast
/// address and every address already taken.
pub fn plan(spec: &LabSpec) -> Result<AddressPlan, LabError> {
    let node_index = check_nodes(spec)?;
    let nodes = (0..spec.nodes.len())
        .map(|i| {
            let host = u8::try_from(i)
                .ok()
                .and_then(|i| i.checked_add(FIRST_NODE_HOST))
                .filter(|h| *h < 255)
                .ok_or_else(|| {
                    spec_error(format!(
                        "at most {} nodes fit the node network",
                        255 - FIRST_NODE_HOST
                    ))
                })?;
            let [a, b, c, _] = UNDERLAY_V4.network().octets();
            let mut v6 = UNDERLAY_V6.network().segments();
            v6[7] = u16::from(host);
            Ok(NodeAddresses {
                internal_ip: Ipv4Addr::new(a, b, c, host),
                internal_ipv6: Ipv6Addr::from(v6),
            })
        })
        .collect::<Result<Vec<_>, LabError>>()?;

    // Given addresses first, so allocation never hands out one a later pod asked for.
    let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut given = Vec::with_capacity(spec.pods.len());
    for pod in &spec.pods {
        let who = format!("pod {}/{}", pod.namespace, pod.name);
        let node = &spec.nodes[*node_index.get(pod.node.as_str()).ok_or_else(|| {
            spec_error(format!(
                "{who}: node {:?} is not one of the lab's nodes",
                pod.node
            ))
        })?];
        if let Some(ip) = pod.ip {
            check_given(
                IpAddr::V4(ip),
                &IpNet::V4(node.pod_cidr),
                &who,
                "ip",
                &node.name,
            )?;
            claim(&mut owners, IpAddr::V4(ip), &who)?;
        }
        match (pod.ipv6, node.pod_cidr_v6) {
            (Some(ip), Some(cidr)) => {
                check_given(IpAddr::V6(ip), &IpNet::V6(cidr), &who, "ipv6", &node.name)?;
                claim(&mut owners, IpAddr::V6(ip), &who)?;
            }
            (Some(ip), None) => {
                return Err(spec_error(format!(
                    "{who}: ipv6 {ip} given but node {} has no IPv6 pod CIDR",
                    node.name
                )))
            }
            _ => {}
        }
        given.push(node);
    }

    let mut pods = Vec::with_capacity(spec.pods.len());
    for (pod, node) in spec.pods.iter().zip(given) {
        let who = format!("pod {}/{}", pod.namespace, pod.name);
        let ip = match pod.ip {
            Some(ip) => ip,
            None => {
                let ip = allocate(&IpNet::V4(node.pod_cidr), &owners)
                    .ok_or_else(|| exhausted(&who, &node.name, &node.pod_cidr.to_string()))?;
                claim(&mut owners, ip, &who)?;
                as_v4(ip)
            }
        };
        let ipv6 = match (pod.ipv6, node.pod_cidr_v6) {
            (Some(ip), _) => Some(ip),
            (None, Some(cidr)) => {
                let ip = allocate(&IpNet::V6(cidr), &owners)
                    .ok_or_else(|| exhausted(&who, &node.name, &cidr.to_string()))?;
                claim(&mut owners, ip, &who)?;
                Some(as_v6(ip))
            }
            (None, None) => None,
        };
        pods.push(PodAddresses { ip, ipv6 });
    }
    Ok(AddressPlan { nodes, pods })
}

/// Node names unique, pod CIDRs disjoint from each other and from the lab's own
/// ranges, pod names unique. Returns node name → index.
fn check_nodes(spec: &LabSpec) -> Result<BTreeMap<&str, usize>, LabError> {
    let mut index = BTreeMap::new();
    let mut cidrs: Vec<(IpNet, String)> = reserved_ranges()
        .into_iter()
        .map(|(net, what)| (net, what.to_string()))
        .collect();
    for (i, node) in spec.nodes.iter().enumerate() {
        if node.name.is_empty() {
            return Err(spec_error(format!("node #{i}: name is empty")));
        }
        if index.insert(node.name.as_str(), i).is_some() {
            return Err(spec_error(format!("node {}: listed twice", node.name)));
        }
        let own = std::iter::once(IpNet::V4(node.pod_cidr)).chain(node.pod_cidr_v6.map(IpNet::V6));
        for (field, cidr) in ["podCIDR", "podCIDR (IPv6)"].into_iter().zip(own) {
            if let Some((_, other)) = cidrs.iter().find(|(net, _)| overlaps(net, &cidr)) {
                return Err(spec_error(format!(
                    "node {}: {field} {cidr} overlaps {other}",
                    node.name
                )));
            }
            cidrs.push((cidr, format!("the podCIDR of node {}", node.name)));
        }
    }
    let mut pod_names = BTreeSet::new();
    for pod in &spec.pods {
        if !pod_names.insert((pod.namespace.as_str(), pod.name.as_str())) {
            return Err(spec_error(format!(
                "pod {}/{}: listed twice",
                pod.namespace, pod.name
            )));
        }
    }
    Ok(index)
}

fn check_given(
    ip: IpAddr,
    cidr: &IpNet,
    who: &str,
    field: &str,
    node: &str,
) -> Result<(), LabError> {
    if !cidr.contains(&ip) {
        return Err(spec_error(format!(
            "{who}: {field} {ip} is outside podCIDR {cidr} of its node {node}"
        )));
    }
    let is_v4_subnet_edge = matches!(cidr, IpNet::V4(_))
        && cidr.prefix_len() <= 30
        && (ip == cidr.network() || ip == cidr.broadcast());
    if is_v4_subnet_edge {
        return Err(spec_error(format!(
            "{who}: {field} {ip} is the network or broadcast address of podCIDR {cidr}"
        )));
    }
    Ok(())
}

fn claim(owners: &mut BTreeMap<IpAddr, String>, ip: IpAddr, who: &str) -> Result<(), LabError> {
    if let Some(first) = owners.get(&ip) {
        return Err(spec_error(format!("{who}: IP {ip} is already {first}'s")));
    }
    owners.insert(ip, who.to_string());
    Ok(())
}

/// The lowest free address of `cidr` from its second host on (the first is
/// the conventional gateway), below the IPv4 broadcast address.
pub fn allocate(cidr: &IpNet, taken: &BTreeMap<IpAddr, String>) -> Option<IpAddr> {
    let (network, broadcast) = (to_u128(cidr.network()), to_u128(cidr.broadcast()));
    let last = match cidr {
        IpNet::V4(_) => broadcast.checked_sub(1)?,
        IpNet::V6(_) => broadcast,
    };
    let mut candidate = network.checked_add(2)?;
    // Each taken address can push the candidate by one, so this ends after at
    // most taken.len() + 1 steps even for a /64.
    while candidate <= last {
        let ip = from_u128(cidr, candidate);
        if !taken.contains_key(&ip) {
            return Some(ip);
        }
        candidate += 1;
    }
    None
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

fn from_u128(family: &IpNet, value: u128) -> IpAddr {
    match family {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

fn as_v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("allocated from an IPv4 CIDR"),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(ip) => ip,
        IpAddr::V4(_) => unreachable!("allocated from an IPv6 CIDR"),
    }
}

fn exhausted(who: &str, node: &str, cidr: &str) -> LabError {
    spec_error(format!(
        "{who}: no free address left in podCIDR {cidr} of node {node}"
    ))
}

fn spec_error(message: String) -> LabError {
    LabError::Spec(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::{NodeSpec, PodSpec};

    fn node(name: &str, cidr: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            pod_cidr: cidr.parse().unwrap(),
            pod_cidr_v6: None,
        }
    }

    fn pod(name: &str, node: &str, ip: Option<&str>) -> PodSpec {
        PodSpec {
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            ip: ip.map(|ip| ip.parse().unwrap()),
            ipv6: None,
            ports: vec![],
        }
    }

    fn spec(nodes: Vec<NodeSpec>, pods: Vec<PodSpec>) -> LabSpec {
        LabSpec { nodes, pods }
    }

    fn error_of(spec: &LabSpec) -> String {
        plan(spec).unwrap_err().to_string()
    }

    #[test]
    fn allocation_skips_network_gateway_and_given_addresses() {
        let s = spec(
            vec![node("a", "10.244.0.0/24"), node("b", "10.244.1.0/24")],
            vec![
                pod("p1", "a", None),
                pod("p2", "a", Some("10.244.0.2")),
                pod("p3", "b", None),
                pod("p4", "a", None),
            ],
        );
        let plan = plan(&s).unwrap();
        let ips: Vec<String> = plan.pods.iter().map(|p| p.ip.to_string()).collect();
        assert_eq!(
            ips,
            ["10.244.0.3", "10.244.0.2", "10.244.1.2", "10.244.0.4"]
        );
        assert_eq!(plan.nodes[0].internal_ip, Ipv4Addr::new(172, 31, 0, 10));
        assert_eq!(plan.nodes[1].internal_ip, Ipv4Addr::new(172, 31, 0, 11));
        assert_eq!(
            plan.nodes[1].internal_ipv6,
            "fd00:31::b".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn a_small_cidr_runs_out_with_the_pod_named() {
        // /30: .0 network, .1 gateway, .2 the only pod address, .3 broadcast.
        let s = spec(
            vec![node("a", "10.244.0.0/30")],
            vec![pod("p1", "a", None), pod("p2", "a", None)],
        );
        let message = error_of(&s);
        assert!(
            message.contains("pod default/p2") && message.contains("10.244.0.0/30"),
            "{message}"
        );
    }

    #[test]
    fn given_ip_outside_the_node_cidr_names_pod_and_node() {
        let s = spec(
            vec![node("a", "10.244.0.0/24")],
            vec![pod("web", "a", Some("10.244.9.9"))],
        );
        let message = error_of(&s);
        assert!(
            message.contains("pod default/web")
                && message.contains("10.244.9.9")
                && message.contains("node a"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_ips_name_both_pods() {
        let s = spec(
            vec![node("a", "10.244.0.0/24")],
            vec![
                pod("x", "a", Some("10.244.0.7")),
                pod("y", "a", Some("10.244.0.7")),
            ],
        );
        let message = error_of(&s);
        assert!(
            message.contains("default/x") && message.contains("default/y"),
            "{message}"
        );
    }

    #[test]
    fn broken_specs_are_rejected_with_the_object_named() {
        let unknown_node = spec(vec![node("a", "10.244.0.0/24")], vec![pod("p", "zz", None)]);
        assert!(error_of(&unknown_node).contains("node \"zz\""));
        let overlap = spec(
            vec![node("a", "10.244.0.0/16"), node("b", "10.244.1.0/24")],
            vec![],
        );
        assert!(error_of(&overlap).contains("node b"));
        let reserved = spec(vec![node("a", "172.31.0.0/16")], vec![]);
        assert!(error_of(&reserved).contains("node network"));
        let broadcast = spec(
            vec![node("a", "10.244.0.0/24")],
            vec![pod("p", "a", Some("10.244.0.255"))],
        );
        assert!(error_of(&broadcast).contains("broadcast"));
        let mut v6_without_cidr = pod("p", "a", None);
        v6_without_cidr.ipv6 = Some("fd00:10::5".parse().unwrap());
        let s = spec(vec![node("a", "10.244.0.0/24")], vec![v6_without_cidr]);
        assert!(error_of(&s).contains("no IPv6 pod CIDR"));
    }

    #[test]
    fn dual_stack_nodes_give_every_pod_an_ipv6() {
        let mut a = node("a", "10.244.0.0/24");
        a.pod_cidr_v6 = Some("fd00:10:244::/64".parse().unwrap());
        let plan = plan(&spec(
            vec![a],
            vec![pod("p1", "a", None), pod("p2", "a", None)],
        ))
        .unwrap();
        let v6: Vec<String> = plan
            .pods
            .iter()
            .map(|p| p.ipv6.unwrap().to_string())
            .collect();
        assert_eq!(v6, ["fd00:10:244::2", "fd00:10:244::3"]);
    }
}

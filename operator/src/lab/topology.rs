//! Builds the lab's network from a plain spec:
//!
//! ```text
//!  outside (203.0.113.10) ── underlay router (br0 172.31.0.1, routes podCIDR_i via node_i)
//!                                   │ br0
//!             ┌─────────────────────┴──────────────────────┐
//!     node0 eth0 172.31.0.10                       node1 eth0 172.31.0.11
//!      │ pod0 (proxy ARP, route pod/32)             │ pod2 …
//!     pod eth0 10.244.0.2/32, default via 169.254.1.1
//! ```
//!
//! Configuration goes through `ip -n NS -b -` batches, one process per
//! namespace, namespaces of one stage in parallel: underlay, then nodes and the
//! outside host (their uplinks exist now), then pods.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

use super::addressing::{self, AddressPlan};
use super::naming::{self, UNDERLAY_BRIDGE, UNDERLAY_OUTSIDE_IFACE, UPLINK_IFACE};
use super::netns::{add_namespaces, run_ip_batches, IpBatch, LabGuard, Netns};
use super::{LabError, Protocol, Result};

/// What to build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabSpec {
    pub nodes: Vec<NodeSpec>,
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    /// Dual-stack when set: every pod on the node also gets an IPv6 from it.
    pub pod_cidr_v6: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// Allocated from the node's pod CIDR when `None`.
    pub ip: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ports: Vec<PodPort>,
}

/// A container port the pod listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodPort {
    pub protocol: Protocol,
    pub port: u16,
}

/// The built lab. Namespaces live as long as the [`LabGuard`] it was built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
    /// The router joining nodes and the outside host.
    pub underlay: Netns,
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    pub outside: OutsideHost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    pub name: String,
    pub netns: Netns,
    /// The node's InternalIP (on its `eth0`).
    pub internal_ip: Ipv4Addr,
    pub internal_ipv6: Ipv6Addr,
    pub pod_cidr: Ipv4Net,
    pub pod_cidr_v6: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub ports: Vec<PodPort>,
    /// The node-side end of the pod's veth (where the node sees its traffic).
    pub node_iface: String,
}

impl LabPod {
    /// `namespace/name`, what the pod's listeners answer with.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn ips(&self) -> Vec<IpAddr> {
        std::iter::once(IpAddr::V4(self.ip))
            .chain(self.ipv6.map(IpAddr::V6))
            .collect()
    }
}

/// A host beyond the cluster CIDR, routed through the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideHost {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl AsRef<Netns> for LabPod {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

impl AsRef<Netns> for LabNode {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

impl AsRef<Netns> for OutsideHost {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

impl AsRef<Netns> for Netns {
    fn as_ref(&self) -> &Netns {
        self
    }
}

impl Topology {
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&LabPod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every namespace of the lab.
    pub fn namespaces(&self) -> Vec<&Netns> {
        std::iter::once(&self.underlay)
            .chain(std::iter::once(&self.outside.netns))
            .chain(self.nodes.iter().map(|n| &n.netns))
            .chain(self.pods.iter().map(|p| &p.netns))
            .collect()
    }
}

/// Builds the spec's network under `guard`'s prefix. On error, whatever was
/// created so far is removed when the guard drops.
pub fn build(spec: &LabSpec, guard: &LabGuard) -> Result<Topology> {
    let plan = addressing::plan(spec)?;
    let topology = describe(spec, &plan, guard.prefix());
    let names: Vec<String> = topology
        .namespaces()
        .into_iter()
        .map(|n| n.name.clone())
        .collect();
    add_namespaces(&names)?;

    set_sysctls(&stage_sysctls(&topology))?;
    run_ip_batches(&[underlay_batch(&topology)])?;
    let mut stage = vec![outside_batch(&topology.outside)];
    stage.extend(
        topology
            .nodes
            .iter()
            .map(|node| node_batch(node, &topology.pods)),
    );
    run_ip_batches(&stage)?;
    // Per-interface sysctls exist only now that the node-side veths do.
    let pod_veth_sysctls = topology
        .nodes
        .iter()
        .map(|node| (&node.netns, pod_veth_sysctls(node, &topology.pods)))
        .collect::<Vec<_>>();
    let pods: Vec<IpBatch> = topology.pods.iter().map(pod_batch).collect();
    thread::scope(|scope| {
        let sysctls = scope.spawn(|| set_sysctls(&pod_veth_sysctls));
        let pods = run_ip_batches(&pods);
        sysctls
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .and(pods)
    })?;
    wait_until_ready(&topology.namespaces(), READINESS_TIMEOUT)?;
    Ok(topology)
}

/// Far above the usual few milliseconds; the kernel rate-limits link events.
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until every interface passes traffic and every address is usable.
/// Both happen asynchronously after `ip` returns: a veth whose peer just came up
/// drops packets until the kernel's link-watch work marks it operationally up
/// and activates its queue, and IPv6 addresses stay tentative (unusable) until
/// the addrconf work runs. A first UDP datagram right after `build` would be
/// lost (TCP only hides it behind its 1 s SYN retransmit).
fn wait_until_ready(namespaces: &[&Netns], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Netns> = namespaces.to_vec();
    loop {
        let listings = pending
            .iter()
            .map(|netns| {
                let mut child = Command::new("ip")
                    .args(["-n", &netns.name, "-o", "-b", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| LabError::io("running `ip link/addr show`", e))?;
                let mut stdin = child.stdin.take().expect("stdin is piped");
                stdin
                    .write_all(b"link show\naddr show\n")
                    .map_err(|e| LabError::io("writing to `ip`", e))?;
                Ok(child)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut not_ready = Vec::new();
        for (netns, listing) in pending.into_iter().zip(listings) {
            let output = listing
                .wait_with_output()
                .map_err(|e| LabError::io("waiting for `ip link/addr show`", e))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if let Some(line) = first_not_ready(&stdout) {
                not_ready.push((netns, line.to_string()));
            }
        }
        let Some((netns, line)) = not_ready.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(LabError::io(
                format!("waiting for namespace {} to pass traffic", netns.name),
                io::Error::new(io::ErrorKind::TimedOut, format!("still not ready: {line}")),
            ));
        }
        pending = not_ready.into_iter().map(|(netns, _)| netns).collect();
        thread::sleep(Duration::from_millis(5));
    }
}

/// The first line of `ip -o link show` + `ip -o addr show` output naming an
/// interface that is administratively up but not yet operationally up, or an
/// address still tentative.
fn first_not_ready(listing: &str) -> Option<&str> {
    listing.lines().find(|line| {
        if line.contains(" inet ") || line.contains(" inet6 ") {
            return line.contains(" tentative");
        }
        let flags = line
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map_or("", |(flags, _)| flags);
        let has = |wanted: &str| flags.split(',').any(|flag| flag == wanted);
        if !has("UP") || has("LOOPBACK") || line.contains(" state UP ") {
            return false;
        }
        // The bridge's carrier-on event is not urgent for the kernel (its queue
        // is active already), so its operstate stays UNKNOWN for up to a second
        // while it forwards fine. A veth (`name@peer`) must reach UP.
        let is_peer_link = line
            .split(": ")
            .nth(1)
            .is_some_and(|name| name.contains('@'));
        !(has("LOWER_UP") && line.contains(" state UNKNOWN ") && !is_peer_link)
    })
}

/// The topology the spec and plan describe, before anything exists (pure).
fn describe(spec: &LabSpec, plan: &AddressPlan, prefix: &str) -> Topology {
    let nodes = spec
        .nodes
        .iter()
        .zip(&plan.nodes)
        .enumerate()
        .map(|(i, (node, addresses))| LabNode {
            name: node.name.clone(),
            netns: Netns::new(naming::node_netns(prefix, i, &node.name)),
            internal_ip: addresses.internal_ip,
            internal_ipv6: addresses.internal_ipv6,
            pod_cidr: node.pod_cidr,
            pod_cidr_v6: node.pod_cidr_v6,
        })
        .collect();
    let pods = spec
        .pods
        .iter()
        .zip(&plan.pods)
        .enumerate()
        .map(|(i, (pod, addresses))| LabPod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            node: pod.node.clone(),
            netns: Netns::new(naming::pod_netns(prefix, i, &pod.namespace, &pod.name)),
            ip: addresses.ip,
            ipv6: addresses.ipv6,
            ports: pod.ports.clone(),
            node_iface: naming::node_pod_iface(i),
        })
        .collect();
    Topology {
        prefix: prefix.to_string(),
        underlay: Netns::new(naming::underlay_netns(prefix)),
        nodes,
        pods,
        outside: OutsideHost {
            netns: Netns::new(naming::outside_netns(prefix)),
            ip: addressing::OUTSIDE_HOST_V4,
            ipv6: addressing::OUTSIDE_HOST_V6,
        },
    }
}

type Sysctls = Vec<(String, &'static str)>;

/// Namespace-wide settings, written before any interface is added so new
/// interfaces inherit the `default` values.
fn stage_sysctls(topology: &Topology) -> Vec<(&Netns, Sysctls)> {
    // Duplicate address detection keeps new IPv6 addresses unusable for about
    // a second; nothing in a lab can clash. DAD runs if `all` or the interface
    // asks for it, so both are off.
    let no_dad = || {
        vec![
            ("net/ipv6/conf/all/accept_dad".to_string(), "0"),
            ("net/ipv6/conf/default/accept_dad".to_string(), "0"),
        ]
    };
    let router = || {
        let mut settings = no_dad();
        settings.extend([
            ("net/ipv4/ip_forward".to_string(), "1"),
            ("net/ipv6/conf/all/forwarding".to_string(), "1"),
        ]);
        settings
    };
    let mut underlay = router();
    // Nodes share one L2 segment; the router must not redirect node-to-node
    // traffic around itself (paths stay predictable).
    underlay.extend([
        ("net/ipv4/conf/all/send_redirects".to_string(), "0"),
        ("net/ipv4/conf/default/send_redirects".to_string(), "0"),
    ]);
    let mut all = vec![
        (&topology.underlay, underlay),
        (&topology.outside.netns, no_dad()),
    ];
    all.extend(topology.nodes.iter().map(|n| (&n.netns, router())));
    all.extend(topology.pods.iter().map(|p| (&p.netns, no_dad())));
    all
}

/// The node-side veth of each of its pods answers ARP for the pod's gateway
/// (proxy ARP) and does so at once (the default proxy_delay adds up to 0.8 s).
fn pod_veth_sysctls(node: &LabNode, pods: &[LabPod]) -> Sysctls {
    pods.iter()
        .filter(|pod| pod.node == node.name)
        .flat_map(|pod| {
            [
                (format!("net/ipv4/conf/{}/proxy_arp", pod.node_iface), "1"),
                (
                    format!("net/ipv4/neigh/{}/proxy_delay", pod.node_iface),
                    "0",
                ),
            ]
        })
        .collect()
}

/// Sequential on purpose: entering a namespace costs microseconds.
fn set_sysctls(settings: &[(&Netns, Sysctls)]) -> Result<()> {
    settings
        .iter()
        .try_for_each(|(netns, sysctls)| netns.write_sysctls(sysctls))
}

fn underlay_batch(topology: &Topology) -> IpBatch {
    let mut commands = vec![
        "link set lo up".to_string(),
        format!("link add {UNDERLAY_BRIDGE} type bridge"),
        format!("link set {UNDERLAY_BRIDGE} up"),
        format!(
            "addr add {}/{} dev {UNDERLAY_BRIDGE}",
            addressing::UNDERLAY_ROUTER_V4,
            addressing::UNDERLAY_V4.prefix_len()
        ),
        format!(
            "addr add {}/{} dev {UNDERLAY_BRIDGE} nodad",
            addressing::UNDERLAY_ROUTER_V6,
            addressing::UNDERLAY_V6.prefix_len()
        ),
    ];
    for (i, node) in topology.nodes.iter().enumerate() {
        let iface = naming::underlay_node_iface(i);
        commands.extend([
            format!(
                "link add {iface} type veth peer name {UPLINK_IFACE} netns {}",
                node.netns.name
            ),
            format!("link set {iface} master {UNDERLAY_BRIDGE}"),
            format!("link set {iface} up"),
        ]);
    }
    commands.extend([
        format!(
            "link add {UNDERLAY_OUTSIDE_IFACE} type veth peer name {UPLINK_IFACE} netns {}",
            topology.outside.netns.name
        ),
        format!(
            "addr add {}/{} dev {UNDERLAY_OUTSIDE_IFACE}",
            addressing::OUTSIDE_GATEWAY_V4,
            addressing::OUTSIDE_V4.prefix_len()
        ),
        format!(
            "addr add {}/{} dev {UNDERLAY_OUTSIDE_IFACE} nodad",
            addressing::OUTSIDE_GATEWAY_V6,
            addressing::OUTSIDE_V6.prefix_len()
        ),
        format!("link set {UNDERLAY_OUTSIDE_IFACE} up"),
    ]);
    // "Teach the network to route per-node CIDRs".
    for node in &topology.nodes {
        commands.push(format!(
            "route add {} via {}",
            node.pod_cidr, node.internal_ip
        ));
        if let Some(cidr) = node.pod_cidr_v6 {
            commands.push(format!("route add {cidr} via {}", node.internal_ipv6));
        }
    }
    IpBatch {
        netns: Some(topology.underlay.name.clone()),
        commands,
        force: false,
    }
}

fn outside_batch(outside: &OutsideHost) -> IpBatch {
    let commands = vec![
        "link set lo up".to_string(),
        format!(
            "addr add {}/{} dev {UPLINK_IFACE}",
            outside.ip,
            addressing::OUTSIDE_V4.prefix_len()
        ),
        format!(
            "addr add {}/{} dev {UPLINK_IFACE} nodad",
            outside.ipv6,
            addressing::OUTSIDE_V6.prefix_len()
        ),
        format!("link set {UPLINK_IFACE} up"),
        format!("route add default via {}", addressing::OUTSIDE_GATEWAY_V4),
        format!("route add ::/0 via {}", addressing::OUTSIDE_GATEWAY_V6),
    ];
    IpBatch {
        netns: Some(outside.netns.name.clone()),
        commands,
        force: false,
    }
}

fn node_batch(node: &LabNode, pods: &[LabPod]) -> IpBatch {
    let mut commands = vec![
        "link set lo up".to_string(),
        format!(
            "addr add {}/{} dev {UPLINK_IFACE}",
            node.internal_ip,
            addressing::UNDERLAY_V4.prefix_len()
        ),
        format!(
            "addr add {}/{} dev {UPLINK_IFACE} nodad",
            node.internal_ipv6,
            addressing::UNDERLAY_V6.prefix_len()
        ),
        format!("link set {UPLINK_IFACE} up"),
        format!("route add default via {}", addressing::UNDERLAY_ROUTER_V4),
        format!("route add ::/0 via {}", addressing::UNDERLAY_ROUTER_V6),
    ];
    for pod in pods.iter().filter(|pod| pod.node == node.name) {
        let iface = &pod.node_iface;
        commands.extend([
            format!(
                "link add {iface} type veth peer name {UPLINK_IFACE} netns {}",
                pod.netns.name
            ),
            format!("link set {iface} up"),
            format!("route add {}/32 dev {iface} scope link", pod.ip),
        ]);
        if let Some(ipv6) = pod.ipv6 {
            commands.extend([
                format!(
                    "addr add {}/64 dev {iface} nodad",
                    addressing::POD_GATEWAY_V6
                ),
                format!("route add {ipv6}/128 dev {iface}"),
            ]);
        }
    }
    IpBatch {
        netns: Some(node.netns.name.clone()),
        commands,
        force: false,
    }
}

fn pod_batch(pod: &LabPod) -> IpBatch {
    let mut commands = vec![
        "link set lo up".to_string(),
        format!("addr add {}/32 dev {UPLINK_IFACE}", pod.ip),
        format!("link set {UPLINK_IFACE} up"),
        format!(
            "route add {} dev {UPLINK_IFACE} scope link",
            addressing::POD_GATEWAY_V4
        ),
        format!(
            "route add default via {} dev {UPLINK_IFACE}",
            addressing::POD_GATEWAY_V4
        ),
    ];
    if let Some(ipv6) = pod.ipv6 {
        commands.extend([
            format!("addr add {ipv6}/128 dev {UPLINK_IFACE} nodad"),
            format!(
                "route add ::/0 via {} dev {UPLINK_IFACE}",
                addressing::POD_GATEWAY_V6
            ),
        ]);
    }
    IpBatch {
        netns: Some(pod.netns.name.clone()),
        commands,
        force: false,
    }
}

/// Adds a pod to a built lab (a pod created mid-run): its namespace, its veth to
/// the node, routes and sysctls as [`build`] would have made them. `ip` (and
/// `pod.ipv6`, if any) must be free and inside the node's pod CIDRs (the caller
/// allocates); `index` must be
/// unique for the run (it names the namespace and the node-side veth).
pub fn add_pod(
    topology: &mut Topology,
    pod: &PodSpec,
    ip: Ipv4Addr,
    index: usize,
) -> Result<LabPod> {
    let node = topology.node(&pod.node).cloned().ok_or_else(|| {
        LabError::Spec(format!(
            "pod {}/{}: node {:?} is not one of the lab's nodes",
            pod.namespace, pod.name, pod.node
        ))
    })?;
    let lab_pod = LabPod {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        node: pod.node.clone(),
        netns: Netns::new(naming::pod_netns(
            &topology.prefix,
            index,
            &pod.namespace,
            &pod.name,
        )),
        ip,
        ipv6: pod.ipv6,
        ports: pod.ports.clone(),
        node_iface: naming::node_pod_iface(index),
    };
    add_namespaces(std::slice::from_ref(&lab_pod.netns.name))?;
    let pods = std::slice::from_ref(&lab_pod);
    lab_pod.netns.write_sysctls(&[
        ("net/ipv6/conf/all/accept_dad".to_string(), "0"),
        ("net/ipv6/conf/default/accept_dad".to_string(), "0"),
    ])?;
    // Only the pod-related lines of the node's batch: the node exists already.
    let mut node_side = node_batch(&node, pods);
    let node_itself = node_batch(&node, &[]).commands;
    node_side.commands.retain(|c| !node_itself.contains(c));
    run_ip_batches(&[node_side])?;
    set_sysctls(&[(&node.netns, pod_veth_sysctls(&node, pods))])?;
    run_ip_batches(&[pod_batch(&lab_pod)])?;
    wait_until_ready(&[&node.netns, &lab_pod.netns], READINESS_TIMEOUT)?;
    topology.pods.push(lab_pod.clone());
    Ok(lab_pod)
}

/// Removes a pod from a built lab: the node's end of its veth (and with it the
/// pod's end and the node's routes to its addresses), then its namespace.
///
/// The veth is deleted explicitly because a namespace outlives its name while a
/// socket in it is open: were the routes left to the namespace's teardown, a pod
/// added right after with one of the freed addresses would find them still there.
pub fn remove_pod(topology: &mut Topology, namespace: &str, name: &str) -> Result<()> {
    let Some(at) = topology
        .pods
        .iter()
        .position(|p| p.namespace == namespace && p.name == name)
    else {
        return Ok(());
    };
    let pod = topology.pods.remove(at);
    let node_side = topology.node(&pod.node).map(|node| IpBatch {
        netns: Some(node.netns.name.clone()),
        commands: vec![format!("link del {}", pod.node_iface)],
        force: false,
    });
    run_ip_batches(&node_side.into_iter().collect::<Vec<_>>())?;
    run_ip_batches(&[IpBatch {
        netns: None,
        commands: vec![format!("netns del {}", pod.netns.name)],
        force: false,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::addressing::plan;

    fn spec() -> LabSpec {
        LabSpec {
            nodes: vec![NodeSpec {
                name: "a".into(),
                pod_cidr: "10.244.0.0/24".parse().unwrap(),
                pod_cidr_v6: Some("fd00:10:244::/64".parse().unwrap()),
            }],
            pods: vec![PodSpec {
                namespace: "default".into(),
                name: "web".into(),
                node: "a".into(),
                ip: None,
                ipv6: None,
                ports: vec![],
            }],
        }
    }

    #[test]
    fn pods_route_through_a_link_local_gateway_their_node_routes_back() {
        let spec = spec();
        let topology = describe(&spec, &plan(&spec).unwrap(), "kn-000000");
        let pod = &topology.pods[0];
        assert_eq!(pod.netns.name, "kn-000000-p0-default.web");
        let pod_commands = pod_batch(pod).commands;
        assert!(pod_commands.contains(&"addr add 10.244.0.2/32 dev eth0".to_string()));
        assert!(pod_commands.contains(&"route add default via 169.254.1.1 dev eth0".to_string()));
        assert!(pod_commands.contains(&"route add ::/0 via fe80::1 dev eth0".to_string()));
        let node_commands = node_batch(&topology.nodes[0], &topology.pods).commands;
        assert!(node_commands.contains(&"route add 10.244.0.2/32 dev pod0 scope link".to_string()));
        assert!(node_commands.contains(&"route add fd00:10:244::2/128 dev pod0".to_string()));
        let underlay = underlay_batch(&topology).commands;
        assert!(underlay.contains(&"route add 10.244.0.0/24 via 172.31.0.10".to_string()));
    }

    #[test]
    fn links_not_operationally_up_and_tentative_addresses_are_not_ready() {
        let ready = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT\n\
                     2: eth0@if9: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT\n\
                     2: eth0    inet 10.244.0.2/32 scope global eth0\n\
                     2: eth0    inet6 fd00:10:244::2/128 scope global \\       valid_lft forever\n";
        assert_eq!(first_not_ready(ready), None);
        let link_down = ready.replace(
            "LOWER_UP> mtu 1500 qdisc noqueue state UP",
            "NO-CARRIER> mtu 1500 qdisc noqueue state DOWN",
        );
        assert!(first_not_ready(&link_down).unwrap().contains("eth0@if9"));
        let bridge_with_carrier = "3: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UNKNOWN mode DEFAULT";
        assert_eq!(first_not_ready(bridge_with_carrier), None);
        let veth_unknown = "2: eth0@if9: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UNKNOWN mode DEFAULT";
        assert!(first_not_ready(veth_unknown).is_some());
        let tentative = ready.replace("scope global \\", "scope global tentative \\");
        assert!(first_not_ready(&tentative).unwrap().contains("inet6"));
    }
}

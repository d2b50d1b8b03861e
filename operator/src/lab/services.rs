//! The lab's Service side (pure): it plays the API server's allocators
//! (ClusterIPs, NodePorts, load-balancer IPs) and the EndpointSlice
//! controller, picks the node its "load balancer" sends each address to, and
//! predicts, for explain, which source address a backend's node judges a
//! connection through a Service by.
//!
//! How traffic reaches a backend in the lab, and so what policy sees:
//!
//! - **ClusterIP** from a pod: DNAT on the pod's own node. The backend's node
//!   sees the pod's address (a pod reaching itself is masqueraded only in
//!   postrouting, after policy judged it).
//! - **NodePort** on node N: from the outside host, DNAT on N; from a pod on
//!   another node, that node first masquerades the pod (N's address is outside
//!   the cluster CIDR), so N sees the pod's node. N marks external traffic of
//!   `externalTrafficPolicy: Cluster` Services for masquerade: a backend on N
//!   is judged by the source N received, a backend on another node by N's
//!   address. `Local` keeps the source and uses N's own backends only.
//! - **LoadBalancer** IPs: the outside host's router sends each LB IP to one
//!   node ([`lb_routes`], like a cloud load balancer following health checks);
//!   pods reach LB IPs through their own node, which DNATs them like a
//!   ClusterIP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

use crate::cluster::{Cluster, Object, ObjectKey};
use crate::service::spec::{self, ServiceType};
use crate::service::{Backend, Entry, FrontendKind, NodeServices, ServiceConfig};

/// Where the lab allocates ClusterIPs from (the API server's default range).
pub const SERVICE_CIDR_V4: Ipv4Net = ipv4net(Ipv4Addr::new(10, 96, 0, 0), 16);
pub const SERVICE_CIDR_V6: Ipv6Net = ipv6net(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 112);
/// Where the lab's load balancer hands out `status.loadBalancer` IPs
/// (documentation ranges: routed only inside the lab's underlay).
pub const LB_CIDR_V4: Ipv4Net = ipv4net(Ipv4Addr::new(192, 0, 2, 0), 24);
pub const LB_CIDR_V6: Ipv6Net = ipv6net(Ipv6Addr::new(0x2001, 0xdb8, 0x1b, 0, 0, 0, 0, 0), 112);
/// The API server's default NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const fn ipv4net(a: Ipv4Addr, len: u8) -> Ipv4Net {
    match Ipv4Net::new(a, len) {
        Ok(n) => n,
        Err(_) => panic!("bad constant prefix"),
    }
}

const fn ipv6net(a: Ipv6Addr, len: u8) -> Ipv6Net {
    match Ipv6Net::new(a, len) {
        Ok(n) => n,
        Err(_) => panic!("bad constant prefix"),
    }
}

/// Fills in what the API server and a cloud load balancer would: ClusterIPs
/// (per `spec.ipFamilies`, IPv4 by default), NodePorts of NodePort and
/// LoadBalancer Services, `healthCheckNodePort` of `externalTrafficPolicy:
/// Local` LoadBalancers, and `status.loadBalancer.ingress` IPs. Given values
/// are kept; a given one that collides with another Service is an error
/// naming both.
pub fn complete_services(cluster: &mut Cluster) -> anyhow::Result<()> {
    let mut used_ips: BTreeMap<IpAddr, ObjectKey> = BTreeMap::new();
    let mut used_ports: BTreeMap<u16, ObjectKey> = BTreeMap::new();
    let mut claim_ip = |ip: IpAddr, key: &ObjectKey, field: &str| -> anyhow::Result<()> {
        match used_ips.insert(ip, key.clone()) {
            Some(other) if &other != key => {
                bail!("Service {key}: field {field}: {ip} is already used by Service {other}")
            }
            _ => Ok(()),
        }
    };
    let services: Vec<(ObjectKey, k8s_openapi::api::core::v1::Service)> = cluster
        .services()
        .iter()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    // Given addresses and ports first, so allocation never hands them out.
    for (key, svc) in &services {
        let Some(spec) = &svc.spec else { continue };
        let given = spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip);
        for ip in given {
            if let Ok(ip) = ip.parse() {
                claim_ip(ip, key, "spec.clusterIP")?;
            }
        }
        for ingress in lb_ingress(svc) {
            if let Some(ip) = ingress.ip.as_deref().and_then(|s| s.parse().ok()) {
                claim_ip(ip, key, "status.loadBalancer.ingress")?;
            }
        }
        let ports = spec.ports.iter().flatten().filter_map(|p| p.node_port);
        for p in ports.chain(spec.health_check_node_port) {
            if let Ok(p) = u16::try_from(p) {
                if let Some(other) = used_ports.insert(p, key.clone()) {
                    if &other != key {
                        bail!("Service {key}: NodePort {p} is already used by Service {other}");
                    }
                }
            }
        }
    }
    let next_ip = |net: IpNet, used: &mut BTreeMap<IpAddr, ObjectKey>, key: &ObjectKey| {
        let ip = net
            .hosts()
            .skip(1) // the first address is the API server's `kubernetes` Service
            .find(|ip| !used.contains_key(ip))
            .ok_or_else(|| anyhow!("Service {key}: the lab's range {net} is exhausted"))?;
        used.insert(ip, key.clone());
        Ok::<IpAddr, anyhow::Error>(ip)
    };
    let mut next_port = |key: &ObjectKey| {
        let p = NODE_PORTS
            .clone()
            .find(|p| !used_ports.contains_key(p))
            .ok_or_else(|| anyhow!("Service {key}: no NodePort left in the lab's range"))?;
        used_ports.insert(p, key.clone());
        Ok::<u16, anyhow::Error>(p)
    };

    for (key, mut svc) in services {
        let Some(spec) = svc.spec.as_mut() else {
            continue;
        };
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let families: Vec<String> = match &spec.ip_families {
            Some(f) if !f.is_empty() => f.clone(),
            _ => vec!["IPv4".to_string()],
        };
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let given: Vec<String> = spec
            .cluster_ips
            .clone()
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_empty())
            .collect();
        if !headless && given.is_empty() {
            let mut ips = Vec::new();
            for family in &families {
                let net = match family.as_str() {
                    "IPv6" => IpNet::V6(SERVICE_CIDR_V6),
                    _ => IpNet::V4(SERVICE_CIDR_V4),
                };
                ips.push(next_ip(net, &mut used_ips, &key)?.to_string());
            }
            spec.cluster_ip = ips.first().cloned();
            spec.cluster_ips = Some(ips);
        }
        if matches!(kind, "NodePort" | "LoadBalancer") {
            for port in spec.ports.iter_mut().flatten() {
                if port.node_port.is_none() {
                    port.node_port = Some(i32::from(next_port(&key)?));
                }
            }
        }
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        if kind == "LoadBalancer" && local && spec.health_check_node_port.is_none() {
            spec.health_check_node_port = Some(i32::from(next_port(&key)?));
        }
        if kind == "LoadBalancer" && lb_ingress(&svc).is_empty() {
            let mut ingress = Vec::new();
            for family in &families {
                let net = match family.as_str() {
                    "IPv6" => IpNet::V6(LB_CIDR_V6),
                    _ => IpNet::V4(LB_CIDR_V4),
                };
                ingress.push(LoadBalancerIngress {
                    ip: Some(next_ip(net, &mut used_ips, &key)?.to_string()),
                    ..Default::default()
                });
            }
            svc.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..svc.status.unwrap_or_default()
            });
        }
        cluster
            .insert(Object::Service(svc))
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

fn lb_ingress(svc: &k8s_openapi::api::core::v1::Service) -> Vec<LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// The Service settings of a lab run: masquerade what leaves the cluster
/// CIDRs (the lab nodes' pod CIDRs unless given), except towards
/// `no_masquerade`.
pub fn config(cluster_cidrs: &[IpNet], no_masquerade: &[IpNet]) -> ServiceConfig {
    ServiceConfig {
        cluster_cidrs: cluster_cidrs.to_vec(),
        no_masquerade_cidrs: no_masquerade.to_vec(),
        ..ServiceConfig::default()
    }
}

/// For every LoadBalancer and external IP: the node the lab's router sends
/// it to. The first node (by name) whose frontend leads to endpoints, as a
/// load balancer following health checks would pick; the first node at all
/// when none does (the connection is then refused or dropped there, as in a
/// cluster).
pub fn lb_routes(nodes: &BTreeMap<String, NodeServices>) -> BTreeMap<IpAddr, String> {
    let mut routes: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut served: BTreeSet<IpAddr> = BTreeSet::new();
    for (node, services) in nodes {
        for e in &services.entries {
            let external = matches!(
                e.frontend.kind,
                FrontendKind::LoadBalancer | FrontendKind::ExternalIp
            );
            let Some(addr) = e.frontend.addr.filter(|_| external) else {
                continue;
            };
            let has_endpoints = matches!(e.backend, Backend::Endpoints(_));
            if has_endpoints && served.insert(addr) {
                routes.insert(addr, node.clone());
            } else {
                routes.entry(addr).or_insert_with(|| node.clone());
            }
        }
    }
    routes
}

/// Which probe targets a `to: service | nodeport | loadbalancer` probe has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One address a Service probe connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub service: ObjectKey,
    /// `namespace/name`, or `namespace/name@node` for a NodePort.
    pub label: String,
    pub addr: IpAddr,
    pub port: u16,
    /// The node that DNATs connections from outside (NodePort: its node;
    /// LoadBalancer: the node [`lb_routes`] picks; ClusterIP: the first node,
    /// where the lab routes the Service CIDR). From a pod, its own node DNATs
    /// ClusterIPs and load-balancer IPs.
    pub node: Option<String>,
    /// Frontend kind, family, protocol and port as the nodes' models key it.
    pub kind: FrontendKind,
    /// The Service port's name, to find the same port's frontends on other
    /// nodes.
    pub port_name: String,
}

/// The targets of a Service probe on `port` (the Service port, not the
/// NodePort) of `protocol` and address family `family`.
pub fn targets(
    cluster: &Cluster,
    nodes: &BTreeMap<String, NodeServices>,
    via: Via,
    protocol: crate::lab::Protocol,
    port: u16,
    family: crate::policy::Family,
) -> Vec<ServiceTarget> {
    let routes = lb_routes(nodes);
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for svc in cluster.services().values() {
        let Ok(spec) = spec::service(svc) else {
            continue;
        };
        if spec.kind == ServiceType::ExternalName {
            continue;
        }
        for p in spec
            .ports
            .iter()
            .filter(|p| p.protocol == protocol && p.port == port)
        {
            let mut push = |addr: IpAddr, port: u16, label: String, node: Option<String>, kind| {
                if family.has(&addr) && seen.insert((addr, port)) {
                    out.push(ServiceTarget {
                        service: spec.key.clone(),
                        label,
                        addr,
                        port,
                        node,
                        kind,
                        port_name: p.name.clone(),
                    });
                }
            };
            match via {
                Via::ClusterIp => {
                    // From outside, the lab's router sends the Service CIDR
                    // to the first node.
                    let first = nodes.keys().next().cloned();
                    for ip in &spec.cluster_ips {
                        push(
                            *ip,
                            p.port,
                            spec.key.to_string(),
                            first.clone(),
                            FrontendKind::ClusterIp,
                        );
                    }
                }
                // Addresses outside the cluster that lead to the Service:
                // load-balancer ingress IPs and externalIPs.
                Via::LoadBalancer => {
                    let lb = spec
                        .lb_ips
                        .iter()
                        .map(|ip| (ip, FrontendKind::LoadBalancer));
                    let external = spec
                        .external_ips
                        .iter()
                        .map(|ip| (ip, FrontendKind::ExternalIp));
                    for (ip, kind) in lb.chain(external) {
                        let node = routes.get(ip).cloned();
                        push(*ip, p.port, spec.key.to_string(), node, kind);
                    }
                }
                Via::NodePort => {
                    let Some(node_port) = p.node_port else {
                        continue;
                    };
                    for (name, ns) in nodes {
                        for addr in &ns.node_addresses {
                            push(
                                *addr,
                                node_port,
                                format!("{}@{name}", spec.key),
                                Some(name.clone()),
                                FrontendKind::NodePort,
                            );
                        }
                    }
                }
            }
        }
    }
    out
}

/// The entry of `target` in node `node`'s model (its frontend as that node
/// programs it).
pub fn entry_on<'a>(
    nodes: &'a BTreeMap<String, NodeServices>,
    node: &str,
    target: &ServiceTarget,
) -> Option<&'a Entry> {
    nodes.get(node)?.entries.iter().find(|e| {
        e.service == target.service
            && e.port_name == target.port_name
            && e.frontend.kind == target.kind
            && e.frontend.port == target.port
            && (e.frontend.addr.is_none() || e.frontend.addr == Some(target.addr))
            && e.frontend.family == crate::service::IpFamily::of(&target.addr)
    })
}

/// A client of a Service probe: its address and the node it sits on (`None`
/// for the outside host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client<'a> {
    pub ip: IpAddr,
    pub node: Option<&'a str>,
}

/// Node addresses by node name, per family.
pub type NodeAddresses = BTreeMap<String, Vec<IpAddr>>;

/// What a connection from a client to a Service frontend reaches, as far
/// as policy is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The frontend as the node that DNATs it programs it.
    pub entry: &'a Entry,
    /// The node that DNATs.
    pub dnat_node: String,
    /// Each backend the node may choose, with the source address the
    /// backend's node judges the connection by.
    pub backends: Vec<(crate::service::Endpoint, IpAddr)>,
    /// Where a pod client's egress policy is judged against when its own
    /// node does not DNAT (a NodePort of another node): that node's address
    /// and the NodePort. `None`: against the chosen backend.
    pub first_hop: Option<(IpAddr, u16)>,
}

/// What a connection from `client` to `target` reaches (see the module doc).
/// `None`: no node DNATs it (no such frontend where the connection lands).
pub fn route<'a>(
    nodes: &'a BTreeMap<String, NodeServices>,
    addresses: &NodeAddresses,
    config: &ServiceConfig,
    client: Client<'_>,
    target: &ServiceTarget,
) -> Option<Route<'a>> {
    let family = crate::service::IpFamily::of(&client.ip);
    let node_addr = |node: &str| {
        addresses
            .get(node)?
            .iter()
            .find(|a| crate::service::IpFamily::of(a) == family)
            .copied()
    };
    let in_cluster = |ip: &IpAddr| config.cluster_cidrs.iter().any(|n| n.contains(ip));
    // The node that DNATs, the source it receives, and where the client's
    // node judged the client's egress.
    let (dnat_node, received, first_hop) = match (target.kind, client.node) {
        // Every node programs ClusterIPs, LB and external IPs: a pod's own
        // node DNATs.
        (
            FrontendKind::ClusterIp | FrontendKind::LoadBalancer | FrontendKind::ExternalIp,
            Some(own),
        ) => (own.to_string(), client.ip, None),
        (FrontendKind::NodePort, Some(own)) => {
            let n = target.node.clone()?;
            if n == own {
                (n, client.ip, None)
            } else {
                // Leaving its node for a node address (outside the cluster
                // CIDR), the pod is masqueraded by its node.
                (n, node_addr(own)?, Some((target.addr, target.port)))
            }
        }
        (_, None) => (target.node.clone()?, client.ip, None),
    };
    let entry = entry_on(nodes, &dnat_node, target)?;
    // loadBalancerSourceRanges: the firewall drops other sources before DNAT.
    if let Some(ranges) = &entry.source_ranges {
        if !ranges.iter().any(|r| r.contains(&received)) {
            return Some(Route {
                entry,
                dnat_node,
                backends: Vec::new(),
                first_hop,
            });
        }
    }
    let masquerade = match entry.masquerade {
        crate::service::Masquerade::Always => true,
        crate::service::Masquerade::FromOutsideCluster => !in_cluster(&received),
        crate::service::Masquerade::Never => false,
    };
    // Clients inside the cluster reach an externalTrafficPolicy Local
    // address as they reach the ClusterIP: every endpoint, unmasqueraded.
    let (endpoints, masquerade) = if !entry.internal_endpoints.is_empty() && in_cluster(&received) {
        (entry.internal_endpoints.as_slice(), false)
    } else {
        (entry.endpoints(), masquerade)
    };
    // Masquerade happens in postrouting: a backend on the DNAT node is
    // judged (in forward) before it, one on another node after it.
    let backends = endpoints
        .iter()
        .map(|ep| {
            let local = ep.node.as_deref() == Some(dnat_node.as_str());
            let src = if masquerade && !local {
                node_addr(&dnat_node).unwrap_or(received)
            } else {
                received
            };
            (ep.clone(), src)
        })
        .collect();
    Some(Route {
        entry,
        dnat_node,
        backends,
        first_hop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Cluster {
        crate::cluster::load::cluster_from_yaml(yaml)
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: demo}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: given, namespace: demo}
spec: {clusterIP: 10.96.0.2, ports: [{port: 53, protocol: UDP}], type: NodePort}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, ports: [{port: 80}]}
"#;

    #[test]
    fn allocation_fills_what_the_api_server_and_a_load_balancer_would() {
        let mut c = cluster(SERVICES);
        complete_services(&mut c).unwrap();
        let get = |name: &str| c.services()[&ObjectKey::new("demo", name)].clone();
        let web = get("web").spec.unwrap();
        // 10.96.0.1 is the kubernetes Service's, 10.96.0.2 is given.
        assert_ne!(web.cluster_ip.as_deref(), Some("10.96.0.2"));
        assert!(web.cluster_ip.unwrap().starts_with("10.96.0."));
        assert!(web.ports.unwrap()[0].node_port.is_none());
        let lb = get("lb");
        let spec = lb.spec.clone().unwrap();
        let node_port = spec.ports.unwrap()[0].node_port.unwrap();
        assert!(NODE_PORTS.contains(&(node_port as u16)));
        assert!(spec.health_check_node_port.is_some());
        let ip = lb_ingress(&lb)[0].ip.clone().unwrap();
        assert!(ip.starts_with("192.0.2."), "{ip}");
        let given = get("given").spec.unwrap();
        assert_eq!(given.cluster_ip.as_deref(), Some("10.96.0.2"));
        assert!(given.ports.unwrap()[0].node_port.is_some());
        assert_eq!(
            get("headless").spec.unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        // Idempotent: a second pass changes nothing.
        let before = c.clone();
        complete_services(&mut c).unwrap();
        assert_eq!(c.services(), before.services());
    }

    #[test]
    fn a_given_address_used_twice_names_both_services() {
        let mut c = cluster(
            r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: demo}
spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: demo}
spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}
"#,
        );
        let e = complete_services(&mut c).unwrap_err().to_string();
        assert!(
            e.contains("demo/b") && e.contains("demo/a") && e.contains("10.96.0.9"),
            "{e}"
        );
    }
}

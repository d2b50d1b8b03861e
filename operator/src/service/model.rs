//! The per-node Service NAT model: what one node's dataplane must do for every
//! Service, as plain sorted data. [`compute`](super::compute) builds it from
//! Services and EndpointSlices; [`render::service`](crate::render::service)
//! turns it into nftables objects.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use kube_nft_crds::ir::Protocol;

use crate::cluster::{ObjectKey, ValidationError};

/// Settings of the node agent that shape NAT, the same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The pod address ranges of the cluster. Traffic from outside them to a
    /// ClusterIP is masqueraded (so replies come back through this node), and
    /// pod traffic leaving them is masqueraded. Empty: neither (like
    /// kube-proxy without `--cluster-cidr`).
    pub cluster_cidrs: Vec<IpNet>,
    /// Destinations that pod traffic reaches with its own source address
    /// (besides the cluster CIDRs), e.g. a routed datacenter range.
    pub no_masquerade_cidrs: Vec<IpNet>,
    /// The packet-mark bit meaning "masquerade this connection".
    pub masquerade_bit: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            cluster_cidrs: Vec::new(),
            no_masquerade_cidrs: Vec::new(),
            masquerade_bit: 0x4000,
        }
    }
}

/// Address family of a frontend and of its endpoints (never mixed: an IPv4 VIP
/// leads to IPv4 endpoints only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> IpFamily {
        IpFamily::of(&net.addr())
    }

    /// `v4` / `v6`, for object names.
    pub fn suffix(self) -> &'static str {
        match self {
            IpFamily::V4 => "v4",
            IpFamily::V6 => "v6",
        }
    }

    /// The Kubernetes spelling (`IPv4`, `IPv6`), as in `spec.ipFamilies` and an
    /// EndpointSlice's `addressType`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// How traffic reaches a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// `spec.clusterIPs`: from pods and nodes of the cluster.
    ClusterIp,
    /// `spec.ports[].nodePort` on this node's addresses.
    NodePort,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
    /// `spec.externalIPs`.
    ExternalIp,
}

impl FrontendKind {
    /// Whether traffic policy `externalTrafficPolicy` governs it (the others
    /// follow `internalTrafficPolicy`).
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "externalIP",
        }
    }
}

/// Where a connection arrives: address (none for a NodePort: any address of
/// the node of `family`), protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub family: IpFamily,
    pub addr: Option<IpAddr>,
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.family) {
            (Some(IpAddr::V6(a)), _) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
            (Some(a), _) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            (None, fam) => write!(
                f,
                "node {} addresses:{}/{}",
                fam.k8s_name(),
                self.port,
                self.protocol
            ),
        }
    }
}

/// One backend: a pod address and the port it serves the Service port on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// `nodeName` of the EndpointSlice endpoint.
    pub node: Option<String>,
    /// `namespace/name` of the endpoint's `targetRef`, when it names a Pod.
    pub pod: Option<String>,
}

/// What happens to a new connection to a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// DNAT to one of these (sorted, at least one), chosen at random, or by
    /// session affinity.
    Endpoints(Vec<Endpoint>),
    /// The Service port has no usable endpoint anywhere: reject at once (TCP
    /// reset, ICMP port unreachable) rather than let clients time out.
    Reject,
    /// A `Local` traffic policy and no usable endpoint on this node: drop, as
    /// kube-proxy does (a load balancer's health check steers away).
    Drop,
}

/// Which connections to a frontend are masqueraded (besides hairpin traffic,
/// a pod reaching itself through its Service, which always is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masquerade {
    /// Keep the client's address (`externalTrafficPolicy: Local`, or a
    /// ClusterIP when no cluster CIDR is configured).
    Never,
    /// Only clients outside the cluster CIDRs (ClusterIPs): their replies
    /// would not come back through this node otherwise.
    FromOutsideCluster,
    /// Every connection (external traffic under `externalTrafficPolicy:
    /// Cluster`: the endpoint may be on another node).
    Always,
}

/// One frontend of one Service port on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub frontend: Frontend,
    pub service: ObjectKey,
    /// `spec.ports[].name` (empty for a Service's single unnamed port).
    pub port_name: String,
    pub backend: Backend,
    /// Which connections to this frontend get the node's source address.
    pub masquerade: Masquerade,
    /// `sessionAffinity: ClientIP`: the timeout of a client's stickiness.
    pub affinity: Option<Duration>,
    /// `externalTrafficPolicy: Local` load-balancer and external-IP frontends:
    /// the endpoints clients inside the cluster (the cluster CIDRs) reach
    /// instead, as through the ClusterIP, so a pod reaching a Service's
    /// external address is not dropped on a node without local endpoints
    /// (as kube-proxy does). Empty otherwise.
    pub internal_endpoints: Vec<Endpoint>,
    /// `loadBalancerSourceRanges` of this family, for LoadBalancer frontends of
    /// a Service that sets them: sources outside them are dropped. `None`:
    /// open to all. `Some(empty)`: ranges are set but none of this family, so
    /// no source of this family is allowed (as kube-proxy does).
    pub source_ranges: Option<Vec<IpNet>>,
}

impl Entry {
    /// `namespace/name:port` (the port name, or the number when unnamed), for
    /// comments and messages.
    pub fn label(&self) -> String {
        port_label(&self.service, &self.port_name, self.frontend.port)
    }

    /// The endpoints, empty for reject and drop entries.
    pub fn endpoints(&self) -> &[Endpoint] {
        match &self.backend {
            Backend::Endpoints(e) => e,
            Backend::Reject | Backend::Drop => &[],
        }
    }
}

/// `namespace/name:port-name`, or `namespace/name:port-number` for an unnamed port.
pub fn port_label(service: &ObjectKey, port_name: &str, port: u16) -> String {
    if port_name.is_empty() {
        format!("{service}:{port}")
    } else {
        format!("{service}:{port_name}")
    }
}

/// What an agent needs to answer a load balancer's health check for a Service
/// with `externalTrafficPolicy: Local` (`healthCheckNodePort`): healthy when
/// this node has local endpoints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheck {
    pub service: ObjectKey,
    /// `spec.healthCheckNodePort` (only LoadBalancer Services have one).
    pub node_port: Option<u16>,
    /// Distinct local endpoint addresses that serve traffic (ready, or
    /// serving-and-terminating when none is ready).
    pub local_endpoints: usize,
}

/// Everything one node's Service dataplane is rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeServices {
    pub node: String,
    /// This node's addresses: where NodePorts listen.
    pub node_addresses: Vec<IpAddr>,
    /// Sorted by frontend, then Service and port name.
    pub entries: Vec<Entry>,
    /// Services with `externalTrafficPolicy: Local`, by key.
    pub health_checks: Vec<HealthCheck>,
    /// Objects (or parts) that were skipped, each naming object and field.
    pub errors: Vec<ValidationError>,
}

impl NodeServices {
    /// The entries of one Service.
    pub fn service_entries<'a>(&'a self, key: &'a ObjectKey) -> impl Iterator<Item = &'a Entry> {
        self.entries.iter().filter(move |e| &e.service == key)
    }

    /// Whether `endpoint` runs on this node.
    pub fn is_local(&self, endpoint: &Endpoint) -> bool {
        endpoint.node.as_deref() == Some(self.node.as_str())
    }
}

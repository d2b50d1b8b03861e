//! Reading Services and EndpointSlices into checked plain data. Every problem
//! is a [`ValidationError`] naming the object and the field; the caller skips
//! that object and goes on with the others.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nft_crds::ir::Protocol;

use super::model::IpFamily;
use crate::cluster::{ObjectKey, ValidationError};

/// The label joining an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);
/// The largest timeout the API server accepts (one day).
const MAX_AFFINITY_SECONDS: i32 = 86_400;

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// One `spec.ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Index in `spec.ports`, for field paths.
    pub index: usize,
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `targetPort`: a number or a container port name (defaults to `port`).
    pub target: TargetPort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A Service as NAT needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub key: ObjectKey,
    pub kind: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without `None` (headless).
    pub cluster_ips: Vec<IpAddr>,
    /// Families the Service serves: those of its cluster IPs and `spec.ipFamilies`.
    pub families: Vec<IpFamily>,
    pub ports: Vec<PortSpec>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (hostname-only ingresses have none).
    pub lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`; `None` when unset or empty.
    pub source_ranges: Option<Vec<IpNet>>,
    pub affinity: Option<Duration>,
    pub external_local: bool,
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    pub publish_not_ready: bool,
}

impl ServiceSpec {
    /// Reachable from outside the cluster (so `externalTrafficPolicy` applies).
    pub fn is_external(&self) -> bool {
        matches!(self.kind, ServiceType::NodePort | ServiceType::LoadBalancer)
            || !self.external_ips.is_empty()
    }
}

struct Ctx {
    object: String,
}

impl Ctx {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ValidationError {
        ValidationError {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn ip(&self, field: impl Into<String>, s: &str) -> Result<IpAddr, ValidationError> {
        s.trim()
            .parse()
            .map_err(|_| self.err(field, format!("`{s}` is not an IP address")))
    }

    fn port(&self, field: impl Into<String>, p: i32) -> Result<u16, ValidationError> {
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.err(field, format!("{p} is not a port number (1-65535)")))
    }

    fn protocol(
        &self,
        field: impl Into<String>,
        p: Option<&str>,
    ) -> Result<Protocol, ValidationError> {
        let p = p.unwrap_or("TCP");
        Protocol::parse(p).ok_or_else(|| self.err(field, format!("`{p}` is not TCP, UDP or SCTP")))
    }
}

/// Reads a Service. `Ok` for every well-formed Service, ExternalName ones too.
pub fn service(svc: &Service) -> Result<ServiceSpec, ValidationError> {
    let key = ObjectKey::of(&svc.metadata);
    let cx = Ctx {
        object: format!("Service {key}"),
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(cx.err(
                "spec.type",
                format!("`{other}` is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
            ))
        }
    };

    let mut cluster_ips = Vec::new();
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    let (field, list) = if listed.is_empty() {
        (
            "spec.clusterIP",
            spec.cluster_ip.clone().into_iter().collect(),
        )
    } else {
        ("spec.clusterIPs", listed)
    };
    for (i, ip) in list.iter().enumerate() {
        // `None` is a headless Service; empty means not allocated yet.
        if ip == "None" || ip.is_empty() {
            continue;
        }
        let f = if field == "spec.clusterIP" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        cluster_ips.push(cx.ip(f, ip)?);
    }
    let mut families: Vec<IpFamily> = cluster_ips.iter().map(IpFamily::of).collect();
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        families.push(match f.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            other => {
                return Err(cx.err(
                    format!("spec.ipFamilies[{i}]"),
                    format!("`{other}` is not IPv4 or IPv6"),
                ))
            }
        });
    }
    families.sort();
    families.dedup();

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let port = cx.port(field("port"), p.port)?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(cx.port(field("nodePort"), n)?),
        };
        let target = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(0)) => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(cx.port(field("targetPort"), *n)?),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(cx.port(field("targetPort"), n)?),
                Err(_) if !s.is_empty() => TargetPort::Name(s.clone()),
                Err(_) => TargetPort::Number(port),
            },
        };
        ports.push(PortSpec {
            index: i,
            name: p.name.clone().unwrap_or_default(),
            protocol: cx.protocol(field("protocol"), p.protocol.as_deref())?,
            port,
            node_port,
            target,
        });
    }

    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, ip)| cx.ip(format!("spec.externalIPs[{i}]"), ip))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lb_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &ing.ip {
            lb_ips.push(cx.ip(format!("status.loadBalancer.ingress[{i}].ip"), ip)?);
        }
    }
    let mut ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let net: IpNet = r.trim().parse().map_err(|_| {
            cx.err(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("`{r}` is not a CIDR"),
            )
        })?;
        ranges.push(net.trunc());
    }
    let source_ranges = (!ranges.is_empty()).then_some(ranges);

    let affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            Some(match secs {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(s) if (1..=MAX_AFFINITY_SECONDS).contains(&s) => Duration::from_secs(s as u64),
                Some(s) => {
                    return Err(cx.err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{s} is not between 1 and {MAX_AFFINITY_SECONDS}"),
                    ))
                }
            })
        }
        Some(other) => {
            return Err(cx.err(
                "spec.sessionAffinity",
                format!("`{other}` is not None or ClientIP"),
            ))
        }
    };
    let policy = |field: &str, v: Option<&str>| match v {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(cx.err(field, format!("`{other}` is not Cluster or Local"))),
    };
    let external_local = policy(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    )?;
    let internal_local = policy(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    )?;
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(n) => Some(cx.port("spec.healthCheckNodePort", n)?),
    };
    Ok(ServiceSpec {
        key,
        kind,
        cluster_ips,
        families,
        ports,
        external_ips,
        lb_ips,
        source_ranges,
        affinity,
        external_local,
        internal_local,
        health_check_node_port,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    })
}

/// One `ports[]` entry of an EndpointSlice with a resolved number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of a slice (its first address, as kube-proxy uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addr: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    pub pod: Option<String>,
}

/// An EndpointSlice as NAT needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSpec {
    pub key: ObjectKey,
    /// The Service it belongs to (label [`SERVICE_NAME_LABEL`], same namespace).
    pub service: ObjectKey,
    pub family: IpFamily,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// Reads an EndpointSlice. `Ok(None)` for slices NAT ignores: no
/// service-name label (not managed for a Service) or `addressType: FQDN`.
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<Option<SliceSpec>, ValidationError> {
    let key = ObjectKey::of(&slice.metadata);
    let cx = Ctx {
        object: format!("EndpointSlice {key}"),
    };
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        return Ok(None);
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => {
            return Err(cx.err(
                "addressType",
                format!("`{other}` is not IPv4, IPv6 or FQDN"),
            ))
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port without a number was not resolved: nothing can reach it.
        let Some(n) = p.port else { continue };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol: cx.protocol(format!("ports[{i}].protocol"), p.protocol.as_deref())?,
            port: cx.port(format!("ports[{i}].port"), n)?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let Some(first) = e.addresses.first() else {
            return Err(cx.err(format!("endpoints[{i}].addresses"), "no address"));
        };
        let field = format!("endpoints[{i}].addresses[0]");
        let addr = cx.ip(field.clone(), first)?;
        if IpFamily::of(&addr) != family {
            return Err(cx.err(
                field,
                format!(
                    "{addr} is not an {} address, but addressType is {}",
                    family.k8s_name(),
                    slice.address_type
                ),
            ));
        }
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let name = r.name.as_deref()?;
                let ns = r.namespace.as_deref().unwrap_or(&key.namespace);
                Some(format!("{ns}/{name}"))
            });
        endpoints.push(SliceEndpoint {
            addr,
            ready,
            // Unset `serving` means the same as `ready` (the API's rule).
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            node: e.node_name.clone(),
            pod,
        });
    }
    Ok(Some(SliceSpec {
        service: ObjectKey::new(key.namespace.clone(), service.clone()),
        key,
        family,
        ports,
        endpoints,
    }))
}

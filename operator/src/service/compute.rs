//! Services + EndpointSlices → one node's [`NodeServices`] (pure).
//!
//! Endpoint choice follows kube-proxy:
//!
//! - an endpoint serves when `conditions.ready` (unset = ready); when no
//!   endpoint of a Service port is ready, the serving-and-terminating ones
//!   take over (graceful termination keeps working while a rollout drains);
//! - a Service port with no endpoint anywhere rejects new connections at once
//!   (every frontend);
//! - `externalTrafficPolicy: Local` restricts NodePort, LoadBalancer and
//!   external-IP frontends to this node's endpoints, keeps the client address,
//!   and drops when this node has none (while others do);
//!   `internalTrafficPolicy: Local` does the same for ClusterIPs;
//! - the endpoint port comes from the slice's `ports[]` entry with the Service
//!   port's name and protocol: that is how a named `targetPort` arrives
//!   resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::model::*;
use super::spec::{self, PortSpec, ServiceSpec, ServiceType, SliceSpec};
use crate::cluster::{Cluster, ObjectKey, ValidationError};

/// The NAT model of node `node`: every Service's frontends on this node and
/// where each leads. A bad Service or EndpointSlice is skipped and reported in
/// [`NodeServices::errors`]; the others are unaffected.
pub fn compute(cluster: &Cluster, node: &str, config: &ServiceConfig) -> NodeServices {
    let mut out = NodeServices {
        node: node.to_string(),
        node_addresses: cluster.node_addresses(node),
        ..Default::default()
    };
    let mut slices: BTreeMap<ObjectKey, Vec<SliceSpec>> = BTreeMap::new();
    for slice in cluster.endpoint_slices().values() {
        match spec::endpoint_slice(slice) {
            Ok(Some(s)) => slices.entry(s.service.clone()).or_default().push(s),
            Ok(None) => {}
            Err(e) => out.errors.push(e),
        }
    }
    let mut claims = Claims::default();
    for svc in cluster.services().values() {
        let spec = match spec::service(svc) {
            Ok(s) => s,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        if spec.kind == ServiceType::ExternalName {
            continue;
        }
        let svc_slices = slices.get(&spec.key).map(Vec::as_slice).unwrap_or(&[]);
        let node_ctx = NodeCtx { node, config };
        let (entries, health) = service_entries(&spec, svc_slices, &node_ctx);
        for (entry, field) in entries {
            match claims.claim(&entry, &field) {
                Ok(true) => out.entries.push(entry),
                // The same Service port twice (an external IP that is also
                // its load balancer IP): one entry does it.
                Ok(false) => {}
                Err(e) => out.errors.push(e),
            }
        }
        out.health_checks.extend(health);
    }
    out.entries.sort_by(|a, b| {
        (a.frontend, &a.service, &a.port_name).cmp(&(b.frontend, &b.service, &b.port_name))
    });
    out
}

/// Why an ExternalName Service has no NAT, for `explain`; `None` for other
/// Services.
pub fn external_name_note(svc: &Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    let key = ObjectKey::of(&svc.metadata);
    let target = spec.external_name.as_deref().unwrap_or("(no externalName)");
    Some(format!(
        "ExternalName Services are DNS only: {key} is a DNS alias (CNAME) of {target}; \
         kube-nft installs no NAT for it and connections go wherever {target} resolves"
    ))
}

struct NodeCtx<'a> {
    node: &'a str,
    config: &'a ServiceConfig,
}

/// Frontends handed out so far: the first Service (in namespace/name order)
/// keeps a contested address, protocol and port; later ones get an error.
#[derive(Default)]
struct Claims {
    owner: BTreeMap<(Option<IpAddr>, IpFamily, kube_nft_crds::ir::Protocol, u16), String>,
}

impl Claims {
    /// `Ok(true)`: the frontend is `e`'s; `Ok(false)`: it already was.
    fn claim(&mut self, e: &Entry, field: &str) -> Result<bool, ValidationError> {
        let f = &e.frontend;
        let key = (f.addr, f.family, f.protocol, f.port);
        let label = e.label();
        match self.owner.get(&key) {
            None => {
                self.owner.insert(key, label);
                Ok(true)
            }
            Some(owner) if *owner == label => Ok(false),
            Some(owner) => Err(ValidationError {
                object: format!("Service {}", e.service),
                field: field.to_string(),
                message: format!(
                    "{} {} is already a frontend of {owner}; ignored",
                    f.kind.as_str(),
                    f
                ),
            }),
        }
    }
}

/// An endpoint with its conditions, for one Service port.
struct Candidate {
    endpoint: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The endpoints that take traffic: the ready ones, or when none is ready the
/// serving-and-terminating ones.
fn usable<'a>(cands: impl Iterator<Item = &'a Candidate> + Clone) -> Vec<Endpoint> {
    let ready: Vec<Endpoint> = cands
        .clone()
        .filter(|c| c.ready)
        .map(|c| c.endpoint.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    cands
        .filter(|c| c.serving && c.terminating)
        .map(|c| c.endpoint.clone())
        .collect()
}

/// The endpoints of Service port `port` in family `fam`, from all slices,
/// sorted and without duplicates (a migration may list one in two slices).
fn candidates(port: &PortSpec, fam: IpFamily, slices: &[SliceSpec]) -> Vec<Candidate> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in slices.iter().filter(|s| s.family == fam) {
        let Some(sp) = s
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for e in &s.endpoints {
            if !seen.insert((e.addr, sp.port)) {
                continue;
            }
            out.push(Candidate {
                endpoint: Endpoint {
                    addr: e.addr,
                    port: sp.port,
                    node: e.node.clone(),
                    pod: e.pod.clone(),
                },
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            });
        }
    }
    out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    out
}

/// Where one traffic policy sends a frontend's connections.
fn backend(all: &[Candidate], local_only: bool, node: &str) -> Backend {
    let cluster = usable(all.iter());
    if cluster.is_empty() {
        return Backend::Reject;
    }
    if !local_only {
        return Backend::Endpoints(cluster);
    }
    let local = usable(
        all.iter()
            .filter(|c| c.endpoint.node.as_deref() == Some(node)),
    );
    if local.is_empty() {
        Backend::Drop
    } else {
        Backend::Endpoints(local)
    }
}

/// Every entry of one Service, each with the field path that declared its
/// frontend (for conflict messages), and its health check.
fn service_entries(
    spec: &ServiceSpec,
    slices: &[SliceSpec],
    ctx: &NodeCtx<'_>,
) -> (Vec<(Entry, String)>, Option<HealthCheck>) {
    let mut out = Vec::new();
    let mut local_addrs: BTreeSet<IpAddr> = BTreeSet::new();
    let node_ports = matches!(spec.kind, ServiceType::NodePort | ServiceType::LoadBalancer);
    for port in &spec.ports {
        for fam in IpFamily::ALL {
            let cands = candidates(port, fam, slices);
            let internal = backend(&cands, spec.internal_local, ctx.node);
            let external = backend(&cands, spec.external_local, ctx.node);
            if spec.is_external() && spec.external_local {
                if let Backend::Endpoints(eps) = &external {
                    local_addrs.extend(eps.iter().map(|e| e.addr));
                }
            }
            let external_masq = if spec.external_local {
                Masquerade::Never
            } else {
                Masquerade::Always
            };
            let has_cidr = ctx
                .config
                .cluster_cidrs
                .iter()
                .any(|c| IpFamily::of_net(c) == fam);
            let internal_masq = if has_cidr {
                Masquerade::FromOutsideCluster
            } else {
                Masquerade::Never
            };
            let mut push = |kind, addr, port_no, backend: &Backend, masq, field: String| {
                let ranges = match (kind, &spec.source_ranges) {
                    (FrontendKind::LoadBalancer, Some(r)) => Some(
                        r.iter()
                            .filter(|n| IpFamily::of_net(n) == fam)
                            .copied()
                            .collect(),
                    ),
                    _ => None,
                };
                out.push((
                    Entry {
                        frontend: Frontend {
                            kind,
                            family: fam,
                            addr,
                            protocol: port.protocol,
                            port: port_no,
                        },
                        service: spec.key.clone(),
                        port_name: port.name.clone(),
                        backend: backend.clone(),
                        masquerade: masq,
                        affinity: spec.affinity,
                        source_ranges: ranges,
                        internal_endpoints: match (kind, &internal) {
                            (
                                FrontendKind::LoadBalancer | FrontendKind::ExternalIp,
                                Backend::Endpoints(eps),
                            ) if spec.external_local && has_cidr => eps.clone(),
                            _ => Vec::new(),
                        },
                    },
                    field,
                ));
            };
            for (i, ip) in spec.cluster_ips.iter().enumerate() {
                if IpFamily::of(ip) == fam {
                    let field = format!("spec.clusterIPs[{i}]");
                    push(
                        FrontendKind::ClusterIp,
                        Some(*ip),
                        port.port,
                        &internal,
                        internal_masq,
                        field,
                    );
                }
            }
            if let (true, Some(np)) = (node_ports, port.node_port) {
                if spec.families.contains(&fam) {
                    let field = format!("spec.ports[{}].nodePort", port.index);
                    push(
                        FrontendKind::NodePort,
                        None,
                        np,
                        &external,
                        external_masq,
                        field,
                    );
                }
            }
            if spec.kind == ServiceType::LoadBalancer {
                for (i, ip) in spec.lb_ips.iter().enumerate() {
                    if IpFamily::of(ip) == fam {
                        let field = format!("status.loadBalancer.ingress[{i}].ip");
                        push(
                            FrontendKind::LoadBalancer,
                            Some(*ip),
                            port.port,
                            &external,
                            external_masq,
                            field,
                        );
                    }
                }
            }
            for (i, ip) in spec.external_ips.iter().enumerate() {
                if IpFamily::of(ip) == fam {
                    let field = format!("spec.externalIPs[{i}]");
                    push(
                        FrontendKind::ExternalIp,
                        Some(*ip),
                        port.port,
                        &external,
                        external_masq,
                        field,
                    );
                }
            }
        }
    }
    let health = (spec.is_external() && spec.external_local).then(|| HealthCheck {
        service: spec.key.clone(),
        node_port: spec.health_check_node_port,
        local_endpoints: local_addrs.len(),
    });
    (out, health)
}

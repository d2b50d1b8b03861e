//! Validation of what the policy engine relies on. Each check names the object
//! and the field path, so a bad object is reported precisely and skipped while
//! the others are still enforced.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_nft_crds::ir::Protocol;

use super::ObjectKey;

/// An object the engine cannot use, with the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: field {field}: {message}")]
pub struct ValidationError {
    /// `Kind namespace/name`.
    pub object: String,
    /// Path in the object, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub field: String,
    pub message: String,
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
}

pub fn pod(pod: &Pod) -> Result<(), ValidationError> {
    let cx = Ctx {
        object: format!("Pod {}", ObjectKey::of(&pod.metadata)),
    };
    if let Some(status) = &pod.status {
        if let Some(ip) = &status.pod_ip {
            parse_ip(&cx, "status.podIP", ip)?;
        }
        for (i, p) in status.pod_ips.iter().flatten().enumerate() {
            parse_ip(&cx, format!("status.podIPs[{i}].ip"), &p.ip)?;
        }
    }
    for (ci, c) in pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
    {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            if !(1..=65535).contains(&p.container_port) {
                return Err(cx.err(
                    format!("{field}.containerPort"),
                    format!("{} is not a port number (1-65535)", p.container_port),
                ));
            }
            if let Some(proto) = &p.protocol {
                parse_protocol(&cx, format!("{field}.protocol"), proto)?;
            }
        }
    }
    Ok(())
}

pub fn node(node: &Node) -> Result<(), ValidationError> {
    let cx = Ctx {
        object: format!("Node {}", node.metadata.name.as_deref().unwrap_or("")),
    };
    for (i, a) in node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .enumerate()
    {
        if a.type_.ends_with("IP") {
            parse_ip(&cx, format!("status.addresses[{i}].address"), &a.address)?;
        }
    }
    Ok(())
}

pub fn network_policy(policy: &NetworkPolicy) -> Result<(), ValidationError> {
    let cx = Ctx {
        object: format!("NetworkPolicy {}", ObjectKey::of(&policy.metadata)),
    };
    let Some(spec) = &policy.spec else {
        return Ok(());
    };
    if let Some(sel) = &spec.pod_selector {
        selector(&cx, "spec.podSelector", sel)?;
    }
    for (i, t) in spec.policy_types.iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(cx.err(
                format!("spec.policyTypes[{i}]"),
                format!("`{t}` is neither Ingress nor Egress"),
            ));
        }
    }
    for (ri, rule) in spec.ingress.iter().flatten().enumerate() {
        let base = format!("spec.ingress[{ri}]");
        peers(&cx, &format!("{base}.from"), rule.from.as_deref())?;
        ports(&cx, &format!("{base}.ports"), rule.ports.as_deref())?;
    }
    for (ri, rule) in spec.egress.iter().flatten().enumerate() {
        let base = format!("spec.egress[{ri}]");
        peers(&cx, &format!("{base}.to"), rule.to.as_deref())?;
        ports(&cx, &format!("{base}.ports"), rule.ports.as_deref())?;
    }
    Ok(())
}

fn peers(cx: &Ctx, base: &str, peers: Option<&[NetworkPolicyPeer]>) -> Result<(), ValidationError> {
    for (i, peer) in peers.unwrap_or_default().iter().enumerate() {
        let field = format!("{base}[{i}]");
        let has_selector = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_selector) {
            (None, false) => {
                return Err(cx.err(
                    field,
                    "a peer needs podSelector, namespaceSelector or ipBlock",
                ))
            }
            (Some(_), true) => {
                return Err(cx.err(
                    field,
                    "ipBlock cannot be combined with podSelector or namespaceSelector",
                ))
            }
            (Some(block), false) => {
                let cidr = parse_cidr(cx, format!("{field}.ipBlock.cidr"), &block.cidr)?;
                for (ei, e) in block.except.iter().flatten().enumerate() {
                    let efield = format!("{field}.ipBlock.except[{ei}]");
                    let ex = parse_cidr(cx, efield.clone(), e)?;
                    if !cidr.contains(&ex) {
                        return Err(cx.err(
                            efield,
                            format!("{e} is not inside the ipBlock cidr {}", block.cidr),
                        ));
                    }
                }
            }
            (None, true) => {
                if let Some(sel) = &peer.pod_selector {
                    selector(cx, &format!("{field}.podSelector"), sel)?;
                }
                if let Some(sel) = &peer.namespace_selector {
                    selector(cx, &format!("{field}.namespaceSelector"), sel)?;
                }
            }
        }
    }
    Ok(())
}

fn ports(cx: &Ctx, base: &str, ports: Option<&[NetworkPolicyPort]>) -> Result<(), ValidationError> {
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        let field = format!("{base}[{i}]");
        if let Some(proto) = &p.protocol {
            parse_protocol(cx, format!("{field}.protocol"), proto)?;
        }
        let number = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => {
                if !(1..=65535).contains(n) {
                    return Err(cx.err(
                        format!("{field}.port"),
                        format!("{n} is not a port number (1-65535)"),
                    ));
                }
                Some(*n)
            }
            Some(IntOrString::String(name)) => {
                // The API allows a numeric string only as an int; a name must
                // look like an IANA service name.
                if name.is_empty() || name.len() > 15 || name.parse::<u32>().is_ok() {
                    return Err(cx.err(
                        format!("{field}.port"),
                        format!("`{name}` is not a port name (1-15 chars, not all digits)"),
                    ));
                }
                None
            }
        };
        if let Some(end) = p.end_port {
            let Some(start) = number else {
                return Err(cx.err(
                    format!("{field}.endPort"),
                    "endPort requires a numeric port",
                ));
            };
            if end < start || end > 65535 {
                return Err(cx.err(
                    format!("{field}.endPort"),
                    format!("{end} must be between port ({start}) and 65535"),
                ));
            }
        }
    }
    Ok(())
}

fn selector(cx: &Ctx, base: &str, sel: &LabelSelector) -> Result<(), ValidationError> {
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let field = format!("{base}.matchExpressions[{i}]");
        let n_values = req.values.as_ref().map_or(0, Vec::len);
        match req.operator.as_str() {
            "In" | "NotIn" if n_values == 0 => {
                return Err(cx.err(
                    format!("{field}.values"),
                    format!("operator {} needs at least one value", req.operator),
                ))
            }
            "Exists" | "DoesNotExist" if n_values > 0 => {
                return Err(cx.err(
                    format!("{field}.values"),
                    format!("operator {} takes no values", req.operator),
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(cx.err(
                    format!("{field}.operator"),
                    format!("`{other}` is not one of In, NotIn, Exists, DoesNotExist"),
                ))
            }
        }
    }
    Ok(())
}

fn parse_ip(cx: &Ctx, field: impl Into<String>, s: &str) -> Result<IpAddr, ValidationError> {
    s.parse()
        .map_err(|_| cx.err(field, format!("`{s}` is not an IP address")))
}

fn parse_cidr(cx: &Ctx, field: impl Into<String>, s: &str) -> Result<IpNet, ValidationError> {
    s.parse()
        .map_err(|_| cx.err(field, format!("`{s}` is not a CIDR (like 10.0.0.0/8)")))
}

fn parse_protocol(
    cx: &Ctx,
    field: impl Into<String>,
    s: &str,
) -> Result<Protocol, ValidationError> {
    // Kubernetes spells protocols in upper case and rejects anything else.
    Protocol::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| cx.err(field, format!("`{s}` is not TCP, UDP or SCTP")))
}

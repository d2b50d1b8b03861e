//! `kube-nft explain service`: what kube-nft does with one Service, per node
//! (pure): its frontends, where each leads (endpoints, reject or drop), which
//! connections are masqueraded, affinity; or, for an ExternalName Service,
//! that it is DNS only.

use std::fmt;

use serde::Serialize;

use super::model::{Backend, Masquerade, NodeServices, ServiceConfig};
use super::{compute, external_name_note};
use crate::cluster::{Cluster, ObjectKey};

/// The explanation of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    pub service: String,
    /// Set for ExternalName Services (no frontends then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub frontends: Vec<FrontendReport>,
    /// Problems with the Service or its EndpointSlices (object and field).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendReport {
    pub node: String,
    /// `ClusterIP 10.96.0.10:80/TCP`, `NodePort node addresses:30080/TCP`, …
    pub frontend: String,
    /// `namespace/name:port`.
    pub port: String,
    /// `pod ip:port` of each endpoint; empty when rejected or dropped.
    pub endpoints: Vec<String>,
    /// `dnat`, `reject` (no endpoint anywhere) or `drop` (a Local traffic
    /// policy and no endpoint on this node).
    pub action: String,
    /// `never`, `from outside the cluster CIDR`, `always`.
    pub masquerade: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_seconds: Option<u64>,
}

/// Explains Service `key` on every node of `cluster` (nodes from Node
/// objects and pods' `spec.nodeName`). `cluster` must hold the
/// EndpointSlices (see [`super::with_synthesized_slices`]).
pub fn explain_service(
    cluster: &Cluster,
    key: &ObjectKey,
    config: &ServiceConfig,
) -> Result<ServiceReport, String> {
    let svc = cluster
        .services()
        .get(key)
        .ok_or_else(|| format!("no Service {key} in the manifests"))?;
    let mut report = ServiceReport {
        service: key.to_string(),
        note: external_name_note(svc),
        frontends: Vec::new(),
        errors: Vec::new(),
    };
    if report.note.is_some() {
        return Ok(report);
    }
    let mut nodes: Vec<String> = cluster.nodes().keys().cloned().collect();
    for pod in cluster.pods().values() {
        if let Some(n) = crate::cluster::pod_node(pod) {
            if !nodes.iter().any(|x| x == n) {
                nodes.push(n.to_string());
            }
        }
    }
    nodes.sort();
    if nodes.is_empty() {
        nodes.push(String::new());
    }
    for node in &nodes {
        let services: NodeServices = compute(cluster, node, config);
        for e in services
            .errors
            .iter()
            .filter(|e| e.object.contains(&key.to_string()))
        {
            let text = e.to_string();
            if !report.errors.contains(&text) {
                report.errors.push(text);
            }
        }
        for e in services.service_entries(key) {
            let (action, endpoints) = match &e.backend {
                Backend::Endpoints(eps) => (
                    "dnat",
                    eps.iter()
                        .map(|ep| {
                            let addr = std::net::SocketAddr::new(ep.addr, ep.port);
                            match &ep.pod {
                                Some(pod) => format!("{pod} {addr}"),
                                None => addr.to_string(),
                            }
                        })
                        .collect(),
                ),
                Backend::Reject => ("reject", Vec::new()),
                Backend::Drop => ("drop", Vec::new()),
            };
            report.frontends.push(FrontendReport {
                node: node.clone(),
                frontend: format!("{} {}", e.frontend.kind.as_str(), e.frontend),
                port: e.label(),
                endpoints,
                action: action.to_string(),
                masquerade: match e.masquerade {
                    Masquerade::Never => "never",
                    Masquerade::FromOutsideCluster => "from outside the cluster CIDR",
                    Masquerade::Always => "always",
                }
                .to_string(),
                affinity_seconds: e.affinity.map(|d| d.as_secs()),
            });
        }
    }
    Ok(report)
}

impl fmt::Display for ServiceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Service {}", self.service)?;
        if let Some(note) = &self.note {
            return writeln!(f, "  {note}");
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        if self.frontends.is_empty() {
            writeln!(
                f,
                "  no frontends: headless, or the manifests give no clusterIP, nodePort or \
                 load-balancer IP (the API server allocates them, and so does the lab)"
            )?;
        }
        for fr in &self.frontends {
            let node = if fr.node.is_empty() { "-" } else { &fr.node };
            write!(
                f,
                "  node {node}: {} ({}) → {}",
                fr.frontend, fr.port, fr.action
            )?;
            match fr.action.as_str() {
                "reject" => write!(f, " (no endpoint: refused at once)")?,
                "drop" => write!(f, " (traffic policy Local, no endpoint on this node)")?,
                _ => write!(f, " to one of {}", fr.endpoints.join(", "))?,
            }
            write!(f, "; masquerade {}", fr.masquerade)?;
            if let Some(s) = fr.affinity_seconds {
                write!(f, "; ClientIP affinity {s}s")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Cluster {
        super::super::with_synthesized_slices(&crate::cluster::load::cluster_from_yaml(yaml))
    }

    #[test]
    fn external_name_is_dns_only() {
        let c = cluster(
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: demo}\n\
             spec: {type: ExternalName, externalName: db.example.com}\n",
        );
        let r =
            explain_service(&c, &ObjectKey::new("demo", "db"), &ServiceConfig::default()).unwrap();
        assert!(r.frontends.is_empty());
        let text = r.to_string();
        assert!(
            text.contains("DNS only") && text.contains("db.example.com"),
            "{text}"
        );
    }

    #[test]
    fn frontends_per_node_with_their_endpoints() {
        let c = cluster(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: demo, labels: {app: web}}\n\
             spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 8080}]}]}\n\
             status: {phase: Running, podIP: 10.244.0.5}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
             spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: demo}\n\
             spec: {clusterIP: 10.96.0.11, selector: {app: none}, ports: [{port: 80}]}\n",
        );
        let config = ServiceConfig::default();
        let r = explain_service(&c, &ObjectKey::new("demo", "web"), &config).unwrap();
        assert_eq!(r.frontends.len(), 1, "{r:?}");
        assert_eq!(r.frontends[0].endpoints, ["demo/web-1 10.244.0.5:8080"]);
        assert!(r.to_string().contains("ClusterIP 10.96.0.10:80/TCP"), "{r}");
        let empty = explain_service(&c, &ObjectKey::new("demo", "empty"), &config).unwrap();
        assert_eq!(empty.frontends[0].action, "reject");
        assert!(explain_service(&c, &ObjectKey::new("demo", "nope"), &config).is_err());
    }
}

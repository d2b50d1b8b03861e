//! What a change of a node's Service model leaves behind in the kernel's
//! connection tracking (pure): UDP flows still DNATed to an endpoint that no
//! longer serves their frontend. The agent deletes their conntrack entries
//! after the sync (netlink, `nft::conntrack`), so the next datagram of a
//! running flow is NATed afresh, to a live endpoint. TCP needs nothing: a
//! connection to a gone pod ends with it. (kube-proxy clears UDP only, for
//! the same reason.)

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use kube_nft_crds::ir::Protocol;

use super::model::{Entry, FrontendKind, NodeServices};

/// Conntrack entries to delete: UDP flows to `frontend` (a VIP and port, or
/// for a NodePort only the port) DNATed to `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlow {
    /// `None` for a NodePort (any node address).
    pub frontend_addr: Option<IpAddr>,
    pub frontend_port: u16,
    pub endpoint: SocketAddr,
}

/// The flows `old` DNATed that `new` no longer would: per frontend, the
/// endpoints that went away (or the whole frontend, when it did).
pub fn stale_udp_flows(old: &NodeServices, new: &NodeServices) -> Vec<StaleFlow> {
    let now: BTreeSet<StaleFlow> = new.entries.iter().flat_map(flows).collect();
    let mut out: Vec<StaleFlow> = old
        .entries
        .iter()
        .flat_map(flows)
        .filter(|f| !now.contains(f))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn flows(e: &Entry) -> Vec<StaleFlow> {
    if e.frontend.protocol != Protocol::Udp {
        return Vec::new();
    }
    let frontend_addr = match e.frontend.kind {
        FrontendKind::NodePort => None,
        _ => e.frontend.addr,
    };
    e.endpoints()
        .iter()
        .map(|ep| StaleFlow {
            frontend_addr,
            frontend_port: e.frontend.port,
            endpoint: SocketAddr::new(ep.addr, ep.port),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ObjectKey;
    use crate::service::model::{Backend, Endpoint, Frontend, IpFamily, Masquerade};

    fn entry(kind: FrontendKind, protocol: Protocol, eps: &[&str]) -> Entry {
        Entry {
            frontend: Frontend {
                kind,
                family: IpFamily::V4,
                addr: (kind != FrontendKind::NodePort).then(|| "10.96.0.10".parse().unwrap()),
                protocol,
                port: if kind == FrontendKind::NodePort {
                    30053
                } else {
                    53
                },
            },
            service: ObjectKey::new("demo", "dns"),
            port_name: String::new(),
            backend: Backend::Endpoints(
                eps.iter()
                    .map(|a| Endpoint {
                        addr: a.parse().unwrap(),
                        port: 5353,
                        node: None,
                        pod: None,
                    })
                    .collect(),
            ),
            masquerade: Masquerade::Never,
            affinity: None,
            source_ranges: None,
            internal_endpoints: Vec::new(),
        }
    }

    fn services(entries: Vec<Entry>) -> NodeServices {
        NodeServices {
            entries,
            ..Default::default()
        }
    }

    #[test]
    fn only_udp_flows_of_removed_endpoints_are_stale() {
        let old = services(vec![
            entry(
                FrontendKind::ClusterIp,
                Protocol::Udp,
                &["10.0.0.1", "10.0.0.2"],
            ),
            entry(FrontendKind::NodePort, Protocol::Udp, &["10.0.0.1"]),
            entry(FrontendKind::ClusterIp, Protocol::Tcp, &["10.0.0.1"]),
        ]);
        let new = services(vec![
            entry(
                FrontendKind::ClusterIp,
                Protocol::Udp,
                &["10.0.0.2", "10.0.0.3"],
            ),
            entry(FrontendKind::ClusterIp, Protocol::Tcp, &[]),
        ]);
        let stale = stale_udp_flows(&old, &new);
        let ep1: SocketAddr = "10.0.0.1:5353".parse().unwrap();
        assert_eq!(
            stale,
            vec![
                StaleFlow {
                    frontend_addr: None,
                    frontend_port: 30053,
                    endpoint: ep1
                },
                StaleFlow {
                    frontend_addr: Some("10.96.0.10".parse().unwrap()),
                    frontend_port: 53,
                    endpoint: ep1
                },
            ]
        );
        assert!(stale_udp_flows(&new, &new).is_empty());
    }
}

//! The node agent's core: what the DaemonSet runs on every node, and what the lab
//! runs once per lab node.
//!
//! An [`Agent`] holds a node name and a [`Dataplane`] for one network namespace.
//! It takes the node's share of the compiled policy and its Service NAT model
//! ([`AgentInput`]), renders the desired `inet kube-nft` table
//! ([`crate::render::render`]), and syncs it
//! incrementally: the dataplane diffs against the table it last committed and
//! sends only the difference, in one atomic batch.
//!
//! The netlink connection is `!Send`, so [`AgentHandle::spawn`] runs an agent on
//! a thread of its own and talks to it over a channel; [`AgentHandle::sync`]
//! returns once the kernel committed the change, i.e. once it is enforced.

pub mod daemon;
mod handle;
pub mod health;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kube_nft_crds::ir::{AddressSet, CompiledPolicy, NodePolicy};
use nft::conntrack::{self, Conntrack};
use nft::dataplane::{Dataplane, Drift, SyncError};
use nft::netlink::{self, Conn};
use nft::{Batch, Op, Table};
use serde::Serialize;

pub use handle::{AgentHandle, Pending, PendingSync};

use crate::cluster::Cluster;
use crate::render::{self, TABLE_FAMILY, TABLE_NAME};
use crate::service::{self, NodeServices, ServiceConfig};

/// Why an agent could not open its dataplane or enforce a change. The
/// previously committed ruleset stays enforced on a failed sync.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node {node}: opening nftables{}: {source}", in_netns(.netns))]
    Open {
        node: String,
        netns: Option<String>,
        #[source]
        source: netlink::Error,
    },
    #[error("node {node}: enforcing: {source}")]
    Sync {
        node: String,
        #[source]
        source: SyncError,
    },
    #[error("node {node}: agent thread {what}")]
    Gone { node: String, what: &'static str },
}

fn in_netns(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map(|n| format!(" in network namespace {n}"))
        .unwrap_or_default()
}

/// What a node enforces: its share of the IR and the address sets it references
/// (more sets are harmless: only referenced ones are rendered), and its Service
/// NAT model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInput {
    pub policy: NodePolicy,
    pub address_sets: BTreeMap<String, AddressSet>,
    /// `None` leaves Service NAT out of the table (policy only).
    pub services: Option<NodeServices>,
    pub service_config: ServiceConfig,
}

impl AgentInput {
    /// `node`'s share of a compiled policy; a node with nothing to enforce gets an
    /// empty share (its table then has base chains and empty maps).
    pub fn for_node(compiled: &CompiledPolicy, node: &str) -> AgentInput {
        let policy = compiled.nodes.get(node).cloned().unwrap_or(NodePolicy {
            node: node.to_string(),
            ..Default::default()
        });
        AgentInput {
            policy,
            address_sets: compiled.address_sets.clone(),
            services: None,
            service_config: ServiceConfig::default(),
        }
    }

    /// `node`'s share of the compiled policy and its Service NAT, computed from
    /// `cluster` (whose EndpointSlices must be complete: the lab synthesizes
    /// them, a cluster's controller writes them).
    pub fn for_cluster(
        cluster: &Cluster,
        compiled: &CompiledPolicy,
        node: &str,
        config: &ServiceConfig,
    ) -> AgentInput {
        AgentInput {
            services: Some(service::compute(cluster, node, config)),
            service_config: config.clone(),
            ..AgentInput::for_node(compiled, node)
        }
    }

    /// The desired table (pure).
    pub fn render(&self) -> Table {
        render::render(&render::RenderInput {
            policy: &self.policy,
            address_sets: &self.address_sets,
            services: self.services.as_ref().map(|s| (s, &self.service_config)),
        })
    }
}

/// What one sync did. `ops == 0` means the kernel already held the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub node: String,
    /// Operations of the diff (an element list counts once).
    pub ops: usize,
    /// Objects changed: set elements, rules and headers.
    pub elements: usize,
    /// Committed transactions (0 when nothing changed).
    pub transactions: usize,
    /// Wall time from diff to the kernel's commit.
    #[serde(serialize_with = "as_millis")]
    pub elapsed: Duration,
    /// Conntrack entries of UDP flows to endpoints that went away, and
    /// session-affinity entries naming them, deleted after the commit.
    pub stale_flows_cleared: usize,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// One node's agent. Not `Send` (it owns a netlink socket): use it on one thread,
/// or through [`AgentHandle`].
pub struct Agent {
    node: String,
    dataplane: Dataplane,
    /// `None` when the kernel has no ctnetlink (then stale UDP flows expire
    /// on their own, after conntrack's UDP timeout).
    conntrack: Option<Conntrack>,
    /// The Service model of the last committed sync.
    services: Option<NodeServices>,
    /// Answers load balancers' health checks of `externalTrafficPolicy:
    /// Local` Services.
    health: health::HealthServer,
}

impl Agent {
    /// Opens the agent's table in the network namespace at `netns` (a path such
    /// as `/run/netns/NAME`), or in the caller's namespace. Reads the table the
    /// kernel holds once, so a restarted agent diffs against what is enforced.
    pub fn open(node: &str, netns: Option<&Path>) -> Result<Agent, AgentError> {
        let open_err = |source| AgentError::Open {
            node: node.to_string(),
            netns: netns.map(|p| p.display().to_string()),
            source,
        };
        let conn = match netns {
            Some(path) => Conn::open_in_netns(path),
            None => Conn::open(),
        }
        .map_err(open_err)?;
        let dataplane = Dataplane::open(conn, TABLE_FAMILY, TABLE_NAME).map_err(open_err)?;
        let conntrack = match netns {
            Some(path) => Conntrack::open_in_netns(path),
            None => Conntrack::open(),
        }
        .map_err(|e| tracing::warn!(%node, error = %e, "no conntrack netlink: stale UDP flows will time out"))
        .ok();
        Ok(Agent {
            node: node.to_string(),
            dataplane,
            conntrack,
            services: None,
            health: health::HealthServer::new(netns),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The ports answering load balancers' health checks.
    pub fn health_check_ports(&self) -> Vec<u16> {
        self.health.ports()
    }

    /// What the kernel holds as far as this agent knows.
    pub fn committed(&self) -> Option<&Table> {
        self.dataplane.committed()
    }

    /// Restores the table when someone changed it behind our back (see
    /// [`Dataplane::check_drift`]); cheap when nothing was committed in the
    /// namespace since our last commit.
    pub fn check_drift(&mut self) -> Result<Drift, AgentError> {
        self.dataplane
            .check_drift()
            .map_err(|source| AgentError::Sync {
                node: self.node.clone(),
                source,
            })
    }

    /// The batch a sync to `input` would send now (for `--dry-run`).
    pub fn plan(&self, input: &AgentInput) -> Batch {
        nft::diff::diff(self.committed(), &input.render())
    }

    /// Renders `input` and makes the kernel hold it, sending only the diff.
    /// Returns once the kernel committed.
    pub fn sync(&mut self, input: &AgentInput) -> Result<AgentReport, AgentError> {
        let desired = input.render();
        let sync = self
            .dataplane
            .sync(&desired)
            .map_err(|source| AgentError::Sync {
                node: self.node.clone(),
                source,
            })?;
        if let Some(services) = &input.services {
            for (port, e) in self.health.update(&services.health_checks) {
                tracing::warn!(node = %self.node, port, error = %e, "cannot serve a health check");
            }
        }
        let old = std::mem::replace(&mut self.services, input.services.clone());
        let stale_flows_cleared = match (&old, &input.services) {
            (Some(old), Some(new)) if old != new => self.clear_stale(old, new),
            _ => 0,
        };
        Ok(AgentReport {
            node: self.node.clone(),
            ops: sync.ops,
            elements: sync.changes,
            transactions: sync.transactions,
            elapsed: sync.elapsed,
            stale_flows_cleared,
        })
    }

    /// After a committed change of the Service model: deletes the conntrack
    /// entries of UDP flows still DNATed to endpoints that went away, and the
    /// session-affinity entries that name such endpoints, so running clients
    /// move to live ones. Best effort: enforcement stands either way, a
    /// failure is logged and the entries expire on their own.
    fn clear_stale(&mut self, old: &NodeServices, new: &NodeServices) -> usize {
        let mut cleared = 0;
        if let Some(ct) = &mut self.conntrack {
            for flow in service::stale_udp_flows(old, new) {
                let family = conntrack::IpFamily::of(flow.endpoint.ip());
                let filter = conntrack::Filter::new(conntrack::Proto::Udp, family);
                let filter = match flow.frontend_addr {
                    Some(addr) => {
                        filter.orig_dst(std::net::SocketAddr::new(addr, flow.frontend_port))
                    }
                    None => filter.orig_dst_port(flow.frontend_port),
                }
                .dnat_to(flow.endpoint);
                match ct.delete(&filter) {
                    Ok(n) => cleared += n,
                    Err(e) => {
                        tracing::warn!(node = %self.node, ?flow, error = %e, "deleting stale UDP flows")
                    }
                }
            }
        }
        for family in service::IpFamily::ALL {
            let map = render::service::affinity_map(family);
            let conn = self.dataplane.conn();
            let set = match conn.read_set(TABLE_FAMILY, TABLE_NAME, &map) {
                Ok(Some(set)) => set,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(node = %self.node, %map, error = %e, "reading affinity");
                    continue;
                }
            };
            let keys = render::service::stale_affinity(&set, new);
            if keys.is_empty() {
                continue;
            }
            let n = keys.len();
            let mut batch = Batch::new(TABLE_FAMILY, TABLE_NAME);
            batch.ops.push(Op::DeleteElements {
                set: map.clone(),
                keys,
            });
            // Straight to the kernel: the committed copy never holds the
            // elements of dynamic sets (the kernel adds them).
            match conn.apply(&batch) {
                Ok(_) => cleared += n,
                Err(e) => {
                    tracing::warn!(node = %self.node, %map, error = %e, "deleting stale affinity")
                }
            }
        }
        cleared
    }
}

/// The `nft -f` script of the batch that brings `committed` to `input`'s table
/// (pure; `committed: None` = the table does not exist yet).
pub fn dry_run_script(committed: Option<&Table>, input: &AgentInput) -> String {
    let desired = input.render();
    let batch = nft::diff::diff(committed, &desired);
    nft::render::render_batch_with(&batch, Some(&desired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_nft_crds::ir::PodPolicy;

    fn isolated_pod() -> CompiledPolicy {
        CompiledPolicy {
            address_sets: BTreeMap::new(),
            nodes: BTreeMap::from([(
                "n1".to_string(),
                NodePolicy {
                    node: "n1".into(),
                    node_addresses: vec!["172.31.0.10".parse().unwrap()],
                    pods: vec![PodPolicy {
                        namespace: "x".into(),
                        name: "a".into(),
                        ips: vec!["10.244.0.2".parse().unwrap()],
                        ingress_isolated: true,
                        ..Default::default()
                    }],
                },
            )]),
        }
    }

    #[test]
    fn a_node_without_policy_gets_an_empty_share() {
        let input = AgentInput::for_node(&isolated_pod(), "n2");
        assert_eq!(input.policy.node, "n2");
        assert!(input.policy.pods.is_empty());
    }

    #[test]
    fn dry_run_from_scratch_creates_the_table_and_nothing_when_equal() {
        let input = AgentInput::for_node(&isolated_pod(), "n1");
        let script = dry_run_script(None, &input);
        assert!(script.contains("kube-nft"), "{script}");
        assert!(script.contains("10.244.0.2"), "{script}");
        let again = dry_run_script(Some(&input.render()), &input);
        assert!(!again.contains("10.244.0.2"), "{again}");
    }
}

//! Shared helpers for kube-nft end-to-end tests and the bench binary.
//!
//! - [`ruleset`]: kube-proxy-sized rulesets as `nft::Table`s;
//! - [`bench_policy`]: the synthetic cluster and run of `bench policy`;
//! - [`bench_services`]: the synthetic Services and run of `bench services`;
//! - [`bench_cluster`]: relabel latency through a real API server, operator
//!   and agents (`bench cluster`);
//! - [`measure`]: medians, peak RSS;
//! - [`topo`]: client — router — server namespaces and a sequence-checked TCP
//!   stream across them.

pub mod bench_cluster;
pub mod bench_policy;
pub mod bench_services;
pub mod measure;
pub mod ruleset;
pub mod topo;

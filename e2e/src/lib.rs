//! Shared helpers for kube-nft end-to-end tests and the bench binary.
//!
//! - [`ruleset`]: kube-proxy-sized rulesets as `nft::Table`s;
//! - [`measure`]: medians, peak RSS;
//! - [`topo`]: client — router — server namespaces and a sequence-checked TCP
//!   stream across them.

pub mod measure;
pub mod ruleset;
pub mod topo;

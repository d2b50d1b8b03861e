//! nftables as typed Rust data.
//!
//! - [`model`]: tables, chains, rules, sets and maps as plain comparable values;
//! - [`batch`]: one transaction's operations as data.
//!
//! This crate knows nothing of Kubernetes.

pub mod batch;
pub mod dataplane;
pub mod diff;
pub mod model;
pub mod netlink;
pub mod render;
pub mod testing;

pub use batch::{Batch, Op};
pub use model::*;
/// Conntrack entries over ctnetlink: list, and delete stale Service flows.
pub use netlink::conntrack;

//! Services and EndpointSlices → the per-node NAT model.
//!
//! - [`spec`]: reading Services and EndpointSlices into checked data (errors
//!   name object and field);
//! - [`compute`](compute()): one node's [`NodeServices`] (pure);
//! - [`synthesize_slices`]: the lab's stand-in for the EndpointSlice
//!   controller;
//! - [`explain_service`]: what kube-nft does with one Service, per node;
//! - [`stale`]: UDP flows a change leaves DNATed to gone endpoints;
//! - [`model`]: the NAT model the renderer
//!   ([`render::service`](crate::render::service)) turns into nftables.

pub mod compute;
pub mod explain;
pub mod model;
pub mod slices;
pub mod spec;
pub mod stale;

pub use compute::{compute, external_name_note};
pub use explain::{explain_service, ServiceReport};
pub use model::*;
pub use slices::{synthesize_slices, with_synthesized_slices};
pub use stale::{stale_udp_flows, StaleFlow};

#[cfg(test)]
mod tests;

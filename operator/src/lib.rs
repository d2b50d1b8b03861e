//! kube-nft: the cluster model, policy engine, renderer, control loops and lab.

pub mod cli;
pub mod cluster;
pub mod policy;

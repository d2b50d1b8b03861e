//! kube-nft's CustomResourceDefinitions and the compiled policy IR they carry.

pub mod ir;
pub mod manifests;
pub mod resources;
pub mod shard;
pub mod structural;

#[cfg(test)]
mod structural_check;

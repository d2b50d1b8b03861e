//! kube-nft CRDs and policy IR.

pub mod ir;

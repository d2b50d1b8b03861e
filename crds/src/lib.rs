//! kube-nft CRDs and policy IR.

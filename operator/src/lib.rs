//! kube-nft: the cluster model, policy engine, renderer, control loops and lab.

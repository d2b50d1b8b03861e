//! Shared helpers for kube-nft end-to-end tests.

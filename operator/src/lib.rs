//! kube-nft: the cluster model, policy engine, renderer, control loops and lab.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod controller;
pub mod http;
pub mod kubeapi;
pub mod lab;
pub mod policy;
pub mod render;
pub mod service;

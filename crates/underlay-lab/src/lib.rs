//! The lab: everything needed to run underlay on one machine without a cluster
//! or an Azure subscription. Never shipped.

pub mod apiserver;
pub mod arm;
pub mod cli;
pub mod cni;
pub mod datapath;
pub mod demo;
pub mod kubelet;
pub mod lab;
pub mod leftovers;
pub mod netns;
pub mod relay;
pub mod scenario;
pub mod traffic;
pub mod vnet;

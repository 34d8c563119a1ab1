//! The lab: everything needed to run underlay on one machine without a cluster
//! or an Azure subscription. Never shipped.

pub mod apiserver;
pub mod arm;
pub mod netns;
pub mod relay;
pub mod traffic;
pub mod vnet;
pub mod cni;
pub mod kubelet;

//! The lab: everything needed to run underlay on one machine without a cluster
//! or an Azure subscription. Never shipped.

pub mod apiserver;
pub mod arm;

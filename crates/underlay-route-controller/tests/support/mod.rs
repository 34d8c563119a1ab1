//! Fixtures shared by the integration tests. Each test crate uses a
//! different part, hence the allowance for unused items.

#![allow(dead_code)]

pub mod arm;
pub mod kube;

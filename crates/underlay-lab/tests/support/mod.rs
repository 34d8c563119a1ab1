//! Fixtures shared by the integration tests: the API server through
//! kube-rs (`api`) and through kubectl (`kubectl`). Each test crate uses a
//! different part, hence the allowance for unused items.

#![allow(dead_code, reason = "each test crate uses a different part")]

pub mod api;
pub mod kubectl;

//! netlet-testbed: the conformance suite (`netlet-conformance`), the harness the integration
//! tests and benchmarks use to run real hosts and drivers, and a no-data-plane fixture driver.

pub mod checks;
pub mod cluster;
pub mod conformance;
pub mod harness;
pub mod k8s;
pub mod probe;
pub mod runtime;
pub mod stats;

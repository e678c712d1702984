//! `zerok-harness`: deterministic simulation and measurement.
//!
//! To be built here: `SimWorld` on turmoil with a turmoil transport of the `Link` seam,
//! fault injection through `FaultPlan`, probes, and the `zerok-bench` benchmark binary
//! ("Benchmarks" issue). Nothing is implemented yet.

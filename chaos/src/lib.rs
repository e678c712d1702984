//! `zerok-chaos`: deterministic simulation of the relay and client actor trees with fault
//! injection (issue 13). Built so far: [`net`], the `Link` seam over turmoil's simulated
//! TCP, which passes the same conformance suite as the in-memory and iroh transports.

pub mod hostile;
pub mod invariants;
pub mod net;
pub mod scenarios;
pub mod world;

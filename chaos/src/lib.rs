//! `zerok-chaos`: deterministic simulation of the relay and client actor trees with fault
//! injection (issue 13, docs/CHAOS.md): [`world`] (relays and devices on turmoil), [`net`]
//! (the `Link` seam over simulated TCP), [`device_disk`] (devices' disks under power loss),
//! [`hostile`] (a frame-rewriting relay host), [`invariants`] and the [`scenarios`] catalogue.

pub mod device_disk;
pub mod hostile;
pub mod invariants;
pub mod net;
pub mod scenarios;
pub mod world;

//! `zerok-actors`: the actors both node trees are wired from, each with its pure core, and the
//! seams they stand on.
//!
//! - [`crypto`]: group secrets, key derivation per epoch, join proofs, record envelopes,
//!   invites. Pure functions; no actor needed.
//! - [`link`]: the `Link` seam (framed, ordered, authenticated connections) with the
//!   in-memory and iroh transports.
//! - [`clock`], [`rng`], [`fault`]: wall time, randomness and fault injection as values, so
//!   tests and simulation control them.
//!
//! Actors (session, group router, blob store, sweeper, relay connection, encryptor, ...) join
//! as the node trees are built; see DESIGN.md §2.

pub mod admission;
pub mod blob_store;
pub mod cleanup_sweeper;
pub mod client;
pub mod clock;
pub mod crypto;
pub mod fault;
pub mod group_router;
pub mod infra;
pub mod link;
pub mod link_reader;
pub mod listener;
pub mod metrics;
pub mod rate_limit;
pub mod rng;
pub mod routers_supervisor;
pub mod session;
pub mod sessions_supervisor;
pub mod supervision;

pub use zerok_messages::shared_ref;

pub use clock::Clock;
pub use fault::{FaultPlan, FaultPoint};
pub use rng::Rng;

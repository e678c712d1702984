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
//! - [`relay`]: the relay tree's actors (session, group router, blob store, sweeper, their
//!   supervisors, listener) with admission, rate limits and metrics.
//! - [`client`]: the client tree's actors (encryptor, sync coordinator, relay connection) and
//!   its local store.
//! - [`supervision`]: the restart policy both trees share; [`link_reader`]: the actor both
//!   trees read links with; [`exec`]: where blocking work runs; [`page_cache`]: large files
//!   streamed through the page cache, not filling it.
//!
//! The trees are wired in `relay-node/src/tree.rs` and `client-node/src/tree.rs`; see
//! docs/DESIGN.md §2.

pub mod client;
pub mod clock;
pub mod crypto;
pub mod exec;
pub mod fault;
pub mod link;
pub mod link_reader;
pub mod page_cache;
pub mod relay;
pub mod rng;
pub mod supervision;

pub use zerok_messages::shared_ref;

pub use clock::Clock;
pub use fault::{FaultPlan, FaultPoint};
pub use rng::Rng;

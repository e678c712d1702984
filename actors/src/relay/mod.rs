//! The relay tree's actors (docs/DESIGN.md §2, §5, §7), wired by `zerok-relay`'s `tree.rs`:
//!
//! - [`session`]: one per client connection; Join decided inline ([`admission`]), replies
//!   never block; rate limits ([`rate_limit`]).
//! - [`group_router`] under [`routers_supervisor`]: one per active mailbox; acks pushes after
//!   the flush, fans out live.
//! - [`blob_store`] and [`cleanup_sweeper`] under [`infra`]: the durable item store and the
//!   expiry sweep.
//! - [`sessions_supervisor`], [`listener`]: connections, slots before the handshake.
//! - [`content`]: sealed files over iroh-blobs (grants decided on the zerok connection).
//! - [`metrics`]: what the relay exports.
//!
//! Their messages are in `zerok_messages::relay`.

pub mod admission;
pub mod blob_store;
pub mod cleanup_sweeper;
pub mod content;
pub mod group_router;
pub mod infra;
pub mod listener;
pub mod metrics;
pub mod rate_limit;
pub mod routers_supervisor;
pub mod session;
pub mod sessions_supervisor;

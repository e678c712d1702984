//! The client tree's actors (DESIGN.md §2, §6), wired by `zerok-client`'s `tree.rs`:
//!
//! - [`encryptor`]: seals outgoing records and opens received ones; the only holder of
//!   content keys.
//! - [`sync_coordinator`]: the hub: outbox and receipts, the receive path (dedupe, open, seq
//!   checks, events), relay wiring and sync barriers; owns the [`local_store`].
//! - [`relay_connection`]: one per relay: dial, join, subscribe, pull, push, keep-alive.
//! - [`content_transfer`]: large files: seal, upload, fetch, open (iroh-blobs).
//!
//! Their messages are in `zerok_messages::client` (ContentTransfer's, which carry the
//! endpoint's iroh types, beside it).

pub mod content_transfer;
pub mod encryptor;
pub mod local_store;
pub mod partial_download;
pub mod relay_connection;
pub mod sealed_source;
pub mod seen;
pub mod sync_coordinator;

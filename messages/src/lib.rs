//! `zerok-messages`: everything 0k-sync actors and peers exchange, with no I/O and no iroh.
//!
//! - [`ids`]: ids and newtypes (`DeviceId`, `MailboxId`, `BlobId`, `Cursor`, `Epoch`, ...).
//! - [`wire`]: protocol version 1 frames (DESIGN.md §3) and limits.
//! - [`codec`]: CBOR encoding, length-prefix framing, typed decode errors.
//! - [`addr`]: the text form of a relay address.
//!
//! Per-actor message enums join this crate as the actors that use them are built.

#![warn(missing_docs)]

pub mod addr;
pub mod client;
pub mod codec;
pub mod errors;
pub mod ids;
pub mod link;
pub mod relay;
pub mod shared_ref;
pub mod sync;
pub mod wire;

pub use addr::RelayAddr;
pub use ids::{BlobId, Cursor, DeviceId, Epoch, MailboxId, MailboxKey, ReqId, Signature64};
pub use link::LinkSender;
pub use wire::{ErrorCode, Frame, Item, Limits};

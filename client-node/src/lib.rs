//! `zerok-client`: the 0k-sync client, embedded in apps (docs/DESIGN.md §2, §6), and the
//! `zerok` CLI (`src/bin/zerok.rs`).
//!
//! ```no_run
//! # async fn demo(relay: zerok_messages::RelayAddr) -> Result<(), zerok_client::ClientError> {
//! use zerok_client::{Client, ClientConfig, Event, NewSecret};
//! let client = Client::start(ClientConfig::new("/tmp/zerok-demo")).await?;
//! let group = client.create_group("notes", NewSecret::Random, vec![relay]).await?;
//! let mut events = client.events().expect("taken once");
//! let receipt = client.push(group, b"hello".to_vec()).await?;
//! println!("durable on {} relay(s) as {}", receipt.acked_by.len(), receipt.blob_id);
//! while let Some(event) = events.recv().await {
//!     if let Event::Received { payload, .. } = event {
//!         println!("{}", String::from_utf8_lossy(&payload));
//!     }
//! }
//! client.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! This crate wires the client tree ([`tree`]) from the shared actors in
//! `zerok_actors::client` (their messages are in `zerok_messages::client`), and offers the
//! [`Client`] API over it. Several clients per process work: there is no global state.

pub mod client;
pub mod qr;
pub mod tree;

pub use client::{
    Client, ClientConfig, JOIN_WAIT, MakeDialer, NewSecret, PAIR_INVITE_VALID, PairCode, Transport,
    remember_file_in,
};
pub use zerok_messages::client::{
    ClientError, ContentError, DeviceInfo, Event, FileRef, GroupId, GroupStatus, Progress, Receipt,
    RelayStatus, Status, SyncReport,
};
pub use zerok_messages::errors::{
    InvalidInput, InviteError, PairingError, PassphraseError, RecoveryError, StoreError,
    TokenError, TokenRefusal,
};

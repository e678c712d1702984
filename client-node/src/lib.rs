//! `zerok-client`: the client node embedded in apps, and the `zerok` CLI (DESIGN.md §2, §6).
//!
//! To be built here by the "Client node and CLI" issue: the client actor tree in `tree.rs`
//! (ClientRoot, Encryptor, LocalStore, SyncCoordinator, RelayConnection per relay,
//! ContentTransfer), the public Rust API (`Client::start`, `push`, `events`, `sync_now`,
//! `shutdown`) and the `zerok` binary. Nothing is implemented yet.

//! `zerok-relay`: the relay node (DESIGN.md §2, §5, §7).
//!
//! To be built here by the "Relay node" issue: the relay actor tree in `tree.rs`
//! (RelayRoot, Infra {BlobStore, CleanupSweeper}, RoutersSupervisor {GroupRouter},
//! SessionsSupervisor {Session + LinkReader}, Listener, HttpServer), its configuration, the
//! HTTP endpoints (`/health`, `/ready`, `/metrics`) and the `zerok-relay` binary. Nothing is
//! implemented yet.

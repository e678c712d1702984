//! `zerok-relay`: the relay node (DESIGN.md §2, §5, §7).
//!
//! - [`tree`]: the relay actor tree (RelayRoot, Infra {BlobStore, CleanupSweeper},
//!   RoutersSupervisor {GroupRouter}, SessionsSupervisor {Session + LinkReader}, Listener,
//!   HttpServer) and [`tree::RelayNode`], which starts and stops it.
//! - [`config`]: the TOML configuration and the command line.
//! - [`http`]: `/health`, `/ready`, `/metrics`.
//!
//! The `zerok-relay` binary (`src/main.rs`) wires them together.

pub mod config;
pub mod http;
pub mod tree;

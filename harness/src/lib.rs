//! `zerok-harness`: tools that drive real relays and clients from tests and benchmarks.
//!
//! - [`proto`]: a raw protocol-v1 client over the `Link` seam (frame-level tests, benches).
//! - [`memory_relay`]: the real relay tree on an in-memory link network (actor-tier client
//!   tests), with a pass-through that counts connections and can cut them all.
//! - [`process`]: a `zerok-relay` child process on loopback (start, SIGTERM, SIGKILL,
//!   restart on the same data dir, captured logs).
//!
//! Still to come here: `SimWorld` on turmoil with a turmoil transport of the `Link` seam and
//! the `zerok-bench` binary ("Benchmarks" issue).

pub mod bench;
pub mod memory_relay;
pub mod process;
pub mod proto;

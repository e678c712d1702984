//! `zerok-harness`: tools that drive real relays and clients from tests and benchmarks.
//!
//! - [`proto`]: a raw protocol-v1 client over the `Link` seam (frame-level tests, benches).
//! - [`evil_relay`]: an adversarial protocol-v1 relay on loopback that stores honestly but
//!   drops, duplicates, reorders, replays or tampers with what it serves (client tests).
//! - [`process`]: a `zerok-relay` child process on loopback (start, SIGTERM, SIGKILL,
//!   restart on the same data dir, captured logs).
//!
//! Still to come here: `SimWorld` on turmoil with a turmoil transport of the `Link` seam and
//! the `zerok-bench` binary ("Benchmarks" issue).

pub mod bench;
pub mod evil_relay;
pub mod process;
pub mod proto;

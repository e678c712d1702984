//! The `Link` seam: a framed, reliable, ordered, bi-directional connection to a peer whose
//! [`DeviceId`] the transport authenticated.
//!
//! Actors never see a socket. A [`Link`] is a pair of bounded channels: [`LinkSender`] queues
//! frame bodies (CBOR, no length prefix) towards the peer, [`LinkReceiver`] yields the peer's
//! frame bodies in order. Each transport (in-memory, iroh QUIC, turmoil in the chaos harness)
//! pumps those channels with its own tasks, so every transport has the same semantics:
//!
//! - Frames arrive complete, in order, at most [`FRAME_BYTES_MAX`] bytes; a larger frame is
//!   refused by the sender with [`LinkError::TooLarge`] and by the receiver as a protocol error.
//! - Dropping (or [`LinkSender::finish`]ing) the sender half-closes: the peer receives every
//!   frame already queued, then `Ok(None)`. The other direction keeps working.
//! - [`LinkSender::abort`] tears the connection down: the peer receives an error.
//! - The dialer speaks first: a listener hands out a connection once its first frame is there
//!   (bounded by a timeout), so a half-open dial cannot hold an accept slot.
//! - Queues are bounded by bytes ([`LINK_QUEUE_BYTES`] by default): a slow peer slows its
//!   sender down (`send` waits; `try_send` says [`LinkError::Full`]). Bulk frames (live
//!   deliveries, pull pages) may fill only half of a queue, so replies always find room.

pub mod conformance;
pub mod hello;
pub mod iroh;
pub mod memory;
pub mod slots;

pub use memory::{MemoryDialer, MemoryNetwork};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::sync::mpsc;
use zerok_messages::{DeviceId, RelayAddr};

pub use zerok_messages::link::{
    FramePermit, LINK_QUEUE_BYTES, LinkError, LinkReceiver, LinkSender, QueuePool, Wire, channel,
    channel_with,
};

/// A boxed future, for the object-safe dial trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An established connection to an authenticated peer.
#[derive(Debug)]
pub struct Link {
    /// The peer's identity, authenticated by the transport.
    pub peer: DeviceId,
    /// The peer's network address, when the transport knows one (for per-IP limits).
    pub remote_addr: Option<SocketAddr>,
    /// Frames towards the peer.
    pub sender: LinkSender,
    /// Frames from the peer.
    pub receiver: LinkReceiver,
}

impl Link {
    /// Split into its halves.
    pub fn into_parts(self) -> (DeviceId, LinkSender, LinkReceiver) {
        (self.peer, self.sender, self.receiver)
    }
}

/// Opens links to peers.
pub trait Dialer: Send + Sync + 'static {
    /// Connect to `addr` and check the peer is `addr.id`. Fails within a bounded time.
    fn dial<'a>(&'a self, addr: &'a RelayAddr) -> BoxFuture<'a, Result<Link, LinkError>>;

    /// This side's identity.
    fn local_id(&self) -> DeviceId;
}

/// Accepted links, produced by a transport's accept loop.
#[derive(Debug)]
pub struct LinkListener {
    local_id: DeviceId,
    rx: mpsc::Receiver<Link>,
}

impl LinkListener {
    /// A listener over a transport's accepted links (a transport outside this crate, such
    /// as the chaos harness's simulated network, hands them over through `rx`).
    pub fn new(local_id: DeviceId, rx: mpsc::Receiver<Link>) -> Self {
        Self { local_id, rx }
    }

    /// The next accepted link; `None` once the transport stopped accepting.
    pub async fn accept(&mut self) -> Option<Link> {
        self.rx.recv().await
    }

    /// This side's identity.
    pub fn local_id(&self) -> DeviceId {
        self.local_id
    }
}

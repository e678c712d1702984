//! In-process [`Link`] transport: a [`MemoryNetwork`] of listeners keyed by [`DeviceId`].
//!
//! Used by actor tests and as the reference for link semantics. Identity is whatever id a
//! dialer was created with: the network is a test fixture, not a security boundary.

use super::{BoxFuture, Dialer, Link, LinkError, LinkListener, channel};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use zerok_messages::{DeviceId, RelayAddr};

/// Accepted links a memory listener queues before dialers are refused. Tests open few
/// connections at once; a full backlog behaves like a busy server (dial fails).
const ACCEPT_BACKLOG: usize = 128;

/// A set of in-process listeners. Cloning shares the network.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    listeners: Arc<Mutex<BTreeMap<DeviceId, mpsc::Sender<Link>>>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Listen as `id`, replacing an earlier listener of the same id.
    pub fn listen(&self, id: DeviceId) -> LinkListener {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        self.lock().insert(id, tx);
        LinkListener::new(id, rx)
    }

    /// Stop listening as `id`: new dials fail; established links are unaffected.
    pub fn unlisten(&self, id: DeviceId) {
        self.lock().remove(&id);
    }

    /// A dialer whose links present `id` to the peer.
    pub fn dialer(&self, id: DeviceId) -> MemoryDialer {
        MemoryDialer {
            network: self.clone(),
            local_id: id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<DeviceId, mpsc::Sender<Link>>> {
        zerok_messages::sync::lock(&self.listeners)
    }
}

/// Dials peers on a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryDialer {
    network: MemoryNetwork,
    local_id: DeviceId,
}

impl MemoryDialer {
    fn connect(&self, addr: &RelayAddr) -> Result<Link, LinkError> {
        let unreachable = |detail: &str| LinkError::Unreachable {
            addr: addr.to_string(),
            detail: detail.to_owned(),
        };
        let accept = self
            .network
            .lock()
            .get(&addr.id)
            .cloned()
            .ok_or_else(|| unreachable("no listener"))?;
        let (to_peer_tx, to_peer_rx) = channel();
        let (to_us_tx, to_us_rx) = channel();
        let theirs = Link {
            peer: self.local_id,
            remote_addr: None,
            sender: to_us_tx,
            receiver: to_peer_rx,
        };
        accept.try_send(theirs).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => unreachable("accept backlog full"),
            mpsc::error::TrySendError::Closed(_) => unreachable("listener closed"),
        })?;
        Ok(Link {
            peer: addr.id,
            remote_addr: None,
            sender: to_peer_tx,
            receiver: to_us_rx,
        })
    }
}

impl Dialer for MemoryDialer {
    fn dial<'a>(&'a self, addr: &'a RelayAddr) -> BoxFuture<'a, Result<Link, LinkError>> {
        Box::pin(async move { self.connect(addr) })
    }

    fn local_id(&self) -> DeviceId {
        self.local_id
    }
}

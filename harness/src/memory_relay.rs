//! The real relay tree on an in-memory link network, for client tests at the actor tier
//! (in-memory links, paused time).
//!
//! [`MemoryRelay::start`] runs `zerok_relay::tree::RelayNode` on a temporary data dir with
//! its links taken from a [`MemoryNetwork`] listener through `Seams::listener`, as the chaos
//! world's relays take theirs from simulated TCP. Between the network and the relay sits a
//! pass-through that counts the connections accepted and can cut every open one at once
//! ([`MemoryRelay::drop_connections`], a relay dropping its peers as on a restart). It
//! forwards frames untouched: every frame a client sees is the real relay's (hostile
//! relays are the chaos harness's frame-rewriting middleware, `zerok_chaos::hostile`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};
use zerok_actors::link::{Link, LinkListener, LinkReceiver, LinkSender, MemoryNetwork, channel};
use zerok_actors::rng::Rng;
use zerok_messages::{DeviceId, Limits, RelayAddr};
use zerok_relay::config::{LimitsConfig, RelayConfig};
use zerok_relay::tree::{RelayNode, Seams};

/// Accepted links the pass-through queues for the relay: as many as the memory network's
/// own accept backlog, so it never refuses what the network took.
const ACCEPT_BACKLOG: usize = 128;

/// What a client is told when its connection is cut.
const CUT_REASON: &str = "the relay dropped its connections";

/// The limits the real relay announces in `Welcome` with its default configuration.
pub fn default_limits() -> Limits {
    LimitsConfig::default().to_wire()
}

/// A real relay tree serving one id of an in-memory network (see the module docs).
pub struct MemoryRelay {
    node: RelayNode,
    accepted: Arc<AtomicU64>,
    /// Bumped to cut every link open at the time.
    cut: watch::Sender<u64>,
    _data_dir: tempfile::TempDir,
}

impl std::fmt::Debug for MemoryRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRelay")
            .field("relay_id", &self.node.relay_id)
            .finish_non_exhaustive()
    }
}

impl MemoryRelay {
    /// Start the relay tree as `relay_id` on `network` (clients dial it with
    /// `network.dialer(..)` at [`MemoryRelay::addr`]), its randomness seeded by `seed`, every
    /// setting at the relay's default.
    ///
    /// Panics when the data dir or the tree cannot be set up (this is test tooling).
    pub async fn start(network: &MemoryNetwork, relay_id: DeviceId, seed: u64) -> MemoryRelay {
        let data_dir = tempfile::tempdir().expect("MemoryRelay: a temporary data dir");
        let accepted = Arc::new(AtomicU64::new(0));
        let (cut, _) = watch::channel(0);
        let listener = pass_through(network.listen(relay_id), Arc::clone(&accepted), &cut);
        let addr = RelayAddr {
            id: relay_id,
            // Memory links ignore it; an address needs one.
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        };
        let config = RelayConfig {
            data_dir: data_dir.path().to_path_buf(),
            http: None,
            ..RelayConfig::default()
        };
        let seams = Seams {
            rng: Some(Rng::seeded(seed)),
            listener: Some((listener, addr)),
            ..Seams::default()
        };
        let node = RelayNode::start(&config, seams)
            .await
            .expect("MemoryRelay: the relay tree starts");
        MemoryRelay {
            node,
            accepted,
            cut,
            _data_dir: data_dir,
        }
    }

    /// The address clients dial.
    pub fn addr(&self) -> RelayAddr {
        self.node.addr.clone()
    }

    /// The relay's identity (the `relay_id` of its `Welcome`).
    pub fn relay_id(&self) -> DeviceId {
        self.node.relay_id
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Cut every connection open now (each client sees a reset after the frames already on
    /// their way; the relay's session sees one too); clients may connect again at once.
    pub fn drop_connections(&self) {
        self.cut.send_modify(|cuts| *cuts += 1);
    }

    /// Items the relay's store holds, over every mailbox (its `items_stored` gauge, published
    /// after each group commit).
    pub fn items_stored(&self) -> u64 {
        u64::try_from(self.node.metrics.items_stored.get()).unwrap_or_default()
    }

    /// Stop the relay gracefully (sessions told `Bye`, the store drained and closed).
    pub async fn shutdown(self) {
        let grace = std::time::Duration::from_secs(1);
        self.node.shutdown(grace).await;
    }
}

/// The links `inner` accepts, counted and handed on through two forwarding tasks each, so
/// that a bump of `cut` resets every link open at the time.
fn pass_through(
    mut inner: LinkListener,
    accepted: Arc<AtomicU64>,
    cut: &watch::Sender<u64>,
) -> LinkListener {
    let id = inner.local_id();
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let cut = cut.clone();
    tokio::spawn(async move {
        while let Some(link) = inner.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let Link {
                peer,
                remote_addr,
                sender: to_client,
                receiver: from_client,
            } = link;
            let (to_relay, relay_reads) = channel();
            let (relay_writes, from_relay) = channel();
            tokio::spawn(forward(from_client, to_relay, cut.subscribe()));
            tokio::spawn(forward(from_relay, to_client, cut.subscribe()));
            let relay_side = Link {
                peer,
                remote_addr,
                sender: relay_writes,
                receiver: relay_reads,
            };
            if tx.send(relay_side).await.is_err() {
                return;
            }
        }
    });
    LinkListener::new(id, rx)
}

/// Pass frames from `from` to `to` until either side ends (passed on: an end half-closes, an
/// error resets) or the link is cut (a reset; also when the relay is gone).
async fn forward(mut from: LinkReceiver, to: LinkSender, mut cut: watch::Receiver<u64>) {
    let pass = async {
        loop {
            match from.recv().await {
                Ok(Some(body)) => {
                    if to.send(body).await.is_err() {
                        return None;
                    }
                }
                Ok(None) => return None,
                Err(err) => return Some(err.to_string()),
            }
        }
    };
    let reset = tokio::select! {
        biased;
        _ = cut.changed() => Some(CUT_REASON.to_owned()),
        ended = pass => ended,
    };
    if let Some(reason) = reset {
        to.abort(&reason);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proto::ProtoClient;
    use bytes::Bytes;
    use std::time::Duration;
    use zerok_actors::crypto::keys::GroupSecret;
    use zerok_messages::Epoch;

    const RELAY: DeviceId = DeviceId([7; 32]);

    #[tokio::test(start_paused = true)]
    async fn the_real_relay_serves_memory_links_and_cuts_them_on_request() {
        let network = MemoryNetwork::new();
        let relay = MemoryRelay::start(&network, RELAY, 1).await;
        assert_eq!(relay.relay_id(), RELAY);
        let dialer = network.dialer(DeviceId([1; 32]));
        let client = ProtoClient::connect(&dialer, &relay.addr()).await.unwrap();
        assert_eq!(client.relay_id, RELAY);
        assert_eq!(client.limits, default_limits());
        let keys = GroupSecret::from_bytes([4; 32]).epoch_keys(Epoch(0));
        client.join(&keys).await.unwrap();
        let mailbox = keys.mailbox_id();
        client
            .push(mailbox, Bytes::from_static(b"sealed"))
            .await
            .unwrap();
        // The gauge follows the group commit.
        tokio::time::timeout(Duration::from_secs(10), async {
            while relay.items_stored() != 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the push is stored");
        assert_eq!(relay.connections_accepted(), 1);

        relay.drop_connections();
        assert!(client.ping().await.is_err(), "the connection was cut");
        let again = ProtoClient::connect(&dialer, &relay.addr()).await.unwrap();
        again.ping().await.unwrap();
        assert_eq!(relay.connections_accepted(), 2);
        relay.shutdown().await;
    }
}

//! A hostile relay host: a frame-rewriting `Link` middleware in front of the real relay. The
//! relay runs as ever; what it sends to clients passes through a [`Rewrite`] that flips
//! ciphertext bytes, duplicates or drops items, as a compromised host or a broken proxy
//! would. What clients send reaches the relay unchanged.

use bytes::Bytes;
use tokio::sync::mpsc;
use zerok_actors::link::{Link, LinkListener, LinkReceiver, LinkSender, channel};
use zerok_messages::codec;
use zerok_messages::wire::{Frame, Item};

/// What a hostile relay host does to the items its relay serves (live deliveries and pull
/// pages), counting items from 1 per connection; 0 = never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Flip one ciphertext byte of every n-th item (its blob id unchanged).
    pub flip_every: u64,
    /// Serve every n-th live delivery twice.
    pub duplicate_every: u64,
    /// Drop every n-th live delivery.
    pub drop_every: u64,
}

impl Rewrite {
    /// Whether it changes anything.
    pub fn is_honest(&self) -> bool {
        *self == Rewrite::default()
    }

    fn item(&self, n: u64, mut item: Item) -> Item {
        if self.flip_every > 0 && n.is_multiple_of(self.flip_every) && !item.ciphertext.is_empty() {
            let mut bytes = item.ciphertext.to_vec();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            item.ciphertext = Bytes::from(bytes);
        }
        item
    }

    /// The frames that go to the client for one the relay sent.
    fn apply(&self, count: &mut u64, body: Bytes) -> Vec<Bytes> {
        let Ok(frame) = codec::decode(&body) else {
            return vec![body];
        };
        let out = match frame {
            Frame::Deliver { mailbox, item } => {
                *count += 1;
                let n = *count;
                if self.drop_every > 0 && n.is_multiple_of(self.drop_every) {
                    return Vec::new();
                }
                let frame = Frame::Deliver {
                    mailbox,
                    item: self.item(n, item),
                };
                let copies = if self.duplicate_every > 0 && n.is_multiple_of(self.duplicate_every) {
                    2
                } else {
                    1
                };
                vec![frame; copies]
            }
            Frame::PullPage {
                req,
                items,
                next,
                has_more,
            } => {
                let items = items
                    .into_iter()
                    .map(|item| {
                        *count += 1;
                        self.item(*count, item)
                    })
                    .collect();
                vec![Frame::PullPage {
                    req,
                    items,
                    next,
                    has_more,
                }]
            }
            other => vec![other],
        };
        out.iter()
            .filter_map(|frame| codec::encode(frame).ok().map(Bytes::from))
            .collect()
    }
}

/// The links of `inner`, each with what the relay sends rewritten by `rewrite`.
pub fn rewriting(mut inner: LinkListener, rewrite: Rewrite) -> LinkListener {
    let id = inner.local_id();
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        while let Some(link) = inner.accept().await {
            let Link {
                peer,
                remote_addr,
                sender: to_client,
                receiver: from_client,
            } = link;
            let (from_relay_tx, from_relay_rx) = channel();
            tokio::spawn(pump(from_relay_rx, to_client, rewrite));
            let relay_side = Link {
                peer,
                remote_addr,
                sender: from_relay_tx,
                receiver: from_client,
            };
            if tx.send(relay_side).await.is_err() {
                return;
            }
        }
    });
    LinkListener::new(id, rx)
}

async fn pump(mut from_relay: LinkReceiver, to_client: LinkSender, rewrite: Rewrite) {
    let mut count = 0;
    loop {
        match from_relay.recv().await {
            Ok(Some(body)) => {
                for out in rewrite.apply(&mut count, body) {
                    if to_client.send(out).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(err) => {
                to_client.abort(&err.to_string());
                return;
            }
        }
    }
}

//! An adversarial relay for client tests: it speaks protocol v1 (server side) over real iroh
//! QUIC on loopback, stores pushes honestly, and misbehaves on what it serves, so tests can
//! prove that a client never hands the app a dropped-and-ignored, duplicated, reordered,
//! replayed or tampered record.
//!
//! What it stores is honest: a push on a joined mailbox is checked (size, `blob_id`), kept in
//! memory, acknowledged, and deduplicated on its blob id like the real relay does. What it
//! serves (pull pages and live `Deliver`s) goes through the current [`Misbehaviour`].
//!
//! # Cursors
//!
//! The `n`-th item pushed to a mailbox gets the public cursor `2n` (in `PushAck`, `Joined`,
//! `Subscribed`, `Notify`, `PullPage::next` and items), not `n` as on the real relay. The odd
//! cursor `2n + 1` is never an honest item's: it is the fresh, higher cursor under which
//! [`Misbehaviour::replay`] serves an older item right after item `n`. The protocol only
//! promises strictly increasing cursors, so an honest run is still a valid relay.
//!
//! # Counting
//!
//! Misbehaviours that act on "every n-th item" count the honest items the relay is about to
//! serve per connection and mailbox (pull pages and live deliveries alike, dropped ones
//! included), starting at 1. [`EvilRelay::set_misbehaviour`] restarts every count, so the
//! `n`-th item served after the call is the first one hit.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use zerok_actors::Clock;
use zerok_actors::crypto::join::verify_join;
use zerok_actors::link::iroh::{IrohConfig, IrohNode};
use zerok_actors::link::{Link, LinkListener, MemoryNetwork};
use zerok_actors::rng::Rng;
use zerok_messages::codec::{self, DecodeError};
use zerok_messages::wire::{
    BLOB_BYTES_MAX, FRAME_BYTES_MAX, MAX_INFLIGHT_DEFAULT, PROTOCOL_VERSION, PULL_BYTES_MAX_DEFAULT,
};
use zerok_messages::{
    BlobId, Cursor, DeviceId, ErrorCode, Frame, Item, Limits, MailboxId, RelayAddr, ReqId,
};

/// How an [`EvilRelay`] misbehaves on the items it serves. The default is an honest relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Misbehaviour {
    /// Silently skip every n-th item served (pull pages and live deliveries); 0 = never.
    pub drop_every: u64,
    /// Serve every item twice (same cursor, same bytes).
    pub duplicate: bool,
    /// Serve each pull page's items in reverse order (cursors then go down).
    pub reorder: bool,
    /// After each item served, also serve an EARLIER already-served item of that mailbox
    /// again under a new, higher cursor (a replay).
    pub replay: bool,
    /// Flip one byte of the ciphertext of every n-th item served, keeping its blob id;
    /// 0 = never.
    pub flip_every: u64,
    /// Serve at most this many honest items per pull page (then `has_more`); 0 = the
    /// client's and the relay's limits only.
    pub page_items_max: u32,
    /// Claim in every pull page a `next` this far beyond the page's real end (empty pages
    /// too), as if the items in between had been served; 0 = honest.
    pub forge_next_by: u64,
}

/// Most items one pull page holds.
pub const PULL_ITEMS_MAX: u32 = 1000;

/// Encoded bytes an item adds to a frame beyond its ciphertext (an upper bound).
const ITEM_OVERHEAD_BYTES: usize = 128;
/// Encoded bytes of a pull page without its items (an upper bound).
const PAGE_OVERHEAD_BYTES: usize = 256;

/// The limits an [`EvilRelay`] announces: the real relay's defaults.
pub fn default_limits() -> Limits {
    Limits {
        frame_bytes_max: FRAME_BYTES_MAX as u32,
        blob_bytes_max: BLOB_BYTES_MAX as u32,
        mailbox_quota_bytes: 100 * 1024 * 1024,
        ttl_default_secs: 7 * 24 * 3600,
        ttl_max_secs: 30 * 24 * 3600,
        inflight_max: MAX_INFLIGHT_DEFAULT,
        pull_items_max: PULL_ITEMS_MAX,
        pull_bytes_max: PULL_BYTES_MAX_DEFAULT,
    }
}

/// The public cursor of the `index`-th item (1-based) of a mailbox.
fn honest_cursor(index: u64) -> Cursor {
    Cursor(index.saturating_mul(2))
}

/// The fresh cursor a replay served right after the `index`-th item gets.
fn replay_cursor(index: u64) -> Cursor {
    Cursor(index.saturating_mul(2).saturating_add(1))
}

/// One honestly stored item.
#[derive(Debug)]
struct Stored {
    blob_id: BlobId,
    ciphertext: Bytes,
    stored_at_ms: u64,
}

/// A mailbox's items; the item at position `p` has index `p + 1`.
#[derive(Debug, Default)]
struct Mailbox {
    items: Vec<Stored>,
    by_blob: HashMap<BlobId, u64>,
}

impl Mailbox {
    fn latest(&self) -> Cursor {
        honest_cursor(self.items.len() as u64)
    }

    /// The honest item of `index` (1-based), as served.
    fn item(&self, index: u64) -> Option<Item> {
        let position = usize::try_from(index.checked_sub(1)?).ok()?;
        let stored = self.items.get(position)?;
        Some(Item {
            cursor: honest_cursor(index),
            blob_id: stored.blob_id,
            ciphertext: stored.ciphertext.clone(),
            stored_at_ms: stored.stored_at_ms,
        })
    }
}

/// What one connection has been served of one mailbox.
#[derive(Debug, Default)]
struct Serving {
    /// Honest items considered for serving since the last `set_misbehaviour`.
    counted: u64,
    /// Indices of the honest items actually served (targets of replays).
    served: BTreeSet<u64>,
}

/// What serving one honest item amounts to.
#[derive(Debug)]
struct Group {
    index: u64,
    dropped: bool,
    items: Vec<Item>,
}

impl Group {
    fn ciphertext_bytes(&self) -> usize {
        self.items.iter().map(|item| item.ciphertext.len()).sum()
    }

    fn frame_bytes(&self) -> usize {
        self.items
            .iter()
            .map(|item| item.ciphertext.len() + ITEM_OVERHEAD_BYTES)
            .sum()
    }
}

impl Serving {
    /// What serving item `index` of `mailbox` would send now (nothing is recorded).
    fn plan(&self, mailbox: &Mailbox, index: u64, m: &Misbehaviour) -> Group {
        let count = self.counted + 1;
        let hits = |every: u64| every > 0 && count.is_multiple_of(every);
        let mut group = Group {
            index,
            dropped: hits(m.drop_every),
            items: Vec::new(),
        };
        if group.dropped {
            return group;
        }
        let Some(mut item) = mailbox.item(index) else {
            return group;
        };
        if hits(m.flip_every) {
            item.ciphertext = flip_one_byte(&item.ciphertext);
        }
        if m.duplicate {
            group.items.push(item.clone());
        }
        group.items.push(item);
        if m.replay
            && let Some(&earlier) = self.served.range(..index).next_back()
            && let Some(mut replayed) = mailbox.item(earlier)
        {
            replayed.cursor = replay_cursor(index);
            group.items.push(replayed);
        }
        group
    }

    /// Record that `group` was served.
    fn commit(&mut self, group: &Group) {
        self.counted += 1;
        if !group.dropped {
            self.served.insert(group.index);
        }
    }
}

/// The ciphertext with its middle byte inverted (an empty one gains a byte).
fn flip_one_byte(ciphertext: &Bytes) -> Bytes {
    let mut bytes = ciphertext.to_vec();
    match bytes.get_mut(ciphertext.len() / 2) {
        Some(byte) => *byte ^= 0xff,
        None => bytes.push(0xff),
    }
    Bytes::from(bytes)
}

/// One live connection as the fan-out sees it.
#[derive(Debug)]
struct Conn {
    out: mpsc::UnboundedSender<Frame>,
    subscribed: HashSet<MailboxId>,
    serving: HashMap<MailboxId, Serving>,
}

#[derive(Debug)]
struct State {
    misbehaviour: Misbehaviour,
    mailboxes: HashMap<MailboxId, Mailbox>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    rng: Rng,
}

#[derive(Debug)]
struct Shared {
    relay_id: DeviceId,
    limits: Limits,
    clock: Clock,
    state: Mutex<State>,
    /// Ends every connection open at the time ([`EvilRelay::drop_connections`]).
    kick: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        zerok_messages::sync::lock(&self.state)
    }
}

/// An adversarial protocol-v1 relay on `127.0.0.1` (see the module docs).
pub struct EvilRelay {
    /// The iroh endpoint; `None` on a [`MemoryNetwork`].
    node: Option<IrohNode>,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for EvilRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvilRelay")
            .field("relay_id", &self.shared.relay_id)
            .finish_non_exhaustive()
    }
}

impl Drop for EvilRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl EvilRelay {
    /// Bind on `127.0.0.1` with the identity key `Rng::seeded(seed).bytes()` and serve.
    ///
    /// Panics when the endpoint cannot be bound (this is test tooling).
    pub async fn start(seed: u64, misbehaviour: Misbehaviour) -> EvilRelay {
        let mut rng = Rng::seeded(seed);
        let secret_key = rng.bytes();
        let bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let node = IrohNode::bind(IrohConfig::new(secret_key, bind))
            .await
            .expect("EvilRelay: bind an iroh endpoint on 127.0.0.1");
        let listener = node.listen();
        let (shared, accept) = Self::serve_all(node.local_id(), rng, misbehaviour, listener);
        EvilRelay {
            node: Some(node),
            shared,
            accept,
        }
    }

    /// Serve as `relay_id` on an in-memory network (actor-tier tests under paused time):
    /// clients dial it with `network.dialer(..)`; [`EvilRelay::addr`] names it.
    pub fn on_memory(
        network: &MemoryNetwork,
        relay_id: DeviceId,
        seed: u64,
        misbehaviour: Misbehaviour,
    ) -> EvilRelay {
        let listener = network.listen(relay_id);
        let (shared, accept) = Self::serve_all(relay_id, Rng::seeded(seed), misbehaviour, listener);
        EvilRelay {
            node: None,
            shared,
            accept,
        }
    }

    fn serve_all(
        relay_id: DeviceId,
        mut rng: Rng,
        misbehaviour: Misbehaviour,
        mut listener: LinkListener,
    ) -> (Arc<Shared>, JoinHandle<()>) {
        let shared = Arc::new(Shared {
            relay_id,
            limits: default_limits(),
            clock: Clock::system(),
            state: Mutex::new(State {
                misbehaviour,
                mailboxes: HashMap::new(),
                conns: HashMap::new(),
                next_conn: 0,
                rng: rng.fork(),
            }),
            kick: tokio::sync::Notify::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    link = listener.accept() => match link {
                        Some(link) => {
                            conns.spawn(serve(Arc::clone(&accept_shared), link));
                        }
                        None => break,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            while conns.join_next().await.is_some() {}
        });
        (shared, accept)
    }

    /// Close every connection open now (a relay that drops its peers, as on a restart);
    /// clients may connect again at once.
    pub fn drop_connections(&self) {
        self.shared.kick.notify_waiters();
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.lock().next_conn
    }

    /// The address clients dial.
    pub fn addr(&self) -> RelayAddr {
        match &self.node {
            Some(node) => node.local_addr(),
            // Memory links ignore the socket address; an address needs one.
            None => RelayAddr {
                id: self.shared.relay_id,
                addrs: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            },
        }
    }

    /// The relay's identity (the `relay_id` of its `Welcome`).
    pub fn relay_id(&self) -> DeviceId {
        self.shared.relay_id
    }

    /// The misbehaviour in force.
    pub fn misbehaviour(&self) -> Misbehaviour {
        self.shared.lock().misbehaviour
    }

    /// Change the misbehaviour for items served from now on; "every n-th" counts restart.
    pub fn set_misbehaviour(&self, m: Misbehaviour) {
        let mut state = self.shared.lock();
        state.misbehaviour = m;
        for conn in state.conns.values_mut() {
            for serving in conn.serving.values_mut() {
                serving.counted = 0;
            }
        }
    }

    /// How many distinct items were pushed (honestly stored) to `mailbox`.
    pub fn stored(&self, mailbox: MailboxId) -> usize {
        self.shared
            .lock()
            .mailboxes
            .get(&mailbox)
            .map_or(0, |mailbox| mailbox.items.len())
    }

    /// Stop serving and close the endpoint and every connection on it.
    pub async fn stop(self) {
        self.accept.abort();
        if let Some(node) = &self.node {
            node.close().await;
        }
    }
}

/// Serve one connection until the peer leaves or breaks the protocol.
async fn serve(shared: Arc<Shared>, link: Link) {
    // Registered now, so a kick from here on ends this connection.
    let kicked = shared.kick.notified();
    let (peer, sender, mut receiver) = link.into_parts();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Frame>();
    let (conn_id, nonce) = {
        let mut state = shared.lock();
        let conn_id = state.next_conn;
        state.next_conn += 1;
        let nonce = state.rng.bytes();
        state.conns.insert(
            conn_id,
            Conn {
                out: out.clone(),
                subscribed: HashSet::new(),
                serving: HashMap::new(),
            },
        );
        (conn_id, nonce)
    };
    let writer = async move {
        while let Some(frame) = out_rx.recv().await {
            let Ok(body) = codec::encode(&frame) else {
                continue;
            };
            if sender.send(Bytes::from(body)).await.is_err() {
                return;
            }
        }
    };
    let reader = async {
        let mut session = Session {
            shared: &shared,
            conn_id,
            peer,
            nonce,
            out,
            hello_done: false,
            joined: HashSet::new(),
        };
        while let Ok(Some(body)) = receiver.recv().await {
            let keep_going = match codec::decode(&body) {
                Ok(frame) => session.on_frame(frame),
                Err(err) => session.on_decode_error(&err),
            };
            if !keep_going {
                break;
            }
        }
        // Dropping the last queue senders lets the writer drain, then half-close the link.
        shared.lock().conns.remove(&conn_id);
        drop(session);
    };
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        () = kicked => {
            // The link's halves are dropped with the futures: the peer sees it close.
            shared.lock().conns.remove(&conn_id);
        }
    }
}

/// The reading side of one connection.
struct Session<'a> {
    shared: &'a Shared,
    conn_id: u64,
    peer: DeviceId,
    nonce: [u8; 32],
    out: mpsc::UnboundedSender<Frame>,
    hello_done: bool,
    joined: HashSet<MailboxId>,
}

impl Session<'_> {
    fn reply(&self, frame: Frame) {
        let _ = self.out.send(frame);
    }

    fn refuse(&self, req: Option<ReqId>, code: ErrorCode, message: &str) {
        self.reply(Frame::error(req, code, message));
    }

    fn on_decode_error(&mut self, err: &DecodeError) -> bool {
        let code = match err {
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::Unsupported { .. } => ErrorCode::Unsupported,
            _ => ErrorCode::BadRequest,
        };
        self.refuse(err.req(), code, "undecodable frame");
        self.hello_done
    }

    /// Whether `mailbox` was joined; answers `Unauthorized` when not.
    fn require_joined(&self, req: ReqId, mailbox: &MailboxId) -> bool {
        let joined = self.joined.contains(mailbox);
        if !joined {
            self.refuse(
                Some(req),
                ErrorCode::Unauthorized,
                "join the mailbox with a valid proof first",
            );
        }
        joined
    }

    /// Handle one frame; false ends the connection.
    fn on_frame(&mut self, frame: Frame) -> bool {
        if !self.hello_done {
            return match frame {
                Frame::Hello { versions, .. } if versions.contains(&PROTOCOL_VERSION) => {
                    self.hello_done = true;
                    self.reply(Frame::Welcome {
                        version: PROTOCOL_VERSION,
                        relay_id: self.shared.relay_id,
                        nonce: self.nonce,
                        limits: self.shared.limits.clone(),
                    });
                    true
                }
                Frame::Hello { .. } => {
                    self.refuse(
                        None,
                        ErrorCode::Unsupported,
                        "no common protocol version; this relay speaks version 1",
                    );
                    false
                }
                other => {
                    self.refuse(other.req(), ErrorCode::BadRequest, "send hello first");
                    false
                }
            };
        }
        match frame {
            Frame::Join {
                req,
                mailbox_key,
                proof,
                ..
            } => {
                if !verify_join(
                    &mailbox_key,
                    &proof,
                    &self.shared.relay_id,
                    &self.peer,
                    &self.nonce,
                ) {
                    self.refuse(Some(req), ErrorCode::Unauthorized, "invalid join proof");
                    return true;
                }
                let mailbox = mailbox_key.mailbox_id();
                self.joined.insert(mailbox);
                let latest = self
                    .shared
                    .lock()
                    .mailboxes
                    .get(&mailbox)
                    .map_or(Cursor::START, Mailbox::latest);
                self.reply(Frame::Joined {
                    req,
                    mailbox,
                    latest,
                });
            }
            Frame::Push {
                req,
                mailbox,
                blob_id,
                ciphertext,
                ..
            } => {
                if self.require_joined(req, &mailbox) {
                    self.push(req, mailbox, blob_id, ciphertext);
                }
            }
            Frame::Pull {
                req,
                mailbox,
                after,
                max_items,
                max_bytes,
            } => {
                if self.require_joined(req, &mailbox) {
                    let limits = &self.shared.limits;
                    let max_items = max_items.clamp(1, limits.pull_items_max);
                    let max_bytes = max_bytes.clamp(1, limits.pull_bytes_max.max(1));
                    let page = self.pull(req, mailbox, after, max_items, max_bytes);
                    self.reply(page);
                }
            }
            Frame::Subscribe {
                req,
                mailbox,
                after,
            } => {
                if self.require_joined(req, &mailbox) {
                    self.subscribe(req, mailbox, after);
                }
            }
            Frame::Unsubscribe { req, mailbox } => {
                let mut state = self.shared.lock();
                if let Some(conn) = state.conns.get_mut(&self.conn_id) {
                    conn.subscribed.remove(&mailbox);
                }
                drop(state);
                self.reply(Frame::Unsubscribed { req });
            }
            Frame::Ping { req } => self.reply(Frame::Pong { req }),
            Frame::Pong { .. } => {}
            Frame::Bye { .. } => return false,
            Frame::Hello { .. } => {
                self.refuse(None, ErrorCode::BadRequest, "hello was already received");
            }
            other => self.refuse(other.req(), ErrorCode::BadRequest, "not a client frame"),
        }
        true
    }

    /// Store honestly, acknowledge, fan out (misbehaving) to subscribers.
    fn push(&self, req: ReqId, mailbox: MailboxId, blob_id: BlobId, ciphertext: Bytes) {
        if ciphertext.len() > self.shared.limits.blob_bytes_max as usize {
            return self.refuse(Some(req), ErrorCode::TooLarge, "blob too large");
        }
        if BlobId::of_ciphertext(&ciphertext) != blob_id {
            return self.refuse(
                Some(req),
                ErrorCode::BadRequest,
                "blob_id is not BLAKE3 of the ciphertext",
            );
        }
        let stored_at_ms = self.shared.clock.now_unix_ms();
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let stored = state.mailboxes.entry(mailbox).or_default();
        if let Some(&index) = stored.by_blob.get(&blob_id) {
            drop(guard);
            return self.reply(Frame::PushAck {
                req,
                cursor: honest_cursor(index),
                duplicate: true,
            });
        }
        stored.items.push(Stored {
            blob_id,
            ciphertext,
            stored_at_ms,
        });
        let index = stored.items.len() as u64;
        stored.by_blob.insert(blob_id, index);
        let misbehaviour = state.misbehaviour;
        for conn in state.conns.values_mut() {
            if !conn.subscribed.contains(&mailbox) {
                continue;
            }
            let serving = conn.serving.entry(mailbox).or_default();
            let group = serving.plan(stored, index, &misbehaviour);
            serving.commit(&group);
            for item in group.items {
                let _ = conn.out.send(Frame::Deliver { mailbox, item });
            }
        }
        drop(guard);
        self.reply(Frame::PushAck {
            req,
            cursor: honest_cursor(index),
            duplicate: false,
        });
    }

    /// One page after `after`, misbehaving.
    fn pull(
        &self,
        req: ReqId,
        mailbox: MailboxId,
        after: Cursor,
        max_items: u32,
        max_bytes: u32,
    ) -> Frame {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let misbehaviour = state.misbehaviour;
        let mut items = Vec::new();
        let mut next = after;
        let mut has_more = false;
        let (Some(stored), Some(conn)) = (
            state.mailboxes.get(&mailbox),
            state.conns.get_mut(&self.conn_id),
        ) else {
            return Frame::PullPage {
                req,
                items,
                next: Cursor(next.0.saturating_add(misbehaviour.forge_next_by)),
                has_more,
            };
        };
        let serving = conn.serving.entry(mailbox).or_default();
        let total = stored.items.len() as u64;
        let max_items = match misbehaviour.page_items_max {
            0 => max_items,
            cap => max_items.min(cap),
        };
        let first = after.0 / 2 + 1;
        let frame_budget = FRAME_BYTES_MAX - PAGE_OVERHEAD_BYTES;
        let (mut honest, mut ciphertext_bytes, mut frame_bytes) = (0u32, 0usize, 0usize);
        for index in first..=total {
            let mut group = serving.plan(stored, index, &misbehaviour);
            let is_full = honest >= max_items
                || (!items.is_empty()
                    && (ciphertext_bytes + group.ciphertext_bytes() > max_bytes as usize
                        || frame_bytes + group.frame_bytes() > frame_budget));
            if is_full {
                has_more = true;
                break;
            }
            if items.is_empty() {
                // The page's first served item always goes out; its extra copies only
                // while the frame has room.
                let mut kept = 0;
                let mut bytes = 0;
                for item in &group.items {
                    bytes += item.ciphertext.len() + ITEM_OVERHEAD_BYTES;
                    if kept > 0 && bytes > frame_budget {
                        break;
                    }
                    kept += 1;
                }
                group.items.truncate(kept);
            }
            serving.commit(&group);
            honest += 1;
            ciphertext_bytes += group.ciphertext_bytes();
            frame_bytes += group.frame_bytes();
            next = honest_cursor(index);
            items.extend(group.items);
        }
        drop(guard);
        if misbehaviour.reorder {
            items.reverse();
        }
        let next = Cursor(next.0.saturating_add(misbehaviour.forge_next_by));
        Frame::PullPage {
            req,
            items,
            next,
            has_more,
        }
    }

    /// Subscribe; `Subscribed`, then `Notify` when the client is behind.
    fn subscribe(&self, req: ReqId, mailbox: MailboxId, after: Cursor) {
        // Both replies are queued under the lock so no `Deliver` can overtake them.
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let latest = state
            .mailboxes
            .get(&mailbox)
            .map_or(Cursor::START, Mailbox::latest);
        if let Some(conn) = state.conns.get_mut(&self.conn_id) {
            conn.subscribed.insert(mailbox);
        }
        self.reply(Frame::Subscribed {
            req,
            mailbox,
            latest,
        });
        if latest > after {
            self.reply(Frame::Notify { mailbox, latest });
        }
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox_of(n: u64) -> Mailbox {
        let mut mailbox = Mailbox::default();
        for i in 1..=n {
            let ciphertext = Bytes::from(vec![i as u8; 8]);
            let blob_id = BlobId::of_ciphertext(&ciphertext);
            mailbox.items.push(Stored {
                blob_id,
                ciphertext,
                stored_at_ms: i,
            });
            mailbox.by_blob.insert(blob_id, i);
        }
        mailbox
    }

    fn serve_all(m: Misbehaviour, n: u64) -> Vec<Item> {
        let mailbox = mailbox_of(n);
        let mut serving = Serving::default();
        let mut out = Vec::new();
        for index in 1..=n {
            let group = serving.plan(&mailbox, index, &m);
            serving.commit(&group);
            out.extend(group.items);
        }
        out
    }

    #[test]
    fn honest_serving_is_the_identity() {
        let items = serve_all(Misbehaviour::default(), 5);
        let cursors: Vec<u64> = items.iter().map(|item| item.cursor.0).collect();
        assert_eq!(cursors, [2, 4, 6, 8, 10]);
        assert!(
            items
                .iter()
                .all(|item| BlobId::of_ciphertext(&item.ciphertext) == item.blob_id)
        );
    }

    #[test]
    fn every_misbehaviour_changes_what_is_served() {
        let dropped = serve_all(
            Misbehaviour {
                drop_every: 2,
                ..Misbehaviour::default()
            },
            5,
        );
        let cursors: Vec<u64> = dropped.iter().map(|item| item.cursor.0).collect();
        assert_eq!(cursors, [2, 6, 10]);

        let replayed = serve_all(
            Misbehaviour {
                replay: true,
                ..Misbehaviour::default()
            },
            3,
        );
        let cursors: Vec<u64> = replayed.iter().map(|item| item.cursor.0).collect();
        assert_eq!(cursors, [2, 4, 5, 6, 7]);
        assert_eq!(replayed[2].blob_id, replayed[0].blob_id);
        assert_eq!(replayed[4].blob_id, replayed[1].blob_id);

        let flipped = serve_all(
            Misbehaviour {
                flip_every: 3,
                ..Misbehaviour::default()
            },
            6,
        );
        let tampered: Vec<u64> = flipped
            .iter()
            .filter(|item| BlobId::of_ciphertext(&item.ciphertext) != item.blob_id)
            .map(|item| item.cursor.0)
            .collect();
        assert_eq!(tampered, [6, 12]);
        assert_eq!(flip_one_byte(&Bytes::new()).len(), 1);
    }
}

//! The channel halves of a `Link` (see `zerok_actors::link` for transports and semantics).
//!
//! They live here, not beside the transports, because actor messages carry them: a session
//! hands its [`LinkSender`] to a group router so live deliveries go straight onto the
//! subscriber's bounded queue. Pure tokio channels; no I/O, no iroh.

use crate::wire::FRAME_BYTES_MAX;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};

/// Bytes one direction of a link may hold queued before senders wait (`send`) or are told
/// [`LinkError::Full`] (`try_send`). 1 MiB keeps a pipelined connection busy (a thousand 1 KiB
/// records in flight) while bounding what a peer that stops reading can pin. A frame larger
/// than the whole budget is still accepted into an empty queue, so every legal frame can be
/// sent. Relay sessions use their own, configured budget.
pub const LINK_QUEUE_BYTES: usize = 1024 * 1024;
/// What one queued frame costs beside its body: the `Bytes` handle and its share of the
/// channel's blocks. Counting it makes the byte budget bound the number of frames too.
pub const FRAME_QUEUE_COST_BYTES: usize = 64;
/// Share of a queue's budget that bulk frames (live deliveries, pull pages) may fill, in
/// halves: bulk traffic fills at most half, so replies to requests (acks, errors, pongs)
/// always find room on a connection whose peer is reading, however much bulk is queued.
const BULK_SHARE_DIVISOR: usize = 2;

/// What a link transports in each direction: a frame body, or the reason the link broke.
///
/// The error is boxed so that a queue slot is one `Bytes` (32 bytes) instead of a
/// `LinkError` (72): tokio allocates a channel's slots 32 at a time when it is created, and
/// every connection has two of these queues, so a slot's size is paid on every idle
/// connection while errors are sent at most once per link.
pub type Wire = Result<Bytes, Box<LinkError>>;

/// Why a link operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing answered at the address.
    #[error("cannot reach {addr}: {detail}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// What the transport said.
        detail: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The timeout.
        after_ms: u64,
    },
    /// The frame is over the limit.
    #[error("frame of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Frame size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The send queue is full (`try_send` only).
    #[error("link send queue is full")]
    Full,
    /// The connection is closed; nothing more can be sent.
    #[error("link closed")]
    Closed,
    /// The connection was torn down by the peer, the transport or a local abort.
    #[error("link reset: {0}")]
    Reset(String),
    /// The peer broke the framing rules.
    #[error("link protocol error: {0}")]
    Protocol(String),
    /// The peer is not who the address said.
    #[error("peer identity mismatch: expected {expected}, got {actual}")]
    WrongPeer {
        /// The id in the address.
        expected: crate::DeviceId,
        /// The id the transport authenticated.
        actual: crate::DeviceId,
    },
    /// The local endpoint could not be set up.
    #[error("link setup failed: {0}")]
    Setup(String),
}

/// A byte budget with waiters: one per direction of a link, and optionally one shared by many
/// links (all of a relay's sessions: what every peer together may hold unread). A link takes
/// from its own budget and then from the shared one.
#[derive(Debug)]
pub struct QueuePool {
    bytes: AtomicUsize,
    bytes_max: usize,
    waiters: AtomicUsize,
    room: Notify,
}

impl QueuePool {
    /// A pool of `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> Arc<QueuePool> {
        Arc::new(Self::budget(bytes_max))
    }

    fn budget(bytes_max: usize) -> QueuePool {
        QueuePool {
            bytes: AtomicUsize::new(0),
            bytes_max: bytes_max.max(1),
            waiters: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// Bytes queued now on every link of the pool.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The pool's budget.
    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// Take `cost` if it stays within `1 / share_divisor` of the budget, or if nothing is
    /// taken yet (so a frame larger than the budget passes alone).
    fn try_take(&self, cost: usize, share_divisor: usize) -> bool {
        let limit = self.bytes_max / share_divisor;
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued == 0 || queued + cost <= limit).then_some(queued + cost)
            })
            .is_ok()
    }

    /// Take `cost` whatever the budget (errors that end a link).
    fn force_take(&self, cost: usize) {
        self.bytes.fetch_add(cost, Ordering::AcqRel);
    }

    fn give_back(&self, cost: usize) {
        self.bytes.fetch_sub(cost, Ordering::AcqRel);
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }
}

/// The byte accounting of one direction of a link, shared by its halves.
#[derive(Debug)]
struct Queue {
    own: QueuePool,
    pool: Option<Arc<QueuePool>>,
    /// Signalled by an abort, so a transport blocked writing to a peer that does not read
    /// learns of it without first reading the queue.
    aborted: Notify,
}

impl Queue {
    /// Take `cost` bytes if they fit in `1 / share_divisor` of the link's budget and of
    /// the pool's; on failure, the budget that was short.
    fn try_take(&self, cost: usize, share_divisor: usize) -> Result<(), &QueuePool> {
        if !self.own.try_take(cost, share_divisor) {
            return Err(&self.own);
        }
        if let Some(pool) = &self.pool
            && !pool.try_take(cost, share_divisor)
        {
            self.own.give_back(cost);
            return Err(pool);
        }
        Ok(())
    }

    fn force_take(&self, cost: usize) {
        self.own.force_take(cost);
        if let Some(pool) = &self.pool {
            pool.force_take(cost);
        }
    }

    fn give_back(&self, cost: usize) {
        self.own.give_back(cost);
        if let Some(pool) = &self.pool {
            pool.give_back(cost);
        }
    }
}

fn cost(wire: &Wire) -> usize {
    FRAME_QUEUE_COST_BYTES + wire.as_ref().map_or(0, Bytes::len)
}

/// Sending half of a link. Cloneable: several actors may send on one link; the link
/// half-closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct LinkSender {
    tx: mpsc::UnboundedSender<Wire>,
    queue: Arc<Queue>,
}

impl LinkSender {
    fn check(body: &Bytes) -> Result<(), LinkError> {
        if body.len() > FRAME_BYTES_MAX {
            return Err(LinkError::TooLarge {
                bytes: body.len(),
                limit: FRAME_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Queue a frame body, waiting while the queue is full.
    pub async fn send(&self, body: Bytes) -> Result<(), LinkError> {
        self.send_within(body, 1).await
    }

    /// Queue a bulk frame (a pull page), waiting while bulk frames fill their share of the
    /// queue, so replies always find room.
    pub async fn send_bulk(&self, body: Bytes) -> Result<(), LinkError> {
        self.send_within(body, BULK_SHARE_DIVISOR).await
    }

    async fn send_within(&self, body: Bytes, share_divisor: usize) -> Result<(), LinkError> {
        Self::check(&body)?;
        let cost = FRAME_QUEUE_COST_BYTES + body.len();
        loop {
            if self.tx.is_closed() {
                return Err(LinkError::Closed);
            }
            let short = match self.queue.try_take(cost, share_divisor) {
                Ok(()) => break,
                Err(short) => short,
            };
            let room = short.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            short.waiters.fetch_add(1, Ordering::AcqRel);
            // Re-check after registering: a release between the failed take and the
            // registration saw no waiter and notified no one.
            if self.queue.try_take(cost, share_divisor).is_ok() {
                short.waiters.fetch_sub(1, Ordering::AcqRel);
                break;
            }
            tokio::select! {
                biased;
                () = &mut room => {}
                () = self.tx.closed() => {}
            }
            short.waiters.fetch_sub(1, Ordering::AcqRel);
        }
        self.tx.send(Ok(body)).map_err(|_| {
            self.queue.give_back(cost);
            LinkError::Closed
        })
    }

    /// Queue a frame body if there is room now.
    pub fn try_send(&self, body: Bytes) -> Result<(), LinkError> {
        self.try_send_within(body, 1)
    }

    /// Queue a bulk frame (a live delivery) if bulk frames have room now: they may fill only
    /// their share of the queue, so replies always find room.
    pub fn try_send_bulk(&self, body: Bytes) -> Result<(), LinkError> {
        self.try_send_within(body, BULK_SHARE_DIVISOR)
    }

    fn try_send_within(&self, body: Bytes, share_divisor: usize) -> Result<(), LinkError> {
        Self::check(&body)?;
        if self.tx.is_closed() {
            return Err(LinkError::Closed);
        }
        let cost = FRAME_QUEUE_COST_BYTES + body.len();
        if self.queue.try_take(cost, share_divisor).is_err() {
            return Err(LinkError::Full);
        }
        self.tx.send(Ok(body)).map_err(|_| {
            self.queue.give_back(cost);
            LinkError::Closed
        })
    }

    /// Bytes queued now and not yet taken by the transport.
    pub fn queued_bytes(&self) -> usize {
        self.queue.own.bytes()
    }

    /// Whether the link can no longer carry frames.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the receiving half is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Half-close: the peer receives what is queued, then end of stream.
    pub fn finish(self) {
        drop(self);
    }

    /// Tear the connection down; the peer sees a reset. Frames still queued may be lost.
    pub fn abort(self, reason: &str) {
        self.fail(LinkError::Reset(reason.to_owned()));
    }

    /// End the link with `error`: the receiving side gets it after what is queued. (A
    /// transport's reader uses it to report a broken connection to the owner.)
    pub fn fail(self, error: LinkError) {
        // Errors are queued whatever the budget: the transport pump reads the error and
        // closes the connection.
        self.queue.aborted.notify_one();
        let wire: Wire = Err(Box::new(error));
        let cost = cost(&wire);
        self.queue.force_take(cost);
        if self.tx.send(wire).is_err() {
            self.queue.give_back(cost);
        }
    }
}

/// Receiving half of a link.
#[derive(Debug)]
pub struct LinkReceiver {
    rx: mpsc::UnboundedReceiver<Wire>,
    queue: Arc<Queue>,
}

impl LinkReceiver {
    /// The next frame body; `Ok(None)` when the peer finished its side cleanly.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        let wire = self.rx.recv().await;
        self.taken(wire)
    }

    /// The next frame body if one is queued now; `None` when nothing is (or the link ended).
    pub fn try_recv(&mut self) -> Option<Result<Bytes, LinkError>> {
        let wire = self.rx.try_recv().ok();
        self.taken(wire).transpose()
    }

    /// Resolves once the sending side aborted the link (for a transport that is blocked
    /// writing to its peer).
    pub async fn aborted(&self) {
        self.queue.aborted.notified().await;
    }

    fn taken(&self, wire: Option<Wire>) -> Result<Option<Bytes>, LinkError> {
        match wire {
            Some(wire) => {
                self.queue.give_back(cost(&wire));
                match wire {
                    Ok(body) => Ok(Some(body)),
                    Err(err) => Err(*err),
                }
            }
            None => Ok(None),
        }
    }
}

impl Drop for LinkReceiver {
    fn drop(&mut self) {
        // Give back what is still queued, so a shared pool does not leak the budget of a
        // connection that went away with frames unread.
        self.rx.close();
        while let Ok(wire) = self.rx.try_recv() {
            self.queue.give_back(cost(&wire));
        }
        self.queue.own.room.notify_waiters();
    }
}

/// One direction of a link with the default budget ([`LINK_QUEUE_BYTES`]).
pub fn channel() -> (LinkSender, LinkReceiver) {
    channel_with(LINK_QUEUE_BYTES, None)
}

/// One direction of a link holding at most `bytes_max` queued bytes, and, with a pool, at
/// most the pool's budget together with the pool's other links.
pub fn channel_with(bytes_max: usize, pool: Option<Arc<QueuePool>>) -> (LinkSender, LinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue {
        own: QueuePool::budget(bytes_max),
        pool,
        aborted: Notify::new(),
    });
    (
        LinkSender {
            tx,
            queue: Arc::clone(&queue),
        },
        LinkReceiver { rx, queue },
    )
}

/// What a received frame holds until its request is answered: one of the connection's
/// in-flight slots and, where the owner bounds them, its bytes.
#[derive(Debug)]
pub struct FramePermit {
    _slot: OwnedSemaphorePermit,
    _bytes: Vec<OwnedSemaphorePermit>,
}

impl FramePermit {
    /// A permit of a slot and the frame's bytes from each byte budget that bounds them (the
    /// connection's, the relay's).
    pub fn new(slot: OwnedSemaphorePermit, bytes: Vec<OwnedSemaphorePermit>) -> Self {
        Self {
            _slot: slot,
            _bytes: bytes,
        }
    }
}

/// What a LinkReader tells its owner (a relay Session or a client RelayConnection); owners'
/// message types implement `From<LinkEvent>`.
#[derive(Debug)]
pub enum LinkEvent {
    /// A frame body arrived, holding one of the connection's in-flight slots until answered.
    Frame {
        /// The CBOR frame body.
        body: Bytes,
        /// The in-flight slot (and bytes).
        permit: FramePermit,
    },
    /// The link ended: cleanly (`None`) or with an error.
    Closed {
        /// Why, if it broke.
        error: Option<LinkError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_slot_is_one_frame_body() {
        // Every idle connection pays 2 × 32 slots of this (see `Wire`).
        assert_eq!(std::mem::size_of::<Wire>(), std::mem::size_of::<Bytes>());
    }

    #[tokio::test]
    async fn an_abort_reaches_the_receiver_as_its_error() {
        let (sender, mut receiver) = channel();
        sender.abort("gone");
        assert_eq!(receiver.recv().await, Err(LinkError::Reset("gone".into())));
    }

    fn body(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[tokio::test]
    async fn the_queue_is_bounded_by_bytes_and_bulk_leaves_room_for_replies() {
        let (sender, mut receiver) = channel_with(10_000, None);
        // Bulk fills half: 4 × (1000 + 64) fits in 5000, a fifth does not.
        for _ in 0..4 {
            sender
                .try_send_bulk(body(1000))
                .expect("bulk within its share");
        }
        assert_eq!(sender.try_send_bulk(body(1000)), Err(LinkError::Full));
        // Replies still fit, up to the whole budget: 9 × 1064 <= 10,000.
        for _ in 0..5 {
            sender
                .try_send(body(1000))
                .expect("reply within the budget");
        }
        assert_eq!(sender.try_send(body(1000)), Err(LinkError::Full));
        assert_eq!(sender.queued_bytes(), 9 * 1064);
        // Reading gives the room back.
        receiver.recv().await.unwrap();
        assert_eq!(sender.queued_bytes(), 8 * 1064);
        sender.try_send(body(1000)).expect("room after a read");
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_passes_alone() {
        let (sender, mut receiver) = channel_with(1000, None);
        sender
            .try_send(body(5000))
            .expect("an empty queue takes any legal frame");
        assert_eq!(sender.try_send(body(1)), Err(LinkError::Full));
        receiver.recv().await.unwrap();
        sender.try_send(body(1)).expect("empty again");
    }

    #[tokio::test(start_paused = true)]
    async fn send_waits_for_room_and_wakes_on_a_read() {
        let (sender, mut receiver) = channel_with(2000, None);
        sender.send(body(1500)).await.unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(body(1500)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "no room yet");
        receiver.recv().await.unwrap();
        waiting.await.unwrap().expect("sent once there was room");
        assert_eq!(sender.queued_bytes(), 1564);
    }

    #[tokio::test]
    async fn a_pool_bounds_many_links_together_and_a_dropped_receiver_gives_back() {
        let pool = QueuePool::new(3000);
        let (a, a_rx) = channel_with(2000, Some(Arc::clone(&pool)));
        let (b, _b_rx) = channel_with(2000, Some(Arc::clone(&pool)));
        a.try_send(body(1400)).unwrap();
        b.try_send(body(1400)).unwrap();
        assert_eq!(pool.bytes(), 2 * 1464);
        assert_eq!(b.try_send(body(100)), Err(LinkError::Full), "pool is full");
        drop(a_rx);
        assert_eq!(pool.bytes(), 1464, "the dropped link's bytes came back");
        b.try_send(body(100)).expect("room in the pool again");
        assert_eq!(a.try_send(body(1)), Err(LinkError::Closed));
    }

    #[tokio::test]
    async fn a_sender_waiting_on_a_closed_link_is_told_so() {
        let (sender, receiver) = channel_with(100, None);
        sender.send(body(100)).await.unwrap();
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(body(100)).await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        assert_eq!(waiting.await.unwrap(), Err(LinkError::Closed));
    }
}

//! RelayConnection: one per relay, under the SyncCoordinator (DESIGN.md §2, §6).
//!
//! It keeps one connection to its relay: dial, `Hello`, `Join` every group the relay serves
//! (a fresh proof per connection), then per group `Subscribe{after: cursor}` for live
//! `Deliver`s and paged `Pull`s for catch-up. Received items go to the coordinator with the
//! cursor up to which this relay's items are now complete (`upto`), which the coordinator
//! persists once the app has them. Pushes from the coordinator are sent once the group is
//! joined, at most [`PUSHES_IN_FLIGHT_MAX`] at a time (the rest wait in order).
//!
//! On loss it reconnects with jittered exponential backoff ([`BACKOFF_FIRST`] doubling to
//! [`BACKOFF_MAX`], drawn from the client's seeded rng), never sooner than a relay's
//! `retry_after_ms`; the coordinator resends what this relay has not acked. A keep-alive
//! `Ping` every [`PING_EVERY`] detects a dead path; after [`DEAD_AFTER`] without any frame, or
//! with a `Ping` unanswered that long, the link is dropped and redialled.
//!
//! The actor never waits for its relay to read: frames go into a [`SendQueue`] bounded by
//! bytes ([`SEND_QUEUE_BYTES_MAX`]) that a task of the connection writes to the link. Pushes
//! wait in the connection while the queue holds [`PUSH_QUEUE_BYTES_MAX`]; any other frame that
//! does not fit means the relay stopped reading, and the link is dropped and redialled. So a
//! relay that stops reading can delay this relay's pushes, never wedge the actor: keep-alive,
//! `SyncNow` answers and every other relay keep working.

use crate::crypto::join::sign_join;
use crate::crypto::keys::MailboxSigner;
use crate::fault::{FaultPlan, FaultPoint};
use crate::link::hello::hello;
use crate::link::{Dialer, LinkReceiver, LinkSender};
use crate::link_reader::{LinkReaderActor, LinkReaderArgs};
use crate::rng::Rng;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info, warn};
use zerok_messages::client::CoordMsg;
use zerok_messages::client::{ConnGroup, GroupId, RelayConnMsg, RelayEvent, Retry};
use zerok_messages::link::LinkEvent;
use zerok_messages::relay::LinkReaderMsg;
use zerok_messages::wire::AdmissionText;
use zerok_messages::{BlobId, Cursor, DeviceId, Frame, Item, Limits, RelayAddr, ReqId, codec};

/// First reconnect delay.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Keep-alive interval.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection with no frame for this long is considered dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(45);
/// Pushes one connection has in flight.
pub const PUSHES_IN_FLIGHT_MAX: usize = 128;
/// Bytes of frames a connection queues for its relay beyond what the link took. A relay that
/// reads drains it within a round trip; one that stopped reading lets it fill, and a frame
/// that does not fit then means the relay is not reading (the link is dropped and redialled).
/// 8 MiB is the push budget below plus room for several maximal frames (1 MiB + 4 KiB), so
/// keep-alives, pulls and joins always fit while the relay reads at all.
pub const SEND_QUEUE_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Queued bytes at which pushes stop being queued and wait, in order, in the connection (they
/// go out as acks come back): pushes are the only large frames, and holding them back keeps
/// a slow but honest relay from looking like one that stopped reading. 4 MiB keeps a 10 MB/s
/// path busy for 400 ms, more than a round trip.
pub const PUSH_QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Items of a group pulled from the relay ahead of what the coordinator has delivered to the
/// app. Catch-up pages come faster than records are opened; without this bound a late
/// joiner would hold the whole mailbox in memory (100,000 × 2 KiB envelopes were ~250 MiB).
/// 4,096 items (~4 pages, ~8 MiB of 1 KiB records) keep the opening pipeline busy.
pub const PULL_AHEAD_ITEMS_MAX: u64 = 4096;
/// How long a relay may take to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames the client reads ahead of its processing.
const READ_AHEAD: usize = 64;

/// The connection's actor type.
pub struct RelayConnActor;

/// What a connection needs.
pub struct RelayConnArgs {
    /// The relay.
    pub relay: RelayAddr,
    /// Dials links.
    pub dialer: Arc<dyn Dialer>,
    /// Groups it serves.
    pub groups: Vec<ConnGroup>,
    /// Whether to subscribe and pull (false for push-only clients).
    pub receive: bool,
    /// Who gets the events.
    pub coordinator: ActorRef<CoordMsg>,
    /// Jitter.
    pub rng: Rng,
    /// Faults to inject (none in production): `FrameReceive` makes the actor fail on a
    /// frame, as a bug a relay's frames trigger would.
    pub faults: FaultPlan,
}

enum Pending {
    Join(GroupId),
    Subscribe(GroupId),
    Pull(GroupId),
    Push { group: GroupId, seq: u64 },
    Ping,
}

struct GroupSync {
    /// The epoch's mailbox signer: join proofs (it opens nothing).
    signer: MailboxSigner,
    admission: Option<AdmissionText>,
    have: u64,
    /// What the coordinator delivered of this relay's items (its persisted cursor).
    delivered: u64,
    /// A pull waits for `Delivered`: `have` is [`PULL_AHEAD_ITEMS_MAX`] ahead of it.
    is_pull_parked: bool,
    joined: bool,
    accepting: bool,
    paused: bool,
    pulling: bool,
    pull_again: bool,
    waiters: Vec<RpcReplyPort<Result<(), String>>>,
    queued: VecDeque<(u64, BlobId, Bytes)>,
}

impl GroupSync {
    fn new(group: ConnGroup) -> Self {
        Self {
            signer: MailboxSigner::from_seed(&group.mailbox_seed),
            admission: group.admission,
            have: group.cursor,
            delivered: group.cursor,
            is_pull_parked: false,
            joined: false,
            accepting: false,
            paused: false,
            pulling: false,
            pull_again: false,
            waiters: Vec::new(),
            queued: VecDeque::new(),
        }
    }
}

/// The frames of one connection on their way to the link: queued without waiting, counted
/// in bytes, written in order by a task that alone waits for the link to take them.
struct SendQueue {
    tx: mpsc::UnboundedSender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    writer: tokio::task::JoinHandle<()>,
}

/// The queue holds [`SEND_QUEUE_BYTES_MAX`] already: the relay is not reading.
#[derive(Debug)]
struct QueueFull;

impl SendQueue {
    fn start(sender: LinkSender) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&queued_bytes);
        let writer = tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                let len = body.len();
                let sent = sender.send(body).await;
                counter.fetch_sub(len, Ordering::AcqRel);
                if sent.is_err() {
                    // The link is gone; the reader reports why.
                    break;
                }
            }
        });
        Self {
            tx,
            queued_bytes,
            writer,
        }
    }

    /// Bytes queued and not yet taken by the link.
    fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Queue a frame body unless the queue is full (an empty queue takes any frame).
    fn try_queue(&self, body: Bytes) -> Result<(), QueueFull> {
        let len = body.len();
        let queued = self.queued_bytes();
        if queued > 0 && queued.saturating_add(len) > SEND_QUEUE_BYTES_MAX {
            return Err(QueueFull);
        }
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if self.tx.send(body).is_err() {
            // The writer stopped because the link closed; the reader reports the loss.
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        }
        Ok(())
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

struct Conn {
    /// Kept to abort the link; frames go through `queue`.
    sender: LinkSender,
    queue: SendQueue,
    /// A frame did not fit the queue: the relay is not reading.
    is_stalled: bool,
    nonce: [u8; 32],
    limits: Limits,
    pending: HashMap<u64, Pending>,
    next_req: u64,
    pushes_in_flight: usize,
    last_frame: tokio::time::Instant,
    /// When the oldest unanswered `Ping` was sent.
    ping_sent_at: Option<tokio::time::Instant>,
    reader: ActorRef<LinkReaderMsg>,
}

impl Conn {
    /// Why the link counts as dead at `now`, if it does.
    fn dead_reason(&self, now: tokio::time::Instant) -> Option<&'static str> {
        if now.duration_since(self.last_frame) > DEAD_AFTER {
            return Some("keep-alive timeout");
        }
        if self
            .ping_sent_at
            .is_some_and(|sent| now.duration_since(sent) > DEAD_AFTER)
        {
            return Some("relay stopped answering");
        }
        None
    }
}

/// Connection state.
pub struct RelayConnState {
    /// `relay_connection{relay}`: one relay's story in the client's log.
    span: tracing::Span,
    relay: RelayAddr,
    dialer: Arc<dyn Dialer>,
    receive: bool,
    coordinator: ActorRef<CoordMsg>,
    rng: Rng,
    groups: HashMap<GroupId, GroupSync>,
    conn: Option<Conn>,
    generation: u64,
    attempts: u32,
    is_dialing: bool,
    faults: FaultPlan,
}

/// Where a pull page leaves the connection's cursor of the group: at the page's `next`, but
/// never beyond the last item it actually carried (`last_received`). A relay's `next` is only
/// its word: trusted as is, a page of 3 items with `next = 1000` would skip cursors 4..=1000
/// for good, and `next = u64::MAX` would stop this relay from ever serving the group again.
/// An empty page advances nothing (an honest relay says `next > after` there only when the
/// items in between expired; reading that range again costs one empty page).
fn page_upto(have: u64, next: u64, last_received: Option<u64>) -> u64 {
    match last_received {
        Some(last) => have.max(next.min(last)),
        None => have,
    }
}

fn backoff(attempts: u32, rng: &mut Rng) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempts.min(8))
        .min(BACKOFF_MAX);
    let half = base / 2;
    let jitter_ms = rng.below(half.as_millis() as u64 + 1);
    half + Duration::from_millis(jitter_ms)
}

async fn dial(
    dialer: Arc<dyn Dialer>,
    relay: RelayAddr,
) -> Result<(LinkSender, LinkReceiver, [u8; 32], Limits), (String, Option<Duration>)> {
    let link = dialer
        .dial(&relay)
        .await
        .map_err(|e| (e.to_string(), None))?;
    let agent = concat!("zerok-client/", env!("CARGO_PKG_VERSION"));
    let welcomed = hello(link, agent, WELCOME_TIMEOUT)
        .await
        .map_err(|e| (e.to_string(), e.retry_after()))?;
    Ok((
        welcomed.sender,
        welcomed.receiver,
        welcomed.nonce,
        welcomed.limits,
    ))
}

impl RelayConnState {
    fn relay_id(&self) -> DeviceId {
        self.relay.id
    }

    fn emit(&self, event: RelayEvent) {
        let _ = self.coordinator.cast(CoordMsg::Relay(event));
    }

    fn start_dial(&mut self, myself: &ActorRef<RelayConnMsg>) {
        if self.is_dialing || self.conn.is_some() {
            return;
        }
        self.is_dialing = true;
        self.generation += 1;
        let generation = self.generation;
        let dialer = Arc::clone(&self.dialer);
        let relay = self.relay.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            let message = match dial(dialer, relay).await {
                Ok((sender, receiver, nonce, limits)) => RelayConnMsg::Connected {
                    generation,
                    sender,
                    receiver,
                    nonce,
                    limits,
                },
                Err((reason, retry_after)) => RelayConnMsg::ConnectFailed {
                    generation,
                    reason,
                    retry_after,
                },
            };
            let _ = myself.send_message(message);
        });
    }

    fn schedule_redial(&mut self, myself: &ActorRef<RelayConnMsg>, retry_after: Option<Duration>) {
        let mut delay = backoff(self.attempts, &mut self.rng);
        if let Some(hint) = retry_after {
            delay = delay.max(hint);
        }
        self.attempts = self.attempts.saturating_add(1);
        debug!(relay = %self.relay.id.short(), delay_ms = delay.as_millis() as u64, "redial scheduled");
        myself.send_after(delay, || RelayConnMsg::ConnectDue);
    }

    /// Queue a request; never waits. A frame that does not fit marks the connection stalled
    /// (the caller's `handle` then drops the link).
    fn send(&mut self, make: impl FnOnce(ReqId) -> Frame, pending: Pending) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.is_stalled {
            return;
        }
        let req = conn.next_req;
        conn.next_req += 1;
        let frame = make(ReqId(req));
        match codec::encode(&frame) {
            Ok(body) => {
                if conn.queue.try_queue(Bytes::from(body)).is_err() {
                    conn.is_stalled = true;
                    return;
                }
                match pending {
                    Pending::Push { .. } => conn.pushes_in_flight += 1,
                    Pending::Ping => {
                        conn.ping_sent_at
                            .get_or_insert_with(tokio::time::Instant::now);
                    }
                    _ => {}
                }
                conn.pending.insert(req, pending);
            }
            Err(err) => warn!(error = %err, "frame not encodable"),
        }
    }

    /// Drop the link when the relay stopped reading (a frame did not fit the queue).
    fn drop_if_stalled(&mut self, myself: &ActorRef<RelayConnMsg>) {
        let Some(conn) = self.conn.as_ref().filter(|c| c.is_stalled) else {
            return;
        };
        warn!(
            relay = %self.relay.id.short(),
            queued_bytes = conn.queue.queued_bytes(),
            "relay is not reading; dropping the link"
        );
        conn.sender.clone().abort("relay is not reading");
        self.lost(myself, "relay is not reading".into());
    }

    fn join_all(&mut self) {
        let unjoined: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.joined)
            .map(|(id, _)| *id)
            .collect();
        for group in unjoined {
            self.join(group);
        }
    }

    /// Send the group's `Join` (a fresh proof over this connection's nonce).
    fn join(&mut self, group: GroupId) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let Some(sync) = self.groups.get(&group).filter(|g| !g.joined) else {
            return;
        };
        let proof = sign_join(
            &sync.signer,
            &self.relay.id,
            &self.dialer.local_id(),
            &conn.nonce,
        );
        let (mailbox_key, admission) = (sync.signer.mailbox_key(), sync.admission.clone());
        self.send(
            |req| Frame::Join {
                req,
                mailbox_key,
                proof,
                admission,
            },
            Pending::Join(group),
        );
    }

    /// Subscribe to the group's live items after what this connection has.
    fn subscribe(&mut self, group: GroupId) {
        let Some(sync) = self.groups.get(&group).filter(|g| g.joined) else {
            return;
        };
        if !self.receive {
            return;
        }
        let (mailbox, after) = (sync.signer.mailbox_id(), Cursor(sync.have));
        self.send(
            |req| Frame::Subscribe {
                req,
                mailbox,
                after,
            },
            Pending::Subscribe(group),
        );
    }

    /// Send `request` of `group` again once the relay's hint has passed.
    fn retry_later(
        &self,
        myself: &ActorRef<RelayConnMsg>,
        group: GroupId,
        request: Retry,
        retry_after_ms: u64,
    ) {
        let generation = self.generation;
        debug!(relay = %self.relay.id.short(), ?request, retry_after_ms, "request refused for a moment; retrying");
        myself.send_after(Duration::from_millis(retry_after_ms), move || {
            RelayConnMsg::RetryDue {
                generation,
                group,
                request,
            }
        });
    }

    fn start_pull(&mut self, group: GroupId) {
        let Some(limits) = self.conn.as_ref().map(|c| c.limits.clone()) else {
            return;
        };
        let Some(sync) = self.groups.get_mut(&group) else {
            return;
        };
        if !sync.joined || sync.paused {
            return;
        }
        if sync.pulling {
            sync.pull_again = true;
            return;
        }
        if sync.have.saturating_sub(sync.delivered) >= PULL_AHEAD_ITEMS_MAX {
            sync.is_pull_parked = true;
            return;
        }
        sync.is_pull_parked = false;
        sync.pulling = true;
        sync.pull_again = false;
        let after = Cursor(sync.have);
        let mailbox = sync.signer.mailbox_id();
        self.send(
            |req| Frame::Pull {
                req,
                mailbox,
                after,
                max_items: limits.pull_items_max,
                max_bytes: limits.pull_bytes_max,
            },
            Pending::Pull(group),
        );
    }

    fn flush_pushes(&mut self, group: GroupId) {
        loop {
            let Some(conn) = self.conn.as_ref() else {
                return;
            };
            if conn.pushes_in_flight >= PUSHES_IN_FLIGHT_MAX
                || conn.queue.queued_bytes() >= PUSH_QUEUE_BYTES_MAX
                || conn.is_stalled
            {
                return;
            }
            let Some(sync) = self.groups.get_mut(&group) else {
                return;
            };
            if !sync.joined {
                return;
            }
            let Some((seq, blob_id, ciphertext)) = sync.queued.pop_front() else {
                return;
            };
            let mailbox = sync.signer.mailbox_id();
            self.send(
                |req| Frame::Push {
                    req,
                    mailbox,
                    blob_id,
                    ciphertext,
                    ttl_secs: None,
                },
                Pending::Push { group, seq },
            );
        }
    }

    fn group_of_mailbox(&self, mailbox: &zerok_messages::MailboxId) -> Option<GroupId> {
        self.groups
            .iter()
            .find(|(_, g)| g.signer.mailbox_id() == *mailbox)
            .map(|(id, _)| *id)
    }

    fn lost(&mut self, myself: &ActorRef<RelayConnMsg>, reason: String) {
        let Some(conn) = self.conn.take() else { return };
        // Killed, not stopped: a stop waits for the reader's pending read, which a relay
        // that went quiet never completes.
        conn.reader.kill();
        for sync in self.groups.values_mut() {
            sync.joined = false;
            sync.accepting = false;
            sync.pulling = false;
            sync.is_pull_parked = false;
            sync.queued.clear();
            for waiter in sync.waiters.drain(..) {
                let _ = waiter.send(Err(format!("connection lost: {reason}")));
            }
        }
        info!(relay = %self.relay.id.short(), reason = %reason, "relay connection lost");
        self.emit(RelayEvent::Down {
            relay: self.relay_id(),
            reason,
        });
        self.schedule_redial(myself, None);
    }

    fn on_frame(&mut self, myself: &ActorRef<RelayConnMsg>, frame: Frame) {
        let relay = self.relay_id();
        let pending = frame
            .req()
            .and_then(|req| self.conn.as_mut().and_then(|c| c.pending.remove(&req.0)));
        if let Some(conn) = self.conn.as_mut() {
            match pending {
                Some(Pending::Push { .. }) => {
                    conn.pushes_in_flight = conn.pushes_in_flight.saturating_sub(1);
                }
                // Pings are answered in order: the oldest unanswered one is answered now.
                Some(Pending::Ping) => conn.ping_sent_at = None,
                _ => {}
            }
        }
        match (frame, pending) {
            (Frame::Joined { latest, .. }, Some(Pending::Join(group))) => {
                if let Some(sync) = self.groups.get_mut(&group) {
                    sync.joined = true;
                    if latest.0 < sync.have {
                        // The relay lost its data (or is another one under the same id): its
                        // cursors restarted. Read it again from the start; blob ids dedupe.
                        warn!(relay = %relay.short(), latest = latest.0, had = sync.have, "relay is behind our cursor; re-reading it from the start");
                        sync.have = 0;
                    }
                }
                self.emit(RelayEvent::Joined { relay, group });
                if self
                    .groups
                    .get(&group)
                    .is_some_and(|g| !g.waiters.is_empty())
                {
                    self.start_pull(group);
                }
                self.subscribe(group);
                self.flush_pushes(group);
            }
            (Frame::PushAck { .. }, Some(Pending::Push { group, seq })) => {
                self.emit(RelayEvent::Acked { relay, group, seq });
                self.flush_pushes(group);
            }
            (
                Frame::PullPage {
                    items,
                    next,
                    has_more,
                    ..
                },
                Some(Pending::Pull(group)),
            ) => {
                let Some(sync) = self.groups.get_mut(&group) else {
                    return;
                };
                if sync.paused {
                    sync.pulling = false;
                    return;
                }
                let items: Vec<Item> = items
                    .into_iter()
                    .filter(|i| i.cursor.0 > sync.have)
                    .collect();
                let last_received = items.iter().map(|i| i.cursor.0).max();
                let upto = page_upto(sync.have, next.0, last_received);
                sync.have = upto;
                sync.pulling = false;
                // A page with nothing new cannot have more to follow: asking again would let
                // a relay keep us pulling empty pages forever.
                let again = (has_more && last_received.is_some()) || sync.pull_again;
                if !items.is_empty() || upto > 0 {
                    self.emit(RelayEvent::Items {
                        relay,
                        group,
                        items,
                        upto,
                    });
                }
                if again {
                    self.start_pull(group);
                } else if let Some(sync) = self.groups.get_mut(&group) {
                    for waiter in sync.waiters.drain(..) {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
            (Frame::Deliver { mailbox, item }, _) => {
                let Some(group) = self.group_of_mailbox(&mailbox) else {
                    return;
                };
                let Some(sync) = self.groups.get_mut(&group) else {
                    return;
                };
                if sync.paused {
                    return;
                }
                if item.cursor.0 == sync.have + 1 && !sync.pulling {
                    sync.have = item.cursor.0;
                    let upto = sync.have;
                    self.emit(RelayEvent::Items {
                        relay,
                        group,
                        items: vec![item],
                        upto,
                    });
                } else if item.cursor.0 > sync.have {
                    self.start_pull(group);
                }
            }
            (Frame::Notify { mailbox, latest }, _) => {
                if let Some(group) = self.group_of_mailbox(&mailbox)
                    && self.groups.get(&group).is_some_and(|g| latest.0 > g.have)
                {
                    self.start_pull(group);
                }
            }
            (
                Frame::Error {
                    code,
                    message,
                    retry_after_ms,
                    ..
                },
                pending,
            ) => match pending {
                Some(Pending::Push { group, seq }) => {
                    self.emit(RelayEvent::PushRefused {
                        relay,
                        group,
                        seq,
                        code,
                        retry_after_ms,
                    });
                    self.flush_pushes(group);
                }
                Some(Pending::Pull(group)) => {
                    if let Some(sync) = self.groups.get_mut(&group) {
                        sync.pulling = false;
                        if let Some(after) = retry_after_ms {
                            // Waiters stay: the pull goes on after the hint.
                            self.retry_later(myself, group, Retry::Pull, after);
                        } else {
                            for waiter in sync.waiters.drain(..) {
                                let _ =
                                    waiter.send(Err(format!("pull refused: {}", code.as_str())));
                            }
                        }
                    }
                }
                Some(Pending::Join(group)) => {
                    warn!(relay = %relay.short(), group = ?group, code = code.as_str(), message = %message, "join refused");
                    if let Some(after) = retry_after_ms {
                        self.retry_later(myself, group, Retry::Join, after);
                    }
                }
                Some(Pending::Subscribe(group)) => {
                    debug!(relay = %relay.short(), group = ?group, code = code.as_str(), "subscribe refused");
                    if let Some(after) = retry_after_ms {
                        self.retry_later(myself, group, Retry::Subscribe, after);
                    }
                }
                _ => debug!(relay = %relay.short(), code = code.as_str(), "relay error"),
            },
            (Frame::Bye { reason }, _) => {
                self.lost(myself, format!("relay said bye ({reason:?})"));
            }
            _ => {}
        }
    }
}

impl Actor for RelayConnActor {
    type Msg = RelayConnMsg;
    type State = RelayConnState;
    type Arguments = RelayConnArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RelayConnArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let groups = args
            .groups
            .into_iter()
            .map(|g| (g.group, GroupSync::new(g)))
            .collect();
        myself.send_message(RelayConnMsg::ConnectDue)?;
        myself.send_interval(PING_EVERY, || RelayConnMsg::PingDue);
        Ok(RelayConnState {
            span: tracing::info_span!("relay_connection", relay = %args.relay.id.short()),
            relay: args.relay,
            dialer: args.dialer,
            receive: args.receive,
            coordinator: args.coordinator,
            rng: args.rng,
            groups,
            conn: None,
            generation: 0,
            attempts: 0,
            is_dialing: false,
            faults: args.faults,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Every line this actor logs carries its span (see the state's `span`).
        let span = state.span.clone();
        async move {
            match message {
                RelayConnMsg::ConnectDue => state.start_dial(&myself),
                RelayConnMsg::ConnectFailed {
                    generation,
                    reason,
                    retry_after,
                } => {
                    if generation != state.generation {
                        return Ok(());
                    }
                    state.is_dialing = false;
                    debug!(relay = %state.relay.id.short(), reason = %reason, "dial failed");
                    for sync in state.groups.values_mut() {
                        for waiter in sync.waiters.drain(..) {
                            let _ = waiter.send(Err(format!("unreachable: {reason}")));
                        }
                    }
                    state.emit(RelayEvent::Down {
                        relay: state.relay_id(),
                        reason,
                    });
                    state.schedule_redial(&myself, retry_after);
                }
                RelayConnMsg::Connected {
                    generation,
                    sender,
                    receiver,
                    nonce,
                    limits,
                } => {
                    if generation != state.generation {
                        return Ok(());
                    }
                    state.is_dialing = false;
                    let (reader, _) = Actor::spawn_linked(
                        None,
                        LinkReaderActor::<RelayConnMsg>::default(),
                        LinkReaderArgs {
                            receiver,
                            owner: myself.clone(),
                            inflight: Arc::new(Semaphore::new(READ_AHEAD)),
                            inflight_bytes: Vec::new(),
                        },
                        myself.get_cell(),
                    )
                    .await?;
                    state.conn = Some(Conn {
                        queue: SendQueue::start(sender.clone()),
                        sender,
                        is_stalled: false,
                        ping_sent_at: None,
                        nonce,
                        limits,
                        pending: HashMap::new(),
                        next_req: 1,
                        pushes_in_flight: 0,
                        last_frame: tokio::time::Instant::now(),
                        reader,
                    });
                    state.attempts = 0;
                    info!(relay = %state.relay.id.short(), "relay connected");
                    state.emit(RelayEvent::Up {
                        relay: state.relay_id(),
                    });
                    state.join_all();
                }
                RelayConnMsg::Link(LinkEvent::Frame { body, permit }) => {
                    drop(permit);
                    if state.faults.should_fail(FaultPoint::FrameReceive) {
                        return Err("fault injected: a frame the connection cannot handle".into());
                    }
                    if let Some(conn) = state.conn.as_mut() {
                        conn.last_frame = tokio::time::Instant::now();
                    }
                    match codec::decode(&body) {
                        Ok(frame) => state.on_frame(&myself, frame),
                        Err(err) => debug!(error = %err, "undecodable frame from relay"),
                    }
                }
                RelayConnMsg::Link(LinkEvent::Closed { error }) => {
                    let reason = error.map_or_else(|| "closed".to_owned(), |e| e.to_string());
                    state.lost(&myself, reason);
                }
                RelayConnMsg::SetGroups(groups) => {
                    let mut next = HashMap::new();
                    for g in groups {
                        let group = g.group;
                        let sync = match state.groups.remove(&group) {
                            Some(mut sync) => {
                                sync.admission = g.admission;
                                sync
                            }
                            None => GroupSync::new(g),
                        };
                        next.insert(group, sync);
                    }
                    state.groups = next;
                    state.join_all();
                }
                RelayConnMsg::Push {
                    group,
                    seq,
                    blob_id,
                    ciphertext,
                } => {
                    if state.conn.is_none() {
                        return Ok(());
                    }
                    if let Some(sync) = state.groups.get_mut(&group)
                        && sync.accepting
                    {
                        sync.queued.push_back((seq, blob_id, ciphertext));
                        state.flush_pushes(group);
                    }
                }
                RelayConnMsg::Resend { group, entries } => {
                    if let Some(sync) = state.groups.get_mut(&group)
                        && sync.joined
                    {
                        sync.accepting = true;
                        sync.queued = entries.into_iter().collect();
                        state.flush_pushes(group);
                    }
                }
                RelayConnMsg::SyncNow { group, reply } => {
                    // Not joined yet (dialling): the waiter is parked and served once the group is
                    // joined, or failed when the dial fails.
                    let Some(sync) = state.groups.get_mut(&group) else {
                        let _ = reply.send(Err("group not served by this relay".into()));
                        return Ok(());
                    };
                    sync.waiters.push(reply);
                    if sync.joined {
                        state.start_pull(group);
                    } else if state.conn.is_none() {
                        state.start_dial(&myself);
                    }
                }
                RelayConnMsg::Pause { group, rewind_to } => {
                    if let Some(sync) = state.groups.get_mut(&group) {
                        sync.paused = true;
                        sync.have = sync.have.min(rewind_to);
                    }
                }
                RelayConnMsg::Resume { group } => {
                    if let Some(sync) = state.groups.get_mut(&group)
                        && sync.paused
                    {
                        sync.paused = false;
                        state.start_pull(group);
                    }
                }
                RelayConnMsg::Delivered { group, upto } => {
                    if let Some(sync) = state.groups.get_mut(&group) {
                        sync.delivered = sync.delivered.max(upto);
                        if sync.is_pull_parked {
                            state.start_pull(group);
                        }
                    }
                }
                RelayConnMsg::RetryDue {
                    generation,
                    group,
                    request,
                } => {
                    if generation == state.generation {
                        match request {
                            Retry::Join => state.join(group),
                            Retry::Subscribe => state.subscribe(group),
                            Retry::Pull => state.start_pull(group),
                        }
                    }
                }
                RelayConnMsg::PingDue => {
                    let now = tokio::time::Instant::now();
                    let dead = state.conn.as_ref().and_then(|c| c.dead_reason(now));
                    if let Some(reason) = dead {
                        if let Some(conn) = state.conn.as_ref() {
                            conn.sender.clone().abort(reason);
                        }
                        state.lost(&myself, reason.into());
                    } else if state
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.ping_sent_at.is_none())
                    {
                        state.send(|req| Frame::Ping { req }, Pending::Ping);
                    }
                }
            }
            state.drop_if_stalled(&myself);
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// A LinkReader ends with its link: after `Closed` (handled as a message) or because
    /// `lost` killed it. Either way the loss is handled here, with backoff; ractor's default
    /// (stop with the child) would throw the backoff away and have the coordinator restart
    /// this connection at once, a tight loop against a relay that drops every connection.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = &event
            && state
                .conn
                .as_ref()
                .is_some_and(|c| c.reader.get_id() == cell.get_id())
        {
            state.lost(&myself, format!("link reader failed: {error}"));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(conn) = state.conn.take() {
            if let Ok(body) = codec::encode(&Frame::Bye {
                reason: zerok_messages::wire::ByeReason::ClientDone,
            }) {
                let _ = conn.sender.try_send(Bytes::from(body));
            }
            conn.sender.finish();
        }
        Ok(())
    }
}

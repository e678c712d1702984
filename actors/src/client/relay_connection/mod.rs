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

mod core;

pub use self::core::{
    ConnCore, ConnIo, DEAD_AFTER, Flow, PULL_AHEAD_ITEMS_MAX, PUSHES_IN_FLIGHT_MAX, SyncStart,
    page_upto,
};

use crate::fault::{FaultPlan, FaultPoint};
use crate::link::hello::hello;
use crate::link::{Dialer, LinkReceiver, LinkSender};
use crate::link_reader::{LinkReaderActor, LinkReaderArgs};
use crate::rng::Rng;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info, warn};
use zerok_messages::client::{
    ConnGroup, CoordMsg, GroupId, RelayConnMsg, RelayEvent, Retry, SyncError,
};
use zerok_messages::link::LinkEvent;
use zerok_messages::relay::LinkReaderMsg;
use zerok_messages::{Frame, Limits, RelayAddr, codec};

/// First reconnect delay.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Keep-alive interval.
pub const PING_EVERY: Duration = Duration::from_secs(15);
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
    /// frame, as a bug a relay's frames trigger would; `FrameSend` breaks the link as a
    /// frame is written.
    pub faults: FaultPlan,
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
    fn start(sender: LinkSender, faults: FaultPlan) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&queued_bytes);
        let writer = tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                let len = body.len();
                if faults.should_fail(FaultPoint::FrameSend) {
                    // As a link whose send failed: the reader reports the loss.
                    sender.abort("fault injected: a send failed");
                    break;
                }
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

/// The current link: its send queue and reader.
struct Conn {
    /// Kept to abort the link; frames go through `queue`.
    sender: LinkSender,
    queue: SendQueue,
    reader: ActorRef<LinkReaderMsg>,
}

/// Connection state: the core, and what only an actor can hold.
pub struct RelayConnState {
    /// `relay_connection{relay}`: one relay's story in the client's log.
    span: tracing::Span,
    relay: RelayAddr,
    dialer: Arc<dyn Dialer>,
    coordinator: ActorRef<CoordMsg>,
    rng: Rng,
    core: ConnCore,
    conn: Option<Conn>,
    /// `SyncNow` reply ports by group, answered when the core says.
    waiters: HashMap<GroupId, Vec<RpcReplyPort<Result<(), SyncError>>>>,
    generation: u64,
    attempts: u32,
    is_dialing: bool,
    faults: FaultPlan,
}

/// The core's effects, carried out by the actor: frames go into the link's send queue, events
/// to the coordinator, retries onto the actor's timers, answers to the waiting callers.
struct Io<'a> {
    myself: &'a ActorRef<RelayConnMsg>,
    coordinator: &'a ActorRef<CoordMsg>,
    queue: Option<&'a SendQueue>,
    waiters: &'a mut HashMap<GroupId, Vec<RpcReplyPort<Result<(), SyncError>>>>,
    generation: u64,
}

impl ConnIo for Io<'_> {
    fn send(&mut self, frame: Frame) -> bool {
        let Some(queue) = self.queue else {
            return true;
        };
        match codec::encode(&frame) {
            Ok(body) => queue.try_queue(Bytes::from(body)).is_ok(),
            Err(err) => {
                warn!(error = %err, "frame not encodable");
                true
            }
        }
    }

    fn push_room(&self) -> bool {
        self.queue
            .is_some_and(|q| q.queued_bytes() < PUSH_QUEUE_BYTES_MAX)
    }

    fn emit(&mut self, event: RelayEvent) {
        let _ = self.coordinator.cast(CoordMsg::Relay(event));
    }

    fn retry_later(&mut self, group: GroupId, request: Retry, after: Duration) {
        debug!(
            ?request,
            after_ms = after.as_millis() as u64,
            "request refused for a moment; retrying"
        );
        let generation = self.generation;
        self.myself
            .send_after(after, move || RelayConnMsg::RetryDue {
                generation,
                group,
                request,
            });
    }

    fn sync_done(&mut self, group: GroupId, result: Result<(), SyncError>) {
        for waiter in self.waiters.remove(&group).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
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
    fn io<'a>(&'a mut self, myself: &'a ActorRef<RelayConnMsg>) -> (&'a mut ConnCore, Io<'a>) {
        let io = Io {
            myself,
            coordinator: &self.coordinator,
            queue: self.conn.as_ref().map(|c| &c.queue),
            waiters: &mut self.waiters,
            generation: self.generation,
        };
        (&mut self.core, io)
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
        debug!(delay_ms = delay.as_millis() as u64, "redial scheduled");
        myself.send_after(delay, || RelayConnMsg::ConnectDue);
    }

    /// The link is gone: the core forgets it, the coordinator hears, a redial is scheduled.
    fn lost(&mut self, myself: &ActorRef<RelayConnMsg>, reason: String) {
        let Some(conn) = self.conn.take() else { return };
        // Killed, not stopped: a stop waits for the reader's pending read, which a relay
        // that went quiet never completes.
        conn.reader.kill();
        let (core, mut io) = self.io(myself);
        core.lost(&mut io, SyncError::Lost(reason.clone()));
        info!(reason = %reason, "relay connection lost");
        self.emit(RelayEvent::Down {
            relay: self.relay.id,
            reason,
        });
        self.schedule_redial(myself, None);
    }

    /// Drop the link when the relay stopped reading (a frame did not fit the queue).
    fn drop_if_stalled(&mut self, myself: &ActorRef<RelayConnMsg>) {
        if !self.core.is_stalled() {
            return;
        }
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        warn!(
            queued_bytes = conn.queue.queued_bytes(),
            "relay is not reading; dropping the link"
        );
        conn.sender.clone().abort("relay is not reading");
        self.lost(myself, "relay is not reading".into());
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
        myself.send_message(RelayConnMsg::ConnectDue)?;
        myself.send_interval(PING_EVERY, || RelayConnMsg::PingDue);
        Ok(RelayConnState {
            span: tracing::info_span!("relay_connection", relay = %args.relay.id.short()),
            core: ConnCore::new(
                args.relay.id,
                args.dialer.local_id(),
                args.receive,
                &args.groups,
            ),
            relay: args.relay,
            dialer: args.dialer,
            coordinator: args.coordinator,
            rng: args.rng,
            conn: None,
            waiters: HashMap::new(),
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
                    debug!(reason = %reason, "dial failed");
                    let (core, mut io) = state.io(&myself);
                    core.lost(&mut io, SyncError::Unreachable(reason.clone()));
                    state.emit(RelayEvent::Down {
                        relay: state.relay.id,
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
                        queue: SendQueue::start(sender.clone(), state.faults.clone()),
                        sender,
                        reader,
                    });
                    state.attempts = 0;
                    info!("relay connected");
                    state.emit(RelayEvent::Up {
                        relay: state.relay.id,
                    });
                    let (core, mut io) = state.io(&myself);
                    core.connected(&mut io, nonce, limits, tokio::time::Instant::now());
                }
                RelayConnMsg::Link(LinkEvent::Frame { body, permit }) => {
                    drop(permit);
                    if state.faults.should_fail(FaultPoint::FrameReceive) {
                        return Err("fault injected: a frame the connection cannot handle".into());
                    }
                    match codec::decode(&body) {
                        Ok(frame) => {
                            let (core, mut io) = state.io(&myself);
                            if let Flow::Lost(reason) =
                                core.on_frame(&mut io, frame, tokio::time::Instant::now())
                            {
                                state.lost(&myself, reason);
                            }
                        }
                        Err(err) => debug!(error = %err, "undecodable frame from relay"),
                    }
                }
                RelayConnMsg::Link(LinkEvent::Closed { error }) => {
                    let reason = error.map_or_else(|| "closed".to_owned(), |e| e.to_string());
                    state.lost(&myself, reason);
                }
                RelayConnMsg::SetGroups(groups) => {
                    let (core, mut io) = state.io(&myself);
                    core.set_groups(&mut io, groups);
                }
                RelayConnMsg::Push {
                    group,
                    seq,
                    blob_id,
                    ciphertext,
                } => {
                    let (core, mut io) = state.io(&myself);
                    core.push(&mut io, group, seq, blob_id, ciphertext);
                }
                RelayConnMsg::Resend { group, entries } => {
                    let (core, mut io) = state.io(&myself);
                    core.resend(&mut io, group, entries);
                }
                RelayConnMsg::SyncNow { group, reply } => {
                    // Not joined yet (dialling): the waiter is kept and served once the group
                    // is joined, or failed when the dial fails.
                    state.waiters.entry(group).or_default().push(reply);
                    let (core, mut io) = state.io(&myself);
                    match core.sync_now(&mut io, group) {
                        SyncStart::NotServed => io.sync_done(group, Err(SyncError::NotServed)),
                        SyncStart::Waiting => {}
                        SyncStart::WaitingForLink => state.start_dial(&myself),
                    }
                }
                RelayConnMsg::Pause { group, rewind_to } => state.core.pause(group, rewind_to),
                RelayConnMsg::Resume { group } => {
                    let (core, mut io) = state.io(&myself);
                    core.resume(&mut io, group);
                }
                RelayConnMsg::Delivered { group, upto } => {
                    let (core, mut io) = state.io(&myself);
                    core.delivered(&mut io, group, upto);
                }
                RelayConnMsg::RetryDue {
                    generation,
                    group,
                    request,
                } => {
                    if generation == state.generation {
                        let (core, mut io) = state.io(&myself);
                        core.retry(&mut io, group, request);
                    }
                }
                RelayConnMsg::PingDue => {
                    let (core, mut io) = state.io(&myself);
                    if let Some(reason) = core.ping_due(&mut io, tokio::time::Instant::now()) {
                        if let Some(conn) = state.conn.as_ref() {
                            conn.sender.clone().abort(reason);
                        }
                        state.lost(&myself, reason.into());
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

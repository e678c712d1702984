//! GroupRouter: one per active mailbox, under the RoutersSupervisor (DESIGN.md §2).
//!
//! Push path: a Session sends `Push`; the router queues it with a token, casts `Append` to the
//! BlobStore and keeps the session's reply port. The store answers with `Stored` once the
//! group commit is durable; the router then acks each pushing session and fans every newly
//! stored item out to the mailbox's subscribers, in cursor order.
//!
//! Bounds: pending pushes per router ([`PENDING_PUSHES_MAX`]; beyond it a push is answered
//! `Unavailable` at once). Fan-out never waits: it `try_send_bulk`s one pre-encoded `Deliver`
//! frame on each subscriber's link queue, which deliveries may fill only half of (the rest is
//! kept for replies to the subscriber's requests); a full share marks the subscriber lagging, the
//! delivery is counted as dropped, and the subscriber gets a `Notify{latest}` as soon as its
//! queue has room (retried every [`NOTIFY_RETRY`]) so it pulls what it missed.
//!
//! Subscribers live in a [`SubscriberTable`] owned by the supervisor, so a restarted router
//! keeps them; a new router notifies all of them once so nobody misses an item stored while
//! the old one was dying. A router with no pending push and no subscriber stops itself after
//! [`IDLE_STOP_AFTER`], so memory grows with active mailboxes, not with all mailboxes ever seen.

use crate::fault::{FaultPlan, FaultPoint};
use crate::relay::metrics::RelayMetrics;
use crate::shared_ref::SharedRef;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{Instrument, debug, warn};
use zerok_messages::codec;
use zerok_messages::link::LinkError;
use zerok_messages::relay::{
    AppendRequest, BlobStoreMsg, GroupRouterMsg, PushAcked, StoreError, StoreOutcome, SubscriberId,
};
use zerok_messages::sync::lock;
use zerok_messages::{BlobId, Cursor, Frame, Item, LinkSender, MailboxId};

/// Pushes one router holds while waiting for the store: at 1 KiB per push this bounds a
/// router to ~4 MiB; more means the store is far behind and clients should back off.
pub const PENDING_PUSHES_MAX: usize = 4096;
/// How often lagging subscribers are retried for their `Notify`.
pub const NOTIFY_RETRY: Duration = Duration::from_millis(20);
/// Idle time after which a router without subscribers or pending pushes stops: a minute.
/// Starting one again costs a single store lookup, so keeping an idle router longer saves
/// nothing worth its memory when many mailboxes were pushed to once (10k mailboxes created in
/// seconds held ~100 MiB of routers for the old five minutes).
pub const IDLE_STOP_AFTER: Duration = Duration::from_secs(60);
/// The stop reason of a router that ended because it was idle (not a crash).
pub const IDLE_STOP_REASON: &str = "idle";
/// How often a router with pending pushes checks whether the store was restarted.
pub const STORE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a router waits for the store when it starts.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One subscriber's live-delivery state.
#[derive(Debug, Clone)]
pub struct Subscriber {
    sink: LinkSender,
    /// A delivery was dropped; a `Notify` is owed.
    lagging: bool,
}

/// Subscribers of one mailbox, shared between a router and its restarted successor.
pub type SubscriberTable = Arc<Mutex<BTreeMap<SubscriberId, Subscriber>>>;

/// The router's actor type.
pub struct GroupRouterActor;

/// What a router needs.
pub struct GroupRouterArgs {
    /// Its mailbox.
    pub mailbox: MailboxId,
    /// The BlobStore (swapped by the Infra supervisor after a restart).
    pub store: SharedRef<BlobStoreMsg>,
    /// Subscribers, kept across restarts.
    pub subscribers: SubscriberTable,
    /// Whether this router replaces a crashed one (then every subscriber is notified).
    pub is_restart: bool,
    /// Metrics.
    pub metrics: RelayMetrics,
    /// Fault injection ([`FaultPoint::RouterDropsPush`]).
    pub faults: FaultPlan,
}

struct PendingPush {
    blob_id: BlobId,
    ciphertext: Bytes,
    ttl_secs: Option<u32>,
    reply: RpcReplyPort<Result<PushAcked, StoreError>>,
}

/// Router state.
pub struct GroupRouterState {
    /// `router{mailbox}`: one mailbox's story in the relay's log.
    span: tracing::Span,
    mailbox: MailboxId,
    store: SharedRef<BlobStoreMsg>,
    subscribers: SubscriberTable,
    metrics: RelayMetrics,
    faults: FaultPlan,
    next_token: u64,
    pending: BTreeMap<u64, PendingPush>,
    latest: Cursor,
    is_notify_scheduled: bool,
    is_store_check_scheduled: bool,
    /// The store the pending pushes were sent to.
    store_id: ractor::ActorId,
    idle_since: tokio::time::Instant,
}

impl GroupRouterState {
    /// Offer a frame to every subscriber that is not lagging; mark the full ones lagging.
    /// Returns whether anyone is lagging.
    fn fan_out(&self, frame: &Bytes) -> bool {
        let mut table = lock(&self.subscribers);
        let mut closed = Vec::new();
        for (id, subscriber) in table.iter_mut() {
            if subscriber.lagging {
                self.metrics.fanout_drops_total.inc();
                continue;
            }
            match subscriber.sink.try_send_bulk(frame.clone()) {
                Ok(()) => {}
                Err(LinkError::Full) => {
                    subscriber.lagging = true;
                    self.metrics.fanout_drops_total.inc();
                }
                Err(_) => closed.push(*id),
            }
        }
        for id in closed {
            table.remove(&id);
        }
        table.values().any(|s| s.lagging)
    }

    /// Send `Notify{latest}` to lagging subscribers with room. Returns whether any still lag.
    fn notify_lagging(&self) -> bool {
        let Ok(frame) = codec::encode(&Frame::Notify {
            mailbox: self.mailbox,
            latest: self.latest,
        }) else {
            return false;
        };
        let frame = Bytes::from(frame);
        let mut table = lock(&self.subscribers);
        let mut closed = Vec::new();
        for (id, subscriber) in table.iter_mut().filter(|(_, s)| s.lagging) {
            match subscriber.sink.try_send(frame.clone()) {
                Ok(()) => subscriber.lagging = false,
                Err(LinkError::Full) => {}
                Err(_) => closed.push(*id),
            }
        }
        for id in closed {
            table.remove(&id);
        }
        table.values().any(|s| s.lagging)
    }

    fn schedule_notify(&mut self, myself: &ActorRef<GroupRouterMsg>) {
        if !self.is_notify_scheduled {
            self.is_notify_scheduled = true;
            myself.send_after(NOTIFY_RETRY, || GroupRouterMsg::NotifyDue);
        }
    }

    /// If the store was replaced (it crashed and was restarted) since the pending pushes were
    /// sent, send them again to the new one: they were lost with the old store's queue.
    /// Appends are idempotent on blob id, so a push the old store did commit comes back as a
    /// duplicate with its original cursor.
    fn resend_if_store_replaced(&mut self, myself: &ActorRef<GroupRouterMsg>) {
        let store = self.store.get();
        if store.get_id() == self.store_id {
            return;
        }
        self.store_id = store.get_id();
        if self.pending.is_empty() {
            return;
        }
        let requests = self
            .pending
            .iter()
            .map(|(token, push)| AppendRequest {
                token: *token,
                mailbox: self.mailbox,
                blob_id: push.blob_id,
                ciphertext: push.ciphertext.clone(),
                ttl_secs: push.ttl_secs,
            })
            .collect::<Vec<_>>();
        debug!(
            count = requests.len(),
            "store replaced, resending pending pushes"
        );
        if let Err(err) = store.cast(BlobStoreMsg::Append {
            requests,
            reply_to: myself.clone(),
        }) {
            warn!(error = %err, "store unreachable");
        }
    }

    fn schedule_store_check(&mut self, myself: &ActorRef<GroupRouterMsg>) {
        if !self.is_store_check_scheduled && !self.pending.is_empty() {
            self.is_store_check_scheduled = true;
            myself.send_after(STORE_CHECK_EVERY, || GroupRouterMsg::StoreCheckDue);
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty() && lock(&self.subscribers).is_empty()
    }
}

impl Actor for GroupRouterActor {
    type Msg = GroupRouterMsg;
    type State = GroupRouterState;
    type Arguments = GroupRouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GroupRouterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mailbox = args.mailbox;
        let latest = ractor::call_t!(
            args.store.get(),
            |reply| BlobStoreMsg::GetLatest { mailbox, reply },
            STORE_CALL_TIMEOUT.as_millis() as u64
        )
        .map_err(|err| format!("store did not answer: {err}"))?
        .map_err(|err| format!("store failed: {err}"))?;
        let store_id = args.store.get().get_id();
        let state = GroupRouterState {
            span: tracing::info_span!("router", mailbox = %args.mailbox.short()),
            mailbox,
            store: args.store,
            store_id,
            is_store_check_scheduled: false,
            subscribers: args.subscribers,
            metrics: args.metrics,
            faults: args.faults,
            next_token: 0,
            pending: BTreeMap::new(),
            latest,
            is_notify_scheduled: false,
            idle_since: tokio::time::Instant::now(),
        };
        if args.is_restart {
            // Items may have been stored while the old router died: everyone pulls once.
            for subscriber in lock(&state.subscribers).values_mut() {
                subscriber.lagging = true;
            }
            myself.send_message(GroupRouterMsg::NotifyDue)?;
        }
        myself.send_interval(IDLE_STOP_AFTER / 4, || GroupRouterMsg::IdleCheckDue);
        Ok(state)
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
                GroupRouterMsg::Push {
                    blob_id,
                    ciphertext,
                    ttl_secs,
                    reply,
                } => {
                    if state.pending.len() >= PENDING_PUSHES_MAX {
                        let _ = reply.send(Err(StoreError::Unavailable("mailbox busy".into())));
                        return Ok(());
                    }
                    if state.faults.should_fail(FaultPoint::RouterDropsPush) {
                        // The broken variant: lost on its way to the store, acked anyway.
                        let _ = reply.send(Ok(PushAcked {
                            cursor: state.latest,
                            duplicate: true,
                        }));
                        return Ok(());
                    }
                    state.resend_if_store_replaced(&myself);
                    let token = state.next_token;
                    state.next_token += 1;
                    let request = AppendRequest {
                        token,
                        mailbox: state.mailbox,
                        blob_id,
                        ciphertext: ciphertext.clone(),
                        ttl_secs,
                    };
                    if let Err(err) = state.store.get().cast(BlobStoreMsg::Append {
                        requests: vec![request],
                        reply_to: myself.clone(),
                    }) {
                        warn!(error = %err, "store unreachable");
                        let _ = reply.send(Err(StoreError::Unavailable("store restarting".into())));
                        return Ok(());
                    }
                    state.pending.insert(
                        token,
                        PendingPush {
                            blob_id,
                            ciphertext,
                            ttl_secs,
                            reply,
                        },
                    );
                    state.schedule_store_check(&myself);
                }
                GroupRouterMsg::Stored { results } => {
                    let mut is_lagging = false;
                    for (token, outcome) in results {
                        let Some(push) = state.pending.remove(&token) else {
                            debug!(token, "stored outcome for an unknown push");
                            continue;
                        };
                        match outcome {
                            StoreOutcome::Stored {
                                cursor,
                                duplicate,
                                stored_at_ms,
                            } => {
                                let _ = push.reply.send(Ok(PushAcked { cursor, duplicate }));
                                if duplicate || cursor <= state.latest {
                                    continue;
                                }
                                state.latest = cursor;
                                let frame = codec::encode(&Frame::Deliver {
                                    mailbox: state.mailbox,
                                    item: Item {
                                        cursor,
                                        blob_id: push.blob_id,
                                        ciphertext: push.ciphertext,
                                        stored_at_ms,
                                    },
                                });
                                match frame {
                                    Ok(frame) => is_lagging |= state.fan_out(&Bytes::from(frame)),
                                    Err(err) => warn!(error = %err, "deliver frame not encodable"),
                                }
                            }
                            StoreOutcome::Rejected(err) => {
                                let _ = push.reply.send(Err(err));
                            }
                        }
                    }
                    if is_lagging {
                        state.schedule_notify(&myself);
                    }
                }
                GroupRouterMsg::Subscribe {
                    subscriber,
                    sink,
                    reply,
                } => {
                    lock(&state.subscribers).insert(
                        subscriber,
                        Subscriber {
                            sink,
                            lagging: false,
                        },
                    );
                    let _ = reply.send(state.latest);
                }
                GroupRouterMsg::Unsubscribe { subscriber } => {
                    lock(&state.subscribers).remove(&subscriber);
                }
                GroupRouterMsg::NotifyDue => {
                    state.is_notify_scheduled = false;
                    if state.notify_lagging() {
                        state.schedule_notify(&myself);
                    }
                }
                GroupRouterMsg::StoreCheckDue => {
                    state.is_store_check_scheduled = false;
                    state.resend_if_store_replaced(&myself);
                    state.schedule_store_check(&myself);
                }
                GroupRouterMsg::IdleCheckDue => {
                    if !state.is_idle() {
                        state.idle_since = tokio::time::Instant::now();
                    } else if state.idle_since.elapsed() >= IDLE_STOP_AFTER {
                        debug!(mailbox = %state.mailbox.short(), "router idle, stopping");
                        myself.stop(Some(IDLE_STOP_REASON.into()));
                    }
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

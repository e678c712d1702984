//! SyncCoordinator: the client's hub (DESIGN.md §2, §6).
//!
//! - **Push**: seal (Encryptor) → outbox (LocalStore, durable) → every RelayConnection of
//!   the group, same blob id and bytes. A receipt completes when `ack_quorum` relays acked;
//!   the rest keep being retried (on reconnect, after a refusal's `retry_after_ms`). An entry
//!   leaves the outbox once every relay of the group acked it.
//! - **Receive**: items from any relay → dedupe by blob id → open (Encryptor: AEAD, blob id,
//!   signature) → per-sender seq check (replays dropped, gaps reported) → event to the app →
//!   then the relay's cursor, the seen ids and the seq state are persisted together. Items
//!   that do not open are reported `Undecryptable` and not marked seen, so an honest copy
//!   from another relay still gets through.
//! - It owns the RelayConnections (one per relay of any group) and the LocalStore.
//!
//! Bound: the event channel to the app is bounded; when the app does not read, the
//! coordinator waits (back-pressure reaches the relays through the connections' reads).

use crate::encryptor::EncryptorMsg;
use crate::relay_conn::{ConnGroup, RelayConnActor, RelayConnArgs, RelayConnMsg, RelayEvent};
use crate::store::{GroupRecord, LocalStore, OutboxEntry, ReceivedBatch};
use crate::types::{
    ClientError, Event, GroupId, GroupStatus, Receipt, RelayStatus, Status, SyncReport,
};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use zerok_actors::clock::Clock;
use zerok_actors::crypto::keys::{EpochKeys, GroupSecret};
use zerok_actors::crypto::seq::{Hlc, SeqTracker, SeqVerdict};
use zerok_actors::link::Dialer;
use zerok_actors::rng::Rng;
use zerok_messages::wire::AdmissionText;
use zerok_messages::{BlobId, DeviceId, Epoch, RelayAddr};

/// How long a sync of one relay may take.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Receipts remembered after their entry left the outbox.
const RECENT_RECEIPTS_MAX: usize = 16_384;
/// Fallback retry delay after a refused push without a hint.
const RETRY_DEFAULT: Duration = Duration::from_secs(1);

/// Messages of the coordinator.
pub enum CoordMsg {
    /// From a RelayConnection.
    Relay(RelayEvent),
    /// Seal and queue a push durably; answers `(seq, blob_id)`.
    Enqueue {
        /// The group.
        group: GroupId,
        /// The app's bytes.
        payload: Vec<u8>,
        /// The queued push.
        reply: RpcReplyPort<Result<(u64, BlobId), ClientError>>,
    },
    /// Answer once `blob_id` is acked by enough relays.
    WaitAcked {
        /// The group.
        group: GroupId,
        /// The push.
        blob_id: BlobId,
        /// The receipt.
        reply: RpcReplyPort<Receipt>,
    },
    /// Acks of a push so far: `(acked_by, needed)`.
    AckState {
        /// The group.
        group: GroupId,
        /// The push.
        blob_id: BlobId,
        /// Relays that acked and the quorum.
        reply: RpcReplyPort<(Vec<DeviceId>, usize)>,
    },
    /// Pull every relay of the group to its end.
    SyncNow {
        /// The group.
        group: GroupId,
        /// What was reached.
        reply: RpcReplyPort<SyncReport>,
    },
    /// Answers after every message sent before it was handled.
    Barrier {
        /// Done.
        reply: RpcReplyPort<()>,
    },
    /// Status of every group.
    Status {
        /// The status.
        reply: RpcReplyPort<Status>,
    },
    /// Add (or replace) a group.
    PutGroup {
        /// Its id.
        id: GroupId,
        /// Its record.
        record: GroupRecord,
        /// Done.
        reply: RpcReplyPort<Result<(), ClientError>>,
    },
    /// A group's record.
    GetGroup {
        /// Its id.
        id: GroupId,
        /// The record.
        reply: RpcReplyPort<Option<GroupRecord>>,
    },
    /// Resend refused pushes.
    RetryDue,
    /// The app's event channel has room again.
    EventRoom,
}

/// The coordinator's actor type.
pub struct CoordinatorActor;

/// What the coordinator needs.
pub struct CoordinatorArgs {
    /// The local store.
    pub store: LocalStore,
    /// The Encryptor.
    pub encryptor: ActorRef<EncryptorMsg>,
    /// Dials relays.
    pub dialer: Arc<dyn Dialer>,
    /// Where events go.
    pub events: mpsc::Sender<Event>,
    /// Relays that must ack before a receipt.
    pub ack_quorum: usize,
    /// Whether to subscribe and pull.
    pub receive: bool,
    /// Received items held for an app that is not reading, beyond which relays are paused.
    pub backlog_max: usize,
    /// Wall time for HLC timestamps.
    pub clock: Clock,
    /// Randomness (reconnect jitter).
    pub rng: Rng,
}

struct GroupState {
    record: GroupRecord,
    keys: Arc<EpochKeys>,
    relays: Vec<RelayAddr>,
    tracker: SeqTracker,
    outbox: BTreeMap<u64, OutboxEntry>,
    by_blob: HashMap<BlobId, u64>,
    next_seq: u64,
    /// Own records are sealed with `outbox seq - seq_base` (see `LocalStore::new_device_key`).
    seq_base: u64,
    hlc: Hlc,
}

struct ConnEntry {
    addr: RelayAddr,
    actor: ActorRef<RelayConnMsg>,
    is_up: bool,
}

/// Coordinator state.
pub struct CoordinatorState {
    args: CoordinatorArgs,
    groups: HashMap<GroupId, GroupState>,
    conns: HashMap<DeviceId, ConnEntry>,
    waiters: HashMap<BlobId, Vec<RpcReplyPort<Receipt>>>,
    recent: HashMap<BlobId, Vec<DeviceId>>,
    recent_order: VecDeque<BlobId>,
    refused: HashSet<(DeviceId, GroupId, u64)>,
    is_retry_scheduled: bool,
    backlog: VecDeque<Backlog>,
    backlog_items: usize,
    is_waiting_for_room: bool,
    paused: HashSet<(DeviceId, GroupId)>,
    barriers: Vec<RpcReplyPort<()>>,
}

fn parse_relays(record: &GroupRecord) -> Vec<RelayAddr> {
    record
        .relays
        .iter()
        .filter_map(|text| match text.parse::<RelayAddr>() {
            Ok(addr) => Some(addr),
            Err(err) => {
                warn!(error = %err, "ignoring an unparsable relay address");
                None
            }
        })
        .collect()
}

impl CoordinatorState {
    fn load_group(&self, id: GroupId, record: GroupRecord) -> Result<GroupState, ClientError> {
        let keys = Arc::new(GroupSecret::from_bytes(record.secret).epoch_keys(Epoch(record.epoch)));
        let store = &self.args.store;
        let outbox: BTreeMap<u64, OutboxEntry> = store.outbox(&id)?.into_iter().collect();
        let by_blob = outbox.iter().map(|(seq, e)| (e.blob_id, *seq)).collect();
        let (next_seq, last_hlc) = store.own_seq(&id)?;
        // Our own last timestamp goes through the same bound: a clock that was pinned far
        // ahead (before remote timestamps were bounded) recovers.
        let mut hlc = Hlc::new();
        hlc.observe(last_hlc, self.args.clock.now_unix_ms());
        Ok(GroupState {
            relays: parse_relays(&record),
            tracker: store.tracker(&id)?,
            record,
            keys,
            outbox,
            by_blob,
            next_seq,
            seq_base: store.seq_base(&id)?,
            hlc,
        })
    }

    fn quorum(&self, group: &GroupState) -> usize {
        self.args.ack_quorum.clamp(1, group.relays.len().max(1))
    }

    /// Make the connections match the groups' relay lists.
    async fn rewire(&mut self, myself: &ActorRef<CoordMsg>) {
        let mut wanted: HashMap<DeviceId, (RelayAddr, Vec<ConnGroup>)> = HashMap::new();
        for (id, group) in &self.groups {
            for relay in &group.relays {
                let cursor = self.args.store.cursor(id, &relay.id).unwrap_or(0);
                wanted
                    .entry(relay.id)
                    .or_insert_with(|| (relay.clone(), Vec::new()))
                    .1
                    .push(ConnGroup {
                        group: *id,
                        keys: Arc::clone(&group.keys),
                        cursor,
                        admission: group
                            .record
                            .admissions
                            .get(&relay.id.to_hex())
                            .cloned()
                            .map(AdmissionText),
                    });
            }
        }
        let gone: Vec<DeviceId> = self
            .conns
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(entry) = self.conns.remove(&id) {
                entry.actor.stop(Some("relay removed".into()));
            }
        }
        for (id, (addr, groups)) in wanted {
            if let Some(entry) = self.conns.get(&id) {
                if entry.addr == addr {
                    let _ = entry.actor.cast(RelayConnMsg::SetGroups(groups));
                    continue;
                }
                // The relay moved: dial the new address.
                if let Some(entry) = self.conns.remove(&id) {
                    entry.actor.stop(Some("relay removed".into()));
                }
            }
            let args = RelayConnArgs {
                relay: addr.clone(),
                dialer: Arc::clone(&self.args.dialer),
                groups,
                receive: self.args.receive,
                coordinator: myself.clone(),
                rng: self.args.rng.fork(),
            };
            match Actor::spawn_linked(None, RelayConnActor, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    self.conns.insert(
                        id,
                        ConnEntry {
                            addr,
                            actor,
                            is_up: false,
                        },
                    );
                }
                Err(err) => warn!(error = %err, "relay connection failed to start"),
            }
        }
    }

    fn send_push(&self, relay: &DeviceId, group: GroupId, seq: u64, entry: &OutboxEntry) {
        if let Some(conn) = self.conns.get(relay) {
            let _ = conn.actor.cast(RelayConnMsg::Push {
                group,
                seq,
                blob_id: entry.blob_id,
                ciphertext: Bytes::from(entry.ciphertext.clone()),
            });
        }
    }

    fn remember_receipt(&mut self, blob_id: BlobId, acked_by: Vec<DeviceId>) {
        if self.recent.insert(blob_id, acked_by).is_none() {
            self.recent_order.push_back(blob_id);
        }
        while self.recent_order.len() > RECENT_RECEIPTS_MAX {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    fn acked_by(&self, group: &GroupId, blob_id: &BlobId) -> Option<Vec<DeviceId>> {
        if let Some(state) = self.groups.get(group)
            && let Some(seq) = state.by_blob.get(blob_id)
            && let Some(entry) = state.outbox.get(seq)
        {
            return Some(entry.acked_by.clone());
        }
        self.recent.get(blob_id).cloned()
    }

    fn answer_waiters(&mut self, blob_id: &BlobId, acked_by: &[DeviceId], needed: usize) {
        if acked_by.len() < needed {
            return;
        }
        if let Some(waiters) = self.waiters.remove(blob_id) {
            for waiter in waiters {
                let _ = waiter.send(Receipt {
                    blob_id: *blob_id,
                    acked_by: acked_by.to_vec(),
                });
            }
        }
    }

    async fn on_acked(
        &mut self,
        relay: DeviceId,
        group: GroupId,
        seq: u64,
    ) -> Result<(), ClientError> {
        let Some(state) = self.groups.get_mut(&group) else {
            return Ok(());
        };
        let Some(entry) = state.outbox.get_mut(&seq) else {
            return Ok(());
        };
        if !entry.acked_by.contains(&relay) {
            entry.acked_by.push(relay);
        }
        let entry = entry.clone();
        let all: Vec<DeviceId> = state.relays.iter().map(|r| r.id).collect();
        let done = self.args.store.ack(&group, seq, &entry, &all)?;
        if done && let Some(state) = self.groups.get_mut(&group) {
            state.outbox.remove(&seq);
            state.by_blob.remove(&entry.blob_id);
            self.remember_receipt(entry.blob_id, entry.acked_by.clone());
        }
        let needed = self.groups.get(&group).map_or(1, |g| self.quorum(g));
        self.answer_waiters(&entry.blob_id, &entry.acked_by, needed);
        Ok(())
    }

    /// Queue a relay's items for delivery and deliver what the app has room for.
    async fn on_items(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        relay: DeviceId,
        group: GroupId,
        items: Vec<zerok_messages::Item>,
        upto: u64,
    ) -> Result<(), ClientError> {
        if !self.groups.contains_key(&group) {
            return Ok(());
        }
        if !self.backlog.is_empty() && self.backlog_items + items.len() > self.args.backlog_max {
            // The app is not reading: stop taking this relay's items for the group. Its
            // connection rewinds to what is persisted and waits until the backlog drained
            // (a batch is always taken when the backlog is empty, so it drains and resumes).
            let to = self.args.store.cursor(&group, &relay)?;
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Pause {
                    group,
                    rewind_to: to,
                });
                self.paused.insert((relay, group));
            }
            return Ok(());
        }
        self.backlog_items += items.len();
        self.backlog.push_back(Backlog {
            relay,
            group,
            items: items.into(),
            upto,
            batch: ReceivedBatch::default(),
        });
        self.drain(myself).await
    }

    /// Deliver backlog items while the event channel has room; never waits for the app. A
    /// batch's cursor is persisted once all its items were handed over.
    async fn drain(&mut self, myself: &ActorRef<CoordMsg>) -> Result<(), ClientError> {
        let events = self.args.events.clone();
        while let Some(mut front) = self.backlog.pop_front() {
            while let Some(item) = front.items.pop_front() {
                // Up to two events per item (a gap and the record).
                if !events.is_closed() && events.capacity() < 2 {
                    front.items.push_front(item);
                    // What was handed over so far is persisted now (not the cursor).
                    let partial = std::mem::take(&mut front.batch);
                    self.persist(front.group, partial).await?;
                    self.backlog.push_front(front);
                    self.wait_for_room(myself);
                    return Ok(());
                }
                self.backlog_items = self.backlog_items.saturating_sub(1);
                self.deliver(&events, front.relay, front.group, item, &mut front.batch)
                    .await?;
            }
            let mut batch = std::mem::take(&mut front.batch);
            batch.cursor = Some((front.relay, front.upto));
            self.persist(front.group, batch).await?;
        }
        // Everything delivered: barriers pass, paused connections may read again.
        for barrier in self.barriers.drain(..) {
            let _ = barrier.send(());
        }
        for (relay, group) in std::mem::take(&mut self.paused) {
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Resume { group });
            }
        }
        Ok(())
    }

    fn wait_for_room(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.is_waiting_for_room {
            return;
        }
        self.is_waiting_for_room = true;
        let events = self.args.events.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            if let Ok(permits) = events.reserve_many(2).await {
                drop(permits);
            }
            let _ = myself.cast(CoordMsg::EventRoom);
        });
    }

    async fn persist(
        &mut self,
        group: GroupId,
        mut batch: ReceivedBatch,
    ) -> Result<(), ClientError> {
        if batch.seen.is_empty() && batch.cursor.is_none() {
            return Ok(());
        }
        if !batch.seen.is_empty() {
            batch.tracker = self.groups.get(&group).map(|g| g.tracker.clone());
        }
        self.args.store.received(&group, &batch).await
    }

    /// Open, check and hand one item to the app (the channel has room for two events).
    async fn deliver(
        &mut self,
        events: &mpsc::Sender<Event>,
        relay: DeviceId,
        group: GroupId,
        item: zerok_messages::Item,
        batch: &mut ReceivedBatch,
    ) -> Result<(), ClientError> {
        if batch.seen.contains(&item.blob_id) || self.args.store.is_seen(&group, &item.blob_id)? {
            return Ok(());
        }
        let opened = ractor::call_t!(
            self.args.encryptor,
            |reply| EncryptorMsg::Open {
                group,
                blob_id: item.blob_id,
                envelope: item.ciphertext.clone(),
                reply,
            },
            10_000
        );
        let record = match opened {
            Ok(Ok(record)) => record,
            Ok(Err(err)) => {
                hand_over(
                    events,
                    Event::Undecryptable {
                        group,
                        relay,
                        blob_id: item.blob_id,
                        reason: err.to_string(),
                    },
                );
                return Ok(());
            }
            Err(err) => return Err(ClientError::Store(format!("encryptor: {err}"))),
        };
        let Some(state) = self.groups.get_mut(&group) else {
            return Ok(());
        };
        let verdict = state.tracker.observe(record.sender, record.seq);
        state.hlc.observe(record.hlc, self.args.clock.now_unix_ms());
        batch.seen.push(item.blob_id);
        match verdict {
            SeqVerdict::Replay => {
                debug!(sender = %record.sender.short(), seq = record.seq, "replayed record dropped");
                return Ok(());
            }
            SeqVerdict::Gap { from, to } => hand_over(
                events,
                Event::GapDetected {
                    group,
                    sender: record.sender,
                    from,
                    to,
                },
            ),
            SeqVerdict::New => {}
        }
        hand_over(
            events,
            Event::Received {
                group,
                sender: record.sender,
                seq: record.seq,
                hlc: record.hlc,
                blob_id: item.blob_id,
                payload: record.payload,
            },
        );
        Ok(())
    }

    async fn emit(&self, event: Event) {
        if self.args.events.send(event).await.is_err() {
            debug!("the app dropped the event stream");
        }
    }

    fn schedule_retry(&mut self, myself: &ActorRef<CoordMsg>, after: Duration) {
        if !self.is_retry_scheduled {
            self.is_retry_scheduled = true;
            myself.send_after(after, || CoordMsg::RetryDue);
        }
    }

    async fn enqueue(
        &mut self,
        group: GroupId,
        payload: Vec<u8>,
    ) -> Result<(u64, BlobId), ClientError> {
        let Some(state) = self.groups.get_mut(&group) else {
            return Err(ClientError::UnknownGroup(group));
        };
        let seq = state.next_seq;
        let record_seq = seq.saturating_sub(state.seq_base);
        let hlc = state.hlc.tick(self.args.clock.now_unix_ms());
        let sealed = ractor::call_t!(
            self.args.encryptor,
            |reply| EncryptorMsg::Seal {
                group,
                seq: record_seq,
                hlc,
                payload,
                reply,
            },
            30_000
        )
        .map_err(|e| ClientError::Store(format!("encryptor: {e}")))?
        .map_err(ClientError::Invalid)?;
        let entry = OutboxEntry {
            blob_id: sealed.blob_id,
            ciphertext: sealed.envelope,
            acked_by: Vec::new(),
        };
        self.args.store.enqueue(&group, seq, hlc, &entry).await?;
        let Some(state) = self.groups.get_mut(&group) else {
            return Err(ClientError::UnknownGroup(group));
        };
        state.next_seq = seq + 1;
        state.outbox.insert(seq, entry.clone());
        state.by_blob.insert(entry.blob_id, seq);
        let relays: Vec<DeviceId> = state.relays.iter().map(|r| r.id).collect();
        for relay in relays {
            self.send_push(&relay, group, seq, &entry);
        }
        Ok((seq, entry.blob_id))
    }

    fn status(&self) -> Status {
        let mut groups: Vec<GroupStatus> = self
            .groups
            .iter()
            .map(|(id, g)| {
                let quorum = self.quorum(g);
                GroupStatus {
                    id: *id,
                    name: g.record.name.clone(),
                    relays: g
                        .relays
                        .iter()
                        .map(|addr| RelayStatus {
                            addr: addr.clone(),
                            connected: self.conns.get(&addr.id).is_some_and(|c| c.is_up),
                            cursor: self.args.store.cursor(id, &addr.id).unwrap_or(0),
                        })
                        .collect(),
                    outbox: g.outbox.len(),
                    unacked: g
                        .outbox
                        .values()
                        .filter(|e| e.acked_by.len() < quorum)
                        .count(),
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Status {
            device_id: self.args.dialer.local_id(),
            groups,
        }
    }
}

/// Queue an event for the app; the caller made sure there is room. A closed stream (the app
/// dropped it) swallows events.
fn hand_over(events: &mpsc::Sender<Event>, event: Event) {
    if let Err(err) = events.try_send(event) {
        debug!(error = %err, "event not handed over");
    }
}

/// A relay's batch of items not yet fully handed to the app.
struct Backlog {
    relay: DeviceId,
    group: GroupId,
    items: VecDeque<zerok_messages::Item>,
    upto: u64,
    batch: ReceivedBatch,
}

impl Actor for CoordinatorActor {
    type Msg = CoordMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CoordinatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = CoordinatorState {
            args,
            groups: HashMap::new(),
            conns: HashMap::new(),
            waiters: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            refused: HashSet::new(),
            is_retry_scheduled: false,
            backlog: VecDeque::new(),
            backlog_items: 0,
            is_waiting_for_room: false,
            paused: HashSet::new(),
            barriers: Vec::new(),
        };
        for (id, record) in state.args.store.groups()? {
            let group = state.load_group(id, record)?;
            state.args.encryptor.cast(EncryptorMsg::SetGroup {
                group: id,
                keys: Arc::clone(&group.keys),
            })?;
            state.groups.insert(id, group);
        }
        state.rewire(&myself).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordMsg::Relay(event) => match event {
                RelayEvent::Up { relay } => {
                    if let Some(conn) = state.conns.get_mut(&relay) {
                        conn.is_up = true;
                    }
                    state.emit(Event::RelayUp { relay }).await;
                }
                RelayEvent::Down { relay, reason } => {
                    let was_up = state.conns.get(&relay).is_some_and(|c| c.is_up);
                    if let Some(conn) = state.conns.get_mut(&relay) {
                        conn.is_up = false;
                    }
                    if was_up {
                        state.emit(Event::RelayDown { relay, reason }).await;
                    }
                }
                RelayEvent::Joined { relay, group } => {
                    // (Re)send everything this relay has not acked, in push order; the
                    // connection takes new pushes for the group only after this.
                    if let Some(g) = state.groups.get(&group)
                        && let Some(conn) = state.conns.get(&relay)
                    {
                        let entries = g
                            .outbox
                            .iter()
                            .filter(|(_, e)| !e.acked_by.contains(&relay))
                            .map(|(seq, e)| (*seq, e.blob_id, Bytes::from(e.ciphertext.clone())))
                            .collect();
                        let _ = conn.actor.cast(RelayConnMsg::Resend { group, entries });
                    }
                }
                RelayEvent::Acked { relay, group, seq } => {
                    state.refused.remove(&(relay, group, seq));
                    state.on_acked(relay, group, seq).await?;
                }
                RelayEvent::PushRefused {
                    relay,
                    group,
                    seq,
                    code,
                    retry_after_ms,
                } => {
                    debug!(relay = %relay.short(), code = code.as_str(), "push refused, will retry");
                    state.refused.insert((relay, group, seq));
                    let after = retry_after_ms.map_or(RETRY_DEFAULT, Duration::from_millis);
                    state.schedule_retry(&myself, after.min(Duration::from_secs(60)));
                }
                RelayEvent::Items {
                    relay,
                    group,
                    items,
                    upto,
                } => state.on_items(&myself, relay, group, items, upto).await?,
            },
            CoordMsg::Enqueue {
                group,
                payload,
                reply,
            } => {
                let _ = reply.send(state.enqueue(group, payload).await);
            }
            CoordMsg::WaitAcked {
                group,
                blob_id,
                reply,
            } => {
                let needed = state.groups.get(&group).map_or(1, |g| state.quorum(g));
                match state.acked_by(&group, &blob_id) {
                    Some(acked_by) if acked_by.len() >= needed => {
                        let _ = reply.send(Receipt { blob_id, acked_by });
                    }
                    _ => state.waiters.entry(blob_id).or_default().push(reply),
                }
            }
            CoordMsg::AckState {
                group,
                blob_id,
                reply,
            } => {
                let needed = state.groups.get(&group).map_or(1, |g| state.quorum(g));
                let _ = reply.send((state.acked_by(&group, &blob_id).unwrap_or_default(), needed));
            }
            CoordMsg::SyncNow { group, reply } => {
                let relays: Vec<(DeviceId, ActorRef<RelayConnMsg>)> = state
                    .groups
                    .get(&group)
                    .map(|g| {
                        g.relays
                            .iter()
                            .filter_map(|r| state.conns.get(&r.id).map(|c| (r.id, c.actor.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                let coordinator = myself.clone();
                tokio::spawn(async move {
                    let mut report = SyncReport::default();
                    let calls = relays.into_iter().map(|(id, conn)| async move {
                        let result = ractor::call_t!(
                            conn,
                            |reply| RelayConnMsg::SyncNow { group, reply },
                            SYNC_TIMEOUT.as_millis() as u64
                        );
                        (id, result)
                    });
                    for (id, result) in futures::future::join_all(calls).await {
                        match result {
                            Ok(Ok(())) => report.synced.push(id),
                            Ok(Err(reason)) => report.failed.push((id, reason)),
                            Err(err) => report.failed.push((id, err.to_string())),
                        }
                    }
                    // Items cast before the relays answered are handled before the barrier.
                    let _ =
                        ractor::call_t!(coordinator, |reply| CoordMsg::Barrier { reply }, 60_000);
                    let _ = reply.send(report);
                });
            }
            CoordMsg::Barrier { reply } => {
                // Answered once everything received before it is in the app's hands.
                if state.backlog.is_empty() {
                    let _ = reply.send(());
                } else {
                    state.barriers.push(reply);
                }
            }
            CoordMsg::EventRoom => {
                state.is_waiting_for_room = false;
                state.drain(&myself).await?;
            }
            CoordMsg::Status { reply } => {
                let _ = reply.send(state.status());
            }
            CoordMsg::PutGroup { id, record, reply } => {
                let result = async {
                    state.args.store.put_group(&id, &record).await?;
                    let group = state.load_group(id, record)?;
                    state
                        .args
                        .encryptor
                        .cast(EncryptorMsg::SetGroup {
                            group: id,
                            keys: Arc::clone(&group.keys),
                        })
                        .map_err(|e| ClientError::Store(e.to_string()))?;
                    state.groups.insert(id, group);
                    Ok(())
                }
                .await;
                if result.is_ok() {
                    state.rewire(&myself).await;
                }
                let _ = reply.send(result);
            }
            CoordMsg::GetGroup { id, reply } => {
                let _ = reply.send(state.groups.get(&id).map(|g| g.record.clone()));
            }
            CoordMsg::RetryDue => {
                state.is_retry_scheduled = false;
                let refused: Vec<_> = state.refused.drain().collect();
                for (relay, group, seq) in refused {
                    if let Some(entry) = state.groups.get(&group).and_then(|g| g.outbox.get(&seq)) {
                        state.send_push(&relay, group, seq, entry);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((actor, reason)) = zerok_actors::supervision::ended(&event) else {
            return Ok(());
        };
        let dead = state
            .conns
            .iter()
            .find(|(_, c)| c.actor.get_id() == actor)
            .map(|(id, _)| *id);
        // A connection that was removed (or is stopping with the client) is not restarted.
        if let Some(id) = dead
            && reason != "relay removed"
        {
            warn!(relay = %id.short(), reason = %reason, "relay connection died; restarting it");
            state.conns.remove(&id);
            state.rewire(&myself).await;
        }
        Ok(())
    }
}

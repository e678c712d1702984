//! SyncCoordinator: the client's hub (DESIGN.md §2, §6).
//!
//! - **Push**: seal (Encryptor) → outbox (LocalStore, durable) → every RelayConnection of
//!   the group, same blob id and bytes. Enqueues never wait in the coordinator: each takes
//!   its seq at once, is sealed with the others that arrived meanwhile (one batch at a time,
//!   in parallel on the cores), written with them in one atomic batch, and answered (and
//!   sent to relays) only once the store's group commit made it durable (`Durable`). A receipt completes when `ack_quorum` relays acked;
//!   the rest keep being retried (on reconnect, after a refusal's `retry_after_ms`). An entry
//!   leaves the outbox once every relay of the group acked it.
//! - **Receive**: items from any relay → dedupe by blob id → open (Encryptor: AEAD, blob id,
//!   signature; one batch at a time, in parallel on the cores, in arrival order) → per-sender
//!   seq check (replays dropped, gaps reported; own records dropped) → event to the app →
//!   then the relay's cursor and the seq state are applied together, once per batch, made
//!   durable by the next group commit (not waited for). Recent blob ids (own pushes and
//!   records taken) are remembered in a bounded [`SeenIds`], so duplicates are skipped before
//!   opening; the seq tracker drops any it no longer holds. Items
//!   that do not open are reported `Undecryptable` and not remembered, so an honest copy
//!   from another relay still gets through.
//! - It owns the RelayConnections (one per relay of any group) and the LocalStore.
//!
//! Bound: the event channel to the app is bounded; when the app does not read, received items
//! wait in a bounded backlog and relays are paused beyond it (see `on_items`).

use crate::client::local_store::{LocalStore, OutboxEntry, ReceivedBatch};
use crate::client::relay_connection::{RelayConnActor, RelayConnArgs};
use crate::client::seen::SeenIds;
use crate::clock::Clock;
use crate::crypto::envelope::{OpenError, OpenedRecord, PAYLOAD_BYTES_MAX, Sealed};
use crate::crypto::keys::EpochKeys;
use crate::crypto::seq::{Hlc, SeqTracker, SeqVerdict};
use crate::fault::FaultPlan;
use crate::link::Dialer;
use crate::rng::Rng;
use crate::supervision::{Restart, RestartPolicy, RestartTracker};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};
use zeroize::Zeroizing;
use zerok_messages::MailboxId;
use zerok_messages::client::{
    ClientError, Event, GroupId, GroupStatus, Receipt, RelayStatus, Status, SyncReport,
};
use zerok_messages::client::{ConnGroup, RelayConnMsg, RelayEvent};
use zerok_messages::client::{CoordMsg, EncryptorMsg, EpochSecret, MailboxSeed, ToOpen, ToSeal};
use zerok_messages::client::{Durable, GroupRecord, SealWaiter, ToOpenBatch};
use zerok_messages::wire::AdmissionText;
use zerok_messages::{BlobId, DeviceId, Epoch, RelayAddr};

/// How long a sync of one relay may take.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Receipts remembered after their entry left the outbox.
const RECENT_RECEIPTS_MAX: usize = 16_384;
/// Fallback retry delay after a refused push without a hint.
const RETRY_DEFAULT: Duration = Duration::from_secs(1);
/// Pushes of a group handed to one RelayConnection and not yet acked by it. The rest wait
/// in the outbox and are handed over as acks come back, so an app that enqueues faster
/// than a relay stores (or while it is away) does not also queue a copy of every record in
/// the connection. 1,024 × 1 KiB records is 2 MiB, eight times the connection's own window
/// of frames in flight, so it never runs dry while the relay keeps up.
pub const PUSHES_HANDED_MAX: usize = 1024;
/// Records sealed and written in one batch (whole app calls; one call may exceed it). Large
/// enough to keep both cores busy and share a flush; a batch is ~2 MiB of envelopes, held
/// three times on its way (payloads, envelopes, the store's write).
pub const SEAL_BATCH_RECORDS_MAX: usize = 1024;
/// Records one `enqueue_many` may carry: its records are sealed, written and flushed as one
/// batch, which the app waits for; 10,000 × 1 KiB is ~10 MiB and well under a second.
pub const ENQUEUE_MANY_RECORDS_MAX: usize = 10_000;

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
    /// How a RelayConnection that died is restarted (DESIGN.md §2).
    pub conn_restart: RestartPolicy,
    /// Faults to inject into the RelayConnections (none in production).
    pub faults: FaultPlan,
}

/// How the client restarts a RelayConnection that died: the shared standard policy. Past its
/// intensity the coordinator, the connection's supervisor, leaves that relay alone for the
/// policy's period (reported as `RelayDown`) and then tries it afresh; the other relays and
/// the client go on. Stopping the whole client because one relay's connection keeps failing
/// would turn one bad relay into an outage.
pub const CONN_RESTART_POLICY: RestartPolicy = RestartPolicy::STANDARD;

struct GroupState {
    /// Own pushes up to this seq are durable in the outbox (only they may go to relays).
    durable_seq: u64,
    /// What each relay's connection was handed of the outbox.
    sending: HashMap<DeviceId, SendWindow>,
    record: GroupRecord,
    /// The current epoch's secret, for the Encryptor (the coordinator opens nothing).
    secret: EpochSecret,
    /// The current epoch's mailbox and its signing seed, for the RelayConnections.
    mailbox: MailboxId,
    mailbox_seed: MailboxSeed,
    relays: Vec<RelayAddr>,
    tracker: SeqTracker,
    /// The outbox without its envelopes (they stay in the store until sent: memory does not
    /// grow with what is queued).
    outbox: BTreeMap<u64, Queued>,
    by_blob: HashMap<BlobId, u64>,
    next_seq: u64,
    /// Own records are sealed with `outbox seq - seq_base` (see `LocalStore::new_device_key`).
    seq_base: u64,
    hlc: Hlc,
}

/// A queued push, as the coordinator keeps it.
#[derive(Debug, Clone)]
struct Queued {
    blob_id: BlobId,
    acked_by: Vec<DeviceId>,
}

/// The outbox pushes handed to one relay's connection.
#[derive(Debug, Default, Clone, Copy)]
struct SendWindow {
    /// Every push up to this seq was handed over (or acked by this relay before).
    sent_upto: u64,
    /// Of those, how many this relay has not acked yet.
    unacked: usize,
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
    /// Records waiting for the seal in progress to finish.
    to_seal: Vec<ToSeal>,
    /// Their callers, in order.
    seal_waiters: Vec<SealWaiter>,
    /// A batch is with the Encryptor.
    is_sealing: bool,
    /// Answers due once the store made their writes durable, in ticket order.
    after_durable: VecDeque<(u64, AfterDurable)>,
    /// Received batches waiting for the batch being opened.
    to_open: Vec<ToOpenBatch>,
    /// A batch is with the Encryptor.
    is_opening: bool,
    /// This device (its own records coming back are dropped).
    own: DeviceId,
    /// Recent blob ids pushed or taken (bounded).
    seen: SeenIds,
    /// Relay up/down events the app's full channel did not take yet: the latest per relay
    /// (an up and a down in between coalesce), handed over before any record.
    link_events: Vec<(DeviceId, Event)>,
    /// Crash history of each relay's connection.
    conn_restarts: HashMap<DeviceId, RestartTracker>,
    /// Relays whose connection died and waits for its restart (`ConnRestartDue`).
    restarting: HashSet<DeviceId>,
}

/// What happens once a store ticket is durable.
enum AfterDurable {
    /// Records were enqueued: send them to the relays, answer the caller.
    Enqueued {
        pushes: Vec<(GroupId, u64)>,
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
        queued: Vec<(u64, BlobId)>,
    },
    /// A barrier passes.
    Barrier(RpcReplyPort<()>),
}

/// The current epoch's secret of a group, as the Encryptor takes it.
fn epoch_secret(record: &GroupRecord) -> EpochSecret {
    EpochSecret {
        epoch: Epoch(record.epoch),
        secret: Zeroizing::new(record.secret),
    }
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
        let secret = epoch_secret(&record);
        let keys = EpochKeys::from_secret(&secret);
        let store = &self.args.store;
        let outbox: BTreeMap<u64, Queued> = store
            .outbox(&id)?
            .into_iter()
            .map(|(seq, e)| {
                let queued = Queued {
                    blob_id: e.blob_id,
                    acked_by: e.acked_by,
                };
                (seq, queued)
            })
            .collect();
        let by_blob = outbox.iter().map(|(seq, e)| (e.blob_id, *seq)).collect();
        let (next_seq, last_hlc) = store.own_seq(&id)?;
        // Our own last timestamp goes through the same bound: a clock that was pinned far
        // ahead (before remote timestamps were bounded) recovers.
        let mut hlc = Hlc::new();
        hlc.observe(last_hlc, self.args.clock.now_unix_ms());
        Ok(GroupState {
            durable_seq: next_seq.saturating_sub(1),
            sending: HashMap::new(),
            relays: parse_relays(&record),
            tracker: store.tracker(&id)?,
            record,
            mailbox: keys.mailbox_id(),
            mailbox_seed: keys.mailbox_signer().seed(),
            secret,
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
                        mailbox: group.mailbox,
                        mailbox_seed: group.mailbox_seed.clone(),
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
            if self.restarting.contains(&id) {
                continue;
            }
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
                faults: self.args.faults.clone(),
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

    /// Hand `relay`'s connection the group's next durable pushes it has not acked, up to
    /// [`PUSHES_HANDED_MAX`] unacked, in push order.
    fn top_up(&mut self, relay: DeviceId, group: GroupId) {
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        let Some(conn) = self.conns.get(&relay) else {
            return;
        };
        let window = state.sending.entry(relay).or_default();
        if window.sent_upto >= state.durable_seq || window.unacked >= PUSHES_HANDED_MAX {
            return;
        }
        let mut handed = Vec::new();
        for (seq, queued) in state.outbox.range(window.sent_upto + 1..=state.durable_seq) {
            if window.unacked >= PUSHES_HANDED_MAX {
                break;
            }
            window.sent_upto = *seq;
            if queued.acked_by.contains(&relay) {
                continue;
            }
            window.unacked += 1;
            handed.push(*seq);
        }
        if window.unacked < PUSHES_HANDED_MAX {
            // Everything up to the durable end was looked at.
            window.sent_upto = state.durable_seq;
        }
        for seq in handed {
            self.hand_push(conn, group, seq);
        }
    }

    /// Hand the queued push `seq` (read from the outbox) to `conn`.
    fn hand_push(&self, conn: &ConnEntry, group: GroupId, seq: u64) {
        match self.args.store.outbox_entry(&group, seq) {
            Ok(Some(entry)) => {
                let _ = conn.actor.cast(RelayConnMsg::Push {
                    group,
                    seq,
                    blob_id: entry.blob_id,
                    ciphertext: Bytes::from(entry.ciphertext),
                });
            }
            Ok(None) => {}
            Err(err) => warn!(error = %err, "queued push unreadable"),
        }
    }

    /// Send the queued push `seq` to `relay` again (after a refusal).
    fn resend_push(&self, relay: &DeviceId, group: GroupId, seq: u64) {
        if let Some(conn) = self.conns.get(relay) {
            self.hand_push(conn, group, seq);
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
        let acked_by = entry.acked_by.clone();
        let blob_id = entry.blob_id;
        if let Some(window) = state.sending.get_mut(&relay)
            && seq <= window.sent_upto
        {
            window.unacked = window.unacked.saturating_sub(1);
        }
        let all: Vec<DeviceId> = state.relays.iter().map(|r| r.id).collect();
        let done = self.args.store.ack(&group, seq, &acked_by, &all)?;
        if done && let Some(state) = self.groups.get_mut(&group) {
            state.outbox.remove(&seq);
            state.by_blob.remove(&blob_id);
            self.remember_receipt(blob_id, acked_by.clone());
        }
        let needed = self.groups.get(&group).map_or(1, |g| self.quorum(g));
        self.answer_waiters(&blob_id, &acked_by, needed);
        self.top_up(relay, group);
        Ok(())
    }

    /// Queue a relay's items for opening, then delivery.
    fn on_items(
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
        if !self.is_receive_idle() && self.backlog_items + items.len() > self.args.backlog_max {
            // The app is not reading, or records arrive faster than they are opened: stop
            // taking this relay's items for the group. Its connection rewinds to what is
            // persisted and waits until the backlog drained (a batch is always taken when
            // nothing is waiting, so it drains and resumes). Items waiting to be opened
            // count: they are held in memory as much as those waiting for the app.
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
        let fresh: Vec<_> = items
            .into_iter()
            .filter(|item| !self.seen.contains(&item.blob_id))
            .collect();
        self.backlog_items += fresh.len();
        self.to_open.push(ToOpenBatch {
            relay,
            group,
            items: fresh,
            upto,
        });
        self.start_open(myself);
        Ok(())
    }

    /// Send what waits to be opened to the Encryptor, unless a batch is there already (it
    /// comes back as `Opened`, which starts the next).
    fn start_open(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.is_opening || self.to_open.is_empty() {
            return;
        }
        self.is_opening = true;
        let batches = std::mem::take(&mut self.to_open);
        let envelopes = batches
            .iter()
            .flat_map(|b| {
                b.items.iter().map(|item| ToOpen {
                    group: b.group,
                    blob_id: item.blob_id,
                    envelope: item.ciphertext.clone(),
                })
            })
            .collect();
        let expected: usize = batches.iter().map(|b| b.items.len()).sum();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.args.encryptor.cast(EncryptorMsg::OpenMany {
            envelopes,
            reply: tx.into(),
        });
        let myself = myself.clone();
        tokio::spawn(async move {
            // An Encryptor that died answers nothing (or not every item): the items are
            // opened again by its successor, not taken as undecryptable.
            let message = match rx.await {
                Ok(results) if results.len() == expected => CoordMsg::Opened { batches, results },
                _ => CoordMsg::OpenFailed { batches },
            };
            let _ = myself.cast(message);
        });
    }

    /// Opened items join the backlog in arrival order and are delivered.
    fn on_opened(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        batches: Vec<ToOpenBatch>,
        results: Vec<Result<OpenedRecord, OpenError>>,
    ) -> Result<(), ClientError> {
        self.is_opening = false;
        let mut results = results.into_iter();
        for batch in batches {
            let items = batch
                .items
                .into_iter()
                .map(|item| Received {
                    blob_id: item.blob_id,
                    opened: results.next().unwrap_or(Err(OpenError::Malformed)),
                })
                .collect();
            self.backlog.push_back(Backlog {
                relay: batch.relay,
                group: batch.group,
                items,
                upto: batch.upto,
            });
        }
        self.start_open(myself);
        self.drain(myself)
    }

    /// Nothing received is waiting to be opened or handed over.
    fn is_receive_idle(&self) -> bool {
        self.backlog.is_empty() && self.to_open.is_empty() && !self.is_opening
    }

    /// Answer `barrier` once everything applied so far is durable.
    fn pass_when_durable(&mut self, barrier: RpcReplyPort<()>) {
        let ticket = self.args.store.request_flush();
        self.after_durable
            .push_back((ticket, AfterDurable::Barrier(barrier)));
    }

    /// Deliver backlog items while the event channel has room; never waits for the app. A
    /// relay batch's cursor is persisted once all its items were handed over; what one call
    /// handed over is applied to the store once per group.
    fn drain(&mut self, myself: &ActorRef<CoordMsg>) -> Result<(), ClientError> {
        let events = self.args.events.clone();
        while !self.link_events.is_empty() {
            if !events.is_closed() && events.capacity() == 0 {
                self.wait_for_room(myself);
                return Ok(());
            }
            let (_, event) = self.link_events.remove(0);
            hand_over(&events, event);
        }
        let mut touched: BTreeMap<GroupId, ReceivedBatch> = BTreeMap::new();
        while let Some(mut front) = self.backlog.pop_front() {
            let batch = touched.entry(front.group).or_default();
            while let Some(item) = front.items.pop_front() {
                // Up to two events per item (a gap and the record).
                if !events.is_closed() && events.capacity() < 2 {
                    front.items.push_front(item);
                    // What was handed over so far is persisted now (not the cursor).
                    self.backlog.push_front(front);
                    for (group, batch) in touched {
                        self.persist(group, batch)?;
                    }
                    self.wait_for_room(myself);
                    return Ok(());
                }
                self.backlog_items = self.backlog_items.saturating_sub(1);
                self.deliver(&events, front.relay, front.group, item, batch);
            }
            batch.cursors.push((front.relay, front.upto));
        }
        for (group, batch) in touched {
            self.persist(group, batch)?;
        }
        // Everything delivered: barriers pass (once durable), paused connections may read
        // again.
        if self.is_receive_idle() {
            for barrier in std::mem::take(&mut self.barriers) {
                self.pass_when_durable(barrier);
            }
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

    /// Apply what received items changed. Nothing waits for it to be durable: sled's own
    /// periodic flush, the next group commit, a barrier or the stop make it so (the app
    /// already has the events; a crash before that hands the last ones over again, as a
    /// crash between hand-over and flush always could).
    fn persist(&mut self, group: GroupId, mut batch: ReceivedBatch) -> Result<(), ClientError> {
        if batch.observed == 0 && batch.cursors.is_empty() {
            return Ok(());
        }
        if batch.observed > 0 {
            batch.tracker = self.groups.get(&group).map(|g| g.tracker.clone());
        }
        // Connections parked at their pull-ahead bound go on.
        let delivered: BTreeMap<DeviceId, u64> = batch.cursors.iter().copied().collect();
        for (relay, upto) in delivered {
            if let Some(conn) = self.conns.get(&relay) {
                let _ = conn.actor.cast(RelayConnMsg::Delivered { group, upto });
            }
        }
        self.args.store.apply_received(&group, &batch)?;
        Ok(())
    }

    /// Open, check and hand one item to the app (the channel has room for two events).
    /// Check and hand one opened item to the app (the channel has room for two events).
    /// Duplicates (the same blob from another relay, or twice in a page) are dropped by the
    /// seen ids, and past them by the seq tracker.
    fn deliver(
        &mut self,
        events: &mpsc::Sender<Event>,
        relay: DeviceId,
        group: GroupId,
        item: Received,
        batch: &mut ReceivedBatch,
    ) {
        if self.seen.contains(&item.blob_id) {
            return;
        }
        let record = match item.opened {
            Ok(record) => record,
            Err(err) => {
                hand_over(
                    events,
                    Event::Undecryptable {
                        group,
                        relay,
                        blob_id: item.blob_id,
                        reason: err.to_string(),
                    },
                );
                return;
            }
        };
        if record.sender == self.own {
            // This device's own record, served back (its id was forgotten).
            self.seen.insert(item.blob_id);
            return;
        }
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        let verdict = state.tracker.observe(record.sender, record.seq);
        state.hlc.observe(record.hlc, self.args.clock.now_unix_ms());
        self.seen.insert(item.blob_id);
        batch.observed += 1;
        match verdict {
            SeqVerdict::Replay => {
                debug!(sender = %record.sender.short(), seq = record.seq, "replayed record dropped");
                return;
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
    }

    /// Tell the app a relay went up or down, never waiting for it: with room (and nothing
    /// older waiting) at once, else kept as the relay's latest state until the app reads.
    fn emit_link(&mut self, myself: &ActorRef<CoordMsg>, relay: DeviceId, event: Event) {
        let events = &self.args.events;
        if self.link_events.is_empty() && (events.is_closed() || events.capacity() > 0) {
            hand_over(events, event);
            return;
        }
        match self.link_events.iter_mut().find(|(r, _)| *r == relay) {
            Some(queued) => queued.1 = event,
            None => self.link_events.push((relay, event)),
        }
        self.wait_for_room(myself);
    }

    fn schedule_retry(&mut self, myself: &ActorRef<CoordMsg>, after: Duration) {
        if !self.is_retry_scheduled {
            self.is_retry_scheduled = true;
            myself.send_after(after, || CoordMsg::RetryDue);
        }
    }

    /// Take seqs for an app call's records and queue them for sealing; answered once they
    /// are sealed and durable (`on_sealed`, `on_durable`).
    fn enqueue(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        group: GroupId,
        payloads: Vec<Vec<u8>>,
        reply: RpcReplyPort<Result<Vec<(u64, BlobId)>, ClientError>>,
    ) {
        let refused = if payloads.len() > ENQUEUE_MANY_RECORDS_MAX {
            Some(ClientError::Invalid(format!(
                "{} records in one call; at most {ENQUEUE_MANY_RECORDS_MAX}",
                payloads.len()
            )))
        } else if let Some(large) = payloads.iter().find(|p| p.len() > PAYLOAD_BYTES_MAX) {
            // Checked here, before a seq is taken: a record that fails to seal later would
            // leave a gap in this device's seqs.
            Some(ClientError::Invalid(format!(
                "payload of {} bytes exceeds the record limit of {PAYLOAD_BYTES_MAX}",
                large.len()
            )))
        } else if !self.groups.contains_key(&group) {
            Some(ClientError::UnknownGroup(group))
        } else {
            None
        };
        if let Some(error) = refused {
            let _ = reply.send(Err(error));
            return;
        }
        if payloads.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        let now_ms = self.args.clock.now_unix_ms();
        let Some(state) = self.groups.get_mut(&group) else {
            return;
        };
        self.seal_waiters.push(SealWaiter {
            count: payloads.len(),
            reply,
        });
        for payload in payloads {
            let seq = state.next_seq;
            state.next_seq += 1;
            self.to_seal.push(ToSeal {
                group,
                seq: seq.saturating_sub(state.seq_base),
                hlc: state.hlc.tick(now_ms),
                payload,
            });
        }
        self.start_seal(myself);
    }

    /// Send what waits to be sealed to the Encryptor, unless a batch is there already (it
    /// comes back as `Sealed`, which starts the next).
    fn start_seal(&mut self, myself: &ActorRef<CoordMsg>) {
        if self.is_sealing || self.to_seal.is_empty() {
            return;
        }
        self.is_sealing = true;
        // Whole calls, until the batch holds SEAL_BATCH_RECORDS_MAX records (at least one).
        let mut take_waiters = 0;
        let mut take_records = 0;
        for waiter in &self.seal_waiters {
            if take_waiters > 0 && take_records + waiter.count > SEAL_BATCH_RECORDS_MAX {
                break;
            }
            take_waiters += 1;
            take_records += waiter.count;
        }
        let waiters: Vec<SealWaiter> = self.seal_waiters.drain(..take_waiters).collect();
        let records: Arc<Vec<ToSeal>> = Arc::new(self.to_seal.drain(..take_records).collect());
        // The outbox numbering: the record's seq plus the group's base.
        let numbered: Vec<(GroupId, u64, u64)> = records
            .iter()
            .map(|r| {
                let base = self.groups.get(&r.group).map_or(0, |g| g.seq_base);
                (r.group, r.seq + base, r.hlc)
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.args.encryptor.cast(EncryptorMsg::SealMany {
            records: Arc::clone(&records),
            reply: tx.into(),
        });
        let myself = myself.clone();
        tokio::spawn(async move {
            // An Encryptor that died answers nothing (or not every record): the batch is
            // sealed again by its successor, under the same seqs.
            let message = match rx.await {
                Ok(results) if results.len() == records.len() => CoordMsg::Sealed {
                    records: numbered,
                    results,
                    waiters,
                },
                _ => CoordMsg::SealFailed { records, waiters },
            };
            let _ = myself.cast(message);
        });
    }

    /// A sealed batch goes into the outbox (one atomic write per group) and waits for its
    /// flush.
    fn on_sealed(
        &mut self,
        myself: &ActorRef<CoordMsg>,
        records: Vec<(GroupId, u64, u64)>,
        results: Vec<Result<Sealed, String>>,
        waiters: Vec<SealWaiter>,
    ) {
        self.is_sealing = false;
        let mut results = results.into_iter();
        let mut by_group: BTreeMap<GroupId, Vec<(u64, u64, OutboxEntry)>> = BTreeMap::new();
        let mut outcomes: Vec<Result<(GroupId, u64, BlobId), ClientError>> = Vec::new();
        for (group, seq, hlc) in records {
            match results.next() {
                Some(Ok(sealed)) => {
                    let entry = OutboxEntry {
                        blob_id: sealed.blob_id,
                        ciphertext: sealed.envelope,
                        acked_by: Vec::new(),
                    };
                    outcomes.push(Ok((group, seq, entry.blob_id)));
                    // Its copy served back by this device's own subscription is skipped.
                    self.seen.insert(entry.blob_id);
                    by_group.entry(group).or_default().push((seq, hlc, entry));
                }
                Some(Err(reason)) => outcomes.push(Err(ClientError::Invalid(reason))),
                None => outcomes.push(Err(ClientError::Stopped)),
            }
        }
        let mut ticket = Ok(0);
        for (group, entries) in by_group {
            let written = self.args.store.enqueue_many(&group, &entries);
            match written {
                Ok(t) => {
                    if let Some(state) = self.groups.get_mut(&group) {
                        for (seq, _, entry) in entries {
                            state.by_blob.insert(entry.blob_id, seq);
                            let queued = Queued {
                                blob_id: entry.blob_id,
                                acked_by: entry.acked_by,
                            };
                            state.outbox.insert(seq, queued);
                        }
                    }
                    if let Ok(max) = ticket.as_mut() {
                        *max = t;
                    }
                }
                Err(err) => ticket = Err(err),
            }
        }
        let mut outcomes = outcomes.into_iter();
        for waiter in waiters {
            let mine: Vec<_> = outcomes.by_ref().take(waiter.count).collect();
            let result: Result<Vec<(GroupId, u64, BlobId)>, ClientError> =
                mine.into_iter().collect();
            match (result, &ticket) {
                (Ok(queued), Ok(ticket)) => self.after_durable.push_back((
                    *ticket,
                    AfterDurable::Enqueued {
                        pushes: queued.iter().map(|(g, seq, _)| (*g, *seq)).collect(),
                        queued: queued.iter().map(|(_, seq, id)| (*seq, *id)).collect(),
                        reply: waiter.reply,
                    },
                )),
                (Err(err), _) => {
                    let _ = waiter.reply.send(Err(err));
                }
                (_, Err(err)) => {
                    let _ = waiter.reply.send(Err(ClientError::Store(err.to_string())));
                }
            }
        }
        self.start_seal(myself);
    }

    /// The store made everything up to `durable.through` durable: answer and send what
    /// waited for it, in order.
    fn on_durable(&mut self, durable: Durable) {
        let mut touched = std::collections::BTreeSet::new();
        while let Some((ticket, _)) = self.after_durable.front() {
            let failed = durable.error.clone().filter(|_| *ticket > durable.through);
            if *ticket > durable.through && failed.is_none() {
                break;
            }
            let Some((_, action)) = self.after_durable.pop_front() else {
                break;
            };
            match (action, failed) {
                (AfterDurable::Enqueued { reply, .. }, Some(error)) => {
                    let _ = reply.send(Err(ClientError::Store(format!("flush failed: {error}"))));
                }
                (AfterDurable::Barrier(reply), Some(_)) => drop(reply),
                (
                    AfterDurable::Enqueued {
                        pushes,
                        reply,
                        queued,
                    },
                    None,
                ) => {
                    for (group, seq) in pushes {
                        if let Some(state) = self.groups.get_mut(&group) {
                            state.durable_seq = state.durable_seq.max(seq);
                            touched.insert(group);
                        }
                    }
                    let _ = reply.send(Ok(queued));
                }
                (AfterDurable::Barrier(reply), None) => {
                    let _ = reply.send(());
                }
            }
        }
        // Newly durable pushes go to every relay of their group, within its window.
        for group in touched {
            let relays: Vec<DeviceId> = self
                .groups
                .get(&group)
                .map(|g| g.relays.iter().map(|r| r.id).collect())
                .unwrap_or_default();
            for relay in relays {
                self.top_up(relay, group);
            }
        }
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
                    seen_ids: self.seen.len() as u64,
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

/// An item after opening.
struct Received {
    blob_id: BlobId,
    opened: Result<OpenedRecord, OpenError>,
}

/// A relay's batch of items not yet fully handed to the app.
struct Backlog {
    relay: DeviceId,
    group: GroupId,
    items: VecDeque<Received>,
    upto: u64,
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
        let own = args.dialer.local_id();
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
            to_seal: Vec::new(),
            seal_waiters: Vec::new(),
            is_sealing: false,
            after_durable: VecDeque::new(),
            to_open: Vec::new(),
            is_opening: false,
            own,
            seen: SeenIds::default(),
            link_events: Vec::new(),
            conn_restarts: HashMap::new(),
            restarting: HashSet::new(),
        };
        // The store's group commit reports here; the task ends with the coordinator.
        let mut durable = state.args.store.watch_durable();
        let coordinator = myself.clone();
        tokio::spawn(async move {
            while durable.changed().await.is_ok() {
                let now = durable.borrow_and_update().clone();
                if coordinator.cast(CoordMsg::Durable(now)).is_err() {
                    return;
                }
            }
        });
        for (id, record) in state.args.store.groups()? {
            let group = state.load_group(id, record)?;
            state.args.encryptor.cast(EncryptorMsg::SetGroup {
                group: id,
                keys: group.secret.clone(),
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
                    state.emit_link(&myself, relay, Event::RelayUp { relay });
                }
                RelayEvent::Down { relay, reason } => {
                    let was_up = state.conns.get(&relay).is_some_and(|c| c.is_up);
                    if let Some(conn) = state.conns.get_mut(&relay) {
                        conn.is_up = false;
                    }
                    if was_up {
                        state.emit_link(&myself, relay, Event::RelayDown { relay, reason });
                    }
                }
                RelayEvent::Joined { relay, group } => {
                    // (Re)send what this relay has not acked, in push order, a window of
                    // it (the rest follows as acks come back); the connection takes new
                    // pushes for the group only after this. Only what is durable: the rest
                    // goes out once its flush completed.
                    if let Some(g) = state.groups.get_mut(&group)
                        && let Some(conn) = state.conns.get(&relay)
                    {
                        let seqs: Vec<u64> = g
                            .outbox
                            .range(..=g.durable_seq)
                            .filter(|(_, e)| !e.acked_by.contains(&relay))
                            .take(PUSHES_HANDED_MAX)
                            .map(|(seq, _)| *seq)
                            .collect();
                        let sent_upto = match seqs.last() {
                            Some(last) if seqs.len() == PUSHES_HANDED_MAX => *last,
                            _ => g.durable_seq,
                        };
                        g.sending.insert(
                            relay,
                            SendWindow {
                                sent_upto,
                                unacked: seqs.len(),
                            },
                        );
                        let mut entries: Vec<(u64, BlobId, Bytes)> = Vec::with_capacity(seqs.len());
                        for seq in seqs {
                            if let Some(entry) = state.args.store.outbox_entry(&group, seq)? {
                                entries.push((seq, entry.blob_id, Bytes::from(entry.ciphertext)));
                            }
                        }
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
                } => state.on_items(&myself, relay, group, items, upto)?,
            },
            CoordMsg::Enqueue {
                group,
                payloads,
                reply,
            } => state.enqueue(&myself, group, payloads, reply),
            CoordMsg::Sealed {
                records,
                results,
                waiters,
            } => state.on_sealed(&myself, records, results, waiters),
            CoordMsg::SealFailed { records, waiters } => {
                warn!(
                    records = records.len(),
                    "the Encryptor did not seal a batch; it is sealed again once the Encryptor is back"
                );
                state.is_sealing = false;
                let records = Arc::try_unwrap(records).unwrap_or_else(|shared| (*shared).clone());
                state.to_seal.splice(0..0, records);
                state.seal_waiters.splice(0..0, waiters);
            }
            CoordMsg::OpenFailed { mut batches } => {
                warn!(
                    batches = batches.len(),
                    "the Encryptor did not open a batch; it is opened again once the Encryptor is back"
                );
                state.is_opening = false;
                batches.append(&mut state.to_open);
                state.to_open = batches;
            }
            CoordMsg::EncryptorRestarted(encryptor) => {
                state.args.encryptor = encryptor;
                for (id, record) in state.args.store.groups()? {
                    state.args.encryptor.cast(EncryptorMsg::SetGroup {
                        group: id,
                        keys: epoch_secret(&record),
                    })?;
                }
                state.start_seal(&myself);
                state.start_open(&myself);
            }
            CoordMsg::Opened { batches, results } => {
                state.on_opened(&myself, batches, results)?;
            }
            CoordMsg::Durable(durable) => state.on_durable(durable),
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
                // Answered once everything received before it is in the app's hands, and
                // what that changed in the store is durable.
                if state.is_receive_idle() {
                    state.pass_when_durable(reply);
                } else {
                    state.barriers.push(reply);
                }
            }
            CoordMsg::ConnRestartDue { relay } => {
                if state.restarting.remove(&relay) {
                    state.rewire(&myself).await;
                }
            }
            CoordMsg::EventRoom => {
                state.is_waiting_for_room = false;
                state.drain(&myself)?;
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
                            keys: group.secret.clone(),
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
                    if state
                        .groups
                        .get(&group)
                        .is_some_and(|g| g.outbox.contains_key(&seq))
                    {
                        state.resend_push(&relay, group, seq);
                    }
                }
            }
        }
        Ok(())
    }

    /// Received state applied since the last flush is made durable before the store closes.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(err) = state.args.store.flush().await {
            warn!(error = %err, "local store not flushed at stop");
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((actor, reason)) = crate::supervision::ended(&event) else {
            return Ok(());
        };
        let dead = state
            .conns
            .iter()
            .find(|(_, c)| c.actor.get_id() == actor)
            .map(|(id, _)| *id);
        // A connection that was removed (or is stopping with the client) is not restarted.
        let Some(id) = dead.filter(|_| reason != "relay removed") else {
            return Ok(());
        };
        let was_up = state.conns.remove(&id).is_some_and(|c| c.is_up);
        let policy = state.args.conn_restart;
        let tracker = state
            .conn_restarts
            .entry(id)
            .or_insert_with(|| RestartTracker::new(policy));
        let delay = match tracker.on_crash(tokio::time::Instant::now(), &mut state.args.rng) {
            Restart::After(delay) => {
                warn!(relay = %id.short(), reason = %reason, delay_ms = delay.as_millis() as u64, "relay connection died; restarting it");
                delay
            }
            Restart::Escalate => {
                error!(relay = %id.short(), reason = %reason, restarts = policy.intensity, period_s = policy.period.as_secs(), "relay connection keeps dying; leaving this relay for a period");
                *tracker = RestartTracker::new(policy);
                policy.period
            }
        };
        if was_up {
            let reason = format!("connection failed: {reason}");
            state.emit_link(&myself, id, Event::RelayDown { relay: id, reason });
        }
        state.restarting.insert(id);
        myself.send_after(delay, move || CoordMsg::ConnRestartDue { relay: id });
        Ok(())
    }
}

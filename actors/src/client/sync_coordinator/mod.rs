//! SyncCoordinator: the client's hub (docs/DESIGN.md §2, §6).
//!
//! - **Push**: seal (Encryptor) → outbox (LocalStore, durable) → every RelayConnection of
//!   the group, same blob id and bytes. Enqueues never wait in the coordinator: each takes
//!   its seq at once, is sealed with the others that arrived meanwhile (one batch at a time,
//!   in parallel on the cores), written with them in one atomic batch, and answered (and
//!   sent to relays) only once the store's group commit made it durable (`Durable`). A
//!   receipt completes when `ack_quorum` relays acked; the rest keep being retried (on reconnect, after a refusal's `retry_after_ms`). An entry
//!   leaves the outbox once every relay of the group acked it.
//! - **Receive**: items from any relay → dedupe by blob id → open (Encryptor: AEAD, blob id,
//!   signature; one batch at a time, in parallel on the cores, in arrival order) → per-sender
//!   seq check (replays dropped, gaps reported; own records dropped) → event to the app →
//!   then the relay's cursor and the seq state are applied together, once per batch, made
//!   durable by the next group commit (not waited for). Recent blob ids (own pushes and
//!   records taken) are remembered in a bounded `SeenIds`, so duplicates are skipped before
//!   opening; the seq tracker drops any it no longer holds. Items
//!   that do not open are reported `Undecryptable` and not remembered, so an honest copy
//!   from another relay still gets through.
//! - It owns the RelayConnections (one per relay of any group) and the LocalStore.
//!
//! Bound: the event channel to the app is bounded; when the app does not read, received items
//! wait in a bounded backlog and relays are paused beyond it (see `on_items`), and relay
//! up/down events are coalesced per relay: the coordinator never waits for the app.
//!
//! One file per concern: [`outbox`] (the push path and receipts) over its pure core
//! [`queue`], [`inbox`] (the receive path) over its pure core [`delivery`], [`wiring`] (groups from the store, one connection per relay, status), [`durable`]
//! (what waits for the group commit: answers, barriers). This file holds the state, the
//! messages' dispatch and the supervision of the connections.

mod delivery;
mod durable;
mod epochs;
mod handle;
mod inbox;
mod membership;
mod outbox;
mod queue;
mod wiring;

use crate::client::local_store::{LocalStore, OutboxEntry, ReceivedBatch};
use crate::client::relay_connection::{RelayConnActor, RelayConnArgs};
use crate::clock::Clock;
use crate::crypto::envelope::{
    DeviceKey, OpenError, OpenedRecord, PAYLOAD_BYTES_MAX, RecordKind, SealError, Sealed,
};
use crate::crypto::keys::EpochKeys;
use crate::crypto::roster::Roster;
use crate::crypto::seq::{Hlc, SeqTracker};
use crate::crypto::wrap::WrapKey;
use crate::fault::FaultPlan;
use crate::link::Dialer;
use crate::rng::Rng;
use crate::supervision::{Restart, RestartPolicy, RestartTracker};
use bytes::Bytes;
use delivery::{Backlog, Delivery};
pub use handle::{CALL_TIMEOUT, Coordinator};
pub use inbox::EVENT_ROOM;
pub use membership::{ADMISSION_WAIT_ALL_RELAYS, INVITE_ITEMS_MAX, WATCHED_INVITES_MAX};
pub use queue::{Outbox, PUSHES_HANDED_MAX};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};
use zeroize::Zeroizing;
use zerok_messages::MailboxId;
use zerok_messages::client::{
    ClientError, Event, GroupId, GroupStatus, InvalidInput, Receipt, RelayStatus, Status,
    StoreError, SyncReport,
};
use zerok_messages::client::{ConnGroup, RECOVERY_REFRESH, RelayConnMsg, RelayEvent};
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
/// Records sealed and written in one batch (whole app calls; one call may exceed it). Large
/// enough to keep both cores busy and share a flush; a batch is ~2 MiB of envelopes, held
/// three times on its way (payloads, envelopes, the store's write).
pub const SEAL_BATCH_RECORDS_MAX: usize = 1024;

/// Own seqs a group's reservation reaches past its last sealed push; renewed when fewer than
/// [`SEAL_BATCH_RECORDS_MAX`] are left, so every push sealed in steady state may go to
/// relays while its own write is synced. A crash skips at most this many seqs.
pub const SEQS_RESERVED_AHEAD: u64 = 2 * SEAL_BATCH_RECORDS_MAX as u64;
/// Records one `enqueue_many` may carry: its records are sealed, written and flushed as one
/// batch, which the app waits for; 10,000 × 1 KiB is ~10 MiB and well under a second.
pub const ENQUEUE_MANY_RECORDS_MAX: usize = 10_000;

/// The coordinator's actor type.
pub struct CoordinatorActor;

/// What the coordinator needs.
pub struct CoordinatorArgs {
    /// The local store.
    pub store: LocalStore,
    /// This device's signing key: it signs what it posts in invite mailboxes (admissions).
    pub device: Arc<DeviceKey>,
    /// This device's wrap key: it opens the epoch secrets a rekey wraps to it.
    pub wrap: Arc<WrapKey>,
    /// The Encryptor.
    pub encryptor: ActorRef<EncryptorMsg>,
    /// Dials relays; `None`: relays are not reached at all (a client that only reads its
    /// home, such as `zerok status`: what it queues waits for the next one that is online).
    pub dialer: Option<Arc<dyn Dialer>>,
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
    outbox: Outbox,
    next_seq: u64,
    /// The end of the last seq reservation written (durable or not; see `LocalStore`'s doc).
    reserving: u64,
    /// Own records are sealed with `outbox seq - seq_base` (see `LocalStore::new_device_key`).
    seq_base: u64,
    hlc: Hlc,
    /// The group's roster (`None`: a group joined before rosters, whose senders are not
    /// checked).
    roster: Option<Roster>,
    /// Epochs this device left whose mailboxes it still reads.
    past: Vec<epochs::PastStream>,
    /// The move to the roster's head epoch, under way.
    switch: Option<epochs::Switch>,
    /// App enqueues waiting for that move (they are sealed in the new epoch).
    held: Vec<epochs::Held>,
}

struct ConnEntry {
    addr: RelayAddr,
    actor: ActorRef<RelayConnMsg>,
    is_up: bool,
}

/// Coordinator state.
pub struct CoordinatorState {
    args: CoordinatorArgs,
    groups: BTreeMap<GroupId, GroupState>,
    conns: BTreeMap<DeviceId, ConnEntry>,
    waiters: BTreeMap<BlobId, Vec<RpcReplyPort<Receipt>>>,
    recent: HashMap<BlobId, Vec<DeviceId>>,
    recent_order: VecDeque<BlobId>,
    /// Refused pushes waiting for their retry, resent in push order (relay, group, seq).
    refused: BTreeSet<(DeviceId, GroupId, u64)>,
    is_retry_scheduled: bool,
    /// The receive path's pure core: backlog, seen ids, relay states for the app.
    delivery: Delivery,
    is_waiting_for_room: bool,
    paused: BTreeSet<(DeviceId, GroupId)>,
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
    /// Crash history of each relay's connection.
    conn_restarts: BTreeMap<DeviceId, RestartTracker>,
    /// Relays whose connection died and waits for its restart (`ConnRestartDue`).
    restarting: HashSet<DeviceId>,
    /// Invite mailboxes this device meets others in, by `GroupId(mailbox)`.
    watches: BTreeMap<GroupId, membership::Watch>,
    /// The last watch's serial.
    watch_serial: u64,
    /// Admissions waiting until every relay acked their `Add`.
    admitting: Vec<membership::Admitting>,
    /// Past epochs' mailboxes (streams) → their group.
    streams: BTreeMap<GroupId, GroupId>,
    /// Blob ids of pushes sealed again in a new epoch → their new ids (bounded).
    resealed: epochs::Aliases,
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
    /// A seq reservation is durable: the group's pushes up to `through` may be sent before
    /// their own writes are.
    Reserved { group: GroupId, through: u64 },
    /// An admission whose `Add` every relay acked: posted once the `Add` is durable here
    /// too (a crash cannot make this device forget a device it admitted).
    Post { watch: GroupId, bytes: Vec<u8> },
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
        if args.events.max_capacity() < EVENT_ROOM {
            // An item can make two events; a smaller channel could never take it, and
            // waiting for room it cannot have would spin.
            return Err(format!(
                "the event channel holds {} events; the coordinator needs at least {EVENT_ROOM}",
                args.events.max_capacity()
            )
            .into());
        }
        let own = args.device.device_id();
        let mut state = CoordinatorState {
            args,
            groups: BTreeMap::new(),
            conns: BTreeMap::new(),
            waiters: BTreeMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            refused: BTreeSet::new(),
            is_retry_scheduled: false,
            delivery: Delivery::new(own),
            is_waiting_for_room: false,
            paused: BTreeSet::new(),
            barriers: Vec::new(),
            to_seal: Vec::new(),
            seal_waiters: Vec::new(),
            is_sealing: false,
            after_durable: VecDeque::new(),
            to_open: Vec::new(),
            is_opening: false,
            conn_restarts: BTreeMap::new(),
            restarting: HashSet::new(),
            watches: BTreeMap::new(),
            watch_serial: 0,
            admitting: Vec::new(),
            streams: BTreeMap::new(),
            resealed: epochs::Aliases::default(),
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
            state.groups.insert(id, group);
            state.register_keys(id)?;
        }
        state.index_streams();
        state.refresh_watches(&myself).await;
        state.follow_heads(&myself).await;
        state.rewire(&myself).await;
        if state.args.receive {
            myself.send_after(RECOVERY_REFRESH, || CoordMsg::RecoveryRefreshDue);
        }
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
                RelayEvent::Joined { relay, group } if state.watches.contains_key(&group) => {
                    state.on_watch_joined(relay, group);
                }
                RelayEvent::Joined { relay, group } if state.streams.contains_key(&group) => {
                    state.on_past_joined(relay, group)?;
                }
                RelayEvent::Joined { relay, group } => {
                    // (Re)send what this relay has not acked, in push order, a window of
                    // it (the rest follows as acks come back); the connection takes new
                    // pushes for the group only after this. Only what is durable: the rest
                    // goes out once its flush completed. Nothing while the group moves to
                    // a new epoch (its new mailbox is joined after).
                    if !state.must_hold(&group)
                        && let Some(g) = state.groups.get_mut(&group)
                        && let Some(conn) = state.conns.get(&relay)
                    {
                        let seqs = g.outbox.rewind(relay);
                        let mut entries: Vec<(u64, BlobId, Bytes)> = Vec::with_capacity(seqs.len());
                        for seq in seqs {
                            if let Some(entry) = state.args.store.outbox_entry(&group, seq)? {
                                // A roster operation of a left epoch goes to its mailbox.
                                if state.push_stream(group, &entry) == group {
                                    entries.push((
                                        seq,
                                        entry.blob_id,
                                        Bytes::from(entry.ciphertext),
                                    ));
                                }
                            }
                        }
                        let _ = conn.actor.cast(RelayConnMsg::Resend { group, entries });
                    }
                }
                RelayEvent::Acked { relay, group, seq } if state.watches.contains_key(&group) => {
                    state.refused.remove(&(relay, group, seq));
                    state.on_watch_acked(&myself, group, seq).await;
                }
                RelayEvent::Acked { relay, group, seq } => {
                    let group = state.group_of_stream(&group).unwrap_or(group);
                    state.refused.remove(&(relay, group, seq));
                    state.on_acked(&myself, relay, group, seq).await?;
                }
                RelayEvent::PushRefused {
                    relay,
                    group,
                    seq,
                    code,
                    retry_after_ms,
                } => {
                    debug!(relay = %relay.short(), code = code.as_str(), "push refused, will retry");
                    let group = state.group_of_stream(&group).unwrap_or(group);
                    state.refused.insert((relay, group, seq));
                    let after = retry_after_ms.map_or(RETRY_DEFAULT, Duration::from_millis);
                    state.schedule_retry(&myself, after.min(Duration::from_secs(60)));
                }
                RelayEvent::Items {
                    relay,
                    group,
                    mailbox,
                    items,
                    upto,
                } => state.on_items(&myself, relay, group, mailbox, items, upto)?,
            },
            CoordMsg::Enqueue {
                group,
                kind,
                payloads,
                reply,
            } => {
                if kind.is_system() {
                    // The roster's kinds are written by the coordinator alone.
                    let _ = reply.send(Err(InvalidInput::SystemKind(kind.0).into()));
                } else if state.must_hold(&group) {
                    // Sealed in the new epoch once the group moved to it.
                    state.hold(group, kind, payloads, reply);
                } else {
                    state.enqueue(&myself, group, kind, payloads, reply)
                }
            }
            CoordMsg::Sealed {
                records,
                results,
                waiters,
            } => {
                state.on_sealed(&myself, records, results, waiters);
                state.follow_heads(&myself).await;
            }
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
                let ids: Vec<GroupId> = state.groups.keys().copied().collect();
                for id in ids {
                    state.register_keys(id)?;
                }
                state.start_seal(&myself);
                state.start_open(&myself);
                state.follow_heads(&myself).await;
            }
            CoordMsg::Opened { batches, results } => {
                state.on_opened(&myself, batches, results)?;
            }
            CoordMsg::Durable(durable) => {
                let failed = durable.error.clone();
                state.on_durable(durable);
                if let Some(error) = failed {
                    // A failed journal sync is final for this open store (nothing written
                    // after it can be trusted to be durable): every later push would fail.
                    // The coordinator dies instead, which stops the client (its documented
                    // escalation); started again, it reopens the store from its journal.
                    return Err(format!("the local store cannot sync: {error}").into());
                }
            }
            CoordMsg::WaitAcked {
                group,
                blob_id,
                reply,
            } => {
                // A push sealed again in a new epoch is acked under its new id.
                let blob_id = state.resealed.resolve(blob_id);
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
                let blob_id = state.resealed.resolve(blob_id);
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
                            Ok(Err(reason)) => report.failed.push((id, reason.to_string())),
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
            CoordMsg::PutGroup {
                id,
                record,
                founder,
                reply,
            } => {
                let result = async {
                    if let Some(founder) = &founder {
                        state
                            .args
                            .store
                            .put_founder(&id, &membership::founder_member(founder))?;
                    }
                    state.args.store.put_group(&id, &record).await?;
                    let group = state.load_group(id, record)?;
                    state.groups.insert(id, group);
                    state.index_streams();
                    state.register_keys(id)
                }
                .await;
                if result.is_ok() {
                    state.refresh_watches(&myself).await;
                    state.rewire(&myself).await;
                }
                let _ = reply.send(result);
            }
            CoordMsg::Devices { group, reply } => {
                let _ = reply.send(state.devices(group));
            }
            CoordMsg::ContentAccess {
                group,
                mailbox,
                reply,
            } => {
                let _ = reply.send(state.content_access(group, mailbox));
            }
            CoordMsg::Invite {
                group,
                expires_at_ms,
                secret,
                reply,
            } => {
                state
                    .invite(&myself, group, expires_at_ms, secret, reply)
                    .await
            }
            CoordMsg::WatchPost { mailbox, bytes } => state.post(GroupId(mailbox), bytes),
            CoordMsg::WatchInvite(watch) => state.watch_invite(&myself, watch).await,
            CoordMsg::AdmissionPosted { mailbox, told } => state.admission_posted(mailbox, told),
            CoordMsg::UnwatchInvite { mailbox } => state.unwatch(&myself, mailbox).await,
            CoordMsg::UnwatchDue { mailbox, serial } => {
                state.unwatch_due(&myself, mailbox, serial).await;
            }
            CoordMsg::RosterChanged => {
                state.follow_heads(&myself).await;
                state.refresh_watches(&myself).await;
            }
            CoordMsg::RemoveDevice {
                group,
                device,
                reply,
            } => state.remove_device(&myself, group, device, reply),
            CoordMsg::AddRecovery {
                group,
                entry,
                wrap_key,
                mailbox_secret,
                reply,
            } => {
                state
                    .add_recovery(&myself, group, entry, wrap_key, mailbox_secret, reply)
                    .await
            }
            CoordMsg::WriteRosterOp { group, op, reply } => {
                state.write_roster_op(&myself, group, &op, reply)
            }
            CoordMsg::RecoveryRefreshDue => {
                state.keep_snapshots(true);
                myself.send_after(RECOVERY_REFRESH, || CoordMsg::RecoveryRefreshDue);
            }
            CoordMsg::Resealed {
                group,
                seqs,
                results,
            } => state.on_resealed(&myself, group, seqs, results).await?,
            CoordMsg::AdmissionDue { group, seq } => state.on_all_acked(group, seq),
            CoordMsg::GetGroup { id, reply } => {
                let _ = reply.send(state.groups.get(&id).map(|g| g.record.clone()));
            }
            CoordMsg::RetryDue => {
                state.is_retry_scheduled = false;
                let refused = std::mem::take(&mut state.refused);
                for (relay, group, seq) in refused {
                    if state.watches.contains_key(&group) {
                        // A post in an invite mailbox: all of them go again.
                        state.on_watch_joined(relay, group);
                        continue;
                    }
                    if state
                        .groups
                        .get(&group)
                        .is_some_and(|g| g.outbox.contains(seq))
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
        // Everything sealed is written: a reservation beyond it is released, so the next
        // start takes the next seq instead of skipping (only a crash skips).
        if let Err(err) = state.args.store.release_seqs() {
            warn!(error = %err, "seq reservation not released at stop");
        }
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

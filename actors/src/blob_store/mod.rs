//! BlobStore: the relay's durable item store on sled, under the Infra supervisor
//! (DESIGN.md §2, §5).
//!
//! Group commit: `Append`s from the routers queue in memory; the first one schedules a
//! `CommitDue` behind the messages already in the mailbox, so everything that arrived
//! meanwhile (up to [`StoreLimits::commit_max_items`]) goes into one atomic sled batch, one
//! flush (fsync), and then one `Stored` per router with its outcomes in request order. An
//! outcome is sent only after the flush returned: an ack means durable. A failed write or
//! flush answers the whole batch `Unavailable` (clients retry; appends are idempotent on blob
//! id) and the cached mailbox metas are dropped so they are re-read from disk.
//!
//! Reads never block commits: `Read` runs on the blocking pool over a clone of the db and
//! returns only items at or below the mailbox's durable cursor as the store knew it when the
//! read began, skipping expired ones. `Sweep` evicts expired items by the expiry index in a
//! bounded slice (the CleanupSweeper drives it). The sled `Db` belongs to the Infra
//! supervisor, so a restarted store reopens nothing and loses only un-acked pending pushes.

pub mod core;

use crate::clock::Clock;
use crate::fault::{FaultPlan, FaultPoint};
use crate::metrics::RelayMetrics;
use ::core::time::Duration;
use bytes::Bytes;
use core::{
    CommitPlan, EXPIRY_PREFIX, FORMAT_VERSION, META_PREFIX, MailboxMeta, StoreLimits, VERSION_KEY,
    Write,
};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::path::Path;
use tracing::{debug, error, warn};
use zerok_messages::relay::{
    AppendRequest, BlobStoreMsg, GroupRouterMsg, Page, StoreError, StoreOutcome, StoreStats,
    SweepReport,
};
use zerok_messages::{BlobId, Cursor, Item, MailboxId};

/// Ciphertext bytes the store may hold queued for the next commit; beyond it appends are
/// answered `Unavailable` at once (the disk is far behind; clients back off).
pub const PENDING_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled failed (permissions, corruption, locked by another process).
    #[error("cannot open the store at {path}: {source}")]
    Sled {
        /// The directory.
        path: String,
        /// The cause.
        source: sled::Error,
    },
    /// The directory holds a store of another format.
    #[error("the store at {path} has format {found:?}, this relay reads {FORMAT_VERSION:?}")]
    Format {
        /// The directory.
        path: String,
        /// The format found.
        found: String,
    },
}

/// Open (or create) the store's database in `dir`.
pub fn open_db(dir: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, OpenError> {
    let path = dir.display().to_string();
    let sled_err = |source| OpenError::Sled {
        path: path.clone(),
        source,
    };
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity_bytes)
        .open()
        .map_err(sled_err)?;
    match db.get(VERSION_KEY).map_err(sled_err)? {
        Some(found) if found.as_ref() != FORMAT_VERSION => {
            return Err(OpenError::Format {
                path,
                found: String::from_utf8_lossy(&found).into_owned(),
            });
        }
        Some(_) => {}
        None => {
            db.insert(VERSION_KEY, FORMAT_VERSION).map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
        }
    }
    Ok(db)
}

/// The store's actor type.
pub struct BlobStoreActor;

/// What a store needs.
pub struct BlobStoreArgs {
    /// The database, opened with [`open_db`] by the supervisor.
    pub db: sled::Db,
    /// Limits.
    pub limits: StoreLimits,
    /// Wall time for `stored_at` and expiry.
    pub clock: Clock,
    /// Fault injection.
    pub faults: FaultPlan,
    /// Metrics.
    pub metrics: RelayMetrics,
}

struct Pending {
    request: AppendRequest,
    reply_to: ActorRef<GroupRouterMsg>,
}

/// Store state.
pub struct BlobStoreState {
    db: sled::Db,
    limits: StoreLimits,
    clock: Clock,
    faults: FaultPlan,
    metrics: RelayMetrics,
    /// Metas as of the last durable commit (lazily loaded).
    metas: HashMap<MailboxId, MailboxMeta>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    is_commit_scheduled: bool,
    stats: StoreStats,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn load_meta(db: &sled::Db, mailbox: &MailboxId) -> Result<MailboxMeta, StoreError> {
    match db.get(core::meta_key(mailbox)).map_err(unavailable)? {
        Some(value) => MailboxMeta::decode(&value)
            .ok_or_else(|| StoreError::Unavailable("corrupt mailbox meta".into())),
        None => Ok(MailboxMeta::default()),
    }
}

/// Totals over every mailbox meta (at start, and after a failed commit).
fn load_totals(db: &sled::Db) -> Result<StoreStats, StoreError> {
    let mut stats = StoreStats::default();
    for entry in db.scan_prefix([META_PREFIX]) {
        let (_, value) = entry.map_err(unavailable)?;
        if let Some(meta) = MailboxMeta::decode(&value)
            && meta.count > 0
        {
            stats.mailboxes += 1;
            stats.items += meta.count;
            stats.bytes += meta.bytes;
        }
    }
    Ok(stats)
}

impl BlobStoreState {
    fn meta(&mut self, mailbox: &MailboxId) -> Result<MailboxMeta, StoreError> {
        if let Some(meta) = self.metas.get(mailbox) {
            return Ok(*meta);
        }
        let meta = load_meta(&self.db, mailbox)?;
        // Only mailboxes that exist are cached: joins and reads of mailboxes that never held
        // an item (anyone can mint a mailbox key) must not grow memory.
        if meta != MailboxMeta::default() {
            self.metas.insert(*mailbox, meta);
        }
        Ok(meta)
    }

    fn publish_gauges(&self) {
        self.metrics.items_stored.set(self.stats.items as i64);
        self.metrics.bytes_stored.set(self.stats.bytes as i64);
        self.metrics.mailboxes.set(self.stats.mailboxes as i64);
    }

    fn schedule_commit(&mut self, myself: &ActorRef<BlobStoreMsg>) {
        if !self.is_commit_scheduled {
            self.is_commit_scheduled = true;
            if let Err(err) = myself.send_message(BlobStoreMsg::CommitDue) {
                warn!(error = %err, "cannot schedule a commit");
                self.is_commit_scheduled = false;
            }
        }
    }

    /// One group commit of up to `commit_max_items` pending appends.
    async fn commit(&mut self, myself: &ActorRef<BlobStoreMsg>) {
        self.is_commit_scheduled = false;
        let take = self.pending.len().min(self.limits.commit_max_items.max(1));
        let batch: Vec<Pending> = self.pending.drain(..take).collect();
        if !self.pending.is_empty() {
            self.schedule_commit(myself);
        }
        if batch.is_empty() {
            return;
        }
        let bytes: usize = batch.iter().map(|p| p.request.ciphertext.len()).sum();
        self.pending_bytes = self.pending_bytes.saturating_sub(bytes);

        // Metas of the batch's mailboxes as of the last durable commit.
        let mut metas = HashMap::new();
        for pending in &batch {
            let mailbox = pending.request.mailbox;
            if let std::collections::hash_map::Entry::Vacant(slot) = metas.entry(mailbox) {
                match self.meta(&mailbox) {
                    Ok(meta) => {
                        slot.insert(meta);
                    }
                    Err(err) => {
                        self.answer_all(batch, &err);
                        return;
                    }
                }
            }
        }
        let requests: Vec<AppendRequest> = batch.iter().map(|p| p.request.clone()).collect();
        let db = self.db.clone();
        let limits = self.limits;
        let now_ms = self.clock.now_unix_ms();
        let faults = self.faults.clone();
        let started = tokio::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            write_batch(&db, &requests, now_ms, &limits, &metas, &faults)
        })
        .await
        .unwrap_or_else(|err| Err(unavailable(format!("commit task failed: {err}"))));
        self.metrics
            .flush_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        match result {
            Ok(plan) => {
                self.stats.commits += 1;
                self.stats.items += plan.new_items;
                self.stats.bytes += plan.new_bytes;
                self.stats.mailboxes += plan.new_mailboxes;
                self.metas.extend(plan.metas);
                self.publish_gauges();
                answer(
                    batch
                        .into_iter()
                        .zip(plan.outcomes)
                        .map(|(p, o)| (p.reply_to, p.request.token, o)),
                );
            }
            Err(err) => {
                warn!(error = %err, items = batch.len(), "group commit failed");
                self.metas.clear();
                if let Ok(stats) = load_totals(&self.db) {
                    self.stats = StoreStats {
                        commits: self.stats.commits,
                        ..stats
                    };
                    self.publish_gauges();
                }
                self.answer_all(batch, &err);
            }
        }
    }

    fn answer_all(&self, batch: Vec<Pending>, err: &StoreError) {
        answer(batch.into_iter().map(|p| {
            (
                p.reply_to,
                p.request.token,
                StoreOutcome::Rejected(err.clone()),
            )
        }));
    }

    async fn sweep(&mut self, max_items: u32) -> SweepReport {
        if self.faults.should_fail(FaultPoint::Sweep) {
            warn!("sweep failed (injected)");
            return SweepReport::default();
        }
        let db = self.db.clone();
        let now_ms = self.clock.now_unix_ms();
        let scanned = tokio::task::spawn_blocking(move || scan_expired(&db, now_ms, max_items))
            .await
            .unwrap_or_else(|err| Err(unavailable(err)));
        let (slice, more) = match scanned {
            Ok(found) => found,
            Err(err) => {
                warn!(error = %err, "sweep scan failed");
                return SweepReport::default();
            }
        };
        if slice.items.is_empty() && slice.removed.is_empty() {
            return SweepReport::default();
        }
        let mut batch = sled::Batch::default();
        for key in &slice.removed {
            batch.remove(key.as_slice());
        }
        if let Some((key, rest)) = &slice.rewritten {
            batch.insert(key.as_slice(), core::expiry_value(rest));
        }
        let mut metas: HashMap<MailboxId, MailboxMeta> = HashMap::new();
        let mut evicted = 0u64;
        let mut evicted_bytes = 0u64;
        for entry in &slice.items {
            let Some(size) = entry.size else { continue };
            let meta = match metas.get(&entry.mailbox) {
                Some(meta) => *meta,
                None => match self.meta(&entry.mailbox) {
                    Ok(meta) => meta,
                    Err(err) => {
                        warn!(error = %err, "sweep cannot read a meta");
                        return SweepReport::default();
                    }
                },
            };
            batch.remove(core::item_key(&entry.mailbox, entry.cursor).as_slice());
            if entry.owns_blob_key {
                batch.remove(core::blob_key(&entry.mailbox, &entry.blob_id).as_slice());
            }
            metas.insert(
                entry.mailbox,
                MailboxMeta {
                    latest: meta.latest,
                    bytes: meta.bytes.saturating_sub(size),
                    count: meta.count.saturating_sub(1),
                },
            );
            evicted += 1;
            evicted_bytes += size;
        }
        for (mailbox, meta) in &metas {
            batch.insert(core::meta_key(mailbox).as_slice(), meta.encode().as_slice());
        }
        // No flush: an eviction lost in a crash is simply done again after the restart.
        if let Err(err) = self.db.apply_batch(batch) {
            warn!(error = %err, "sweep write failed");
            self.metas.clear();
            return SweepReport::default();
        }
        let emptied = metas
            .iter()
            .filter(|(mailbox, meta)| {
                meta.count == 0 && self.metas.get(*mailbox).is_some_and(|old| old.count > 0)
            })
            .count() as u64;
        self.stats.items = self.stats.items.saturating_sub(evicted);
        self.stats.bytes = self.stats.bytes.saturating_sub(evicted_bytes);
        self.stats.mailboxes = self.stats.mailboxes.saturating_sub(emptied);
        self.metas.extend(metas);
        self.publish_gauges();
        debug!(evicted, "swept expired items");
        SweepReport { evicted, more }
    }
}

/// Outcomes for one router: `(token, outcome)` in request order.
type RouterOutcomes = (ActorRef<GroupRouterMsg>, Vec<(u64, StoreOutcome)>);

/// Send each router its outcomes, in request order.
fn answer(outcomes: impl Iterator<Item = (ActorRef<GroupRouterMsg>, u64, StoreOutcome)>) {
    let mut by_router: Vec<RouterOutcomes> = Vec::new();
    let mut index: HashMap<ActorId, usize> = HashMap::new();
    for (router, token, outcome) in outcomes {
        let slot = *index.entry(router.get_id()).or_insert_with(|| {
            by_router.push((router.clone(), Vec::new()));
            by_router.len() - 1
        });
        by_router[slot].1.push((token, outcome));
    }
    for (router, results) in by_router {
        if let Err(err) = router.cast(GroupRouterMsg::Stored { results }) {
            debug!(error = %err, "router gone before its outcomes arrived");
        }
    }
}

/// Plan, apply atomically and flush one group commit (on the blocking pool).
fn write_batch(
    db: &sled::Db,
    requests: &[AppendRequest],
    now_ms: u64,
    limits: &StoreLimits,
    metas: &HashMap<MailboxId, MailboxMeta>,
    faults: &FaultPlan,
) -> Result<CommitPlan, StoreError> {
    let plan = core::plan_commit(
        requests,
        now_ms,
        limits,
        |mailbox| {
            metas
                .get(mailbox)
                .copied()
                .map_or_else(|| load_meta(db, mailbox), Ok)
        },
        |mailbox, blob_id| {
            let value = db
                .get(core::blob_key(mailbox, blob_id))
                .map_err(unavailable)?;
            Ok(value.and_then(|v| core::parse_blob_value(&v)))
        },
    )?;
    if faults.should_fail(FaultPoint::BeforeStoreWrite) {
        return Err(StoreError::Unavailable("write failed (injected)".into()));
    }
    let mut batch = sled::Batch::default();
    for write in &plan.writes {
        match write {
            Write::Put(key, value) => batch.insert(key.as_slice(), value.as_slice()),
            Write::Remove(key) => batch.remove(key.as_slice()),
        }
    }
    db.apply_batch(batch).map_err(unavailable)?;
    if faults.should_fail(FaultPoint::BeforeFlush) {
        return Err(StoreError::Unavailable("flush failed (injected)".into()));
    }
    db.flush().map_err(unavailable)?;
    Ok(plan)
}

struct Expired {
    mailbox: MailboxId,
    cursor: u64,
    blob_id: BlobId,
    /// Ciphertext size; `None` when the item is already gone (stale index entry).
    size: Option<u64>,
    /// Whether the idempotency key still points at this item.
    owns_blob_key: bool,
}

/// What one sweep slice changes in the expiry index.
#[derive(Default)]
struct ExpiredSlice {
    items: Vec<Expired>,
    /// Index entries fully taken.
    removed: Vec<Vec<u8>>,
    /// An entry partly taken: its key and the cursors left in it.
    rewritten: Option<(Vec<u8>, Vec<u64>)>,
}

/// Up to `max_items` items due at `now_ms` by the expiry index, and whether more are due.
fn scan_expired(
    db: &sled::Db,
    now_ms: u64,
    max_items: u32,
) -> Result<(ExpiredSlice, bool), StoreError> {
    let budget = max_items.max(1) as usize;
    let end = core::expiry_key(now_ms, &MailboxId([0xff; 32]), u64::MAX);
    let mut slice = ExpiredSlice::default();
    for entry in db.range([EXPIRY_PREFIX].as_slice()..=end.as_slice()) {
        let (key, value) = entry.map_err(unavailable)?;
        if slice.items.len() >= budget {
            return Ok((slice, true));
        }
        let Some((_, mailbox, _)) = core::parse_expiry_key(&key) else {
            continue;
        };
        let mut cursors = core::parse_expiry_cursors(&value);
        let room = budget - slice.items.len();
        let rest = if cursors.len() > room {
            cursors.split_off(room)
        } else {
            Vec::new()
        };
        for cursor in cursors {
            slice.items.push(expired_item(db, mailbox, cursor)?);
        }
        if rest.is_empty() {
            slice.removed.push(key.to_vec());
        } else {
            slice.rewritten = Some((key.to_vec(), rest));
            return Ok((slice, true));
        }
    }
    Ok((slice, false))
}

fn expired_item(db: &sled::Db, mailbox: MailboxId, cursor: u64) -> Result<Expired, StoreError> {
    let item = db
        .get(core::item_key(&mailbox, cursor))
        .map_err(unavailable)?;
    let parsed = item
        .as_deref()
        .and_then(core::parse_item_value)
        .map(|v| (v.blob_id, v.ciphertext.len() as u64));
    let (blob_id, size) = match parsed {
        Some((blob_id, size)) => (blob_id, Some(size)),
        None => (BlobId([0; 32]), None),
    };
    let owns_blob_key = size.is_some()
        && db
            .get(core::blob_key(&mailbox, &blob_id))
            .map_err(unavailable)?
            .and_then(|v| core::parse_blob_value(&v))
            .is_some_and(|(owner, _)| owner == cursor);
    Ok(Expired {
        mailbox,
        cursor,
        blob_id,
        size,
        owns_blob_key,
    })
}

/// Read a page of durable, unexpired items (on the blocking pool).
fn read_page(
    db: &sled::Db,
    mailbox: &MailboxId,
    after: u64,
    durable: u64,
    max_items: u32,
    max_bytes: u32,
    now_ms: u64,
) -> Result<Page, StoreError> {
    let mut page = Page {
        items: Vec::new(),
        next: Cursor(after),
        has_more: false,
    };
    if after >= durable {
        return Ok(page);
    }
    let start = core::item_key(mailbox, after.saturating_add(1));
    let end = core::item_key(mailbox, durable);
    let mut bytes = 0usize;
    for entry in db.range(start.as_slice()..=end.as_slice()) {
        let (key, value) = entry.map_err(unavailable)?;
        let Some(cursor) = core::item_key_cursor(&key) else {
            continue;
        };
        let Some(item) = core::parse_item_value(&value) else {
            warn!(cursor, "skipping a corrupt item");
            page.next = Cursor(cursor);
            continue;
        };
        if item.expires_at_ms <= now_ms {
            page.next = Cursor(cursor);
            continue;
        }
        let is_full = page.items.len() >= max_items.max(1) as usize
            || (!page.items.is_empty() && bytes + item.ciphertext.len() > max_bytes as usize);
        if is_full {
            page.has_more = true;
            break;
        }
        bytes += item.ciphertext.len();
        page.next = Cursor(cursor);
        page.items.push(Item {
            cursor: Cursor(cursor),
            blob_id: item.blob_id,
            ciphertext: Bytes::copy_from_slice(item.ciphertext),
            stored_at_ms: item.stored_at_ms,
        });
    }
    Ok(page)
}

impl Actor for BlobStoreActor {
    type Msg = BlobStoreMsg;
    type State = BlobStoreState;
    type Arguments = BlobStoreArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BlobStoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let db = args.db.clone();
        let stats = tokio::task::spawn_blocking(move || load_totals(&db))
            .await
            .map_err(|err| format!("loading totals failed: {err}"))??;
        let state = BlobStoreState {
            db: args.db,
            limits: args.limits,
            clock: args.clock,
            faults: args.faults,
            metrics: args.metrics,
            metas: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            is_commit_scheduled: false,
            stats,
        };
        state.publish_gauges();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BlobStoreMsg::Append { requests, reply_to } => {
                let bytes: usize = requests.iter().map(|r| r.ciphertext.len()).sum();
                if state.pending_bytes + bytes > PENDING_BYTES_MAX {
                    let err = StoreError::Unavailable("store busy".into());
                    answer(requests.into_iter().map(|r| {
                        (
                            reply_to.clone(),
                            r.token,
                            StoreOutcome::Rejected(err.clone()),
                        )
                    }));
                    return Ok(());
                }
                state.pending_bytes += bytes;
                state
                    .pending
                    .extend(requests.into_iter().map(|request| Pending {
                        request,
                        reply_to: reply_to.clone(),
                    }));
                state.schedule_commit(&myself);
            }
            BlobStoreMsg::CommitDue => state.commit(&myself).await,
            BlobStoreMsg::Read {
                mailbox,
                after,
                max_items,
                max_bytes,
                reply,
            } => {
                let durable = match state.meta(&mailbox) {
                    Ok(meta) => meta.latest,
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        return Ok(());
                    }
                };
                let db = state.db.clone();
                let now_ms = state.clock.now_unix_ms();
                tokio::spawn(async move {
                    let page = tokio::task::spawn_blocking(move || {
                        read_page(
                            &db, &mailbox, after.0, durable, max_items, max_bytes, now_ms,
                        )
                    })
                    .await
                    .unwrap_or_else(|err| Err(unavailable(err)));
                    let _ = reply.send(page);
                });
            }
            BlobStoreMsg::GetLatest { mailbox, reply } => {
                let _ = reply.send(state.meta(&mailbox).map(|meta| Cursor(meta.latest)));
            }
            BlobStoreMsg::Sweep { max_items, reply } => {
                let report = state.sweep(max_items).await;
                let _ = reply.send(report);
            }
            BlobStoreMsg::GetStats { reply } => {
                let _ = reply.send(StoreStats {
                    cached_metas: state.metas.len() as u64,
                    ..state.stats
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !state.pending.is_empty() {
            let err = StoreError::Unavailable("store stopped".into());
            let batch = std::mem::take(&mut state.pending);
            state.answer_all(batch, &err);
        }
        if let Err(err) = state.db.flush_async().await {
            error!(error = %err, "final flush failed");
        }
        Ok(())
    }
}

/// How long callers should wait on the store before answering a client `Unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

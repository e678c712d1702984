//! BlobStore: the relay's durable item store, a segment log with an in-memory index
//! ([`segments::Store`]), under the Infra supervisor (DESIGN.md §2, §5; the change from sled
//! is in docs/DECISIONS.md).
//!
//! Group commit: `Append`s from the routers queue in memory; the first one schedules a
//! `CommitDue` behind the messages already in the mailbox, so everything that arrived
//! meanwhile (up to [`StoreLimits::commit_max_items`]) goes into one append and one
//! `fdatasync`, and then one `Stored` per router with its outcomes in request order. An
//! outcome is sent only after the `fdatasync` returned: an ack means durable. A failed write
//! answers the whole batch `Unavailable` (clients retry; appends are idempotent on blob id).
//!
//! Reads never wait for commits: `Read` runs on the blocking pool and sees only indexed, that
//! is durable, items, skipping expired ones. `Sweep` evicts expired items in a bounded slice
//! (the CleanupSweeper drives it) and gives back disk space by segments. Refusals for lack
//! of space (budget, disk floor, a full disk) are `StorageFull` with a retry hint, and the
//! `store_full` gauge says so (`/health` reads it). The [`Store`] belongs
//! to the Infra supervisor, so a restarted actor reopens nothing and loses only un-acked
//! pending pushes.

pub mod core;
pub mod durability;
pub mod fs;
pub mod segments;

use crate::clock::Clock;
use crate::fault::{FaultPlan, FaultPoint};
use crate::relay::metrics::RelayMetrics;
use ::core::time::Duration;
use core::StoreLimits;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
pub use segments::{OpenError, OpenReport, Store, StoreOptions};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{debug, warn};
use zerok_messages::relay::{
    AppendRequest, BlobStoreMsg, GroupRouterMsg, Page, StoreError, StoreOutcome, StoreStats,
    SweepReport,
};
use zerok_messages::{Cursor, MailboxId};

/// What the BlobStore actor needs of a storage engine: the segment log ([`Store`]) is the
/// relay's; `zerok-bench store` puts other engines behind it to compare them
/// (docs/DECISIONS.md). Calls block (file I/O); the actor runs them off its own thread.
pub trait ItemStore: Send + Sync + 'static {
    /// The relay-wide budget the store was opened with.
    fn budget(&self) -> core::StoreBudget;
    /// A mailbox's meta as of the last durable commit.
    fn meta(&self, mailbox: &MailboxId) -> core::MailboxMeta;
    /// Totals (without `commits`, which the actor counts).
    fn stats(&self) -> StoreStats;
    /// One group commit: durable before it returns `Ok`; an error stores nothing.
    fn commit(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
        limits: &StoreLimits,
        faults: &FaultPlan,
    ) -> Result<core::CommitPlan, StoreError>;
    /// A page of durable, unexpired items of `mailbox` after `after`.
    fn read_page(
        &self,
        mailbox: &MailboxId,
        after: u64,
        max_items: u32,
        max_bytes: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError>;
    /// Evict up to `max_items` expired items and give back space.
    fn sweep(&self, now_ms: u64, max_items: u32) -> Result<SweepReport, StoreError>;
    /// Mark the store closed cleanly (the relay's shutdown, after the last commit), so the
    /// next open tells damage in its last write from a torn one. Nothing by default.
    fn close(&self) {}
    /// Damaged records found since the store opened (a cheap read, done after every page).
    fn damaged_records(&self) -> u64 {
        0
    }
}

impl ItemStore for Store {
    fn budget(&self) -> core::StoreBudget {
        Store::budget(self)
    }
    fn meta(&self, mailbox: &MailboxId) -> core::MailboxMeta {
        Store::meta(self, mailbox)
    }
    fn stats(&self) -> StoreStats {
        Store::stats(self)
    }
    fn commit(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
        limits: &StoreLimits,
        faults: &FaultPlan,
    ) -> Result<core::CommitPlan, StoreError> {
        Store::commit(self, requests, now_ms, limits, faults)
    }
    fn read_page(
        &self,
        mailbox: &MailboxId,
        after: u64,
        max_items: u32,
        max_bytes: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        Store::read_page(self, mailbox, after, max_items, max_bytes, now_ms)
    }
    fn sweep(&self, now_ms: u64, max_items: u32) -> Result<SweepReport, StoreError> {
        Store::sweep(self, now_ms, max_items)
    }
    fn close(&self) {
        if let Err(err) = Store::close(self) {
            warn!(error = %err, "cannot mark the store closed");
        }
    }
    fn damaged_records(&self) -> u64 {
        Store::damaged_records(self)
    }
}

/// Ciphertext bytes the store may hold queued for the next commit; beyond it appends are
/// answered `Unavailable` at once (the disk is far behind; clients back off). 64 MiB is a
/// quarter of the 256 MiB a relay with default settings may use under attack (issue 10), and
/// still ~64 of the largest items or ~60,000 small ones per commit, more than a commit takes.
pub const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Pages read ahead at most at once, and their bytes (each counted at its page's byte limit):
/// what read-ahead may hold in memory, whoever pulls.
const READ_AHEAD_PAGES: usize = 32;
const READ_AHEAD_BYTES: usize = 8 * 1024 * 1024;
/// Pages of larger byte limits are not read ahead (a pull's default is 512 KiB).
const READ_AHEAD_PAGE_BYTES_MAX: u32 = 1024 * 1024;
/// A page read ahead and not asked for within this is dropped (its reader went away); it also
/// bounds how stale a page served from read-ahead can be (an item that expired since it was
/// read is served at most this long after its expiry).
const READ_AHEAD_TTL: Duration = Duration::from_secs(1);

/// Catch-up pulls page after page: after a page that has more, the next one is read at once,
/// so the store reads it while the network carries the page before, and the next pull finds it
/// ready (or being read). Bounded in pages and bytes; a commit drops its mailboxes' pages, so a
/// page read ahead never lacks an item that was stored after it was read.
#[derive(Default)]
struct ReadAhead {
    pages: Vec<AheadPage>,
}

/// One page read ahead: its read's key, and its result once read.
struct AheadPage {
    key: ReadKey,
    read_at: tokio::time::Instant,
    page: tokio::sync::watch::Receiver<Option<Result<Page, StoreError>>>,
}

/// (mailbox, after, max_items, max_bytes) of a read.
type ReadKey = (MailboxId, Cursor, u32, u32);

impl ReadAhead {
    fn take(&mut self, key: &ReadKey) -> Option<AheadPage> {
        let at = self.pages.iter().position(|p| p.key == *key)?;
        Some(self.pages.swap_remove(at))
    }

    /// Room for one more page of `max_bytes` (dropping expired ones first)?
    fn has_room(&mut self, max_bytes: u32) -> bool {
        let now = tokio::time::Instant::now();
        self.pages
            .retain(|p| now.duration_since(p.read_at) < READ_AHEAD_TTL);
        let held: usize = self.pages.iter().map(|p| p.key.3 as usize).sum();
        max_bytes <= READ_AHEAD_PAGE_BYTES_MAX
            && self.pages.len() < READ_AHEAD_PAGES
            && held.saturating_add(max_bytes as usize) <= READ_AHEAD_BYTES
    }

    fn forget_mailboxes(&mut self, mailboxes: &[MailboxId]) {
        if !self.pages.is_empty() {
            self.pages.retain(|p| !mailboxes.contains(&p.key.0));
        }
    }
}

/// Read one page on the blocking pool (publishing damage a read found).
async fn read_page(
    store: Arc<dyn ItemStore>,
    metrics: RelayMetrics,
    key: ReadKey,
    now_ms: u64,
) -> Result<Page, StoreError> {
    let (mailbox, after, max_items, max_bytes) = key;
    crate::exec::blocking(move || {
        let page = store.read_page(&mailbox, after.0, max_items, max_bytes, now_ms);
        // A read may have found damage: /metrics and /health say so at once.
        publish_damaged(&metrics, store.damaged_records());
        page
    })
    .await
    .unwrap_or_else(|err| Err(unavailable(err)))
}

/// The store's actor type.
pub struct BlobStoreActor;

/// What a store needs.
pub struct BlobStoreArgs {
    /// The store, opened with [`Store::open`] by the supervisor.
    pub store: Arc<dyn ItemStore>,
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
    store: Arc<dyn ItemStore>,
    limits: StoreLimits,
    clock: Clock,
    faults: FaultPlan,
    metrics: RelayMetrics,
    pending: Vec<Pending>,
    pending_bytes: usize,
    is_commit_scheduled: bool,
    commits: u64,
    read_ahead: Arc<std::sync::Mutex<ReadAhead>>,
}

/// A task of the store panicked or was cancelled: logged, answered generically.
fn unavailable(err: impl std::fmt::Display) -> StoreError {
    warn!(error = %err, "store task failed");
    StoreError::Unavailable("store task failed".into())
}

/// Bring the damage counter up to what the store has counted since it opened (found at
/// open, or by a read since).
fn publish_damaged(metrics: &RelayMetrics, damaged_records: u64) {
    // Reads publish from several threads at once: read and raise the counter as one step,
    // or two of them would both add the same difference.
    static PUBLISHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = zerok_messages::sync::lock(&PUBLISHING);
    let counted = metrics.store_damaged_records_total.get();
    if damaged_records > counted {
        metrics
            .store_damaged_records_total
            .inc_by(damaged_records - counted);
    }
}

/// A count as a gauge value (an unlimited budget, `u64::MAX`, shows as `i64::MAX`).
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl BlobStoreState {
    fn publish_gauges(&self) {
        let stats = self.store.stats();
        self.metrics.items_stored.set(stats.items as i64);
        self.metrics.bytes_stored.set(stats.bytes as i64);
        self.metrics.mailboxes.set(stats.mailboxes as i64);
        self.metrics.store_disk_bytes.set(stats.disk_bytes as i64);
        self.metrics.store_full.set(i64::from(stats.is_full));
        publish_damaged(&self.metrics, stats.damaged_records);
        self.metrics
            .store_charged_bytes
            .set(gauge_value(stats.charged_bytes));
        self.metrics
            .store_index_entries
            .set(gauge_value(stats.index_entries));
        self.metrics
            .store_free_disk_bytes
            .set(if stats.free_disk_bytes == u64::MAX {
                -1
            } else {
                gauge_value(stats.free_disk_bytes)
            });
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
        let requests: Vec<AppendRequest> = batch.iter().map(|p| p.request.clone()).collect();
        let mut mailboxes: Vec<MailboxId> = requests.iter().map(|r| r.mailbox).collect();
        mailboxes.sort_unstable();
        mailboxes.dedup();
        zerok_messages::sync::lock(&self.read_ahead).forget_mailboxes(&mailboxes);
        let store = self.store.clone();
        let limits = self.limits;
        let now_ms = self.clock.now_unix_ms();
        let faults = self.faults.clone();
        let started = tokio::time::Instant::now();
        let run = move || store.commit(&requests, now_ms, &limits, &faults);
        // On a multi-thread runtime (the relay) the commit runs right here and the runtime
        // moves this worker's other tasks to another thread: no hand-off to the blocking pool
        // and back on the push path. Elsewhere (single-threaded tests) it goes to the pool.
        let result = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(run)
        } else {
            crate::exec::blocking(run)
                .await
                .unwrap_or_else(|err| Err(unavailable(err)))
        };
        // And after: a page read ahead while this commit ran may lack its items.
        zerok_messages::sync::lock(&self.read_ahead).forget_mailboxes(&mailboxes);
        self.metrics
            .flush_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        match result {
            Ok(plan) => {
                self.commits += 1;
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
                self.publish_gauges();
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

impl Actor for BlobStoreActor {
    type Msg = BlobStoreMsg;
    type State = BlobStoreState;
    type Arguments = BlobStoreArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BlobStoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = BlobStoreState {
            store: args.store,
            limits: args.limits,
            clock: args.clock,
            faults: args.faults,
            metrics: args.metrics,
            pending: Vec::new(),
            pending_bytes: 0,
            is_commit_scheduled: false,
            commits: 0,
            read_ahead: Default::default(),
        };
        let budget = state.store.budget();
        let metrics = &state.metrics;
        metrics
            .store_charged_bytes_max
            .set(gauge_value(budget.bytes_max));
        metrics
            .store_index_entries_max
            .set(gauge_value(budget.index_entries_max));
        metrics
            .store_min_free_disk_bytes
            .set(gauge_value(budget.min_free_disk_bytes));
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
                let store = state.store.clone();
                let metrics = state.metrics.clone();
                let now_ms = state.clock.now_unix_ms();
                let key = (mailbox, after, max_items, max_bytes);
                let ahead = zerok_messages::sync::lock(&state.read_ahead).take(&key);
                let read_ahead = state.read_ahead.clone();
                let clock = state.clock.clone();
                tokio::spawn(async move {
                    let page = match ahead {
                        Some(mut ahead) => {
                            metrics.store_read_ahead_hits_total.inc();
                            let waited = ahead
                                .page
                                .wait_for(Option::is_some)
                                .await
                                .map(|page| page.clone());
                            match waited {
                                Ok(Some(Ok(page))) => Ok(page),
                                // No page (the read-ahead failed or ended): read now.
                                _ => read_page(store.clone(), metrics.clone(), key, now_ms).await,
                            }
                        }
                        None => read_page(store.clone(), metrics.clone(), key, now_ms).await,
                    };
                    let next = match &page {
                        Ok(page) if page.has_more => {
                            Some((mailbox, page.next, max_items, max_bytes))
                        }
                        _ => None,
                    };
                    let _ = reply.send(page);
                    if let Some(next) = next {
                        let (done, ready) = tokio::sync::watch::channel(None);
                        {
                            let mut ahead = zerok_messages::sync::lock(&read_ahead);
                            if !ahead.has_room(max_bytes) {
                                return;
                            }
                            ahead.pages.push(AheadPage {
                                key: next,
                                read_at: tokio::time::Instant::now(),
                                page: ready,
                            });
                        }
                        let page = read_page(store, metrics, next, clock.now_unix_ms()).await;
                        let _ = done.send(Some(page));
                    }
                });
            }
            BlobStoreMsg::GetLatest { mailbox, reply } => {
                let _ = reply.send(Ok(Cursor(state.store.meta(&mailbox).latest)));
            }
            BlobStoreMsg::Sweep { max_items, reply } => {
                let report = if state.faults.should_fail(FaultPoint::Sweep) {
                    warn!("sweep failed (injected)");
                    Default::default()
                } else {
                    let store = state.store.clone();
                    let now_ms = state.clock.now_unix_ms();
                    let swept = crate::exec::blocking(move || store.sweep(now_ms, max_items))
                        .await
                        .unwrap_or_else(|err| Err(unavailable(err)));
                    match swept {
                        Ok(report) => {
                            if report.evicted > 0 {
                                debug!(evicted = report.evicted, "swept expired items");
                            }
                            state.publish_gauges();
                            report
                        }
                        Err(err) => {
                            warn!(error = %err, "sweep failed");
                            Default::default()
                        }
                    }
                };
                let _ = reply.send(report);
            }
            BlobStoreMsg::GetStats { reply } => {
                let _ = reply.send(StoreStats {
                    commits: state.commits,
                    ..state.store.stats()
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
        Ok(())
    }
}

/// How long callers should wait on the store before answering a client `Unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

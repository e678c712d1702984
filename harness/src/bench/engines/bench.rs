//! `zerok-bench store`: the relay's segment log against fjall and redb behind the same
//! [`ItemStore`] interface (issue 11, docs/BENCHMARKS.md "Store engines").
//!
//! Every engine runs in fresh child processes (this binary again, with the hidden
//! `store-child` subcommand), so its memory and open time are its own:
//!
//! 1. `push`: 64 clients, one push of 1 KiB in flight each, through the real `BlobStoreActor`
//!    (group commit, an ack only once durable): acked pushes/s, push→ack p50 and p99.
//! 2. `populate`: a fresh store gets the catch-up mailbox's items, then N items spread over
//!    [`MAILBOXES`] mailboxes, in direct commits of [`POPULATE_BATCH`]; RSS before and after
//!    gives bytes per stored item; the directory's allocated blocks give disk bytes per item.
//!    The store is closed cleanly.
//! 3. `open`: a fresh process opens the populated store and reads one page (the store's part
//!    of "restart → /ready"), then a device catches up on the catch-up mailbox page by page
//!    through `BlobStoreMsg::Read` with the relay's default page limits. It then exits without
//!    closing the store, as a crash would leave it (the page cache survives, as after kill -9).
//! 4. `reopen`: a fresh process opens the store left that way and reads one page, and checks
//!    that every item is still there.
//!
//! The parent reports each candidate's figures with ratios against the `log` candidate of the
//! same run. Data lives in a temp dir under the system temp dir, removed after each engine.

use super::{FjallStore, RedbStore};
use crate::bench::stats::{Samples, ms};
use crate::bench::{BenchResult, Better};
use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zerok_actors::clock::Clock;
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::blob_store::core::StoreLimits;
use zerok_actors::relay::blob_store::segments::SEGMENT_BYTES_DEFAULT;
use zerok_actors::relay::blob_store::{BlobStoreActor, BlobStoreArgs, ItemStore, Store};
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_messages::relay::{AppendRequest, BlobStoreMsg, GroupRouterMsg, StoreOutcome};
use zerok_messages::{BlobId, Cursor, MailboxId};

/// Concurrent clients of the push phase, each with one push in flight (the figure).
pub const CLIENTS: usize = 64;
/// Ciphertext bytes of every item: a typical small record, as in the relay benches.
pub const ITEM_BYTES: usize = 1024;
/// Mailboxes the populated items are spread over: many groups, each with a backlog.
pub const MAILBOXES: u64 = 1_000;
/// Items per direct commit while populating: the actor's `commit_max_items` default.
pub const POPULATE_BATCH: usize = 4_096;
/// The mailbox a device catches up on.
const CATCHUP_MAILBOX: MailboxId = MailboxId([0xca; 32]);

/// The candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The relay's segment log with its in-memory index.
    Log,
    /// fjall 3: LSM tree, journal synced per commit, key-value separation.
    Fjall,
    /// redb 4: copy-on-write B-tree, `Durability::Immediate`.
    Redb,
}

impl Engine {
    /// All, the baseline first.
    pub const ALL: [Engine; 3] = [Engine::Log, Engine::Fjall, Engine::Redb];

    /// Its name in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Log => "log",
            Engine::Fjall => "fjall",
            Engine::Redb => "redb",
        }
    }

    /// Open (or create) its store in `dir`.
    pub fn open(self, dir: &Path) -> anyhow::Result<Arc<dyn ItemStore>> {
        Ok(match self {
            Engine::Log => Arc::new(Store::open(dir, SEGMENT_BYTES_DEFAULT)?),
            Engine::Fjall => Arc::new(FjallStore::open(dir)?),
            Engine::Redb => Arc::new(RedbStore::open(dir)?),
        })
    }
}

/// One child process's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Pushes/s and ack latency through the actor.
    Push,
    /// Fill a store; RSS and disk per item.
    Populate,
    /// Open a populated store, catch up, leave without closing.
    Open,
    /// Open a store left without closing.
    Reopen,
}

/// How much each phase does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Items spread over [`MAILBOXES`].
    pub items: u64,
    /// Items of the catch-up mailbox.
    pub catchup_items: u64,
    /// Seconds the push phase measures (after a warm-up of a fifth of it).
    pub push_seconds: f64,
}

impl Sizes {
    /// CI: well under a minute for all three engines.
    pub fn quick() -> Self {
        Self {
            items: 20_000,
            catchup_items: 10_000,
            push_seconds: 1.5,
        }
    }

    /// The sizes.
    pub fn full() -> Self {
        Self {
            items: 1_000_000,
            catchup_items: 100_000,
            push_seconds: 6.0,
        }
    }

    fn total(&self) -> u64 {
        self.items + self.catchup_items
    }
}

/// Limits that measure the engine, not a quota: no mailbox cap, no quota.
fn bench_limits() -> StoreLimits {
    StoreLimits {
        mailbox_quota_bytes: u64::MAX,
        mailbox_items_max: u64::MAX,
        ..StoreLimits::default()
    }
}

/// `ITEM_BYTES` of incompressible bytes, distinct per `seed` (splitmix64).
fn ciphertext(seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
    let mut body = Vec::with_capacity(ITEM_BYTES);
    while body.len() < ITEM_BYTES {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        body.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    body.truncate(ITEM_BYTES);
    Bytes::from(body)
}

fn append(token: u64, mailbox: MailboxId, seed: u64) -> AppendRequest {
    let ciphertext = ciphertext(seed);
    AppendRequest {
        token,
        mailbox,
        blob_id: BlobId::of_ciphertext(&ciphertext),
        ciphertext,
        ttl_secs: None,
    }
}

fn mailbox(n: u64, tag: u8) -> MailboxId {
    let mut id = [tag; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    MailboxId(id)
}

/// This process's resident memory, KiB.
fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))
}

/// Bytes of disk blocks allocated under `dir` (a presized, sparse segment counts what it
/// holds, not its length).
fn allocated_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            allocated_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// Forwards the store's answers to one client task.
struct AckForwarder;

impl Actor for AckForwarder {
    type Msg = GroupRouterMsg;
    type State = mpsc::UnboundedSender<Vec<(u64, StoreOutcome)>>;
    type Arguments = mpsc::UnboundedSender<Vec<(u64, StoreOutcome)>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        sender: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sender)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        sender: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let GroupRouterMsg::Stored { results } = message {
            let _ = sender.send(results);
        }
        Ok(())
    }
}

async fn spawn_store(store: Arc<dyn ItemStore>) -> anyhow::Result<ActorRef<BlobStoreMsg>> {
    let args = BlobStoreArgs {
        store,
        limits: bench_limits(),
        clock: Clock::system(),
        faults: FaultPlan::none(),
        metrics: RelayMetrics::new(),
    };
    let (actor, _) = Actor::spawn(None, BlobStoreActor, args).await?;
    Ok(actor)
}

fn figure(metric: &str, value: f64, unit: &str, better: Better) -> BenchResult {
    BenchResult::new("store", metric, value, unit, better)
}

/// One client of the push phase: pushes until `stop_at`; answers its samples (pushes started
/// after `measure_from` and acked by `stop_at`).
async fn push_client(
    actor: ActorRef<BlobStoreMsg>,
    client: u64,
    measure_from: Instant,
    stop_at: Instant,
) -> anyhow::Result<Samples> {
    let (sender, mut answers) = mpsc::unbounded_channel();
    let (forwarder, _) = Actor::spawn(None, AckForwarder, sender).await?;
    let mut samples = Samples::new();
    let target = mailbox(client, 0x70);
    let mut n = 0u64;
    loop {
        let started = Instant::now();
        if started >= stop_at {
            break;
        }
        let request = append(n, target, client << 40 | n);
        n += 1;
        actor.cast(BlobStoreMsg::Append {
            requests: vec![request],
            reply_to: forwarder.clone(),
        })?;
        let results = answers
            .recv()
            .await
            .ok_or_else(|| anyhow!("the store dropped a push"))?;
        let done = Instant::now();
        for (_, outcome) in results {
            if let StoreOutcome::Rejected(err) = outcome {
                bail!("push rejected: {err}");
            }
        }
        if started >= measure_from && done <= stop_at {
            samples.push(done - started);
        }
    }
    forwarder.stop(None);
    Ok(samples)
}

async fn push_phase(engine: Engine, dir: &Path, sizes: Sizes) -> anyhow::Result<Vec<BenchResult>> {
    let store = engine.open(dir)?;
    let actor = spawn_store(store).await?;
    let measured = Duration::from_secs_f64(sizes.push_seconds);
    let measure_from = Instant::now() + measured / 5;
    let stop_at = measure_from + measured;
    let tasks: Vec<_> = (0..CLIENTS as u64)
        .map(|c| tokio::spawn(push_client(actor.clone(), c, measure_from, stop_at)))
        .collect();
    let mut samples = Samples::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    actor.stop(None);
    Ok(vec![
        figure(
            "pushes_per_s",
            samples.len() as f64 / measured.as_secs_f64(),
            "1/s",
            Better::Higher,
        ),
        figure(
            "ack_p50_ms",
            ms(samples.percentile(50.0)),
            "ms",
            Better::Lower,
        ),
        figure(
            "ack_p99_ms",
            ms(samples.percentile(99.0)),
            "ms",
            Better::Lower,
        ),
    ])
}

/// Commit `requests` directly; every one must be stored anew.
fn commit_all(store: &dyn ItemStore, requests: &[AppendRequest]) -> anyhow::Result<()> {
    let now_ms = Clock::system().now_unix_ms();
    let plan = store
        .commit(requests, now_ms, &bench_limits(), &FaultPlan::none())
        .map_err(|err| anyhow!("commit failed: {err}"))?;
    for outcome in &plan.outcomes {
        match outcome {
            StoreOutcome::Stored {
                duplicate: false, ..
            } => {}
            other => bail!("populating: {other:?}"),
        }
    }
    Ok(())
}

fn populate_phase(engine: Engine, dir: &Path, sizes: Sizes) -> anyhow::Result<Vec<BenchResult>> {
    let store = engine.open(dir)?;
    let rss_open_kib = rss_kib()?;
    let started = Instant::now();
    let mut seed = 1u64 << 62;
    let mut batch = Vec::with_capacity(POPULATE_BATCH);
    for n in 0..sizes.catchup_items {
        batch.push(append(n, CATCHUP_MAILBOX, seed));
        seed += 1;
        if batch.len() == POPULATE_BATCH {
            commit_all(store.as_ref(), &batch)?;
            batch.clear();
        }
    }
    for n in 0..sizes.items {
        batch.push(append(n, mailbox(n % MAILBOXES, 0x3b), seed));
        seed += 1;
        if batch.len() == POPULATE_BATCH {
            commit_all(store.as_ref(), &batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        commit_all(store.as_ref(), &batch)?;
        batch.clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_full_kib = rss_kib()?;
    let stored = store.stats().items;
    if stored != sizes.total() {
        bail!("stored {stored} of {} items", sizes.total());
    }
    drop(store);
    let disk = allocated_bytes(dir)?;
    let total = sizes.total() as f64;
    Ok(vec![
        figure(
            "populate_items_per_s",
            total / seconds,
            "1/s",
            Better::Higher,
        ),
        figure(
            "rss_bytes_per_item",
            rss_full_kib.saturating_sub(rss_open_kib) as f64 * 1024.0 / total,
            "B",
            Better::Lower,
        ),
        figure(
            "rss_populated_mib",
            rss_full_kib as f64 / 1024.0,
            "MiB",
            Better::Lower,
        ),
        figure(
            "disk_bytes_per_item",
            disk as f64 / total,
            "B",
            Better::Lower,
        ),
    ])
}

/// Open the store in `dir` and read one page of the catch-up mailbox: seconds, and the store.
fn open_and_read(engine: Engine, dir: &Path) -> anyhow::Result<(f64, Arc<dyn ItemStore>)> {
    let limits = zerok_relay::config::LimitsConfig::default();
    let started = Instant::now();
    let store = engine.open(dir)?;
    let page = store
        .read_page(
            &CATCHUP_MAILBOX,
            0,
            limits.pull_items_max,
            limits.pull_bytes_max,
            Clock::system().now_unix_ms(),
        )
        .map_err(|err| anyhow!("reading a page: {err}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if page.items.is_empty() {
        bail!("the reopened store has no items");
    }
    Ok((seconds, store))
}

/// Read all of the catch-up mailbox through the actor, page by page: items/s.
async fn catch_up(actor: &ActorRef<BlobStoreMsg>, expected: u64) -> anyhow::Result<f64> {
    let limits = zerok_relay::config::LimitsConfig::default();
    let started = Instant::now();
    let mut after = Cursor(0);
    let mut count = 0u64;
    loop {
        let page = ractor::call!(actor, |reply| BlobStoreMsg::Read {
            mailbox: CATCHUP_MAILBOX,
            after,
            max_items: limits.pull_items_max,
            max_bytes: limits.pull_bytes_max,
            reply,
        })?
        .map_err(|err| anyhow!("read failed: {err}"))?;
        count += page.items.len() as u64;
        after = page.next;
        if !page.has_more {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if count != expected {
        bail!("caught up on {count} of {expected} items");
    }
    Ok(expected as f64 / seconds)
}

fn print_results(results: &[BenchResult]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for result in results {
        writeln!(out, "{}", serde_json::to_string(result)?)?;
    }
    out.flush()?;
    Ok(())
}

/// The child process's part: print one JSON line per figure. The `open` phase ends the
/// process itself without closing the store.
pub async fn child(engine: Engine, phase: Phase, dir: &Path, sizes: Sizes) -> anyhow::Result<()> {
    match phase {
        Phase::Push => print_results(&push_phase(engine, dir, sizes).await?),
        Phase::Populate => print_results(&populate_phase(engine, dir, sizes)?),
        Phase::Open => {
            let (open_seconds, store) = open_and_read(engine, dir)?;
            let rss_open_kib = rss_kib()?;
            let actor = spawn_store(store.clone()).await?;
            let per_s = catch_up(&actor, sizes.catchup_items).await?;
            print_results(&[
                figure("open_seconds", open_seconds, "s", Better::Lower),
                figure(
                    "rss_opened_mib",
                    rss_open_kib as f64 / 1024.0,
                    "MiB",
                    Better::Lower,
                ),
                figure("catchup_items_per_s", per_s, "1/s", Better::Higher),
            ])?;
            // Leave as a crash would: the store is not closed, nothing is flushed.
            std::process::exit(0);
        }
        Phase::Reopen => {
            let (seconds, store) = open_and_read(engine, dir)?;
            let stored = store.stats().items;
            if stored != sizes.total() {
                bail!(
                    "after an unclean stop the store holds {stored} of {} items",
                    sizes.total()
                );
            }
            print_results(&[figure(
                "open_after_crash_seconds",
                seconds,
                "s",
                Better::Lower,
            )])
        }
    }
}

/// Run `exe store-child` for one phase and parse its figures.
async fn run_child(
    exe: &Path,
    engine: Engine,
    phase: Phase,
    dir: &Path,
    sizes: Sizes,
) -> anyhow::Result<Vec<BenchResult>> {
    let phase_name = format!("{phase:?}").to_lowercase();
    let mut command = std::process::Command::new(exe);
    command
        .arg("store-child")
        .args(["--engine", engine.name(), "--phase", &phase_name])
        .arg("--dir")
        .arg(dir)
        .args(["--items", &sizes.items.to_string()])
        .args(["--catchup-items", &sizes.catchup_items.to_string()])
        .args(["--push-seconds", &sizes.push_seconds.to_string()]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("starting {}", exe.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{} {phase_name} failed ({}): {}",
            engine.name(),
            output.status,
            stderr.trim()
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<BenchResult>(l).map_err(Into::into))
        .collect()
}

/// Measure `engines` in order, each phase in a fresh child process of `exe`; figures carry
/// the engine and sizes as params and, when the log was measured first, the ratio to its.
pub async fn run(exe: &Path, sizes: Sizes, engines: &[Engine]) -> anyhow::Result<Vec<BenchResult>> {
    let scratch = tempfile::Builder::new()
        .prefix("zerok-bench-store-")
        .tempdir()?;
    let mut results: Vec<BenchResult> = Vec::new();
    let mut log: Vec<BenchResult> = Vec::new();
    for &engine in engines {
        let dir: PathBuf = scratch.path().join(engine.name());
        let push_dir = dir.join("push");
        let data_dir = dir.join("data");
        let mut figures = run_child(exe, engine, Phase::Push, &push_dir, sizes).await?;
        std::fs::remove_dir_all(&push_dir)?;
        for phase in [Phase::Populate, Phase::Open, Phase::Reopen] {
            figures.extend(run_child(exe, engine, phase, &data_dir, sizes).await?);
        }
        std::fs::remove_dir_all(&dir)?;
        eprintln!("zerok-bench: store: {} measured", engine.name());
        for figure in figures {
            let mut figure = figure
                .param("engine", engine.name())
                .param("stored_items", sizes.total())
                .param("catchup_items", sizes.catchup_items);
            if engine == Engine::Log {
                log.push(figure.clone());
            } else if let Some(base) = log.iter().find(|b| b.metric == figure.metric) {
                let metric = format!("log_{}", figure.metric);
                figure = figure.against(&metric, base.value);
            }
            results.push(figure);
        }
    }
    Ok(results)
}

//! `zerok-bench client` (issue 12): the client as an app embeds it, through the public
//! [`zerok_client::Client`] API only, against the real release `zerok-relay` on loopback.
//!
//! - `push`: device A enqueues N × 1 KiB records from 64 concurrent app tasks; timed from
//!   the first enqueue until device B (another `Client`, its own home dir, same group) has
//!   received every one, decrypted, signature-checked by the client and checked again here
//!   (each payload carries its index and a hash of its body).
//! - `push_sequential`: one app task awaiting each `push` (enqueue + relay ack) in turn,
//!   timed until B has them all; with the mean time per push spent before it was durable
//!   here (`push_sequential_local_us`: seal, local sync) and after (`_relay_us`: send, the
//!   relay's path and sync, the ack).
//! - `push_batched`: the same N records through `enqueue_many` in batches, 64 tasks.
//! - `join_ms`: device C joins by invite, admitted by A through the relay (issue 14), against
//!   one sequential push's round trip in the same run.
//! - `catchup`: device C joins after all that and receives the stored records.
//! - the same-run **crypto floor**: what this machine's cores do per record of Ed25519 sign +
//!   `verify_strict` + XChaCha20-Poly1305 seal + open (the real `envelope::seal`/`open` of
//!   a 1 KiB payload), on one core and on all cores; and `verify_strict` alone. Measured at
//!   the start and at the end of the run; each figure is the higher of the two. Beside it,
//!   the same work with records signed in batches of [`FLOOR_BATCH`] (envelope format 2:
//!   one signature per batch, verified once; DESIGN.md §4), which the client does.
//! - process RSS (every device is in this process) before, after the pushes, after the
//!   catch-up, and the receivers' local store size on disk.

use super::relay_benches::Bench;
use super::{BenchResult, Better};
use anyhow::{Context, anyhow, ensure};
use ed25519_dalek::{Signer, SigningKey};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zerok_actors::crypto::envelope::{self, DeviceKey, RecordKind};
use zerok_actors::rng::Rng;
use zerok_client::{Client, ClientConfig, Event, GroupId, NewSecret};
use zerok_messages::BlobId;

/// The bench name of every figure.
const BENCH: &str = "client";
/// App payload size.
pub const RECORD_BYTES: usize = 1024;
/// Concurrent app tasks of the concurrent push figures (the "64 app tasks").
pub const APP_TASKS: usize = 64;
/// Records per `enqueue_many` call in the batched figure.
pub const BATCH_RECORDS: usize = 256;
/// Records per signed batch in the batched crypto figure (what 64 app tasks give the client's
/// Encryptor per core on this 2-core machine).
pub const FLOOR_BATCH: usize = 32;
/// Bound on every phase, so a lost record fails the run instead of hanging it.
const PHASE_BOUND: Duration = Duration::from_secs(600);

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct ClientSizes {
    /// Records of the concurrent push (and the catch-up).
    pub records: u64,
    /// Records of the one-task, push-after-push figure.
    pub sequential_records: u64,
    /// How long each crypto floor runs.
    pub floor_for: Duration,
}

impl ClientSizes {
    /// Full size: the 100,000 records.
    pub fn full() -> Self {
        Self {
            records: 100_000,
            sequential_records: 5_000,
            floor_for: Duration::from_secs(2),
        }
    }

    /// CI's quick run.
    pub fn quick() -> Self {
        Self {
            records: 5_000,
            sequential_records: 1_000,
            floor_for: Duration::from_millis(400),
        }
    }
}

/// The 1 KiB payload of record `index` of run `run`: index, run, a filler derived from both,
/// and the BLAKE3 of everything before it in the last 32 bytes.
pub fn payload(run: u64, index: u64) -> Vec<u8> {
    let mut body = vec![0u8; RECORD_BYTES];
    body[..8].copy_from_slice(&index.to_be_bytes());
    body[8..16].copy_from_slice(&run.to_be_bytes());
    Rng::seeded(index ^ (run << 40)).fill(&mut body[16..64]);
    let hash = BlobId::of_ciphertext(&body[..RECORD_BYTES - 32]);
    body[RECORD_BYTES - 32..].copy_from_slice(hash.as_bytes());
    body
}

/// The index of a payload made by [`payload`] for `run`, if it is one, intact.
pub fn check_payload(run: u64, body: &[u8]) -> Option<u64> {
    if body.len() != RECORD_BYTES {
        return None;
    }
    let hash = BlobId::of_ciphertext(&body[..RECORD_BYTES - 32]);
    if hash.as_bytes() != &body[RECORD_BYTES - 32..] {
        return None;
    }
    let index = u64::from_be_bytes(body[..8].try_into().ok()?);
    let body_run = u64::from_be_bytes(body[8..16].try_into().ok()?);
    (body_run == run).then_some(index)
}

/// This process's resident memory, MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Bytes of files under `dir` (recursively).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Records per second of `work` run for `run_for` on `threads` threads at once.
fn per_s_on_threads(
    threads: usize,
    run_for: Duration,
    work: impl Fn(u64) + Sync,
) -> anyhow::Result<f64> {
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (done, work) = (&done, &work);
            scope.spawn(move || {
                let mut n = (t as u64) << 40;
                loop {
                    for _ in 0..32 {
                        work(n);
                        n += 1;
                    }
                    done.fetch_add(32, Ordering::Relaxed);
                    if started.elapsed() >= run_for {
                        return;
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    ensure!(secs > 0.0, "no time elapsed");
    Ok(done.load(Ordering::Relaxed) as f64 / secs)
}

/// The same-run crypto floor.
#[derive(Debug, Clone, Copy)]
pub struct CryptoFloor {
    /// Threads of the all-cores figures (`available_parallelism`).
    pub cores: usize,
    /// seal (sign + encrypt) + open (decrypt + verify_strict) of a 1 KiB record, one core.
    pub record_one_core_per_s: f64,
    /// The same on every core.
    pub record_all_cores_per_s: f64,
    /// `envelope::open` alone (BLAKE3 id, decrypt, CBOR, verify_strict), every core.
    pub open_all_cores_per_s: f64,
    /// seal + open per record when records are signed in batches of [`FLOOR_BATCH`] (one
    /// signature and one verify per batch: what the client does), every core.
    pub batched_all_cores_per_s: f64,
    /// Ed25519 `verify_strict` of a 1 KiB message alone, every core.
    pub verify_all_cores_per_s: f64,
    /// Ed25519 `verify_strict` alone, one core.
    pub verify_one_core_per_s: f64,
}

impl CryptoFloor {
    /// Measure it (blocking threads; called from `spawn_blocking`).
    pub fn measure(run_for: Duration) -> anyhow::Result<CryptoFloor> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let keys = super::relay_benches::group(0xc11e);
        let device = DeviceKey::from_secret_bytes(&Rng::seeded(0xc11e_0001).bytes());
        let body = payload(0, 0);
        let record = |n: u64| {
            let mut nonce = [0u8; envelope::NONCE_BYTES];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            let sealed = envelope::seal(&keys, &device, n + 1, n, RecordKind::APP, &body, nonce)
                .expect("a 1 KiB payload fits a record");
            let opened = envelope::open(&keys, &sealed.blob_id, &sealed.envelope);
            assert!(opened.is_ok(), "a fresh seal opens");
        };
        let sealed = envelope::seal(&keys, &device, 1, 1, RecordKind::APP, &body, [7; 24])
            .map_err(|e| anyhow!("seal: {e}"))?;
        let open = |_: u64| {
            let opened = envelope::open(&keys, &sealed.blob_id, &sealed.envelope);
            assert!(opened.is_ok(), "a fresh seal opens");
        };
        let bodies: Vec<Vec<u8>> = (0..FLOOR_BATCH as u64).map(|i| payload(0, i)).collect();
        let batched = |n: u64| {
            if !n.is_multiple_of(FLOOR_BATCH as u64) {
                return; // the batch is sealed and opened on its first record's turn
            }
            let records: Vec<envelope::RecordIn<'_>> = bodies
                .iter()
                .enumerate()
                .map(|(i, body)| envelope::RecordIn {
                    seq: n + i as u64 + 1,
                    hlc: n,
                    kind: RecordKind::APP,
                    payload: body,
                })
                .collect();
            let mut nonce_n = n;
            let sealed = envelope::seal_batch(&keys, &device, &records, &mut || {
                nonce_n += 1;
                let mut nonce = [0u8; envelope::NONCE_BYTES];
                nonce[..8].copy_from_slice(&nonce_n.to_le_bytes());
                nonce
            });
            let cache = envelope::OpenCache::default();
            let reader = zerok_messages::DeviceId([0; 32]);
            for sealed in sealed {
                let sealed = sealed.expect("a 1 KiB payload fits a record");
                let opened = envelope::open_unless_own(
                    &keys,
                    &sealed.blob_id,
                    &sealed.envelope,
                    &reader,
                    &cache,
                );
                assert!(opened.is_ok(), "a fresh seal opens");
            }
        };
        let signing = SigningKey::from_bytes(&Rng::seeded(0xc11e_0002).bytes());
        let verifying = signing.verifying_key();
        let signature = signing.sign(&body);
        let verify = |_: u64| {
            let checked = verifying.verify_strict(std::hint::black_box(&body), &signature);
            assert!(checked.is_ok(), "a fresh signature verifies");
        };
        Ok(CryptoFloor {
            cores,
            record_one_core_per_s: per_s_on_threads(1, run_for, record)?,
            record_all_cores_per_s: per_s_on_threads(cores, run_for, record)?,
            open_all_cores_per_s: per_s_on_threads(cores, run_for, open)?,
            batched_all_cores_per_s: per_s_on_threads(cores, run_for, batched)?,
            verify_all_cores_per_s: per_s_on_threads(cores, run_for, verify)?,
            verify_one_core_per_s: per_s_on_threads(1, run_for, verify)?,
        })
    }

    /// Each figure the better of `self` and `other`: the floor is measured at the start and
    /// at the end of the run, and the machine's limit is the higher (a shared machine's other
    /// load lowers one of them, and a lowered floor would flatter every ratio).
    fn max(&self, other: &CryptoFloor) -> CryptoFloor {
        CryptoFloor {
            cores: self.cores,
            record_one_core_per_s: self.record_one_core_per_s.max(other.record_one_core_per_s),
            record_all_cores_per_s: self
                .record_all_cores_per_s
                .max(other.record_all_cores_per_s),
            open_all_cores_per_s: self.open_all_cores_per_s.max(other.open_all_cores_per_s),
            batched_all_cores_per_s: self
                .batched_all_cores_per_s
                .max(other.batched_all_cores_per_s),
            verify_all_cores_per_s: self
                .verify_all_cores_per_s
                .max(other.verify_all_cores_per_s),
            verify_one_core_per_s: self.verify_one_core_per_s.max(other.verify_one_core_per_s),
        }
    }

    /// The figure named `metric` (as in [`CryptoFloor::results`]).
    fn value_of(&self, metric: &str) -> Option<f64> {
        self.results()
            .into_iter()
            .find(|r| r.metric == metric)
            .map(|r| r.value)
    }

    fn results(&self) -> Vec<BenchResult> {
        let figure = |metric: &str, value: f64| {
            BenchResult::new(BENCH, metric, value, "1/s", Better::Higher)
                .param("cores", self.cores)
                .param("record_bytes", RECORD_BYTES)
        };
        vec![
            figure("floor_record_one_core_per_s", self.record_one_core_per_s),
            figure("floor_record_all_cores_per_s", self.record_all_cores_per_s),
            figure("floor_open_all_cores_per_s", self.open_all_cores_per_s),
            figure(
                "floor_batched_all_cores_per_s",
                self.batched_all_cores_per_s,
            ),
            figure("floor_verify_one_core_per_s", self.verify_one_core_per_s),
            figure("floor_verify_all_cores_per_s", self.verify_all_cores_per_s),
        ]
    }
}

/// A device of the bench: a `Client` on its own home dir under the bench's scratch dir.
async fn device(bench: &Bench, name: &str) -> anyhow::Result<(Client, std::path::PathBuf)> {
    let home = bench.dir.join(format!("client-bench-{name}"));
    let mut config = ClientConfig::new(&home);
    config.bind = "127.0.0.1:0".parse()?;
    let client = Client::start(config)
        .await
        .with_context(|| format!("starting device {name}"))?;
    Ok((client, home))
}

/// The receiving device's app task: told each phase as `(run, records)`, it counts
/// `Received` events until all of them arrived, checking each payload, and answers the
/// instant the last arrived; it fails on an undecryptable record, a gap, a bad payload or a
/// duplicate.
struct Receiver {
    phases: mpsc::UnboundedSender<(u64, u64)>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    done: mpsc::UnboundedReceiver<Instant>,
}

impl Receiver {
    /// Announce a phase.
    fn expect(&self, run: u64, records: u64) -> anyhow::Result<()> {
        self.phases
            .send((run, records))
            .map_err(|_| anyhow!("receiver ended"))
    }

    /// When the last record of the phase arrived.
    async fn all_received(&mut self) -> anyhow::Result<Instant> {
        tokio::time::timeout(PHASE_BOUND, self.done.recv())
            .await
            .context("records did not all arrive")?
            .ok_or_else(|| anyhow!("receiver ended"))
    }

    /// Stop it; its error, if it failed.
    async fn finish(self) -> anyhow::Result<()> {
        drop(self.phases);
        self.task.await?
    }
}

fn spawn_receiver(mut events: mpsc::Receiver<Event>) -> Receiver {
    let (phase_tx, mut phase_rx) = mpsc::unbounded_channel::<(u64, u64)>();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Instant>();
    let task = tokio::spawn(async move {
        let mut pending: std::collections::VecDeque<(u64, u64)> = Default::default();
        let mut seen: Vec<bool> = Vec::new();
        let mut got = 0u64;
        loop {
            if pending.is_empty() {
                match phase_rx.recv().await {
                    Some(phase) => pending.push_back(phase),
                    None => return Ok(()),
                }
                let (_, records) = pending[0];
                seen = vec![false; records as usize];
                got = 0;
            }
            let (run, records) = pending[0];
            if got == records {
                let _ = done_tx.send(Instant::now());
                pending.pop_front();
                continue;
            }
            let event = events
                .recv()
                .await
                .ok_or_else(|| anyhow!("event stream ended"))?;
            match event {
                Event::Received { payload, .. } => {
                    let index = check_payload(run, &payload)
                        .ok_or_else(|| anyhow!("received a payload that does not check"))?;
                    let slot = seen
                        .get_mut(index as usize)
                        .ok_or_else(|| anyhow!("received index {index} of {records}"))?;
                    ensure!(!*slot, "record {index} received twice");
                    *slot = true;
                    got += 1;
                }
                Event::Undecryptable { reason, .. } => {
                    return Err(anyhow!("undecryptable record: {reason}"));
                }
                Event::GapDetected { from, to, .. } => {
                    return Err(anyhow!("gap {from}..={to} reported"));
                }
                Event::UnknownSender { sender, .. } => {
                    return Err(anyhow!("record of a device not on the roster: {sender:?}"));
                }
                Event::Removed { .. } => return Err(anyhow!("removed from the group")),
                Event::File { .. } => return Err(anyhow!("a file announcement in a record run")),
                Event::RelayUp { .. }
                | Event::RelayDown { .. }
                | Event::RosterChanged { .. }
                | Event::EpochChanged { .. } => {}
            }
        }
    });
    Receiver {
        phases: phase_tx,
        task,
        done: done_rx,
    }
}

/// Push `records` from `APP_TASKS` tasks (each awaiting its `enqueue`s, or `enqueue_many`s of
/// `batch` records when `batch > 1`).
async fn push_concurrently(
    sender: &Arc<Client>,
    group: GroupId,
    run: u64,
    records: u64,
    batch: usize,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for task in 0..APP_TASKS as u64 {
        let sender = Arc::clone(sender);
        tasks.push(tokio::spawn(async move {
            let mine: Vec<u64> = (task..records).step_by(APP_TASKS).collect();
            if batch > 1 {
                for chunk in mine.chunks(batch) {
                    let payloads = chunk.iter().map(|i| payload(run, *i)).collect();
                    sender.enqueue_many(group, payloads).await?;
                }
            } else {
                for index in mine {
                    sender.enqueue(group, payload(run, index)).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// `client`: the figures described in the module doc.
pub async fn client(bench: &Bench, sizes: ClientSizes) -> anyhow::Result<Vec<BenchResult>> {
    let floor_for = sizes.floor_for;
    let floor = tokio::task::spawn_blocking(move || CryptoFloor::measure(floor_for)).await??;
    // Ratios are set at the end, against the floor measured at the start and the end.
    let mut results = Vec::new();
    let rss_start = rss_mib();
    let relay = bench.relay(None).await?;
    let (a, _) = device(bench, "a").await?;
    let (b, b_home) = device(bench, "b").await?;
    let group = a
        .create_group("bench", NewSecret::Random, vec![relay.addr.clone()])
        .await?;
    let invite = a.invite(group, Duration::from_secs(3600)).await?;
    b.join(&invite, None).await?;
    let b_events = b.events().ok_or_else(|| anyhow!("events taken"))?;
    let mut receiver = spawn_receiver(b_events);
    // Warm-up: both devices connected and joined, one record through.
    receiver.expect(0, 1)?;
    a.push(group, payload(0, 0)).await?;
    receiver.all_received().await?;
    let a = Arc::new(a);
    let rss_connected = rss_mib();

    let n = sizes.records;
    let mut pushed_total = 0u64;

    // 1. 64 app tasks, one enqueue each at a time.
    let (run, metric, records) = (1, "push_64_tasks_per_s", n);
    pushed_total += records;
    receiver.expect(run, records)?;
    let started = Instant::now();
    tokio::time::timeout(PHASE_BOUND, push_concurrently(&a, group, run, records, 1)).await??;
    let enqueued = started.elapsed();
    let received_at = receiver.all_received().await?;
    let secs = (received_at - started).as_secs_f64();
    let push_64 = records as f64 / secs;
    results.push(
        BenchResult::new(BENCH, metric, push_64, "1/s", Better::Higher)
            .param("records", records)
            .param("app_tasks", APP_TASKS)
            .against("floor_record_all_cores_per_s", floor.record_all_cores_per_s),
    );
    results.push(
        BenchResult::new(
            BENCH,
            "enqueue_64_tasks_per_s",
            records as f64 / enqueued.as_secs_f64(),
            "1/s",
            Better::Higher,
        )
        .param("records", records)
        .param("app_tasks", APP_TASKS),
    );

    // 2. One app task awaiting each push (enqueue + relay ack) in turn.
    let (run, metric, records) = (2, "push_sequential_per_s", sizes.sequential_records);
    pushed_total += records;
    receiver.expect(run, records)?;
    let started = Instant::now();
    // `push` is `enqueue` (sealed, durable here) then `wait_acked` (sent, stored and synced
    // by the relay, acked): timed apart, they say where a push's time goes.
    let (mut local, mut relay) = (Duration::ZERO, Duration::ZERO);
    for index in 0..records {
        let begun = Instant::now();
        let blob_id =
            tokio::time::timeout(PHASE_BOUND, a.enqueue(group, payload(run, index))).await??;
        let durable = Instant::now();
        tokio::time::timeout(PHASE_BOUND, a.wait_acked(group, blob_id, None)).await??;
        local += durable - begun;
        relay += durable.elapsed();
    }
    let acked = started.elapsed();
    // One push's round trip (sealed, durable here, stored and acked by the relay): the
    // baseline of a join, which takes a few of them.
    let push_round_trip_ms = acked.as_secs_f64() * 1e3 / records.max(1) as f64;
    let received_at = receiver.all_received().await?;
    results.push(
        BenchResult::new(
            BENCH,
            metric,
            records as f64 / (received_at - started).as_secs_f64(),
            "1/s",
            Better::Higher,
        )
        .param("records", records)
        .param("app_tasks", 1)
        .against("floor_record_one_core_per_s", floor.record_one_core_per_s),
    );
    results.push(
        BenchResult::new(
            BENCH,
            "push_sequential_acked_per_s",
            records as f64 / acked.as_secs_f64(),
            "1/s",
            Better::Higher,
        )
        .param("records", records)
        .param("app_tasks", 1),
    );
    for (metric, spent) in [
        ("push_sequential_local_us", local),
        ("push_sequential_relay_us", relay),
    ] {
        results.push(
            BenchResult::new(
                BENCH,
                metric,
                spent.as_secs_f64() * 1e6 / records.max(1) as f64,
                "us",
                Better::Lower,
            )
            .param("records", records)
            .param("app_tasks", 1),
        );
    }

    // 3. The same N through `enqueue_many`.
    let (run, metric, records) = (3, "push_batched_per_s", n);
    pushed_total += records;
    receiver.expect(run, records)?;
    let started = Instant::now();
    tokio::time::timeout(
        PHASE_BOUND,
        push_concurrently(&a, group, run, records, BATCH_RECORDS),
    )
    .await??;
    let received_at = receiver.all_received().await?;
    results.push(
        BenchResult::new(
            BENCH,
            metric,
            records as f64 / (received_at - started).as_secs_f64(),
            "1/s",
            Better::Higher,
        )
        .param("records", records)
        .param("app_tasks", APP_TASKS)
        .param("batch", BATCH_RECORDS)
        .against("floor_record_all_cores_per_s", floor.record_all_cores_per_s),
    );
    let rss_pushed = rss_mib();
    let seen_ids = b.status().await?.groups.first().map_or(0, |g| g.seen_ids);
    results.push(
        BenchResult::new(
            BENCH,
            "receiver_seen_ids",
            seen_ids as f64,
            "ids",
            Better::Lower,
        )
        .param("records", 1 + pushed_total),
    );
    receiver.finish().await?;

    // 4. A late joiner catches up on everything stored.
    let stored = 1 + pushed_total;
    let (c, c_home) = device(bench, "c").await?;
    let mut c_events = c.events().ok_or_else(|| anyhow!("events taken"))?;
    // Invites are single use: one more for c (a, online, admits it).
    let invite_c = a.invite(group, Duration::from_secs(3600)).await?;
    let started = Instant::now();
    c.join(&invite_c, None).await?;
    // The join through the relay: C's request, A's `Add` (sealed, durable, acked by the
    // relay), A's admission, C keeping the group.
    results.push(
        BenchResult::new(
            BENCH,
            "join_ms",
            started.elapsed().as_secs_f64() * 1e3,
            "ms",
            Better::Lower,
        )
        .param("relays", 1)
        .against("push_round_trip_ms", push_round_trip_ms),
    );
    let mut got = 0u64;
    let mut bad = 0u64;
    tokio::time::timeout(PHASE_BOUND, async {
        while got < stored {
            match c_events.recv().await {
                Some(Event::Received { payload, .. }) => {
                    let body_run = payload
                        .get(8..16)
                        .and_then(|b| b.try_into().ok())
                        .map_or(u64::MAX, u64::from_be_bytes);
                    if check_payload(body_run, &payload).is_none() {
                        bad += 1;
                    }
                    got += 1;
                }
                Some(Event::Undecryptable { .. } | Event::GapDetected { .. }) => bad += 1,
                Some(_) => {}
                None => return Err(anyhow!("event stream ended")),
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("catch-up")??;
    let catchup_secs = started.elapsed().as_secs_f64();
    ensure!(bad == 0, "{bad} records of the catch-up did not check");
    let rss_caught_up = rss_mib();
    let catchup = stored as f64 / catchup_secs;
    results.push(
        BenchResult::new(BENCH, "catchup_per_s", catchup, "1/s", Better::Higher)
            .param("records", stored)
            .against("floor_verify_all_cores_per_s", floor.verify_all_cores_per_s),
    );
    results.push(
        BenchResult::new(
            BENCH,
            "catchup_vs_open_per_s",
            catchup,
            "1/s",
            Better::Higher,
        )
        .param("records", stored)
        .against("floor_open_all_cores_per_s", floor.open_all_cores_per_s),
    );
    let mib = |metric: &str, value: f64| {
        BenchResult::new(BENCH, metric, value, "MiB", Better::Lower).param("records", stored)
    };
    results.push(mib("rss_start_mib", rss_start));
    results.push(mib("rss_connected_mib", rss_connected));
    results.push(mib("rss_after_push_mib", rss_pushed));
    results.push(mib("rss_after_catchup_mib", rss_caught_up));
    c.shutdown().await;
    if let Ok(a) = Arc::try_unwrap(a) {
        a.shutdown().await;
    }
    b.shutdown().await;
    results.push(mib(
        "receiver_store_disk_mib",
        dir_bytes(&b_home.join("store")) as f64 / (1024.0 * 1024.0),
    ));
    results.push(mib(
        "late_joiner_store_disk_mib",
        dir_bytes(&c_home.join("store")) as f64 / (1024.0 * 1024.0),
    ));
    results.push(mib("rss_after_shutdown_mib", rss_mib()));
    let floor_end = tokio::task::spawn_blocking(move || CryptoFloor::measure(floor_for)).await??;
    let floor = floor.max(&floor_end);
    let mut out = floor.results();
    for result in results {
        let rebased = match result.baseline_metric.clone() {
            Some(metric) => match floor.value_of(&metric) {
                Some(value) => result.against(&metric, value),
                None => result,
            },
            None => result,
        };
        out.push(rebased);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check_and_tampering_is_caught() {
        let body = payload(3, 41);
        assert_eq!(check_payload(3, &body), Some(41));
        assert_eq!(check_payload(4, &body), None, "another run's payload");
        let mut flipped = body.clone();
        flipped[100] ^= 1;
        assert_eq!(check_payload(3, &flipped), None);
        assert_eq!(check_payload(3, &body[..1000]), None);
    }
}

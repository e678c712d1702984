//! The segment-log store under power loss, on the simulated file system (`SimFs`): seeded
//! runs of pushes to several mailboxes with random TTLs, sweeps with time advancing (items
//! expire, segments are released, mostly-dead ones compacted) and segment rolls (4 KiB
//! segments), with the power cut at every sync point of the run in turn (count the sync calls
//! of a run, then rerun losing power at the 1st, the 2nd, ... and once after the last). After
//! each cut the store is reopened on what survived and the invariants of
//! `blob_store::durability` must hold: every acked, unexpired push is served; nothing is
//! served that was never pushed; cursors never go back. Both cut modes: unsynced writes
//! dropped, and torn (a random page-granular part kept).
//!
//! The checker is shown to bite: with a file system whose `fdatasync` keeps nothing, or whose
//! directory sync keeps nothing (each broken only after the store opened healthy, so only the
//! store's own commit, roll and release paths lack the sync), it reports a violation.
//!
//! Bounds: a few seeds of 40 operations, ~100–200 cut points each, all in memory; a few
//! seconds in debug.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use zerok_actors::Rng;
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::blob_store::core::StoreLimits;
use zerok_actors::relay::blob_store::durability::{AckModel, Violation, check_after_restart};
use zerok_actors::relay::blob_store::fs::{PowerCut, SimFlaw, SimFs};
use zerok_actors::relay::blob_store::segments::{Store, StoreOptions};
use zerok_messages::relay::{AppendRequest, StoreOutcome};
use zerok_messages::{BlobId, MailboxId};

/// The store's directory on the simulated file system (its parent is created by the store).
const DIR: &str = "/relay/store";
/// Small segments, so a run of 40 operations rolls, releases and compacts several.
const SEGMENT_BYTES: u64 = 4096;
const T0: u64 = 1_700_000_000_000;
const OPS: usize = 60;
const MAILBOXES: u64 = 3;
/// Seeds per test: enough that rolls, releases and compactions all happen (asserted).
const SEEDS: u64 = 48;

#[derive(Debug, Clone)]
enum Op {
    /// One group commit.
    Push(Vec<Push>),
    /// Time passes, then a sweep of at most `max_items`.
    Sweep { advance_ms: u64, max_items: u32 },
}

#[derive(Debug, Clone)]
struct Push {
    mailbox: u8,
    /// Which payload: the same id is the same ciphertext (a retry, answered as a duplicate).
    payload: u64,
    ttl_secs: u32,
}

fn mailbox(n: u8) -> MailboxId {
    MailboxId([n + 1; 32])
}

/// Payload `id`: unique, 60–699 bytes.
fn payload(id: u64) -> Bytes {
    let mut out = format!("item-{id:06}-").into_bytes();
    out.resize(60 + (id.wrapping_mul(7919) % 640) as usize, b'.');
    Bytes::from(out)
}

fn scenario(seed: u64) -> Vec<Op> {
    let mut rng = Rng::seeded(seed);
    let mut payloads = 0u64;
    (0..OPS)
        .map(|_| {
            if rng.below(100) < 65 {
                let n = 1 + rng.below(4);
                Op::Push(
                    (0..n)
                        .map(|_| {
                            let payload = if payloads > 0 && rng.below(100) < 15 {
                                rng.below(payloads)
                            } else {
                                payloads += 1;
                                payloads - 1
                            };
                            Push {
                                mailbox: rng.below(MAILBOXES) as u8,
                                payload,
                                ttl_secs: 2 + rng.below(40) as u32,
                            }
                        })
                        .collect(),
                )
            } else {
                Op::Sweep {
                    advance_ms: rng.below(8_000),
                    max_items: 1 + rng.below(40) as u32,
                }
            }
        })
        .collect()
}

/// Item changes the index holds before it writes them (the relay's is 65,536).
const INDEX_FLUSH_ITEMS: usize = 16;

/// The store's options on `fs`; its index (a fjall database, on the real file system) in
/// `index_dir`.
fn options(fs: &SimFs, index_dir: &Path) -> StoreOptions {
    StoreOptions {
        fs: fs.shared(),
        index_dir: Some(index_dir.to_path_buf()),
        // The index writes every few items, so a cut finds it at a checkpoint inside a
        // segment (as a busy relay's would be), not only at rolls.
        index_flush_items: INDEX_FLUSH_ITEMS,
        ..StoreOptions::new(SEGMENT_BYTES)
    }
}

/// What a run did, to show the scenarios cover what they claim.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    acked: u64,
    duplicates: u64,
    rolls: u64,
    releases: u64,
    compactions: u64,
}

struct Ran {
    model: AckModel,
    now_ms: u64,
    coverage: Coverage,
}

/// Run `ops` on a store on `fs` (broken by `flaw` once it is open) until the ops end or the
/// power is lost.
fn run(fs: &SimFs, index_dir: &Path, ops: &[Op], flaw: Option<SimFlaw>) -> Ran {
    let compactions = Arc::new(AtomicU64::new(0));
    let counter = CompactionCounter(compactions.clone());
    let mut ran =
        tracing::subscriber::with_default(counter, || run_inner(fs, index_dir, ops, flaw));
    ran.coverage.compactions = compactions.load(Ordering::Relaxed);
    ran
}

fn run_inner(fs: &SimFs, index_dir: &Path, ops: &[Op], flaw: Option<SimFlaw>) -> Ran {
    let mut ran = Ran {
        model: AckModel::default(),
        now_ms: T0,
        coverage: Coverage::default(),
    };
    let Ok(store) = Store::open_with(Path::new(DIR), options(fs, index_dir)) else {
        return ran;
    };
    fs.set_flaw(flaw);
    let limits = StoreLimits::default();
    for op in ops {
        if fs.is_powered_off() {
            break;
        }
        let segments = store.stats().segments;
        match op {
            Op::Push(pushes) => {
                let requests: Vec<AppendRequest> = pushes
                    .iter()
                    .map(|push| {
                        let ciphertext = payload(push.payload);
                        AppendRequest {
                            token: 0,
                            mailbox: mailbox(push.mailbox),
                            blob_id: BlobId::of_ciphertext(&ciphertext),
                            ciphertext,
                            ttl_secs: Some(push.ttl_secs),
                        }
                    })
                    .collect();
                ran.model.note_pushed(&requests);
                if let Ok(plan) = store.commit(&requests, ran.now_ms, &limits, &FaultPlan::none()) {
                    ran.model.note_committed(&requests, &plan);
                    for outcome in &plan.outcomes {
                        if let StoreOutcome::Stored { duplicate, .. } = outcome {
                            ran.coverage.acked += 1;
                            ran.coverage.duplicates += u64::from(*duplicate);
                        }
                    }
                    if store.stats().segments > segments {
                        ran.coverage.rolls += 1;
                    }
                }
            }
            Op::Sweep {
                advance_ms,
                max_items,
            } => {
                ran.now_ms += advance_ms;
                let _ = store.sweep(ran.now_ms, *max_items);
                if store.stats().segments < segments {
                    ran.coverage.releases += 1;
                }
            }
        }
    }
    ran
}

/// Where a cut point's check failed.
struct Failure {
    seed: u64,
    /// The sync call at which power was lost (one past the last: after the run).
    cut_at_sync: u64,
    violation: Violation,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}, power lost at sync call {}: {}",
            self.seed, self.cut_at_sync, self.violation
        )
    }
}

/// For one seed: count the run's sync calls, then for every sync point rerun losing power
/// there, cut it `cut`'s way, reopen and check. Answers the first failure, and the coverage
/// of the uncut run.
fn check_every_cut(
    seed: u64,
    cut: impl Fn(u64) -> PowerCut,
    flaw: Option<SimFlaw>,
) -> (Coverage, u64, Option<Failure>) {
    let ops = scenario(seed);
    let uncut = SimFs::new();
    // Thousands of short-lived indexes: on a tmpfs when there is one, since the index's own
    // fsyncs (it is a fjall database on the real file system) are not what is tested here.
    let index = match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("a temp dir");
    let coverage = run(&uncut, &index.path().join("uncut"), &ops, flaw).coverage;
    let syncs = uncut.sync_calls();
    for cut_at_sync in 1..=syncs + 1 {
        let fs = SimFs::new();
        fs.fail_at_sync(cut_at_sync);
        let index_dir = index.path().join(format!("cut-{cut_at_sync}"));
        let mut ran = run(&fs, &index_dir, &ops, flaw);
        fs.power_cut(cut(cut_at_sync));
        // The index only ever holds what the log holds durably, so it may survive the cut
        // whole; or it is lost and rebuilt from the segments. Both, on alternate cuts.
        if cut_at_sync % 2 == 1 {
            let _ = std::fs::remove_dir_all(&index_dir);
        }
        let checked = Store::open_with(Path::new(DIR), options(&fs, &index_dir))
            .map_err(|err| Violation {
                invariant: "the_store_reopens",
                detail: err.to_string(),
            })
            .and_then(|store| check_after_restart(&store, &mut ran.model, ran.now_ms));
        if let Err(violation) = checked {
            let failure = Failure {
                seed,
                cut_at_sync,
                violation,
            };
            return (coverage, syncs, Some(failure));
        }
    }
    (coverage, syncs, None)
}

fn add(total: &mut Coverage, one: Coverage) {
    total.acked += one.acked;
    total.duplicates += one.duplicates;
    total.rolls += one.rolls;
    total.releases += one.releases;
    total.compactions += one.compactions;
}

fn check_all_seeds(cut: impl Fn(u64, u64) -> PowerCut) {
    let mut total = Coverage::default();
    let mut cuts = 0;
    for seed in 0..SEEDS {
        let (coverage, syncs, failure) = check_every_cut(seed, |k| cut(seed, k), None);
        if let Some(failure) = failure {
            panic!("power cut broke an invariant: {failure}");
        }
        add(&mut total, coverage);
        cuts += syncs + 1;
    }
    // The scenarios do what they claim, or the test proves little.
    assert!(cuts >= 60 * SEEDS, "{cuts} cut points");
    assert!(
        total.acked >= 50 * SEEDS && total.duplicates >= SEEDS,
        "{total:?}"
    );
    assert!(
        total.rolls >= 4 * SEEDS && total.releases >= 2 * SEEDS && total.compactions >= 2 * SEEDS,
        "{total:?}"
    );
}

#[test]
fn every_acked_push_survives_a_power_cut_that_drops_unsynced_writes_at_every_sync_point() {
    check_all_seeds(|_, _| PowerCut::DropUnsynced);
}

#[test]
fn every_acked_push_survives_a_power_cut_that_tears_unsynced_writes_at_every_sync_point() {
    check_all_seeds(|seed, k| PowerCut::Torn {
        seed: seed.wrapping_mul(1_000_003).wrapping_add(k),
    });
}

/// The first failure of any seed with `flaw`, cutting unsynced writes away.
fn first_failure_with(flaw: SimFlaw) -> Option<Failure> {
    (0..SEEDS).find_map(|seed| check_every_cut(seed, |_| PowerCut::DropUnsynced, Some(flaw)).2)
}

#[test]
fn the_checker_catches_a_store_whose_fdatasync_keeps_nothing() {
    let failure = first_failure_with(SimFlaw::SyncDataKeepsNothing)
        .expect("a store without data sync loses acked pushes at a power cut");
    eprintln!("caught, as it must be: {failure}");
    assert_eq!(
        failure.violation.invariant, "acked_items_are_served",
        "{failure}"
    );
}

#[test]
fn the_checker_catches_a_store_whose_directory_sync_keeps_nothing() {
    let failure = first_failure_with(SimFlaw::SyncDirKeepsNothing)
        .expect("a store without directory sync loses a new segment at a power cut");
    eprintln!("caught, as it must be: {failure}");
    assert_eq!(
        failure.violation.invariant, "acked_items_are_served",
        "{failure}"
    );
}

/// Counts the store's "copied live items forward" events: the only outside sign that a sweep
/// compacted a segment.
struct CompactionCounter(Arc<AtomicU64>);

struct MessageIs<'a>(&'a str, bool);

impl tracing::field::Visit for MessageIs<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == self.0 {
            self.1 = true;
        }
    }
}

impl tracing::Subscriber for CompactionCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut visit = MessageIs("copied live items forward", false);
        event.record(&mut visit);
        if visit.1 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

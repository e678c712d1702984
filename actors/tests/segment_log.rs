//! The segment-log store on its own, on real files in a temp dir: segments roll and their
//! space comes back when their items expire, compaction keeps what is live, the cursor of a
//! mailbox survives the deletion of every segment that held it, a torn tail left by a crash
//! is cut off (damage elsewhere: actors/tests/store_damage.rs), a store in use is refused, and a
//! property test checks commits, sweeps and reopens against a model. Budgets: the relay-wide
//! byte and entry budgets and the free-disk floor refuse with `StorageFull` and give room
//! back after expiry; a full disk (injected `ENOSPC` on every write) frees dead segments
//! without any write succeeding first and recovers when space is back.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::relay::blob_store::OpenError;
use zerok_actors::relay::blob_store::core::{
    ITEM_CHARGE_BYTES, MAILBOX_INDEX_ENTRIES, SEGMENT_HEADER, StoreBudget, StoreLimits,
    charged_bytes,
};
use zerok_actors::relay::blob_store::segments::{
    LOCK_FILE, RESERVE_FILE, SEGMENT_SUFFIX, Store, StoreOptions,
};
use zerok_messages::relay::{AppendRequest, StoreError, StoreOutcome};
use zerok_messages::{BlobId, MailboxId};

const SMALL_SEGMENT: u64 = 4096;
const T0: u64 = 1_700_000_000_000;
const MAILBOX: MailboxId = MailboxId([4; 32]);

fn request(mailbox: MailboxId, payload: &[u8], ttl_secs: u32) -> AppendRequest {
    AppendRequest {
        token: 0,
        mailbox,
        blob_id: BlobId::of_ciphertext(payload),
        ciphertext: Bytes::copy_from_slice(payload),
        ttl_secs: Some(ttl_secs),
    }
}

/// A unique payload of at least `len` bytes.
fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut out = format!("item-{n:06}-").into_bytes();
    out.resize(len.max(out.len()), b'.');
    out
}

/// Commit `requests` at `now_ms`; answers the cursors of stored items.
fn commit(store: &Store, requests: &[AppendRequest], now_ms: u64) -> Vec<u64> {
    let plan = store
        .commit(
            requests,
            now_ms,
            &StoreLimits::default(),
            &FaultPlan::none(),
        )
        .unwrap();
    plan.outcomes
        .iter()
        .map(|o| match o {
            StoreOutcome::Stored { cursor, .. } => cursor.0,
            StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
        })
        .collect()
}

/// Every readable (cursor, ciphertext) of `mailbox` at `now_ms`, page by page.
fn read_all(store: &Store, mailbox: &MailboxId, now_ms: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_page(mailbox, after, 7, 2000, now_ms).unwrap();
        out.extend(
            page.items
                .iter()
                .map(|i| (i.cursor.0, i.ciphertext.to_vec())),
        );
        assert!(page.next.0 >= after, "pages never go back");
        after = page.next.0;
        if !page.has_more {
            return out;
        }
    }
}

fn sweep_all(store: &Store, now_ms: u64) -> u64 {
    let mut evicted = 0;
    loop {
        let report = store.sweep(now_ms, 50).unwrap();
        evicted += report.evicted;
        if !report.more {
            return evicted;
        }
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(SEGMENT_SUFFIX))
        .collect();
    files.sort();
    files
}

#[test]
fn segments_roll_and_their_space_comes_back_and_cursors_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    let mut n = 0;
    for _ in 0..10 {
        let batch: Vec<AppendRequest> = (0..10)
            .map(|_| {
                n += 1;
                request(MAILBOX, &payload(n, 200), 60)
            })
            .collect();
        commit(&store, &batch, T0);
    }
    let full = store.stats();
    assert_eq!(full.items, 100);
    assert!(full.segments >= 5, "{} segments", full.segments);
    assert_eq!(segment_files(dir.path()).len() as u64, full.segments);

    assert_eq!(sweep_all(&store, T0 + 61_000), 100);
    let empty = store.stats();
    assert_eq!((empty.items, empty.bytes, empty.mailboxes), (0, 0, 0));
    assert_eq!(empty.segments, 1, "only a new active segment is left");
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(
        empty.disk_bytes < 200,
        "{} bytes left on disk",
        empty.disk_bytes
    );
    drop(store);

    // Every segment that held the mailbox is gone; its cursor is not.
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    assert_eq!(store.meta(&MAILBOX).latest, 100);
    assert_eq!(
        commit(&store, &[request(MAILBOX, b"after", 60)], T0 + 62_000),
        vec![101]
    );
}

#[test]
fn compaction_keeps_the_live_items_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    let mut n = 0;
    let mut long_lived = Vec::new();
    for _ in 0..20 {
        let batch: Vec<AppendRequest> = (0..10)
            .map(|i| {
                n += 1;
                let data = payload(n, 150);
                let ttl = if i == 0 { 3600 } else { 60 };
                if i == 0 {
                    long_lived.push(data.clone());
                }
                request(MAILBOX, &data, ttl)
            })
            .collect();
        commit(&store, &batch, T0);
    }
    let before = store.stats();
    let now = T0 + 61_000;
    assert_eq!(sweep_all(&store, now), 180);
    // Each sweep copies a bounded slice of one segment forward; more passes finish the job.
    let mut passes = 0;
    let mut last = store.stats().disk_bytes;
    loop {
        store.sweep(now, 50).unwrap();
        passes += 1;
        let disk = store.stats().disk_bytes;
        if disk == last || passes > 500 {
            break;
        }
        last = disk;
    }
    assert!(passes > 2, "compaction went in slices ({passes} passes)");
    let after = store.stats();
    assert_eq!(after.items, 20);
    assert!(
        after.disk_bytes * 3 < before.disk_bytes,
        "{} bytes before, {} after",
        before.disk_bytes,
        after.disk_bytes
    );
    let check = |store: &Store| {
        let got = read_all(store, &MAILBOX, now);
        let cursors: Vec<u64> = got.iter().map(|(c, _)| *c).collect();
        let expected: Vec<u64> = (0..20).map(|k| k * 10 + 1).collect();
        assert_eq!(cursors, expected);
        let data: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(data, long_lived);
    };
    check(&store);
    drop(store);
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    check(&store);
    assert_eq!(store.stats().items, 20);
    assert_eq!(store.meta(&MAILBOX).latest, 200);
    // A duplicate of a compacted item is still recognised.
    let again = store
        .commit(
            &[request(MAILBOX, &long_lived[3], 60)],
            now,
            &StoreLimits::default(),
            &FaultPlan::none(),
        )
        .unwrap();
    assert!(matches!(
        again.outcomes[0],
        StoreOutcome::Stored {
            duplicate: true,
            ..
        }
    ));
}

#[test]
fn a_torn_tail_is_cut_off_and_nothing_acked_is_lost() {
    // A crash in the middle of an unacknowledged write leaves part of a record at the end of
    // the newest segment, cut anywhere.
    let mut record = Vec::new();
    zerok_actors::relay::blob_store::core::encode_item(
        &mut record,
        &zerok_actors::relay::blob_store::core::ItemRecord {
            mailbox: MAILBOX,
            cursor: 11,
            blob_id: BlobId::of_ciphertext(b"never acked"),
            stored_at_ms: T0,
            expires_at_ms: T0 + 60_000,
            ciphertext: b"never acked",
        },
    );
    for cut in [1, 4, 8, 9, 50, record.len() - 1] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let batch: Vec<AppendRequest> = (0..10)
            .map(|n| request(MAILBOX, &payload(n, 40), 60))
            .collect();
        commit(&store, &batch, T0);
        let acked = read_all(&store, &MAILBOX, T0);
        let data_len = store.stats().disk_bytes;
        drop(store);
        let last = segment_files(dir.path()).pop().unwrap();
        let before = std::fs::read(&last).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
        file.write_all_at(&record[..cut], data_len).unwrap();
        drop(file);

        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(read_all(&store, &MAILBOX, T0), acked, "cut at {cut}");
        let after = std::fs::read(&last).unwrap();
        assert_eq!(after[..data_len as usize], before[..data_len as usize]);
        assert!(
            after[data_len as usize..].iter().all(|b| *b == 0),
            "the torn record is gone"
        );
        assert_eq!(
            commit(&store, &[request(MAILBOX, b"next", 60)], T0),
            vec![11]
        );
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(read_all(&store, &MAILBOX, T0).len(), 11);
    }
}

/// (duplicate?, cursor) of one commit of `request`.
fn commit_one(store: &Store, request: AppendRequest, now_ms: u64) -> (bool, u64) {
    let plan = store
        .commit(
            &[request],
            now_ms,
            &StoreLimits::default(),
            &FaultPlan::none(),
        )
        .unwrap();
    match &plan.outcomes[0] {
        StoreOutcome::Stored {
            cursor, duplicate, ..
        } => (*duplicate, cursor.0),
        StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
    }
}

#[test]
fn an_expired_blob_pushed_again_is_stored_again_even_before_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    let data = b"the same ciphertext";
    assert_eq!(
        commit_one(&store, request(MAILBOX, data, 1), T0),
        (false, 1)
    );
    assert_eq!(
        commit_one(&store, request(MAILBOX, data, 60), T0 + 500),
        (true, 1)
    );
    // Expired but not yet swept: never served, so not a duplicate either.
    let later = T0 + 2_000;
    assert_eq!(
        commit_one(&store, request(MAILBOX, data, 60), later),
        (false, 2)
    );
    assert_eq!(read_all(&store, &MAILBOX, later), vec![(2, data.to_vec())]);
    // Sweeping the old copy leaves the new one, and its idempotency, alone.
    assert_eq!(sweep_all(&store, later), 1);
    assert_eq!(
        commit_one(&store, request(MAILBOX, data, 60), later),
        (true, 2)
    );
    drop(store);
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    assert_eq!(
        commit_one(&store, request(MAILBOX, data, 60), later),
        (true, 2)
    );
    assert_eq!(read_all(&store, &MAILBOX, later), vec![(2, data.to_vec())]);
}

#[test]
fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    let err = Store::open(dir.path(), SMALL_SEGMENT).err().unwrap();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    drop(store);
    Store::open(dir.path(), SMALL_SEGMENT).unwrap();
}

/// A store closed and opened again while something else still holds its lock for a moment
/// (a child process that another thread forked holds a copy of the lock's descriptor until
/// it execs: `a_torn_tail_is_cut_off_and_nothing_acked_is_lost` failed so in CI) opens once
/// the lock is let go.
#[test]
fn a_lock_held_a_moment_past_a_close_does_not_refuse_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), SMALL_SEGMENT).unwrap());
    let lock = std::fs::File::open(dir.path().join(LOCK_FILE)).unwrap();
    lock.lock().unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        locked_tx.send(()).unwrap();
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(150));
        drop(lock);
    });
    locked_rx.recv().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    holder.join().unwrap();
    drop(store);
}

#[derive(Debug, Clone)]
enum Op {
    /// Commit items (mailbox, payload length, TTL in seconds).
    Commit(Vec<(u8, usize, u32)>),
    /// Move the clock by this many seconds and sweep in slices of this size.
    Sweep(u64, u32),
    /// Close and reopen the store.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..3, 1usize..400, 1u32..40), 1..12).prop_map(Op::Commit),
        2 => (1u64..30, 1u32..20).prop_map(|(secs, slice)| Op::Sweep(secs, slice)),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Against a model, through segment rolls, sweeps, compaction and reopens: every unexpired
    /// item is readable with its cursor and bytes, cursors only go up, and totals add up.
    #[test]
    fn the_log_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), SMALL_SEGMENT).unwrap());
        // mailbox → cursor → (bytes, expires_at_ms); latest cursor per mailbox.
        let mut model: BTreeMap<u8, BTreeMap<u64, (Vec<u8>, u64)>> = BTreeMap::new();
        let mut latest: BTreeMap<u8, u64> = BTreeMap::new();
        let mut now = T0;
        let mut n = 0u64;
        for op in ops {
            match op {
                Op::Commit(items) => {
                    let s = store.as_ref().unwrap();
                    let requests: Vec<AppendRequest> = items
                        .iter()
                        .map(|(mailbox, len, ttl)| {
                            n += 1;
                            request(MailboxId([*mailbox; 32]), &payload(n, *len), *ttl)
                        })
                        .collect();
                    let cursors = commit(s, &requests, now);
                    for ((mailbox, _, ttl), (request, cursor)) in
                        items.iter().zip(requests.iter().zip(cursors))
                    {
                        let last = latest.entry(*mailbox).or_default();
                        prop_assert_eq!(cursor, *last + 1);
                        *last = cursor;
                        model.entry(*mailbox).or_default().insert(
                            cursor,
                            (request.ciphertext.to_vec(), now + u64::from(*ttl) * 1000),
                        );
                    }
                }
                Op::Sweep(secs, slice) => {
                    now += secs * 1000;
                    let s = store.as_ref().unwrap();
                    loop {
                        let report = s.sweep(now, slice).unwrap();
                        prop_assert!(report.evicted <= u64::from(slice));
                        if !report.more {
                            break;
                        }
                    }
                    for items in model.values_mut() {
                        items.retain(|_, (_, expires)| *expires > now);
                    }
                }
                Op::Reopen => {
                    drop(store.take());
                    store = Some(Store::open(dir.path(), SMALL_SEGMENT).unwrap());
                }
            }
            let s = store.as_ref().unwrap();
            for mailbox in 0u8..3 {
                let id = MailboxId([mailbox; 32]);
                let expected: Vec<(u64, Vec<u8>)> = model
                    .get(&mailbox)
                    .map(|items| {
                        items
                            .iter()
                            .filter(|(_, (_, expires))| *expires > now)
                            .map(|(c, (d, _))| (*c, d.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                prop_assert_eq!(read_all(s, &id, now), expected);
                prop_assert_eq!(s.meta(&id).latest, latest.get(&mailbox).copied().unwrap_or(0));
            }
            let stats = s.stats();
            prop_assert_eq!(stats.segments as usize, segment_files(dir.path()).len());
        }
    }
}

/// A store of small segments with `budget` and `faults`.
fn open_budgeted(dir: &Path, budget: StoreBudget, faults: &FaultPlan) -> Store {
    Store::open_with(
        dir,
        StoreOptions {
            segment_bytes: SMALL_SEGMENT,
            budget,
            faults: faults.clone(),
            ..StoreOptions::new(SMALL_SEGMENT)
        },
    )
    .unwrap()
}

/// Commit `requests` and answer every outcome.
fn outcomes(
    store: &Store,
    requests: &[AppendRequest],
    now_ms: u64,
    faults: &FaultPlan,
) -> Result<Vec<StoreOutcome>, StoreError> {
    store
        .commit(requests, now_ms, &StoreLimits::default(), faults)
        .map(|plan| plan.outcomes)
}

const RETRY_MS: u64 = 5_000;

#[test]
fn the_byte_budget_refuses_when_spent_and_expiry_gives_room_back() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::none();
    let budget = StoreBudget {
        bytes_max: 10 * charged_bytes(200) + 100,
        full_retry_after_ms: RETRY_MS,
        ..StoreBudget::unlimited()
    };
    let store = open_budgeted(dir.path(), budget, &faults);
    let requests: Vec<AppendRequest> = (0..15)
        .map(|n| request(MAILBOX, &payload(n, 200), 60))
        .collect();
    let got = outcomes(&store, &requests, T0, &faults).unwrap();
    let stored = got
        .iter()
        .filter(|o| matches!(o, StoreOutcome::Stored { .. }))
        .count();
    assert_eq!(
        stored, 10,
        "ten items of 200 B fit, each charged its overhead"
    );
    assert_eq!(
        got[10],
        StoreOutcome::Rejected(StoreError::StorageFull {
            retry_after_ms: RETRY_MS
        })
    );
    let stats = store.stats();
    assert!(stats.is_full);
    assert_eq!(stats.charged_bytes, 10 * (200 + ITEM_CHARGE_BYTES));
    // Another mailbox is refused too: the budget is the relay's.
    let other = MailboxId([9; 32]);
    let got = outcomes(&store, &[request(other, b"tiny", 60)], T0, &faults).unwrap();
    assert!(matches!(
        got[0],
        StoreOutcome::Rejected(StoreError::StorageFull { .. })
    ));
    // A duplicate writes nothing and is answered with its cursor.
    let got = outcomes(&store, &requests[..1], T0, &faults).unwrap();
    assert!(matches!(
        got[0],
        StoreOutcome::Stored {
            duplicate: true,
            ..
        }
    ));
    // Nothing expired yet: a sweep frees nothing and the store stays full.
    store.sweep(T0 + 1_000, 100).unwrap();
    assert!(store.stats().is_full);

    assert_eq!(sweep_all(&store, T0 + 61_000), 10);
    assert!(!store.stats().is_full, "expiry gave the budget back");
    assert_eq!(
        commit(&store, &[request(other, b"tiny", 60)], T0 + 61_000),
        vec![1]
    );
    assert_eq!(
        commit(&store, &[request(MAILBOX, b"after", 60)], T0 + 61_000),
        vec![11],
        "cursors go on after the refusals"
    );
}

#[test]
fn the_entry_budget_counts_items_and_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::none();
    let budget = StoreBudget {
        index_entries_max: MAILBOX_INDEX_ENTRIES + 10,
        ..StoreBudget::unlimited()
    };
    let store = open_budgeted(dir.path(), budget, &faults);
    let requests: Vec<AppendRequest> = (0..6)
        .map(|n| request(MAILBOX, &payload(n, 10), 60))
        .collect();
    commit(&store, &requests, T0);
    assert_eq!(store.stats().index_entries, MAILBOX_INDEX_ENTRIES + 6);
    // A new mailbox costs its own entries beside its item's: 4 + 6 + 4 + 1 > 4 + 10.
    let got = outcomes(
        &store,
        &[request(MailboxId([8; 32]), b"new mailbox", 60)],
        T0,
        &faults,
    )
    .unwrap();
    assert!(
        matches!(
            got[0],
            StoreOutcome::Rejected(StoreError::StorageFull { .. })
        ),
        "{got:?}"
    );
    // The known mailbox takes items up to the budget, then is refused.
    let more: Vec<AppendRequest> = (6..10)
        .map(|n| request(MAILBOX, &payload(n, 10), 60))
        .collect();
    assert_eq!(commit(&store, &more, T0), vec![7, 8, 9, 10]);
    let got = outcomes(
        &store,
        &[request(MAILBOX, &payload(11, 10), 60)],
        T0,
        &faults,
    )
    .unwrap();
    assert!(matches!(
        got[0],
        StoreOutcome::Rejected(StoreError::StorageFull { .. })
    ));
    assert!(store.stats().is_full);
}

#[test]
fn a_disk_below_the_floor_refuses_pushes_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::none();
    let budget = StoreBudget {
        min_free_disk_bytes: u64::MAX / 2,
        full_retry_after_ms: RETRY_MS,
        ..StoreBudget::unlimited()
    };
    let store = open_budgeted(dir.path(), budget, &faults);
    assert!(store.stats().is_full, "full from the start");
    assert!(store.stats().free_disk_bytes < u64::MAX / 2);
    let got = outcomes(&store, &[request(MAILBOX, b"x", 60)], T0, &faults).unwrap();
    assert_eq!(
        got[0],
        StoreOutcome::Rejected(StoreError::StorageFull {
            retry_after_ms: RETRY_MS
        })
    );
    let stats = store.stats();
    assert_eq!(
        (stats.items, stats.disk_bytes),
        (0, SEGMENT_HEADER as u64),
        "nothing written"
    );
    assert!(!dir.path().join(RESERVE_FILE).exists() || stats.free_disk_bytes > 0);
    drop(store);

    // A floor the disk is above: pushes go through and the store keeps its reserve.
    let store = open_budgeted(
        dir.path(),
        StoreBudget {
            min_free_disk_bytes: 1,
            ..StoreBudget::unlimited()
        },
        &faults,
    );
    assert!(!store.stats().is_full);
    assert_eq!(commit(&store, &[request(MAILBOX, b"x", 60)], T0), vec![1]);
    assert!(dir.path().join(RESERVE_FILE).exists());
}

#[test]
fn a_full_disk_frees_dead_segments_without_writing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultPlan::seeded(3);
    let store = open_budgeted(
        dir.path(),
        StoreBudget {
            full_retry_after_ms: RETRY_MS,
            ..StoreBudget::unlimited()
        },
        &faults,
    );
    // Short-lived items of one mailbox over several segments, then a long-lived one of
    // another mailbox, so the old segments die and hold no mailbox's newest cursor but the
    // last one of the short-lived mailbox.
    for batch in 0..10u64 {
        let requests: Vec<AppendRequest> = (0..10)
            .map(|i| request(MAILBOX, &payload(batch * 10 + i, 200), 60))
            .collect();
        commit(&store, &requests, T0);
    }
    let keeper = MailboxId([6; 32]);
    for n in 0..20u64 {
        commit(
            &store,
            &[request(keeper, &payload(1000 + n, 200), 3600)],
            T0,
        );
    }
    let before = store.stats();
    let files_before = segment_files(dir.path()).len();
    assert!(files_before >= 6, "{files_before} segments");

    // The disk is full: every write fails.
    faults.set(FaultPoint::StoreDiskFull, 1.0);
    let refused = outcomes(&store, &[request(keeper, b"while full", 3600)], T0, &faults);
    assert_eq!(
        refused.unwrap_err(),
        StoreError::StorageFull {
            retry_after_ms: RETRY_MS
        },
        "a full disk is StorageFull, never the OS text"
    );
    assert!(store.stats().is_full);
    let fired_before_sweep = faults.fired(FaultPoint::StoreDiskFull);

    // The items expire; the sweep frees the dead segments although no write succeeds.
    let now = T0 + 61_000;
    assert_eq!(sweep_all(&store, now), 100);
    let after = store.stats();
    let files_after = segment_files(dir.path()).len();
    assert!(
        files_after < files_before && after.disk_bytes < before.disk_bytes,
        "{files_before} -> {files_after} segments, {} -> {} bytes",
        before.disk_bytes,
        after.disk_bytes
    );
    assert!(
        faults.fired(FaultPoint::StoreDiskFull) > fired_before_sweep,
        "the sweep did try to write (its marks) and was refused"
    );
    assert_eq!(read_all(&store, &keeper, now).len(), 20);

    // Space is back: the next sweep releases the rest and pushes go through.
    faults.set(FaultPoint::StoreDiskFull, 0.0);
    store.sweep(now, 100).unwrap();
    assert!(!store.stats().is_full);
    assert_eq!(
        commit(&store, &[request(MAILBOX, b"after", 60)], now),
        vec![101]
    );
    assert_eq!(
        commit(&store, &[request(keeper, b"after", 3600)], now),
        vec![21]
    );
    drop(store);
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    assert_eq!(store.meta(&MAILBOX).latest, 101);
    assert_eq!(read_all(&store, &keeper, now).len(), 21);
}

/// A tmpfs of `bytes` mounted on a fresh dir, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount needs root (CAP_SYS_ADMIN)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Fill the filesystem of `dir` with a file until the disk refuses (`ENOSPC`).
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("hog");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                assert!(
                    zerok_actors::relay::blob_store::segments::is_disk_full(&err),
                    "{err}"
                );
                break;
            }
        }
    }
    // Whatever a partial block left: fill it byte by byte.
    while file.write(&[1]).is_ok_and(|n| n == 1) {}
    path
}

#[test]
fn a_really_full_disk_releases_through_the_reserve_and_recovers() {
    let tmpfs = Tmpfs::mount(16 * 1024 * 1024);
    let dir = tmpfs.0.path().join("store");
    let faults = FaultPlan::none();
    let store = Store::open_with(
        &dir,
        StoreOptions {
            segment_bytes: 256 * 1024,
            budget: StoreBudget {
                min_free_disk_bytes: 64 * 1024,
                full_retry_after_ms: RETRY_MS,
                ..StoreBudget::unlimited()
            },
            faults: faults.clone(),
            ..StoreOptions::new(256 * 1024)
        },
    )
    .unwrap();
    assert!(dir.join(RESERVE_FILE).exists());
    // A hundred mailboxes per segment (one 2.6 KB item each overflow a 256 KiB segment), so
    // every dead segment holds the newest cursor of a hundred mailboxes: their marks (~5 KB a
    // segment) do not fit the page the active segment has already allocated.
    let mailbox = |segment: u8, m: u8| {
        let mut id = [0u8; 32];
        id[0] = segment + 1;
        id[1] = m;
        MailboxId(id)
    };
    for segment in 0..8u8 {
        let requests: Vec<AppendRequest> = (0..100u8)
            .map(|m| {
                let n = u64::from(segment) * 1000 + u64::from(m);
                request(mailbox(segment, m), &payload(n, 2600), 60)
            })
            .collect();
        commit(&store, &requests, T0);
    }
    let files_before = segment_files(&dir).len();
    assert!(files_before >= 8, "{files_before} segments");
    // Something else fills the disk to the last byte.
    let hog = fill_disk(tmpfs.0.path());
    let got = outcomes(
        &store,
        &[request(MAILBOX, &payload(1, 4000), 60)],
        T0,
        &faults,
    );
    assert!(
        matches!(
            got.as_deref(),
            Ok([StoreOutcome::Rejected(StoreError::StorageFull { .. })])
                | Err(StoreError::StorageFull { .. })
        ),
        "{got:?}"
    );
    // Everything expires: the sweep must write marks on a full disk to free anything.
    let now = T0 + 61_000;
    assert_eq!(sweep_all(&store, now), 800);
    assert!(
        segment_files(&dir).len() < files_before,
        "nothing released on a full disk"
    );
    assert!(
        !dir.join(RESERVE_FILE).exists(),
        "the reserve paid for the marks"
    );
    assert!(!store.stats().is_full);
    assert_eq!(
        commit(&store, &[request(mailbox(0, 0), b"after", 60)], now),
        vec![2]
    );
    // With the hog gone the reserve comes back.
    std::fs::remove_file(hog).unwrap();
    store.sweep(now, 10).unwrap();
    assert!(dir.join(RESERVE_FILE).exists());
    drop(store);
    let store = Store::open(&dir, 256 * 1024).unwrap();
    for segment in 0..8u8 {
        for m in [1, 50, 99] {
            assert_eq!(store.meta(&mailbox(segment, m)).latest, 1, "mark kept");
        }
    }
}

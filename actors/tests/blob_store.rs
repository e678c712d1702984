//! BlobStore, CleanupSweeper and Infra tests on a real segment-log store in a temp dir: group
//! commit, cursors, idempotency, quota and size limits, paging, TTL under virtual time,
//! sweeping, injected write/flush faults, durability across a reopen, and a killed store
//! restarted under Infra without losing an acked push. A property test checks the store
//! against a model. Budgets through the actor: the per-item charge, the per-mailbox item cap,
//! a full relay answered `StorageFull` with a retry hint and shown in `store_full`, and an
//! injected full disk that a sweep recovers from. An item damaged on disk is never served
//! and shows in `store_damaged_records_total` right after the read that found it.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::collector;
use proptest::prelude::*;
use ractor::{Actor, ActorRef};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use zerok_actors::clock::Clock;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::relay::blob_store::core::{
    ITEM_CHARGE_BYTES, StoreBudget, StoreLimits, charged_bytes,
};
use zerok_actors::relay::blob_store::segments::SEGMENT_BYTES_DEFAULT;
use zerok_actors::relay::blob_store::{
    BlobStoreActor, BlobStoreArgs, Store as LogStore, StoreOptions,
};
use zerok_actors::relay::infra::{InfraActor, InfraArgs};
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_actors::relay::routers_supervisor::{RoutersSupervisorActor, RoutersSupervisorArgs};
use zerok_actors::rng::Rng;
use zerok_actors::supervision::RestartPolicy;
use zerok_messages::relay::{
    AppendRequest, BlobStoreMsg, GroupRouterMsg, InfraMsg, Page, RoutersMsg, StoreError,
    StoreOutcome, StoreStats, SweepReport,
};
use zerok_messages::{BlobId, Cursor, MailboxId};

const MAILBOX: MailboxId = MailboxId([1; 32]);
const HOUR: Duration = Duration::from_secs(3600);

struct Store {
    actor: ActorRef<BlobStoreMsg>,
    store: Arc<LogStore>,
    _dir: tempfile::TempDir,
    metrics: RelayMetrics,
    /// Ends once the actor stopped and dropped its state.
    ended: ractor::concurrency::JoinHandle<()>,
}

async fn start_in(
    dir: tempfile::TempDir,
    limits: StoreLimits,
    clock: Clock,
    faults: FaultPlan,
) -> Store {
    let store = open(dir.path());
    spawn_on(store, dir, limits, clock, faults).await
}

/// A store actor on `store` (kept in `dir`).
async fn spawn_on(
    store: Arc<LogStore>,
    dir: tempfile::TempDir,
    limits: StoreLimits,
    clock: Clock,
    faults: FaultPlan,
) -> Store {
    let metrics = RelayMetrics::new();
    let (actor, ended) = Actor::spawn(
        None,
        BlobStoreActor,
        BlobStoreArgs {
            store: store.clone(),
            limits,
            clock,
            faults,
            metrics: metrics.clone(),
        },
    )
    .await
    .unwrap();
    Store {
        actor,
        store,
        _dir: dir,
        metrics,
        ended,
    }
}

/// A store actor on a store opened with `options` (its faults are the actor's too).
async fn start_with(
    dir: tempfile::TempDir,
    options: StoreOptions,
    limits: StoreLimits,
    clock: Clock,
) -> Store {
    let faults = options.faults.clone();
    let store = Arc::new(LogStore::open_with(dir.path(), options).unwrap());
    spawn_on(store, dir, limits, clock, faults).await
}

fn open(dir: &std::path::Path) -> Arc<LogStore> {
    Arc::new(LogStore::open(dir, SEGMENT_BYTES_DEFAULT).unwrap())
}

async fn start(limits: StoreLimits) -> Store {
    start_in(
        tempfile::tempdir().unwrap(),
        limits,
        Clock::system(),
        FaultPlan::none(),
    )
    .await
}

fn request(token: u64, mailbox: MailboxId, payload: &[u8], ttl_secs: Option<u32>) -> AppendRequest {
    AppendRequest {
        token,
        mailbox,
        blob_id: BlobId::of_ciphertext(payload),
        ciphertext: Bytes::copy_from_slice(payload),
        ttl_secs,
    }
}

fn payload(n: u64) -> Vec<u8> {
    format!("ciphertext-{n:08}").into_bytes()
}

/// Append `requests` in one message and wait for their outcomes.
async fn append(store: &ActorRef<BlobStoreMsg>, requests: Vec<AppendRequest>) -> Vec<StoreOutcome> {
    let (router, mut rx) = collector().await;
    let n = requests.len();
    store
        .cast(BlobStoreMsg::Append {
            requests,
            reply_to: router.clone(),
        })
        .unwrap();
    let mut outcomes = Vec::new();
    while outcomes.len() < n {
        let results = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        outcomes.extend(results.into_iter().map(|(_, outcome)| outcome));
    }
    router.stop(None);
    outcomes
}

fn cursor(outcome: &StoreOutcome) -> (u64, bool) {
    match outcome {
        StoreOutcome::Stored {
            cursor, duplicate, ..
        } => (cursor.0, *duplicate),
        StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
    }
}

async fn read(store: &ActorRef<BlobStoreMsg>, after: u64, max_items: u32, max_bytes: u32) -> Page {
    ractor::call!(store, |reply| BlobStoreMsg::Read {
        mailbox: MAILBOX,
        after: Cursor(after),
        max_items,
        max_bytes,
        reply,
    })
    .unwrap()
    .unwrap()
}

async fn stats(store: &ActorRef<BlobStoreMsg>) -> StoreStats {
    ractor::call!(store, |reply| BlobStoreMsg::GetStats { reply }).unwrap()
}

async fn sweep(store: &ActorRef<BlobStoreMsg>, max_items: u32) -> SweepReport {
    ractor::call!(store, |reply| BlobStoreMsg::Sweep { max_items, reply }).unwrap()
}

#[tokio::test]
async fn group_commit_answers_a_burst_after_one_flush() {
    let store = start(StoreLimits::default()).await;
    let (router, mut rx) = collector().await;
    // On this single-threaded runtime the store cannot run before we await: all 100
    // appends are queued before the first commit, so one commit (one flush) takes them all.
    for n in 0..100u64 {
        store
            .actor
            .cast(BlobStoreMsg::Append {
                requests: vec![request(n, MAILBOX, &payload(n), None)],
                reply_to: router.clone(),
            })
            .unwrap();
    }
    let results = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results.len(), 100, "one Stored message for the whole batch");
    for (i, (token, outcome)) in results.iter().enumerate() {
        assert_eq!(*token, i as u64);
        assert_eq!(cursor(outcome), (i as u64 + 1, false));
    }
    let totals = stats(&store.actor).await;
    assert_eq!(totals.commits, 1);
    assert_eq!(totals.items, 100);
    assert_eq!(store.metrics.items_stored.get(), 100);
    assert!(
        store
            .metrics
            .render()
            .contains("zerok_relay_batch_size_sum 100")
    );
}

#[tokio::test]
async fn an_item_damaged_on_disk_is_never_served_and_counted_at_once() {
    let store = start(StoreLimits::default()).await;
    let requests = (0..3)
        .map(|n| request(n, MAILBOX, &payload(n), None))
        .collect();
    append(&store.actor, requests).await;
    // One byte of the second item's ciphertext goes bad on disk.
    let segment = store._dir.path().join(format!("{:020}.seg", 1));
    let bytes = std::fs::read(&segment).unwrap();
    let second = payload(1);
    let at = bytes
        .windows(second.len())
        .position(|w| w == second.as_slice())
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[bytes[at] ^ 0x20], at as u64).unwrap();

    let page = read(&store.actor, 0, 10, u32::MAX).await;
    let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
    assert_eq!(cursors, vec![1, 3]);
    assert_eq!(page.next, Cursor(3), "readers move past it");
    assert_eq!(store.metrics.store_damaged_records_total.get(), 1);
    assert_eq!(stats(&store.actor).await.damaged_records, 1);
    read(&store.actor, 0, 10, u32::MAX).await;
    assert_eq!(
        store.metrics.store_damaged_records_total.get(),
        1,
        "counted once"
    );
}

#[tokio::test]
async fn commit_size_is_capped() {
    let store = start(StoreLimits {
        commit_max_items: 10,
        ..StoreLimits::default()
    })
    .await;
    let requests = (0..35)
        .map(|n| request(n, MAILBOX, &payload(n), None))
        .collect();
    let outcomes = append(&store.actor, requests).await;
    let cursors: Vec<u64> = outcomes.iter().map(|o| cursor(o).0).collect();
    assert_eq!(cursors, (1..=35).collect::<Vec<_>>());
    assert_eq!(stats(&store.actor).await.commits, 4);
}

#[tokio::test]
async fn duplicates_keep_their_cursor_and_store_nothing() {
    let store = start(StoreLimits::default()).await;
    let first = append(&store.actor, vec![request(0, MAILBOX, b"a", None)]).await;
    assert_eq!(cursor(&first[0]), (1, false));
    let again = append(
        &store.actor,
        vec![
            request(1, MAILBOX, b"b", None),
            request(2, MAILBOX, b"a", None),
            request(3, MAILBOX, b"b", None),
        ],
    )
    .await;
    let got: Vec<_> = again.iter().map(cursor).collect();
    assert_eq!(got, vec![(2, false), (1, true), (2, true)]);
    // Same blob in another mailbox is another item.
    let other = append(
        &store.actor,
        vec![request(4, MailboxId([2; 32]), b"a", None)],
    )
    .await;
    assert_eq!(cursor(&other[0]), (1, false));
    let totals = stats(&store.actor).await;
    assert_eq!((totals.items, totals.bytes, totals.mailboxes), (3, 3, 2));
}

#[tokio::test]
async fn quota_and_blob_size_are_refused_and_change_nothing() {
    // 250 bytes of ciphertext in three items, each also charged its overhead.
    const QUOTA: u64 = 250 + 3 * ITEM_CHARGE_BYTES;
    let store = start(StoreLimits {
        blob_bytes_max: 100,
        mailbox_quota_bytes: QUOTA,
        ..StoreLimits::default()
    })
    .await;
    let outcomes = append(
        &store.actor,
        vec![
            request(0, MAILBOX, &[1; 100], None),
            request(1, MAILBOX, &[2; 101], None),
            request(2, MAILBOX, &[3; 100], None),
            request(3, MAILBOX, &[4; 100], None),
            request(4, MAILBOX, &[5; 50], None),
        ],
    )
    .await;
    assert_eq!(cursor(&outcomes[0]), (1, false));
    assert_eq!(
        outcomes[1],
        StoreOutcome::Rejected(StoreError::TooLarge {
            bytes: 101,
            limit: 100
        })
    );
    assert_eq!(cursor(&outcomes[2]), (2, false));
    assert_eq!(
        outcomes[3],
        StoreOutcome::Rejected(StoreError::QuotaExceeded { quota_bytes: QUOTA })
    );
    assert_eq!(cursor(&outcomes[4]), (3, false));
    let page = read(&store.actor, 0, 100, u32::MAX).await;
    assert_eq!(page.items.len(), 3);
    assert_eq!(stats(&store.actor).await.bytes, 250);
}

#[tokio::test]
async fn pages_are_bounded_by_items_and_bytes() {
    let store = start(StoreLimits::default()).await;
    let requests = (0..10)
        .map(|n| request(n, MAILBOX, &[n as u8; 100], None))
        .collect();
    append(&store.actor, requests).await;

    let page = read(&store.actor, 0, 4, u32::MAX).await;
    assert_eq!(page.items.len(), 4);
    assert_eq!((page.next, page.has_more), (Cursor(4), true));

    let page = read(&store.actor, 4, 100, 250).await;
    assert_eq!(page.items.len(), 2, "250 bytes hold two 100-byte items");
    assert_eq!((page.next, page.has_more), (Cursor(6), true));

    // One item always fits, so a reader makes progress with a tiny byte budget.
    let page = read(&store.actor, 6, 100, 10).await;
    assert_eq!(page.items.len(), 1);

    let page = read(&store.actor, 7, 100, u32::MAX).await;
    let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
    assert_eq!(cursors, vec![8, 9, 10]);
    assert_eq!((page.next, page.has_more), (Cursor(10), false));
    assert_eq!(page.items[2].ciphertext, Bytes::from(vec![9u8; 100]));
    assert_eq!(page.items[2].blob_id, BlobId::of_ciphertext(&[9u8; 100]));

    let empty = read(&store.actor, 10, 100, u32::MAX).await;
    assert!(empty.items.is_empty());
    assert_eq!((empty.next, empty.has_more), (Cursor(10), false));
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_and_sweeping_in_virtual_hours() {
    let clock = Clock::virtual_at(1_700_000_000_000);
    let store = start_in(
        tempfile::tempdir().unwrap(),
        StoreLimits {
            ttl_default_secs: 24 * 3600,
            ttl_max_secs: 48 * 3600,
            ..StoreLimits::default()
        },
        clock,
        FaultPlan::none(),
    )
    .await;
    let outcomes = append(
        &store.actor,
        vec![
            request(0, MAILBOX, b"one-hour", Some(3600)),
            request(1, MAILBOX, b"default-day", None),
            request(2, MAILBOX, b"capped-at-two-days", Some(u32::MAX)),
        ],
    )
    .await;
    assert_eq!(outcomes.len(), 3);
    assert_eq!(read(&store.actor, 0, 10, u32::MAX).await.items.len(), 3);
    assert_eq!(sweep(&store.actor, 100).await.evicted, 0, "nothing due yet");

    tokio::time::advance(2 * HOUR).await;
    let page = read(&store.actor, 0, 10, u32::MAX).await;
    let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
    assert_eq!(
        cursors,
        vec![2, 3],
        "expired items are never returned, even unswept"
    );
    assert_eq!(sweep(&store.actor, 100).await.evicted, 1);

    tokio::time::advance(23 * HOUR).await;
    assert_eq!(read(&store.actor, 0, 10, u32::MAX).await.items.len(), 1);
    tokio::time::advance(24 * HOUR).await;
    let page = read(&store.actor, 0, 10, u32::MAX).await;
    assert!(page.items.is_empty());
    assert_eq!(page.next, Cursor(3), "readers move past expired items");
    assert_eq!(sweep(&store.actor, 100).await.evicted, 2);
    let totals = stats(&store.actor).await;
    assert_eq!((totals.items, totals.bytes, totals.mailboxes), (0, 0, 0));
    assert_eq!(store.metrics.items_stored.get(), 0);

    // Cursors are never reused after eviction; an evicted blob can be stored again.
    let again = append(&store.actor, vec![request(3, MAILBOX, b"one-hour", None)]).await;
    assert_eq!(cursor(&again[0]), (4, false));
    // The segment that held the evicted items was deleted once nothing in it was live; what
    // is on disk is a new segment with the mailbox's cursor mark and the new item.
    let totals = stats(&store.actor).await;
    assert_eq!(totals.segments, 1);
    assert_eq!(
        totals.disk_bytes,
        20 + (24 + 8 + 41) + (24 + 8 + 89 + 8),
        "segment header + a batch of the mark + a batch of the new item's record"
    );
    assert_eq!(store.store.stats().items, 1);
}

#[tokio::test(start_paused = true)]
async fn sweeping_goes_in_bounded_slices() {
    let clock = Clock::virtual_at(1_700_000_000_000);
    let store = start_in(
        tempfile::tempdir().unwrap(),
        StoreLimits::default(),
        clock,
        FaultPlan::none(),
    )
    .await;
    let requests = (0..25)
        .map(|n| request(n, MAILBOX, &payload(n), Some(60)))
        .collect();
    append(&store.actor, requests).await;
    tokio::time::advance(HOUR).await;
    assert_eq!(
        sweep(&store.actor, 10).await,
        SweepReport {
            evicted: 10,
            more: true
        }
    );
    assert_eq!(
        sweep(&store.actor, 10).await,
        SweepReport {
            evicted: 10,
            more: true
        }
    );
    assert_eq!(
        sweep(&store.actor, 10).await,
        SweepReport {
            evicted: 5,
            more: false
        }
    );
    assert_eq!(stats(&store.actor).await.items, 0);
}

#[tokio::test]
async fn acked_items_survive_a_reopen_and_cursors_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let store = start_in(
        dir,
        StoreLimits::default(),
        Clock::system(),
        FaultPlan::none(),
    )
    .await;
    let requests = (0..20)
        .map(|n| request(n, MAILBOX, &payload(n), None))
        .collect();
    append(&store.actor, requests).await;
    store.actor.stop(None);
    let Store {
        store, _dir, ended, ..
    } = store;
    // Once the actor has ended, its state (and its clone of the store) is gone: ours is the
    // last, and dropping it closes the store.
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the store actor stops")
        .unwrap();
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the stopped actor let go of the store"
    );
    drop(store);
    let store = Arc::new(
        LogStore::open(&path, SEGMENT_BYTES_DEFAULT).expect("the closed store reopens at once"),
    );
    let metrics = RelayMetrics::new();
    let (actor, _) = Actor::spawn(
        None,
        BlobStoreActor,
        BlobStoreArgs {
            store,
            limits: StoreLimits::default(),
            clock: Clock::system(),
            faults: FaultPlan::none(),
            metrics: metrics.clone(),
        },
    )
    .await
    .unwrap();
    let page = read(&actor, 0, 100, u32::MAX).await;
    assert_eq!(page.items.len(), 20);
    assert_eq!(page.items[19].ciphertext, Bytes::from(payload(19)));
    assert_eq!(metrics.items_stored.get(), 20, "totals are reloaded");
    let more = append(
        &actor,
        vec![
            request(0, MAILBOX, b"next", None),
            request(1, MAILBOX, &payload(3), None),
        ],
    )
    .await;
    assert_eq!(cursor(&more[0]), (21, false));
    assert_eq!(
        cursor(&more[1]),
        (4, true),
        "idempotency survives the reopen"
    );
    drop(_dir);
}

#[tokio::test]
async fn a_different_store_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), "zerok-store-999\n").unwrap();
    let err = LogStore::open(dir.path(), SEGMENT_BYTES_DEFAULT)
        .err()
        .unwrap();
    assert!(err.to_string().contains("zerok-store-999"), "{err}");
    // A sled directory of the relay before format 3 is named as such, and left alone.
    let old = tempfile::tempdir().unwrap();
    std::fs::write(old.path().join("conf"), "segment_size: 524288\n").unwrap();
    std::fs::write(old.path().join("db"), b"sled").unwrap();
    let err = LogStore::open(old.path(), SEGMENT_BYTES_DEFAULT)
        .err()
        .unwrap();
    assert!(err.to_string().contains("sled"), "{err}");
    assert!(!old.path().join("FORMAT").exists());
}

#[tokio::test]
async fn failed_writes_and_flushes_answer_unavailable_and_retries_converge() {
    let faults = FaultPlan::seeded(7);
    let store = start_in(
        tempfile::tempdir().unwrap(),
        StoreLimits::default(),
        Clock::system(),
        faults.clone(),
    )
    .await;
    faults.set(FaultPoint::BeforeStoreWrite, 1.0);
    let outcome = append(&store.actor, vec![request(0, MAILBOX, b"x", None)]).await;
    assert!(matches!(
        outcome[0],
        StoreOutcome::Rejected(StoreError::Unavailable(_))
    ));
    assert_eq!(stats(&store.actor).await.items, 0);
    assert!(read(&store.actor, 0, 10, u32::MAX).await.items.is_empty());

    faults.set(FaultPoint::BeforeStoreWrite, 0.0);
    faults.set(FaultPoint::BeforeFlush, 1.0);
    let outcome = append(&store.actor, vec![request(1, MAILBOX, b"y", None)]).await;
    assert!(matches!(
        outcome[0],
        StoreOutcome::Rejected(StoreError::Unavailable(_))
    ));

    // The client retries: the retry is answered with one cursor, never two.
    faults.set(FaultPoint::BeforeFlush, 0.0);
    let retry = append(
        &store.actor,
        vec![
            request(2, MAILBOX, b"y", None),
            request(3, MAILBOX, b"z", None),
        ],
    )
    .await;
    let y = cursor(&retry[0]).0;
    let z = cursor(&retry[1]).0;
    assert_eq!(y, 1);
    assert_eq!(z, 2);
    let page = read(&store.actor, 0, 10, u32::MAX).await;
    let cursors: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
    assert_eq!(cursors, vec![1, 2]);
    assert!(faults.fired(FaultPoint::BeforeFlush) >= 1);
    assert_eq!(stats(&store.actor).await.items, 2);
}

async fn infra(
    dir: &std::path::Path,
    metrics: &RelayMetrics,
) -> (
    ActorRef<InfraMsg>,
    zerok_actors::shared_ref::SharedRef<BlobStoreMsg>,
) {
    let args = InfraArgs {
        store: open(dir),
        limits: StoreLimits::default(),
        clock: Clock::system(),
        faults: FaultPlan::none(),
        metrics: metrics.clone(),
        sweep_interval: Duration::from_secs(3600),
        sweep_slice_items: 100,
        store_restart: RestartPolicy::STANDARD,
        sweeper_restart: RestartPolicy::STANDARD,
        rng: Rng::seeded(1),
    };
    let (infra, _) = Actor::spawn(None, InfraActor, args).await.unwrap();
    let store = ractor::call!(infra, |reply| InfraMsg::GetStore { reply }).unwrap();
    (infra, store)
}

async fn push(router: &ActorRef<GroupRouterMsg>, data: &[u8]) -> Result<u64, StoreError> {
    let ciphertext = Bytes::copy_from_slice(data);
    ractor::call_t!(
        router,
        |reply| GroupRouterMsg::Push {
            blob_id: BlobId::of_ciphertext(&ciphertext),
            ciphertext,
            ttl_secs: None,
            reply,
        },
        20_000
    )
    .unwrap()
    .map(|acked| acked.cursor.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_is_restarted_and_no_acked_push_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = RelayMetrics::new();
    let (infra, store) = infra(dir.path(), &metrics).await;
    let (routers, _) = Actor::spawn(
        None,
        RoutersSupervisorActor,
        RoutersSupervisorArgs {
            store: store.clone(),
            metrics: metrics.clone(),
            router_restart: RestartPolicy::STANDARD,
            rng: Rng::seeded(1),
            faults: FaultPlan::none(),
        },
    )
    .await
    .unwrap();
    let router = ractor::call!(routers, |reply| RoutersMsg::GetRouter {
        mailbox: MAILBOX,
        reply
    })
    .unwrap()
    .unwrap();
    let mut acked = BTreeMap::new();
    for n in 0..10u64 {
        acked.insert(push(&router, &payload(n)).await.unwrap(), n);
    }
    let old = store.get();
    old.kill();
    // Pushes sent while the store is dead are either refused (the client retries) or
    // resent by the router to the restarted store and acked.
    let mut refused = 0;
    for n in 10..20u64 {
        match push(&router, &payload(n)).await {
            Ok(cursor) => {
                assert!(acked.insert(cursor, n).is_none(), "cursor {cursor} reused");
            }
            Err(StoreError::Unavailable(_)) => refused += 1,
            Err(err) => panic!("{err}"),
        }
    }
    // Wait for Infra to restart the store (after its backoff; nothing announces the swap of
    // the shared ref, so it is polled), then retry the refused ones.
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.get().get_id() == old.get_id() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("Infra restarts the killed store within 10 s");
    for n in 10..20u64 {
        let cursor = push(&router, &payload(n)).await.unwrap();
        match acked.get(&cursor) {
            Some(existing) => assert_eq!(*existing, n, "cursor {cursor} reused"),
            None => {
                acked.insert(cursor, n);
            }
        }
    }
    assert!(refused <= 10);
    let page = ractor::call!(store.get(), |reply| BlobStoreMsg::Read {
        mailbox: MAILBOX,
        after: Cursor(0),
        max_items: 100,
        max_bytes: u32::MAX,
        reply,
    })
    .unwrap()
    .unwrap();
    let stored: BTreeMap<u64, Bytes> = page
        .items
        .iter()
        .map(|i| (i.cursor.0, i.ciphertext.clone()))
        .collect();
    assert_eq!(stored.len(), 20);
    for (cursor, n) in &acked {
        assert_eq!(
            stored[cursor],
            Bytes::from(payload(*n)),
            "acked push {n} at cursor {cursor}"
        );
    }
    assert_eq!(
        ractor::call!(infra, |reply| InfraMsg::GetRestarts { reply }).unwrap(),
        1
    );
    assert!(
        metrics
            .render()
            .contains("zerok_relay_actor_restarts_total{actor=\"blob_store\"} 1")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Against a model: per-mailbox cursors strictly increase from 1 without gaps, a
    /// duplicate gets its original cursor, and a full read returns exactly the model.
    #[test]
    fn store_matches_a_model(ops in proptest::collection::vec((0u8..3, 0u8..12), 1..60), batch in 1usize..8) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let store = start(StoreLimits::default()).await;
            let mut model: BTreeMap<MailboxId, Vec<Vec<u8>>> = BTreeMap::new();
            for chunk in ops.chunks(batch) {
                let requests: Vec<AppendRequest> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (mailbox, blob))| request(i as u64, MailboxId([*mailbox; 32]), &[*blob; 8], None))
                    .collect();
                let outcomes = append(&store.actor, requests.clone()).await;
                for (request, outcome) in requests.iter().zip(&outcomes) {
                    let items = model.entry(request.mailbox).or_default();
                    let (got, duplicate) = cursor(outcome);
                    match items.iter().position(|c| c.as_slice() == request.ciphertext.as_ref()) {
                        Some(index) => {
                            assert!(duplicate);
                            assert_eq!(got, index as u64 + 1);
                        }
                        None => {
                            assert!(!duplicate);
                            items.push(request.ciphertext.to_vec());
                            assert_eq!(got, items.len() as u64);
                        }
                    }
                }
            }
            for (mailbox, items) in &model {
                let page = ractor::call!(store.actor, |reply| BlobStoreMsg::Read {
                    mailbox: *mailbox,
                    after: Cursor(0),
                    max_items: 1000,
                    max_bytes: u32::MAX,
                    reply,
                })
                .unwrap()
                .unwrap();
                let got: Vec<Vec<u8>> = page.items.iter().map(|i| i.ciphertext.to_vec()).collect();
                assert_eq!(&got, items);
            }
        });
    }
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_evicts_on_its_interval_in_slices() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = RelayMetrics::new();
    let args = InfraArgs {
        store: open(dir.path()),
        limits: StoreLimits::default(),
        clock: Clock::virtual_at(1_700_000_000_000),
        faults: FaultPlan::none(),
        metrics: metrics.clone(),
        sweep_interval: Duration::from_secs(600),
        sweep_slice_items: 7,
        store_restart: RestartPolicy::STANDARD,
        sweeper_restart: RestartPolicy::STANDARD,
        rng: Rng::seeded(1),
    };
    let (infra, _) = Actor::spawn(None, InfraActor, args).await.unwrap();
    let store = ractor::call!(infra, |reply| InfraMsg::GetStore { reply }).unwrap();
    let requests = (0..30)
        .map(|n| request(n, MAILBOX, &payload(n), Some(60)))
        .collect();
    append(&store.get(), requests).await;
    assert_eq!(metrics.items_stored.get(), 30);
    // Expired after a minute, swept at the next tick (10 minutes), slice after slice.
    // Sleeping (not `advance`) lets the paused clock move only while nothing runs, so
    // the store's blocking-pool work is never overtaken by a timeout.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if metrics.sweeper_evictions_total.get() == 30 {
            break;
        }
    }
    assert_eq!(metrics.sweeper_evictions_total.get(), 30);
    assert_eq!(stats(&store.get()).await.items, 0);
    assert_eq!(metrics.items_stored.get(), 0);
}

#[tokio::test]
async fn lookups_of_empty_mailboxes_do_not_grow_memory() {
    let store = start(StoreLimits::default()).await;
    for n in 0..500u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let mailbox = MailboxId(id);
        let latest = ractor::call!(store.actor, |reply| BlobStoreMsg::GetLatest {
            mailbox,
            reply
        })
        .unwrap()
        .unwrap();
        assert_eq!(latest, Cursor(0));
        let page = ractor::call!(store.actor, |reply| BlobStoreMsg::Read {
            mailbox,
            after: Cursor(0),
            max_items: 10,
            max_bytes: 1000,
            reply,
        })
        .unwrap()
        .unwrap();
        assert!(page.items.is_empty());
    }
    assert_eq!(stats(&store.actor).await.cached_metas, 0);
    append(&store.actor, vec![request(0, MAILBOX, b"real", None)]).await;
    assert_eq!(stats(&store.actor).await.cached_metas, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Sweeping in slices of any size evicts exactly the expired items, whatever mix of
    /// TTLs and commits produced the expiry index, and the totals stay consistent.
    #[test]
    fn sweeps_evict_exactly_the_expired(
        commits in proptest::collection::vec(proptest::collection::vec((0u8..2, 1u32..5), 1..20), 1..6),
        slice in 1u32..9,
        at in 1u64..6,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let clock = Clock::manual(1_000_000);
            let store = start_in(
                tempfile::tempdir().unwrap(),
                StoreLimits::default(),
                clock.clone(),
                FaultPlan::none(),
            )
            .await;
            let mut expected_left = 0u64;
            let mut n = 0u64;
            for requests in &commits {
                let batch: Vec<AppendRequest> = requests
                    .iter()
                    .map(|(mailbox, ttl)| {
                        n += 1;
                        if u64::from(*ttl) > at {
                            expected_left += 1;
                        }
                        request(n, MailboxId([*mailbox; 32]), &n.to_be_bytes(), Some(*ttl))
                    })
                    .collect();
                append(&store.actor, batch).await;
            }
            // `at` seconds later, every item with a TTL of at most `at` seconds is due.
            clock.set_unix_ms(1_000_000 + at * 1000);
            let mut evicted = 0;
            loop {
                let report = sweep(&store.actor, slice).await;
                assert!(report.evicted <= u64::from(slice));
                evicted += report.evicted;
                if !report.more {
                    break;
                }
            }
            assert_eq!(evicted, n - expected_left);
            let totals = stats(&store.actor).await;
            assert_eq!(totals.items, expected_left);
            let mut readable = 0;
            for mailbox in 0u8..2 {
                let page = ractor::call!(store.actor, |reply| BlobStoreMsg::Read {
                    mailbox: MailboxId([mailbox; 32]),
                    after: Cursor(0),
                    max_items: 10_000,
                    max_bytes: u32::MAX,
                    reply,
                })
                .unwrap()
                .unwrap();
                readable += page.items.len() as u64;
            }
            assert_eq!(readable, expected_left);
            assert_eq!(sweep(&store.actor, slice).await.evicted, 0, "nothing left to sweep");
        });
    }
}

#[tokio::test]
async fn tiny_items_are_charged_their_overhead_and_a_mailbox_has_an_item_cap() {
    let store = start(StoreLimits {
        mailbox_quota_bytes: 20 * charged_bytes(8),
        mailbox_items_max: 50,
        ..StoreLimits::default()
    })
    .await;
    // 8-byte items: the quota holds 20 of them (not 20 * 297 / 8 = 742).
    let requests = (0..40u64)
        .map(|n| request(n, MAILBOX, &n.to_le_bytes(), None))
        .collect();
    let outcomes = append(&store.actor, requests).await;
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o, StoreOutcome::Stored { .. }))
        .count();
    assert_eq!(stored, 20);
    let refused = match &outcomes[20] {
        StoreOutcome::Rejected(err) => err.clone(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(refused, StoreError::QuotaExceeded { .. }));
    assert!(
        refused.retry_after_ms().is_some(),
        "a quota refusal says when to retry"
    );

    // The item cap bounds a mailbox of even smaller items.
    let other = MailboxId([2; 32]);
    let store = start(StoreLimits {
        mailbox_items_max: 5,
        ..StoreLimits::default()
    })
    .await;
    let requests = (0..8u64)
        .map(|n| request(n, other, &[n as u8], None))
        .collect();
    let outcomes = append(&store.actor, requests).await;
    assert!(matches!(outcomes[4], StoreOutcome::Stored { .. }));
    let StoreOutcome::Rejected(err) = &outcomes[5] else {
        panic!("{:?}", outcomes[5]);
    };
    assert_eq!(*err, StoreError::MailboxItemsExceeded { items_max: 5 });
    assert_eq!(err.code(), zerok_messages::ErrorCode::QuotaExceeded);
    assert!(err.retry_after_ms().is_some());
    assert_eq!(stats(&store.actor).await.items, 5);
}

#[tokio::test(start_paused = true)]
async fn a_full_relay_says_so_and_recovers_after_expiry() {
    let clock = Clock::virtual_at(1_700_000_000_000);
    let budget = StoreBudget {
        bytes_max: 30 * charged_bytes(100),
        full_retry_after_ms: 7_000,
        ..StoreBudget::unlimited()
    };
    let store = start_with(
        tempfile::tempdir().unwrap(),
        StoreOptions {
            budget,
            ..StoreOptions::new(SEGMENT_BYTES_DEFAULT)
        },
        StoreLimits::default(),
        clock,
    )
    .await;
    assert_eq!(
        store.metrics.store_charged_bytes_max.get(),
        (30 * charged_bytes(100)) as i64
    );
    assert_eq!(store.metrics.store_full.get(), 0);
    let requests = (0..40u64)
        .map(|n| request(n, MAILBOX, &[n as u8; 100], Some(60)))
        .collect();
    let outcomes = append(&store.actor, requests).await;
    assert!(matches!(outcomes[29], StoreOutcome::Stored { .. }));
    assert_eq!(
        outcomes[30],
        StoreOutcome::Rejected(StoreError::StorageFull {
            retry_after_ms: 7_000
        })
    );
    assert_eq!(outcomes[30].clone(), outcomes[39]);
    assert_eq!(store.metrics.store_full.get(), 1);
    assert_eq!(
        store.metrics.store_charged_bytes.get(),
        (30 * charged_bytes(100)) as i64
    );

    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(sweep(&store.actor, 1000).await.evicted, 30);
    assert_eq!(
        store.metrics.store_full.get(),
        0,
        "expiry gave the room back"
    );
    let again = append(
        &store.actor,
        vec![request(50, MAILBOX, b"after the sweep", Some(60))],
    )
    .await;
    assert_eq!(cursor(&again[0]), (31, false));
}

#[tokio::test(start_paused = true)]
async fn a_full_disk_is_storage_full_for_clients_and_a_sweep_recovers() {
    let clock = Clock::virtual_at(1_700_000_000_000);
    let faults = FaultPlan::seeded(11);
    let store = start_with(
        tempfile::tempdir().unwrap(),
        StoreOptions {
            budget: StoreBudget {
                full_retry_after_ms: 3_000,
                ..StoreBudget::unlimited()
            },
            faults: faults.clone(),
            ..StoreOptions::new(SEGMENT_BYTES_DEFAULT)
        },
        StoreLimits::default(),
        clock,
    )
    .await;
    let first = append(&store.actor, vec![request(0, MAILBOX, b"before", None)]).await;
    assert_eq!(cursor(&first[0]), (1, false));

    faults.set(FaultPoint::StoreDiskFull, 1.0);
    let outcome = append(&store.actor, vec![request(1, MAILBOX, b"while full", None)]).await;
    let StoreOutcome::Rejected(err) = &outcome[0] else {
        panic!("{:?}", outcome[0]);
    };
    assert_eq!(
        *err,
        StoreError::StorageFull {
            retry_after_ms: 3_000
        }
    );
    assert_eq!(
        err.to_string(),
        "relay storage full",
        "no OS text for the client"
    );
    assert_eq!(err.code(), zerok_messages::ErrorCode::QuotaExceeded);
    assert_eq!(store.metrics.store_full.get(), 1);
    assert_eq!(stats(&store.actor).await.items, 1);

    // Refused without a write until a sweep lets the store try again.
    let fired = faults.fired(FaultPoint::StoreDiskFull);
    let outcome = append(&store.actor, vec![request(2, MAILBOX, b"again", None)]).await;
    assert!(matches!(
        outcome[0],
        StoreOutcome::Rejected(StoreError::StorageFull { .. })
    ));
    assert_eq!(
        faults.fired(FaultPoint::StoreDiskFull),
        fired,
        "a full store does not hammer the disk"
    );

    faults.set(FaultPoint::StoreDiskFull, 0.0);
    sweep(&store.actor, 100).await;
    assert_eq!(store.metrics.store_full.get(), 0);
    let outcome = append(&store.actor, vec![request(3, MAILBOX, b"while full", None)]).await;
    assert_eq!(cursor(&outcome[0]), (2, false));
}

/// A catch-up's next page is read ahead while the one before is answered, and answers the
/// next pull; a commit to the mailbox drops it, so a pull never misses an item stored since.
#[tokio::test]
async fn catch_up_pages_are_read_ahead_and_a_commit_drops_them() {
    let store = start(StoreLimits::default()).await;
    let requests = (0..30)
        .map(|n| request(n, MAILBOX, &payload(n), None))
        .collect();
    append(&store.actor, requests).await;
    const PAGE_BYTES: u32 = 64 * 1024;
    let cursors = |page: &Page| page.items.iter().map(|i| i.cursor.0).collect::<Vec<_>>();

    let first = read(&store.actor, 0, 10, PAGE_BYTES).await;
    assert_eq!(cursors(&first), (1..=10).collect::<Vec<_>>());
    assert_eq!(store.metrics.store_read_ahead_hits_total.get(), 0);
    let second = read(&store.actor, 10, 10, PAGE_BYTES).await;
    assert_eq!(cursors(&second), (11..=20).collect::<Vec<_>>());
    assert_eq!(store.metrics.store_read_ahead_hits_total.get(), 1);
    // The page after 20 (21..=30, nothing more) is read ahead now; an item stored meanwhile
    // must not be missed.
    append(&store.actor, vec![request(30, MAILBOX, &payload(30), None)]).await;
    let third = read(&store.actor, 20, 10, PAGE_BYTES).await;
    assert_eq!(cursors(&third), (21..=30).collect::<Vec<_>>());
    assert!(
        third.has_more,
        "item 31 was stored after the page was read ahead"
    );
    assert_eq!(store.metrics.store_read_ahead_hits_total.get(), 1);
    let fourth = read(&store.actor, 30, 10, PAGE_BYTES).await;
    assert_eq!(cursors(&fourth), vec![31]);
    assert!(!fourth.has_more);
}

//! The store's on-disk index: opening reads the index, not the data (only the log after the
//! index's checkpoint is replayed); a lost, stale or foreign index is rebuilt or caught up from
//! the segments and the store answers exactly as before; memory does not hold the items.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::path::Path;
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::blob_store::core::StoreLimits;
use zerok_actors::relay::blob_store::segments::{Store, StoreOptions};
use zerok_messages::relay::{AppendRequest, StoreOutcome};
use zerok_messages::{BlobId, MailboxId};

const SMALL_SEGMENT: u64 = 4096;
const T0: u64 = 1_700_000_000_000;
const INDEX_DIR: &str = "index";

fn mailbox(n: u8) -> MailboxId {
    MailboxId([n; 32])
}

fn request(mailbox: MailboxId, n: u64, len: usize) -> AppendRequest {
    let mut payload = format!("item-{n:06}-").into_bytes();
    payload.resize(len.max(payload.len()), b'.');
    AppendRequest {
        token: n,
        mailbox,
        blob_id: BlobId::of_ciphertext(&payload),
        ciphertext: Bytes::from(payload),
        ttl_secs: Some(3600),
    }
}

fn commit(store: &Store, requests: &[AppendRequest]) -> Vec<u64> {
    store
        .commit(requests, T0, &StoreLimits::default(), &FaultPlan::none())
        .unwrap()
        .outcomes
        .iter()
        .map(|o| match o {
            StoreOutcome::Stored { cursor, .. } => cursor.0,
            StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
        })
        .collect()
}

/// What the store answers about one mailbox: every (cursor, ciphertext), latest, count, bytes.
type Answer = (Vec<(u64, Vec<u8>)>, u64, u64, u64);

/// Everything the store answers about `mailboxes`.
fn answers(store: &Store, mailboxes: &[MailboxId]) -> Vec<Answer> {
    mailboxes
        .iter()
        .map(|m| {
            let mut items = Vec::new();
            let mut after = 0;
            loop {
                let page = store.read_page(m, after, 5, 4096, T0).unwrap();
                items.extend(
                    page.items
                        .iter()
                        .map(|i| (i.cursor.0, i.ciphertext.to_vec())),
                );
                after = page.next.0;
                if !page.has_more {
                    break;
                }
            }
            let meta = store.meta(m);
            (items, meta.latest, meta.count, meta.bytes)
        })
        .collect()
}

fn open(dir: &Path) -> Store {
    Store::open_with(dir, StoreOptions::new(SMALL_SEGMENT)).unwrap()
}

/// Three mailboxes, `rounds` commits of three items each, over several segments.
fn fill(store: &Store, from: u64, rounds: u64) {
    for round in from..from + rounds {
        let requests: Vec<AppendRequest> = (0..3u8)
            .map(|m| request(mailbox(m), round * 10 + u64::from(m), 300))
            .collect();
        commit(store, &requests);
    }
}

const MAILBOXES: [MailboxId; 3] = [MailboxId([0; 32]), MailboxId([1; 32]), MailboxId([2; 32])];

#[test]
fn reopening_reads_the_index_not_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 40);
    assert!(store.stats().segments >= 4, "{:?}", store.stats());
    let before = answers(&store, &MAILBOXES);
    drop(store);

    let store = open(dir.path());
    let report = store.open_report();
    assert!(!report.is_rebuilt);
    assert_eq!(
        report.replayed_bytes,
        zerok_actors::relay::blob_store::core::CLOSED_BATCH_BYTES as u64,
        "a clean close leaves nothing to replay but its closed marker"
    );
    assert_eq!(answers(&store, &MAILBOXES), before);
    assert_eq!(store.stats().items, 120);
    // Cursors go on.
    let next = commit(&store, &[request(mailbox(0), 9_999, 10)]);
    assert_eq!(next, vec![41]);
}

#[test]
fn a_lost_or_foreign_index_is_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 30);
    let before = answers(&store, &MAILBOXES);
    let stats = store.stats();
    drop(store);

    std::fs::remove_dir_all(dir.path().join(INDEX_DIR)).unwrap();
    let store = open(dir.path());
    assert!(store.open_report().is_rebuilt);
    assert!(store.open_report().replayed_bytes > 0);
    assert_eq!(answers(&store, &MAILBOXES), before);
    assert_eq!(store.stats().items, stats.items);
    assert_eq!(store.stats().bytes, stats.bytes);
    drop(store);

    // Not an index at all: moved aside and rebuilt.
    let index = dir.path().join(INDEX_DIR);
    std::fs::remove_dir_all(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    std::fs::write(index.join("version"), b"garbage").unwrap();
    let store = open(dir.path());
    assert!(store.open_report().is_rebuilt);
    assert_eq!(answers(&store, &MAILBOXES), before);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn an_index_behind_the_log_catches_up_from_its_checkpoint() {
    // What a power cut leaves: an index that is an older, consistent state of itself.
    let dir = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 10);
    drop(store);
    copy_dir(&dir.path().join(INDEX_DIR), &old.path().join(INDEX_DIR));

    let store = open(dir.path());
    fill(&store, 10, 25);
    let before = answers(&store, &MAILBOXES);
    drop(store);
    std::fs::remove_dir_all(dir.path().join(INDEX_DIR)).unwrap();
    copy_dir(&old.path().join(INDEX_DIR), &dir.path().join(INDEX_DIR));

    let store = open(dir.path());
    let report = store.open_report();
    assert!(!report.is_rebuilt, "{report:?}");
    assert!(report.replayed_bytes > 0, "{report:?}");
    assert_eq!(answers(&store, &MAILBOXES), before);
    assert_eq!(store.stats().items, 105);
    let next = commit(&store, &[request(mailbox(1), 9_999, 10)]);
    assert_eq!(next, vec![36]);
}

#[test]
fn expiry_and_segment_release_survive_a_reopen_of_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 0, 30);
    let segments = store.stats().segments;
    // Everything expires; the sweep empties the index and gives the segments back.
    let later = T0 + 3_601_000;
    loop {
        if !store.sweep(later, 16).unwrap().more {
            break;
        }
    }
    store.sweep(later, 16).unwrap();
    assert_eq!(store.stats().items, 0);
    assert!(store.stats().segments < segments, "{:?}", store.stats());
    drop(store);

    let store = open(dir.path());
    assert!(!store.open_report().is_rebuilt);
    assert_eq!(store.stats().items, 0);
    for (n, m) in MAILBOXES.iter().enumerate() {
        assert_eq!(store.meta(m).latest, 30, "mailbox {n} keeps its cursor");
    }
    assert_eq!(commit(&store, &[request(mailbox(2), 9_999, 10)]), vec![31]);
}

#[test]
fn an_index_naming_a_batch_the_disk_never_got_is_rebuilt() {
    // A commit indexes its batch while the disk syncs it: a crash in between can leave an
    // index whose checkpoint names a batch that is not on disk. Opening must notice.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), StoreOptions::new(1 << 20)).unwrap();
    fill(&store, 0, 5);
    let before = answers(&store, &MAILBOXES);
    let synced_len = store.stats().disk_bytes;
    fill(&store, 5, 1);
    drop(store);
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    // The last commit (and the closed marker after it) never reached the disk.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(synced_len).unwrap();
    file.set_len(len).unwrap();
    drop(file);

    let store = Store::open_with(dir.path(), StoreOptions::new(1 << 20)).unwrap();
    assert!(store.open_report().is_rebuilt, "{:?}", store.open_report());
    assert_eq!(answers(&store, &MAILBOXES), before);
    assert_eq!(store.stats().items, 15);
}

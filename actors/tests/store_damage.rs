//! Damage in the segment log, on real files: a flipped byte anywhere (a record's body, its
//! length or CRC field, a batch header's length table, count or sync marker, the first, middle
//! or last record of the newest segment after a clean close, a record of a closed segment, the
//! segment header) loses at most the damaged record, is reported (`damaged_records`,
//! `check_store`) and never cuts anything valid; cursors never go back, even when the lost
//! record was a mailbox's newest. A real torn tail (a crash in the middle of the last batch, no
//! clean close) is still cut and everything before it served. Reads check blob ids; a store of
//! format 3 is read and upgraded.
//!
//! A crash is simulated by copying the store's files while it is open (the state a
//! `kill -9` leaves: every acked batch is on disk, no "closed" marker), then editing the
//! copy.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::blob_store::OpenError;
use zerok_actors::relay::blob_store::core::{
    self, FRAME_HEADER, ITEM_HEADER, ItemRecord, SEGMENT_HEADER, SEGMENT_MAGIC_3, StoreLimits,
};
use zerok_actors::relay::blob_store::segments::{SEGMENT_SUFFIX, Store, check_store};
use zerok_messages::relay::{AppendRequest, StoreOutcome};
use zerok_messages::{BlobId, MailboxId};

const SEGMENT: u64 = 1 << 20;
const SMALL_SEGMENT: u64 = 4096;
const T0: u64 = 1_700_000_000_000;
const MAILBOX: MailboxId = MailboxId([4; 32]);
const OTHER: MailboxId = MailboxId([9; 32]);
/// Commits of [`PER_COMMIT`] items each: cursors 1..=30 in ten batches.
const COMMITS: u64 = 10;
const PER_COMMIT: u64 = 3;
const ITEMS: u64 = COMMITS * PER_COMMIT;

fn request(mailbox: MailboxId, payload: &[u8]) -> AppendRequest {
    AppendRequest {
        token: 0,
        mailbox,
        blob_id: BlobId::of_ciphertext(payload),
        ciphertext: Bytes::copy_from_slice(payload),
        ttl_secs: Some(3600),
    }
}

fn payload(n: u64) -> Vec<u8> {
    let mut out = format!("item-{n:06}-").into_bytes();
    out.resize(60, b'.');
    out
}

fn commit(store: &Store, requests: &[AppendRequest]) -> Vec<u64> {
    let plan = store
        .commit(requests, T0, &StoreLimits::default(), &FaultPlan::none())
        .unwrap();
    plan.outcomes
        .iter()
        .map(|o| match o {
            StoreOutcome::Stored { cursor, .. } => cursor.0,
            StoreOutcome::Rejected(err) => panic!("rejected: {err}"),
        })
        .collect()
}

fn read_all(store: &Store, mailbox: &MailboxId) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_page(mailbox, after, 7, 4000, T0).unwrap();
        out.extend(
            page.items
                .iter()
                .map(|i| (i.cursor.0, i.ciphertext.to_vec())),
        );
        after = page.next.0;
        if !page.has_more {
            return out;
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

/// One batch as the test reads it back from a segment file.
#[derive(Debug, Clone)]
struct BatchAt {
    start: u64,
    header_len: u64,
    /// (offset, frame length) of each record.
    records: Vec<(u64, u64)>,
}

/// The batches of a segment file of format 4, read with the store's own format functions.
fn batches(file: &Path) -> Vec<BatchAt> {
    let bytes = std::fs::read(file).unwrap();
    let sync: [u8; 8] = bytes[8..16].try_into().unwrap();
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER;
    while let Some((count, total)) = bytes
        .get(pos..)
        .and_then(|rest| core::parse_batch_fixed(rest, &sync))
    {
        let header_len = core::batch_header_len(count);
        let lens = core::parse_batch_header(&bytes[pos..pos + header_len], &sync).unwrap();
        let mut at = (pos + header_len) as u64;
        let mut records = Vec::new();
        for len in lens {
            records.push((at, u64::from(len)));
            at += u64::from(len);
        }
        out.push(BatchAt {
            start: pos as u64,
            header_len: header_len as u64,
            records,
        });
        pos += header_len + total as usize;
    }
    out
}

fn flip(file: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, offset).unwrap();
    f.write_all_at(&[byte[0] ^ 0x5a], offset).unwrap();
}

/// A store with cursors 1..=30 of [`MAILBOX`] in ten batches of three, closed cleanly.
/// Answers the items and the newest segment file.
fn thirty_items(dir: &Path) -> (Vec<(u64, Vec<u8>)>, PathBuf) {
    let store = Store::open(dir, SEGMENT).unwrap();
    for c in 0..COMMITS {
        let batch: Vec<AppendRequest> = (0..PER_COMMIT)
            .map(|i| request(MAILBOX, &payload(c * PER_COMMIT + i)))
            .collect();
        commit(&store, &batch);
    }
    let items = read_all(&store, &MAILBOX);
    assert_eq!(items.len() as u64, ITEMS);
    drop(store);
    (items, segment_files(dir).pop().unwrap())
}

/// Where a flipped byte lands inside a record.
#[derive(Debug, Clone, Copy)]
enum InRecord {
    Body,
    LengthField,
    CrcField,
}

#[test]
fn a_flipped_byte_in_any_record_loses_that_record_only_and_is_reported() {
    let cases = [
        (0, InRecord::Body),
        (14, InRecord::Body),
        (ITEMS - 1, InRecord::Body),
        (14, InRecord::LengthField),
        (ITEMS - 1, InRecord::LengthField),
        (1, InRecord::CrcField),
    ];
    for (victim, place) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (items, segment) = thirty_items(dir.path());
        let records: Vec<(u64, u64)> = batches(&segment)
            .iter()
            .flat_map(|b| b.records.clone())
            .collect();
        assert_eq!(records.len() as u64, ITEMS);
        let (offset, _) = records[victim as usize];
        let at = match place {
            InRecord::Body => offset + (FRAME_HEADER + ITEM_HEADER + 3) as u64,
            InRecord::LengthField => offset + 1,
            InRecord::CrcField => offset + 5,
        };
        flip(&segment, at);

        let report = check_store(dir.path()).unwrap();
        assert_eq!(report.damage.len(), 1, "{victim} {place:?}: {report:?}");
        assert_eq!(report.damage[0].0, segment);
        assert_eq!(
            report.damage[0].1.offset, offset,
            "the damaged record is named"
        );
        assert!(report.torn_tail.is_none(), "{report:?}");
        assert!(report.is_closed_cleanly);

        let store = Store::open(dir.path(), SEGMENT).unwrap();
        let mut expected = items.clone();
        expected.remove(victim as usize);
        assert_eq!(read_all(&store, &MAILBOX), expected, "{victim} {place:?}");
        assert_eq!(store.stats().damaged_records, 1);
        // Cursors never go back, even when the lost record held the newest one.
        let next = commit(&store, &[request(MAILBOX, b"after the damage")]);
        assert!(next[0] > ITEMS, "cursor {} after damage", next[0]);
        drop(store);
        // The damaged segment is kept as it is, and nothing more is lost on the next open.
        let store = Store::open(dir.path(), SEGMENT).unwrap();
        assert_eq!(read_all(&store, &MAILBOX).len() as u64, ITEMS);
        assert_eq!(store.stats().damaged_records, 1);
    }
}

/// Where a flipped byte lands inside a batch header.
#[derive(Debug, Clone, Copy)]
enum InHeader {
    Sync,
    Count,
    LengthTable,
    Crc,
}

#[test]
fn a_flipped_byte_in_a_batch_header_loses_nothing_and_is_reported() {
    for (batch, place) in [
        (0, InHeader::LengthTable),
        (4, InHeader::Sync),
        (4, InHeader::Count),
        (4, InHeader::Crc),
        (COMMITS as usize - 1, InHeader::LengthTable),
        (COMMITS as usize - 1, InHeader::Count),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (items, segment) = thirty_items(dir.path());
        let all = batches(&segment);
        assert_eq!(
            all.len() as u64,
            COMMITS + 1,
            "ten batches and the closed marker"
        );
        let target = &all[batch];
        let at = target.start
            + match place {
                InHeader::Sync => 3,
                InHeader::Count => 8,
                InHeader::LengthTable => 16 + 4 + 1,
                InHeader::Crc => target.header_len - 2,
            };
        flip(&segment, at);

        let report = check_store(dir.path()).unwrap();
        assert_eq!(report.damage.len(), 1, "{batch} {place:?}: {report:?}");
        assert_eq!(report.damage[0].1.offset, target.start);
        assert_eq!(report.items, ITEMS, "every record is read by its own frame");

        let store = Store::open(dir.path(), SEGMENT).unwrap();
        assert_eq!(read_all(&store, &MAILBOX), items, "{batch} {place:?}");
        assert_eq!(store.stats().damaged_records, 1);
    }
}

#[test]
fn a_flipped_byte_in_the_segment_header_loses_nothing_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (items, segment) = thirty_items(dir.path());
    flip(&segment, 10);
    let report = check_store(dir.path()).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damage[0].1.offset, 0);
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    assert_eq!(read_all(&store, &MAILBOX), items);
    assert_eq!(store.stats().damaged_records, 1);
}

#[test]
fn a_mailbox_whose_only_record_is_damaged_keeps_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    commit(&store, &[request(MAILBOX, &payload(1))]);
    commit(&store, &[request(OTHER, &payload(2))]);
    commit(&store, &[request(MAILBOX, &payload(3))]);
    drop(store);
    let segment = segment_files(dir.path()).pop().unwrap();
    let (offset, _) = batches(&segment)[1].records[0];
    // Past the mailbox and cursor fields: the damaged record still names its mailbox.
    flip(&segment, offset + (FRAME_HEADER + ITEM_HEADER + 1) as u64);

    let store = Store::open(dir.path(), SEGMENT).unwrap();
    assert!(read_all(&store, &OTHER).is_empty());
    assert_eq!(read_all(&store, &MAILBOX).len(), 2);
    let next = commit(&store, &[request(OTHER, b"new")]);
    assert!(
        next[0] > 1,
        "cursor 1 of {OTHER:?} was acked once: never again"
    );
}

#[test]
fn damage_in_a_closed_segment_is_contained_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    for n in 0..60 {
        commit(&store, &[request(MAILBOX, &payload(n))]);
    }
    let items = read_all(&store, &MAILBOX);
    drop(store);
    let files = segment_files(dir.path());
    assert!(files.len() > 2);
    let first = &files[0];
    let (offset, _) = batches(first)[2].records[0];
    flip(first, offset + 40);

    let report = check_store(dir.path()).unwrap();
    assert_eq!(report.damage.len(), 1);
    assert_eq!(&report.damage[0].0, first);
    assert_eq!(report.damage[0].1.offset, offset);

    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    let mut expected = items.clone();
    expected.remove(2);
    assert_eq!(read_all(&store, &MAILBOX), expected);
    assert_eq!(store.stats().damaged_records, 1);
}

/// Copy the store's files as a crash would leave them (the store is still open).
fn crash_copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        // The index (a directory) is left behind: a crash copy of a live index is not a state
        // any crash leaves, and without it the open rebuilds the index from the segments.
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
    }
    to
}

/// How the last batch is torn.
#[derive(Debug, Clone, Copy)]
enum Torn {
    /// Only its first bytes reached the disk.
    Prefix(u64),
    /// Its header reached the disk, its last record did not.
    LastRecordMissing,
    /// Its records reached the disk, the first page of its header did not.
    HeaderMissing,
}

#[test]
fn a_torn_last_batch_after_a_crash_is_cut_and_everything_before_is_served() {
    for torn in [
        Torn::Prefix(1),
        Torn::Prefix(10),
        Torn::Prefix(30),
        Torn::Prefix(100),
        Torn::LastRecordMissing,
        Torn::HeaderMissing,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SEGMENT).unwrap();
        for c in 0..COMMITS {
            let batch: Vec<AppendRequest> = (0..PER_COMMIT)
                .map(|i| request(MAILBOX, &payload(c * PER_COMMIT + i)))
                .collect();
            commit(&store, &batch);
        }
        let items = read_all(&store, &MAILBOX);
        let crashed = crash_copy(dir.path());
        drop(store);
        let segment = segment_files(crashed.path()).pop().unwrap();
        let all = batches(&segment);
        assert_eq!(all.len() as u64, COMMITS, "no closed marker after a crash");
        let last = all.last().unwrap().clone();
        let end = last.records.last().map(|(o, l)| o + l).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        let zero = |from: u64, to: u64| {
            file.write_all_at(&vec![0u8; (to - from) as usize], from)
                .unwrap();
        };
        match torn {
            Torn::Prefix(n) => zero(last.start + n, end),
            Torn::LastRecordMissing => zero(last.records[2].0, end),
            Torn::HeaderMissing => zero(last.start, last.start + last.header_len),
        }
        drop(file);

        let report = check_store(crashed.path()).unwrap();
        assert!(report.damage.is_empty(), "{torn:?}: {report:?}");
        assert_eq!(report.torn_tail, Some((segment.clone(), last.start)));

        let store = Store::open(crashed.path(), SEGMENT).unwrap();
        let acked_before = &items[..(ITEMS - PER_COMMIT) as usize];
        assert_eq!(read_all(&store, &MAILBOX), acked_before, "{torn:?}");
        assert_eq!(store.stats().damaged_records, 0);
        let bytes = std::fs::read(&segment).unwrap();
        assert!(
            bytes[last.start as usize..].iter().all(|b| *b == 0),
            "{torn:?}: the torn batch is cut"
        );
        commit(&store, &[request(MAILBOX, b"after the crash")]);
        drop(store);
        let store = Store::open(crashed.path(), SEGMENT).unwrap();
        assert_eq!(
            read_all(&store, &MAILBOX).len() as u64,
            ITEMS - PER_COMMIT + 1
        );
    }
}

#[test]
fn a_bad_last_batch_after_a_clean_close_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (items, segment) = thirty_items(dir.path());
    let all = batches(&segment);
    let last_data = &all[all.len() - 2];
    // Zeros over its last record: what a torn write looks like, but the store was closed.
    let (offset, len) = last_data.records[2];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&vec![0u8; len as usize], offset).unwrap();
    drop(file);

    let report = check_store(dir.path()).unwrap();
    assert!(report.torn_tail.is_none());
    assert_eq!(report.damage.len(), 1);
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    assert_eq!(read_all(&store, &MAILBOX), items[..items.len() - 1]);
    assert_eq!(store.stats().damaged_records, 1);
}

#[test]
fn a_clean_store_checks_clean_and_a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = thirty_items(dir.path());
    let report = check_store(dir.path()).unwrap();
    assert!(!report.is_damaged(), "{report:?}");
    assert!(report.is_closed_cleanly);
    assert_eq!((report.items, report.indexed_items), (ITEMS, ITEMS));
    assert!(report.torn_tail.is_none());

    let store = Store::open(dir.path(), SEGMENT).unwrap();
    let err = check_store(dir.path()).err().unwrap();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    drop(store);
    let empty = tempfile::tempdir().unwrap();
    let err = check_store(empty.path()).err().unwrap();
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");
}

#[test]
fn reads_never_serve_an_item_whose_blob_id_does_not_match_its_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    commit(&store, &[request(MAILBOX, &payload(1))]);
    commit(&store, &[request(MAILBOX, &payload(2))]);
    commit(&store, &[request(MAILBOX, &payload(3))]);
    let segment = segment_files(dir.path()).pop().unwrap();
    let records: Vec<(u64, u64)> = batches(&segment)
        .iter()
        .flat_map(|b| b.records.clone())
        .collect();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    // Record 2: ciphertext changed and its CRC made to hold again (damage a CRC misses).
    let (offset, len) = records[1];
    let mut frame = vec![0u8; len as usize];
    file.read_exact_at(&mut frame, offset).unwrap();
    frame[FRAME_HEADER + ITEM_HEADER] ^= 1;
    let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&frame, offset).unwrap();
    // Record 3: a flipped byte (its CRC fails).
    flip(&segment, records[2].0 + 20);

    let served: Vec<u64> = read_all(&store, &MAILBOX).iter().map(|(c, _)| *c).collect();
    assert_eq!(served, vec![1]);
    assert_eq!(store.stats().damaged_records, 2);
    assert_eq!(store.stats().items, 1, "damaged items leave the index");
    assert_eq!(read_all(&store, &MAILBOX).len(), 1);
    assert_eq!(store.stats().damaged_records, 2, "each is counted once");
    drop(store);
    let report = check_store(dir.path()).unwrap();
    assert_eq!(report.damage.len(), 2, "{report:?}");
}

/// A page large enough to be checked on several threads still serves every good item, in
/// cursor order, and drops exactly the damaged ones (at its start, middle and end).
#[test]
fn a_large_page_checked_in_parallel_drops_exactly_the_damaged_items() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    let batch: Vec<AppendRequest> = (0..300).map(|n| request(MAILBOX, &payload(n))).collect();
    commit(&store, &batch);
    let segment = segment_files(dir.path()).pop().unwrap();
    let records: Vec<(u64, u64)> = batches(&segment)
        .iter()
        .flat_map(|b| b.records.clone())
        .collect();
    assert_eq!(records.len(), 300);
    let damaged = [0usize, 151, 299];
    for n in damaged {
        flip(
            &segment,
            records[n].0 + (FRAME_HEADER + ITEM_HEADER) as u64 + 3,
        );
    }
    let page = store.read_page(&MAILBOX, 0, 1000, u32::MAX, T0).unwrap();
    let served: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
    let expected: Vec<u64> = (1..=300u64)
        .filter(|c| !damaged.contains(&(*c as usize - 1)))
        .collect();
    assert_eq!(served, expected);
    for item in &page.items {
        assert_eq!(
            item.ciphertext.as_ref(),
            payload(item.cursor.0 - 1).as_slice()
        );
    }
    assert_eq!(store.stats().damaged_records, 3);
    assert_eq!(store.stats().items, 297);
}

#[test]
fn a_store_of_format_3_is_read_and_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), "zerok-store-3\n").unwrap();
    let mut segment = SEGMENT_MAGIC_3.to_vec();
    let payloads: Vec<Vec<u8>> = (1..=3).map(payload).collect();
    for (n, ciphertext) in payloads.iter().enumerate() {
        core::encode_item(
            &mut segment,
            &ItemRecord {
                mailbox: MAILBOX,
                cursor: n as u64 + 1,
                blob_id: BlobId::of_ciphertext(ciphertext),
                stored_at_ms: T0,
                expires_at_ms: T0 + 3_600_000,
                ciphertext,
            },
        );
    }
    let old = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1));
    std::fs::write(&old, &segment).unwrap();

    let store = Store::open(dir.path(), SEGMENT).unwrap();
    assert_eq!(read_all(&store, &MAILBOX).len(), 3);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
        "zerok-store-4\n"
    );
    assert_eq!(commit(&store, &[request(MAILBOX, b"new")]), vec![4]);
    drop(store);
    assert_eq!(
        std::fs::read(&old).unwrap(),
        segment,
        "the old segment is kept as is"
    );
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "new writes go to a new segment");
    assert_eq!(&std::fs::read(&files[1]).unwrap()[..8], core::SEGMENT_MAGIC);
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    assert_eq!(read_all(&store, &MAILBOX).len(), 4);
    drop(store);
    assert!(!check_store(dir.path()).unwrap().is_damaged());
}

#[test]
fn a_torn_batch_after_a_clean_restart_is_still_cut() {
    // Opening for writes removes the "closed" marker: a crash tearing the next batch leaves
    // a torn tail, not damage.
    let dir = tempfile::tempdir().unwrap();
    let (items, _) = thirty_items(dir.path());
    let store = Store::open(dir.path(), SEGMENT).unwrap();
    commit(
        &store,
        &[request(MAILBOX, b"one"), request(MAILBOX, b"two")],
    );
    let crashed = crash_copy(dir.path());
    drop(store);
    let segment = segment_files(crashed.path()).pop().unwrap();
    let last = batches(&segment).last().unwrap().clone();
    assert_eq!(last.records.len(), 2, "the last batch is the new commit");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    // Its header never reached the disk (its records did).
    file.write_all_at(&[0u8; 16], last.start).unwrap();
    drop(file);

    let report = check_store(crashed.path()).unwrap();
    assert!(report.damage.is_empty(), "{report:?}");
    assert_eq!(report.torn_tail, Some((segment, last.start)));
    let store = Store::open(crashed.path(), SEGMENT).unwrap();
    assert_eq!(read_all(&store, &MAILBOX), items);
    assert_eq!(store.stats().damaged_records, 0);
}

#[test]
fn compaction_never_copies_a_damaged_item_forward() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SMALL_SEGMENT).unwrap();
    // Segment 1: every fifth item lives long, the rest expire in a minute.
    let mut long_lived = Vec::new();
    for n in 0..40u64 {
        let mut req = request(MAILBOX, &payload(n));
        req.ttl_secs = Some(if n % 5 == 0 { 3600 } else { 60 });
        let cursor = commit(&store, &[req])[0];
        if n % 5 == 0 {
            long_lived.push(cursor);
        }
    }
    let first = segment_files(dir.path()).remove(0);
    let in_first: Vec<(u64, u64)> = batches(&first)
        .iter()
        .flat_map(|b| b.records.clone())
        .collect();
    assert!(in_first.len() > 10, "{}", in_first.len());
    // The second long-lived item (cursor 6, the sixth record) goes bad on disk after open.
    flip(
        &first,
        in_first[5].0 + (FRAME_HEADER + ITEM_HEADER + 2) as u64,
    );

    let later = T0 + 120_000;
    // Compaction copies a bounded slice per sweep.
    for _ in 0..20 {
        store.sweep(later, 100).unwrap();
    }
    assert!(
        !first.exists(),
        "the mostly dead segment was compacted away"
    );
    let page = store.read_page(&MAILBOX, 0, 100, u32::MAX, later).unwrap();
    let served: Vec<u64> = page.items.iter().map(|i| i.cursor.0).collect();
    let expected: Vec<u64> = long_lived.iter().copied().filter(|c| *c != 6).collect();
    assert_eq!(served, expected);
    assert_eq!(store.stats().damaged_records, 1);
    drop(store);
    assert!(
        !check_store(dir.path()).unwrap().is_damaged(),
        "no damage was copied"
    );
}

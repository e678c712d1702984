//! Damage in the store of the real `zerok-relay` binary (issue 11): 40 pushes acked, the
//! relay stopped with SIGTERM, one byte flipped in the middle of the segment's written data,
//! the relay started again: a new device gets the 39 undamaged records, `/metrics` and
//! `/health` report the damage, and `zerok-relay check` exits non-zero naming the file and
//! offset (and 0 on the store before the flip, 2 while a relay holds it).

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use zerok_actors::relay::blob_store::core::{self, FRAME_HEADER, ITEM_HEADER, SEGMENT_HEADER};
use zerok_relay::http::client::http_get;

const PUSHES: u64 = 40;

/// A distinct ciphertext of about 2 KiB, so records fill most of the segment.
fn record(n: u64) -> Bytes {
    Bytes::from(format!("sealed-record-{n:06}-").repeat(100).into_bytes())
}

/// Run `zerok-relay check` on `data_dir`.
fn check(data_dir: &Path) -> Output {
    std::process::Command::new(binary())
        .args(["check", "--data-dir", data_dir.to_str().unwrap()])
        .output()
        .unwrap()
}

fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = files_under(&data_dir.join("store"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .collect();
    files.sort();
    files
}

/// Where the record frames of a segment lie, read with the store's own format functions.
fn record_frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let sync: [u8; 8] = bytes[8..16].try_into().unwrap();
    let mut frames = Vec::new();
    let mut pos = SEGMENT_HEADER;
    while let Some((count, total)) = core::parse_batch_fixed(&bytes[pos..], &sync) {
        let header_len = core::batch_header_len(count);
        let lens = core::parse_batch_header(&bytes[pos..pos + header_len], &sync).unwrap();
        let mut at = pos + header_len;
        for len in lens {
            frames.push((at, len as usize));
            at += len as usize;
        }
        pos += header_len + total as usize;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_after_sigterm_loses_one_record_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(&dir, &[]).await;
    let (_, keys) = group(1);
    let mailbox = keys.mailbox_id();
    let alice = client(1, &relay).await;
    alice.join(&keys).await.unwrap();
    let mut acked = BTreeMap::new();
    for n in 0..PUSHES {
        let (cursor, duplicate) = alice.push(mailbox, record(n)).await.unwrap();
        assert!(!duplicate);
        acked.insert(cursor.0, record(n));
    }
    let data_dir = relay.data_dir().to_path_buf();
    let in_use = check(&data_dir);
    assert_eq!(in_use.status.code(), Some(2), "a store in use is refused");
    let stderr = String::from_utf8_lossy(&in_use.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    drop(alice);
    let (status, _) = relay.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");

    let clean = check(&data_dir);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("result:   ok"), "{stdout}");
    assert!(stdout.contains(&format!("{PUSHES} items")), "{stdout}");

    // One byte flipped in the middle of the written data, inside a record.
    let segment = segments(&data_dir).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let frames = record_frames(&bytes);
    assert_eq!(frames.len() as u64, PUSHES);
    let written_end = frames.last().map(|(at, len)| at + len).unwrap();
    let middle = written_end / 2;
    let (victim_at, _) = *frames.iter().find(|(at, len)| at + len > middle).unwrap();
    let flip_at = middle.max(victim_at + FRAME_HEADER + ITEM_HEADER);
    bytes[flip_at] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let victim = frames.iter().position(|(at, _)| *at == victim_at).unwrap() as u64 + 1;

    relay.restart().await.unwrap();
    let bob = client(2, &relay).await;
    bob.join(&keys).await.unwrap();
    let stored = stored_by_cursor(&bob, mailbox).await;
    let mut expected = acked.clone();
    expected.remove(&victim);
    assert_eq!(stored.len() as u64, PUSHES - 1);
    assert_eq!(stored, expected, "every other acked record is served");
    let (next, _) = bob.push(mailbox, record(1000)).await.unwrap();
    assert!(next.0 > PUSHES, "cursor {next:?} reused");

    let http = relay.http.unwrap();
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "zerok_relay_store_damaged_records_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(health_storage(http).await, "damaged");
    let (_, health) = http_get(http, "/health").await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["damaged_records"], 1);
    let logs = relay.logs();
    let segment_name = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        logs.lines()
            .any(|l| l.contains("store damage") && l.contains(&segment_name)),
        "the log names the damaged file"
    );
    assert!(
        !logs.contains("cutting off"),
        "damage is never taken for a torn write"
    );
    drop(bob);
    let (status, _) = relay.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");

    let damaged = check(&data_dir);
    let stdout = String::from_utf8_lossy(&damaged.stdout);
    assert_eq!(damaged.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "damaged:  {} at byte {victim_at} ",
            segment.display()
        )),
        "{stdout}"
    );
}

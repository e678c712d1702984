//! Hostile storage load against the real `zerok-relay` binary (issue 10): a relay over its
//! byte budget refuses with `quota_exceeded` and a retry hint, says `"storage": "full"` in
//! `/health`, and takes pushes again by itself once the sweeper has evicted what expired,
//! with every unexpired acked push intact; a disk below the free-space floor refuses every
//! push and stores nothing; and one attacker flooding tiny items into self-made mailboxes is
//! stopped by the per-mailbox caps while the relay's memory stays bounded and a legitimate
//! client still pushes.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use zerok_harness::proto::{ProtoClient, ProtoError};
use zerok_messages::{BlobId, Cursor, ErrorCode, MailboxId};
use zerok_relay::http::client::http_get;

/// Rate limits out of the way: these tests measure storage, not frame rates.
const NO_RATE_LIMITS: &str = "[rate_limits]\nframes_per_device_per_sec = 1000000\n\
     frames_per_device_burst = 1000000\nframes_global_per_sec = 1000000\n\
     frames_global_burst = 1000000\n";

/// TTL of the items that fill the budget: long enough that none expires before the test has
/// seen the relay full (filling takes about a second), short enough to wait for.
const SHORT_TTL_SECS: u32 = 10;

/// Longest wait for the relay to change state on its own (sweeps run every second).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The refusal's code, retry hint and message; panics on anything but a refusal.
fn refusal(err: &ProtoError) -> (ErrorCode, Option<u64>, String) {
    match err {
        ProtoError::Refused {
            code,
            message,
            retry_after_ms,
        } => (*code, *retry_after_ms, message.clone()),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Push unique bodies `body(n)` with `ttl_secs` from `tasks` concurrent tasks on `client`
/// until the relay refuses one; answers every acked push (by cursor) and the first refusal.
async fn push_until_refused_with_ttl(
    client: Arc<ProtoClient>,
    mailbox: MailboxId,
    tasks: u64,
    push_max: u64,
    ttl_secs: Option<u32>,
    body: impl Fn(u64) -> Bytes + Send + Sync + 'static,
) -> (BTreeMap<u64, Bytes>, ProtoError) {
    let body = Arc::new(body);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let client = Arc::clone(&client);
        let body = Arc::clone(&body);
        handles.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut n = task;
            while n < push_max {
                let data = body(n);
                let blob_id = BlobId::of_ciphertext(&data);
                match client
                    .push_as(mailbox, blob_id, data.clone(), ttl_secs)
                    .await
                {
                    Ok((cursor, duplicate)) => {
                        assert!(!duplicate, "fresh blob {n} called a duplicate");
                        assert!(acked.insert(cursor.0, data).is_none());
                    }
                    Err(err) => return (acked, Some(err)),
                }
                n += tasks;
            }
            (acked, None)
        }));
    }
    let mut all = BTreeMap::new();
    let mut first = None;
    for handle in handles {
        let (acked, err) = handle.await.unwrap();
        for (cursor, data) in acked {
            assert!(all.insert(cursor, data).is_none(), "cursor acked twice");
        }
        first = first.or(err);
    }
    let err = first.unwrap_or_else(|| panic!("{push_max} pushes and never refused"));
    (all, err)
}

fn sized(tag: &str, n: u64, len: usize) -> Bytes {
    let mut data = format!("{tag}-{n:08}-").into_bytes();
    data.resize(len.max(data.len()), b'.');
    Bytes::from(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_over_its_byte_budget_refuses_then_recovers_after_expiry_by_itself() {
    // 4 MiB of charged bytes, 1 MiB segments, a sweep every second, no disk floor (the
    // budget is what is tested, whatever the host's disk).
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay_with_config(
        &dir,
        &format!(
            "[store]\nsegment_bytes = 1048576\nsweep_interval_secs = 1\nmax_bytes = 4194304\n\
             min_free_disk_bytes = 0\n{NO_RATE_LIMITS}"
        ),
    )
    .await;
    let http = relay.http.unwrap();
    let (_, keys) = group(21);
    let mailbox = keys.mailbox_id();
    let client = Arc::new(client(21, &relay).await);
    client.join(&keys).await.unwrap();

    // Items kept for a week, then short-lived ones until the budget is spent.
    let mut kept = BTreeMap::new();
    for n in 0..64 {
        let data = sized("kept", n, 8 * 1024);
        let (cursor, _) = client.push(mailbox, data.clone()).await.unwrap();
        kept.insert(cursor.0, data);
    }
    assert_eq!(health_storage(http).await, "ok");
    let (short, refused) = push_until_refused_with_ttl(
        Arc::clone(&client),
        mailbox,
        8,
        100_000,
        Some(SHORT_TTL_SECS),
        |n| sized("short", n, 8 * 1024),
    )
    .await;
    let (code, retry_after_ms, message) = refusal(&refused);
    assert_eq!(code, ErrorCode::QuotaExceeded, "{message}");
    assert_eq!(
        retry_after_ms,
        Some(1_000),
        "the sweep interval is the hint"
    );
    assert_eq!(message, "relay storage full");
    assert!(
        short.len() > 300,
        "4 MiB holds ~480 items of 8 KiB, {} acked",
        short.len()
    );
    assert_eq!(health_storage(http).await, "full");
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "zerok_relay_store_full"), Some(1.0));
    let charged = metric(&metrics, "zerok_relay_store_charged_bytes").unwrap();
    assert!(charged <= 4_194_304.0, "{charged} charged bytes");
    assert_eq!(
        metric(&metrics, "zerok_relay_store_charged_bytes_max"),
        Some(4_194_304.0)
    );
    // Another client on another mailbox is refused an item of the same size the same way:
    // the budget is the relay's.
    let (_, other_keys) = group(22);
    let other = client_for(&relay, 22, &other_keys).await;
    let err = other
        .push(other_keys.mailbox_id(), sized("other", 0, 8 * 1024))
        .await
        .unwrap_err();
    assert_eq!(refusal(&err).0, ErrorCode::QuotaExceeded);

    // No operator action: the short-lived items expire, the sweeper frees their space, the
    // relay says so, and pushes succeed again (retrying as the hint says).
    let started = tokio::time::Instant::now();
    while health_storage(http).await != "ok" {
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "still full after {SETTLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut after = None;
    while after.is_none() {
        let data = sized("after", 0, 8 * 1024);
        match client.push(mailbox, data.clone()).await {
            Ok((cursor, _)) => after = Some((cursor, data)),
            Err(err) => {
                let (_, hint, _) = refusal(&err);
                assert!(started.elapsed() < SETTLE_TIMEOUT, "never accepted again");
                tokio::time::sleep(Duration::from_millis(hint.unwrap_or(500))).await;
            }
        }
    }
    let (cursor, data) = after.unwrap();
    assert!(
        cursor.0 > *short.keys().last().unwrap(),
        "cursors go on after the refusals"
    );
    kept.insert(cursor.0, data);
    // Every acked push that has not expired is there, and nothing expired is served.
    let stored = stored_by_cursor(&client, mailbox).await;
    assert_eq!(stored, kept);
    relay.kill();
}

/// A client of `relay` (key from `seed`) joined to the mailbox of `keys`.
async fn client_for(
    relay: &zerok_harness::process::RelayProcess,
    seed: u64,
    keys: &zerok_actors::crypto::keys::EpochKeys,
) -> ProtoClient {
    let client = client(seed, relay).await;
    client.join(keys).await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_below_the_floor_refuses_every_push_and_stores_nothing() {
    // A floor of 1 EiB: no disk has that much free.
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay_with_config(
        &dir,
        "[store]\nmin_free_disk_bytes = 1152921504606846976\nsweep_interval_secs = 2\n",
    )
    .await;
    let http = relay.http.unwrap();
    assert_eq!(health_storage(http).await, "full", "full from the start");
    let (_, keys) = group(23);
    let mailbox = keys.mailbox_id();
    let client = client_for(&relay, 23, &keys).await;
    for n in 0..5 {
        let err = client
            .push(mailbox, sized("floor", n, 1000))
            .await
            .unwrap_err();
        let (code, retry_after_ms, message) = refusal(&err);
        assert_eq!(code, ErrorCode::QuotaExceeded);
        assert_eq!(retry_after_ms, Some(2_000));
        assert_eq!(message, "relay storage full");
    }
    assert!(
        client
            .pull_all(mailbox, Cursor(0))
            .await
            .unwrap()
            .is_empty()
    );
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(metric(&metrics, "zerok_relay_items_stored"), Some(0.0));
    assert_eq!(metric(&metrics, "zerok_relay_store_full"), Some(1.0));
    assert!(metric(&metrics, "zerok_relay_store_free_disk_bytes").unwrap() > 0.0);
    assert_eq!(health_storage(http).await, "full");
    relay.kill();
    assert!(
        !relay.logs().contains("No space left"),
        "a refusal is not a failed write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attacker_flooding_tiny_items_is_capped_and_others_still_push() {
    // Default budgets, a per-mailbox item cap scaled down so the test takes seconds: an
    // attacker with self-made groups floods 16-byte items into three mailboxes from three
    // devices. Each mailbox stops at its cap; the relay's memory stays bounded; a legitimate
    // client on its own mailbox still pushes and reads.
    const ITEMS_MAX: u64 = 20_000;
    /// The relay's memory budget under attack with default settings (issue 10).
    const RSS_BUDGET_KIB: u64 = 256 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_with_config(
        &dir,
        &format!("[limits]\nmailbox_items_max = {ITEMS_MAX}\n{NO_RATE_LIMITS}"),
    )
    .await;
    let http = relay.http.unwrap();
    let rss_before = relay.rss_kib().unwrap();

    let mut attacks = Vec::new();
    for a in 0..3u8 {
        let (_, keys) = group(100 + a);
        let client = Arc::new(client_for(&relay, 100 + u64::from(a), &keys).await);
        attacks.push(tokio::spawn(push_until_refused_with_ttl(
            client,
            keys.mailbox_id(),
            32,
            ITEMS_MAX * 2,
            None,
            move |n| Bytes::from(format!("a{a}-{n:012}")),
        )));
    }
    let mut rss_peak = rss_before;
    let mut results = Vec::new();
    for attack in attacks {
        while !attack.is_finished() {
            rss_peak = rss_peak.max(relay.rss_kib().unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        results.push(attack.await.unwrap());
    }
    for (acked, refused) in &results {
        assert_eq!(acked.len() as u64, ITEMS_MAX, "each mailbox holds its cap");
        let (code, retry_after_ms, message) = refusal(refused);
        assert_eq!(code, ErrorCode::QuotaExceeded, "{message}");
        assert!(retry_after_ms.is_some());
        assert!(message.contains("item limit"), "{message}");
    }
    let rss_after = relay.rss_kib().unwrap();
    rss_peak = rss_peak.max(rss_after);
    assert!(
        rss_peak < RSS_BUDGET_KIB,
        "relay RSS peaked at {rss_peak} KiB (budget {RSS_BUDGET_KIB} KiB)"
    );
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "zerok_relay_items_stored"),
        Some(3.0 * ITEMS_MAX as f64)
    );
    assert_eq!(
        health_storage(http).await,
        "ok",
        "capped mailboxes are not a full relay"
    );

    // A legitimate client pushes and reads back, during what is left of the attack.
    let (_, keys) = group(120);
    let mailbox = keys.mailbox_id();
    let legit = client_for(&relay, 120, &keys).await;
    for n in 0..20 {
        let (cursor, duplicate) = legit.push(mailbox, sized("legit", n, 500)).await.unwrap();
        assert_eq!((cursor, duplicate), (Cursor(n + 1), false));
    }
    assert_eq!(legit.pull_all(mailbox, Cursor(0)).await.unwrap().len(), 20);
    eprintln!(
        "rss before {rss_before} KiB, peak {rss_peak} KiB, after {rss_after} KiB for {} items",
        3 * ITEMS_MAX
    );
}

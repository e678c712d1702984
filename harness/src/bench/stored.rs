//! `stored`: a relay with N × 1 KiB items already stored (1,000,000 by default; `--items`).
//! The store is filled directly through the store's own API (in big group commits, as a relay
//! that has run for a while would have it), then the real relay binary is started on it:
//! start → ready, its memory, 64 clients pushing, a fresh device catching up 100,000 items
//! of one mailbox, and a second restart after all that.

use super::baseline::Baseline;
use super::relay_benches::{Bench, PUSH_WINDOW, group, pull_all, push_on, record};
use super::{BenchResult, Better};
use anyhow::anyhow;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::blob_store::Store;
use zerok_actors::relay::blob_store::core::StoreLimits;
use zerok_actors::relay::blob_store::segments::StoreOptions;
use zerok_messages::relay::{AppendRequest, StoreOutcome};
use zerok_messages::{BlobId, MailboxId};

/// Mailboxes the filler items are spread over.
const FILLER_MAILBOXES: u64 = 1_000;
/// Items per commit while filling.
const FILL_BATCH: u64 = 4_096;
/// The relay's store directory inside its data dir.
const STORE_DIR: &str = "store";

fn filler_mailbox(n: u64) -> MailboxId {
    let mut id = [0xf1u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    MailboxId(id)
}

/// Fill the store in `data_dir` with `items` items, `catchup` of them in `mailbox`; answers
/// the seconds it took.
fn fill(data_dir: &Path, items: u64, mailbox: MailboxId, catchup: u64) -> anyhow::Result<f64> {
    let clock = zerok_actors::clock::Clock::system();
    let started = clock.now_unix_ms();
    let store = Store::open_with(
        &data_dir.join(STORE_DIR),
        StoreOptions::new(zerok_actors::relay::blob_store::segments::SEGMENT_BYTES_DEFAULT),
    )?;
    let limits = StoreLimits {
        mailbox_quota_bytes: u64::MAX,
        mailbox_items_max: u64::MAX,
        commit_max_items: FILL_BATCH as usize,
        ..StoreLimits::default()
    };
    let faults = FaultPlan::none();
    let mut n = 0u64;
    let mut next_report = 1_000_000u64;
    while n < items {
        let count = FILL_BATCH.min(items - n);
        let requests: Vec<AppendRequest> = (n..n + count)
            .map(|k| {
                let (target, body) = if k < catchup {
                    (mailbox, record(k, 9))
                } else {
                    (filler_mailbox(k % FILLER_MAILBOXES), record(k, 7))
                };
                AppendRequest {
                    token: k,
                    mailbox: target,
                    blob_id: BlobId::of_ciphertext(&body),
                    ciphertext: body,
                    ttl_secs: None,
                }
            })
            .collect();
        let plan = store.commit(&requests, clock.now_unix_ms(), &limits, &faults)?;
        if let Some(refused) = plan
            .outcomes
            .iter()
            .find(|o| matches!(o, StoreOutcome::Rejected(_)))
        {
            return Err(anyhow!("filling the store: {refused:?}"));
        }
        n += count;
        if n >= next_report {
            eprintln!(
                "stored {n} items in {:.1} s",
                clock.now_unix_ms().saturating_sub(started) as f64 / 1000.0
            );
            next_report += 1_000_000;
        }
    }
    drop(store);
    Ok(clock.now_unix_ms().saturating_sub(started) as f64 / 1000.0)
}

/// Disk blocks allocated under `dir`, in bytes (presized segments and the index's journal
/// are sparse: their length is not what they take).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks().saturating_mul(512),
            Err(_) => 0,
        })
        .sum()
}

/// The `stored` benchmark with `items` items stored.
pub async fn stored(
    bench: &Bench,
    base: &Baseline,
    items: u64,
) -> anyhow::Result<Vec<BenchResult>> {
    let keys = group(9);
    let mailbox = keys.mailbox_id();
    let catchup = if bench.quick { 5_000 } else { 100_000 }.min(items);
    let data_dir = bench.dir.join("relay-stored");
    let fill_dir = data_dir.clone();
    let fill_seconds =
        tokio::task::spawn_blocking(move || fill(&fill_dir, items, mailbox, catchup)).await??;
    let store_dir = data_dir.join(STORE_DIR);
    let disk_bytes = dir_bytes(&store_dir);
    let index_bytes = dir_bytes(&store_dir.join("index"));

    let started = Instant::now();
    let mut relay = bench.relay_on(&data_dir, None).await?;
    let start_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_ready_kib = relay
        .rss_kib()
        .ok_or_else(|| anyhow!("no /proc RSS for the relay"))?;

    let mut results = push_on(bench, base, 64, PUSH_WINDOW, &relay, "stored_push").await?;

    let reader = bench.client(&relay).await?;
    reader.join(&keys).await?;
    let pull_started = Instant::now();
    let (count, _) = pull_all(&reader, mailbox).await?;
    let pull_seconds = pull_started.elapsed().as_secs_f64();
    if count != catchup {
        return Err(anyhow!("pulled {count} of {catchup} records"));
    }
    let rss_after_kib = relay.rss_kib().unwrap_or(0);
    drop(reader);
    relay.terminate(Duration::from_secs(30)).await?;
    let restarted = Instant::now();
    relay.restart().await?;
    let restart_seconds = restarted.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_restart_kib = relay.rss_kib().unwrap_or(0);
    relay.terminate(Duration::from_secs(30)).await?;
    let _ = std::fs::remove_dir_all(&data_dir);

    let mib = |kib: u64| kib as f64 / 1024.0;
    results.extend([
        BenchResult::new("stored", "fill_seconds", fill_seconds, "s", Better::Lower),
        BenchResult::new(
            "stored",
            "disk_bytes_per_item",
            disk_bytes as f64 / items as f64,
            "B",
            Better::Lower,
        ),
        BenchResult::new(
            "stored",
            "index_disk_bytes_per_item",
            index_bytes as f64 / items as f64,
            "B",
            Better::Lower,
        ),
        BenchResult::new("stored", "start_seconds", start_seconds, "s", Better::Lower),
        BenchResult::new(
            "stored",
            "relay_rss_ready_mib",
            mib(rss_ready_kib),
            "MiB",
            Better::Lower,
        ),
        BenchResult::new(
            "stored",
            "catchup_records_per_s",
            count as f64 / pull_seconds,
            "1/s",
            Better::Higher,
        ),
        BenchResult::new(
            "stored",
            "relay_rss_after_load_mib",
            mib(rss_after_kib),
            "MiB",
            Better::Lower,
        ),
        BenchResult::new(
            "stored",
            "restart_seconds",
            restart_seconds,
            "s",
            Better::Lower,
        ),
        BenchResult::new(
            "stored",
            "relay_rss_restart_mib",
            mib(rss_restart_kib),
            "MiB",
            Better::Lower,
        ),
    ]);
    Ok(results
        .into_iter()
        .map(|r| r.param("items", items).param("catchup_items", catchup))
        .collect())
}

//! Temporary: time group commits of 357 × 1 KiB items on a store.
use std::time::Instant;
use zerok_actors::blob_store::core::StoreLimits;
use zerok_actors::fault::FaultPlan;
use zerok_messages::relay::AppendRequest;
use zerok_messages::{BlobId, MailboxId};
fn main() {
    let dir = tempfile::tempdir_in("/work").expect("temp dir");
    let store = zerok_actors::blob_store::Store::open(dir.path(), 64 << 20).expect("store");
    let mut n = 0u64;
    let started = Instant::now();
    let rounds = 300;
    let mut plan_t = 0.0;
    for _ in 0..rounds {
        let reqs: Vec<AppendRequest> = (0..357)
            .map(|i| {
                n += 1;
                let mut body = vec![0u8; 1024];
                body[..8].copy_from_slice(&n.to_le_bytes());
                let ct = bytes::Bytes::from(body);
                AppendRequest {
                    token: n,
                    mailbox: MailboxId([(i % 64) as u8; 32]),
                    blob_id: BlobId::of_ciphertext(&ct),
                    ciphertext: ct,
                    ttl_secs: None,
                }
            })
            .collect();
        let t = Instant::now();
        store
            .commit(
                &reqs,
                1_700_000_000_000,
                &StoreLimits::default(),
                &FaultPlan::none(),
            )
            .unwrap();
        plan_t += t.elapsed().as_secs_f64();
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "{} items, commit {:.1} us/item, total {:.0} items/s",
        n,
        plan_t / n as f64 * 1e6,
        n as f64 / total
    );
}

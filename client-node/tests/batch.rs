//! The batch API and group commit end to end, against the real `zerok-relay` binary:
//! `enqueue_many` / `push_many` keep their order, concurrent enqueues all arrive once, a
//! refused batch takes no seq, and an enqueue that returned survives a SIGKILL.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::BufRead;
use std::time::Duration;
use zerok_actors::client::local_store::LocalStore;
use zerok_client::{ClientError, Event, NewSecret};
use zerok_messages::{BlobId, DeviceId, RelayAddr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_concurrent_enqueues_arrive_once_each_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let mut events = bob.events().unwrap();
    let alice = std::sync::Arc::new(alice);

    // Three batches pushed by three tasks, and 16 tasks enqueueing one by one, all at once.
    let mut tasks = Vec::new();
    for batch in 0..3 {
        let alice = std::sync::Arc::clone(&alice);
        tasks.push(tokio::spawn(async move {
            let payloads = (0..100)
                .map(|n| format!("batch {batch} {n:03}").into_bytes())
                .collect();
            let receipts = alice.push_many(group, payloads).await.unwrap();
            assert_eq!(receipts.len(), 100);
        }));
    }
    for task in 0..16 {
        let alice = std::sync::Arc::clone(&alice);
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                alice
                    .enqueue(group, format!("single {task} {n}").into_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (received, other) = receive(&mut events, 460, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 460, "other events: {other:?}");
    assert!(
        !other.iter().any(|e| matches!(e, Event::GapDetected { .. })),
        "{other:?}"
    );
    assert!(consecutive(&seqs(&received), 460));
    let got = payloads(&received);
    for batch in 0..3 {
        let mine: Vec<&String> = got
            .iter()
            .filter(|p| p.starts_with(&format!("batch {batch} ")))
            .collect();
        let expected: Vec<String> = (0..100).map(|n| format!("batch {batch} {n:03}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "batch {batch}");
        // A batch is one run of consecutive seqs.
        let first = got.iter().position(|p| *p == expected[0]).unwrap();
        assert_eq!(got[first..first + 100], expected[..]);
    }
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 460);
    let (extra, _) = receive(&mut events, 1, Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "{extra:?}");
    let status = alice.status().await.unwrap();
    // And her two roster records (the invite, Bob's `Add`).
    assert_eq!(
        status.groups[0].seen_ids, 462,
        "own pushes are remembered as seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_takes_no_seq_and_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let mut events = bob.events().unwrap();

    alice.push(group, b"one".to_vec()).await.unwrap();
    let too_large = vec![b"ok".to_vec(), vec![0u8; 2 * 1024 * 1024]];
    assert!(matches!(
        alice.enqueue_many(group, too_large).await,
        Err(ClientError::Invalid(
            zerok_client::InvalidInput::PayloadTooLarge { .. }
        ))
    ));
    let too_many =
        vec![Vec::new(); zerok_actors::client::sync_coordinator::ENQUEUE_MANY_RECORDS_MAX + 1];
    assert!(matches!(
        alice.enqueue_many(group, too_many).await,
        Err(ClientError::Invalid(
            zerok_client::InvalidInput::TooManyRecords { .. }
        ))
    ));
    assert!(
        alice
            .enqueue_many(group, Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    alice.push(group, b"two".to_vec()).await.unwrap();

    let (received, other) = receive(&mut events, 2, Duration::from_secs(30)).await;
    assert_eq!(payloads(&received), ["one", "two"], "other: {other:?}");
    assert!(
        consecutive(&seqs(&received), 2),
        "no seq taken by the refused batch"
    );
    assert!(
        !other.iter().any(|e| matches!(e, Event::GapDetected { .. })),
        "{other:?}"
    );
}

/// Environment variable that makes [`enqueued_records_survive_a_sigkill`] the child: the
/// home dir to enqueue into until killed.
const CHILD_HOME: &str = "ZEROK_TEST_ENQUEUE_CHILD_HOME";

/// The child: a client whose only relay never answers (nothing is ever acked, so the outbox
/// keeps everything), 16 tasks enqueueing; each blob id is printed once `enqueue` returned.
async fn enqueue_until_killed(home: &str) {
    let mut config = zerok_client::ClientConfig::new(home);
    config.bind = "127.0.0.1:0".parse().unwrap();
    let client = std::sync::Arc::new(zerok_client::Client::start(config).await.unwrap());
    let nowhere = RelayAddr {
        id: DeviceId([7; 32]),
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    };
    let group = client
        .create_group("kill", NewSecret::Random, vec![nowhere])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let client = std::sync::Arc::clone(&client);
            tokio::spawn(async move {
                for n in 0u64.. {
                    let payload = format!("{task} {n}").into_bytes();
                    let blob_id = if n % 4 == 0 {
                        client.enqueue_many(group, vec![payload]).await.unwrap()[0]
                    } else {
                        client.enqueue(group, payload).await.unwrap()
                    };
                    println!("enqueued {}", blob_id.to_hex());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn enqueued_records_survive_a_sigkill() {
    if let Ok(home) = std::env::var(CHILD_HOME) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(enqueue_until_killed(&home));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "enqueued_records_survive_a_sigkill",
            "--nocapture",
        ])
        .env(CHILD_HOME, &home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(hex) = line.strip_prefix("enqueued ") {
            acknowledged.push(hex.parse::<BlobId>().unwrap());
            if acknowledged.len() == 2000 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acknowledged.len(), 2000, "the child stopped early");

    let store = LocalStore::open(&home.join("store")).unwrap();
    let groups = store.groups().unwrap();
    assert_eq!(groups.len(), 1);
    let outbox: std::collections::HashSet<BlobId> = store
        .outbox(&groups[0].0)
        .unwrap()
        .into_iter()
        .map(|(_, entry)| entry.blob_id)
        .collect();
    let lost: Vec<&BlobId> = acknowledged
        .iter()
        .filter(|id| !outbox.contains(id))
        .collect();
    assert!(lost.is_empty(), "{} acknowledged enqueues lost", lost.len());
    // The own seq is past every queued push: none is reused after the restart.
    let seqs: Vec<u64> = store
        .outbox(&groups[0].0)
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    let (next_seq, _) = store.own_seq(&groups[0].0).unwrap();
    assert!(seqs.iter().all(|seq| *seq < next_seq), "next {next_seq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_larger_than_the_send_window_drains_in_order_after_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    let mut events = bob.events().unwrap();
    alice.push(group, b"before".to_vec()).await.unwrap();
    relay.kill();
    // Three windows' worth queued while the relay is away, and more while it comes back.
    let records = 3 * zerok_actors::client::sync_coordinator::PUSHES_HANDED_MAX + 17;
    let payloads_of = |range: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        range
            .map(|n| format!("queued {n:05}").into_bytes())
            .collect()
    };
    alice
        .enqueue_many(group, payloads_of(0..records - 500))
        .await
        .unwrap();
    relay.restart().await.unwrap();
    let last = alice
        .enqueue_many(group, payloads_of(records - 500..records))
        .await
        .unwrap();
    alice
        .wait_acked(group, *last.last().unwrap(), Some(Duration::from_secs(120)))
        .await
        .unwrap();

    let (received, other) = receive(&mut events, records + 1, Duration::from_secs(120)).await;
    assert_eq!(received.len(), records + 1, "other: {other:?}");
    let expected: Vec<String> = std::iter::once("before".to_owned())
        .chain((0..records).map(|n| format!("queued {n:05}")))
        .collect();
    assert_eq!(payloads(&received), expected);
    assert!(drained(&alice, group, Duration::from_secs(30)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_past_the_pull_ahead_bound() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    drop(bob.events());
    // More than the connection may pull ahead of what the app was handed: the pulls park
    // and must go on as the app reads.
    let records = zerok_actors::client::relay_connection::PULL_AHEAD_ITEMS_MAX as usize * 2 + 300;
    for chunk in (0..records).collect::<Vec<_>>().chunks(2000) {
        let payloads = chunk
            .iter()
            .map(|n| format!("stored {n:05}").into_bytes())
            .collect();
        let receipts = alice.push_many(group, payloads).await.unwrap();
        assert_eq!(receipts.len(), chunk.len());
    }
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    let carol = client(dir.path(), "carol").await;
    let mut events = carol.events().unwrap();
    assert_eq!(carol.join(&token, None).await.unwrap(), group);
    let (received, other) = receive(&mut events, records, Duration::from_secs(120)).await;
    assert_eq!(received.len(), records, "other: {other:?}");
    // Each exactly once. (In the relay's order, which is push order unless the relay refused
    // some pushes for a moment, its rate limit, and took them on a retry.)
    let expected: Vec<String> = (0..records).map(|n| format!("stored {n:05}")).collect();
    let mut got = payloads(&received);
    got.sort();
    assert!(
        got == expected,
        "{} records missing or twice",
        records - {
            let mut unique = got.clone();
            unique.dedup();
            unique.len()
        }
    );
    let status = carol.status().await.unwrap();
    // The records, and the roster's: two invites and at least two `Add`s (every member
    // online may answer a join request).
    assert!(status.groups[0].relays[0].cursor >= records as u64 + 4);
    assert!(status.groups[0].seen_ids <= zerok_actors::client::seen::SEEN_IDS_MAX as u64);
}

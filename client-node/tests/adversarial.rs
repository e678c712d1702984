//! A relay that drops, duplicates, reorders, replays and flips bytes: the client never hands
//! the app a tampered or replayed record, reports gaps and undecryptable items.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use zerok_client::{Event, NewSecret};
use zerok_harness::evil_relay::{EvilRelay, Misbehaviour};

async fn run(misbehaviour: Misbehaviour, seed: u64) -> (Vec<Event>, Vec<Event>) {
    let dir = tempfile::tempdir().unwrap();
    let evil = EvilRelay::start(seed, Misbehaviour::default()).await;
    let alice = client(dir.path(), "alice").await;
    let group = alice
        .create_group("victims", NewSecret::Random, vec![evil.addr()])
        .await
        .unwrap();
    for n in 0..30 {
        alice
            .push(group, format!("honest {n}").into_bytes())
            .await
            .unwrap();
    }
    evil.set_misbehaviour(misbehaviour);
    let bob = client(dir.path(), "bob").await;
    bob.join(
        &alice.invite(group, Duration::from_secs(60)).await.unwrap(),
        None,
    )
    .await
    .unwrap();
    let mut events = bob.events().unwrap();
    // Catch-up through pulls, then live deliveries of ten more.
    bob.sync_now(group).await.unwrap();
    for n in 30..40 {
        alice
            .push(group, format!("honest {n}").into_bytes())
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(3), events.recv()).await {
        all.push(event);
    }
    bob.sync_now(group).await.unwrap();
    while let Ok(event) = events.try_recv() {
        all.push(event);
    }
    let received = all
        .iter()
        .filter(|e| matches!(e, Event::Received { .. }))
        .cloned()
        .collect();
    let other = all
        .into_iter()
        .filter(|e| !matches!(e, Event::Received { .. }))
        .collect();
    (received, other)
}

fn assert_only_honest_once(received: &[Event]) -> HashSet<String> {
    let got = payloads(received);
    let unique: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "a record reached the app twice");
    for payload in &got {
        let n: usize = payload.strip_prefix("honest ").unwrap().parse().unwrap();
        assert!(n < 40, "{payload}");
    }
    unique
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_replays_never_reach_the_app_twice() {
    let (received, other) = run(
        Misbehaviour {
            duplicate: true,
            replay: true,
            ..Misbehaviour::default()
        },
        1,
    )
    .await;
    let unique = assert_only_honest_once(&received);
    assert_eq!(
        unique.len(),
        40,
        "every honest record arrives once: {other:?}"
    );
    assert!(
        !other
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_records_are_reported_as_gaps() {
    let (received, other) = run(
        Misbehaviour {
            drop_every: 4,
            ..Misbehaviour::default()
        },
        2,
    )
    .await;
    let unique = assert_only_honest_once(&received);
    assert!(unique.len() < 40, "the relay dropped some");
    let gaps: u64 = other
        .iter()
        .map(|e| match e {
            Event::GapDetected { from, to, .. } => to - from,
            _ => 0,
        })
        .sum();
    assert!(gaps >= 1, "{other:?}");
    // Every missing record, except possibly the last ones (no later record reveals them), is
    // covered by a reported gap.
    assert!(
        gaps as usize + unique.len() >= 39,
        "gaps {gaps}, got {}",
        unique.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_undecryptable_and_never_delivered() {
    let (received, other) = run(
        Misbehaviour {
            flip_every: 3,
            ..Misbehaviour::default()
        },
        3,
    )
    .await;
    let unique = assert_only_honest_once(&received);
    let undecryptable = other
        .iter()
        .filter(|e| matches!(e, Event::Undecryptable { .. }))
        .count();
    assert!(undecryptable >= 1, "{other:?}");
    assert!(unique.len() < 40);
    assert!(
        unique.len() + undecryptable >= 40,
        "{} + {undecryptable}",
        unique.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_pages_still_deliver_each_record_once() {
    let (received, _) = run(
        Misbehaviour {
            reorder: true,
            ..Misbehaviour::default()
        },
        4,
    )
    .await;
    let unique = assert_only_honest_once(&received);
    assert_eq!(unique.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_page_cursors_never_skip_records() {
    // Pages of 3 items that each claim 1000 cursors more than they carry (empty pages too):
    // the client's cursor follows the items it got, so it keeps pulling and misses nothing.
    let (received, other) = run(
        Misbehaviour {
            page_items_max: 3,
            forge_next_by: 1000,
            ..Misbehaviour::default()
        },
        5,
    )
    .await;
    let unique = assert_only_honest_once(&received);
    assert_eq!(unique.len(), 40, "every record arrives: {other:?}");
    assert!(
        !other.iter().any(|e| matches!(e, Event::GapDetected { .. })),
        "{other:?}"
    );
}

//! Client end-to-end tests against the real `zerok-relay` binary over iroh on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use zerok_client::{Event, NewSecret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_a_thousand_records_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let alice = client(dir.path(), "alice").await;
    let bob = client(dir.path(), "bob").await;
    let group = alice
        .create_group("family", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bob.join(&token, None).await.unwrap(), group);
    let mut events = bob.events().unwrap();

    let mut blob_ids = Vec::new();
    for n in 0..1000 {
        blob_ids.push(
            alice
                .enqueue(group, format!("record {n}").into_bytes())
                .await
                .unwrap(),
        );
    }
    let last = *blob_ids.last().unwrap();
    let receipt = alice
        .wait_acked(group, last, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(receipt.acked_by, vec![relay.addr.id]);

    let (received, _) = receive(&mut events, 1000, Duration::from_secs(60)).await;
    assert_eq!(
        payloads(&received),
        (0..1000).map(|n| format!("record {n}")).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&received), (1..=1000).collect::<Vec<u64>>());
    assert!(
        received
            .iter()
            .all(|e| matches!(e, Event::Received { sender, .. } if *sender == alice.device_id()))
    );
    // Nothing more: no duplicates trickle in.
    let (extra, _) = receive(&mut events, 1, Duration::from_millis(500)).await;
    assert!(extra.is_empty(), "{extra:?}");
    // Alice never receives her own records.
    let mut own = alice.events().unwrap();
    let (echo, _) = receive(&mut own, 1, Duration::from_millis(300)).await;
    assert!(echo.is_empty());
    assert!(drained(&alice, group, Duration::from_secs(10)).await);
    alice.shutdown().await;
    bob.shutdown().await;
}

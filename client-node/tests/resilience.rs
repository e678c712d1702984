//! The client keeps working through failures of its own actors and of its relays while the
//! app is not reading (end to end: the real `zerok-relay` binary on 127.0.0.1).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_client::{Client, ClientConfig, Event, NewSecret};

/// A client with its home in `dir/name` whose actors consult `faults`.
async fn faulty_client(dir: &std::path::Path, name: &str, faults: &FaultPlan) -> Client {
    let mut config = ClientConfig::new(dir.join(name));
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.faults = faults.clone();
    Client::start(config).await.unwrap()
}

/// Make the next Encryptor batch of a client fail (its Encryptor dies on it), then let the
/// restarted one work.
async fn fail_one_batch(faults: &FaultPlan, during: impl std::future::Future<Output = ()>) {
    faults.set(FaultPoint::EncryptorBatch, 1.0);
    let fired = async {
        wait_until(
            "the Encryptor to fail on a batch",
            Duration::from_secs(30),
            async || faults.fired(FaultPoint::EncryptorBatch) > 0,
        )
        .await;
        faults.set(FaultPoint::EncryptorBatch, 0.0);
    };
    tokio::join!(fired, during);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_encryptor_is_restarted_with_its_keys_and_no_record_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice_faults, bob_faults) = (FaultPlan::seeded(1), FaultPlan::seeded(2));
    let alice = faulty_client(dir.path(), "alice", &alice_faults).await;
    let bob = faulty_client(dir.path(), "bob", &bob_faults).await;
    let group = alice
        .create_group("g", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bob.join(&token, None).await.unwrap(), group);
    let mut events = bob.events().unwrap();

    // Alice's Encryptor dies sealing her push: the push still completes (sealed by the
    // restarted Encryptor under the same seq, with the group's keys from the local store).
    let mut receipt = None;
    fail_one_batch(&alice_faults, async {
        receipt = Some(alice.push(group, b"first".to_vec()).await.unwrap());
    })
    .await;
    assert_eq!(receipt.unwrap().acked_by.len(), 1);
    let (received, _) = receive(&mut events, 1, Duration::from_secs(30)).await;
    assert_eq!(payloads(&received), ["first"]);

    // Bob's Encryptor dies opening the next record: it is opened by the restarted one (with
    // the keys it got back), not reported undecryptable and skipped.
    let mut other = Vec::new();
    fail_one_batch(&bob_faults, async {
        alice.push(group, b"second".to_vec()).await.unwrap();
        let (received, rest) = receive(&mut events, 1, Duration::from_secs(30)).await;
        assert_eq!(payloads(&received), ["second"]);
        other = rest;
    })
    .await;
    assert!(
        !other
            .iter()
            .any(|e| matches!(e, Event::Undecryptable { .. } | Event::GapDetected { .. })),
        "{other:?}"
    );
    assert_eq!(alice_faults.fired(FaultPoint::EncryptorBatch), 1);
    assert_eq!(bob_faults.fired(FaultPoint::EncryptorBatch), 1);
    // Both clients still run and answer.
    assert_eq!(bob.status().await.unwrap().groups.len(), 1);
    alice.push(group, b"third".to_vec()).await.unwrap();
    let (received, _) = receive(&mut events, 1, Duration::from_secs(30)).await;
    assert_eq!(payloads(&received), ["third"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_flaps_while_the_event_channel_is_full_never_block_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    // Bob holds his event stream and does not read it: it fills up.
    let events = bob.events().unwrap();
    let records = zerok_client::client::EVENTS_BUFFER + 100;
    let payloads: Vec<Vec<u8>> = (0..records).map(|n| format!("r{n}").into_bytes()).collect();
    for chunk in payloads.chunks(500) {
        alice.push_many(group, chunk.to_vec()).await.unwrap();
    }
    wait_until(
        "Bob's event channel to fill up",
        Duration::from_secs(60),
        async || events.capacity() == 0,
    )
    .await;
    // The relay goes down and up twice: RelayDown / RelayUp events find no room.
    let connected = async |up: bool| {
        let status = tokio::time::timeout(Duration::from_secs(5), bob.status())
            .await
            .expect("status answers")
            .unwrap();
        status.groups[0].relays[0].connected == up
    };
    for _ in 0..2 {
        relay.kill();
        wait_until(
            "Bob to see the relay down",
            Duration::from_secs(60),
            async || connected(false).await,
        )
        .await;
        relay.restart().await.unwrap();
        wait_until("Bob to reconnect", Duration::from_secs(60), async || {
            connected(true).await
        })
        .await;
    }
    // Bob's client keeps answering and pushing (each call bounded: a blocked coordinator
    // would never answer).
    tokio::time::timeout(Duration::from_secs(5), bob.status())
        .await
        .expect("status answers")
        .unwrap();
    let receipt = tokio::time::timeout(Duration::from_secs(30), bob.push(group, b"bob".to_vec()))
        .await
        .expect("push completes")
        .unwrap();
    assert_eq!(receipt.acked_by.len(), 1);
    // When the app reads, every record arrives, and the relay's state changes that found no
    // room arrive coalesced: the latest per relay (up), not every flap (the first RelayUp
    // was handed over before the channel filled).
    let mut events = events;
    let (received, other) = receive(&mut events, records, Duration::from_secs(60)).await;
    assert_eq!(received.len(), records);
    let ups = other
        .iter()
        .filter(|e| matches!(e, Event::RelayUp { .. }))
        .count();
    let downs = other
        .iter()
        .filter(|e| matches!(e, Event::RelayDown { .. }))
        .count();
    assert!(ups <= 2 && downs == 0, "{other:?}");
}

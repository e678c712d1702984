//! Membership (issue 14) end to end against the real `zerok-relay` binary over iroh on
//! 127.0.0.1: invites that carry no key, single use and expiry enforced by the admitting
//! member, the roster every device sees.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;
use zerok_actors::Clock;
use zerok_actors::crypto::invite::InviteV2;
use zerok_actors::crypto::keys::GroupSecret;
use zerok_client::{Client, ClientConfig, ClientError, InviteError, NewSecret};
use zerok_messages::Epoch;

/// A short wait for an admission that must not come.
const REFUSED_WAIT: Duration = Duration::from_secs(4);

async fn client_with_clock(dir: &std::path::Path, name: &str, clock: Clock) -> Client {
    let mut config = ClientConfig::new(dir.join(name));
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.clock = clock;
    config.device_name = Some(name.to_owned());
    Client::start(config).await.unwrap()
}

fn not_admitted(result: Result<zerok_client::GroupId, ClientError>) -> bool {
    matches!(
        result,
        Err(ClientError::Invite(InviteError::NotAdmitted(_)))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_admits_one_device_once_and_carries_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let alice = client_with_clock(dir.path(), "alice", Clock::system()).await;
    let bob = client_with_clock(dir.path(), "bob", Clock::system()).await;
    let carol = client_with_clock(dir.path(), "carol", Clock::system()).await;
    let group = alice
        .create_group("family", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();

    // Decoded, the token gives an invite secret that is neither the group's secret nor
    // anything that derives the group's mailbox (or any key of it).
    let decoded = InviteV2::decode(&token, 0).unwrap();
    let as_group = GroupSecret::from_bytes(*decoded.invite_secret);
    assert_ne!(as_group.epoch_keys(Epoch(0)).mailbox_id(), group.0);

    assert_eq!(bob.join(&token, None).await.unwrap(), group);
    // The same token again, by another device: no member admits it.
    assert!(not_admitted(carol.join_waiting(&token, REFUSED_WAIT).await));
    assert!(carol.groups().await.unwrap().is_empty(), "nothing joined");

    // Bob, admitted, writes; Alice reads it (he is on her roster).
    let mut alice_events = alice.events().unwrap();
    bob.push(group, b"hello from bob".to_vec()).await.unwrap();
    let (got, other) = receive(&mut alice_events, 1, Duration::from_secs(20)).await;
    assert_eq!(payloads(&got), ["hello from bob"], "{other:?}");
    // Every device lists the same roster, with names and who added whom.
    for device in [&alice, &bob] {
        let mut listed: Vec<(String, String)> = device
            .devices(group)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.name, d.added_by.to_hex()))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                ("alice".to_owned(), alice.device_id().to_hex()),
                ("bob".to_owned(), alice.device_id().to_hex()),
            ]
        );
    }
    // A fresh invite admits Carol, through Bob alone (Alice is gone): any member admits.
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    // Bob learns of the invite through sync before Alice leaves.
    bob.sync_now(group).await.unwrap();
    alice.shutdown().await;
    assert_eq!(carol.join(&token, None).await.unwrap(), group);
    let carol_entry = carol
        .devices(group)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.is_self)
        .unwrap();
    assert_eq!(carol_entry.added_by, bob.device_id());
    bob.shutdown().await;
    carol.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_invite_is_refused_by_the_members_clock_and_a_v1_token_outright() {
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let alice_clock = Clock::manual(Clock::system().now_unix_ms());
    let alice = client_with_clock(dir.path(), "alice", alice_clock.clone()).await;
    let bob = client_with_clock(dir.path(), "bob", Clock::system()).await;
    let group = alice
        .create_group("family", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let token = alice.invite(group, Duration::from_secs(60)).await.unwrap();
    // Two minutes pass for Alice; Bob's clock still says the token is valid: the member's
    // clock decides, not the joiner's.
    alice_clock.advance(Duration::from_secs(120));
    assert!(not_admitted(bob.join_waiting(&token, REFUSED_WAIT).await));
    assert!(bob.groups().await.unwrap().is_empty());
    // Expired for the joiner too: refused before asking.
    alice_clock.set_unix_ms(Clock::system().now_unix_ms());
    let stale = alice.invite(group, Duration::from_secs(0)).await.unwrap();
    assert!(matches!(
        bob.join(&stale, None).await,
        Err(ClientError::Invite(InviteError::Expired(_)))
    ));
    // A token of the old format (it carried the group's secret) is refused with a clear
    // error, whatever it holds.
    let v1 = zerok_actors::crypto::invite::Invite {
        relays: vec![relay.addr.clone()],
        secret: zerok_actors::crypto::invite::InviteSecret::Key(GroupSecret::from_bytes([9; 32])),
        epoch: Epoch(0),
        expires_at_unix_secs: u64::MAX,
        group_name: "old".into(),
        group_id: None,
    }
    .encode();
    assert!(matches!(
        bob.join(&v1, None).await,
        Err(ClientError::Invite(InviteError::CarriesSecret))
    ));
    // A valid invite still works.
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bob.join(&token, None).await.unwrap(), group);
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_online_both_answer_and_the_joiner_is_admitted_once() {
    // Both members know the invite and answer the request; each learns of the other's
    // `Add`, which uses the invite up. Neither may drop its answer for that (it did: the
    // used invite's mailbox was no longer watched, and no admission was ever posted).
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, group) = pair(dir.path(), vec![relay.addr.clone()]).await;
    for round in 0..3 {
        let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
        bob.sync_now(group).await.unwrap();
        let joiner = client(dir.path(), &format!("joiner{round}")).await;
        assert_eq!(joiner.join(&token, None).await.unwrap(), group);
        joiner.push(group, b"joined".to_vec()).await.unwrap();
        joiner.shutdown().await;
    }
    alice.sync_now(group).await.unwrap();
    assert_eq!(alice.devices(group).await.unwrap().len(), 5);
    alice.shutdown().await;
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_joins_with_the_right_code_and_a_wrong_code_spends_it() {
    use zerok_client::{PairCode, PairingError};
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let alice = client_with_clock(dir.path(), "alice", Clock::system()).await;
    let bob = client_with_clock(dir.path(), "bob", Clock::system()).await;
    let group = alice
        .create_group("family", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let relays = vec![relay.addr.clone()];
    let mut rng = zerok_actors::rng::Rng::seeded(14);
    let code = PairCode::random(&mut rng);
    // Bob mistypes one digit of the password: both sides fail, nobody joins.
    let shown = code.reveal();
    let last = shown.chars().last().unwrap().to_digit(10).unwrap();
    let typo = format!("{}{}", &shown[..shown.len() - 1], (last + 1) % 10);
    let (offered, joined) = tokio::join!(
        alice.pair_offer(group, &code, WAIT),
        bob.pair_join(&typo, relays.clone(), WAIT)
    );
    assert!(
        matches!(offered, Err(ClientError::Pairing(PairingError::WrongCode))),
        "{offered:?}"
    );
    assert!(
        matches!(joined, Err(ClientError::Pairing(PairingError::WrongCode))),
        "{joined:?}"
    );
    assert!(bob.groups().await.unwrap().is_empty());
    // The code is spent: typing it right now finds nobody to pair with.
    assert!(matches!(
        bob.pair_join(&shown, relays.clone(), Duration::from_secs(3))
            .await,
        Err(ClientError::Pairing(_))
    ));
    // A new code (another rendezvous mailbox) pairs.
    let fresh = loop {
        let fresh = PairCode::random(&mut rng);
        if fresh.nameplate() != code.nameplate() {
            break fresh;
        }
    };
    let typed = fresh.reveal();
    let (offered, joined) = tokio::join!(
        alice.pair_offer(group, &fresh, WAIT),
        bob.pair_join(&typed, relays.clone(), WAIT)
    );
    offered.unwrap();
    assert_eq!(joined.unwrap(), group);
    let mut alice_events = alice.events().unwrap();
    bob.push(group, b"paired".to_vec()).await.unwrap();
    let (got, other) = receive(&mut alice_events, 1, Duration::from_secs(20)).await;
    assert_eq!(payloads(&got), ["paired"], "{other:?}");
    let names: Vec<String> = alice
        .devices(group)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(names.contains(&"bob".to_owned()), "{names:?}");
    alice.shutdown().await;
    bob.shutdown().await;
}

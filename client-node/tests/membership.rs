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

/// A relay; Alice, who founds a group on it and on `also`; Bob, in no group yet.
async fn alice_and_bob(
    dir: &std::path::Path,
    also: Vec<zerok_messages::RelayAddr>,
) -> (RelayProcess, Client, Client, zerok_client::GroupId) {
    let relay = relay(dir, "relay").await;
    let alice = client_with_clock(dir, "alice", Clock::system()).await;
    let bob = client_with_clock(dir, "bob", Clock::system()).await;
    let relays = [vec![relay.addr.clone()], also].concat();
    let group = alice
        .create_group("family", NewSecret::Random, relays)
        .await
        .unwrap();
    (relay, alice, bob, group)
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
async fn a_members_newest_invite_is_answered_however_many_older_or_other_invites_are_open() {
    use zerok_actors::client::sync_coordinator::WATCHED_INVITES_MAX;
    const LONG: Duration = Duration::from_secs(7 * 24 * 3600);
    // A member watches at most `WATCHED_INVITES_MAX` invite mailboxes. It used to keep those
    // expiring last, so a short invite (a pairing's lasts 10 minutes) made beside that many
    // long ones was never watched and its joiner never admitted. Now a member watches its
    // own invites first, newest first; then the other members' (a member handing out
    // invites by the thousand cannot starve another's).
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let alice = client_with_clock(dir.path(), "alice", Clock::system()).await;
    // Bob's clock runs a minute ahead: his invites are newer than Alice's by their stamps,
    // not only by their order.
    let ahead = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(60_000));
    let bob_clock = Clock::virtual_shifted(Clock::system().now_unix_ms(), ahead);
    let bob = client_with_clock(dir.path(), "bob", bob_clock).await;
    let group = alice
        .create_group("family", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let invite = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bob.join(&invite, None).await.unwrap(), group);
    for _ in 0..WATCHED_INVITES_MAX {
        alice.invite(group, LONG).await.unwrap();
    }
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    for _ in 0..WATCHED_INVITES_MAX {
        bob.invite(group, LONG).await.unwrap();
    }
    bob.shutdown().await;
    alice.sync_now(group).await.unwrap();
    let joiner = client(dir.path(), "joiner").await;
    let joined = joiner
        .join_waiting(&token, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(joined, group);
    joiner.shutdown().await;
    alice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_in_the_group_may_stop_as_soon_as_its_pairing_answers() {
    use zerok_client::PairCode;
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    // The group's second relay is gone: an admission is posted only once every relay acked
    // its `Add`, or `ADMISSION_WAIT_ALL_RELAYS` (10 s) after the first did, so the new
    // device is on Alice's roster 10 s before it can be told.
    let mut gone = relay(dir.path(), "gone").await;
    gone.kill();
    let (relay, alice, bob, group) = alice_and_bob(dir.path(), vec![gone.addr.clone()]).await;
    let code = PairCode::random(&mut zerok_actors::rng::Rng::seeded(15));
    let typed = code.reveal();
    let bob_id = bob.device_id();
    let joining = tokio::spawn(async move {
        let joined = bob.pair_join(&typed, vec![relay.addr.clone()], WAIT).await;
        bob.shutdown().await;
        (joined, relay)
    });
    // A pairing answers once the new device's admission is on a relay, not when the `Add`
    // is on Alice's roster: a `zerok pair` that stopped then (it used to) left the new
    // device admitted but never told, waiting out its whole wait.
    let added = alice.pair_offer(group, &code, WAIT).await.unwrap();
    assert_eq!(added.device, bob_id);
    alice.shutdown().await;
    let (joined, _relay) = joining.await.unwrap();
    assert_eq!(joined.unwrap(), group);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_joins_with_the_right_code_and_a_wrong_code_spends_it() {
    use zerok_client::{PairCode, PairingError};
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let (relay, alice, bob, group) = alice_and_bob(dir.path(), Vec::new()).await;
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
    assert_eq!(offered.unwrap().device, bob.device_id());
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

/// Events until one matches `done` (panics after `within`): every event seen.
async fn events_until(
    events: &mut tokio::sync::mpsc::Receiver<zerok_client::Event>,
    within: Duration,
    done: impl Fn(&zerok_client::Event) -> bool,
) -> Vec<zerok_client::Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                let stop = done(&event);
                seen.push(event);
                if stop {
                    return seen;
                }
            }
            other => panic!("no such event in {within:?} ({other:?}); saw {seen:?}"),
        }
    }
}

/// Three devices; the founder joins two by invite.
async fn three_devices(
    dir: &std::path::Path,
    relays: Vec<zerok_messages::RelayAddr>,
) -> (Client, Client, Client, zerok_client::GroupId) {
    let alice = client_with_clock(dir, "alice", Clock::system()).await;
    let bob = client_with_clock(dir, "bob", Clock::system()).await;
    let carol = client_with_clock(dir, "carol", Clock::system()).await;
    let group = alice
        .create_group("family", NewSecret::Random, relays)
        .await
        .unwrap();
    for joiner in [&bob, &carol] {
        let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
        assert_eq!(joiner.join(&token, None).await.unwrap(), group);
    }
    (alice, bob, carol, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_rekeys_the_group_and_shuts_it_out() {
    use zerok_client::Event;
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, carol, group) = three_devices(dir.path(), vec![relay.addr.clone()]).await;
    let mut alice_events = alice.events().unwrap();
    let mut bob_events = bob.events().unwrap();
    let mut carol_events = carol.events().unwrap();
    bob.push(group, b"bob before".to_vec()).await.unwrap();
    let (got, other) = receive(&mut carol_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["bob before"], "{other:?}");

    // Nobody removes itself, or a device that is not on the roster.
    assert!(matches!(
        alice.remove_device(group, alice.device_id()).await,
        Err(ClientError::Invalid(_))
    ));
    assert!(matches!(
        alice
            .remove_device(group, zerok_messages::DeviceId([9; 32]))
            .await,
        Err(ClientError::NotOnRoster(_))
    ));
    alice.remove_device(group, bob.device_id()).await.unwrap();

    // Alice and Carol go on in epoch 1: each reads what the other writes after.
    alice.push(group, b"alice after".to_vec()).await.unwrap();
    let (got, other) = receive(&mut carol_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["alice after"], "{other:?}");
    carol.push(group, b"carol after".to_vec()).await.unwrap();
    let (got, other) = receive(&mut alice_events, 2, WAIT).await;
    assert_eq!(payloads(&got), ["bob before", "carol after"], "{other:?}");
    for device in [&alice, &carol] {
        let status = device.status().await.unwrap();
        assert_eq!(status.groups[0].epoch, 1);
        let mut names: Vec<String> = device
            .devices(group)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        names.sort();
        assert_eq!(names, ["alice", "carol"]);
    }
    // A device admitted after the removal starts in epoch 1 (its roster starts there, from
    // its admission) and the others take its records.
    let erin = client_with_clock(dir.path(), "erin", Clock::system()).await;
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(erin.join(&token, None).await.unwrap(), group);
    assert_eq!(erin.status().await.unwrap().groups[0].epoch, 1);
    assert_eq!(erin.devices(group).await.unwrap().len(), 3);
    erin.push(group, b"erin joined".to_vec()).await.unwrap();
    let (got, other) = receive(&mut carol_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["erin joined"], "{other:?}");
    erin.shutdown().await;

    // Bob learns he was removed (from the old mailbox), and reads nothing written after.
    let seen = events_until(
        &mut bob_events,
        WAIT,
        |e| matches!(e, Event::Removed { group: g } if *g == group),
    )
    .await;
    let read = payloads(&seen);
    assert!(read.iter().all(|p| !p.contains("after")), "{read:?}");
    assert!(matches!(
        bob.push(group, b"bob after".to_vec()).await,
        Err(ClientError::Removed(g)) if g == group
    ));
    assert!(bob.status().await.unwrap().groups[0].removed);
    bob.shutdown().await;
    alice.shutdown().await;

    // Bob, holding the old epoch's keys, writes into the old mailbox anyway: Carol
    // reports the record and does not deliver it.
    use zerok_actors::crypto::envelope::{RecordKind, seal};
    let (bob_key, old_keys) = member_keys(dir.path(), "bob");
    let forged = seal(
        &old_keys,
        &bob_key,
        100,
        1,
        RecordKind::APP,
        b"bob forged",
        [7; 24],
    )
    .unwrap();
    push_raw(&relay, &old_keys, forged.envelope).await;
    let seen = events_until(
        &mut carol_events,
        WAIT,
        |e| matches!(e, Event::UnknownSender { sender, .. } if *sender == bob_key.device_id()),
    )
    .await;
    assert!(
        seen.iter().all(|e| !matches!(e, Event::Received { .. })),
        "{seen:?}"
    );
    // The new epoch's mailbox: Bob cannot join it (no key of it proves him a member), so
    // the relay takes nothing from him there.
    let (_, new_keys) = member_keys(dir.path(), "alice");
    assert_ne!(new_keys.mailbox_id(), old_keys.mailbox_id());
    let node = zerok_actors::link::iroh::IrohNode::bind(zerok_actors::link::iroh::IrohConfig::new(
        [44; 32],
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let raw = zerok_harness::proto::ProtoClient::connect(&node.dialer(), &relay.addr)
        .await
        .unwrap();
    let forged_proof = zerok_messages::Signature64([0; 64]);
    assert!(raw.join_with(&new_keys, forged_proof).await.is_err());
    assert!(
        raw.push(new_keys.mailbox_id(), bytes::Bytes::from(vec![1u8; 300]))
            .await
            .is_err()
    );
    drop(raw);
    node.close().await;
    carol.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_in_flight_move_to_the_new_epoch_across_a_relay_restart() {
    use zerok_client::Event;
    const WAIT: Duration = Duration::from_secs(30);
    const IN_FLIGHT: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let (alice, bob, carol, group) = three_devices(dir.path(), vec![relay.addr.clone()]).await;
    let mut bob_events = bob.events().unwrap();
    let mut carol_events = carol.events().unwrap();
    alice.push(group, b"warm".to_vec()).await.unwrap();
    let (got, other) = receive(&mut carol_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["warm"], "{other:?}");

    // The relay stops (a restart: it closes its connections, so nobody waits for an idle
    // timeout); Alice queues records nobody acked yet, then removes Bob.
    relay.terminate(Duration::from_secs(10)).await.unwrap();
    let payloads_sent: Vec<Vec<u8>> = (0..IN_FLIGHT)
        .map(|i| format!("in flight {i:02}").into_bytes())
        .collect();
    let queued = alice
        .enqueue_many(group, payloads_sent.clone())
        .await
        .unwrap();
    alice.remove_device(group, bob.device_id()).await.unwrap();
    // Written after the removal: sealed in epoch 1 once Alice moved to it.
    let after = alice
        .enqueue(group, b"after the removal".to_vec())
        .await
        .unwrap();
    relay.restart().await.unwrap();

    // Every queued record is acked (under the id it was sealed again with) and reaches
    // Carol, decrypted, in order, in epoch 1.
    for blob_id in queued.into_iter().chain([after]) {
        alice.wait_acked(group, blob_id, Some(WAIT)).await.unwrap();
    }
    let (got, other) = receive(&mut carol_events, IN_FLIGHT + 1, WAIT).await;
    let mut expected: Vec<String> = payloads_sent
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    expected.push("after the removal".into());
    assert_eq!(payloads(&got), expected, "{other:?}");
    assert_eq!(carol.status().await.unwrap().groups[0].epoch, 1);

    // Bob learns of his removal and never read one of them: they went out sealed in the
    // new epoch only.
    let seen = events_until(&mut bob_events, WAIT, |e| {
        matches!(e, Event::Removed { .. })
    })
    .await;
    let read = payloads(&seen);
    assert_eq!(read, ["warm"], "{seen:?}");
    alice.shutdown().await;
    bob.shutdown().await;
    carol.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_removals_converge_to_one_epoch_without_either_device() {
    use zerok_client::Event;
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay(dir.path(), "relay").await;
    let (alice, bob, carol, group) = three_devices(dir.path(), vec![relay.addr.clone()]).await;
    let dave = client_with_clock(dir.path(), "dave", Clock::system()).await;
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(dave.join(&token, None).await.unwrap(), group);
    bob.sync_now(group).await.unwrap();
    assert_eq!(bob.devices(group).await.unwrap().len(), 4);
    let mut alice_events = alice.events().unwrap();
    let mut bob_events = bob.events().unwrap();
    let mut carol_events = carol.events().unwrap();
    let mut dave_events = dave.events().unwrap();

    // With the relay down, Alice removes Carol while Bob removes Dave: neither knows of
    // the other's rekey.
    relay.terminate(Duration::from_secs(10)).await.unwrap();
    alice.remove_device(group, carol.device_id()).await.unwrap();
    bob.remove_device(group, dave.device_id()).await.unwrap();
    relay.restart().await.unwrap();

    // Both removals hold: Carol and Dave are out, Alice and Bob end in the same epoch.
    for events in [&mut carol_events, &mut dave_events] {
        events_until(events, WAIT, |e| matches!(e, Event::Removed { .. })).await;
    }
    // The winning rekey wrapped its secret to the device the losing one removed: its
    // author rekeys once more, and both end in epoch 2.
    for events in [&mut alice_events, &mut bob_events] {
        events_until(events, WAIT, |e| {
            matches!(e, Event::EpochChanged { epoch: 2, .. })
        })
        .await;
    }
    for device in [&alice, &bob] {
        assert_eq!(device.status().await.unwrap().groups[0].epoch, 2);
        assert_eq!(device.devices(group).await.unwrap().len(), 2);
    }
    alice
        .push(group, b"alice converged".to_vec())
        .await
        .unwrap();
    bob.push(group, b"bob converged".to_vec()).await.unwrap();
    let (got, other) = receive(&mut bob_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["alice converged"], "{other:?}");
    let (got, other) = receive(&mut alice_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["bob converged"], "{other:?}");
    for removed in [&carol, &dave] {
        assert!(matches!(
            removed.push(group, b"still here?".to_vec()).await,
            Err(ClientError::Removed(_))
        ));
    }
    for client in [alice, bob, carol, dave] {
        client.shutdown().await;
    }
}

/// The statuses' epoch of `group` on `client`.
async fn epoch_of(client: &Client, group: zerok_client::GroupId) -> u32 {
    let status = client.status().await.unwrap();
    status
        .groups
        .iter()
        .find(|g| g.id == group)
        .map(|g| g.epoch)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_phrase_brings_the_group_back_on_a_new_device_with_none_online() {
    use zerok_client::RecoveryError;
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let alice = client_with_clock(dir.path(), "alice", Clock::system()).await;
    let bob = client_with_clock(dir.path(), "bob", Clock::system()).await;
    let group = alice
        .create_group("family", NewSecret::Random, vec![relay.addr.clone()])
        .await
        .unwrap();
    let token = alice.invite(group, Duration::from_secs(600)).await.unwrap();
    assert_eq!(bob.join(&token, None).await.unwrap(), group);
    alice
        .push(group, b"before the export".to_vec())
        .await
        .unwrap();
    let phrase = alice.export_recovery(group, WAIT).await.unwrap();
    assert_eq!(phrase.split(' ').count(), 24, "{}", phrase.as_str());
    alice
        .push(group, b"after the export".to_vec())
        .await
        .unwrap();
    bob.sync_now(group).await.unwrap();
    // The phrase is an entry on every member's roster, added by Alice.
    let entry = bob
        .devices(group)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == "recovery phrase")
        .unwrap();
    assert_eq!(entry.added_by, alice.device_id());
    let alice_id = alice.device_id();
    alice.shutdown().await;
    bob.shutdown().await;
    std::fs::remove_dir_all(dir.path().join("alice")).unwrap();

    // Every device is offline; a new one recovers with the phrase alone.
    let nora = client_with_clock(dir.path(), "nora", Clock::system()).await;
    let mut nora_events = nora.events().unwrap();
    // Mistyped, or a phrase of no group: clear errors, nothing joined.
    let mut words: Vec<&str> = phrase.split(' ').collect();
    words.swap(0, 1);
    let wrong = nora
        .recover(&words.join(" "), vec![relay.addr.clone()], WAIT)
        .await;
    assert!(
        matches!(
            wrong,
            Err(ClientError::Recovery(RecoveryError::BadPhrase(_)))
        ) || words[0] == words[1],
        "{wrong:?}"
    );
    let unknown = zerok_actors::crypto::recovery::RecoverySecret::random(
        &mut zerok_actors::rng::Rng::system(),
    )
    .phrase();
    assert!(matches!(
        nora.recover(&unknown, vec![relay.addr.clone()], REFUSED_WAIT)
            .await,
        Err(ClientError::Recovery(RecoveryError::NothingFound(_)))
    ));
    assert!(nora.groups().await.unwrap().is_empty());

    assert_eq!(
        nora.recover(&phrase, vec![relay.addr.clone()], WAIT)
            .await
            .unwrap(),
        group
    );
    // A new device: its own key (not Alice's, not the phrase entry's), added by the entry.
    let listed = nora.devices(group).await.unwrap();
    let me = listed.iter().find(|d| d.is_self).unwrap();
    assert_ne!(me.device, alice_id);
    assert_ne!(me.device, entry.device);
    assert_eq!(me.added_by, entry.device);
    // It reads the group's history from the relay, and writes.
    let (got, other) = receive(&mut nora_events, 2, WAIT).await;
    assert_eq!(
        payloads(&got),
        ["before the export", "after the export"],
        "{other:?}"
    );
    nora.push(group, b"from nora".to_vec()).await.unwrap();
    assert!(matches!(
        nora.recover(&phrase, vec![relay.addr.clone()], WAIT).await,
        Err(ClientError::Recovery(RecoveryError::AlreadyInGroup(_)))
    ));

    // Bob comes back: Nora is on his roster and her record is delivered to him.
    let bob = client_with_clock(dir.path(), "bob", Clock::system()).await;
    let mut bob_events = bob.events().unwrap();
    let (got, other) = receive(&mut bob_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["from nora"], "{other:?}");
    // Her self-add is a roster change his app hears of (to refresh its device list).
    assert!(
        other.iter().any(|e| matches!(
            e,
            zerok_client::Event::RosterChanged { sender, .. } if *sender == me.device
        )),
        "{other:?}"
    );
    assert!(
        !other
            .iter()
            .any(|e| matches!(e, zerok_client::Event::UnknownSender { .. })),
        "{other:?}"
    );
    assert!(
        bob.devices(group)
            .await
            .unwrap()
            .iter()
            .any(|d| d.device == me.device && d.name == "nora")
    );
    nora.shutdown().await;
    bob.shutdown().await;
}

/// The (stopped) device `carol` posts a snapshot for `phrase` of a made-up epoch 7 that
/// lists her as its only member, in the phrase's mailbox on `relay`.
async fn forge_snapshot(
    dir: &std::path::Path,
    relay: &RelayProcess,
    phrase: &str,
    group: zerok_client::GroupId,
) {
    use zerok_actors::crypto::admit::{self, Admission, Kind};
    use zerok_actors::crypto::recovery::{ENTRY_NAME, RecoverySecret};
    use zerok_actors::crypto::roster::{EpochId, Member, SecretBytes};
    use zerok_actors::crypto::wrap::{Purpose, WrapContext, wrap};
    let keys = RecoverySecret::parse(phrase).unwrap().keys();
    let (carol, _) = member_keys(dir, "carol");
    let mut rng = zerok_actors::rng::Rng::system();
    let member = |device, wrap_key, name: &str, recovery| Member {
        device,
        wrap_key,
        name: name.to_owned(),
        added_by: carol.device_id(),
        added_at_ms: 0,
        via: None,
        recovery,
    };
    let epoch = EpochId {
        number: Epoch(7),
        origin: [7; 32],
    };
    let context = WrapContext {
        purpose: Purpose::Admission,
        group: group.0,
        written_in: epoch,
        opens: epoch.number,
        author: carol.device_id(),
        recipient: keys.entry_id(),
    };
    let carol_entry = member(carol.device_id(), [1; 32], "carol", None);
    let forged = Admission {
        joiner: keys.entry_id(),
        group: group.0,
        group_name: "family".into(),
        relays: vec![relay.addr.to_string()],
        epoch,
        wrapped: wrap(&keys.wrap().public(), &context, &[0x66; 32], &mut rng).unwrap(),
        founder: carol_entry.clone(),
        members: vec![
            carol_entry,
            member(
                keys.entry_id(),
                keys.wrap().public(),
                ENTRY_NAME,
                Some(SecretBytes(*keys.mailbox_secret())),
            ),
        ],
        removed: Vec::new(),
    };
    let sealed = admit::seal(&keys.mailbox(), Kind::Admission, &carol, &forged, &mut rng).unwrap();
    push_raw(relay, keys.mailbox().signer(), sealed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phrase_follows_rekeys_and_removing_its_entry_revokes_it() {
    use zerok_client::Event;
    const WAIT: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path(), "relay").await;
    let (alice, bob, carol, group) = three_devices(dir.path(), vec![relay.addr.clone()]).await;
    let phrase = alice.export_recovery(group, WAIT).await.unwrap();
    bob.sync_now(group).await.unwrap();
    // Carol is removed: the group moves to epoch 1, and the phrase with it (the rekey wraps
    // its secret to the phrase's entry; members post a snapshot of the new epoch).
    let mut bob_events = bob.events().unwrap();
    alice.remove_device(group, carol.device_id()).await.unwrap();
    events_until(&mut bob_events, WAIT, |e| {
        matches!(e, Event::EpochChanged { epoch: 1, .. })
    })
    .await;
    carol.shutdown().await;
    // Carol, removed, knew the phrase's mailbox (its secret is in the roster entry): she
    // posts a snapshot of an epoch of her own making, a higher one. The members' snapshots
    // say she was removed, so a recovering device does not take hers.
    forge_snapshot(dir.path(), &relay, &phrase, group).await;
    let nora = client_with_clock(dir.path(), "nora", Clock::system()).await;
    nora.recover(&phrase, vec![relay.addr.clone()], WAIT)
        .await
        .unwrap();
    assert_eq!(
        epoch_of(&nora, group).await,
        1,
        "recovered into the new epoch"
    );
    nora.push(group, b"nora in epoch 1".to_vec()).await.unwrap();
    let (got, other) = receive(&mut bob_events, 1, WAIT).await;
    assert_eq!(payloads(&got), ["nora in epoch 1"], "{other:?}");

    // Bob removes the phrase's entry: a rekey to epoch 2 that does not wrap to it.
    let entry = bob
        .devices(group)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == "recovery phrase")
        .unwrap();
    let mut alice_events = alice.events().unwrap();
    bob.remove_device(group, entry.device).await.unwrap();
    events_until(&mut alice_events, WAIT, |e| {
        matches!(e, Event::EpochChanged { epoch: 2, .. })
    })
    .await;
    bob.push(group, b"after the revocation".to_vec())
        .await
        .unwrap();
    // The phrase still opens the old snapshots on the relay (epoch 1), but a device
    // recovered with it now is not in epoch 2, and is told so: it reads nothing written
    // there, and what it wrote is reported to the members, never delivered.
    let mallory = client_with_clock(dir.path(), "mallory", Clock::system()).await;
    let mut mallory_events = mallory.events().unwrap();
    assert!(matches!(
        mallory
            .recover(&phrase, vec![relay.addr.clone()], WAIT)
            .await,
        Err(ClientError::Recovery(zerok_client::RecoveryError::Outdated))
    ));
    // Left out of the current epoch, it cannot enqueue (refused at once, not held).
    let refused = mallory.enqueue(group, b"from mallory".to_vec()).await;
    assert!(
        matches!(refused, Err(ClientError::NotMember(_))),
        "{refused:?}"
    );
    let (got, _) = receive(&mut mallory_events, 3, Duration::from_secs(5)).await;
    assert!(
        !payloads(&got).contains(&"after the revocation".to_owned()),
        "{got:?}"
    );
    let seen = events_until(
        &mut alice_events,
        WAIT,
        |e| matches!(e, Event::UnknownSender { sender, .. } if *sender == mallory.device_id()),
    )
    .await;
    assert!(
        !payloads(&seen).contains(&"from mallory".to_owned()),
        "{seen:?}"
    );
    assert!(
        alice
            .devices(group)
            .await
            .unwrap()
            .iter()
            .all(|d| d.device != mallory.device_id() && d.name != "recovery phrase")
    );
    for client in [alice, bob, nora, mallory] {
        client.shutdown().await;
    }
}

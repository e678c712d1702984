//! The adversarial relay really misbehaves, over iroh QUIC, as a raw protocol client sees it.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use zerok_actors::crypto::join::sign_join;
use zerok_actors::crypto::keys::{EpochKeys, GroupSecret};
use zerok_actors::link::iroh::{IrohConfig, IrohNode};
use zerok_actors::rng::Rng;
use zerok_harness::evil_relay::{EvilRelay, Misbehaviour};
use zerok_harness::proto::ProtoClient;
use zerok_messages::{BlobId, Cursor, Epoch, ErrorCode, Frame, Item, MailboxId, Signature64};

const EVENT_WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

fn group_keys(n: u8) -> EpochKeys {
    GroupSecret::from_bytes([n; 32]).epoch_keys(Epoch(0))
}

async fn client(relay: &EvilRelay, seed: u64) -> ProtoClient {
    let secret = Rng::seeded(seed).bytes();
    let node = IrohNode::bind(IrohConfig::new(secret, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    ProtoClient::connect(&node.dialer(), &relay.addr())
        .await
        .unwrap()
        .owning(node)
}

fn record(i: usize) -> Bytes {
    Bytes::from(format!("sealed record number {i:03} ......").into_bytes())
}

/// A joined client that pushed `n` records; returns them with their acked cursors.
async fn pushed(relay: &EvilRelay, n: usize) -> (ProtoClient, MailboxId, Vec<(Cursor, Bytes)>) {
    let keys = group_keys(1);
    let client = client(relay, 100).await;
    client.join(&keys).await.unwrap();
    let mailbox = keys.mailbox_id();
    let mut acked = Vec::new();
    for i in 0..n {
        let (cursor, duplicate) = client.push(mailbox, record(i)).await.unwrap();
        assert!(!duplicate);
        acked.push((cursor, record(i)));
    }
    assert_eq!(relay.stored(mailbox), n);
    (client, mailbox, acked)
}

fn cursors(items: &[Item]) -> Vec<Cursor> {
    items.iter().map(|item| item.cursor).collect()
}

fn is_intact(item: &Item) -> bool {
    BlobId::of_ciphertext(&item.ciphertext) == item.blob_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_run_serves_exactly_what_was_pushed() {
    let relay = EvilRelay::start(1, Misbehaviour::default()).await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    assert_eq!(client.relay_id, relay.relay_id());
    assert!(acked.windows(2).all(|pair| pair[0].0 < pair[1].0));

    let items = client.pull_all(mailbox, Cursor::START).await.unwrap();
    assert_eq!(items.len(), 10);
    for (item, (cursor, ciphertext)) in items.iter().zip(&acked) {
        assert_eq!(item.cursor, *cursor);
        assert_eq!(&item.ciphertext, ciphertext);
        assert_eq!(item.blob_id, BlobId::of_ciphertext(ciphertext));
    }

    // Pages: count-limited, `next` and `has_more` lead through the rest.
    let (page, next, has_more) = client
        .pull(mailbox, Cursor::START, 4, u32::MAX)
        .await
        .unwrap();
    assert_eq!(cursors(&page), cursors(&items[..4]));
    assert_eq!((next, has_more), (items[3].cursor, true));
    let (page, next, has_more) = client.pull(mailbox, next, 100, u32::MAX).await.unwrap();
    assert_eq!(cursors(&page), cursors(&items[4..]));
    assert_eq!((next, has_more), (items[9].cursor, false));
    let (page, next2, has_more) = client.pull(mailbox, next, 100, u32::MAX).await.unwrap();
    assert!(page.is_empty() && !has_more && next2 == next);

    // Idempotent on the blob id; a wrong blob id is refused; keep-alive works.
    assert_eq!(
        client.push(mailbox, record(3)).await.unwrap(),
        (acked[3].0, true)
    );
    let err = client
        .push_as(mailbox, BlobId([7; 32]), record(99), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    assert_eq!(relay.stored(mailbox), 10);
    client.ping().await.unwrap();

    // A second connection joins and sees the same mailbox.
    let other = client_joined(&relay, 200, 1).await;
    assert_eq!(other.pull_all(mailbox, Cursor::START).await.unwrap(), items);
    relay.stop().await;
}

async fn client_joined(relay: &EvilRelay, seed: u64, group: u8) -> ProtoClient {
    let client = client(relay, seed).await;
    client.join(&group_keys(group)).await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_items_are_missing_from_pulls() {
    let relay = EvilRelay::start(2, Misbehaviour::default()).await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    relay.set_misbehaviour(Misbehaviour {
        drop_every: 3,
        ..Misbehaviour::default()
    });
    let (items, next, has_more) = client
        .pull(mailbox, Cursor::START, 100, u32::MAX)
        .await
        .unwrap();
    let expected: Vec<Cursor> = acked
        .iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % 3 != 0)
        .map(|(_, (cursor, _))| *cursor)
        .collect();
    assert_eq!(cursors(&items), expected);
    assert_eq!(items.len(), 7);
    assert!(items.iter().all(is_intact));
    // `next` still claims everything up to the last item was served.
    assert_eq!((next, has_more), (acked[9].0, false));
    assert_eq!(relay.stored(mailbox), 10);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pages_claim_more_than_they_carry() {
    let relay = EvilRelay::start(10, Misbehaviour::default()).await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    relay.set_misbehaviour(Misbehaviour {
        page_items_max: 3,
        forge_next_by: 1000,
        ..Misbehaviour::default()
    });
    let (items, next, has_more) = client
        .pull(mailbox, Cursor::START, 100, u32::MAX)
        .await
        .unwrap();
    let first_three: Vec<Cursor> = acked[..3].iter().map(|(cursor, _)| *cursor).collect();
    assert_eq!(cursors(&items), first_three);
    assert_eq!((next, has_more), (Cursor(acked[2].0.0 + 1000), true));
    // Past the end: an empty page that still claims progress.
    let (items, next, has_more) = client
        .pull(mailbox, acked[9].0, 100, u32::MAX)
        .await
        .unwrap();
    assert!(items.is_empty());
    assert_eq!((next, has_more), (Cursor(acked[9].0.0 + 1000), false));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_items_come_twice() {
    let relay = EvilRelay::start(3, Misbehaviour::default()).await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    relay.set_misbehaviour(Misbehaviour {
        duplicate: true,
        ..Misbehaviour::default()
    });
    let items = client.pull_all(mailbox, Cursor::START).await.unwrap();
    assert_eq!(items.len(), 20);
    for (pair, (cursor, ciphertext)) in items.chunks(2).zip(&acked) {
        assert_eq!(pair[0], pair[1]);
        assert_eq!(pair[0].cursor, *cursor);
        assert_eq!(&pair[0].ciphertext, ciphertext);
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_pages_come_backwards() {
    let relay = EvilRelay::start(
        4,
        Misbehaviour {
            reorder: true,
            ..Misbehaviour::default()
        },
    )
    .await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    let (items, next, has_more) = client
        .pull(mailbox, Cursor::START, 100, u32::MAX)
        .await
        .unwrap();
    assert_eq!(items.len(), 10);
    assert!(items.windows(2).all(|pair| pair[0].cursor > pair[1].cursor));
    for (item, (cursor, ciphertext)) in items.iter().rev().zip(&acked) {
        assert_eq!((item.cursor, &item.ciphertext), (*cursor, ciphertext));
    }
    assert_eq!((next, has_more), (acked[9].0, false));

    // Per page: two pages of five, each backwards.
    let (first, next, has_more) = client
        .pull(mailbox, Cursor::START, 5, u32::MAX)
        .await
        .unwrap();
    assert!(has_more);
    assert_eq!(first[0].cursor, acked[4].0);
    assert_eq!(next, acked[4].0);
    let (second, _, has_more) = client.pull(mailbox, next, 5, u32::MAX).await.unwrap();
    assert!(!has_more);
    assert_eq!(second[0].cursor, acked[9].0);
    assert_eq!(second[4].cursor, acked[5].0);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_serve_old_bytes_under_new_cursors() {
    let relay = EvilRelay::start(
        5,
        Misbehaviour {
            replay: true,
            ..Misbehaviour::default()
        },
    )
    .await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    let items = client.pull_all(mailbox, Cursor::START).await.unwrap();
    let honest: HashSet<Cursor> = acked.iter().map(|(cursor, _)| *cursor).collect();
    // Cursors still go up, so a cursor-only client cannot tell.
    assert!(items.windows(2).all(|pair| pair[0].cursor < pair[1].cursor));
    let mut first_seen: HashMap<BlobId, Cursor> = HashMap::new();
    let mut replays = 0;
    for item in &items {
        assert!(is_intact(item));
        match first_seen.get(&item.blob_id) {
            Some(original) => {
                replays += 1;
                assert!(item.cursor > *original);
                assert!(!honest.contains(&item.cursor), "a fresh cursor");
            }
            None => {
                assert!(honest.contains(&item.cursor));
                first_seen.insert(item.blob_id, item.cursor);
            }
        }
    }
    assert_eq!(first_seen.len(), 10);
    assert_eq!(
        replays, 9,
        "every item but the first is followed by a replay"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_items_keep_their_blob_id() {
    let relay = EvilRelay::start(6, Misbehaviour::default()).await;
    let (client, mailbox, acked) = pushed(&relay, 10).await;
    relay.set_misbehaviour(Misbehaviour {
        flip_every: 2,
        ..Misbehaviour::default()
    });
    let items = client.pull_all(mailbox, Cursor::START).await.unwrap();
    assert_eq!(items.len(), 10);
    for (i, (item, (cursor, original))) in items.iter().zip(&acked).enumerate() {
        assert_eq!(item.cursor, *cursor);
        assert_eq!(item.blob_id, BlobId::of_ciphertext(original));
        if (i + 1) % 2 == 0 {
            assert_ne!(BlobId::of_ciphertext(&item.ciphertext), item.blob_id);
            assert_eq!(item.ciphertext.len(), original.len());
            let differing = item
                .ciphertext
                .iter()
                .zip(original.iter())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 1);
        } else {
            assert!(is_intact(item));
            assert_eq!(&item.ciphertext, original);
        }
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_proofs_and_unjoined_mailboxes_are_refused() {
    let relay = EvilRelay::start(7, Misbehaviour::default()).await;
    let client = client(&relay, 300).await;
    let keys = group_keys(2);
    let mailbox = keys.mailbox_id();
    let unauthorized = Some(ErrorCode::Unauthorized);

    let garbage = client.join_with(&keys, Signature64([0; 64])).await;
    assert_eq!(garbage.unwrap_err().code(), unauthorized);
    let other_nonce = sign_join(&keys, &client.relay_id, &client.device_id, &[9; 32]);
    let replayed = client.join_with(&keys, other_nonce).await;
    assert_eq!(replayed.unwrap_err().code(), unauthorized);
    let other_device = sign_join(&keys, &client.relay_id, &relay.relay_id(), &client.nonce);
    let stolen = client.join_with(&keys, other_device).await;
    assert_eq!(stolen.unwrap_err().code(), unauthorized);

    let push = client.push(mailbox, record(0)).await;
    assert_eq!(push.unwrap_err().code(), unauthorized);
    let pull = client.pull(mailbox, Cursor::START, 10, 10).await;
    assert_eq!(pull.unwrap_err().code(), unauthorized);
    let subscribe = client.subscribe(mailbox, Cursor::START).await;
    assert_eq!(subscribe.unwrap_err().code(), unauthorized);
    assert_eq!(relay.stored(mailbox), 0);

    // The real proof works, for its own mailbox only.
    assert_eq!(client.join(&keys).await.unwrap(), Cursor::START);
    client.push(mailbox, record(0)).await.unwrap();
    let elsewhere = client.push(group_keys(3).mailbox_id(), record(0)).await;
    assert_eq!(elsewhere.unwrap_err().code(), unauthorized);
    assert_eq!(relay.stored(mailbox), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_frames_are_answered_with_bad_request() {
    let relay = EvilRelay::start(8, Misbehaviour::default()).await;
    let mut client = client(&relay, 400).await;
    client
        .send_raw(Bytes::from_static(b"\xff\x00 not cbor"))
        .await
        .unwrap();
    match client.next_event(EVENT_WAIT).await {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected an error frame, got {other:?}"),
    }
    client.ping().await.unwrap();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_deliveries_misbehave_too() {
    let relay = EvilRelay::start(9, Misbehaviour::default()).await;
    let (pusher, mailbox, acked) = pushed(&relay, 2).await;
    let mut subscriber = client_joined(&relay, 500, 1).await;

    // Subscribed from the start: told to catch up on the two stored items.
    let latest = subscriber.subscribe(mailbox, Cursor::START).await.unwrap();
    assert_eq!(latest, acked[1].0);
    match subscriber.next_event(EVENT_WAIT).await {
        Some(Frame::Notify {
            mailbox: notified,
            latest: notified_latest,
        }) => assert_eq!((notified, notified_latest), (mailbox, latest)),
        other => panic!("expected a notify, got {other:?}"),
    }

    relay.set_misbehaviour(Misbehaviour {
        drop_every: 2,
        duplicate: true,
        flip_every: 3,
        ..Misbehaviour::default()
    });
    let mut live = Vec::new();
    for i in 10..16 {
        live.push(pusher.push(mailbox, record(i)).await.unwrap().0);
    }
    // Served count 1..=6: 2, 4, 6 dropped; 3 flipped; each survivor twice.
    let mut delivered = Vec::new();
    while delivered.len() < 6 {
        match subscriber.next_event(EVENT_WAIT).await {
            Some(Frame::Deliver {
                mailbox: target,
                item,
            }) => {
                assert_eq!(target, mailbox);
                delivered.push(item);
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert_eq!(
        cursors(&delivered),
        [live[0], live[0], live[2], live[2], live[4], live[4]]
    );
    assert!(is_intact(&delivered[0]) && is_intact(&delivered[1]));
    assert!(!is_intact(&delivered[2]) && !is_intact(&delivered[3]));
    assert_eq!(delivered[2].blob_id, BlobId::of_ciphertext(&record(12)));
    assert!(is_intact(&delivered[4]) && is_intact(&delivered[5]));
    assert!(subscriber.next_event(QUIET).await.is_none());

    // Replays go live as well: the next delivery is followed by an older item.
    relay.set_misbehaviour(Misbehaviour {
        replay: true,
        ..Misbehaviour::default()
    });
    let cursor = pusher.push(mailbox, record(20)).await.unwrap().0;
    let mut frames = Vec::new();
    for _ in 0..2 {
        match subscriber.next_event(EVENT_WAIT).await {
            Some(Frame::Deliver { item, .. }) => frames.push(item),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert_eq!(frames[0].cursor, cursor);
    assert!(frames[1].cursor > cursor);
    assert_eq!(frames[1].blob_id, delivered[4].blob_id);
    assert_eq!(frames[1].ciphertext, delivered[4].ciphertext);

    // The honest pusher is not subscribed and gets no deliveries.
    let mut pusher = pusher;
    assert!(pusher.next_event(QUIET).await.is_none());
    assert_eq!(relay.stored(mailbox), 9);
    relay.stop().await;
}

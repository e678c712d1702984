//! RelayConnection against a relay that completes `Hello` and `Join`, then stops reading
//! (actor tier: in-memory links, paused time, a probe for the coordinator).
//!
//! The relay keeps talking (a `Notify` every few seconds) so that "no frame for a while"
//! cannot be what gives it away: only unanswered requests and a full send queue can.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use zerok_actors::client::relay_connection::{
    DEAD_AFTER, PING_EVERY, RelayConnActor, RelayConnArgs,
};
use zerok_actors::crypto::keys::GroupSecret;
use zerok_actors::fault::FaultPlan;
use zerok_actors::link::{Link, MemoryNetwork};
use zerok_actors::rng::Rng;
use zerok_client::GroupId;
use zerok_harness::memory_relay::default_limits;
use zerok_messages::client::{ConnGroup, CoordMsg, RelayConnMsg, RelayEvent};
use zerok_messages::wire::PROTOCOL_VERSION;
use zerok_messages::{BlobId, Cursor, DeviceId, Epoch, Frame, MailboxId, RelayAddr, codec};

const RELAY: DeviceId = DeviceId([7; 32]);
const CLIENT: DeviceId = DeviceId([1; 32]);
/// How often the deaf relay says something, well inside `DEAD_AFTER`.
const CHATTER_EVERY: Duration = Duration::from_secs(5);

/// Forwards the connection's events to the test.
struct Probe;

impl Actor for Probe {
    type Msg = CoordMsg;
    type State = mpsc::UnboundedSender<RelayEvent>;
    type Arguments = mpsc::UnboundedSender<RelayEvent>;

    async fn pre_start(
        &self,
        _myself: ActorRef<CoordMsg>,
        events: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(events)
    }

    async fn handle(
        &self,
        _myself: ActorRef<CoordMsg>,
        message: CoordMsg,
        events: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let CoordMsg::Relay(event) = message {
            let _ = events.send(event);
        }
        Ok(())
    }
}

fn encode(frame: &Frame) -> Bytes {
    Bytes::from(codec::encode(frame).unwrap())
}

/// Answer `Hello` and the `Join`, then never read again; chatter until the client leaves.
async fn deaf_after_join(link: Link, joins: mpsc::UnboundedSender<()>) {
    let (_, sender, mut receiver) = link.into_parts();
    let hello = receiver.recv().await.unwrap().unwrap();
    assert!(matches!(codec::decode(&hello), Ok(Frame::Hello { .. })));
    sender
        .send(encode(&Frame::Welcome {
            version: PROTOCOL_VERSION,
            relay_id: RELAY,
            nonce: [0; 32],
            limits: default_limits(),
        }))
        .await
        .unwrap();
    let Ok(Frame::Join {
        req, mailbox_key, ..
    }) = codec::decode(&receiver.recv().await.unwrap().unwrap())
    else {
        panic!("expected a join");
    };
    sender
        .send(encode(&Frame::Joined {
            req,
            mailbox: mailbox_key.mailbox_id(),
            latest: Cursor::START,
        }))
        .await
        .unwrap();
    let _ = joins.send(());
    // Deaf from here on; `receiver` stays open so the client's frames pile up.
    let chatter = Frame::Notify {
        mailbox: MailboxId([9; 32]),
        latest: Cursor(1),
    };
    while sender.send(encode(&chatter)).await.is_ok() {
        tokio::time::sleep(CHATTER_EVERY).await;
    }
    drop(receiver);
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<RelayEvent>,
    within: Duration,
    mut wanted: impl FnMut(&RelayEvent) -> bool,
) -> RelayEvent {
    tokio::time::timeout(within, async {
        loop {
            let event = events.recv().await.unwrap();
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
    .expect("the event came in time")
}

/// A RelayConnection to `RELAY` on `network` serving one group, its events forwarded by a
/// probe standing in for the coordinator.
async fn connection(
    network: &MemoryNetwork,
    receive: bool,
) -> (
    ActorRef<RelayConnMsg>,
    GroupId,
    mpsc::UnboundedReceiver<RelayEvent>,
) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (probe, _) = Actor::spawn(None, Probe, events_tx).await.unwrap();
    let keys = GroupSecret::from_bytes([3; 32]).epoch_keys(Epoch(0));
    let group = GroupId(keys.mailbox_id());
    let (conn, _) = Actor::spawn(
        None,
        RelayConnActor,
        RelayConnArgs {
            relay: RelayAddr {
                id: RELAY,
                addrs: Vec::new(),
            },
            dialer: Arc::new(network.dialer(CLIENT)),
            groups: vec![ConnGroup {
                group,
                mailbox: keys.mailbox_id(),
                mailbox_seed: keys.mailbox_signer().seed(),
                cursor: 0,
                admission: None,
                always_receive: false,
            }],
            receive,
            coordinator: probe,
            rng: Rng::seeded(1),
            faults: FaultPlan::none(),
        },
    )
    .await
    .unwrap();
    (conn, group, events)
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_stops_reading_cannot_wedge_the_connection() {
    let network = MemoryNetwork::new();
    let mut listener = network.listen(RELAY);
    let (joins_tx, mut joins) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(link) = listener.accept().await {
            tokio::spawn(deaf_after_join(link, joins_tx.clone()));
        }
    });
    let (conn, group, mut events) = connection(&network, false).await;

    next_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, RelayEvent::Joined { .. })
    })
    .await;
    joins.recv().await.unwrap();
    conn.cast(RelayConnMsg::Resend {
        group,
        entries: Vec::new(),
    })
    .unwrap();
    // 64 MiB of pushes: far more than the link's queue and the connection's send queue hold.
    let ciphertext = Bytes::from(vec![0u8; 256 * 1024]);
    for seq in 1..=256 {
        conn.cast(RelayConnMsg::Push {
            group,
            seq,
            blob_id: BlobId::of_ciphertext(&ciphertext),
            ciphertext: ciphertext.clone(),
        })
        .unwrap();
    }

    // The actor still answers (a wedged one never would: the call times out).
    let other = GroupId(MailboxId([5; 32]));
    let answer = ractor::call_t!(
        conn,
        |reply| RelayConnMsg::SyncNow {
            group: other,
            reply
        },
        1_000
    );
    assert!(
        matches!(
            answer,
            Ok(Err(zerok_messages::client::SyncError::NotServed))
        ),
        "{answer:?}"
    );

    // Keep-alive still runs: its unanswered ping drops the link, and the relay is redialled.
    let down = next_event(&mut events, DEAD_AFTER + 3 * PING_EVERY, |e| {
        matches!(e, RelayEvent::Down { .. })
    })
    .await;
    let RelayEvent::Down { reason, .. } = down else {
        unreachable!()
    };
    assert_eq!(reason, "relay stopped answering");
    tokio::time::timeout(Duration::from_secs(10), joins.recv())
        .await
        .expect("redialled and joined again")
        .unwrap();
    conn.stop(None);
}

/// A relay that refuses the first `Join`, the first `Subscribe` and the first `Pull` for a
/// moment (`unavailable`, `retry_after_ms`, as a relay whose router restarts or whose frame
/// budget is spent does), then serves one item. Reports each request it sees.
async fn busy_for_a_moment(link: Link, seen: mpsc::UnboundedSender<&'static str>) {
    let (_, sender, mut receiver) = link.into_parts();
    let hello = receiver.recv().await.unwrap().unwrap();
    assert!(matches!(codec::decode(&hello), Ok(Frame::Hello { .. })));
    sender
        .send(encode(&Frame::Welcome {
            version: PROTOCOL_VERSION,
            relay_id: RELAY,
            nonce: [0; 32],
            limits: default_limits(),
        }))
        .await
        .unwrap();
    let busy = |req| Frame::Error {
        req: Some(req),
        code: zerok_messages::ErrorCode::Unavailable,
        message: "busy".into(),
        retry_after_ms: Some(1_000),
    };
    let (mut joins, mut subscribes, mut pulls) = (0, 0, 0);
    let item = zerok_messages::Item {
        cursor: Cursor(1),
        blob_id: BlobId::of_ciphertext(b"x"),
        ciphertext: Bytes::from_static(b"x"),
        stored_at_ms: 0,
    };
    while let Ok(Some(body)) = receiver.recv().await {
        let reply = match codec::decode(&body).unwrap() {
            Frame::Join {
                req, mailbox_key, ..
            } => {
                joins += 1;
                let _ = seen.send("join");
                if joins == 1 {
                    busy(req)
                } else {
                    Frame::Joined {
                        req,
                        mailbox: mailbox_key.mailbox_id(),
                        latest: Cursor(1),
                    }
                }
            }
            Frame::Subscribe { req, mailbox, .. } => {
                subscribes += 1;
                let _ = seen.send("subscribe");
                if subscribes == 1 {
                    busy(req)
                } else {
                    sender
                        .send(encode(&Frame::Subscribed {
                            req,
                            mailbox,
                            latest: Cursor(1),
                        }))
                        .await
                        .unwrap();
                    Frame::Notify {
                        mailbox,
                        latest: Cursor(1),
                    }
                }
            }
            Frame::Pull { req, .. } => {
                pulls += 1;
                let _ = seen.send("pull");
                if pulls == 1 {
                    busy(req)
                } else {
                    Frame::PullPage {
                        req,
                        items: vec![item.clone()],
                        next: Cursor(1),
                        has_more: false,
                    }
                }
            }
            Frame::Ping { req } => Frame::Pong { req },
            _ => continue,
        };
        if sender.send(encode(&reply)).await.is_err() {
            return;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn requests_refused_for_a_moment_are_sent_again_after_the_hint() {
    let network = MemoryNetwork::new();
    let mut listener = network.listen(RELAY);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(link) = listener.accept().await {
            tokio::spawn(busy_for_a_moment(link, seen_tx.clone()));
        }
    });
    let (conn, _, mut events) = connection(&network, true).await;

    // The item arrives on the same connection: each refused request was sent again.
    let items = next_event(&mut events, Duration::from_secs(30), |e| {
        matches!(e, RelayEvent::Items { .. } | RelayEvent::Down { .. })
    })
    .await;
    assert!(
        matches!(&items, RelayEvent::Items { items, upto: 1, .. } if items.len() == 1),
        "{items:?}"
    );
    let mut requests = Vec::new();
    while let Ok(request) = seen.try_recv() {
        requests.push(request);
    }
    assert_eq!(
        requests,
        ["join", "join", "subscribe", "subscribe", "pull", "pull"]
    );
    conn.stop(None);
}

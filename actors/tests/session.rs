//! Actor tests of the relay Session over the in-memory link, with real routers and a probe
//! store: handshake, join proofs, authorization, push acks, live delivery, and hostile input.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::ProbeStore;
use ractor::{Actor, ActorRef};
use std::time::Duration;
use zerok_actors::crypto::join::sign_join;
use zerok_actors::crypto::keys::GroupSecret;
use zerok_actors::fault::FaultPlan;
use zerok_actors::link::{Dialer, Link, MemoryNetwork};
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_actors::relay::rate_limit::{RateLimitConfig, RelayLimiters};
use zerok_actors::relay::routers_supervisor::{RoutersSupervisorActor, RoutersSupervisorArgs};
use zerok_actors::relay::session::{SessionActor, SessionArgs};
use zerok_actors::rng::Rng;
use zerok_actors::shared_ref::SharedRef;
use zerok_actors::supervision::RestartPolicy;
use zerok_messages::relay::RoutersMsg;
use zerok_messages::wire::ByeReason;
use zerok_messages::{
    BlobId, Cursor, DeviceId, Epoch, ErrorCode, Frame, Limits, RelayAddr, ReqId, codec,
};

const RELAY: DeviceId = DeviceId([0xAA; 32]);

fn limits() -> Limits {
    Limits {
        frame_bytes_max: zerok_messages::wire::FRAME_BYTES_MAX as u32,
        blob_bytes_max: 4096,
        mailbox_quota_bytes: 1 << 20,
        ttl_default_secs: 60,
        ttl_max_secs: 600,
        inflight_max: 16,
        pull_items_max: 100,
        pull_bytes_max: 512 * 1024,
    }
}

struct Relay {
    network: MemoryNetwork,
    routers: ActorRef<RoutersMsg>,
    store: SharedRef<zerok_messages::relay::BlobStoreMsg>,
    next_subscriber: u64,
}

impl Relay {
    async fn start() -> Relay {
        let (store, _) = Actor::spawn(None, ProbeStore, ()).await.unwrap();
        let store = SharedRef::new(store);
        let (routers, _) = Actor::spawn(
            None,
            RoutersSupervisorActor,
            RoutersSupervisorArgs {
                store: store.clone(),
                metrics: RelayMetrics::new(),
                router_restart: RestartPolicy::STANDARD,
                rng: Rng::seeded(1),
                faults: FaultPlan::none(),
            },
        )
        .await
        .unwrap();
        Relay {
            network: MemoryNetwork::new(),
            routers,
            store,
            next_subscriber: 0,
        }
    }

    /// Connect a client as `device`; the relay side runs a real Session.
    async fn connect(&mut self, device: DeviceId, nonce: [u8; 32]) -> Client {
        let mut listener = self.network.listen(RELAY);
        let addr = RelayAddr {
            id: RELAY,
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
        };
        let client = self.network.dialer(device).dial(&addr).await.unwrap();
        let Link {
            peer,
            sender,
            receiver,
            ..
        } = listener.accept().await.unwrap();
        self.next_subscriber += 1;
        let (session, _) = Actor::spawn(
            None,
            SessionActor,
            SessionArgs {
                peer,
                sender,
                receiver,
                relay_id: RELAY,
                nonce,
                limits: limits(),
                store: self.store.clone(),
                routers: self.routers.clone(),
                content: None,
                subscriber_id: self.next_subscriber,
                source: None,
                inflight_bytes_max: 16 * 1024 * 1024,
                inflight_bytes_total: None,
                idle_timeout: Duration::from_secs(60),
                limiters: std::sync::Arc::new(RelayLimiters::new(&RateLimitConfig::default())),
                metrics: RelayMetrics::new(),
                admission: zerok_actors::relay::admission::SessionAdmission::unlimited(RELAY),
                faults: FaultPlan::none(),
            },
        )
        .await
        .unwrap();
        Client {
            link: client,
            nonce,
            session,
        }
    }
}

struct Client {
    link: Link,
    nonce: [u8; 32],
    session: ActorRef<zerok_messages::relay::SessionMsg>,
}

impl Client {
    async fn send(&self, frame: Frame) {
        self.link
            .sender
            .send(Bytes::from(codec::encode(&frame).unwrap()))
            .await
            .unwrap();
    }

    async fn send_raw(&self, body: &[u8]) {
        self.link
            .sender
            .send(Bytes::copy_from_slice(body))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Option<Frame> {
        let body = tokio::time::timeout(Duration::from_secs(5), self.link.receiver.recv())
            .await
            .expect("relay answers in time")
            .ok()??;
        Some(codec::decode(&body).unwrap())
    }

    async fn hello(&mut self) {
        self.send(Frame::Hello {
            versions: vec![1],
            client_agent: "test".into(),
        })
        .await;
        match self.recv().await {
            Some(Frame::Welcome {
                version: 1,
                relay_id,
                nonce,
                ..
            }) => {
                assert_eq!(relay_id, RELAY);
                assert_eq!(nonce, self.nonce);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}

fn error_code(frame: Option<Frame>) -> ErrorCode {
    match frame {
        Some(Frame::Error { code, .. }) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn push_frame(req: u64, mailbox: zerok_messages::MailboxId, body: &[u8]) -> Frame {
    Frame::Push {
        req: ReqId(req),
        mailbox,
        blob_id: BlobId::of_ciphertext(body),
        ciphertext: Bytes::copy_from_slice(body),
        ttl_secs: None,
    }
}

#[tokio::test]
async fn join_push_subscribe_and_deliver_between_two_devices() {
    let mut relay = Relay::start().await;
    let keys = GroupSecret::from_bytes([5; 32]).epoch_keys(Epoch(0));
    let mailbox = keys.mailbox_id();
    let (alice_id, bob_id) = (DeviceId([1; 32]), DeviceId([2; 32]));
    let mut alice = relay.connect(alice_id, [11; 32]).await;
    let mut bob = relay.connect(bob_id, [22; 32]).await;
    for (client, id) in [(&mut alice, alice_id), (&mut bob, bob_id)] {
        client.hello().await;
        let proof = sign_join(&keys, &RELAY, &id, &client.nonce);
        client
            .send(Frame::Join {
                req: ReqId(1),
                mailbox_key: keys.mailbox_key(),
                proof,
                admission: None,
            })
            .await;
        assert!(
            matches!(client.recv().await, Some(Frame::Joined { mailbox: m, .. }) if m == mailbox)
        );
    }
    bob.send(Frame::Subscribe {
        req: ReqId(2),
        mailbox,
        after: Cursor(0),
    })
    .await;
    assert!(matches!(
        bob.recv().await,
        Some(Frame::Subscribed {
            latest: Cursor(0),
            ..
        })
    ));
    alice.send(push_frame(3, mailbox, b"sealed-1")).await;
    alice.send(push_frame(4, mailbox, b"sealed-2")).await;
    // Pipelined pushes keep their order: cursors 1 then 2.
    assert!(matches!(
        alice.recv().await,
        Some(Frame::PushAck {
            req: ReqId(3),
            cursor: Cursor(1),
            duplicate: false
        })
    ));
    assert!(matches!(
        alice.recv().await,
        Some(Frame::PushAck {
            req: ReqId(4),
            cursor: Cursor(2),
            ..
        })
    ));
    for (cursor, body) in [(1, b"sealed-1"), (2, b"sealed-2")] {
        match bob.recv().await {
            Some(Frame::Deliver { item, .. }) => {
                assert_eq!(item.cursor, Cursor(cursor));
                assert_eq!(&item.ciphertext[..], body);
            }
            other => panic!("expected deliver, got {other:?}"),
        }
    }
    bob.send(Frame::Ping { req: ReqId(9) }).await;
    assert_eq!(bob.recv().await, Some(Frame::Pong { req: ReqId(9) }));
}

#[tokio::test]
async fn without_a_valid_join_nothing_is_allowed_and_nothing_changes() {
    let mut relay = Relay::start().await;
    let keys = GroupSecret::from_bytes([5; 32]).epoch_keys(Epoch(0));
    let mailbox = keys.mailbox_id();
    let device = DeviceId([3; 32]);
    let mut mallory = relay.connect(device, [33; 32]).await;
    mallory.hello().await;
    mallory.send(push_frame(1, mailbox, b"evil")).await;
    assert_eq!(error_code(mallory.recv().await), ErrorCode::Unauthorized);
    mallory
        .send(Frame::Pull {
            req: ReqId(2),
            mailbox,
            after: Cursor(0),
            max_items: 10,
            max_bytes: 1000,
        })
        .await;
    assert_eq!(error_code(mallory.recv().await), ErrorCode::Unauthorized);
    mallory
        .send(Frame::Subscribe {
            req: ReqId(3),
            mailbox,
            after: Cursor(0),
        })
        .await;
    assert_eq!(error_code(mallory.recv().await), ErrorCode::Unauthorized);
    // A proof captured from another connection (another nonce) does not work here.
    let replayed = sign_join(&keys, &RELAY, &device, &[44; 32]);
    mallory
        .send(Frame::Join {
            req: ReqId(4),
            mailbox_key: keys.mailbox_key(),
            proof: replayed,
            admission: None,
        })
        .await;
    assert_eq!(error_code(mallory.recv().await), ErrorCode::Unauthorized);
    mallory.send(push_frame(5, mailbox, b"evil")).await;
    assert_eq!(error_code(mallory.recv().await), ErrorCode::Unauthorized);
    // The mailbox is unchanged: nothing was ever appended.
    let router = ractor::call!(relay.routers, |reply| RoutersMsg::GetRouter {
        mailbox,
        reply
    });
    let latest = ractor::call!(router.unwrap().unwrap(), |reply| {
        zerok_messages::relay::GroupRouterMsg::Subscribe {
            subscriber: 999,
            sink: mallory.link.sender.clone(),
            reply,
        }
    })
    .unwrap();
    assert_eq!(latest, Cursor(0));
}

#[tokio::test]
async fn garbage_unknown_and_wrong_version_frames_get_errors_not_crashes() {
    let mut relay = Relay::start().await;
    // Wrong version: unsupported, then the relay says bye and closes.
    let mut old = relay.connect(DeviceId([4; 32]), [1; 32]).await;
    old.send(Frame::Hello {
        versions: vec![0, 2],
        client_agent: String::new(),
    })
    .await;
    assert_eq!(error_code(old.recv().await), ErrorCode::Unsupported);
    assert_eq!(
        old.recv().await,
        Some(Frame::Bye {
            reason: ByeReason::ProtocolViolation
        })
    );
    // After the handshake: garbage and unknown tags are answered, the session lives on.
    let mut client = relay.connect(DeviceId([5; 32]), [2; 32]).await;
    client.hello().await;
    client.send_raw(&[0xff, 0x00, 0x13, 0x37]).await;
    assert_eq!(error_code(client.recv().await), ErrorCode::BadRequest);
    let mut unknown = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Map(vec![(
            ciborium::Value::Text("teleport".into()),
            ciborium::Value::Map(vec![(
                ciborium::Value::Text("req".into()),
                ciborium::Value::Integer(7.into()),
            )]),
        )]),
        &mut unknown,
    )
    .unwrap();
    client.send_raw(&unknown).await;
    match client.recv().await {
        Some(Frame::Error {
            code: ErrorCode::Unsupported,
            req: Some(ReqId(7)),
            ..
        }) => {}
        other => panic!("expected unsupported for req 7, got {other:?}"),
    }
    client.send(Frame::Ping { req: ReqId(8) }).await;
    assert_eq!(client.recv().await, Some(Frame::Pong { req: ReqId(8) }));
    // A flood of bad frames ends the connection instead of costing the relay forever.
    for _ in 0..40 {
        client.send_raw(&[0xff]).await;
    }
    let mut saw_bye = false;
    while let Some(frame) = client.recv().await {
        if matches!(frame, Frame::Bye { .. }) {
            saw_bye = true;
        }
    }
    assert!(
        saw_bye,
        "the relay closes a connection that keeps sending garbage"
    );
}

/// A peer that keeps sending but never reads its answers is disconnected once it holds more
/// than its reply budget unread: the session never waits on the link, so it notices, aborts
/// the link and ends, instead of blocking on a full queue forever.
#[tokio::test]
async fn a_peer_that_never_reads_is_disconnected_not_waited_for() {
    let mut relay = Relay::start().await;
    let mut client = relay.connect(DeviceId([3; 32]), [33; 32]).await;
    client.hello().await;
    // Pings answered by pongs (and, past the rate limit, by errors) that are never read:
    // far more than the link's 1 MiB reply budget.
    let mut sent = 0u64;
    while sent < 40_000 && client.session.get_status() == ractor::ActorStatus::Running {
        let ping = Bytes::from(codec::encode(&Frame::Ping { req: ReqId(sent) }).unwrap());
        if client.link.sender.send(ping).await.is_err() {
            break;
        }
        sent += 1;
        if sent.is_multiple_of(1000) {
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..500 {
        if client.session.get_status() != ractor::ActorStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(
        client.session.get_status(),
        ractor::ActorStatus::Running,
        "the session still runs after {sent} unread replies"
    );
    // What was queued is still there to read, then the link says why it ended.
    let mut replies = 0;
    let ended = loop {
        match client.link.receiver.recv().await {
            Ok(Some(_)) => replies += 1,
            Ok(None) => break None,
            Err(err) => break Some(err),
        }
    };
    assert!(replies > 1000, "{replies} replies queued");
    assert_eq!(
        ended,
        Some(zerok_actors::link::LinkError::Reset(
            "peer is not reading".into()
        ))
    );
}

//! Actor tests of the GroupRouter and RoutersSupervisor under paused time, with a probe
//! BlobStore that commits instantly: live fan-out, the slow-subscriber `Notify` path, a
//! crashed router restarted with its subscribers, and idle routers stopping and coming back
//! on demand.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::ProbeStore;
use ractor::{Actor, ActorRef};
use std::time::Duration;
use zerok_actors::fault::FaultPlan;
use zerok_actors::relay::group_router::IDLE_STOP_AFTER;
use zerok_actors::relay::metrics::RelayMetrics;
use zerok_actors::relay::routers_supervisor::{RoutersSupervisorActor, RoutersSupervisorArgs};
use zerok_actors::rng::Rng;
use zerok_actors::shared_ref::SharedRef;
use zerok_actors::supervision::RestartPolicy;
use zerok_messages::link::{
    FRAME_QUEUE_COST_BYTES, LINK_QUEUE_BYTES, LinkReceiver, LinkSender, channel,
};
use zerok_messages::relay::{GroupRouterMsg, RoutersMsg};
use zerok_messages::{BlobId, Cursor, Frame, MailboxId, codec};

const MAILBOX: MailboxId = MailboxId([9; 32]);

async fn setup() -> (ActorRef<RoutersMsg>, RelayMetrics) {
    let (store, _) = Actor::spawn(None, ProbeStore, ()).await.unwrap();
    let metrics = RelayMetrics::new();
    let (routers, _) = Actor::spawn(
        None,
        RoutersSupervisorActor,
        RoutersSupervisorArgs {
            store: SharedRef::new(store),
            metrics: metrics.clone(),
            router_restart: RestartPolicy::STANDARD,
            rng: Rng::seeded(1),
            faults: FaultPlan::none(),
        },
    )
    .await
    .unwrap();
    (routers, metrics)
}

async fn router(routers: &ActorRef<RoutersMsg>) -> ActorRef<GroupRouterMsg> {
    ractor::call!(routers, |reply| RoutersMsg::GetRouter {
        mailbox: MAILBOX,
        reply
    })
    .unwrap()
    .unwrap()
}

async fn push(router: &ActorRef<GroupRouterMsg>, n: u64) -> Cursor {
    let ciphertext = Bytes::from(n.to_be_bytes().repeat(4));
    let acked = ractor::call!(router, |reply| GroupRouterMsg::Push {
        blob_id: BlobId::of_ciphertext(&ciphertext),
        ciphertext,
        ttl_secs: None,
        reply,
    })
    .unwrap()
    .unwrap();
    acked.cursor
}

/// Subscribe a fresh link (subscriber 1) to `router`: its latest cursor and the link's
/// receiving end.
async fn subscribe(router: &ActorRef<GroupRouterMsg>) -> (Cursor, LinkReceiver) {
    let (sink, rx): (LinkSender, LinkReceiver) = channel();
    let latest = ractor::call!(router, |reply| GroupRouterMsg::Subscribe {
        subscriber: 1,
        sink,
        reply
    })
    .unwrap();
    (latest, rx)
}

async fn next_frame(rx: &mut LinkReceiver) -> Frame {
    let body = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a frame in time")
        .unwrap()
        .unwrap();
    codec::decode(&body).unwrap()
}

#[tokio::test(start_paused = true)]
async fn pushes_are_acked_and_delivered_live_in_cursor_order() {
    let (routers, _) = setup().await;
    let router = router(&routers).await;
    let (latest, mut rx) = subscribe(&router).await;
    assert_eq!(latest, Cursor(0));
    for n in 1..=5u64 {
        assert_eq!(push(&router, n).await, Cursor(n));
    }
    for n in 1..=5u64 {
        match next_frame(&mut rx).await {
            Frame::Deliver { mailbox, item } => {
                assert_eq!(mailbox, MAILBOX);
                assert_eq!(item.cursor, Cursor(n));
                assert_eq!(item.blob_id, BlobId::of_ciphertext(&item.ciphertext));
            }
            other => panic!("expected deliver, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_gets_notify_instead_of_unbounded_queueing() {
    let (routers, metrics) = setup().await;
    let router = router(&routers).await;
    let (_, mut rx) = subscribe(&router).await;
    // The subscriber reads nothing while more items than its queue's bulk share (half of
    // its byte budget) holds are pushed.
    let total = 3_000u64;
    for n in 0..total {
        push(&router, n).await;
    }
    let dropped = metrics.fanout_drops_total.get();
    assert!(dropped > 0, "the queue must have filled");
    let fitting = total - dropped;
    // The queue holds exactly the first deliveries, in order, and no more bytes than the
    // bulk share...
    let mut queued_bytes = 0;
    for n in 1..=fitting {
        let body = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        queued_bytes += body.len() + FRAME_QUEUE_COST_BYTES;
        assert!(
            matches!(codec::decode(&body).unwrap(), Frame::Deliver { item, .. } if item.cursor == Cursor(n))
        );
    }
    assert!(
        queued_bytes <= LINK_QUEUE_BYTES / 2,
        "{queued_bytes} queued"
    );
    assert!(
        queued_bytes > LINK_QUEUE_BYTES / 2 - 200,
        "the share was used"
    );
    // ...and once there is room, a Notify tells it to pull up to the latest cursor.
    tokio::time::advance(Duration::from_millis(50)).await;
    match next_frame(&mut rx).await {
        Frame::Notify { latest, .. } => assert_eq!(latest, Cursor(total)),
        other => panic!("expected notify, got {other:?}"),
    }
    // Live delivery resumes after the notify.
    push(&router, 100_000).await;
    assert!(
        matches!(next_frame(&mut rx).await, Frame::Deliver { item, .. } if item.cursor == Cursor(total + 1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashed_router_is_restarted_with_its_subscribers() {
    let (routers, metrics) = setup().await;
    let first = router(&routers).await;
    let (_, mut rx) = subscribe(&first).await;
    push(&first, 1).await;
    assert!(matches!(next_frame(&mut rx).await, Frame::Deliver { .. }));
    first.kill();
    // While it backs off, lookups say "unavailable"; after the backoff a new router runs.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let during = ractor::call!(routers, |reply| RoutersMsg::GetRouter {
        mailbox: MAILBOX,
        reply
    })
    .unwrap();
    assert!(during.is_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = router(&routers).await;
    assert_ne!(second.get_id(), first.get_id());
    assert_eq!(
        metrics
            .actor_restarts_total
            .with_label_values(&["group_router"])
            .get(),
        1
    );
    // The subscriber, registered with the old router, is told to catch up and then gets
    // live deliveries from the new one without subscribing again.
    assert!(
        matches!(next_frame(&mut rx).await, Frame::Notify { latest, .. } if latest == Cursor(1))
    );
    assert_eq!(push(&second, 2).await, Cursor(2));
    assert!(
        matches!(next_frame(&mut rx).await, Frame::Deliver { item, .. } if item.cursor == Cursor(2))
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_router_stops_and_is_respawned_on_demand_with_its_cursor() {
    let (routers, metrics) = setup().await;
    let first = router(&routers).await;
    assert_eq!(push(&first, 1).await, Cursor(1));
    // Idle (no subscriber, nothing pending) for longer than the bound plus one check.
    tokio::time::sleep(IDLE_STOP_AFTER + IDLE_STOP_AFTER / 2).await;
    assert_eq!(first.get_status(), ractor::ActorStatus::Stopped);
    // The next lookup starts a new router, which picks up the mailbox where it was.
    let second = router(&routers).await;
    assert_ne!(second.get_id(), first.get_id());
    assert_eq!(push(&second, 2).await, Cursor(2));
    // Stopping for idleness is not a crash.
    assert_eq!(
        metrics
            .actor_restarts_total
            .with_label_values(&["group_router"])
            .get(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_router_with_a_subscriber_does_not_stop() {
    let (routers, _) = setup().await;
    let first = router(&routers).await;
    let (_, mut rx) = subscribe(&first).await;
    tokio::time::sleep(IDLE_STOP_AFTER * 3).await;
    assert_eq!(first.get_status(), ractor::ActorStatus::Running);
    assert_eq!(router(&routers).await.get_id(), first.get_id());
    push(&first, 1).await;
    assert!(matches!(next_frame(&mut rx).await, Frame::Deliver { .. }));
    // Once the subscriber leaves, the router goes idle and stops.
    first
        .cast(GroupRouterMsg::Unsubscribe { subscriber: 1 })
        .unwrap();
    tokio::time::sleep(IDLE_STOP_AFTER + IDLE_STOP_AFTER / 2).await;
    assert_eq!(first.get_status(), ractor::ActorStatus::Stopped);
}

/// Two sessions asking for a mailbox's router at once (two devices subscribing together) get
/// the same router, even while it is still starting. A router handed out as "not running"
/// was replaced by a second one: pushes went through the first, late subscribers asked the
/// second for the mailbox's end (0) and were never told to catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_a_new_mailbox_get_one_router() {
    for _ in 0..20 {
        let (routers, _) = setup().await;
        let lookups = (0..8).map(|_| {
            let routers = routers.clone();
            tokio::spawn(async move { router(&routers).await.get_id() })
        });
        let ids: Vec<_> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        routers.stop(None);
    }
}

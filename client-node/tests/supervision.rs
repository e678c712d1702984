//! The client tree's supervision (actor tier: in-memory links, paused time, the real relay
//! tree where a relay is needed, `zerok_harness::memory_relay`): a
//! RelayConnection that fails on every frame is restarted with growing delays, and past the
//! restart intensity its relay is left alone for the policy's period, while the client goes on;
//! a relay that drops its connections while the app reads no events never blocks the
//! coordinator; a push goes to the relay while its local write is synced only under a durable
//! seq reservation.

#![allow(clippy::unwrap_used)]

use ractor::Actor;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zerok_actors::client::encryptor::{EncryptorActor, EncryptorArgs};
use zerok_actors::client::local_store::LocalStore;
use zerok_actors::client::sync_coordinator::{
    CONN_RESTART_POLICY, CoordinatorActor, CoordinatorArgs,
};
use zerok_actors::client::sync_coordinator::{Coordinator, EVENT_ROOM};
use zerok_actors::clock::Clock;
use zerok_actors::crypto::envelope::DeviceKey;
use zerok_actors::crypto::keys::GroupSecret;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::link::{Link, MemoryNetwork};
use zerok_actors::rng::Rng;
use zerok_harness::memory_relay::{MemoryRelay, default_limits};
use zerok_messages::client::{CoordMsg, Event, GroupId, GroupRecord};
use zerok_messages::wire::PROTOCOL_VERSION;
use zerok_messages::{Cursor, DeviceId, Epoch, Frame, MailboxId, RelayAddr, codec};

const RELAY: DeviceId = DeviceId([7; 32]);
const CLIENT: DeviceId = DeviceId([1; 32]);

/// Welcome the client, then send it a frame at once (the one its connection fails on).
async fn welcome_then_notify(link: Link) {
    let (_, sender, mut receiver) = link.into_parts();
    let hello = receiver.recv().await.unwrap().unwrap();
    assert!(matches!(codec::decode(&hello), Ok(Frame::Hello { .. })));
    let welcome = Frame::Welcome {
        version: PROTOCOL_VERSION,
        relay_id: RELAY,
        nonce: [0; 32],
        limits: default_limits(),
    };
    let notify = Frame::Notify {
        mailbox: MailboxId([9; 32]),
        latest: Cursor(1),
    };
    for frame in [welcome, notify] {
        if sender
            .send(codec::encode(&frame).unwrap().into())
            .await
            .is_err()
        {
            return;
        }
    }
    // Hold the link until the client drops it.
    while let Ok(Some(_)) = receiver.recv().await {}
}

#[tokio::test(start_paused = true)]
async fn a_connection_failing_on_every_frame_is_restarted_with_growing_delays_then_left_for_a_period()
 {
    let network = MemoryNetwork::new();
    let mut listener = network.listen(RELAY);
    let dials: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = Arc::clone(&dials);
    tokio::spawn(async move {
        while let Some(link) = listener.accept().await {
            seen.lock().unwrap().push(Instant::now());
            tokio::spawn(welcome_then_notify(link));
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let relay = RelayAddr {
        id: RELAY,
        // Memory links ignore it; an address needs one.
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    };
    let (store, _) = store_with_group(dir.path(), &relay).await;
    let faults = FaultPlan::seeded(1);
    faults.set(FaultPoint::FrameReceive, 1.0);
    let (events, _events_rx) = mpsc::channel(16);
    let start = Instant::now();
    let coordinator = spawn_coordinator(&network, store, events, faults.clone())
        .await
        .unwrap();

    let policy = CONN_RESTART_POLICY;
    let intensity = policy.intensity as usize;
    // The first dial, then one per restart until the intensity is spent.
    let within = Duration::from_secs(120);
    tokio::time::timeout(within, async {
        while dials.lock().unwrap().len() < intensity + 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "restarted up to the intensity: {:?}, fired {}",
            dials
                .lock()
                .unwrap()
                .iter()
                .map(|t| *t - start)
                .collect::<Vec<_>>(),
            faults.fired(FaultPoint::FrameReceive)
        )
    });
    let times: Vec<Instant> = dials.lock().unwrap().clone();
    assert!(times[0] - start < Duration::from_millis(100));
    for streak in 1..=intensity as u32 {
        let gap = times[streak as usize] - times[streak as usize - 1];
        let base = policy.base_delay(streak);
        let earliest = base.mul_f64(1.0 - policy.jitter);
        // A restart waits its backoff (never less, never much more: the dial itself is instant).
        assert!(
            gap >= earliest && gap <= base + Duration::from_millis(50),
            "restart {streak}: {gap:?} outside {earliest:?}..={base:?}"
        );
    }
    // One crash more escalates: the relay is left alone for the policy's period, the
    // coordinator goes on answering, and then the relay is tried afresh.
    let escalated_at = times[intensity];
    tokio::time::sleep(policy.period - Duration::from_secs(1)).await;
    assert_eq!(
        dials.lock().unwrap().len(),
        intensity + 1,
        "no dial while left alone"
    );
    let status = ractor::call_t!(coordinator, |reply| CoordMsg::Status { reply }, 1_000).unwrap();
    assert!(!status.groups[0].relays[0].connected);
    tokio::time::timeout(Duration::from_secs(5), async {
        while dials.lock().unwrap().len() < intensity + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("tried again after the period");
    let again = dials.lock().unwrap()[intensity + 1];
    assert!(again - escalated_at >= policy.period);
    assert!(faults.fired(FaultPoint::FrameReceive) >= intensity as u64 + 2);
    coordinator.stop(None);
}

/// A group on `relay`, its record in a fresh store under `dir`.
async fn store_with_group(dir: &std::path::Path, relay: &RelayAddr) -> (LocalStore, GroupId) {
    let store = LocalStore::open(&dir.join("store")).unwrap();
    let secret = GroupSecret::from_bytes([4; 32]);
    let group = GroupId(secret.epoch_keys(Epoch(0)).mailbox_id());
    let record = GroupRecord {
        name: "g".into(),
        secret: *secret.expose_bytes(),
        epoch: 0,
        relays: vec![relay.to_string()],
        passphrase_salt: None,
        admissions: Default::default(),
        origin: Vec::new(),
        past: Vec::new(),
        removed: false,
    };
    store.put_group(&group, &record).await.unwrap();
    (store, group)
}

/// A coordinator (and its Encryptor) of device [`CLIENT`] dialling on `network`, with
/// `faults` in its connections.
async fn spawn_coordinator(
    network: &MemoryNetwork,
    store: LocalStore,
    events: mpsc::Sender<Event>,
    faults: FaultPlan,
) -> Result<ractor::ActorRef<CoordMsg>, ractor::SpawnErr> {
    let (encryptor, _) = Actor::spawn(
        None,
        EncryptorActor,
        EncryptorArgs {
            device: Arc::new(DeviceKey::from_secret_bytes(&[1; 32])),
            rng: Rng::seeded(2),
            faults: FaultPlan::none(),
        },
    )
    .await
    .unwrap();
    let spawned = Actor::spawn(
        None,
        CoordinatorActor,
        CoordinatorArgs {
            store,
            device: Arc::new(DeviceKey::from_secret_bytes(&[1; 32])),
            wrap: Arc::new(zerok_actors::crypto::wrap::WrapKey::from_device_secret(
                &[1; 32],
            )),
            encryptor,
            dialer: Some(Arc::new(network.dialer(CLIENT))),
            events,
            ack_quorum: 1,
            receive: true,
            backlog_max: 64,
            clock: Clock::system(),
            rng: Rng::seeded(3),
            conn_restart: CONN_RESTART_POLICY,
            faults,
        },
    )
    .await;
    spawned.map(|(actor, _)| actor)
}

#[tokio::test(start_paused = true)]
async fn an_event_channel_too_small_for_an_item_is_refused_at_start() {
    // Waiting for room a channel can never have made the coordinator spin.
    let network = MemoryNetwork::new();
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayAddr {
        id: RELAY,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    };
    let (store, _) = store_with_group(dir.path(), &relay).await;
    let (events, _events_rx) = mpsc::channel(EVENT_ROOM - 1);
    let refused = spawn_coordinator(&network, store, events, FaultPlan::none())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("event channel"), "{refused}");
}

#[tokio::test(start_paused = true)]
async fn relay_flaps_while_the_event_channel_is_full_status_answers_within_a_second() {
    let network = MemoryNetwork::new();
    let relay = MemoryRelay::start(&network, RELAY, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, group) = store_with_group(dir.path(), &relay.addr()).await;
    // The app never reads, and its channel is full before the client starts.
    let (events, mut events_rx) = mpsc::channel(EVENT_ROOM);
    let filler = DeviceId([0; 32]);
    for _ in 0..EVENT_ROOM {
        events.try_send(Event::RelayUp { relay: filler }).unwrap();
    }
    let actor = spawn_coordinator(&network, store, events, FaultPlan::none())
        .await
        .unwrap();
    let coordinator = Coordinator::new(actor.clone());
    // The store's flush runs on the blocking pool, which paused time does not see: with no
    // timer due sooner, the runtime would jump straight to the test's deadlines while a
    // flush is under way. A pacer keeps a timer due every millisecond, so virtual time moves
    // in small steps meanwhile.
    let pacer = tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // Every status call is bounded by one second of virtual time: the coordinator answers
    // from its own state, so a blocked one fails here.
    let connected = async || {
        let status = tokio::time::timeout(Duration::from_secs(1), coordinator.status())
            .await
            .expect("status answers within 1 s")
            .unwrap();
        status.groups[0].relays[0].connected
    };
    let until = async |what: &str, up: bool| {
        tokio::time::timeout(Duration::from_secs(60), async {
            while connected().await != up {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    };
    // Bounds on durable and acked pushes: safety nets only (each is ~a flush of real time).
    let push_bound = Duration::from_secs(600);
    until("connected", true).await;
    // The relay drops its connections twice; the client reconnects each time.
    for flap in 1..=2u64 {
        relay.drop_connections();
        tokio::time::timeout(Duration::from_secs(60), async {
            while relay.connections_accepted() <= flap {
                connected().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("flap {flap}: the client dialled again"));
        until("reconnected", true).await;
        // Pushes complete meanwhile: durable here, acked by the relay.
        let pushed = tokio::time::timeout(
            push_bound,
            coordinator.enqueue(group, vec![format!("r{flap}").into_bytes()]),
        )
        .await
        .expect("enqueue answers")
        .unwrap();
        let receipt =
            tokio::time::timeout(push_bound, coordinator.wait_acked(group, pushed[0].1, None))
                .await
                .expect("push acked")
                .unwrap();
        assert_eq!(receipt.acked_by, vec![RELAY]);
    }
    assert_eq!(relay.items_stored(), 2);
    // Once the app reads: its own two events, then the relay's state changes that found no
    // room, coalesced to the latest (up), not one per flap.
    let mut relay_events = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(100), events_rx.recv()).await
    {
        relay_events.push(event);
    }
    let from_relay: Vec<&Event> = relay_events
        .iter()
        .filter(|e| !matches!(e, Event::RelayUp { relay } if *relay == filler))
        .collect();
    assert_eq!(relay_events.len() - from_relay.len(), EVENT_ROOM);
    assert!(
        matches!(from_relay.as_slice(), [Event::RelayUp { relay }] if *relay == RELAY),
        "{relay_events:?}"
    );
    pacer.abort();
    actor.stop(None);
}

/// Run `pacer`-style 1 ms timers until `f` holds (or panic after 60 s of virtual time).
async fn wait_until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test(start_paused = true)]
async fn a_push_is_sent_while_its_write_is_synced_only_under_a_durable_seq_reservation() {
    let network = MemoryNetwork::new();
    let relay = MemoryRelay::start(&network, RELAY, 12).await;
    // Paused time and the blocking pool's journal syncs: see the flapping test's pacer.
    let pacer = tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let push_bound = Duration::from_secs(600);
    for reserved_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (store, group) = store_with_group(dir.path(), &relay.addr()).await;
        let (events, _events_rx) = mpsc::channel(64);
        let actor = spawn_coordinator(&network, store.clone(), events, FaultPlan::none())
            .await
            .unwrap();
        let coordinator = Coordinator::new(actor.clone());
        let mut expected = 0;
        if reserved_first {
            // The first push waits for its own sync, which also makes the group's seq
            // reservation durable.
            let pushed =
                tokio::time::timeout(push_bound, coordinator.enqueue(group, vec![b"r1".to_vec()]))
                    .await
                    .expect("enqueue answers")
                    .unwrap();
            tokio::time::timeout(push_bound, coordinator.wait_acked(group, pushed[0].1, None))
                .await
                .expect("acked")
                .unwrap();
            expected = 1;
        }
        wait_until("connected", || relay.connections_accepted() > 0).await;
        // From now on no journal sync succeeds: nothing more becomes durable here.
        let faults = FaultPlan::seeded(5);
        faults.set(FaultPoint::BeforeFlush, 1.0);
        store.set_faults(faults.clone());
        let refused =
            tokio::time::timeout(push_bound, coordinator.enqueue(group, vec![b"r2".to_vec()]))
                .await
                .expect("enqueue answers");
        assert!(refused.is_err(), "{refused:?}");
        assert!(faults.fired(FaultPoint::BeforeFlush) >= 1);
        if reserved_first {
            // Sent while its write was being synced: the relay has it, although the sync
            // then failed (the app was told; its seq stays reserved, never reused).
            wait_until("the second push reached the relay", || {
                relay.items_stored() == expected + 1
            })
            .await;
        } else {
            // Without a durable reservation nothing goes before its own sync.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(relay.items_stored(), expected);
        }
        actor.stop(None);
        relay.drop_connections();
    }
    pacer.abort();
}

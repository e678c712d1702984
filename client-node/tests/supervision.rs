//! The client tree's supervision (actor tier: in-memory links, paused time): a
//! RelayConnection that fails on every frame is restarted with growing delays, and past the
//! restart intensity its relay is left alone for the policy's period, while the client goes on.

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
use zerok_actors::clock::Clock;
use zerok_actors::crypto::envelope::DeviceKey;
use zerok_actors::crypto::keys::GroupSecret;
use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::link::{Link, MemoryNetwork};
use zerok_actors::rng::Rng;
use zerok_harness::evil_relay::default_limits;
use zerok_messages::client::{CoordMsg, GroupId, GroupRecord};
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
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let secret = GroupSecret::from_bytes([3; 32]);
    let group = GroupId(secret.epoch_keys(Epoch(0)).mailbox_id());
    let relay = RelayAddr {
        id: RELAY,
        // Memory links ignore it; an address needs one.
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
    };
    let record = GroupRecord {
        name: "g".into(),
        secret: *secret.expose_bytes(),
        epoch: 0,
        relays: vec![relay.to_string()],
        passphrase_salt: None,
        admissions: Default::default(),
    };
    store.put_group(&group, &record).await.unwrap();
    let faults = FaultPlan::seeded(1);
    faults.set(FaultPoint::FrameReceive, 1.0);
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
    let (events, _events_rx) = mpsc::channel(16);
    let start = Instant::now();
    let (coordinator, _) = Actor::spawn(
        None,
        CoordinatorActor,
        CoordinatorArgs {
            store,
            encryptor,
            dialer: Arc::new(network.dialer(CLIENT)),
            events,
            ack_quorum: 1,
            receive: true,
            backlog_max: 64,
            clock: Clock::system(),
            rng: Rng::seeded(3),
            conn_restart: CONN_RESTART_POLICY,
            faults: faults.clone(),
        },
    )
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

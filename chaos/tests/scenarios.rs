//! The chaos catalogue: scenarios over a [`SimWorld`] (real relay and client trees on
//! turmoil's simulated network and time), each ending with the invariants.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;
use zerok_chaos::invariants::{
    acked_pushes_reach_every_other_device, no_plaintext_on_relays, one_record_per_seq,
    only_pushed_records_are_received, per_sender_order, received_exactly_once,
};
use zerok_chaos::world::{SimWorld, WorldConfig, device_host, relay_host};
use zerok_messages::sync::lock;

/// Every scenario payload starts with this (the relay's disk must never show it).
const MARKER: &[u8] = b"chaos-plaintext-";

/// Longest a scenario waits for the world to converge (simulated time).
const CONVERGE: Duration = Duration::from_secs(300);

/// The payloads a scenario pushed.
#[derive(Default)]
struct Pushed(BTreeSet<Vec<u8>>);

impl Pushed {
    /// Queue `n` pushes on device `dev`, tagged `tag`.
    fn push(&mut self, world: &SimWorld, dev: usize, tag: &str, n: usize) {
        for k in 0..n {
            let mut payload = MARKER.to_vec();
            payload.extend_from_slice(format!("dev{dev}-{tag}-{k:04}").as_bytes());
            self.0.insert(payload.clone());
            world.push(dev, payload);
        }
    }
}

/// How a scenario's delivery is judged.
#[derive(PartialEq)]
enum Delivery {
    /// No receiver restarted: exactly once.
    ExactlyOnce,
    /// A receiver restarted: at least once.
    AtLeastOnce,
}

fn world(devices: usize, relays: usize) -> SimWorld {
    let mut world = SimWorld::new(WorldConfig {
        seed: 7,
        devices,
        relays,
        ..WorldConfig::default()
    })
    .unwrap();
    world.settle().unwrap();
    world
}

/// Run until every acked push reached every other device (or `CONVERGE` passed), then check
/// every invariant.
fn converge_and_check(world: &mut SimWorld, pushed: &Pushed, delivery: Delivery) {
    let expected = pushed.0.len();
    world
        .run_until(CONVERGE, |shared| {
            let acked: usize = shared.devices.iter().map(|d| lock(&d.acked).len()).sum();
            acked == expected && acked_pushes_reach_every_other_device(shared).is_ok()
        })
        .unwrap();
    let shared = &world.shared;
    let dump = || world.trace().join("\n");
    if std::env::var_os("CHAOS_TRACE").is_some() {
        eprintln!("{}", dump());
    }
    let acked: usize = shared.devices.iter().map(|d| lock(&d.acked).len()).sum();
    assert_eq!(acked, expected, "every push acked\n{}", dump());
    acked_pushes_reach_every_other_device(shared).unwrap_or_else(|e| panic!("{e}\n{}", dump()));
    if delivery == Delivery::ExactlyOnce {
        received_exactly_once(shared).unwrap_or_else(|e| panic!("{e}\n{}", dump()));
    }
    one_record_per_seq(shared).unwrap_or_else(|e| panic!("{e}\n{}", dump()));
    per_sender_order(shared).unwrap_or_else(|e| panic!("{e}\n{}", dump()));
    only_pushed_records_are_received(shared, &pushed.0).unwrap_or_else(|e| panic!("{e}"));
    no_plaintext_on_relays(&world.relay_dirs(), MARKER).unwrap();
}

/// Baseline: three devices push concurrently through one relay; each gets the others'
/// records once, in each sender's order.
#[test]
fn steady_pushes_reach_every_device_once() {
    let mut world = world(3, 1);
    let mut pushed = Pushed::default();
    for dev in 0..3 {
        pushed.push(&world, dev, "steady", 20);
    }
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
}

/// A receiver cut off from the relay for 20 s catches up after the partition heals.
#[test]
fn a_partitioned_receiver_catches_up_after_heal() {
    let mut world = world(2, 1);
    let mut pushed = Pushed::default();
    world.partition(&device_host(1), &relay_host(0));
    pushed.push(&world, 0, "cut", 30);
    world.run_for(Duration::from_secs(20)).unwrap();
    assert!(lock(&world.device(1).received).is_empty());
    world.repair(&device_host(1), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
}

/// Pushes made while the pusher is cut off are not acked until the partition heals, then
/// all are.
#[test]
fn pushes_made_during_a_partition_are_acked_after_heal() {
    let mut world = world(2, 1);
    let mut pushed = Pushed::default();
    world.partition(&device_host(0), &relay_host(0));
    pushed.push(&world, 0, "offline", 25);
    world.run_for(Duration::from_secs(15)).unwrap();
    assert!(
        lock(&world.device(0).acked).is_empty(),
        "nothing acked while cut off"
    );
    world.repair(&device_host(0), &relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
}

/// The relay is killed mid-stream and started again: no acked push is lost, the rest are
/// sent again.
#[test]
fn a_relay_killed_and_restarted_loses_no_acked_push() {
    let mut world = world(2, 1);
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "before", 20);
    world
        .run_until(CONVERGE, |s| lock(&s.devices[0].acked).len() >= 5)
        .unwrap();
    world.crash(&relay_host(0));
    pushed.push(&world, 0, "during", 10);
    world.run_for(Duration::from_secs(5)).unwrap();
    world.bounce(&relay_host(0));
    converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
}

/// A receiver killed while records flow, restarted later, gets every acked record (at
/// least once: what it had not persisted may come again).
#[test]
fn a_receiver_killed_and_restarted_gets_everything() {
    let mut world = world(2, 1);
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "a", 20);
    world
        .run_until(CONVERGE, |s| lock(&s.devices[1].received).len() >= 5)
        .unwrap();
    world.crash(&device_host(1));
    pushed.push(&world, 0, "b", 20);
    world.run_for(Duration::from_secs(5)).unwrap();
    world.bounce(&device_host(1));
    converge_and_check(&mut world, &pushed, Delivery::AtLeastOnce);
    assert_eq!(*lock(&world.device(1).starts), 2);
}

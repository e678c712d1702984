//! The checker can fail: a deliberately broken component, run through a scenario, is caught
//! by the invariants, which name what broke.

use zerok_actors::fault::{FaultPlan, FaultPoint};
use zerok_actors::relay::blob_store::fs::{PowerCut, SimFlaw};
use zerok_chaos::scenarios::{
    Delivery, Pushed, acked_then_power_lost, converge_and_check, pushed_then_device_power_lost,
    world_with,
};
use zerok_chaos::world::WorldConfig;

/// A client that skips received records (drops some and goes on as if it had handed them
/// over, cursor and all): the invariants report the acked pushes it never delivered.
#[test]
fn a_client_that_skips_received_records_is_caught() {
    let skipping = FaultPlan::seeded(3);
    skipping.set(FaultPoint::SkipReceived, 0.2);
    let mut world = world_with(WorldConfig {
        seed: 5,
        faults: vec![FaultPlan::none(), skipping.clone()],
        ..WorldConfig::default()
    })
    .expect("world");
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "skipped", 20);
    let outcome = converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
    assert!(
        skipping.fired(FaultPoint::SkipReceived) > 0,
        "the fault fired"
    );
    let failure = outcome.expect_err("the invariants catch the skipped records");
    assert!(
        failure.starts_with("acked_pushes_reach_every_other_device: dev1 lacks"),
        "{failure}"
    );
    // The same world without the fault converges (the failure was the fault's).
    let mut healthy = world_with(WorldConfig {
        seed: 5,
        ..WorldConfig::default()
    })
    .expect("world");
    let mut pushed = Pushed::default();
    pushed.push(&healthy, 0, "skipped", 20);
    converge_and_check(&mut healthy, &pushed, Delivery::ExactlyOnce).expect("converges");
}

/// A relay store that acks before its data is durable (its disk's `fdatasync` does nothing,
/// as if the store's sync were deleted): after a power loss the pushes it acked are gone,
/// and the invariants report them missing on the device that was offline.
#[test]
fn a_store_that_acks_before_its_sync_is_caught() {
    let (mut world, pushed) = acked_then_power_lost(
        5,
        PowerCut::DropUnsynced,
        Some(SimFlaw::SyncDataKeepsNothing),
    )
    .expect("world");
    let failure = converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
        .expect_err("the invariants catch the lost acked pushes");
    assert!(
        failure.starts_with("acked_pushes_reach_every_other_device: dev1 lacks"),
        "{failure}"
    );
    let (mut healthy, pushed) =
        acked_then_power_lost(5, PowerCut::DropUnsynced, None).expect("world");
    converge_and_check(&mut healthy, &pushed, Delivery::ExactlyOnce).expect("converges");
}

/// A device whose disk keeps nothing its store syncs once the world is up (as if the client
/// announced pushes durable without syncing them): after its power cut it comes back with
/// the seq numbering of before its pushes and seals new records under seqs the other device
/// already has; the invariants report them.
#[test]
fn a_device_that_forgets_what_it_synced_is_caught() {
    let (mut world, pushed) =
        pushed_then_device_power_lost(5, PowerCut::DropUnsynced, true).expect("world");
    let failure = converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce)
        .expect_err("the invariants catch the reused seqs");
    // The 20 pushes after the cut reuse the seqs of the 20 before: dropped as replays.
    assert!(
        failure.starts_with("acked_pushes_reach_every_other_device: dev0 lacks 20 of dev1's"),
        "{failure}"
    );
    let (mut healthy, pushed) =
        pushed_then_device_power_lost(5, PowerCut::DropUnsynced, false).expect("world");
    converge_and_check(&mut healthy, &pushed, Delivery::ExactlyOnce).expect("converges");
}

/// A relay router that drops one push on its way to the store and acks it anyway: the
/// record never reaches the other device, and the invariants say so.
#[test]
fn a_router_that_drops_a_push_is_caught() {
    let dropping = FaultPlan::seeded(9);
    let mut world = world_with(WorldConfig {
        seed: 5,
        relay_faults: vec![dropping.clone()],
        ..WorldConfig::default()
    })
    .expect("world");
    // Armed once the devices joined (a dropped roster record would stop the join itself).
    dropping.set(FaultPoint::RouterDropsPush, 0.1);
    let mut pushed = Pushed::default();
    pushed.push(&world, 0, "routed", 30);
    let outcome = converge_and_check(&mut world, &pushed, Delivery::ExactlyOnce);
    assert!(
        dropping.fired(FaultPoint::RouterDropsPush) > 0,
        "the fault fired"
    );
    let failure = outcome.expect_err("the invariants catch the dropped push");
    assert!(
        failure.starts_with("acked_pushes_reach_every_other_device: dev1 lacks"),
        "{failure}"
    );
}
